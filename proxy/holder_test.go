package proxy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
)

func TestEveryEventQueuedOnceAcrossOriginDrops(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 3)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL + "/events"})
	o.PublishN(20)
	eventually(t, 20*time.Second, "20 events queued", func() bool { return getStream(t, b, h).Backlog == 20 })
	p := fetchJSON(t, b, h, "&limit=1000")
	if len(p.Events) != 20 || p.More {
		t.Fatalf("got %d events (more %v)", len(p.Events), p.More)
	}
	for i, ev := range p.Events {
		want := strconv.Itoa(i + 1)
		if ev.ID != want || ev.Event != "update" || ev.Data != `{"n":`+want+`}` {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	// The origin was asked to resume where each connection ended.
	reqs := o.Requests()
	if len(reqs) < 7 || reqs[0] != "" || reqs[1] != "3" || reqs[2] != "6" {
		t.Fatalf("Last-Event-IDs sent to the origin: %q", reqs)
	}
	si := getStream(t, b, h)
	if si.Upstream.Connects < 7 || si.Upstream.Status != 200 {
		t.Fatalf("upstream %+v", si.Upstream)
	}
}

func TestUpstreamOutcomes(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &proxy.Options{MaxEventSize: 4096, UpstreamMaxRedirects: 3})
	mux := http.NewServeMux()
	mux.HandleFunc("/204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	mux.HandleFunc("/404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	mux.HandleFunc("/html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html>"))
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/endless", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		chunk := []byte(strings.Repeat("x", 1024))
		w.Write([]byte("data: "))
		for i := 0; i < 1<<20; i++ { // at most 1 GiB; the proxy must give up after 4 KiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/bigevent", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 100; i++ {
			if _, err := fmt.Fprintf(w, "data: %s\n", strings.Repeat("y", 100)); err != nil {
				return
			}
		}
		w.Write([]byte("\n"))
	})
	var flaky struct {
		sync.Mutex
		n int
	}
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		flaky.Lock()
		flaky.n++
		n := flaky.n
		flaky.Unlock()
		switch n {
		case 1:
			w.Header().Set("Retry-After", "0")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case 2:
			http.Error(w, "slow down", http.StatusTooManyRequests)
		default:
			w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			w.Write([]byte("id: 1\ndata: finally\n\n"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	})
	srv := newOrigin(t, mux)

	cases := []struct {
		path, state, reason string
		status              int
	}{
		{"/204", "closed", "204", 204},
		{"/404", "failed", "404", 404},
		{"/html", "failed", "text/html", 200},
		{"/loop", "failed", "more than 3 redirects", 0},
		{"/endless", "failed", "larger than 4096 bytes", 200},
		{"/bigevent", "failed", "larger than 4096 bytes", 200},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			t.Parallel()
			h := handoff(t, b, map[string]any{"url": srv.URL + c.path})
			var si streamInfo
			eventually(t, 20*time.Second, "stream "+c.state, func() bool { si = getStream(t, b, h); return si.State != "held" })
			if si.State != c.state || !strings.Contains(si.StateReason, c.reason) || (c.status != 0 && si.Upstream.Status != c.status) {
				t.Fatalf("stream = %+v, want state %s with %q, status %d", si, c.state, c.reason, c.status)
			}
			if c.state == "failed" && si.Upstream.LastError == "" {
				t.Fatal("failed without a last error")
			}
		})
	}
	t.Run("/flaky", func(t *testing.T) {
		t.Parallel()
		h := handoff(t, b, map[string]any{"url": srv.URL + "/flaky"})
		eventually(t, 20*time.Second, "the event after two refusals", func() bool { return getStream(t, b, h).Backlog == 1 })
		si := getStream(t, b, h)
		if si.State != "held" || !si.Upstream.Connected || si.Upstream.Status != 200 || !strings.Contains(si.Upstream.LastError, "429") {
			t.Fatalf("stream = %+v", si)
		}
	})
}

func TestRedirectIsFollowedAndDialsAreChecked(t *testing.T) {
	t.Parallel()
	// Only 127.0.0.1 is allowed: a redirect to 127.0.0.2 is refused at dial time.
	allow, _ := upstream.ParseAllowList([]string{"127.0.0.1"})
	_, b := setup(t, &proxy.Options{Upstream: allow})
	o := newScriptOrigin(t, 0)
	o.PublishN(2)
	mux := http.NewServeMux()
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, o.Srv.URL+"/events", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/escape", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(o.Srv.URL, "127.0.0.1", "127.0.0.2", 1), http.StatusFound)
	})
	srv := newOrigin(t, mux)

	h := handoff(t, b, map[string]any{"url": srv.URL + "/moved"})
	eventually(t, 20*time.Second, "events through the redirect", func() bool { return getStream(t, b, h).Backlog == 2 })

	h = handoff(t, b, map[string]any{"url": srv.URL + "/escape"})
	var si streamInfo
	eventually(t, 20*time.Second, "the escape to fail", func() bool { si = getStream(t, b, h); return si.State == "failed" })
	if !strings.Contains(si.StateReason, "127.0.0.2") || !strings.Contains(si.StateReason, "--upstream-allow") {
		t.Fatalf("reason %q", si.StateReason)
	}
}

func TestForwardedHeadersReachTheOrigin(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Clone():
		default:
		}
		w.WriteHeader(204)
	}))
	t.Cleanup(srv.Close)
	handoff(t, b, map[string]any{"url": srv.URL, "last_event_id": "41", "headers": map[string]string{"authorization": "Bearer origin-secret", "X-Tenant": "t1"}})
	select {
	case hdr := <-got:
		want := map[string]string{"Authorization": "Bearer origin-secret", "X-Tenant": "t1", "Last-Event-Id": "41", "Accept": "text/event-stream", "Cache-Control": "no-cache"}
		for k, v := range want {
			if hdr.Get(k) != v {
				t.Errorf("%s = %q, want %q", k, hdr.Get(k), v)
			}
		}
		// Without Accept-Encoding any coding is acceptable (RFC 9110, 12.5.3): the proxy asks
		// for none, as compression costs memory per idle stream.
		if hdr.Get("Accept-Encoding") != "identity" {
			t.Errorf("Accept-Encoding = %q, want identity", hdr.Get("Accept-Encoding"))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the origin was never called")
	}
}

// TestHostileStatusTextDoesNotStopCommits: an origin's reason phrase is any bytes; the proxy
// records it as the stream's last error without making Postgres refuse the whole batch.
func TestHostileStatusTextDoesNotStopCommits(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	origin := rawOrigin(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		c.Write([]byte("HTTP/1.1 503 \xff\xfe\x00 busy\r\nContent-Length: 0\r\nRetry-After: 0\r\n\r\n"))
	})
	hostile := handoff(t, b, map[string]any{"url": origin + "/"})
	eventually(t, 20*time.Second, "the hostile status to be recorded", func() bool {
		return strings.Contains(getStream(t, b, hostile).Upstream.LastError, "busy")
	})
	o := newScriptOrigin(t, 0)
	o.PublishN(3)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	eventually(t, 20*time.Second, "a healthy stream's events", func() bool { return getStream(t, b, h).Backlog == 3 })
}

// TestStopDuringBackoff: a holder waiting out a long backoff (no goroutine waits for it)
// ends at once when the service stops; setup's cleanup fails the test if Stop times out.
func TestStopDuringBackoff(t *testing.T) {
	t.Parallel()
	svc, b := setup(t, &proxy.Options{UpstreamBackoffMax: time.Hour})
	busy := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	h := handoff(t, b, map[string]any{"url": busy.URL})
	eventually(t, 20*time.Second, "the backoff", func() bool {
		return strings.Contains(getStream(t, b, h).Upstream.LastError, "503")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := svc.Stop(ctx); err != nil {
		t.Fatalf("stop with a holder in backoff: %v", err)
	}
}

// TestCommitBackpressureIsNotOriginSilence: while the committer cannot commit (a test
// transaction locks the streams table), the holder waits with its events, and the idle
// timeout does not count that wait as the origin's silence.
func TestCommitBackpressureIsNotOriginSilence(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &proxy.Options{CommitQueue: 2, CommitBatch: 2, UpstreamIdleTimeout: 2 * time.Second})
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	eventually(t, 20*time.Second, "the upstream to connect", func() bool { return getStream(t, b, h).Upstream.Connected })

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE streams IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	o.PublishN(20)
	// What is tested is a duration: the committer stuck, and the holder's queue full, for
	// twice the idle timeout. There is no event to wait for instead.
	time.Sleep(4 * time.Second)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "every event", func() bool { return getStream(t, b, h).Backlog == 20 })
	si := getStream(t, b, h)
	if si.Upstream.Connects != 1 || strings.Contains(si.Upstream.LastError, "no data from the origin") {
		t.Fatalf("the commit wait was taken for the origin's silence: %d connects, last error %q", si.Upstream.Connects, si.Upstream.LastError)
	}
}
