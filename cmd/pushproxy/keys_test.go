package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/seal"
)

var e2eKeys sync.Once

// e2eKeyFile is the key file the end-to-end tests' instances share.
func e2eKeyFile(t *testing.T) string {
	binaries(t)
	path := filepath.Join(binDir, "secret-keys.json")
	e2eKeys.Do(func() {
		if _, _, err := seal.LoadOrCreate(path); err != nil {
			t.Fatal(err)
		}
	})
	return path
}

// recordingOrigin is a loopback SSE origin that records each request's headers and query
// and sends an event to every open stream on emit.
type recordingOrigin struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	subs map[chan string]bool
	seq  int
}

func newRecordingOrigin(t *testing.T) *recordingOrigin {
	o := &recordingOrigin{subs: map[chan string]bool{}}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := make(chan string, 16)
		o.mu.Lock()
		o.reqs = append(o.reqs, r.Clone(context.Background()))
		o.subs[c] = true
		o.mu.Unlock()
		defer func() {
			o.mu.Lock()
			delete(o.subs, c)
			o.mu.Unlock()
		}()
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case ev := <-c:
				fmt.Fprint(w, ev)
				w.(http.Flusher).Flush()
			}
		}
	}))
	t.Cleanup(o.srv.Close)
	t.Cleanup(o.srv.CloseClientConnections)
	return o
}

// open returns how many streams are open.
func (o *recordingOrigin) open() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.subs)
}

// emit sends one event to every open stream and returns how many got it.
func (o *recordingOrigin) emit() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	for c := range o.subs {
		c <- fmt.Sprintf("id: %d\ndata: tick\n\n", o.seq)
	}
	return len(o.subs)
}

// requests returns how many requests carried query and exactly the given headers.
func (o *recordingOrigin) requests(query string, headers map[string]string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, r := range o.reqs {
		ok := r.URL.RawQuery == query
		for k, v := range headers {
			ok = ok && len(r.Header.Values(k)) == 1 && r.Header.Get(k) == v
		}
		if ok {
			n++
		}
	}
	return n
}

// TestSealedCredentialsEndToEnd hands off streams with Authorization, Cookie, a custom header
// and a ?key= query to the real binary: the origin gets them exactly, pg_dump --data-only and
// the API documents show none of them, and a key rotation re-seals every row while every
// stream keeps flowing, across restarts before and after it.
func TestSealedCredentialsEndToEnd(t *testing.T) {
	bin, _ := binaries(t)
	dbURL := pgtest.NewDatabase(t)
	keyFile := filepath.Join(t.TempDir(), "keys.json")
	pushproxyCmd := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pushproxy %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pushproxyCmd("keys", "generate", "--secret-key-file", keyFile)
	k1, err := seal.Load(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	o := newRecordingOrigin(t)
	const admin = "admin-token-for-seal"
	start := func() (string, *process) {
		return startProxy(t, dbURL, "--secret-key-file", keyFile, "--admin-token", admin)
	}
	api, p := start()

	headers := map[string]string{
		"Authorization": "Bearer auth-secret-e2e-1",
		"Cookie":        "sid=cookie-secret-e2e-2",
		"X-Api-Key":     "apikey-secret-e2e-3",
	}
	const query = "key=query-secret-e2e-4&room=7"
	secrets := []string{"auth-secret-e2e-1", "cookie-secret-e2e-2", "apikey-secret-e2e-3", "query-secret-e2e-4"}
	var streams []e2eStream
	for range 4 {
		body, _ := json.Marshal(map[string]any{"url": o.srv.URL + "/events?" + query, "headers": headers})
		resp, err := http.Post(api+"/v1/streams", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("handoff: %s %s", resp.Status, b)
		}
		var s e2eStream
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	waitFor(t, "the origin to get every stream's exact headers and query", func() bool { return o.requests(query, headers) == 4 })

	flowing := func(want int64) {
		t.Helper()
		waitFor(t, "every stream connected", func() bool { return o.open() == 4 })
		waitFor(t, "an event delivered to every stream", func() bool {
			if o.emit() != 4 {
				return false
			}
			for _, s := range streams {
				if streamInfo(t, api, s).Backlog < want {
					return false
				}
			}
			return true
		})
	}
	flowing(1)

	docs := func() []byte {
		t.Helper()
		var all []byte
		get := func(path, tok string) {
			req, _ := http.NewRequest(http.MethodGet, api+path, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %s", path, resp.Status, b)
			}
			all = append(all, b...)
		}
		for _, s := range streams {
			get("/v1/streams/"+s.ID, s.Token)
			get("/v1/admin/streams/"+s.ID, admin)
		}
		get("/v1/admin/streams", admin)
		get("/v1/admin/overview", admin)
		return all
	}
	checkNoSecrets := func(what string, b []byte) {
		t.Helper()
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds %q", what, s)
			}
		}
	}
	d := docs()
	checkNoSecrets("API documents", d)
	if !bytes.Contains(d, []byte(o.srv.URL+"/events")) {
		t.Fatalf("the stream documents do not show the URL:\n%s", d)
	}
	checkNoSecrets("pg_dump --data-only", pgtest.DumpData(t, dbURL))

	// A restart: the new instance claims the streams and opens their credentials.
	p.signal(os.Interrupt)
	<-p.done
	api, p = start()
	waitFor(t, "reconnects with the same headers after a restart", func() bool { return o.requests(query, headers) >= 8 })
	flowing(2)

	// Rotation: a new primary key, the instance restarted with it, then every row re-sealed
	// while it runs.
	out := pushproxyCmd("keys", "generate", "--secret-key-file", keyFile)
	k2, err := seal.Load(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if k2.Primary() == k1.Primary() || len(k2.IDs()) != 2 || !strings.Contains(out, "as primary") {
		t.Fatalf("keys generate on an existing file: %s (keys %v)", out, k2.IDs())
	}
	p.signal(os.Interrupt)
	<-p.done
	api, p = start()
	waitFor(t, "reconnects after the restart with the new key", func() bool { return o.requests(query, headers) >= 12 })
	out = pushproxyCmd("keys", "rotate", "--secret-key-file", keyFile, "--database-url", dbURL, "--reseal-batch", "3")
	if !strings.Contains(out, "re-sealed 4 streams") || !strings.Contains(out, "removed keys") {
		t.Fatalf("keys rotate: %s", out)
	}
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), `SELECT credentials_sealed FROM streams`)
	sealed, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil || len(sealed) != 4 {
		t.Fatalf("sealed values: %d, %v", len(sealed), err)
	}
	for _, v := range sealed {
		if id, ok := seal.KeyID(v); !ok || id != k2.Primary() || !bytes.HasPrefix(v, seal.Prefix(k2.Primary())) {
			t.Fatalf("a row is sealed under %x after the rotation, want key id %d", v[:5], k2.Primary())
		}
	}
	k3, err := seal.Load(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if ids := k3.IDs(); len(ids) != 1 || ids[0] != k2.Primary() {
		t.Fatalf("key file after the rotation: %v, want only %d", ids, k2.Primary())
	}
	flowing(3)
	// With the old key gone from the file, a restarted instance still opens every stream.
	p.signal(os.Interrupt)
	<-p.done
	api, _ = start()
	waitFor(t, "reconnects after the rotation", func() bool { return o.requests(query, headers) >= 16 })
	flowing(4)
	checkNoSecrets("pg_dump --data-only after the rotation", pgtest.DumpData(t, dbURL))
	checkNoSecrets("API documents after the rotation", docs())

	// An instance started with the removed key alone says so, and claims none of them.
	oldFile := filepath.Join(t.TempDir(), "old.json")
	if err := k1.WriteFile(oldFile); err != nil {
		t.Fatal(err)
	}
	_, wrong := startProxy(t, dbURL, "--secret-key-file", oldFile) // returns once it serves
	re := regexp.MustCompile(fmt.Sprintf(`level=ERROR msg="held streams are sealed under a key the key file lacks.*streams=4 key_id=%d`, k2.Primary()))
	if !re.MatchString(wrong.output()) {
		t.Fatalf("an instance with the removed key alone did not say so:\n%s", wrong.output())
	}
}

// TestServeRefusesWithoutKeys: with an external database, no key file is a clear start-up
// error, and a key file that cannot be read is one too; nothing is stored in clear.
func TestServeRefusesWithoutKeys(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"primaryKeyId": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.json")
	k, _ := seal.Generate()
	if err := k.WriteFile(open); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no --secret-key-file"},
		{[]string{"--secret-key-file", filepath.Join(dir, "missing.json")}, "no such file"},
		{[]string{"--secret-key-file", bad}, "not a Tink JSON keyset"},
		{[]string{"--secret-key-file", open}, "chmod 600"},
		{[]string{"--secret-key-file", open, "--insecure-plaintext-credentials"}, "choose one"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"serve", "--listen", "127.0.0.1:0", "--database-url", dbURL}, tc.args...)
		if code := run(context.Background(), args, io.Discard, &stderr, func(string) string { return "" }); code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("serve %v: exit %d, want 1 with %q:\n%s", tc.args, code, tc.want, stderr.String())
		}
	}
}

// TestLocalModeMakesItsKeyFile: with the local Postgres and no key file, serve makes one in
// its data directory (mode 0600) on the first start and uses the same one after.
func TestLocalModeMakesItsKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var c keyConfig
	log := slog.New(slog.DiscardHandler)
	k1, err := c.keys(context.Background(), true, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	// The data directory it made is the local Postgres's too, whose server (the postgres
	// user, when we are root) must pass through it.
	if di, err := os.Stat(dir); err != nil || di.Mode().Perm()&0o011 != 0o011 {
		t.Fatalf("data directory mode %v (%v): the postgres user cannot pass through", di.Mode().Perm(), err)
	}
	k2, err := c.keys(context.Background(), true, dir, log)
	if err != nil || k2.Primary() != k1.Primary() {
		t.Fatalf("second start: %v, key %d then %d", err, k1.Primary(), k2.Primary())
	}
	// An external database without a key file: refused, unless told to store in clear.
	if _, err := c.keys(context.Background(), false, dir, log); err == nil {
		t.Fatal("an external database without a key file was accepted")
	}
	c.AllowPlaintext = true
	if k, err := c.keys(context.Background(), false, dir, log); err != nil || k != nil {
		t.Fatalf("--insecure-plaintext-credentials: %v, %v", k, err)
	}
}
