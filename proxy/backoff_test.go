package proxy_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
)

// TestNoReconnectStormWithoutEvents: an origin that answers 200 text/event-stream with
// retry: 0 and closes at once is reconnected with a backoff from 1 s, not as fast as it can.
func TestNoReconnectStormWithoutEvents(t *testing.T) {
	t.Parallel()
	var attempts atomic.Int64
	srv := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("retry: 0\n\n"))
	}))
	_, b := setup(t, &proxy.Options{UpstreamBackoffMax: time.Minute})
	h := handoff(t, b, map[string]any{"url": srv.URL})
	eventually(t, 20*time.Second, "the first connect", func() bool { return attempts.Load() >= 1 })
	// What is tested is a rate: attempts over a window. With the backoff (1 s, 2 s, ...)
	// 3 seconds hold at most 3 more; without it, thousands.
	time.Sleep(3 * time.Second)
	if n := attempts.Load(); n > 4 {
		t.Fatalf("%d connects in about 3 s to an origin that sends no event", n)
	}
	si := getStream(t, b, h)
	if si.State != "held" || si.Upstream.LastError != "the origin closed the stream" {
		t.Fatalf("stream %+v", si)
	}
}

// TestAnEventResetsTheBackoff: an origin that sends one event per connection, with retry: 0,
// is reconnected at once each time; only connections without an event are backed off.
func TestAnEventResetsTheBackoff(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		if i%2 == 0 {
			// Every other connection delivers nothing: one backoff of 1 s, never more.
			w.Write([]byte("retry: 0\n\n"))
			return
		}
		fmt.Fprintf(w, "retry: 0\nid: %d\ndata: x\n\n", i)
	}))
	_, b := setup(t, &proxy.Options{UpstreamBackoffMax: time.Minute})
	h := handoff(t, b, map[string]any{"url": srv.URL})
	// 6 events take 5 empty connections: 5 backoffs of 1 to 1.25 s if each event resets the
	// count; 1+2+4+8+16 s if not.
	eventually(t, 15*time.Second, "6 events", func() bool { return getStream(t, b, h).Backlog >= 6 })
}
