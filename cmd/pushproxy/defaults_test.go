package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/secretscan"
	"github.com/pushproxy/pushproxy/origin"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// TestServeRefusesOpenHandoffOffLoopback is serve's protected mode: the default listens on
// loopback; any other address with no API key and no --open-handoff refuses to start, and
// says what to do.
func TestServeRefusesOpenHandoffOffLoopback(t *testing.T) {
	var sc serveConfig
	sc.flags(flag.NewFlagSet("serve", flag.ContinueOnError))
	if sc.Listen != "127.0.0.1:8080" || sc.AdminListen != "127.0.0.1:9091" || sc.OpenHandoff {
		t.Fatalf("defaults: listen %q admin %q open %v", sc.Listen, sc.AdminListen, sc.OpenHandoff)
	}
	for _, listen := range []string{":8080", "0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080", "example.com:8080"} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"serve", "--listen", listen, "--database-url", "postgres://nowhere.invalid/x"},
			&out, &errOut, func(string) string { return "" })
		msg := errOut.String()
		if code != 1 || !strings.Contains(msg, "refusing to start") || !strings.Contains(msg, "--api-keys") ||
			!strings.Contains(msg, "--open-handoff") || !strings.Contains(msg, "PUSHPROXY_OPEN_HANDOFF=true") {
			t.Errorf("--listen %s: exit %d\n%s", listen, code, msg)
		}
	}
	for _, c := range []struct {
		listen string
		keys   []string
		open   bool
	}{
		{"127.0.0.1:8080", nil, false}, {"[::1]:8080", nil, false}, {"localhost:8080", nil, false},
		{":8080", []string{"k"}, false}, {"0.0.0.0:8080", nil, true},
	} {
		if err := checkOpenHandoff(c.listen, c.keys, c.open); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestServeOpensOffLoopbackWhenTold starts on every interface with --open-handoff, and with
// an API key (which handoff then requires).
func TestServeOpensOffLoopbackWhenTold(t *testing.T) {
	db := pgtest.NewDatabase(t)
	for _, extra := range [][]string{{"--open-handoff"}, {"--api-keys", "k1"}} {
		cfg := testServeConfig(t, db, append([]string{"--listen", "0.0.0.0:0"}, extra...)...)
		srv := startServer(t, cfg)
		_, port, _ := net.SplitHostPort(srv.Addr())
		resp, err := http.Post("http://127.0.0.1:"+port+"/v1/streams", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusBadRequest // open: the empty handoff is refused for what it is
		if extra[0] == "--api-keys" {
			want = http.StatusUnauthorized
		}
		if resp.StatusCode != want {
			t.Errorf("%v: handoff without a key: %d, want %d", extra, resp.StatusCode, want)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := srv.close(sctx); err != nil {
			t.Error(err)
		}
		cancel()
	}
}

// testServeConfig is serve's configuration from its flags' defaults and args, on db, with
// both listeners on loopback ports of their own.
func testServeConfig(t *testing.T, db string, args ...string) serveConfig {
	t.Helper()
	var cfg serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.flags(fs)
	base := []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--database-url", db, "--upstream-allow", "127.0.0.0/8",
		"--secret-key-file", e2eKeyFile(t)}
	if err := fs.Parse(append(base, args...)); err != nil {
		t.Fatal(err)
	}
	secretscan.RegisterFlags(args, nil)
	return cfg
}

// startServer starts serve in this process and closes it at the end of the test (a second
// close is harmless).
func startServer(t *testing.T, cfg serveConfig) *Server {
	t.Helper()
	srv, err := openServer(context.Background(), cfg, slog.New(secretscan.Handler(t.Name()+" serve")), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.close(sctx)
	})
	return srv
}

// TestSlowClientsAreCutButEventStreamsAreNot sends a handoff one byte at a time, and a
// request head one byte at a time, over raw TCP: each is cut about when its timeout says,
// while an event stream opened before them keeps receiving heartbeats well past both.
func TestSlowClientsAreCutButEventStreamsAreNot(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for timeouts")
	}
	const timeout = time.Second
	o := origin.New(&origin.Options{History: 10, Retry: 10 * time.Millisecond})
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = o.HTTPServer()
	ts.Start()
	t.Cleanup(ts.Close)
	t.Cleanup(o.Close)
	cfg := testServeConfig(t, pgtest.NewDatabase(t), "--read-header-timeout", timeout.String(),
		"--read-body-timeout", timeout.String(), "--heartbeat", "100ms")
	srv := startServer(t, cfg)
	api := "http://" + srv.Addr()

	// The event stream, read on its own: it must outlive both timeouts several times over.
	st := handoffPush(t, api, ts.URL+"/events", nil)
	req, _ := http.NewRequest("GET", st.EventsURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	streamErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		start, beats := time.Now(), 0
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), ":") {
				beats++
			}
			if time.Since(start) > 5*timeout {
				streamErr <- nil
				return
			}
		}
		streamErr <- fmt.Errorf("the event stream ended after %s and %d heartbeats: %v", time.Since(start), beats, sc.Err())
	}()

	body := `{"url": "` + ts.URL + `/events"}`
	drip := func(name, head, body string) {
		t.Helper()
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		closed := make(chan time.Duration, 1)
		go func() {
			io.Copy(io.Discard, c) // an answer, if any, then the close
			closed <- time.Since(start)
		}()
		// One byte every 200 ms would take 20 s for these 100: it must be cut long before.
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(body); i++ {
			select {
			case took := <-closed:
				if took < timeout || took > 4*timeout {
					t.Errorf("%s: cut after %s, want about %s", name, took, timeout)
				}
				return
			case <-tick.C:
				c.Write([]byte{body[i]}) // errors once the server has closed; the close is read above
			}
		}
		t.Errorf("%s: the server read the whole slow request (%d bytes over %s)", name, len(body), time.Since(start))
	}
	pad := strings.Repeat(" ", 100-len(body))
	drip("slow body", fmt.Sprintf("POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"), body+pad)
	drip("slow head", "", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", 100)+"\r\n\r\n")

	// A body sent at a normal pace right after is served.
	if resp, err := http.Post(api+"/v1/streams", "application/json", strings.NewReader(body)); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("a normal handoff: %v %v", resp.Status, err)
	}
	if err := <-streamErr; err != nil {
		t.Fatal(err)
	}
}

// TestServeTLSReloadsOnSIGHUP serves the API over TLS from a real process: ALPN offers h2,
// the certificate files replaced and SIGHUP sent, the next handshake presents the new
// certificate; a broken pair on the next SIGHUP is logged and the previous one kept.
func TestServeTLSReloadsOnSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	ca, err := fakeapns.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, ca, dir)
	api, px := startProxy(t, pgtest.NewDatabase(t), "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(api, "https://") {
		t.Fatalf("serving %s", api)
	}
	pool := ca.Pool()
	handshake := func() tls.ConnectionState {
		t.Helper()
		c, err := tls.Dial("tcp", strings.TrimPrefix(api, "https://"), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState()
	}
	first := handshake()
	if first.NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN negotiated %q, want h2", first.NegotiatedProtocol)
	}
	// A request over HTTP/2, through the certificate's chain.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := client.Get(api + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("GET /healthz over TLS: %s %s", resp.Status, resp.Proto)
	}

	// Replace both files, as a certificate renewal does, and send SIGHUP.
	newDir := t.TempDir()
	newCert, newKey := writeServerCert(t, ca, newDir)
	for from, to := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	px.signal(syscall.SIGHUP)
	px.waitLine(regexp.MustCompile(`msg="certificate reloaded"`))
	second := handshake()
	if bytes.Equal(second.PeerCertificates[0].Raw, first.PeerCertificates[0].Raw) {
		t.Fatal("after SIGHUP the old certificate is still presented")
	}

	// A broken pair: the reload fails, says so, and the certificate in use stays.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	px.signal(syscall.SIGHUP)
	px.waitLine(regexp.MustCompile(`msg="certificate reload failed; serving the previous one"`))
	if third := handshake(); !bytes.Equal(third.PeerCertificates[0].Raw, second.PeerCertificates[0].Raw) {
		t.Fatal("after a failed reload the certificate changed")
	}
}

// TestServeRunsItsLocalPostgresOnASocketOnly starts serve with no database URL: the local
// Postgres it runs is reached through a socket in a private directory inside the data
// directory, and listens on no TCP address.
func TestServeRunsItsLocalPostgresOnASocketOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	dir := pgtest.ReachableDir(t)
	api, px := startProxy(t, "", "--data-dir", dir)
	if resp, err := http.Get(api + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz: %v %v", resp.Status, err)
	}
	sock := filepath.Join(dir, "postgres", "socket")
	fi, err := os.Stat(filepath.Join(sock, ".s.PGSQL.5432"))
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the local Postgres's socket: %v %v", fi, err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v %v", fi, err)
	}
	m := regexp.MustCompile(`msg="local postgres running" dir=\S+ socket_dir=(\S+)`).FindStringSubmatch(px.output())
	if m == nil || m[1] != sock {
		t.Fatalf("the log does not say the local Postgres runs on %s:\n%s", sock, px.output())
	}
	pglog, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
	if !strings.Contains(string(pglog), `listening on Unix socket "`+sock+`/.s.PGSQL.5432"`) ||
		strings.Contains(string(pglog), "listening on IPv4") || strings.Contains(string(pglog), "listening on IPv6") {
		t.Fatalf("the local Postgres's log does not show it on its socket only:\n%s", pglog)
	}
}

// TestSlowBodyIsCutOverHTTP2 sends a handoff body one byte at a time over HTTP/2 (TLS, ALPN)
// to the proxy serving TLS itself: the request ends about when --read-body-timeout says, not
// when the body would.
func TestSlowBodyIsCutOverHTTP2(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a timeout")
	}
	const timeout = time.Second
	ca, err := fakeapns.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeServerCert(t, ca, t.TempDir())
	srv := startServer(t, testServeConfig(t, pgtest.NewDatabase(t), "--tls-cert", certFile, "--tls-key", keyFile,
		"--read-body-timeout", timeout.String()))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for _, b := range []byte(`{"url": "http://127.0.0.1:1/events"}` + strings.Repeat(" ", 64)) {
			select {
			case <-stop:
				pw.Close()
				return
			case <-tick.C:
				if _, err := pw.Write([]byte{b}); err != nil {
					return
				}
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "https://"+srv.Addr()+"/v1/streams", pr)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	took := time.Since(start)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode == http.StatusCreated {
			t.Fatalf("slow body over %s answered %s", resp.Proto, resp.Status)
		}
	}
	if took < timeout || took > 4*timeout {
		t.Fatalf("the slow HTTP/2 body was cut after %s (%v), want about %s", took, err, timeout)
	}
}
