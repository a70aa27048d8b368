package api_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/sse"
)

// browserReader reads an events URL as an EventSource does: it reconnects whenever a
// response ends (after the stream's retry: delay) with the Last-Event-ID it last saw, and
// any answer but 200 would end it for good (here it is recorded, and the test fails).
type browserReader struct {
	url string

	mu       sync.Mutex
	ids      []string
	fatal    []string // answers an EventSource would not reconnect after
	connects int
	retries  int // responses that carried a retry: field
}

func (br *browserReader) run(ctx context.Context) {
	last, retry := "", 200*time.Millisecond
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", br.url, nil)
		req.Header.Set("Accept", "text/event-stream")
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			br.mu.Lock()
			br.connects++
			br.mu.Unlock()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				br.mu.Lock()
				br.fatal = append(br.fatal, fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type")))
				br.mu.Unlock()
			} else {
				p := sse.NewParser(resp.Body, nil)
				p.SetLastEventID(last)
				for {
					ev, err := p.Next()
					if err != nil {
						break
					}
					br.mu.Lock()
					br.ids = append(br.ids, ev.LastEventID)
					br.mu.Unlock()
					last = ev.LastEventID
				}
				if ms, ok := p.Retry(); ok {
					retry = time.Duration(ms) * time.Millisecond
					br.mu.Lock()
					br.retries++
					br.mu.Unlock()
				}
			}
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

func (br *browserReader) received() []string {
	br.mu.Lock()
	defer br.mu.Unlock()
	return append([]string(nil), br.ids...)
}

// TestDatabaseOutage stops the test's own Postgres for a few seconds while an origin keeps
// sending and a browser-like reader is open: every API request during the outage answers
// 503 (an event reader: 200 with a retry: hint, so that EventSource reconnects), the reader
// never gets an answer that would stop an EventSource, and after the restart it ends with
// every event exactly once, in order; the API is back within 5 s of Postgres.
func TestDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and restarts a Postgres cluster of its own")
	}
	ctx := context.Background()
	parent, err := os.MkdirTemp("", "pushproxy-outage-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(parent, 0o755) // the postgres user must reach the data directory
	t.Cleanup(func() { os.RemoveAll(parent) })
	popts := pglocal.Options{DataDir: filepath.Join(parent, "pg"), Fast: true}
	cluster, err := pglocal.Start(ctx, popts)
	if err != nil {
		t.Skipf("no local Postgres to stop and restart: %v", err)
	}
	popts.Port = cluster.Port()
	var clusterMu sync.Mutex
	t.Cleanup(func() {
		clusterMu.Lock()
		defer clusterMu.Unlock()
		cluster.Stop()
	})
	if err := cluster.CreateDatabase(ctx, "outage"); err != nil {
		t.Fatal(err)
	}
	_, b := proxytest.StartOn(t, cluster.URL("outage"), nil, &api.Options{AdminToken: "adm", Heartbeat: 500 * time.Millisecond})

	o := proxytest.NewScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	other := handoff(t, b, map[string]any{"url": o.Srv.URL})
	var published int // guarded by pubMu
	var pubMu sync.Mutex
	pubCtx, stopPublishing := context.WithCancel(ctx)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-pubCtx.Done():
				return
			case <-tick.C:
				o.PublishN(1)
				pubMu.Lock()
				published++
				pubMu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { stopPublishing(); <-pubDone })

	br := &browserReader{url: b.API.URL + h.EventsURL}
	readCtx, stopReading := context.WithCancel(ctx)
	readDone := make(chan struct{})
	go func() { defer close(readDone); br.run(readCtx) }()
	t.Cleanup(func() { stopReading(); <-readDone })
	eventually(t, 20*time.Second, "the reader reading live events", func() bool { return len(br.received()) >= 20 })

	// The outage.
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	outageStart := time.Now()
	admin := http.Header{"Authorization": {"Bearer adm"}}
	tokenH := http.Header{"Authorization": {"Bearer " + h.Token}}
	checks := 0
	for time.Since(outageStart) < 4*time.Second {
		for _, c := range []struct {
			method, path, body string
			header             http.Header
		}{
			{"POST", "/v1/streams", `{"url":"` + o.Srv.URL + `"}`, nil},
			{"GET", "/v1/streams/" + h.ID, "", tokenH},
			{"DELETE", "/v1/streams/" + other.ID, "", http.Header{"Authorization": {"Bearer " + other.Token}}},
			{"GET", h.EventsURL, "", http.Header{"Accept": {"application/json"}}},
			{"GET", "/v1/admin/streams", "", admin},
			{"GET", "/v1/admin/streams/" + h.ID, "", admin},
			{"GET", "/v1/admin/totals", "", admin},
			{"GET", "/v1/admin/overview", "", admin},
			{"GET", "/readyz", "", nil},
		} {
			resp, out := do(t, c.method, b.API.URL+c.path, c.body, c.header)
			checkProblem(t, resp, out, 503, "unavailable", "")
			if c.path != "/readyz" && resp.Header.Get("Retry-After") == "" {
				t.Fatalf("%s %s: 503 without Retry-After", c.method, c.path)
			}
			checks++
		}
		// A new event reader: 200, a retry: hint, and the end.
		resp, out := do(t, "GET", b.API.URL+h.EventsURL, "", http.Header{"Accept": {"text/event-stream"}, "Last-Event-ID": {"1"}})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("event reader during the outage: %d %s", resp.StatusCode, out)
		}
		p := sse.NewParser(bytes.NewReader(out), nil)
		for {
			if _, err := p.Next(); err != nil {
				break
			}
		}
		if ms, ok := p.Retry(); !ok || ms <= 0 || ms > 5000 {
			t.Fatalf("event reader during the outage got no retry: hint: %q", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d API requests during the outage, all 503", checks)

	// Postgres returns.
	clusterMu.Lock()
	cluster, err = pglocal.Start(ctx, popts)
	clusterMu.Unlock()
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	back := time.Now()
	pubMu.Lock()
	publishedBeforeBack := published
	pubMu.Unlock()
	eventually(t, 5*time.Second, "the API answering again", func() bool {
		resp, _ := do(t, "GET", b.API.URL+"/v1/streams/"+h.ID, "", tokenH)
		return resp.StatusCode == 200
	})
	apiBack := time.Since(back)
	eventually(t, 5*time.Second, "the reader getting everything sent during the outage", func() bool {
		return len(br.received()) >= publishedBeforeBack
	})
	readerBack := time.Since(back)
	t.Logf("outage %s; API back %s and the reader caught up %s after Postgres", back.Sub(outageStart).Round(time.Millisecond),
		apiBack.Round(time.Millisecond), readerBack.Round(time.Millisecond))

	// The flow goes on; then the origin stops and the reader must end with every event once.
	// Events keep flowing after the outage: the reader gets some published since.
	pubMu.Lock()
	afterBack := published + 20
	pubMu.Unlock()
	eventually(t, 10*time.Second, "events published after the outage read", func() bool {
		return len(br.received()) >= afterBack
	})
	stopPublishing()
	<-pubDone
	eventually(t, 20*time.Second, "every event read", func() bool { return len(br.received()) >= published })
	stopReading()
	<-readDone
	ids := br.received()
	for i, id := range ids {
		if id != strconv.Itoa(i+1) {
			t.Fatalf("event %d has id %q: lost, doubled or out of order (ids %v...)", i+1, id, ids[max(0, i-3):min(len(ids), i+3)])
		}
	}
	if len(ids) != published {
		t.Fatalf("read %d events, published %d", len(ids), published)
	}
	br.mu.Lock()
	defer br.mu.Unlock()
	if len(br.fatal) > 0 {
		t.Fatalf("the reader got answers that end an EventSource: %v", br.fatal)
	}
	// (An open reader waiting for news during the outage stays open, sending heartbeats: it
	// is woken when the listener is back. One woken while the database is out ends with a
	// retry: hint, as a new one is answered above.)
	t.Logf("%d events read exactly once over %d connections (%d ended with a retry: hint)", len(ids), br.connects, br.retries)
}
