// Package proxytest starts a whole proxy for tests: a proxy.Service on a fresh database with
// its HTTP API on a loopback server, a scripted SSE origin, and the HTTP calls the tests of
// the proxy and api packages share.
package proxytest

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/openapicheck"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/secretscan"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

// Main runs the tests of a package that uses Start (see pgtest.Main), then fails the run if
// any goroutine outlived them, or if a secret the tests sent or received appears in a log
// line of a proxy Start started or in an admin document (see internal/secretscan). Call it from TestMain: os.Exit(proxytest.Main(m)).
func Main(m *testing.M) int {
	code := secretscan.Main(m, pgtest.Main)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"), goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"), goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	return code
}

// CheckOpenAPI, set by a package's TestMain before its tests run (or by
// PUSHPROXY_OPENAPI_CHECK=1 in the environment, for any package), has the API servers Start
// and StartOn start check every request and response against api/openapi.yaml
// (internal/openapicheck): a mismatch fails the test that made the request.
var CheckOpenAPI = os.Getenv("PUSHPROXY_OPENAPI_CHECK") == "1"

// Bundle is what Start started besides the service.
type Bundle struct {
	API   *httptest.Server // the HTTP API (api.Server) on loopback
	HTTP  *api.Server
	Store *store.Store
	DBURL string // the test's own database
}

// Start starts a proxy.Service on a fresh database with its HTTP API (api.Server, with
// httpOpts) on a loopback server, and stops everything when the test ends. Origins in tests
// run on 127.0.0.1, so loopback is allowed unless opts says otherwise.
func Start(t *testing.T, opts *proxy.Options, httpOpts *api.Options) (*proxy.Service, *Bundle) {
	t.Helper()
	return StartOn(t, pgtest.NewDatabase(t), opts, httpOpts)
}

// StartOn is Start on the database at url (a test's own cluster, say), which it migrates.
func StartOn(t *testing.T, url string, opts *proxy.Options, httpOpts *api.Options) (*proxy.Service, *Bundle) {
	t.Helper()
	ctx := context.Background()
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := proxy.Options{}
	if opts != nil {
		o = *opts
	}
	if o.Upstream == nil {
		o.Upstream, _ = upstream.ParseAllowList([]string{"127.0.0.0/8"})
	}
	// The service's and the API's logs go to the run's log file, which secretscan scans.
	o.Logger = scannedLogger(t, "proxy", o.Logger)
	ho := api.Options{}
	if httpOpts != nil {
		ho = *httpOpts
	}
	ho.Logger = scannedLogger(t, "api", ho.Logger)
	secretscan.RegisterFlags(append([]string{"--admin-token", ho.AdminToken, "--api-keys"}, strings.Join(ho.APIKeys, ",")), nil)
	httpOpts = &ho
	if o.UpstreamRetry == 0 {
		o.UpstreamRetry = 20 * time.Millisecond
	}
	if o.UpstreamBackoffMax == 0 {
		o.UpstreamBackoffMax = 200 * time.Millisecond
	}
	svc := proxy.New(st, url, &o)
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := api.New(svc, st, httpOpts)
	h := srv.Handler()
	if CheckOpenAPI {
		h = openapicheck.MustLoad(t).Middleware(t, h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- svc.Stop(sctx) }()
		srv.Close()
		ts.Close()
		if err := <-stopped; err != nil {
			t.Errorf("stop: %v", err)
		}
		st.Close()
	})
	return svc, &Bundle{API: ts, HTTP: srv, Store: st, DBURL: url}
}

// scannedLogger returns a logger that writes to the test binary's scanned log file, and to
// the test's own logger too if it has one.
func scannedLogger(t *testing.T, who string, own *slog.Logger) *slog.Logger {
	h := secretscan.Handler(t.Name() + " " + who)
	if own == nil {
		return slog.New(h)
	}
	return slog.New(slog.NewMultiHandler(own.Handler(), h))
}

// NewOrigin starts a test origin. Its cleanup cuts the proxy's open upstream connections
// first: Close alone would wait forever for event streams that never end.
func NewOrigin(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// Eventually waits until cond holds, checking every few milliseconds, and fails the test
// after timeout.
func Eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// HandoffResult is the body of a handoff's 201.
type HandoffResult struct {
	ID        string `json:"id"`
	Token     string `json:"token"`
	EventsURL string `json:"events_url"`
	State     string `json:"state"`
	// DeviceSecret is answered by the handoff that created the stream's device.
	DeviceSecret string `json:"device_secret"`
}

// Do sends a request and returns the response with its whole body.
func Do(t *testing.T, method, url string, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// Handoff hands off a stream (body as JSON) and checks the 201.
func Handoff(t *testing.T, b *Bundle, body map[string]any) HandoffResult {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, out := Do(t, "POST", b.API.URL+"/v1/streams", string(raw), http.Header{"Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("handoff: %d %s", resp.StatusCode, out)
	}
	var h HandoffResult
	if err := json.Unmarshal(out, &h); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Location") != "/v1/streams/"+h.ID {
		t.Fatalf("Location = %q", resp.Header.Get("Location"))
	}
	return h
}

// StreamInfo is the part of GET /v1/streams/{id} tests read.
type StreamInfo struct {
	State       string  `json:"state"`
	StateReason string  `json:"state_reason"`
	Backlog     int64   `json:"backlog"`
	NewestID    *string `json:"newest_event_id"`
	Upstream    struct {
		Status    int    `json:"status"`
		Connected bool   `json:"connected"`
		Connects  int64  `json:"connects"`
		LastError string `json:"last_error"`
	} `json:"upstream"`
}

// GetStream gets a stream with its token.
func GetStream(t *testing.T, b *Bundle, h HandoffResult) StreamInfo {
	t.Helper()
	resp, out := Do(t, "GET", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer " + h.Token}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get stream: %d %s", resp.StatusCode, out)
	}
	var si StreamInfo
	if err := json.Unmarshal(out, &si); err != nil {
		t.Fatal(err)
	}
	return si
}

// Page is a JSON page of events.
type Page struct {
	Events []struct {
		ID    string `json:"id"`
		Event string `json:"event"`
		Data  string `json:"data"`
	} `json:"events"`
	LastEventID string `json:"last_event_id"`
	More        bool   `json:"more"`
	Gap         bool   `json:"gap"`
}

// FetchJSON fetches a JSON page of h's events (query starts with & when set).
func FetchJSON(t *testing.T, b *Bundle, h HandoffResult, query string) Page {
	t.Helper()
	resp, out := Do(t, "GET", b.API.URL+h.EventsURL+query, "", http.Header{"Accept": {"application/json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch: %d %s", resp.StatusCode, out)
	}
	var p Page
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// ScriptOrigin is an SSE origin for tests: it serves the events published so far after the
// request's Last-Event-ID, then waits for more; with dropEvery it closes the connection
// after that many events.
type ScriptOrigin struct {
	mu        sync.Mutex
	events    []string // raw event blocks; the i-th has id i+1
	more      chan struct{}
	dropEvery int
	lastIDs   []string // Last-Event-ID of every request
	Srv       *httptest.Server
}

// NewScriptOrigin starts a ScriptOrigin on a loopback server.
func NewScriptOrigin(t *testing.T, dropEvery int) *ScriptOrigin {
	o := NewScript(dropEvery)
	o.Srv = NewOrigin(t, o)
	return o
}

// NewScript returns a ScriptOrigin without a server, for a test that serves it itself (set
// Srv).
func NewScript(dropEvery int) *ScriptOrigin {
	return &ScriptOrigin{more: make(chan struct{}), dropEvery: dropEvery}
}

// Publish publishes raw event blocks.
func (o *ScriptOrigin) Publish(blocks ...string) {
	o.mu.Lock()
	o.events = append(o.events, blocks...)
	close(o.more)
	o.more = make(chan struct{})
	o.mu.Unlock()
}

// PublishN publishes n events with ids and JSON data.
func (o *ScriptOrigin) PublishN(n int) {
	o.mu.Lock()
	start := len(o.events)
	o.mu.Unlock()
	blocks := make([]string, n)
	for i := range blocks {
		id := start + i + 1
		blocks[i] = fmt.Sprintf("id: %d\nevent: update\ndata: {\"n\":%d}\n\n", id, id)
	}
	o.Publish(blocks...)
}

// Requests returns the Last-Event-ID of every request so far.
func (o *ScriptOrigin) Requests() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.lastIDs...)
}

func (o *ScriptOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	last := r.Header.Get("Last-Event-ID")
	o.mu.Lock()
	o.lastIDs = append(o.lastIDs, last)
	o.mu.Unlock()
	next := 0
	if last != "" {
		n, err := strconv.Atoi(last)
		if err != nil {
			http.Error(w, "bad id", 400)
			return
		}
		next = n
	}
	if r.Header.Get("Accept") != "text/event-stream" || r.Header.Get("Cache-Control") != "no-cache" {
		http.Error(w, "missing SSE request headers", 400)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	w.(http.Flusher).Flush()
	sent := 0
	for {
		o.mu.Lock()
		pending := o.events[next:]
		more := o.more
		o.mu.Unlock()
		for _, b := range pending {
			if _, err := w.Write([]byte(b)); err != nil {
				return
			}
			next++
			sent++
			if o.dropEvery > 0 && sent >= o.dropEvery {
				w.(http.Flusher).Flush()
				return
			}
		}
		w.(http.Flusher).Flush()
		select {
		case <-more:
		case <-r.Context().Done():
			return
		}
	}
}

// AdminGet GETs an admin route with token (as a Bearer token, none when empty), decodes a 200
// answer into out and returns the status.
func AdminGet(t *testing.T, b *Bundle, path, token string, out any) int {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	resp, body := Do(t, "GET", b.API.URL+path, "", h)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// SilentResolver returns a resolver whose DNS server never answers: every query is sent to a
// UDP socket on loopback that reads and drops it. The channel receives once per query read,
// so a test can wait until a lookup is under way. When the test ends, lookups still waiting
// fail at once (Go's resolver goes on after its caller gives up, and would outlive the test).
func SilentResolver(t testing.TB) (*net.Resolver, <-chan struct{}) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	queried := make(chan struct{}, 64)
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case queried <- struct{}{}:
			default:
			}
		}
	}()
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	t.Cleanup(func() {
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		pc.Close()
	})
	addr := pc.LocalAddr().String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			mu.Lock()
			defer mu.Unlock()
			if closed {
				return nil, net.ErrClosed
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "udp", addr)
			if err == nil {
				conns = append(conns, c)
			}
			return c, err
		},
	}, queried
}

// FCMToken returns a made-up FCM registration token of the real shape (an installation id,
// ":", then 140 characters of base64url), distinct per name.
func FCMToken(name string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	h := fnv.New64a()
	h.Write([]byte(name))
	seed := h.Sum64()
	b := make([]byte, 22+1+140)
	for i := range b {
		seed = seed*6364136223846793005 + 1442695040888963407
		b[i] = alphabet[seed>>58]
	}
	b[22] = ':'
	return string(b)
}

// APNsToken returns a made-up APNs device token (64 hex characters), distinct per n.
func APNsToken(n int) string {
	return fmt.Sprintf("%064x", uint64(n)+0xa11ce)
}
