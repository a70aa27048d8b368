// Package secretscan checks that no secret reaches a log line or an admin document during a
// whole test binary's run. Every server the tests start writes its log to one file of the
// run (Writer, Handler); every request the tests send through net/http's default client
// (http.Get, http.Post, http.DefaultClient) registers the secrets it carries or receives (API
// keys, admin and stream tokens, device secrets, push tokens, forwarded header values,
// handoff URL query values, dashboard sessions) and keeps the admin documents it fetches;
// after the tests, Main scans the logs and the documents for every registered secret and
// fails the run if one appears.
//
//	func TestMain(m *testing.M) { os.Exit(secretscan.Main(m, pgtest.Main)) }
//
// What the default client cannot see (a key passed as a flag, a request sent over raw TCP)
// is registered with RegisterFlags, RegisterRequest or Register.
package secretscan

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// MinLen is the length below which a value is not registered: too short to tell a leak from
// a coincidence ("k1", "b").
const MinLen = 5

// maxLen bounds a registered value (a test's 1 MiB header value is a size check, not a
// secret worth scanning for).
const maxLen = 4096

// run is the state of one test binary's run: the log files and the registered secrets.
type run struct {
	dir  string
	mu   sync.Mutex
	logs *os.File // every server's log lines, each prefixed with who wrote it
	docs *os.File // every admin document a test fetched
	// secrets maps a value to the kind it was first registered as.
	secrets map[string]string
}

// cur is the run in progress (nil: Main not called; Register and the writers do nothing
// then).
var cur *run

// Main runs the tests with runTests (pgtest.Main, say), then scans every log and admin
// document written during them for every registered secret. It returns runTests's code, or
// 1 if a secret appeared (each is named on stderr by its kind, with the file and line; the
// files are kept then).
func Main(m *testing.M, runTests func(*testing.M) int) int {
	if err := start(); err != nil {
		fmt.Fprintln(os.Stderr, "secretscan:", err)
		return 1
	}
	code := runTests(m)
	http.DefaultClient.Transport = nil
	found, err := finish(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "secretscan:", err)
		return 1
	}
	if found > 0 {
		return 1
	}
	return code
}

func start() error {
	dir, err := os.MkdirTemp("", "secretscan-")
	if err != nil {
		return err
	}
	r := &run{dir: dir, secrets: map[string]string{}}
	if r.logs, err = os.Create(filepath.Join(dir, "logs.txt")); err != nil {
		return err
	}
	if r.docs, err = os.Create(filepath.Join(dir, "admin-documents.txt")); err != nil {
		return err
	}
	cur = r
	// net/http's default client, not its default transport: code under test clones that
	// as an *http.Transport.
	http.DefaultClient.Transport = &transport{next: http.DefaultTransport}
	return nil
}

// finish scans the run's files, writes what it found to w, and removes the files unless
// something was found.
func finish(w io.Writer) (int, error) {
	r := cur
	r.mu.Lock()
	defer r.mu.Unlock()
	found := 0
	var lines [2]int
	for n, f := range []*os.File{r.logs, r.docs} {
		if err := f.Close(); err != nil {
			return 0, err
		}
		data, err := os.ReadFile(f.Name())
		if err != nil {
			return 0, err
		}
		lines[n] = bytes.Count(data, []byte("\n"))
		for _, hit := range Scan(data, r.secrets) {
			found++
			fmt.Fprintf(w, "secretscan: a %s appears in %s line %d: %s\n", hit.Kind, f.Name(), hit.Line, hit.Masked)
		}
	}
	if found == 0 {
		os.RemoveAll(r.dir)
	}
	fmt.Fprintf(w, "secretscan: %d registered secrets, %d found in %d log lines and %d admin documents of this run\n", len(r.secrets), found, lines[0], lines[1])
	return found, nil
}

// Register records value as a secret of kind (the first kind a value is registered as
// stays). Values shorter than MinLen are ignored.
func Register(kind, value string) {
	r := cur
	if r == nil || len(value) < MinLen || len(value) > maxLen {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.secrets[value]; !ok {
		r.secrets[value] = kind
	}
}

// Writer returns a writer that appends what it gets to the run's log file, each line
// prefixed with who (a test's and a process's name). Lines are kept whole: write each
// line at once, or through a bufio.Scanner as the tests' process harness does.
func Writer(who string) io.Writer {
	if cur == nil {
		return io.Discard
	}
	return &logWriter{f: cur.logs, mu: &cur.mu, prefix: []byte(who + ": ")}
}

// Handler returns a slog handler at debug level writing to the run's log file as who.
func Handler(who string) slog.Handler {
	return slog.NewTextHandler(Writer(who), &slog.HandlerOptions{Level: slog.LevelDebug})
}

type logWriter struct {
	f      *os.File
	mu     *sync.Mutex
	prefix []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(p, []byte("\n")) {
		if len(l) > 0 {
			b.Write(w.prefix)
			b.Write(l)
		}
	}
	if len(p) > 0 && p[len(p)-1] != '\n' {
		b.WriteByte('\n')
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.f.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// keepDocument appends an admin document a test fetched to the run's documents file.
func keepDocument(method, u string, body []byte) {
	r := cur
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.docs, "%s %s: %s\n", method, u, bytes.ReplaceAll(body, []byte("\n"), []byte(" ")))
}

// wholeWordLen is the length below which a value is found only as a whole word (no letter,
// digit, - or _ next to it): a test's short secret is often a word a log holds for other reasons.
const wholeWordLen = 12

func isWordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// Hit is a secret found by Scan.
type Hit struct {
	Kind   string
	Line   int    // 1-based line number of its first appearance
	Masked string // that line, each secret found replaced by [its kind]
}

// Scan returns the secrets (value to kind) that appear in data, each once, in the order of
// their first appearance. It reads data once, looking up each position's first MinLen bytes.
func Scan(data []byte, secrets map[string]string) []Hit {
	byPrefix := map[string][]string{}
	for s := range secrets {
		byPrefix[s[:MinLen]] = append(byPrefix[s[:MinLen]], s)
	}
	seen := map[string]bool{}
	var (
		hits  []Hit
		found []string
	)
	line, lineStart := 1, 0
	for i := 0; i+MinLen <= len(data); i++ {
		if data[i] == '\n' {
			line++
			lineStart = i + 1
			continue
		}
		cands, ok := byPrefix[string(data[i:i+MinLen])] // no allocation: a map index by a converted []byte
		if !ok {
			continue
		}
		for _, s := range cands {
			if seen[s] || !bytes.HasPrefix(data[i:], []byte(s)) {
				continue
			}
			if len(s) < wholeWordLen && (i > 0 && isWordByte(data[i-1]) || i+len(s) < len(data) && isWordByte(data[i+len(s)])) {
				continue // a short value inside a longer word: "secret" in "--secret-key-file"
			}
			seen[s] = true
			end := bytes.IndexByte(data[i:], '\n')
			if end < 0 {
				end = len(data) - i
			}
			hits = append(hits, Hit{Kind: secrets[s], Line: line, Masked: string(data[lineStart : i+end])})
			found = append(found, s)
		}
	}
	// Mask every secret found in every line shown, longest first (one may hold another).
	sort.Slice(found, func(a, b int) bool { return len(found[a]) > len(found[b]) })
	for i := range hits {
		for _, s := range found {
			hits[i].Masked = strings.ReplaceAll(hits[i].Masked, s, "["+secrets[s]+"]")
		}
	}
	return hits
}

// transport registers the secrets of the requests tests send and of the answers they get,
// and keeps the admin documents they fetch.
type transport struct{ next http.RoundTripper }

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	RegisterRequest(req)
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	path := req.URL.Path
	admin := strings.HasPrefix(path, "/v1/admin/") || strings.HasPrefix(path, "/admin/") || path == "/metrics"
	handoff := req.Method == http.MethodPost && path == "/v1/streams"
	for _, c := range resp.Cookies() {
		if c.Name == "pushproxy_admin" {
			Register("dashboard session", c.Value)
		}
	}
	if (!admin && !handoff) || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, nil // the test reads the error-free part and fails on its own terms
	}
	if handoff && resp.StatusCode == http.StatusCreated {
		var a struct {
			Token        string `json:"token"`
			DeviceSecret string `json:"device_secret"`
		}
		if json.Unmarshal(body, &a) == nil {
			Register("stream token", a.Token)
			Register("device secret", a.DeviceSecret)
		}
	}
	if admin {
		keepDocument(req.Method, req.URL.String(), body)
	}
	return resp, nil
}

// RegisterRequest registers the secrets a request carries: credentials in Authorization
// (API keys, admin and stream tokens, right or wrong), cookies, ?token=, a dashboard
// sign-in's token, and a handoff's forwarded header values, URL query values, push token
// and device secret. The default client calls it for every request; a test sending requests by
// other means may call it itself.
func RegisterRequest(req *http.Request) {
	if cur == nil {
		return
	}
	for _, v := range req.Header.Values("Authorization") {
		registerCredential("credential sent in Authorization", v)
	}
	for _, c := range req.Cookies() {
		Register("cookie sent by a client", c.Value)
	}
	for _, v := range req.URL.Query()["token"] {
		Register("token sent in ?token=", v)
	}
	if req.Method != http.MethodPost || (req.URL.Path != "/v1/streams" && req.URL.Path != "/admin/login") {
		return
	}
	body := requestBody(req)
	if body == nil {
		return
	}
	if req.URL.Path == "/admin/login" {
		if f, err := url.ParseQuery(string(body)); err == nil {
			Register("admin token sent to sign in", f.Get("token"))
		}
		return
	}
	RegisterHandoff(body)
}

// RegisterHandoff registers the secrets of a handoff's JSON body: forwarded header values,
// the URL's query values, the push token and the device secret.
func RegisterHandoff(body []byte) {
	var h struct {
		URL     string            `json:"url"`
		Headers map[string]string `json:"headers"`
		Push    struct {
			Token        string `json:"token"`
			DeviceSecret string `json:"device_secret"`
		} `json:"push"`
		DeviceSecret string `json:"device_secret"`
	}
	if json.Unmarshal(body, &h) != nil {
		var loose map[string]json.RawMessage // a test's malformed body: take what parses
		if json.Unmarshal(body, &loose) != nil {
			return
		}
		json.Unmarshal(loose["url"], &h.URL)
		json.Unmarshal(loose["headers"], &h.Headers)
		json.Unmarshal(loose["push"], &h.Push)
	}
	for _, v := range h.Headers {
		registerCredential("forwarded header value", v)
	}
	if u, err := url.Parse(h.URL); err == nil {
		for _, vs := range u.Query() {
			for _, v := range vs {
				Register("handoff URL query value", v)
			}
		}
	}
	Register("push token", h.Push.Token)
	Register("device secret sent in a handoff", h.Push.DeviceSecret)
	Register("device secret sent in a handoff", h.DeviceSecret)
}

// registerCredential registers a header value whole, and its credential part: after an
// auth scheme ("Bearer x"), and each cookie's value ("a=x; b=y").
func registerCredential(kind, v string) {
	v = strings.TrimSpace(v)
	switch strings.ToLower(v) {
	case "bearer", "basic", "token", "digest":
		return // a scheme alone
	}
	if scheme, cred, ok := strings.Cut(v, " "); ok && !strings.Contains(scheme, "=") {
		if cred = strings.TrimSpace(cred); len(cred) < MinLen {
			return // a scheme with no credential worth the name ("Bearer ", "Bearer x")
		}
		Register(kind, cred)
	}
	Register(kind, v)
	if strings.Contains(v, "=") {
		for _, part := range strings.Split(v, ";") {
			if _, val, ok := strings.Cut(strings.TrimSpace(part), "="); ok {
				Register(kind, val)
			}
		}
	}
}

// requestBody returns a copy of a request's body without consuming it (nil when it cannot:
// a streamed body of unknown length is the test's own).
func requestBody(req *http.Request) []byte {
	if req.GetBody != nil {
		rc, err := req.GetBody()
		if err != nil {
			return nil
		}
		defer rc.Close()
		b, _ := io.ReadAll(io.LimitReader(rc, 1<<20))
		return b
	}
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength <= 0 || req.ContentLength > 1<<20 {
		return nil
	}
	b, err := io.ReadAll(bufio.NewReader(req.Body))
	req.Body.Close()
	req.Body = io.NopCloser(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	return b
}

// RegisterFlags registers the secrets in a pushproxy command line and environment: the API
// keys and the admin token, as flags (--api-keys k1,k2 or --api-keys=k1,k2) or environment
// variables.
func RegisterFlags(args, env []string) {
	kinds := map[string]string{"api-keys": "API key", "admin-token": "admin token"}
	take := func(kind, v string) {
		for _, k := range strings.Split(v, ",") {
			Register(kind, strings.TrimSpace(k))
		}
	}
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		kind, ok := kinds[name]
		if !ok {
			continue
		}
		if !hasVal && i+1 < len(args) {
			val = args[i+1]
		}
		take(kind, val)
	}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		switch k {
		case "PUSHPROXY_API_KEYS":
			take("API key", v)
		case "PUSHPROXY_ADMIN_TOKEN":
			take("admin token", v)
		}
	}
}
