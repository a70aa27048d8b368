package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/store"
)

// liveOrigin serves one SSE stream per path /s/{i}; publish writes an event carrying the
// write time to stream i, offer any event without waiting.
type liveOrigin struct {
	srv   *http.Server
	url   string
	mu    sync.Mutex
	feeds map[int]chan string
}

// newLiveOrigin serves n streams, each queueing up to buf events while no one reads it.
func newLiveOrigin(n, buf int) (*liveOrigin, error) {
	o := &liveOrigin{feeds: map[int]chan string{}}
	for i := range n {
		o.feeds[i] = make(chan string, buf)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o.url = "http://" + ln.Addr().String()
	o.srv = &http.Server{Handler: http.HandlerFunc(o.serve)}
	go o.srv.Serve(ln)
	return o, nil
}

func (o *liveOrigin) serve(w http.ResponseWriter, r *http.Request) {
	i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/s/"))
	feed := o.feeds[i]
	if err != nil || feed == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case line := <-feed:
			if _, err := io.WriteString(w, line); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

// publish sends stream i an event whose data is the write time (unix nanoseconds).
func (o *liveOrigin) publish(i int, seq int64) {
	o.feeds[i] <- fmt.Sprintf("id: %d\ndata: %d\n\n", seq, time.Now().UnixNano())
}

// offer queues an event (its wire form) for stream i, unless its queue is full.
func (o *liveOrigin) offer(i int, event string) bool {
	select {
	case o.feeds[i] <- event:
		return true
	default:
		return false
	}
}

func runLive(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("live", flag.ExitOnError)
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	readers := fs.Int("readers", 500, "open SSE readers, one stream each")
	broadcast := fs.Bool("broadcast", false, "every stream gets an event on the same tick (else the ticks' events are spread over the interval)")
	interval := fs.Duration("interval", 200*time.Millisecond, "tick interval")
	ticks := fs.Int("ticks", 50, "measured ticks")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the measured ticks here")
	fs.Parse(args)

	commits := &commitLog{}
	env, cleanup, err := newServeEnv(ctx, *dbURL, &proxy.Options{InstanceID: "bench-proxy", Metrics: commits})
	if err != nil {
		return err
	}
	defer cleanup()
	origin, err := newLiveOrigin(*readers, 1024)
	if err != nil {
		return err
	}
	defer origin.srv.Close()
	fmt.Printf("postgres: %s\n", pgSettings(ctx, env.url))

	lats := make(chan time.Duration, *readers*(*ticks+10))
	rctx, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	ready := make(chan error, *readers)
	for i := range *readers {
		body, _ := json.Marshal(map[string]any{"url": origin.url + "/s/" + strconv.Itoa(i),
			"push": map[string]string{"platform": "apns", "token": fmt.Sprintf("%064x", i+1)}})
		resp, err := env.hc.Post(env.base+"/v1/streams", "application/json", strings.NewReader(string(body)))
		if err != nil {
			return err
		}
		var h struct {
			EventsURL string `json:"events_url"`
		}
		err = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("handoff: %d %v", resp.StatusCode, err)
		}
		go func() {
			req, _ := http.NewRequestWithContext(rctx, "GET", env.base+h.EventsURL, nil)
			resp, err := env.hc.Do(req)
			if err != nil {
				ready <- err
				return
			}
			defer resp.Body.Close()
			ready <- nil
			p := sse.NewParser(bufio.NewReader(resp.Body), nil)
			for {
				ev, err := p.Next()
				if err != nil {
					if rctx.Err() == nil {
						fmt.Printf("reader %d ended: %v\n", i, err)
					}
					return
				}
				at := time.Now()
				if ns, err := strconv.ParseInt(ev.Data, 10, 64); err == nil {
					lats <- at.Sub(time.Unix(0, ns))
				}
			}
		}()
	}
	for range *readers {
		if err := <-ready; err != nil {
			return err
		}
	}
	// Wait until every upstream is held and every reader registered.
	for {
		var held, open int
		err := env.st.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM streams WHERE connected), (SELECT count(*) FROM readers)`).Scan(&held, &open)
		if err != nil {
			return err
		}
		if held == *readers && open == *readers {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("%d streams held, %d readers open; %d ticks every %s, broadcast=%v\n", *readers, *readers, *ticks, *interval, *broadcast)
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	// A listener of the bench's own on the proxy's channel splits the latency: origin write
	// to notification (holder, committer, commit) and the rest (hub, page reads, writes).
	var (
		noteMu    sync.Mutex
		noteStart time.Time
		noted     int
		noteLat   []time.Duration
	)
	l := store.NewListener(env.url, store.ReaderChannel("bench-proxy"), nil, func(p string) {
		noteMu.Lock()
		defer noteMu.Unlock()
		noted += strings.Count(p, ",") + 1
		if !noteStart.IsZero() && noted <= *readers {
			noteLat = append(noteLat, time.Since(noteStart))
		}
	}, func() {})
	if err := l.Start(ctx); err != nil {
		return err
	}
	defer l.Stop()
	const warm = 5
	var all []time.Duration
	commits.reset()
	for tick := 1; tick <= warm+*ticks; tick++ {
		start := time.Now()
		noteMu.Lock()
		noted = 0
		if tick > warm && *broadcast {
			noteStart = start
		}
		noteMu.Unlock()
		for i := range *readers {
			if !*broadcast {
				time.Sleep(time.Until(start.Add(*interval * time.Duration(i) / time.Duration(*readers))))
			}
			origin.publish(i, int64(tick))
		}
		time.Sleep(time.Until(start.Add(*interval)))
		// Collect this tick's deliveries (a late one counts in the tick it arrives in).
		deadline := time.After(5 * time.Second)
		got := 0
	collect:
		for got < *readers {
			select {
			case l := <-lats:
				if tick > warm {
					all = append(all, l)
				}
				got++
			case <-deadline:
				break collect
			}
		}
		if got < *readers {
			return fmt.Errorf("tick %d: %d of %d readers got the event within 5 s", tick, got, *readers)
		}
	}
	stopProfile()
	if len(noteLat) > 0 {
		fmt.Printf("broadcast: origin write to the proxy's notification (per notification of up to 200 streams): %s\n", quantiles(noteLat))
	}
	n, streams, took := commits.summary()
	fmt.Printf("commits: %d over the ticks (%.1f a tick), %.0f streams each on average, commit time %s\n",
		n, float64(n)/float64(warm+*ticks), streams, quantiles(took))
	mode := "staggered"
	if *broadcast {
		mode = "broadcast"
	}
	fmt.Printf("result: %d readers, %s, %d deliveries: origin write to reader %s\n", *readers, mode, len(all), quantiles(all))
	return nil
}

// commitLog records the proxy's commits (proxy.Metrics).
type commitLog struct {
	mu      sync.Mutex
	streams int
	took    []time.Duration
}

func (c *commitLog) Reconnect(string) {}

func (c *commitLog) Committed(_ store.CommitResult, streams int, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams += streams
	c.took = append(c.took, took)
}

func (c *commitLog) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams, c.took = 0, nil
}

// summary returns the commits since reset, their mean streams and their durations.
func (c *commitLog) summary() (int, float64, []time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.took), float64(c.streams) / float64(max(len(c.took), 1)), append([]time.Duration(nil), c.took...)
}
