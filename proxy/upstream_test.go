package proxy_test

import (
	"compress/gzip"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
)

// TestAllowedPortNarrowsAnAddress: --upstream-allow 127.0.0.1:<port> allows that port of
// 127.0.0.1 and no other: a handoff to another port is refused, and so is a redirect from the
// allowed port to another one.
func TestAllowedPortNarrowsAnAddress(t *testing.T) {
	t.Parallel()
	o := newScriptOrigin(t, 0)
	o.PublishN(2)
	other := newScriptOrigin(t, 0) // on another port of 127.0.0.1
	other.PublishN(2)
	mux := http.NewServeMux()
	mux.Handle("/events", o)
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.Srv.URL+"/events", http.StatusTemporaryRedirect)
	})
	srv := newOrigin(t, mux)
	o.Srv = srv
	port := mustURL(t, srv.URL).Port()
	allow, err := upstream.ParseAllowList([]string{"127.0.0.1:" + port})
	if err != nil {
		t.Fatal(err)
	}
	_, b := setup(t, &proxy.Options{Upstream: allow})

	h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
	eventually(t, 20*time.Second, "events from the allowed port", func() bool { return getStream(t, b, h).Backlog == 2 })

	raw, _ := json.Marshal(map[string]any{"url": other.Srv.URL + "/events"})
	resp, body := do(t, "POST", b.API.URL+"/v1/streams", string(raw), http.Header{"Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "--upstream-allow") {
		t.Fatalf("handoff to another port of an allowed address: %d %s", resp.StatusCode, body)
	}

	h = handoff(t, b, map[string]any{"url": srv.URL + "/moved"})
	var si streamInfo
	eventually(t, 20*time.Second, "the redirect to another port to fail", func() bool { si = getStream(t, b, h); return si.State == "failed" })
	if !strings.Contains(si.StateReason, "--upstream-allow") || si.Backlog != 0 {
		t.Fatalf("stream %+v", si)
	}
	if n := len(other.Requests()); n != 0 {
		t.Fatalf("the origin on the other port got %d requests", n)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestContentCodingFailsTheStream: the proxy asks for identity; an origin that compresses
// its event stream anyway fails the stream with the reason, over HTTP/1.1 and HTTP/2,
// instead of leaving it held, connected and silent.
func TestContentCodingFailsTheStream(t *testing.T) {
	t.Parallel()
	gz := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "identity" {
			t.Errorf("Accept-Encoding %q", r.Header.Get("Accept-Encoding"))
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		zw.Write([]byte("id: 1\ndata: compressed\n\n"))
		zw.Flush()
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	for _, h2c := range []bool{false, true} {
		srv := newOrigin(t, gz)
		if h2c {
			srv = newH2COrigin(t, gz, nil)
		}
		_, b := setup(t, &proxy.Options{UpstreamH2C: h2c})
		u := srv.URL
		h := handoff(t, b, map[string]any{"url": u + "/events"})
		var si streamInfo
		eventually(t, 20*time.Second, "the stream to fail", func() bool { si = getStream(t, b, h); return si.State != "held" })
		if si.State != "failed" || !strings.Contains(si.StateReason, "Content-Encoding") || !strings.Contains(si.StateReason, "gzip") ||
			si.Upstream.Connected || si.Backlog != 0 || si.Upstream.LastError == "" {
			t.Fatalf("%s: stream %+v", u, si)
		}
	}
}

// headerLog is an origin handler that records the headers of each request.
type headerLog struct {
	mu   sync.Mutex
	seen []http.Header
}

func (l *headerLog) record(r *http.Request) {
	l.mu.Lock()
	l.seen = append(l.seen, r.Header.Clone())
	l.mu.Unlock()
}

func (l *headerLog) last() http.Header {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.seen) == 0 {
		return nil
	}
	return l.seen[len(l.seen)-1]
}

// TestNoForwardedHeaderFollowsACrossOriginRedirect: a redirect to another origin (here
// another port of the same host) takes none of the forwarded headers along, not only the
// well-known credentials; one within the origin takes them all. The proxy's own headers
// follow both.
func TestNoForwardedHeaderFollowsACrossOriginRedirect(t *testing.T) {
	t.Parallel()
	var other, same headerLog
	sse := func(l *headerLog) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			l.record(r)
			w.Header().Set("Content-Type", "text/event-stream")
			w.Write([]byte("id: 1\ndata: x\n\n"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}
	elsewhere := newOrigin(t, sse(&other))
	mux := http.NewServeMux()
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/events", http.StatusFound)
	})
	mux.HandleFunc("/here", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/events", http.StatusFound) })
	mux.Handle("/events", sse(&same))
	srv := newOrigin(t, mux)
	_, b := setup(t, nil)
	forwarded := map[string]string{"Authorization": "Bearer origin-secret", "Cookie": "s=1", "X-Api-Key": "k-123", "X-Tenant": "t1"}

	for _, c := range []struct {
		path string
		log  *headerLog
		keep bool
	}{{"/away", &other, false}, {"/here", &same, true}} {
		h := handoff(t, b, map[string]any{"url": srv.URL + c.path, "last_event_id": "41", "headers": forwarded})
		eventually(t, 20*time.Second, c.path+": the event", func() bool { return getStream(t, b, h).Backlog == 1 })
		got := c.log.last()
		for k, v := range forwarded {
			if c.keep && got.Get(k) != v {
				t.Errorf("%s: %s = %q, want %q", c.path, k, got.Get(k), v)
			}
			if !c.keep && got.Get(k) != "" {
				t.Errorf("%s: %s followed the redirect to another origin", c.path, k)
			}
		}
		for k, v := range map[string]string{"Accept": "text/event-stream", "Accept-Encoding": "identity", "Cache-Control": "no-cache", "Last-Event-Id": "41"} {
			if got.Get(k) != v {
				t.Errorf("%s: %s = %q, want %q", c.path, k, got.Get(k), v)
			}
		}
	}
}
