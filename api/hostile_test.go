package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
)

// logCapture is a slog.Handler that keeps every record.
type logCapture struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, r.Clone())
	c.mu.Unlock()
	return nil
}
func (c *logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCapture) WithGroup(string) slog.Handler      { return c }

// requests returns the attributes of every "request" line, with the line's level as "level".
func (c *logCapture) requests() []map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]string
	for _, r := range c.recs {
		if r.Message != "request" {
			continue
		}
		m := map[string]string{"level": r.Level.String()}
		r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		out = append(out, m)
	}
	return out
}

// errorsLogged returns the messages logged at error level.
func (c *logCapture) errorsLogged() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.recs {
		if r.Level >= slog.LevelError {
			out = append(out, r.Message)
		}
	}
	return out
}

// metricsCapture counts requests by route and status.
type metricsCapture struct {
	mu sync.Mutex
	n  map[string]int // "route status"
}

func (m *metricsCapture) Request(route, method string, status int, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n == nil {
		m.n = map[string]int{}
	}
	m.n[route+" "+http.StatusText(status)]++
}

func (m *metricsCapture) count(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[key]
}

// rawRequest sends raw bytes as one HTTP/1.1 request on a new connection and returns the
// response (net/http's client will not send some of what a hostile client sends).
func rawRequest(t *testing.T, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response to %.60q: %v", raw, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

func addrOf(b *testBundle) string { return strings.TrimPrefix(b.API.URL, "http://") }

// Query values that Postgres cannot take (NUL, bytes that are not UTF-8) are the client's
// mistake, never a 500.
func TestQueryBytesAreClientErrors(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{AdminToken: "admin-secret"})
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/"})
	admin := http.Header{"Authorization": {"Bearer admin-secret"}}
	for _, q := range []string{"host=%00", "host=%ff", "host=a%00b", "state=%ff", "cursor=%00", "sort=%c3", "limit=%00", "host=%zz", "x=%ff"} {
		resp, out := do(t, "GET", b.API.URL+"/v1/admin/streams?"+q, "", admin)
		checkProblem(t, resp, out, 400, "invalid", "")
	}
	for _, q := range []string{"&last_event_id=%00", "&last_event_id=%ff", "&last_event_id=a%0Ab", "&limit=%00"} {
		resp, out := do(t, "GET", b.API.URL+h.EventsURL+q, "", http.Header{"Accept": {"application/json"}})
		checkProblem(t, resp, out, 400, "invalid", "")
	}
	// A Last-Event-ID header that is not UTF-8 (net/http lets obs-text through).
	for _, path := range []string{h.EventsURL, "/v1/streams/" + h.ID + "?token=" + h.Token} {
		method := "GET"
		if !strings.Contains(path, "/events") {
			method = "DELETE"
		}
		resp, out := rawRequest(t, addrOf(b), method+" "+path+" HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nLast-Event-ID: \xff\xfe\r\nConnection: close\r\n\r\n")
		checkProblem(t, resp, out, 400, "invalid", "Last-Event-ID")
	}
	// The stream is unharmed.
	if si := getStream(t, b, h); si.State != "held" {
		t.Fatalf("stream after the bad requests: %+v", si)
	}
}

// A handoff whose DNS never answers is 503 "try again" once the handoff's wait (5 s) ends.
func TestHandoffWhoseDNSNeverAnswersIs503(t *testing.T) {
	t.Parallel()
	allow, err := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	allow.Resolver, _ = proxytest.SilentResolver(t)
	_, b := proxytest.Start(t, &proxy.Options{Upstream: allow}, nil)
	start := time.Now()
	resp, out := do(t, "POST", b.API.URL+"/v1/streams", `{"url":"http://origin.never-answers.example/events"}`, nil)
	checkProblem(t, resp, out, 503, "unavailable", "try again")
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("answered after %s", took)
	}
}

// Bytes that are not UTF-8, and \u escapes that are half a surrogate pair, would reach the
// origin as U+FFFD: refused.
func TestHandoffRefusesTextThatWouldBeAltered(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	for _, body := range []string{
		"{\"url\":\"http://127.0.0.1:1/\",\"headers\":{\"Authorization\":\"Bearer \xff\xfe\"}}",
		"{\"url\":\"http://127.0.0.1:1/\",\"last_event_id\":\"a\xc3\"}",
		"{\"url\":\"http://127.0.0.1:1/\",\"last_event_id\":\"\xed\xa0\x80\"}", // an encoded surrogate
		`{"url":"http://127.0.0.1:1/","last_event_id":"\ud800"}`,
		`{"url":"http://127.0.0.1:1/","last_event_id":"\udc00x"}`,
		`{"url":"http://127.0.0.1:1/","headers":{"X-A":"\ud83d\u0041"}}`,
		"{\"url\":\"http://127.0.0.1:1/\",\"colour\xff\":1}",
	} {
		resp, out := do(t, "POST", b.API.URL+"/v1/streams", body, http.Header{"Content-Type": {"application/json"}})
		checkProblem(t, resp, out, 400, "invalid", "body:")
	}
	// NUL in every string a handoff carries.
	for _, body := range []string{
		`{"url":"http://127.0.0.1:1/\u0000"}`,
		`{"url":"http://127.0.0.1:1/","last_event_id":"a\u0000"}`,
		`{"url":"http://127.0.0.1:1/","headers":{"X-A":"a\u0000"}}`,
		`{"url":"http://127.0.0.1:1/","headers":{"X-\u0000":"a"}}`,
		`{"url":"http://127.0.0.1:1/","push":{"platform":"fcm","token":"a\u0000"}}`,
		`{"url":"http://127.0.0.1:1/","push":{"platform":"fcm","token":"a","topic":"t\u0000"}}`,
		`{"url":"http://127.0.0.1:1/","push":{"platform":"fcm","token":"a"},"wake":{"urgent_events":["a\u0000"]}}`,
	} {
		resp, out := do(t, "POST", b.API.URL+"/v1/streams", body, nil)
		checkProblem(t, resp, out, 400, "invalid", "")
	}
	// A real pair, and an escaped backslash before a u, pass unaltered.
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/", "last_event_id": "😀\\ud800"})
	var got struct {
		ResumeID string `json:"upstream_last_event_id"`
	}
	resp, out := do(t, "GET", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer " + h.Token}})
	if err := json.Unmarshal(out, &got); err != nil || resp.StatusCode != 200 || got.ResumeID != "😀\\ud800" {
		t.Fatalf("resume id %q (%d %s)", got.ResumeID, resp.StatusCode, out)
	}
}

// Paths with empty, "." or ".." segments are answered like any unknown path: a 404 problem,
// logged and counted under the route "unmatched", and never a redirect that repeats the
// query (with its token) in Location.
func TestDotSegmentsAreAnsweredAsUnknownPaths(t *testing.T) {
	t.Parallel()
	logs, m := &logCapture{}, &metricsCapture{}
	_, b := setup(t, &api.Options{Logger: slog.New(logs), Metrics: m})
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/"})
	paths := []string{
		"/v1/streams/" + h.ID + "/../" + h.ID + "/events?token=" + h.Token,
		"/v1/streams/./" + h.ID + "?token=" + h.Token,
		"/v1//streams/" + h.ID + "?token=" + h.Token,
		"//v1/streams",
		"/v1/streams/%2e%2e/" + h.ID + "?token=" + h.Token,
		"/healthz/..",
		"/v1/admin/../streams",
	}
	for _, p := range paths {
		resp, out := rawRequest(t, addrOf(b), "GET "+p+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		checkProblem(t, resp, out, 404, "not-found", "no such route")
		if loc := resp.Header.Get("Location"); loc != "" {
			t.Fatalf("%s: Location %q", p, loc)
		}
	}
	// Every one logged (no path, no token) and counted as unmatched.
	n := 0
	for _, r := range logs.requests() {
		if r["route"] == "unmatched" && r["status"] == "404" {
			n++
		}
		for _, v := range r {
			if strings.Contains(v, h.Token) {
				t.Fatalf("token in a log line: %v", r)
			}
		}
	}
	if n != len(paths) || m.count("unmatched Not Found") != len(paths) {
		t.Fatalf("%d log lines and %d counts of unmatched 404s, want %d", n, m.count("unmatched Not Found"), len(paths))
	}
}

// A client that goes away before its answer is not the server's error: the request is
// logged at debug, with no error line and no 500 counted.
func TestClientThatGoesAwayIsNotAnError(t *testing.T) {
	t.Parallel()
	allow, err := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	var queried <-chan struct{}
	allow.Resolver, queried = proxytest.SilentResolver(t)
	logs, m := &logCapture{}, &metricsCapture{}
	_, b := proxytest.Start(t, &proxy.Options{Upstream: allow}, &api.Options{Logger: slog.New(logs), Metrics: m})

	// A handoff waits on DNS that never answers; the client gives up meanwhile.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", b.API.URL+"/v1/streams", strings.NewReader(`{"url":"http://slow-dns.example/"}`))
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case <-queried:
	case <-time.After(10 * time.Second):
		t.Fatal("the handoff never asked DNS")
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the request finished before the client went away")
	}
	eventually(t, 10*time.Second, "the request logged", func() bool {
		for _, r := range logs.requests() {
			if r["route"] == "/v1/streams" {
				return true
			}
		}
		return false
	})
	for _, r := range logs.requests() {
		if r["route"] == "/v1/streams" && (r["level"] != "DEBUG" || r["status"] != "499") {
			t.Fatalf("the abandoned request was logged as %v, want DEBUG with status 499", r)
		}
	}
	if e := logs.errorsLogged(); len(e) > 0 {
		t.Fatalf("errors logged: %q", e)
	}
	if m.count("/v1/streams Internal Server Error") != 0 {
		t.Fatal("a 500 was counted")
	}
}
