package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// The soak benchmark: the proxy (the built binary, with its maintenance leader) holds
// --streams streams of an origin served by this process, which writes --rate events/s spread
// evenly over them. A simulated device per stream reads its backlog at random intervals as
// JSON pages, acknowledging as a woken device does, and devices take their stream back and
// hand a new one off all along (--handoff-churn). Every --sample it records the database's
// size, its dead tuples, the commit latency and the /metrics scrape time, appends them to a
// CSV and, at the end, plots the size over time (PNG) and judges it against the goal: flat
// within 10 % after the warm-up.

// soakDevice is one simulated device and the stream it has handed off.
type soakDevice struct {
	mu     sync.Mutex // held while it reads, takes back or hands off
	i      int        // its origin stream is /s/{i}
	push   string     // APNs token
	secret string     // device secret, from its first handoff
	s      *benchStream
}

// soakCounts are what the devices did since the last sample (the sampler takes them), and
// what the origin did in all.
type soakCounts struct {
	reads, read, handoffs, takebacks, errs, offered, dropped atomic.Int64
}

type soakRun struct {
	env     *serveEnv // the proxy's API (base, hc) for readJSON and drainJSON
	origin  string
	counts  soakCounts
	errMu   sync.Mutex
	errSeen int
}

// fail counts an error of a device and prints the first few.
func (r *soakRun) fail(what string, err error) {
	r.counts.errs.Add(1)
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if r.errSeen++; r.errSeen <= 10 {
		fmt.Printf("  device error (%s): %v\n", what, err)
	}
}

// handoff hands device d's stream off (the device presents its secret after its first).
func (r *soakRun) handoff(ctx context.Context, d *soakDevice) error {
	push := map[string]string{"platform": "apns", "token": d.push}
	if d.secret != "" {
		push["device_secret"] = d.secret
	}
	body, _ := json.Marshal(map[string]any{"url": fmt.Sprintf("%s/s/%d", r.origin, d.i), "push": push})
	req, _ := http.NewRequestWithContext(ctx, "POST", r.env.base+"/v1/streams", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.env.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		ID           string `json:"id"`
		Token        string `json:"token"`
		DeviceSecret string `json:"device_secret"`
	}
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("handoff: %s %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if h.DeviceSecret != "" {
		d.secret = h.DeviceSecret
	}
	d.s = &benchStream{id: h.ID, token: h.Token}
	r.counts.handoffs.Add(1)
	return nil
}

// takeBack closes device d's stream (DELETE), as a device that goes back to the origin does.
func (r *soakRun) takeBack(ctx context.Context, d *soakDevice) error {
	req, _ := http.NewRequestWithContext(ctx, "DELETE", r.env.base+"/v1/streams/"+d.s.id, nil)
	req.Header.Set("Authorization", "Bearer "+d.s.token)
	resp, err := r.env.hc.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("take back: %s %s", resp.Status, strings.TrimSpace(string(b)))
	}
	d.s = nil
	r.counts.takebacks.Add(1)
	return nil
}

// read drains device d's backlog, as a woken device does.
func (r *soakRun) read(ctx context.Context, d *soakDevice) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.s == nil {
		return
	}
	n, err := r.env.drainJSON(ctx, d.s, 1000)
	r.counts.read.Add(int64(n))
	r.counts.reads.Add(1)
	if err != nil && ctx.Err() == nil {
		r.fail("read", err)
	}
}

// churn takes device d's stream back and hands a new one off.
func (r *soakRun) churn(ctx context.Context, d *soakDevice) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.s != nil {
		if err := r.takeBack(ctx, d); err != nil {
			if ctx.Err() == nil {
				r.fail("take back", err)
			}
			return
		}
	}
	if err := r.handoff(ctx, d); err != nil && ctx.Err() == nil {
		r.fail("handoff", err)
	}
}

// soakSample is one row of the CSV.
type soakSample struct {
	at                               time.Duration
	total, events, streams           int64 // bytes: tables + indexes + TOAST
	dead, eventsDead, streamsDead    int64 // n_dead_tup
	eventsLive                       int64 // n_live_tup of events
	held, ended                      int64
	backlog                          float64 // pushproxy_backlog_events
	p50, p99                         time.Duration
	scrape                           time.Duration
	committed, read                  float64 // events/s
	reads, handoffs, takebacks, errs int64
	pushes                           int64   // received by the fake APNs (about: counted, then forgotten)
	reclaimed, deleted               float64 // acked rows reclaimed, ended streams deleted
	rss                              int64   // KiB
	warnings                         int64   // proxy log lines at WARN or ERROR
	lockWaits                        int64   // sessions waiting on a lock when sampled
	tables                           map[string]tableStat
}

// tableStat is one table's size (with its indexes and TOAST) and tuples.
type tableStat struct {
	size, live, dead int64
}

var soakColumns = []string{"elapsed_s", "total_bytes", "events_bytes", "streams_bytes", "dead_tuples", "events_dead", "streams_dead",
	"events_live", "streams_held", "streams_ended", "backlog_events", "commit_p50_ms", "commit_p99_ms", "scrape_ms",
	"committed_per_s", "read_per_s", "reads", "handoffs", "takebacks", "errors", "pushes", "acked_rows_reclaimed", "ended_streams_deleted",
	"proxy_rss_kib", "proxy_warnings", "lock_waits"}

func (s soakSample) record() []string {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	return []string{f(s.at.Seconds()), i(s.total), i(s.events), i(s.streams), i(s.dead), i(s.eventsDead), i(s.streamsDead),
		i(s.eventsLive), i(s.held), i(s.ended), f(s.backlog), ms(s.p50), ms(s.p99), ms(s.scrape),
		f(s.committed), f(s.read), i(s.reads), i(s.handoffs), i(s.takebacks), i(s.errs), i(s.pushes), f(s.reclaimed), f(s.deleted),
		i(s.rss), i(s.warnings), i(s.lockWaits)}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// scrape is what the bench reads from one /metrics scrape.
type scrape struct {
	buckets   []*dto.Bucket // pushproxy_commit_duration_seconds, cumulative
	count     uint64
	committed float64
	retention map[string]float64
	backlog   float64
	leader    bool
}

// scrapeMetrics GETs url (an instance's /metrics) and times it.
func scrapeMetrics(ctx context.Context, hc *http.Client, url string) (scrape, time.Duration, error) {
	var s scrape
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return s, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		return s, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, 0, fmt.Errorf("metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return s, 0, fmt.Errorf("metrics: %w", err)
	}
	first := func(name string) *dto.Metric {
		if f := fams[name]; f != nil && len(f.Metric) > 0 {
			return f.Metric[0]
		}
		return nil
	}
	if m := first("pushproxy_commit_duration_seconds"); m != nil {
		s.buckets, s.count = m.GetHistogram().GetBucket(), m.GetHistogram().GetSampleCount()
	}
	if m := first("pushproxy_events_committed_total"); m != nil {
		s.committed = m.GetCounter().GetValue()
	}
	if m := first("pushproxy_backlog_events"); m != nil {
		s.backlog = m.GetGauge().GetValue()
	}
	if m := first("pushproxy_maintenance_leader"); m != nil {
		s.leader = m.GetGauge().GetValue() == 1
	}
	s.retention = map[string]float64{}
	if f := fams["pushproxy_retention_rows_total"]; f != nil {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "rule" {
					s.retention[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return s, took, nil
}

// histQuantile is Prometheus's histogram_quantile over the commits between two scrapes:
// the bucket holding the q-th commit, interpolated linearly within it.
func histQuantile(q float64, prev, cur scrape) time.Duration {
	n := cur.count - prev.count
	if n == 0 || len(cur.buckets) == 0 {
		return 0
	}
	rank := q * float64(n)
	lower, below := 0.0, 0.0
	for i, b := range cur.buckets {
		c := float64(b.GetCumulativeCount())
		if i < len(prev.buckets) {
			c -= float64(prev.buckets[i].GetCumulativeCount())
		}
		if c >= rank {
			frac := 0.0
			if c > below {
				frac = (rank - below) / (c - below)
			}
			return time.Duration((lower + (b.GetUpperBound()-lower)*frac) * float64(time.Second))
		}
		lower, below = b.GetUpperBound(), c
	}
	return time.Duration(lower * float64(time.Second)) // beyond the last bucket
}

func runSoak(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("soak", flag.ExitOnError)
	duration := fs.Duration("duration", 20*time.Minute, "how long to soak")
	n := fs.Int("streams", 10000, "streams held (one device each)")
	rate := fs.Float64("rate", 2000, "events/s the origin writes, spread evenly over the streams")
	readInterval := fs.Duration("read-interval", 2*time.Minute, "mean time between two reads of a device (each interval uniform in [0.5, 1.5] of it)")
	churn := fs.Float64("handoff-churn", 5, "devices per second that take their stream back and hand a new one off")
	sample := fs.Duration("sample", 30*time.Second, "sampling interval")
	warmup := fs.Duration("warmup", 5*time.Minute, "the size of the first sample after this is the baseline of the goal")
	closedRetention := fs.Duration("closed-retention", 2*time.Minute, "the proxy's --closed-retention (taken-back streams are deleted this long after)")
	wakeHistory := fs.Duration("wake-history", 2*time.Minute, "the proxy's --wake-history")
	proxyFlags := fs.String("proxy-flags", "", "more flags of the proxy, space-separated (e.g. \"--maintenance-interval 30s\")")
	dbURL := fs.String("database-url", "", "Postgres to use (empty: a private durable cluster)")
	outDir := fs.String("out-dir", "", "where to write soak.csv, soak.png and proxy.log (empty: a new temporary directory)")
	goal := fs.Float64("goal", 10, "most % the total size may move from the baseline after the warm-up")
	fs.Parse(args)
	if *n <= 0 || *rate < 0 || *readInterval <= 0 || *sample <= 0 {
		return errors.New("--streams, --read-interval and --sample must be positive, --rate at least 0")
	}
	if *outDir == "" {
		d, err := os.MkdirTemp("", "pushproxy-soak-")
		if err != nil {
			return err
		}
		*outDir = d
	} else if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	fmt.Printf("soak: writing to %s\n", *outDir)

	b, err := newFleetBench(ctx, *dbURL, 0, 0, nil)
	if err != nil {
		return err
	}
	defer b.close()
	// The origin queues a few events of a stream between its take-back and the next
	// handoff's connect; beyond that they are dropped (counted).
	org, err := newLiveOrigin(*n, 64)
	if err != nil {
		return err
	}
	b.cleanup = append(b.cleanup, func() { org.srv.Close() }) // after the proxy stops
	// The devices are woken through a fake APNs.
	apns, err := startFakeAPNs(b.dir)
	if err != nil {
		return err
	}
	b.cleanup = append(b.cleanup, apns.Close)
	b.env = append(b.env, "SSL_CERT_FILE="+apns.caFile)
	// The origin speaks HTTP/1.1: a connection per stream.
	extra := []string{"--upstream-h2c=false", "--closed-retention", closedRetention.String(), "--wake-history", wakeHistory.String()}
	extra = append(append(extra, strings.Fields(*proxyFlags)...), apns.serveFlags()...)
	px, api, err := b.start("soak", extra...)
	if err != nil {
		return err
	}
	admin := b.admin["soak"]
	if admin == "" {
		return errors.New("the proxy serves no /metrics (no --admin-listen)")
	}
	logFile, err := os.Create(filepath.Join(*outDir, "proxy.log"))
	if err != nil {
		return err
	}
	var warnings atomic.Int64
	go func() {
		defer logFile.Close()
		shown := 0
		for l := range px.lines {
			logFile.WriteString(l + "\n")
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				warnings.Add(1)
				if shown++; shown <= 20 {
					fmt.Println("  proxy:", l)
				}
			}
		}
	}()
	fmt.Printf("postgres: %s\n", pgSettings(ctx, b.dbURL))
	fmt.Printf("proxy flags: %s\n", strings.Join(extra[:len(extra)-len(apns.serveFlags())], " "))

	r := &soakRun{env: &serveEnv{base: api, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}, origin: org.url}
	devs := make([]*soakDevice, *n)
	for i := range devs {
		devs[i] = &soakDevice{i: i, push: fmt.Sprintf("%064x", i+1)}
	}
	t0 := time.Now()
	if err := forEachParallel(*n, 32, func(i int) error { return r.handoff(ctx, devs[i]) }); err != nil {
		return err
	}
	if _, err := b.sample("soak", t0, time.Second, 10*time.Minute, func(s fleetSample) bool { return s.connected == *n }); err != nil {
		return err
	}
	fmt.Printf("soak: %d streams handed off and connected in %s; origin %.0f events/s (%.3f per stream), reads every %s on average, %.1f take-backs and handoffs/s, for %s\n",
		*n, time.Since(t0).Round(time.Millisecond), *rate, *rate/float64(*n), *readInterval, *churn, *duration)

	r.counts.handoffs.Store(0) // the soak's own count starts now
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var loops sync.WaitGroup
	// The origin: every 10 ms, the events due by then, to the streams in turn.
	loops.Add(1)
	go func() {
		defer loops.Done()
		seq := make([]int64, *n)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		start, sent, k := time.Now(), int64(0), 0
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			for due := int64(*rate * time.Since(start).Seconds()); sent < due; sent++ {
				seq[k]++
				if r.counts.offered.Add(1); !org.offer(k, fmt.Sprintf("id: %d\nevent: tick\ndata: %s\n\n", seq[k], tickData(seq[k]))) {
					r.counts.dropped.Add(1)
				}
				k = (k + 1) % *n
			}
		}
	}()
	// The devices: each reads at random intervals, a few at a time.
	sem := make(chan struct{}, 32)
	for _, d := range devs {
		loops.Add(1)
		go func() {
			defer loops.Done()
			wait := time.Duration(rand.Float64() * 1.5 * float64(*readInterval)) // spread the first reads
			for {
				select {
				case <-sctx.Done():
					return
				case <-time.After(wait):
				}
				sem <- struct{}{}
				r.read(sctx, d)
				<-sem
				wait = time.Duration((0.5 + rand.Float64()) * float64(*readInterval))
			}
		}()
	}
	// Take-backs and new handoffs, spread evenly.
	if *churn > 0 {
		loops.Add(1)
		go func() {
			defer loops.Done()
			tick := time.NewTicker(time.Duration(float64(time.Second) / *churn))
			defer tick.Stop()
			for {
				select {
				case <-sctx.Done():
					return
				case <-tick.C:
				}
				r.churn(sctx, devs[rand.IntN(len(devs))])
			}
		}()
	}

	csvFile, err := os.Create(filepath.Join(*outDir, "soak.csv"))
	if err != nil {
		return err
	}
	defer csvFile.Close()
	cw := csv.NewWriter(csvFile)
	cw.Write(soakColumns)
	tablesFile, err := os.Create(filepath.Join(*outDir, "tables.csv"))
	if err != nil {
		return err
	}
	defer tablesFile.Close()
	tw := csv.NewWriter(tablesFile)
	tw.Write([]string{"elapsed_s", "table", "total_bytes", "live_tuples", "dead_tuples"})
	mhc := &http.Client{Timeout: 30 * time.Second}
	prev, _, err := scrapeMetrics(ctx, mhc, admin+"/metrics")
	if err != nil {
		return err
	}
	var samples []soakSample
	start, last := time.Now(), time.Now()
	tick := time.NewTicker(*sample)
	defer tick.Stop()
	for time.Since(start) < *duration {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		s, cur, err := soakMeasure(ctx, b, mhc, admin, prev)
		if err != nil {
			return err
		}
		el := time.Since(last).Seconds()
		last = time.Now()
		s.at = time.Since(start)
		s.committed = (cur.committed - prev.committed) / el
		s.read = float64(r.counts.read.Swap(0)) / el
		s.reads, s.handoffs, s.takebacks, s.errs = r.counts.reads.Swap(0), r.counts.handoffs.Swap(0), r.counts.takebacks.Swap(0), r.counts.errs.Swap(0)
		s.rss, s.warnings = rssKiB(px.cmd.Process.Pid), warnings.Load()
		s.pushes = int64(len(apns.Pushes()))
		apns.Reset()
		prev = cur
		samples = append(samples, s)
		cw.Write(s.record())
		cw.Flush()
		for _, name := range slices.Sorted(maps.Keys(s.tables)) {
			t := s.tables[name]
			tw.Write([]string{strconv.FormatFloat(s.at.Seconds(), 'f', 1, 64), name,
				strconv.FormatInt(t.size, 10), strconv.FormatInt(t.live, 10), strconv.FormatInt(t.dead, 10)})
		}
		tw.Flush()
		fmt.Printf("%7s  size %7.1f MiB (events %6.1f, streams %5.1f)  dead %7d (events %7d, streams %5d)  commit p50 %6s p99 %7s  scrape %6s  %5.0f ev/s in %5.0f read  held %d ended %d  handoffs %d pushes %d errors %d  lock waits %d  rss %d MiB\n",
			s.at.Round(time.Second), mib(s.total), mib(s.events), mib(s.streams), s.dead, s.eventsDead, s.streamsDead,
			s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.scrape.Round(10*time.Microsecond),
			s.committed, s.read, s.held, s.ended, s.handoffs, s.pushes, s.errs, s.lockWaits, s.rss>>10)
		if !cur.leader {
			fmt.Println("  the proxy does not lead maintenance")
		}
	}
	stop()
	loops.Wait()
	if err := cmp.Or(cw.Error(), tw.Error()); err != nil {
		return err
	}
	fmt.Printf("origin: %d events offered, %d dropped (their stream was being taken back and handed off)\n", r.counts.offered.Load(), r.counts.dropped.Load())
	png := filepath.Join(*outDir, "soak.png")
	if err := plotSoak(samples, *warmup, *goal, png); err != nil {
		return err
	}
	fmt.Printf("wrote %s, %s, %s and %s\n", csvFile.Name(), tablesFile.Name(), png, logFile.Name())
	return soakSummary(samples, *warmup, *goal)
}

// soakMeasure takes one sample: the tables' sizes and tuples, and a timed /metrics scrape
// (prev is the scrape before, for the commit latency over the interval).
func soakMeasure(ctx context.Context, b *fleetBench, hc *http.Client, admin string, prev scrape) (soakSample, scrape, error) {
	s := soakSample{tables: map[string]tableStat{}}
	rows, err := b.conn.Query(ctx, `SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup
		FROM pg_stat_user_tables WHERE schemaname = current_schema()`)
	if err != nil {
		return s, prev, err
	}
	for rows.Next() {
		var name string
		var size, live, dead int64
		if err := rows.Scan(&name, &size, &live, &dead); err != nil {
			return s, prev, err
		}
		s.total += size
		s.dead += dead
		s.tables[name] = tableStat{size, live, dead}
		switch name {
		case "events":
			s.events, s.eventsDead, s.eventsLive = size, dead, live
		case "streams":
			s.streams, s.streamsDead = size, dead
		}
	}
	if err := rows.Err(); err != nil {
		return s, prev, err
	}
	if err := b.conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'held'), count(*) FILTER (WHERE state <> 'held'),
		(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock') FROM streams`).
		Scan(&s.held, &s.ended, &s.lockWaits); err != nil {
		return s, prev, err
	}
	cur, took, err := scrapeMetrics(ctx, hc, admin+"/metrics")
	if err != nil {
		return s, prev, err
	}
	s.scrape, s.backlog = took, cur.backlog
	s.p50, s.p99 = histQuantile(0.5, prev, cur), histQuantile(0.99, prev, cur)
	s.reclaimed = cur.retention["acked_events"] - prev.retention["acked_events"]
	s.deleted = cur.retention["closed_streams"] - prev.retention["closed_streams"]
	return s, cur, nil
}

// soakBaseline returns the index of the first sample at or after the warm-up (len(ss):
// none).
func soakBaseline(ss []soakSample, warmup time.Duration) int {
	return sort.Search(len(ss), func(i int) bool { return ss[i].at >= warmup })
}

// soakSummary prints the size after the warm-up against its largest and smallest since and
// the final one, and judges it against the goal.
func soakSummary(ss []soakSample, warmup time.Duration, goal float64) error {
	i := soakBaseline(ss, warmup)
	if i >= len(ss) {
		return fmt.Errorf("no sample after the warm-up of %s: run longer", warmup)
	}
	base := ss[i]
	lo, hi := base.total, base.total
	var errs int64
	for _, s := range ss[i:] {
		lo, hi = min(lo, s.total), max(hi, s.total)
	}
	for _, s := range ss {
		errs += s.errs
	}
	final := ss[len(ss)-1]
	dev := 100 * math.Max(float64(hi-base.total), float64(base.total-lo)) / float64(base.total)
	verdict := "PASS"
	if dev > goal {
		verdict = "FAIL"
	}
	// The trend over the samples after the warm-up (least squares), per minute.
	var sx, sy, sxx, sxy, k float64
	for _, s := range ss[i:] {
		x, y := s.at.Minutes(), mib(s.total)
		sx, sy, sxx, sxy, k = sx+x, sy+y, sxx+x*x, sxy+x*y, k+1
	}
	slope := 0.0
	if k > 1 && k*sxx-sx*sx > 0 {
		slope = (k*sxy - sx*sy) / (k*sxx - sx*sx)
	}
	var p50s, p99s, scrapes []time.Duration
	for _, s := range ss[i:] {
		p50s, p99s, scrapes = append(p50s, s.p50), append(p99s, s.p99), append(scrapes, s.scrape)
	}
	worst := func(d []time.Duration) time.Duration { return slices.Max(d).Round(10 * time.Microsecond) }
	fmt.Printf("result: total size %.1f MiB at %s (baseline), min %.1f, max %.1f, final %.1f MiB at %s: %.1f %% from the baseline at most (goal %.0f %%): %s; trend %+.2f MiB/min; events %.1f → %.1f MiB, streams %.1f → %.1f MiB; dead tuples %d → %d; worst interval commit p50 %s p99 %s, scrape %s; %d device errors, %d proxy warnings\n",
		mib(base.total), base.at.Round(time.Second), mib(lo), mib(hi), mib(final.total), final.at.Round(time.Second), dev, goal, verdict, slope,
		mib(base.events), mib(final.events), mib(base.streams), mib(final.streams), base.dead, final.dead,
		worst(p50s), worst(p99s), worst(scrapes), errs, final.warnings)
	// Every table of some size, largest last, baseline → final.
	names := slices.SortedFunc(maps.Keys(final.tables), func(a, b string) int {
		return cmp.Compare(final.tables[a].size, final.tables[b].size)
	})
	var grew []string
	for _, name := range names {
		f, b := final.tables[name], base.tables[name]
		if f.size < final.total/100 {
			continue
		}
		grew = append(grew, fmt.Sprintf("%s %.1f → %.1f MiB (%+.0f %%, dead %d → %d)", name, mib(b.size), mib(f.size),
			100*float64(f.size-b.size)/float64(max(b.size, 1)), b.dead, f.dead))
	}
	fmt.Printf("tables (baseline → final): %s\n", strings.Join(grew, "; "))
	if verdict == "FAIL" {
		return fmt.Errorf("the database grew %.1f %% from its size after the warm-up (goal %.0f %%)", dev, goal)
	}
	return nil
}

// plotSoak draws the sizes over time, with the goal's band around the baseline.
func plotSoak(ss []soakSample, warmup time.Duration, goal float64, path string) error {
	p := plot.New()
	p.Title.Text = "pushproxy soak: database size (tables + indexes)"
	p.X.Label.Text = "minutes"
	p.Y.Label.Text = "MiB"
	p.Y.Min = 0
	series := []struct {
		name string
		v    func(soakSample) int64
		c    color.Color
	}{
		{"total", func(s soakSample) int64 { return s.total }, color.RGBA{R: 200, A: 255}},
		{"events", func(s soakSample) int64 { return s.events }, color.RGBA{B: 200, A: 255}},
		{"streams", func(s soakSample) int64 { return s.streams }, color.RGBA{G: 150, A: 255}},
	}
	for _, sr := range series {
		xy := make(plotter.XYs, len(ss))
		for i, s := range ss {
			xy[i].X, xy[i].Y = s.at.Minutes(), mib(sr.v(s))
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color = sr.c
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(sr.name, l)
	}
	if i := soakBaseline(ss, warmup); i < len(ss) {
		base := mib(ss[i].total)
		for _, f := range []float64{1 - goal/100, 1 + goal/100} {
			band := plotter.XYs{{X: ss[i].at.Minutes(), Y: base * f}, {X: ss[len(ss)-1].at.Minutes(), Y: base * f}}
			l, err := plotter.NewLine(band)
			if err != nil {
				return err
			}
			l.Color, l.Dashes = color.Gray{Y: 120}, []vg.Length{vg.Points(4), vg.Points(4)}
			p.Add(l)
			if f > 1 {
				p.Legend.Add(fmt.Sprintf("±%.0f %% of the size after the warm-up", goal), l)
			}
		}
	}
	p.X.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.Padding = vg.Points(3)
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}
