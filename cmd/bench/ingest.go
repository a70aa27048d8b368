package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/origin"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

// counter is the proxy.Metrics the ingest benchmark reads.
type counter struct {
	events, commits, streams atomic.Int64
	mu                       sync.Mutex
	lat                      []time.Duration
}

func (c *counter) Reconnect(string) {}
func (c *counter) Committed(res store.CommitResult, streams int, took time.Duration) {
	c.events.Add(int64(res.Events))
	c.commits.Add(1)
	c.streams.Add(int64(streams))
	c.mu.Lock()
	c.lat = append(c.lat, took)
	c.mu.Unlock()
}

func (c *counter) latencies() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := append([]time.Duration(nil), c.lat...)
	c.lat = c.lat[:0]
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

// startPostgres starts a durable private cluster unless url is given.
func startPostgres(ctx context.Context, url string) (string, func(), error) {
	if url != "" {
		return url, func() {}, nil
	}
	c, err := pglocal.Start(ctx, pglocal.Options{})
	if err != nil {
		return "", nil, err
	}
	if err := c.CreateDatabase(ctx, "bench"); err != nil {
		c.Stop()
		return "", nil, err
	}
	return c.URL("bench"), func() { c.Stop() }, nil
}

func pgSettings(ctx context.Context, url string) string {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err.Error()
	}
	defer conn.Close(ctx)
	var out []string
	for _, name := range []string{"server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"} {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return err.Error()
		}
		out = append(out, name+"="+v)
	}
	return strings.Join(out, " ")
}

func runIngest(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ingest", flag.ExitOnError)
	streams := fs.Int("streams", 100, "upstream streams held (each gets every origin event)")
	rate := fs.Float64("rate", 30000, "target events/s into the proxy, over all streams (the origin generates rate/streams events/s and each goes to every stream)")
	warmup := fs.Duration("warmup", 5*time.Second, "time before measuring")
	duration := fs.Duration("duration", 30*time.Second, "measured time")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	h2c := fs.Bool("h2c", false, "upstream over HTTP/2 without TLS (all streams share one connection)")
	compact := fs.String("compact", "", `hand the streams off with compaction by key: "type", or "json:/symbol" (the ticker's symbol)`)
	copyRows := fs.Int("copy-rows", 1000000, "after the run, time psql's COPY of this many of the committed rows into a table like events, for comparison (0: do not)")
	fs.Parse(args)

	url, stopPG, err := startPostgres(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer stopPG()
	if err := store.Migrate(ctx, url, nil); err != nil {
		return err
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		return err
	}
	defer st.Close()

	org := origin.New(&origin.Options{Rate: *rate / float64(*streams), History: 1 << 20, Retry: time.Second, Symbols: 50})
	org.Start(ctx)
	defer org.Close()
	originBase, stopOrigin, err := org.ServeLoopback()
	if err != nil {
		return err
	}
	defer stopOrigin()

	m := &counter{}
	allow, _ := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	svc := proxy.New(st, url, &proxy.Options{
		Upstream: allow, Metrics: m, MaxBacklog: 1 << 40, UpstreamH2C: *h2c,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err := svc.Start(ctx); err != nil {
		return err
	}
	defer svc.Stop(context.Background())
	httpSrv := &http.Server{Handler: api.New(svc, st, nil).Handler()}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go httpSrv.Serve(aln)
	defer httpSrv.Close()

	for i := 0; i < *streams; i++ {
		body := fmt.Sprintf(`{"url": "%s/events"}`, originBase)
		if *compact != "" {
			body = fmt.Sprintf(`{"url": "%s/events", "compact": {"by": %q}}`, originBase, *compact)
		}
		resp, err := http.Post("http://"+aln.Addr().String()+"/v1/streams", "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("handoff: %s", resp.Status)
		}
	}
	fmt.Printf("ingest: %d streams, target %.0f events/s in, compact %q, postgres: %s\n", *streams, *rate, *compact, pgSettings(ctx, url))

	select {
	case <-time.After(*warmup):
	case <-ctx.Done():
		return ctx.Err()
	}
	m.latencies()
	// Events accepted (the streams' heads): with compaction, more than the rows inserted.
	heads := func() int64 {
		var n int64
		_ = st.Pool().QueryRow(ctx, `SELECT coalesce(sum(head_seq), 0) FROM streams`).Scan(&n)
		return n
	}
	h0 := heads()
	e0, c0, s0, t0 := m.events.Load(), m.commits.Load(), m.streams.Load(), time.Now()
	var cpu0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &cpu0)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	last, lastT := e0, t0
	for end := t0.Add(*duration); time.Now().Before(end); {
		select {
		case <-tick.C:
			e := m.events.Load()
			fmt.Printf("  %5.1fs  %8.0f events/s committed\n", time.Since(t0).Seconds(), float64(e-last)/time.Since(lastT).Seconds())
			last, lastT = e, time.Now()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	el := time.Since(t0)
	e, c, s := m.events.Load()-e0, m.commits.Load()-c0, m.streams.Load()-s0
	accepted := heads() - h0
	var cpu1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &cpu1)
	cpu := time.Duration(cpu1.Utime.Nano()+cpu1.Stime.Nano()-cpu0.Utime.Nano()-cpu0.Stime.Nano()) * time.Nanosecond
	lat := m.latencies()
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	fmt.Printf("accepted: %.0f events/s (the streams' heads; with -compact the rows inserted are fewer)\n", float64(accepted)/el.Seconds())
	fmt.Printf("result: %.0f events/s committed over %s; %.0f commits/s, %.0f events and %.1f streams per commit; commit latency p50 %s p99 %s; origin+proxy CPU %.0f%% of one core\n",
		float64(e)/el.Seconds(), el.Round(time.Millisecond), float64(c)/el.Seconds(), float64(e)/float64(max(c, 1)), float64(s)/float64(max(c, 1)),
		pct(0.5).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), 100*cpu.Seconds()/el.Seconds())
	if *copyRows > 0 {
		if err := svc.Stop(ctx); err != nil {
			return err
		}
		n, d, err := rawCopy(ctx, url, *copyRows)
		if err != nil {
			return err
		}
		copyRate := float64(n) / d.Seconds()
		fmt.Printf("result: psql COPY of %d committed rows into a table like events (its indexes, one durable transaction): %.0f rows/s; ingest %.2fx COPY\n",
			n, copyRate, float64(e)/el.Seconds()/copyRate)
	}
	return nil
}

// rawCopy copies up to n rows of events out to a file, then times psql copying them into a
// new table like events (same columns, defaults and indexes), as one durable transaction.
func rawCopy(ctx context.Context, url string, n int) (int, time.Duration, error) {
	dir, err := os.MkdirTemp("", "pushproxy-copy-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "rows.copy")
	psql := func(cmds ...string) error {
		args := []string{"-X", "-q", "-v", "ON_ERROR_STOP=1"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.CommandContext(ctx, "psql", append(args, url)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql: %v: %s", err, out)
		}
		return nil
	}
	cols := "stream_id, seq, last_event_id, type, data"
	if err := psql(fmt.Sprintf(`\copy (SELECT %s FROM events LIMIT %d) TO '%s'`, cols, n, file),
		`DROP TABLE IF EXISTS events_copy`, `CREATE TABLE events_copy (LIKE events INCLUDING ALL)`, `CHECKPOINT`); err != nil {
		return 0, 0, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, 0, err
	}
	rows := bytes.Count(b, []byte("\n"))
	start := time.Now()
	if err := psql(fmt.Sprintf(`\copy events_copy (%s) FROM '%s'`, cols, file)); err != nil {
		return 0, 0, err
	}
	d := time.Since(start)
	return rows, d, psql(`DROP TABLE events_copy`)
}
