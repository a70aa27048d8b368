package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/sse"
)

// browserReader reads an event stream as a browser's EventSource does: it reconnects with
// Last-Event-ID after the response ends or the connection fails, after the retry: delay the
// server last sent, and it gives up for good on a response that is not 200 with an event
// stream (EventSource "fails the connection"). It reads until it has n events or ctx ends.
func browserReader(ctx context.Context, url string, n int) (got []sse.Event, err error) {
	lastID := ""
	retry := 100 * time.Millisecond
	for len(got) < n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Cache-Control", "no-cache")
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return got, fmt.Errorf("EventSource would stop for good: %s %s: %s", resp.Status, resp.Header.Get("Content-Type"), b)
			}
			p := sse.NewParser(resp.Body, nil)
			p.SetLastEventID(lastID)
			for len(got) < n {
				ev, err := p.Next()
				if ms, ok := p.Retry(); ok {
					retry = time.Duration(ms) * time.Millisecond
				}
				if err != nil {
					break
				}
				got = append(got, ev)
				lastID = ev.LastEventID
			}
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(retry):
		}
	}
	return got, nil
}

// TestEndToEndDatabaseOutage: Postgres stops for 5 s under load. Every API request during the
// outage answers 503 within a bound, a browser-like reader keeps reconnecting and ends with
// every event once, in order, and the proxy is back (requests answered, events committed)
// within 5 s of Postgres's return.
func TestEndToEndDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	pg := pgtest.NewCluster(t)
	db := pg.NewDatabase("outage")
	originURL, _ := startOrigin(t, "--rate", "20", "--history", "100000", "--retry", "100ms")
	api, _ := startProxy(t, db, "--log-level", "info")
	type stream struct{ id, token, events string }
	var streams []stream
	for range 20 {
		resp, err := http.Post(api+"/v1/streams", "application/json", strings.NewReader(fmt.Sprintf(`{"url": %q}`, originURL+"/events")))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			ID, Token string
			Events    string `json:"events_url"`
		}
		err = decodeJSON(resp, &out)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("handoff: %d %v", resp.StatusCode, err)
		}
		streams = append(streams, stream{out.ID, out.Token, out.Events})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const want = 400 // 20 s of events at 20/s: the outage falls in the middle
	var (
		got     []sse.Event
		readErr error
		reading sync.WaitGroup
	)
	reading.Add(1)
	go func() {
		defer reading.Done()
		got, readErr = browserReader(ctx, api+streams[0].events, want)
	}()
	time.Sleep(3 * time.Second)

	// The outage: requests of every kind, each must answer 503 within the bound.
	pg.Stop()
	down := time.Now()
	client := &http.Client{Timeout: 10 * time.Second}
	requests := []func() (*http.Request, string){
		func() (*http.Request, string) {
			r, _ := http.NewRequest("GET", api+"/v1/streams/"+streams[1].id, nil)
			r.Header.Set("Authorization", "Bearer "+streams[1].token)
			return r, "GET stream"
		},
		func() (*http.Request, string) {
			r, _ := http.NewRequest("GET", api+streams[2].events, nil)
			r.Header.Set("Accept", "application/json")
			return r, "GET events (JSON)"
		},
		func() (*http.Request, string) {
			r, _ := http.NewRequest("POST", api+"/v1/streams", strings.NewReader(fmt.Sprintf(`{"url": %q}`, originURL+"/events")))
			r.Header.Set("Content-Type", "application/json")
			return r, "POST handoff"
		},
		func() (*http.Request, string) {
			r, _ := http.NewRequest("DELETE", api+"/v1/streams/"+streams[3].id, nil)
			r.Header.Set("Authorization", "Bearer "+streams[3].token)
			return r, "DELETE stream"
		},
	}
	var slowest time.Duration
	n := 0
	for time.Since(down) < 5*time.Second {
		req, what := requests[n%len(requests)]()
		n++
		start := time.Now()
		resp, err := client.Do(req)
		took := time.Since(start)
		slowest = max(slowest, took)
		if err != nil {
			t.Fatalf("%s during the outage: %v after %s", what, err, took)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s during the outage: %s %s, want 503", what, resp.Status, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d API requests during the outage, all 503, the slowest in %s", n, slowest.Round(time.Millisecond))
	pg.Start()
	up := time.Now()

	// Recovery: requests answered and events committed again within 5 s.
	var before int64 = -1
	for {
		req, _ := requests[0]()
		resp, err := client.Do(req)
		if err == nil {
			var st struct {
				Backlog int64 `json:"backlog"`
			}
			ok := resp.StatusCode == http.StatusOK
			if ok && decodeJSON(resp, &st) == nil {
				if before < 0 {
					before = st.Backlog
				} else if st.Backlog > before {
					break
				}
			} else {
				resp.Body.Close()
			}
		}
		if time.Since(up) > 5*time.Second {
			t.Fatalf("not recovered 5 s after Postgres returned (backlog %d)", before)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("recovered %s after Postgres returned", time.Since(up).Round(time.Millisecond))
	reading.Wait()
	if readErr != nil {
		t.Fatalf("the reader, after %d events: %v", len(got), readErr)
	}
	checkExactlyOnce(t, originURL, got)
}

// decodeJSON decodes resp's body into out and closes it.
func decodeJSON(resp *http.Response, out any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}
