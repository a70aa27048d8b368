package proxy_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
)

// TestHoldingOverH2C holds streams of an h2c origin through the proxy's own HTTP/2 client:
// they share one connection, get every event, follow redirects, and end as their statuses
// say; closing a stream cancels its request at the origin.
func TestHoldingOverH2C(t *testing.T) {
	t.Parallel()
	script := proxytest.NewScript(0)
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
	mux.HandleFunc("/ftp", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "ftp://example.com/events", http.StatusFound)
	})
	mux.HandleFunc("/gone", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusNotFound) })
	mux.HandleFunc("/done", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		canceled <- struct{}{}
	})
	srv := newH2COrigin(t, mux, &conns)
	script.Srv = srv

	_, b := setup(t, &proxy.Options{UpstreamH2C: true, UpstreamMaxRedirects: 3})
	script.PublishN(3)
	var held []handoffResult
	for range 4 {
		held = append(held, handoff(t, b, map[string]any{"url": srv.URL + "/events"}))
	}
	held = append(held, handoff(t, b, map[string]any{"url": srv.URL + "/moved"}))
	for _, h := range held {
		eventually(t, 20*time.Second, "the backlog", func() bool { return getStream(t, b, h).Backlog == 3 })
	}
	script.PublishN(2)
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
		{"/ftp", "failed", `unsupported scheme "ftp"`},
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
	if resp, body := do(t, "DELETE", b.API.URL+"/v1/streams/"+w.ID, "", http.Header{"Authorization": {"Bearer " + w.Token}}); resp.StatusCode != http.StatusOK {
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

// newH2COrigin starts an origin that speaks only h2c, counting its connections in conns.
func newH2COrigin(t *testing.T, h http.Handler, conns *atomic.Int32) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "h2 only", http.StatusHTTPVersionNotSupported)
			return
		}
		h.ServeHTTP(w, r)
	}))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew && conns != nil {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return srv
}

// TestH2CDropsIdleAndOversize: over the proxy's HTTP/2 client, an origin that ends the
// stream every few events loses nothing, a silent one is reconnected after the idle timeout,
// and an oversized event fails its stream.
func TestH2CDropsIdleAndOversize(t *testing.T) {
	t.Parallel()
	drops := proxytest.NewScript(2)
	mux := http.NewServeMux()
	mux.Handle("/events", drops)
	mux.HandleFunc("/silent", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.Write([]byte("data: " + strings.Repeat("x", 4096) + "\n\n"))
	})
	srv := newH2COrigin(t, mux, nil)
	drops.Srv = srv
	_, b := setup(t, &proxy.Options{UpstreamH2C: true, UpstreamIdleTimeout: 200 * time.Millisecond, MaxEventSize: 1024})

	drops.PublishN(7)
	h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
	eventually(t, 20*time.Second, "every event", func() bool { return getStream(t, b, h).Backlog == 7 })
	p := fetchJSON(t, b, h, "")
	for i, ev := range p.Events {
		if ev.ID != strconv.Itoa(i+1) {
			t.Fatalf("event %d has id %q: %+v", i, ev.ID, p.Events)
		}
	}
	if reqs := drops.Requests(); len(reqs) < 4 || reqs[1] != "2" || reqs[2] != "4" {
		t.Fatalf("reconnects resumed from %q", reqs)
	}

	silent := handoff(t, b, map[string]any{"url": srv.URL + "/silent"})
	eventually(t, 20*time.Second, "an idle reconnect", func() bool {
		si := getStream(t, b, silent)
		return strings.Contains(si.Upstream.LastError, "no data from the origin") && si.Upstream.Connects >= 2
	})

	huge := handoff(t, b, map[string]any{"url": srv.URL + "/huge"})
	eventually(t, 20*time.Second, "the oversized event to fail the stream", func() bool { return getStream(t, b, huge).State == "failed" })
	if si := getStream(t, b, huge); !strings.Contains(si.StateReason, "larger than 1024 bytes") {
		t.Fatalf("reason %q", si.StateReason)
	}
}
