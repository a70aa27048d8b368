package proxy_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
)

// TestHoldingOverH2C holds streams of an h2c origin through the proxy's own HTTP/2 client:
// they share one connection, get every event, follow redirects, and end as their statuses
// say; closing a stream cancels its request at the origin.
func TestHoldingOverH2C(t *testing.T) {
	t.Parallel()
	script := &scriptOrigin{more: make(chan struct{})}
	var conns atomic.Int32
	canceled := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.Handle("/events", script)
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "h2 only", http.StatusHTTPVersionNotSupported)
			return
		}
		http.Redirect(w, r, "/events", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/gone", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusNotFound) })
	mux.HandleFunc("/done", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		canceled <- struct{}{}
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "h2 only", http.StatusHTTPVersionNotSupported)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	script.srv = srv

	_, b := setup(t, &proxy.Options{UpstreamH2C: true, UpstreamMaxRedirects: 3})
	script.publishN(3)
	var held []handoffResult
	for range 4 {
		held = append(held, handoff(t, b, map[string]any{"url": srv.URL + "/events"}))
	}
	held = append(held, handoff(t, b, map[string]any{"url": srv.URL + "/moved"}))
	for _, h := range held {
		eventually(t, 20*time.Second, "the backlog", func() bool { return getStream(t, b, h).Backlog == 3 })
	}
	script.publishN(2)
	for _, h := range held {
		eventually(t, 20*time.Second, "live events", func() bool { return getStream(t, b, h).Backlog == 5 })
	}
	p := fetchJSON(t, b, held[4], "")
	if len(p.Events) != 5 || p.Events[0].ID != "1" || p.Events[4].ID != "5" || p.Events[4].Event != "update" {
		t.Fatalf("events through a redirect: %+v", p.Events)
	}

	cases := []struct{ path, state, reason string }{
		{"/gone", "failed", "origin answered 404 Not Found"},
		{"/done", "closed", "204"},
		{"/loop", "failed", "more than 3 redirects"},
	}
	for _, c := range cases {
		h := handoff(t, b, map[string]any{"url": srv.URL + c.path})
		eventually(t, 20*time.Second, c.path+" to end", func() bool { return getStream(t, b, h).State == c.state })
		if si := getStream(t, b, h); !strings.Contains(si.StateReason, c.reason) {
			t.Errorf("%s: reason %q, want %q", c.path, si.StateReason, c.reason)
		}
	}

	w := handoff(t, b, map[string]any{"url": srv.URL + "/watch"})
	eventually(t, 20*time.Second, "the upstream to connect", func() bool { return getStream(t, b, w).Upstream.Connected })
	if resp, body := do(t, "DELETE", b.api.URL+"/v1/streams/"+w.ID, "", http.Header{"Authorization": {"Bearer " + w.Token}}); resp.StatusCode != http.StatusOK {
		t.Fatalf("close: %d %s", resp.StatusCode, body)
	}
	select {
	case <-canceled:
	case <-time.After(20 * time.Second):
		t.Fatal("closing the stream did not cancel its request at the origin")
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections to the origin, want every stream on one", n)
	}
}
