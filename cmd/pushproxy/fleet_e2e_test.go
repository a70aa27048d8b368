package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/store"
)

// The fleet's chaos test: three instances on one Postgres, a few hundred streams of the
// reference origin; one instance is killed, one frozen inside a commit past its lease and
// thawed, one stopped and replaced by a fresh one. Every stream is retaken within the lease
// TTL plus the claim interval, API requests during it all answer within a bound, every event
// the origin sent is stored once in order, and the streams end spread over the live instances.

const (
	fleetTTL     = 3 * time.Second
	fleetClaim   = 200 * time.Millisecond
	fleetStreams = 240
	// fleetRetakeSlack covers the poll that observes a retake and the commit that stamps it.
	fleetRetakeSlack = 1500 * time.Millisecond
	// fleetRequestBound is the longest an API request may take during the chaos.
	fleetRequestBound = 5 * time.Second
)

type fleetMember struct {
	id   string
	api  string
	proc *process
	gen  int // counts setUp calls: a request that began in another generation is not judged
}

type fleetStream struct {
	id, token, events string // events: the events path with its token
}

// fleet is the test's view of the instances and streams.
type fleet struct {
	t      *testing.T
	db     *pgxpool.Pool
	dbURL  string
	mu     sync.Mutex
	up     map[string]*fleetMember // instances that answer requests (not frozen, not dead)
	probes struct {
		n, failed int
		slowest   time.Duration
		failures  []string
		slow      []string // requests that took more than a second
	}
}

func (f *fleet) start(id string) *fleetMember {
	f.t.Helper()
	// One test client hands off every stream: no per-address handoff limit (where there is one).
	env := []string{"PUSHPROXY_HANDOFF_RATE_PER_ADDRESS=0"}
	api, p := startProxyEnv(f.t, f.dbURL, env, "--instance-id", id, "--lease-ttl", fleetTTL.String(),
		"--claim-interval", fleetClaim.String(), "--rebalance-interval", "500ms", "--rebalance-rate", "200",
		"--log-level", "info")
	m := &fleetMember{id: id, api: api, proc: p}
	f.setUp(m, true)
	return m
}

func (f *fleet) setUp(m *fleetMember, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m.gen++
	if up {
		f.up[m.id] = m
	} else {
		delete(f.up, m.id)
	}
}

// owners returns the held streams per lease owner ("" for none).
func (f *fleet) owners() map[string]int {
	f.t.Helper()
	rows, err := f.db.Query(context.Background(), `SELECT coalesce(lease_owner, ''), count(*) FROM streams WHERE state = 'held' GROUP BY 1`)
	if err != nil {
		f.t.Fatal(err)
	}
	m := map[string]int{}
	var (
		o string
		n int
	)
	if _, err := pgx.ForEachRow(rows, []any{&o, &n}, func() error { m[o] = n; return nil }); err != nil {
		f.t.Fatal(err)
	}
	return m
}

// waitFor polls cond every 50 ms until it holds or timeout passes, and returns how long it
// took.
func (f *fleet) waitFor(timeout time.Duration, what string, cond func() bool) time.Duration {
	f.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			f.t.Fatalf("timed out after %s waiting for %s (owners %v)", timeout, what, f.owners())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// retaken waits until no held stream is leased to gone and every held stream has a live
// owner (in f.up, or frozen-but-alive ones not counted), and checks that it took at most the
// lease TTL plus the claim interval after since.
func (f *fleet) retaken(gone string, since time.Time, live ...string) {
	f.t.Helper()
	f.waitFor(3*fleetTTL, "the streams of "+gone+" retaken", func() bool {
		o := f.owners()
		n := 0
		for _, id := range live {
			n += o[id]
		}
		return o[gone] == 0 && n == fleetStreams
	})
	took := time.Since(since)
	f.t.Logf("streams of %s retaken %s after its end (lease TTL %s + claim interval %s)", gone, took.Round(time.Millisecond), fleetTTL, fleetClaim)
	if took > fleetTTL+fleetClaim+fleetRetakeSlack {
		f.t.Errorf("the streams of %s were retaken after %s, more than the lease TTL + claim interval (+%s to observe it)", gone, took, fleetRetakeSlack)
	}
}

// balanced reports whether the held streams are spread over instances within ±20 % of a
// fair share.
func (f *fleet) balanced(instances ...string) bool {
	o := f.owners()
	fair := float64(fleetStreams) / float64(len(instances))
	sum := 0
	for _, id := range instances {
		if math.Abs(float64(o[id])-fair) > 0.2*fair {
			return false
		}
		sum += o[id]
	}
	return sum == fleetStreams
}

// probe keeps asking the instances that are up about random streams (their state, and a page
// of their events, neither of which acknowledges anything) until ctx ends, and records the
// slowest answer and any answer that is not 200.
func (f *fleet) probe(ctx context.Context, streams []fleetStream, wg *sync.WaitGroup) {
	defer wg.Done()
	client := &http.Client{Timeout: 2 * fleetRequestBound}
	for i := 0; ctx.Err() == nil; i++ {
		f.mu.Lock()
		var apis []*fleetMember
		for _, m := range f.up {
			apis = append(apis, m)
		}
		f.mu.Unlock()
		if len(apis) == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m := apis[i%len(apis)]
		f.mu.Lock()
		gen := m.gen
		f.mu.Unlock()
		s := streams[i%len(streams)]
		req, _ := http.NewRequest("GET", m.api+"/v1/streams/"+s.id, nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		if i%2 == 1 {
			req, _ = http.NewRequest("GET", m.api+s.events+"&limit=10", nil)
			req.Header.Set("Accept", "application/json")
		}
		start := time.Now()
		resp, err := client.Do(req)
		took := time.Since(start)
		status := 0
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			status = resp.StatusCode
		}
		f.mu.Lock()
		// An instance taken down (killed, frozen) while the request ran answers late or
		// not at all: not a hang of a live instance.
		if m.gen == gen {
			f.probes.n++
			f.probes.slowest = max(f.probes.slowest, took)
			if took > time.Second && len(f.probes.slow) < 10 {
				f.probes.slow = append(f.probes.slow, fmt.Sprintf("%s %s %s: %d after %s", start.Format("15:04:05.000"), m.id, req.URL.Path, status, took.Round(time.Millisecond)))
			}
			if err != nil || status != http.StatusOK {
				f.probes.failed++
				if len(f.probes.failures) < 10 {
					f.probes.failures = append(f.probes.failures, fmt.Sprintf("%s %s: %d %v after %s", m.id, req.URL.Path, status, err, took))
				}
			}
		}
		f.mu.Unlock()
	}
}

// freezeInCommit stops p with SIGSTOP at a moment its instance has a transaction open (found
// by the name serve gives its sessions, store.SessionName): it retries stop, look, continue
// until it catches one.
func (f *fleet) freezeInCommit(m *fleetMember) {
	f.t.Helper()
	ctx := context.Background()
	for attempt := 1; attempt <= 2000; attempt++ {
		m.proc.signal(syscall.SIGSTOP)
		var open int
		// A transaction that has written streams rows (a commit of events, a claim): it
		// holds their row locks.
		err := f.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a WHERE a.application_name = $1
			AND a.state IN ('idle in transaction', 'active') AND a.backend_xid IS NOT NULL
			AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation = 'streams'::regclass AND l.mode = 'RowExclusiveLock')`, store.SessionName(m.id)).Scan(&open)
		if err != nil {
			f.t.Fatal(err)
		}
		if open > 0 {
			f.t.Logf("%s frozen with %d transaction(s) open on streams, at attempt %d", m.id, open, attempt)
			return
		}
		m.proc.signal(syscall.SIGCONT)
		time.Sleep(time.Duration(attempt%7) * time.Millisecond)
	}
	f.t.Fatalf("could not freeze %s inside a transaction", m.id)
}

// checkBacklogs checks that every stream's stored events carry the origin's ids in sequence,
// each once, up to at least lastID.
func (f *fleet) checkBacklogs(lastID int) {
	f.t.Helper()
	f.waitFor(30*time.Second, "every stream stored up to the origin's event "+strconv.Itoa(lastID), func() bool {
		var behind int
		err := f.db.QueryRow(context.Background(), `
			SELECT count(*) FROM streams s WHERE s.state = 'held' AND coalesce((SELECT convert_from(e.last_event_id, 'UTF8')::bigint
				FROM events e WHERE e.stream_id = s.id AND e.seq = s.head_seq), -1) < $1`, lastID).Scan(&behind)
		if err != nil {
			f.t.Fatal(err)
		}
		return behind == 0
	})
	rows, err := f.db.Query(context.Background(), `SELECT stream_id::text, seq, convert_from(last_event_id, 'UTF8')::bigint FROM events ORDER BY stream_id, seq`)
	if err != nil {
		f.t.Fatal(err)
	}
	var (
		stream, prevStream string
		seq, id, prevID    int64
		prevSeq            int64
		events, streams    int
	)
	_, err = pgx.ForEachRow(rows, []any{&stream, &seq, &id}, func() error {
		events++
		if stream != prevStream {
			streams++
			prevStream, prevSeq, prevID = stream, seq, id
			return nil
		}
		if seq != prevSeq+1 || id != prevID+1 {
			return fmt.Errorf("stream %s: seq %d (id %d) follows seq %d (id %d): an event lost or doubled", stream, seq, id, prevSeq, prevID)
		}
		prevSeq, prevID = seq, id
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	if streams != fleetStreams {
		f.t.Fatalf("events stored for %d streams of %d", streams, fleetStreams)
	}
	f.t.Logf("%d events over %d streams, each stream's in sequence, none twice", events, streams)
}

// TestEndToEndFleetChaos is the fleet test the README's "several instances" promise rests on.
func TestEndToEndFleetChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	dbURL := pgtest.NewDatabase(t)
	ctx := context.Background()
	originURL, _ := startOrigin(t, "--rate", "4", "--history", "100000", "--retry", "200ms", "--symbols", "8")
	f := &fleet{t: t, dbURL: dbURL, up: map[string]*fleetMember{}}
	m1 := f.start("fleet-1") // migrates the database
	m2 := f.start("fleet-2")
	m3 := f.start("fleet-3")
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	f.db = pool

	streams := make([]fleetStream, fleetStreams)
	for i := range streams {
		m := []*fleetMember{m1, m2, m3}[i%3]
		body := fmt.Sprintf(`{"url": %q}`, originURL+"/events")
		resp, err := http.Post(m.api+"/v1/streams", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			ID, Token string
			Events    string `json:"events_url"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("handoff %d: %d %v", i, resp.StatusCode, err)
		}
		streams[i] = fleetStream{id: out.ID, token: out.Token, events: out.Events}
	}
	f.waitFor(20*time.Second, "three balanced instances", func() bool { return f.balanced("fleet-1", "fleet-2", "fleet-3") })
	pctx, stopProbes := context.WithCancel(ctx)
	var probes sync.WaitGroup
	for range 4 {
		probes.Add(1)
		go f.probe(pctx, streams, &probes)
	}
	// Probes flowing (100 answered, spread over the instances) before the first one goes.
	f.waitFor(20*time.Second, "probes answered by the balanced fleet", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.probes.n >= 100
	})

	// 1. SIGKILL: fleet-1's streams move once its lease lapses.
	f.setUp(m1, false)
	killed := time.Now()
	m1.proc.kill()
	f.retaken("fleet-1", killed, "fleet-2", "fleet-3")

	// 2. SIGSTOP inside a commit, past the lease: fleet-2's session is ended by the
	// idle-in-transaction timeout (or, frozen in a COPY of events, by the maintenance
	// leader once fleet-2's lease lapsed), its row locks go with it, fleet-3 takes every
	// stream.
	f.setUp(m2, false)
	f.freezeInCommit(m2)
	frozen := time.Now()
	f.retaken("fleet-2", frozen, "fleet-3")
	time.Sleep(fleetTTL / 2) // frozen well past its lease
	m2.proc.signal(syscall.SIGCONT)
	t.Logf("fleet-2 thawed at %s", time.Now().Format("15:04:05.000"))
	f.setUp(m2, true)
	f.waitFor(20*time.Second, "fleet-2 back to its share", func() bool { return f.balanced("fleet-2", "fleet-3") })

	// 3. SIGTERM, and a fresh instance in its place.
	f.setUp(m3, false)
	stopped := time.Now()
	m3.proc.signal(syscall.SIGTERM)
	f.retaken("fleet-3", stopped, "fleet-2")
	f.start("fleet-4")
	took := f.waitFor(30*time.Second, "fleet-2 and fleet-4 balanced", func() bool { return f.balanced("fleet-2", "fleet-4") })
	t.Logf("fleet-4 reached its share in %s: %v", took.Round(time.Millisecond), f.owners())

	stopProbes()
	probes.Wait()
	t.Logf("%d API requests during the chaos, slowest %s, %d not 200", f.probes.n, f.probes.slowest.Round(time.Millisecond), f.probes.failed)
	if len(f.probes.slow) > 0 {
		t.Logf("API requests slower than 1s: %s", strings.Join(f.probes.slow, "; "))
	}
	if f.probes.slowest > fleetRequestBound {
		t.Errorf("an API request took %s, more than %s", f.probes.slowest, fleetRequestBound)
	}
	if f.probes.failed > 0 {
		t.Errorf("%d API requests failed: %s", f.probes.failed, strings.Join(f.probes.failures, "; "))
	}

	// Every event the origin sent up to now, stored once, in order, on every stream.
	f.checkBacklogs(f.originHead(originURL))
	if !f.balanced("fleet-2", "fleet-4") {
		t.Fatalf("not balanced at the end: %v", f.owners())
	}
}

// originHead returns the id of the origin's newest event (a new stream's snapshot carries it).
func (f *fleet) originHead(originURL string) int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", originURL+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			id, err := strconv.Atoi(v)
			if err != nil {
				f.t.Fatalf("origin's snapshot id %q: %v", v, err)
			}
			return id
		}
	}
	f.t.Fatalf("no id from the origin: %v", sc.Err())
	return 0
}
