package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"), goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"), goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

type testBundle struct {
	api   *httptest.Server
	store *store.Store
	url   string
}

// setup starts a Service on a fresh database with its API on a loopback server. Origins in
// tests run on 127.0.0.1, so loopback is allowed unless opts says otherwise.
func setup(t *testing.T, opts *proxy.Options) (*proxy.Service, *testBundle) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
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
		o.Upstream, _ = proxy.ParseAllowList([]string{"127.0.0.0/8"})
	}
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
	api := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- svc.Stop(sctx) }()
		api.Close()
		if err := <-stopped; err != nil {
			t.Errorf("stop: %v", err)
		}
		st.Close()
	})
	return svc, &testBundle{api: api, store: st, url: url}
}

// eventually waits until cond holds, checking every few milliseconds, and fails the test
// after timeout.
// newOrigin starts a test origin. Its cleanup cuts the proxy's open upstream connections
// first: Close alone would wait forever for event streams that never end.
func newOrigin(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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

type handoffResult struct {
	ID        string `json:"id"`
	Token     string `json:"token"`
	EventsURL string `json:"events_url"`
	State     string `json:"state"`
}

func do(t *testing.T, method, url string, body string, header http.Header) (*http.Response, []byte) {
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

func handoff(t *testing.T, b *testBundle, body map[string]any) handoffResult {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, out := do(t, "POST", b.api.URL+"/v1/streams", string(raw), http.Header{"Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("handoff: %d %s", resp.StatusCode, out)
	}
	var h handoffResult
	if err := json.Unmarshal(out, &h); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Location") != "/v1/streams/"+h.ID {
		t.Fatalf("Location = %q", resp.Header.Get("Location"))
	}
	return h
}

type streamInfo struct {
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

func getStream(t *testing.T, b *testBundle, h handoffResult) streamInfo {
	t.Helper()
	resp, out := do(t, "GET", b.api.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer " + h.Token}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get stream: %d %s", resp.StatusCode, out)
	}
	var si streamInfo
	if err := json.Unmarshal(out, &si); err != nil {
		t.Fatal(err)
	}
	return si
}

type page struct {
	Events []struct {
		ID    string `json:"id"`
		Event string `json:"event"`
		Data  string `json:"data"`
	} `json:"events"`
	LastEventID string `json:"last_event_id"`
	More        bool   `json:"more"`
	Gap         bool   `json:"gap"`
}

func fetchJSON(t *testing.T, b *testBundle, h handoffResult, query string) page {
	t.Helper()
	resp, out := do(t, "GET", b.api.URL+h.EventsURL+query, "", http.Header{"Accept": {"application/json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch: %d %s", resp.StatusCode, out)
	}
	var p page
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return p
}
