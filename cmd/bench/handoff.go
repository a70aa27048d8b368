package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/seal"
)

// handoffMode is one configuration of the real server the handoff benchmark runs.
type handoffMode struct {
	name string
	args []string
}

// handoffRun is what one run of the load measured.
type handoffRun struct {
	mode     string
	n        int
	elapsed  time.Duration
	p50, p99 time.Duration
	cpu      time.Duration // the proxy's and Postgres's CPU time over the measured window
}

// cpuPerHandoff is the CPU the proxy and Postgres spent per handoff: on a busy machine it
// moves much less than the rate does.
func (r handoffRun) cpuPerHandoff() time.Duration { return r.cpu / time.Duration(max(r.n, 1)) }

func (r handoffRun) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

// runHandoff measures POST /v1/streams against the real `pushproxy serve`, with forwarded
// credentials sealed and every client limit on, against the same with credentials in clear and
// the limits off, alternating the two on a fresh database each run.
func runHandoff(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("handoff", flag.ExitOnError)
	clients := fs.Int("clients", 16, "concurrent HTTP clients handing off streams")
	duration := fs.Duration("duration", 10*time.Second, "measured time of each run")
	warmup := fs.Duration("warmup", 2*time.Second, "load before each run's measured time (not counted)")
	pairs := fs.Int("pairs", 3, "pairs of runs of on (sealed, limits) and off, the pairs alternating which runs first: a b b a a b ...")
	keyQuota := fs.Int("max-streams-per-key", 100000000, "the on runs' --max-streams-per-key (0: that quota off, to see its share)")
	dbURL := fs.String("database-url", "", "Postgres server to use; each run creates a database of its own on it (empty: a private durable cluster)")
	onArgs := fs.String("on-args", "", "replace the on runs' flags with these (e.g. to see one feature's share; {keyfile} is the sealing key file); the API key is always sent")
	concurrent := fs.Bool("concurrent", false, "run each pair's on and off at the same time, each on its own database with half the clients, so that both meet the same load of the machine")
	profileDir := fs.String("profile-dir", "", "write a CPU profile of the proxy's measured window of each run here (run-N-on.pprof, ...)")
	fs.Parse(args)

	dir, err := buildBinaries()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	url, stopPG, err := startPostgres(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer stopPG()
	org, err := startChild(ctx, nil, filepath.Join(dir, "origin"), "--listen", "127.0.0.2:0", "--rate", "0", "--log-level", "warn")
	if err != nil {
		return err
	}
	defer org.stop()
	origins, err := org.waitLines(regexp.MustCompile(`listening on (http://\S+)`), 1)
	if err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "secret-keys.json")
	if _, _, err := seal.LoadOrCreate(keyFile); err != nil {
		return err
	}

	const apiKey = "bench-api-key-0123456789abcdef"
	// Limits far above what this load reaches: every client is 127.0.0.1 and uses one key, so
	// a limit at its production value would refuse most of the load. They are on, so that
	// every handoff pays for its checks (the buckets per address and key, the count of the
	// key's streams), and tripping none of them keeps the two runs doing the same work.
	on := handoffMode{"on", []string{"--secret-key-file", keyFile, "--api-keys", apiKey,
		"--handoff-rate-per-address", "1000000", "--handoff-rate-per-key", "1000000", "--handoff-burst", "1000000",
		"--max-streams-per-key", fmt.Sprint(*keyQuota), "--max-readers-per-stream", "8"}}
	if *onArgs != "" {
		on.args = strings.Fields(strings.ReplaceAll(*onArgs, "{keyfile}", keyFile))
	}
	off := handoffMode{"off", []string{"--insecure-plaintext-credentials",
		"--handoff-rate-per-address", "0", "--handoff-rate-per-key", "0", "--max-streams-per-key", "0", "--max-readers-per-stream", "0"}}
	fmt.Printf("handoff: %d clients, %s measured after %s of warm-up, %d pairs; origin %s; postgres: %s\n",
		*clients, *duration, *warmup, *pairs, origins[0], pgSettings(ctx, url))
	fmt.Printf("  on:  %s\n  off: %s\n", strings.Join(on.args, " "), strings.Join(off.args, " "))

	var runs []handoffRun
	if *concurrent {
		for i := 0; i < *pairs; i++ {
			// The pairs alternate which mode starts first and gets its workers first: an A/A
			// run of 6 pairs, on always first, measured it 1.9 % faster (pairs 1.000-1.038).
			modes := [2]handoffMode{on, off}
			if i%2 == 1 {
				modes = [2]handoffMode{off, on}
			}
			pair, err := handoffPair(ctx, dir, url, origins[0], i, modes, apiKey, max(*clients/2, 1), *warmup, *duration, *profileDir)
			if err != nil {
				return fmt.Errorf("pair %d: %w", i+1, err)
			}
			runs = append(runs, pair...)
		}
		return reportHandoffs(runs, on.name)
	}
	for i := 0; i < 2**pairs; i++ {
		// ABBA: the pairs alternate which mode runs first, so that neither the drift of the
		// machine nor the place in a pair (an A/A run of 6 pairs measured the first run of
		// each pair 8 % slower) counts for one mode.
		mode := on
		if (i%2 == 1) != (i/2%2 == 1) {
			mode = off
		}
		db, err := freshDatabase(ctx, url, fmt.Sprintf("bench_handoff_%d", i))
		if err != nil {
			return err
		}
		profile := ""
		if *profileDir != "" {
			profile = filepath.Join(*profileDir, fmt.Sprintf("run-%d-%s.pprof", i+1, mode.name))
		}
		r, err := handoffOnce(ctx, dir, db, origins[0], mode, apiKey, *clients, *warmup, *duration, profile)
		if err != nil {
			return fmt.Errorf("run %d (%s): %w", i+1, mode.name, err)
		}
		r.print(fmt.Sprint("run ", i+1))
		runs = append(runs, r)
	}
	return reportHandoffs(runs, on.name)
}

// reportHandoffs prints the on/off ratios of runs, taken as pairs (one on, one off).
func reportHandoffs(runs []handoffRun, on string) error {
	var ratios, onRates, offRates, cpuRatios []float64
	for i := 0; i+1 < len(runs); i += 2 {
		a, b := runs[i], runs[i+1] // a: on, b: off
		if a.mode != on {
			a, b = b, a
		}
		ratios = append(ratios, a.rate()/b.rate())
		onRates = append(onRates, a.rate())
		offRates = append(offRates, b.rate())
		cpuRatios = append(cpuRatios, float64(a.cpuPerHandoff())/float64(b.cpuPerHandoff()))
	}
	fmt.Printf("result: on %.0f handoffs/s, off %.0f handoffs/s (medians); on/off per pair %s; median ratio %.3f (%+.1f %%)\n",
		median(onRates), median(offRates), fmtRatios(ratios), median(ratios), 100*(median(ratios)-1))
	fmt.Printf("result: CPU per handoff (proxy + Postgres), on/off per pair %s; median %.3f (%+.1f %% CPU, so %+.1f %% handoffs/s where CPU is what bounds them)\n",
		fmtRatios(cpuRatios), median(cpuRatios), 100*(median(cpuRatios)-1), 100*(1/median(cpuRatios)-1))
	return nil
}

// handoffPair runs on and off at the same time (pair i), each on a fresh database of its own
// with clients workers, and returns their runs.
func handoffPair(ctx context.Context, dir, serverURL, origin string, i int, modes [2]handoffMode, apiKey string, clients int, warmup, duration time.Duration, profileDir string) ([]handoffRun, error) {
	var proxies []*handoffProxy
	defer func() {
		for _, p := range proxies {
			p.px.stop()
		}
	}()
	for k, mode := range modes {
		db, err := freshDatabase(ctx, serverURL, fmt.Sprintf("bench_handoff_%d", 2*i+k))
		if err != nil {
			return nil, err
		}
		profile := ""
		if profileDir != "" {
			profile = filepath.Join(profileDir, fmt.Sprintf("pair-%d-%s.pprof", i+1, mode.name))
		}
		p, err := startHandoffProxy(ctx, dir, db, mode, profile)
		if err != nil {
			return nil, err
		}
		proxies = append(proxies, p)
	}
	runs, err := loadHandoffs(ctx, proxies, origin, apiKey, clients, warmup, duration)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		r.print(fmt.Sprint("pair ", i+1))
	}
	return runs, nil
}

func (r handoffRun) print(what string) {
	fmt.Printf("  %s %-3s %7.0f handoffs/s  (%d in %s)  p50 %s  p99 %s  CPU %d µs/handoff (proxy + Postgres)\n", what, r.mode, r.rate(), r.n,
		r.elapsed.Round(time.Millisecond), r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.cpuPerHandoff().Microseconds())
}

func fmtRatios(rs []float64) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%.3f", r))
	}
	return strings.Join(s, " ")
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// freshDatabase creates database name on the server of serverURL (dropping an earlier one of
// that name) and returns its URL.
func freshDatabase(ctx context.Context, serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", err
	}
	u.Path = "/postgres"
	admin := u.String()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", err
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	conn.Close(ctx)
	if err != nil {
		return "", err
	}
	if err := pglocal.CreateDatabase(ctx, admin, name); err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// handoffProxy is a `pushproxy serve` the handoff benchmark loads.
type handoffProxy struct {
	mode      handoffMode
	px        *child
	db        string
	api       string // its POST /v1/streams
	adminAddr string
	profile   string // where to write the CPU profile of the measured window ("": none)
}

// startHandoffProxy starts `pushproxy serve` in mode on db.
func startHandoffProxy(ctx context.Context, dir, db string, mode handoffMode, profile string) (*handoffProxy, error) {
	admin := ""
	if profile != "" {
		admin = "127.0.0.1:0"
	}
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", admin, "--database-url", db,
		"--upstream-allow", "127.0.0.0/8", "--upstream-h2c", "--log-level", "info"}, mode.args...)
	px, err := startChild(ctx, nil, filepath.Join(dir, "pushproxy"), args...)
	if err != nil {
		return nil, err
	}
	serving, err := px.waitLines(regexp.MustCompile(`msg="pushproxy serving" (addr=\S+ scheme=\S+ admin=\S*)`), 1)
	if err != nil {
		px.stop()
		return nil, err
	}
	var addr, adminAddr, scheme string
	if _, err := fmt.Sscanf(strings.ReplaceAll(serving[0], "=", " "), "addr %s scheme %s admin %s", &addr, &scheme, &adminAddr); err != nil && profile != "" {
		px.stop()
		return nil, fmt.Errorf("serving line %q: %w", serving[0], err)
	}
	go func() { // drain what the proxy logs so that it never blocks; show its errors
		for l := range px.lines {
			if strings.Contains(l, "level=ERROR") {
				fmt.Printf("  proxy (%s): %s\n", mode.name, l)
			}
		}
	}()
	return &handoffProxy{mode: mode, px: px, db: db, api: "http://" + addr + "/v1/streams", adminAddr: adminAddr, profile: profile}, nil
}

// handoffOnce starts `pushproxy serve` in mode on db, loads it with handoffs from clients
// workers for warmup+duration, stops it, and returns what the measured part did.
func handoffOnce(ctx context.Context, dir, db, origin string, mode handoffMode, apiKey string, clients int, warmup, duration time.Duration, profile string) (handoffRun, error) {
	p, err := startHandoffProxy(ctx, dir, db, mode, profile)
	if err != nil {
		return handoffRun{}, err
	}
	defer p.px.stop()
	runs, err := loadHandoffs(ctx, []*handoffProxy{p}, origin, apiKey, clients, warmup, duration)
	if err != nil {
		return handoffRun{}, err
	}
	return runs[0], nil
}

// loadHandoffs loads each of proxies with handoffs from clients workers of its own, all at
// the same time, for warmup+duration, and returns what the measured part did at each. The
// CPU of one proxy alone is its process's and its Postgres server's; of several at once, each
// one's process's and its database's backends' (Postgres's own processes, shared, are left
// out).
func loadHandoffs(ctx context.Context, proxies []*handoffProxy, origin, apiKey string, clients int, warmup, duration time.Duration) ([]handoffRun, error) {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		firstErr  error
		errOnce   sync.Once
	)
	type load struct {
		count atomic.Int64
		mu    sync.Mutex
		lat   []time.Duration
		cpu   func() time.Duration
	}
	loads := make([]*load, len(proxies))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	for pi, p := range proxies {
		ld := &load{}
		loads[pi] = ld
		for w := 0; w < clients; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				var mine []time.Duration
				defer func() {
					ld.mu.Lock()
					ld.lat = append(ld.lat, mine...)
					ld.mu.Unlock()
				}()
				for i := 0; !stop.Load(); i++ {
					// Credentials of the shapes apps forward: an Authorization, a Cookie, a custom
					// header and a ?key= query, each distinct per handoff.
					body, _ := json.Marshal(map[string]any{
						"url": fmt.Sprintf("%s/events?key=query-secret-%d-%d-%d", origin, pi, w, i),
						"headers": map[string]string{
							"Authorization": fmt.Sprintf("Bearer origin-token-%d-%d-0123456789abcdef", w, i),
							"Cookie":        fmt.Sprintf("sid=session-%d-%d-0123456789abcdef; theme=dark", w, i),
							"X-Api-Key":     fmt.Sprintf("custom-%d-%d-0123456789abcdef", w, i),
						},
					})
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.api, bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Authorization", "Bearer "+apiKey) // ignored when no key is set
					t0 := time.Now()
					resp, err := client.Do(req)
					if err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusCreated {
							err = fmt.Errorf("handoff (%s): %s: %s", p.mode.name, resp.Status, bytes.TrimSpace(b))
						}
					}
					took := time.Since(t0)
					if err != nil {
						errOnce.Do(func() { firstErr = err })
						stop.Store(true)
						return
					}
					if measuring.Load() {
						ld.count.Add(1)
						mine = append(mine, took)
					}
				}
			}(w)
		}
		pid := p.px.cmd.Process.Pid
		ld.cpu = func() time.Duration { return processTreeCPU(pid) }
		switch pg, err := postmasterPID(ctx, p.db); {
		case err != nil:
			fmt.Printf("  CPU per handoff: the proxy's only (Postgres is not a process of this machine: %v)\n", err)
		case len(proxies) == 1:
			ld.cpu = func() time.Duration { return processTreeCPU(pid) + processTreeCPU(pg) }
		default:
			backends := databaseBackendsCPU(ctx, p.db)
			ld.cpu = func() time.Duration { return processTreeCPU(pid) + backends() }
		}
	}
	sleep := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	sleep(warmup)
	profiled := make(chan error, len(proxies))
	for _, p := range proxies {
		if p.profile == "" {
			profiled <- nil
			continue
		}
		go func() {
			profiled <- fetchProfile(ctx, "http://"+p.adminAddr+"/debug/pprof/profile", duration, p.profile)
		}()
	}
	cpu0 := make([]time.Duration, len(proxies))
	for i, ld := range loads {
		cpu0[i] = ld.cpu()
	}
	measuring.Store(true)
	t0 := time.Now()
	sleep(duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	runs := make([]handoffRun, len(proxies))
	for i, ld := range loads {
		runs[i] = handoffRun{mode: proxies[i].mode.name, elapsed: elapsed, cpu: ld.cpu() - cpu0[i]}
	}
	stop.Store(true)
	wg.Wait()
	for range proxies {
		if err := <-profiled; err != nil {
			return nil, err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, ld := range loads {
		lat := ld.lat
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if len(lat) == 0 {
			return nil, fmt.Errorf("%s: no handoff completed in %s", proxies[i].mode.name, duration)
		}
		pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		runs[i].n, runs[i].p50, runs[i].p99 = int(ld.count.Load()), pct(0.5), pct(0.99)
	}
	return runs, nil
}

// databaseBackendsCPU returns a function of the CPU time the backends serving db have spent:
// those alive when it is called, each counted from when the function first saw it (from 0
// for one it had not seen, started since).
func databaseBackendsCPU(ctx context.Context, db string) func() time.Duration {
	seen := map[int]time.Duration{}
	pids := func() ([]int32, error) {
		conn, err := pgx.Connect(ctx, db)
		if err != nil {
			return nil, err
		}
		defer conn.Close(ctx)
		rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[int32])
	}
	first := true
	return func() time.Duration {
		ids, err := pids()
		if err != nil {
			// Without the first reading, the next one would count each backend's CPU since
			// it started: it takes the first's place, and this run's CPU shows as 0.
			fmt.Printf("  CPU per handoff: the database's backends: %v\n", err)
			return 0
		}
		var total time.Duration
		for _, id := range ids {
			pid := int(id)
			st, err := procStat(pid)
			if err != nil {
				continue
			}
			if first {
				seen[pid] = st.cpu
			}
			total += st.cpu - seen[pid]
		}
		first = false
		return total
	}
}

// fetchProfile writes the CPU profile of the next d of the process serving url to path.
func fetchProfile(ctx context.Context, url string, d time.Duration, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?seconds=%d", url, int(d.Seconds())), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}

// postmasterPID returns the process id of the Postgres server of url (the parent of a
// backend's process).
func postmasterPID(ctx context.Context, url string) (int, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var backend int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0, err
	}
	st, err := procStat(backend)
	if err != nil {
		return 0, fmt.Errorf("postgres backend %d: %w", backend, err)
	}
	return st.ppid, nil
}

// procStatus is what the bench reads of /proc/<pid>/stat.
type procStatus struct {
	ppid int
	cpu  time.Duration // utime + stime, and the cutime + cstime of children that were waited for
}

// procStat reads /proc/<pid>/stat (clock ticks are 1/100 s on Linux).
func procStat(pid int) (procStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStatus{}, err
	}
	// The command name (field 2) may hold spaces: the fields after it follow its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStatus{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 15 {
		return procStatus{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var st procStatus
	st.ppid, _ = strconv.Atoi(f[1])
	for _, v := range f[11:15] { // utime, stime, cutime, cstime
		t, _ := strconv.ParseInt(v, 10, 64)
		st.cpu += time.Duration(t) * 10 * time.Millisecond
	}
	return st, nil
}

// processTreeCPU is the CPU time of pid, of its children it has waited for, and of its
// live children (Postgres backends are children of the postmaster).
func processTreeCPU(pid int) time.Duration {
	st, err := procStat(pid)
	if err != nil {
		return 0
	}
	total := st.cpu
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		if cst, err := procStat(child); err == nil && cst.ppid == pid {
			total += cst.cpu
		}
	}
	return total
}
