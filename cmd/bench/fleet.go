package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/seal"
)

// The fleet benchmarks: takeover (an instance holding every stream dies or stops, another
// takes them over) and rebalance (an instance joins one that holds every stream).

// fleetBench is what both benchmarks set up: a private Postgres, the reference origin, and
// pushproxy instances started on demand.
type fleetBench struct {
	ctx     context.Context
	dir     string
	dbURL   string
	conn    *pgx.Conn
	origins []string
	common  []string          // flags of every instance
	admin   map[string]string // instance id: URL of its operators' listener (/metrics)
	env     []string          // environment of every instance, beside the bench's own
	cleanup []func()
}

// newFleetBench starts the reference origin with rate on addrs addresses (0: none, for a
// caller that serves its own).
func newFleetBench(ctx context.Context, dbURL string, rate float64, addrs int, common []string) (*fleetBench, error) {
	b := &fleetBench{ctx: ctx, common: common, admin: map[string]string{}}
	var err error
	if b.dir, err = buildBinaries(); err != nil {
		return nil, err
	}
	b.cleanup = append(b.cleanup, func() { os.RemoveAll(b.dir) })
	keyFile := filepath.Join(b.dir, "secret-keys.json")
	if _, _, err := seal.LoadOrCreate(keyFile); err != nil {
		b.close()
		return nil, err
	}
	b.common = append(b.common, "--secret-key-file", keyFile, "--handoff-rate-per-address", "0", "--admin-listen", "127.0.0.1:0")
	url, stopPG, err := startPostgres(ctx, dbURL)
	if err != nil {
		b.close()
		return nil, err
	}
	b.dbURL = url
	b.cleanup = append(b.cleanup, stopPG)
	if addrs == 0 { // the caller serves its own origin
		return b, nil
	}
	var listen []string
	for i := 0; i < addrs; i++ {
		listen = append(listen, fmt.Sprintf("127.0.0.%d:0", i+2))
	}
	org, err := startChild(ctx, nil, filepath.Join(b.dir, "origin"), "--listen", strings.Join(listen, ","),
		"--rate", fmt.Sprint(rate), "--history", "1000000", "--symbols", "16", "--log-level", "warn")
	if err != nil {
		b.close()
		return nil, err
	}
	b.cleanup = append(b.cleanup, org.stop)
	if b.origins, err = org.waitLines(regexp.MustCompile(`listening on (http://\S+)`), addrs); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *fleetBench) close() {
	if b.conn != nil {
		b.conn.Close(context.Background())
	}
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
}

// start starts an instance named id and returns it with its API's URL.
func (b *fleetBench) start(id string, extra ...string) (*child, string, error) {
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--database-url", b.dbURL, "--upstream-allow", "127.0.0.0/8",
		"--upstream-h2c", "--db-max-conns", "10", "--instance-id", id}, b.common...)
	px, err := startChild(b.ctx, b.env, filepath.Join(b.dir, "pushproxy"), append(args, extra...)...)
	if err != nil {
		return nil, "", err
	}
	b.cleanup = append(b.cleanup, px.stop)
	line, err := px.waitLines(regexp.MustCompile(`msg="pushproxy serving" (addr=.*)`), 1)
	if err != nil {
		return nil, "", err
	}
	addr := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(line[0])
	if m := regexp.MustCompile(`admin=(\S+)`).FindStringSubmatch(line[0]); m != nil {
		b.admin[id] = "http://" + m[1]
	}
	if b.conn == nil {
		if b.conn, err = pgx.Connect(b.ctx, b.dbURL); err != nil {
			return nil, "", err
		}
	}
	return px, "http://" + addr[1], nil
}

// handoff hands n streams off to api (see handoffStreams).
func (b *fleetBench) handoff(api string, n int) error {
	return handoffStreams(api, b.origins, n)
}

// fill starts instance id and hands it n streams, and returns once all are connected, with
// the time that took.
func (b *fleetBench) fill(id string, n int) (*child, time.Duration, error) {
	px, api, err := b.start(id)
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	if err := b.handoff(api, n); err != nil {
		return nil, 0, err
	}
	_, err = b.sample(id, t0, time.Second, 10*time.Minute, func(s fleetSample) bool { return s.connected == n })
	return px, time.Since(t0), err
}

// counts returns, for instance id, the held streams it owns and those of them connected.
func (b *fleetBench) counts(id string) (owned, connected int, err error) {
	err = b.conn.QueryRow(b.ctx, `SELECT count(*), count(*) FILTER (WHERE connected) FROM streams
		WHERE state = 'held' AND lease_owner = $1`, id).Scan(&owned, &connected)
	return owned, connected, err
}

// sample polls counts(id) every interval until done reports true, and returns the samples.
type fleetSample struct {
	at               time.Duration
	owned, connected int
}

func (b *fleetBench) sample(id string, t0 time.Time, every time.Duration, limit time.Duration, done func(s fleetSample) bool) ([]fleetSample, error) {
	var out []fleetSample
	for {
		owned, conn, err := b.counts(id)
		if err != nil {
			return out, err
		}
		s := fleetSample{at: time.Since(t0), owned: owned, connected: conn}
		out = append(out, s)
		if done(s) {
			return out, nil
		}
		if s.at > limit {
			return out, fmt.Errorf("gave up after %s: %d owned, %d connected", limit, owned, conn)
		}
		select {
		case <-b.ctx.Done():
			return out, b.ctx.Err()
		case <-time.After(every):
		}
	}
}

// busiest returns the most streams that connected within any window of the samples.
func busiest(ss []fleetSample, window time.Duration) int {
	best, j := 0, 0
	for i := range ss {
		for j < i && ss[i].at-ss[j].at > window {
			j++
		}
		best = max(best, ss[i].connected-ss[j].connected)
	}
	return best
}

// firstAt returns when cond first held in ss.
func firstAt(ss []fleetSample, cond func(fleetSample) bool) time.Duration {
	for _, s := range ss {
		if cond(s) {
			return s.at
		}
	}
	return -1
}

func runTakeover(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("takeover", flag.ExitOnError)
	n := fs.Int("streams", 10000, "streams held by the instance that goes away")
	signal := fs.String("signal", "kill", "how the first instance goes away: kill (SIGKILL) or term (SIGTERM)")
	ttl := fs.Duration("lease-ttl", 30*time.Second, "--lease-ttl of both instances")
	claim := fs.Duration("claim-interval", 2*time.Second, "--claim-interval of both instances")
	rate := fs.Int("takeover-rate", 1000, "--takeover-rate of the instance that takes over")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	fs.Parse(args)
	sig := map[string]os.Signal{"kill": syscall.SIGKILL, "term": syscall.SIGTERM}[*signal]
	if sig == nil {
		return fmt.Errorf("--signal is kill or term, not %q", *signal)
	}
	common := []string{"--lease-ttl", ttl.String(), "--claim-interval", claim.String(), "--rebalance-interval", "-1s"}
	b, err := newFleetBench(ctx, *dbURL, 0, 8, common)
	if err != nil {
		return err
	}
	defer b.close()
	a, took, err := b.fill("bench-a", *n)
	if err != nil {
		return err
	}
	fmt.Printf("takeover: bench-a holds %d streams, all connected, after %s\n", *n, took.Round(time.Millisecond))
	// bench-b holds nothing (no balancing): it takes over only what bench-a leaves.
	if _, _, err := b.start("bench-b", "--takeover-rate", fmt.Sprint(*rate)); err != nil {
		return err
	}
	time.Sleep(*claim + time.Second)
	t1 := time.Now()
	a.cmd.Process.Signal(sig)
	ss, err := b.sample("bench-b", t1, 100*time.Millisecond, *ttl+10*time.Minute, func(s fleetSample) bool { return s.connected == *n })
	if err != nil {
		return err
	}
	firstClaim := firstAt(ss, func(s fleetSample) bool { return s.owned > 0 })
	allClaimed := firstAt(ss, func(s fleetSample) bool { return s.owned == *n })
	allConnected := ss[len(ss)-1].at
	fmt.Printf("result: after SIG%s of an instance holding %d streams (lease TTL %s, claim interval %s, takeover rate %d/s): first stream claimed after %s, all claimed after %s, all connected after %s; %d connects in the busiest second, %.0f/s on average from the first claim\n",
		strings.ToUpper(*signal), *n, *ttl, *claim, *rate, firstClaim.Round(time.Millisecond), allClaimed.Round(time.Millisecond),
		allConnected.Round(time.Millisecond), busiest(ss, time.Second), float64(*n)/(allConnected-firstClaim).Seconds())
	return nil
}

func runRebalance(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rebalance", flag.ExitOnError)
	n := fs.Int("streams", 10000, "streams held by the first instance")
	interval := fs.Duration("rebalance-interval", 5*time.Second, "--rebalance-interval of both instances")
	rrate := fs.Int("rebalance-rate", 500, "--rebalance-rate of both instances")
	trate := fs.Int("takeover-rate", 1000, "--takeover-rate of both instances")
	rate := fs.Float64("rate", 1, "origin events per second; every stream gets every one")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	fs.Parse(args)
	common := []string{"--rebalance-interval", interval.String(), "--rebalance-rate", fmt.Sprint(*rrate), "--takeover-rate", fmt.Sprint(*trate)}
	b, err := newFleetBench(ctx, *dbURL, *rate, 8, common)
	if err != nil {
		return err
	}
	defer b.close()
	_, took, err := b.fill("bench-a", *n)
	if err != nil {
		return err
	}
	fmt.Printf("rebalance: bench-a holds %d streams, all connected, after %s; origin at %.1f events/s to every stream\n", *n, took.Round(time.Millisecond), *rate)
	t1 := time.Now()
	if _, _, err := b.start("bench-b"); err != nil {
		return err
	}
	share := *n / 2
	ss, err := b.sample("bench-b", t1, 100*time.Millisecond, 10*time.Minute, func(s fleetSample) bool { return s.connected >= share })
	if err != nil {
		return err
	}
	within := firstAt(ss, func(s fleetSample) bool { return s.owned >= share*8/10 })
	owned := firstAt(ss, func(s fleetSample) bool { return s.owned >= share })
	fmt.Printf("  bench-b owns 80 %% of its share after %s, its share (%d) after %s, all of it connected after %s; %d connects in the busiest second\n",
		within.Round(time.Millisecond), share, owned.Round(time.Millisecond), ss[len(ss)-1].at.Round(time.Millisecond), busiest(ss, time.Second))
	// Let events flow past the hand-overs, then compare every backlog with the origin's ids.
	time.Sleep(3 * time.Second)
	var head int64
	if err := b.conn.QueryRow(ctx, `SELECT max(convert_from(last_event_id, 'UTF8')::bigint) FROM events`).Scan(&head); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var behind int
		if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM streams s WHERE s.state = 'held' AND coalesce((SELECT convert_from(e.last_event_id, 'UTF8')::bigint
			FROM events e WHERE e.stream_id = s.id AND e.seq = s.head_seq), -1) < $1`, head).Scan(&behind); err != nil {
			return err
		}
		if behind == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d streams have not stored the origin's event %d after a minute", behind, head)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var lost, doubled, events, moved int64
	err = b.conn.QueryRow(ctx, `
		WITH e AS (SELECT stream_id, convert_from(last_event_id, 'UTF8')::bigint AS id,
			lag(convert_from(last_event_id, 'UTF8')::bigint) OVER (PARTITION BY stream_id ORDER BY seq) AS prev FROM events)
		SELECT coalesce(sum(CASE WHEN id > prev + 1 THEN id - prev - 1 ELSE 0 END), 0),
			count(*) FILTER (WHERE id <= prev), count(*),
			(SELECT count(*) FROM streams WHERE lease_owner = 'bench-b')
		FROM e`).Scan(&lost, &doubled, &events, &moved)
	if err != nil {
		return err
	}
	fmt.Printf("result: a joining instance reached its share of %d streams in %s (80 %% of it in %s, connected in %s); %d streams moved; %d events stored up to the origin's %d: %d lost, %d doubled\n",
		*n, owned.Round(time.Millisecond), within.Round(time.Millisecond), ss[len(ss)-1].at.Round(time.Millisecond), moved, events, head, lost, doubled)
	return nil
}
