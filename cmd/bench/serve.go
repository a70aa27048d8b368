package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/store"
)

// serveEnv is a proxy service and its HTTP API on loopback over a durable Postgres, plus a
// writer instance ("bench-writer") that owns streams whose events the bench commits itself.
type serveEnv struct {
	url  string
	st   *store.Store
	svc  *proxy.Service
	base string // http://127.0.0.1:port
	hc   *http.Client
}

const benchWriter = "bench-writer"

func newServeEnv(ctx context.Context, dbURL string, opts *proxy.Options) (*serveEnv, func(), error) {
	url, stopPG, err := startPostgres(ctx, dbURL)
	if err != nil {
		return nil, nil, err
	}
	if err := store.Migrate(ctx, url, nil); err != nil {
		stopPG()
		return nil, nil, err
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		stopPG()
		return nil, nil, err
	}
	o := proxy.Options{}
	if opts != nil {
		o = *opts
	}
	o.Upstream, _ = upstream.ParseAllowList([]string{"127.0.0.0/8"})
	// The bench's writer registers as an instance (below) but claims nothing: balancing
	// would hand it a share of the proxy's streams, which then no one holds.
	o.RebalanceInterval = -1
	svc := proxy.New(st, url, &o)
	if err := svc.Start(ctx); err != nil {
		st.Close()
		stopPG()
		return nil, nil, err
	}
	srv := api.New(svc, st, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	hs := &http.Server{Handler: srv.Handler()}
	go hs.Serve(ln)
	if err := st.RenewInstance(ctx, benchWriter, time.Hour); err != nil {
		return nil, nil, err
	}
	env := &serveEnv{url: url, st: st, svc: svc, base: "http://" + ln.Addr().String(),
		hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}}
	return env, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go hs.Shutdown(sctx)
		_ = svc.Stop(sctx)
		hs.Close()
		st.Close()
		stopPG()
	}, nil
}

// benchStream is a stream owned by the bench's writer, readable through the API.
type benchStream struct {
	id, token string
	epoch     int64
	head      int64
}

func (e *serveEnv) newStream(ctx context.Context, origin string) (*benchStream, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	h := sha256.Sum256([]byte(tok))
	if origin == "" {
		origin = "http://127.0.0.1:1/bench"
	}
	s, epoch, err := e.st.CreateStream(ctx, store.NewStream{URL: origin, TokenHash: h[:], LeaseOwner: benchWriter})
	if err != nil {
		return nil, err
	}
	return &benchStream{id: s.ID, token: tok, epoch: epoch}, nil
}

// tickData is an event's data of a ticker's shape (about 100 bytes).
func tickData(i int64) string {
	return fmt.Sprintf(`{"sym":"SYM%03d","price":%d.%02d,"volume":%d,"ts":"2026-11-27T15:00:00.000Z"}`, i%500, 100+i%900, i%100, 1000+i)
}

// appendEvents commits n events to each of streams in one transaction.
func (e *serveEnv) appendEvents(ctx context.Context, streams []*benchStream, n int, data func(int64) string) error {
	as := make([]store.Append, 0, len(streams))
	for _, s := range streams {
		evs := make([]pushproxy.Event, n)
		for i := range evs {
			s.head++
			evs[i] = pushproxy.Event{Seq: s.head, LastEventID: strconv.FormatInt(s.head, 10), Type: "tick", Data: data(s.head)}
		}
		as = append(as, store.Append{StreamID: s.id, Epoch: s.epoch, Events: evs, HeadSeq: s.head, ResumeID: strconv.FormatInt(s.head, 10), RetryMS: -1})
	}
	_, err := e.st.Commit(ctx, benchWriter, as, store.CommitOptions{})
	return err
}

func (e *serveEnv) fill(ctx context.Context, s *benchStream, n int) error {
	for n > 0 {
		k := min(n, 10000)
		if err := e.appendEvents(ctx, []*benchStream{s}, k, tickData); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// psqlCopy times psql copying the stream's queued rows out (what a page read returns).
func (e *serveEnv) psqlCopy(ctx context.Context, s *benchStream) (time.Duration, error) {
	q := fmt.Sprintf(`COPY (SELECT seq, last_event_id, type, data FROM events WHERE stream_id = '%s' ORDER BY seq) TO STDOUT`, s.id)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-q", "-c", q, e.url)
	cmd.Stdout = io.Discard
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("psql: %w", err)
	}
	return time.Since(start), nil
}

// jsonPage is what the bench's device takes from a page: its events are counted, not
// decoded, so that the client (on the same 2 cores) costs the server little.
type jsonPage struct {
	Events      int    `json:"-"`
	LastEventID string `json:"last_event_id"`
	More        bool   `json:"more"`
}

// readJSON fetches one page after lastID (acknowledging it) and returns it.
func (e *serveEnv) readJSON(ctx context.Context, s *benchStream, lastID string, provided bool, limit int) (jsonPage, error) {
	var p jsonPage
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/v1/streams/"+s.id+"/events?limit="+strconv.Itoa(limit), nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Accept", "application/json")
	if provided {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return p, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return p, fmt.Errorf("events: %d %s", resp.StatusCode, b)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return p, err
	}
	// The tail holds last_event_id, more and gap, after the events.
	tail := body[max(0, bytes.LastIndex(body, []byte(`],"last_event_id"`))+1):]
	if err := json.Unmarshal(append([]byte("{"), tail[1:]...), &p); err != nil {
		return p, fmt.Errorf("page: %w", err)
	}
	p.Events = bytes.Count(body, []byte(`{"id":`))
	return p, nil
}

// drainJSON reads the whole backlog as JSON pages of limit, as a woken device does.
func (e *serveEnv) drainJSON(ctx context.Context, s *benchStream, limit int) (int, error) {
	n, last, provided := 0, "", false
	for {
		p, err := e.readJSON(ctx, s, last, provided, limit)
		if err != nil {
			return n, err
		}
		n += p.Events
		last, provided = p.LastEventID, true
		if !p.More {
			// Acknowledge the last page, as the device's next fetch would.
			_, err := e.readJSON(ctx, s, last, true, 1)
			return n, err
		}
	}
}

// drainSSE reads want events of the backlog as an EventSource does, then disconnects.
func (e *serveEnv) drainSSE(ctx context.Context, s *benchStream, want int) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/v1/streams/"+s.id+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := e.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	p := sse.NewParser(bufio.NewReaderSize(resp.Body, 64<<10), nil)
	n := 0
	for n < want {
		if _, err := p.Next(); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	backlog := fs.Int("backlog", 100000, "events in the backlog a woken device reads")
	rounds := fs.Int("rounds", 3, "measured rounds (the best is reported, as for psql)")
	smallReads := fs.Int("small-reads", 2000, "small reads (20 events) timed under ingest")
	ingestStreams := fs.Int("ingest-streams", 100, "streams ingesting during the small reads")
	ingestRate := fs.Float64("ingest-rate", 30000, "events/s committed into the ingesting streams during the small reads (the ingest aim; 0: back to back, as fast as Postgres takes them)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the backlog reads here")
	fs.Parse(args)

	env, cleanup, err := newServeEnv(ctx, *dbURL, nil)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Printf("postgres: %s\n", pgSettings(ctx, env.url))
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	best := map[string]float64{}
	for r := 1; r <= *rounds; r++ {
		a, err := env.newStream(ctx, "")
		if err != nil {
			return err
		}
		b, err := env.newStream(ctx, "")
		if err != nil {
			return err
		}
		if err := env.fill(ctx, a, *backlog); err != nil {
			return err
		}
		if err := env.fill(ctx, b, *backlog); err != nil {
			return err
		}
		// As autovacuum would have by the time a device wakes: plans follow statistics.
		if _, err := env.st.Pool().Exec(ctx, `ANALYZE events`); err != nil {
			return err
		}
		rate := func(what string, n int, d time.Duration) {
			v := float64(n) / d.Seconds()
			best[what] = max(best[what], v)
			fmt.Printf("round %d: %-28s %7d events in %8s: %9.0f events/s\n", r, what, n, d.Round(time.Millisecond), v)
		}
		d, err := env.psqlCopy(ctx, a)
		if err != nil {
			return err
		}
		rate("psql COPY out", *backlog, d)
		start := time.Now()
		n, err := env.drainJSON(ctx, a, 1000)
		if err != nil {
			return err
		}
		if n != *backlog {
			return fmt.Errorf("JSON read %d events, want %d", n, *backlog)
		}
		rate("JSON pages of 1000", n, time.Since(start))
		start = time.Now()
		if n, err = env.drainSSE(ctx, b, *backlog); err != nil {
			return err
		}
		rate("SSE replay", n, time.Since(start))
	}
	stopProfile()
	fmt.Printf("result: backlog of %d, best of %d: psql COPY %.0f/s, JSON %.0f/s (%.2fx COPY), SSE %.0f/s (%.2fx COPY)\n",
		*backlog, *rounds, best["psql COPY out"], best["JSON pages of 1000"], best["JSON pages of 1000"]/best["psql COPY out"],
		best["SSE replay"], best["SSE replay"]/best["psql COPY out"])

	// Small reads under ingest: 100 streams get 10 events each per commit, back to back,
	// while one device repeatedly finds 20 new events and fetches them (acknowledging the
	// previous page).
	var ing []*benchStream
	for range *ingestStreams {
		s, err := env.newStream(ctx, "")
		if err != nil {
			return err
		}
		ing = append(ing, s)
	}
	ictx, stopIngest := context.WithCancel(ctx)
	var (
		wg       sync.WaitGroup
		ingested atomic.Int64
		ingErr   error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Each commit adds 10 events to every ingesting stream, paced to the rate.
		var pace <-chan time.Time
		if *ingestRate > 0 {
			t := time.NewTicker(time.Duration(float64(time.Second) * float64(10*len(ing)) / *ingestRate))
			defer t.Stop()
			pace = t.C
		}
		for ictx.Err() == nil {
			if pace != nil {
				select {
				case <-pace:
				case <-ictx.Done():
					return
				}
			}
			if err := env.appendEvents(ictx, ing, 10, tickData); err != nil {
				if ictx.Err() == nil {
					ingErr = err
				}
				return
			}
			ingested.Add(int64(10 * len(ing)))
		}
	}()
	small, err := env.newStream(ctx, "")
	if err != nil {
		stopIngest()
		return err
	}
	var lat []time.Duration
	last, provided := "", false
	istart := time.Now()
	for range *smallReads {
		if err := env.appendEvents(ctx, []*benchStream{small}, 20, tickData); err != nil {
			stopIngest()
			return err
		}
		start := time.Now()
		p, err := env.readJSON(ctx, small, last, provided, 20)
		if err != nil {
			stopIngest()
			return err
		}
		lat = append(lat, time.Since(start))
		if p.Events != 20 {
			stopIngest()
			return fmt.Errorf("small read got %d events, want 20", p.Events)
		}
		last, provided = p.LastEventID, true
	}
	idur := time.Since(istart)
	stopIngest()
	wg.Wait()
	if ingErr != nil && !errors.Is(ingErr, context.Canceled) {
		return ingErr
	}
	fmt.Printf("result: small reads (20 events, JSON) under ingest of %.0f events/s into %d streams: %s (%d reads)\n",
		float64(ingested.Load())/idur.Seconds(), len(ing), quantiles(lat), len(lat))
	return nil
}

// startCPUProfile profiles to path ("": not at all) until the returned function is called
// (more calls do nothing).
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }, nil
}

// quantiles sorts lat and describes it: p50, p90, p99 and max.
func quantiles(lat []time.Duration) string {
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %s p90 %s p99 %s max %s", q(0.5), q(0.9), q(0.99), q(1))
}
