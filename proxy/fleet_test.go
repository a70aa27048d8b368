package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

// Tests with several Services on one database: the fleet's leases, hand-overs and
// notifications, each checked by the stored backlogs (every event once, in order).

// fleetStreams creates n streams nobody holds, all on origin (every stream of a ScriptOrigin
// serves the same events), and returns their ids.
func fleetStreams(t *testing.T, st *store.Store, origin string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		s, _, err := st.CreateStream(context.Background(), store.NewStream{URL: origin + "/" + strconv.Itoa(i), TokenHash: []byte("t" + strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = s.ID
	}
	return ids
}

// owners returns how many held streams each instance holds by the database ("" for none).
func owners(t *testing.T, st *store.Store) map[string]int {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), `SELECT coalesce(lease_owner, ''), count(*) FROM streams WHERE state = 'held' GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	var (
		o string
		n int
	)
	if _, err := pgx.ForEachRow(rows, []any{&o, &n}, func() error { m[o] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	return m
}

// waitBacklogs waits until every stream's backlog holds the events 1..want of a ScriptOrigin
// and fails at once if one holds anything else (a doubled, lost or misordered event).
func waitBacklogs(t *testing.T, st *store.Store, ids []string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows, err := st.Pool().Query(context.Background(), `
			SELECT s.id::text, coalesce(array_agg(convert_from(e.last_event_id, 'UTF8') ORDER BY e.seq) FILTER (WHERE e.seq IS NOT NULL), '{}')
			FROM streams s LEFT JOIN events e ON e.stream_id = s.id
			WHERE s.id = ANY($1::uuid[]) GROUP BY s.id`, ids)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]string{}
		var (
			id  string
			evs []string
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &evs}, func() error { got[id] = evs; return nil }); err != nil {
			t.Fatal(err)
		}
		done := true
		for _, id := range ids {
			evs := got[id]
			for i, e := range evs {
				if e != strconv.Itoa(i+1) {
					t.Fatalf("stream %s: event %d has id %q: backlog %v", id, i, e, evs)
				}
			}
			if len(evs) > want {
				t.Fatalf("stream %s: %d events stored of %d published", id, len(evs), want)
			}
			done = done && len(evs) == want
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			for _, id := range ids {
				if len(got[id]) != want {
					t.Fatalf("stream %s: %d of %d events after 30s", id, len(got[id]), want)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publisher publishes an event every few milliseconds until the returned stop, which returns
// how many it published.
func publisher(o *proxytest.ScriptOrigin) (stop func() int) {
	done := make(chan struct{})
	var n atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				o.PublishN(1)
				n.Add(1)
			}
		}
	}()
	return func() int { close(done); wg.Wait(); return int(n.Load()) }
}

// within reports whether every one of instances holds its fair share of total, ±20 %.
func within(got map[string]int, instances []string, total int) bool {
	fair := float64(total) / float64(len(instances))
	sum := 0
	for _, in := range instances {
		n := got[in]
		sum += n
		if float64(n) < 0.8*fair || float64(n) > 1.2*fair {
			return false
		}
	}
	return sum == total
}

// TestFleetBalancesAsInstancesJoin starts one instance with every stream, then a second and a
// third while events flow: each time the streams spread to within ±20 % of a fair share, and
// every event is stored once, in order, across all the hand-overs.
func TestFleetBalancesAsInstancesJoin(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	origin := newScriptOrigin(t, 0)
	opts := &proxy.Options{ClaimInterval: 50 * time.Millisecond, RebalanceInterval: 100 * time.Millisecond, RebalanceRate: 100, LeaseTTL: 3 * time.Second}
	a := proxytest.StartMember(t, db, "a", opts)
	const total = 90
	ids := fleetStreams(t, a.Store, origin.Srv.URL, total)
	eventually(t, 10*time.Second, "a holding every stream", func() bool { return owners(t, a.Store)["a"] == total })
	stop := publisher(origin)
	proxytest.StartMember(t, db, "b", opts)
	start := time.Now()
	eventually(t, 20*time.Second, "a and b sharing the streams", func() bool { return within(owners(t, a.Store), []string{"a", "b"}, total) })
	t.Logf("two instances balanced in %s: %v", time.Since(start), owners(t, a.Store))
	proxytest.StartMember(t, db, "c", opts)
	start = time.Now()
	eventually(t, 20*time.Second, "a, b and c sharing the streams", func() bool { return within(owners(t, a.Store), []string{"a", "b", "c"}, total) })
	t.Logf("three instances balanced in %s: %v", time.Since(start), owners(t, a.Store))
	published := stop()
	waitBacklogs(t, a.Store, ids, published)
	// Balanced means settled: nothing moves any more.
	before := owners(t, a.Store)
	time.Sleep(500 * time.Millisecond) // five rebalance intervals
	if after := owners(t, a.Store); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("streams still move once balanced: %v, then %v", before, after)
	}
}

// expireUntil expires instance's lease (as if it stalled) until cond holds: the instance
// renews it on its own schedule.
func expireUntil(t *testing.T, st *store.Store, instance string, cond func() bool) {
	t.Helper()
	eventually(t, 10*time.Second, "the streams of "+instance+" taken over", func() bool {
		if _, err := st.Pool().Exec(context.Background(), `UPDATE instances SET expires_at = now() - interval '1 second' WHERE id = $1`, instance); err != nil {
			t.Fatal(err)
		}
		return cond()
	})
}

// TestFleetLeaseLossStopsHoldersOnTheFence: instance a stalls past its lease (its lease row
// expires), b takes its streams over, and a's holders, still connected, read the next events:
// their commit is refused by the lease fence, lost() stops them long before a's next renewal,
// and every event is stored once, by b.
func TestFleetLeaseLossStopsHoldersOnTheFence(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	origin := newScriptOrigin(t, 0)
	setupStore := proxytest.StartMember(t, db, "setup", &proxy.Options{ClaimBatch: 1, ClaimInterval: time.Hour, RebalanceInterval: -1})
	setupStore.Stop(t)
	ids := fleetStreams(t, setupStore.Store, origin.Srv.URL, 10)
	// a claims once (at start) and renews every 10 s: nothing renews its lease meanwhile.
	a := proxytest.StartMember(t, db, "a", &proxy.Options{LeaseTTL: 30 * time.Second, ClaimInterval: time.Hour, RebalanceInterval: -1})
	eventually(t, 10*time.Second, "a holding every stream", func() bool { return a.Held() == 10 && owners(t, a.Store)["a"] == 10 })
	origin.PublishN(5)
	waitBacklogs(t, a.Store, ids, 5)
	b := proxytest.StartMember(t, db, "b", &proxy.Options{LeaseTTL: 30 * time.Second, ClaimInterval: 20 * time.Millisecond, RebalanceInterval: -1})
	expireUntil(t, a.Store, "a", func() bool { return owners(t, a.Store)["b"] == 10 })
	if a.Held() != 10 {
		t.Fatalf("a holds %d streams before any commit or renewal told it", a.Held())
	}
	lostAt := time.Now()
	origin.PublishN(5)
	eventually(t, 5*time.Second, "a's holders stopped by the refused commit", func() bool { return a.Held() == 0 })
	t.Logf("a's holders stopped %s after the events", time.Since(lostAt))
	waitBacklogs(t, a.Store, ids, 10)
	if b.Held() != 10 {
		t.Fatalf("b holds %d streams", b.Held())
	}
}

// TestFleetRenewalStopsHoldersWhoseStreamsMoved: as above but no event comes, so no commit
// tells a: its next renewal finds the streams gone and stops their holders.
func TestFleetRenewalStopsHoldersWhoseStreamsMoved(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	origin := newScriptOrigin(t, 0)
	setup := proxytest.StartMember(t, db, "setup", &proxy.Options{ClaimInterval: time.Hour, RebalanceInterval: -1})
	setup.Stop(t)
	ids := fleetStreams(t, setup.Store, origin.Srv.URL, 10)
	a := proxytest.StartMember(t, db, "a", &proxy.Options{LeaseTTL: 3 * time.Second, ClaimInterval: time.Hour, RebalanceInterval: -1})
	eventually(t, 10*time.Second, "a holding every stream", func() bool { return a.Held() == 10 })
	b := proxytest.StartMember(t, db, "b", &proxy.Options{LeaseTTL: 3 * time.Second, ClaimInterval: 10 * time.Millisecond, RebalanceInterval: -1})
	expireUntil(t, a.Store, "a", func() bool { return owners(t, a.Store)["b"] == 10 })
	eventually(t, 3*time.Second, "a's renewal stopping its holders", func() bool { return a.Held() == 0 })
	eventually(t, 5*time.Second, "b holding every stream", func() bool { return b.Held() == 10 })
	origin.PublishN(3)
	waitBacklogs(t, a.Store, ids, 3)
}

// TestFleetOrphanedLeasesReleased: a stream leased to a live instance that has no holder for
// it, and one leased to an instance that has no row at all, are both released and claimed.
func TestFleetOrphanedLeasesReleased(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	origin := newScriptOrigin(t, 0)
	a := proxytest.StartMember(t, db, "a", &proxy.Options{LeaseTTL: 900 * time.Millisecond, ClaimInterval: 20 * time.Millisecond})
	var ids []string
	for _, owner := range []string{"a", "ghost"} {
		s, _, err := a.Store.CreateStream(context.Background(), store.NewStream{URL: origin.Srv.URL, TokenHash: []byte(owner), LeaseOwner: owner})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	eventually(t, 10*time.Second, "both streams held by a", func() bool { return a.Held() == 2 && owners(t, a.Store)["a"] == 2 })
	origin.PublishN(4)
	waitBacklogs(t, a.Store, ids, 4)
}

// sseData reads an SSE response's data fields into out until it ends.
func sseData(body io.Reader, out chan<- string) {
	defer close(out)
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out <- d
		}
	}
}

// TestFleetListenerKilledReadersGetEveryEvent: a reader waits on instance b for a stream that
// a holds; b's listener connection is ended by the server (pg_terminate_backend) and events
// are committed while it reconnects: the reader still gets every one, in order.
func TestFleetListenerKilledReadersGetEveryEvent(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	origin := newScriptOrigin(t, 0)
	a := proxytest.StartMember(t, db, "a", &proxy.Options{RebalanceInterval: -1})
	b := proxytest.StartMember(t, db, "b", &proxy.Options{RebalanceInterval: -1})
	h := handoff(t, a.Bundle, map[string]any{"url": origin.Srv.URL})
	req, _ := http.NewRequest("GET", b.API.URL+h.EventsURL, nil)
	req.Header.Set("Accept", "text/event-stream")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reader: %d", resp.StatusCode)
	}
	data := make(chan string, 100)
	go sseData(resp.Body, data)
	next := 1
	expect := func(upto int) {
		t.Helper()
		for ; next <= upto; next++ {
			select {
			case d := <-data:
				if want := fmt.Sprintf(`{"n":%d}`, next); d != want {
					t.Fatalf("reader got %s, want %s", d, want)
				}
			case <-ctx.Done():
				t.Fatalf("reader waiting for event %d", next)
			}
		}
	}
	origin.PublishN(3)
	expect(3)
	var killed int
	if err := a.Store.Pool().QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'b-listen' AND datname = current_database()`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("ended %d listener sessions, want 1", killed)
	}
	origin.PublishN(3)
	expect(6)
	origin.PublishN(3)
	expect(9)
}

// commitCutter is a TCP proxy between a store and Postgres that, once armed, forwards the
// next COMMIT, waits for the server to finish it (ReadyForQuery), and drops the connection
// without passing the answer on: the transaction is committed, the client cannot know. A
// COMMIT is a simple query, or the execution of a prepared statement (Bind) whose text is
// COMMIT, sent in a pipeline whose Sync follows it.
type commitCutter struct {
	armed atomic.Bool
	cut   atomic.Int32
}

func (c *commitCutter) serve(client, server net.Conn) {
	var cutting atomic.Bool
	go func() {
		defer client.Close()
		for {
			m, err := pgtest.ReadMessage(server, true)
			if err != nil {
				return
			}
			if cutting.Load() {
				if m[0] == 'Z' {
					c.cut.Add(1)
					server.Close()
					return
				}
				continue
			}
			if _, err := client.Write(m); err != nil {
				return
			}
		}
	}()
	typed := false // the startup message has no type byte
	isCommit := func(sql string) bool { return strings.EqualFold(strings.TrimRight(sql, "\x00; "), "commit") }
	prepared := map[string]string{} // statement name: its text
	for {
		m, err := pgtest.ReadMessage(client, typed)
		if err != nil {
			return
		}
		typed = true
		commit := false
		switch m[0] {
		case 'Q':
			commit = isCommit(string(m[5:]))
		case 'P': // Parse: name, text
			if name, rest, ok := strings.Cut(string(m[5:]), "\x00"); ok {
				text, _, _ := strings.Cut(rest, "\x00")
				prepared[name] = text
			}
		case 'B': // Bind: portal, statement
			if f := strings.SplitN(string(m[5:]), "\x00", 3); len(f) == 3 {
				commit = isCommit(prepared[f[1]])
			}
		}
		if commit && c.armed.CompareAndSwap(true, false) {
			cutting.Store(true)
		}
		if _, err := server.Write(m); err != nil {
			return
		}
	}
}

// TestFleetCommitAnswerLost: the answer to a commit of events is lost after Postgres
// committed it (the connection drops between COMMIT and its reply): the committer retries,
// finds the events stored, and goes on; no event is lost or doubled, and the stream stays with
// its holder (same lease epoch: it was not dropped and claimed again).
func TestFleetCommitAnswerLost(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	cutter := &commitCutter{}
	cutURL := pgtest.Intercept(t, db, cutter.serve)
	origin := newScriptOrigin(t, 0)
	// b's pool goes through the cutter; a, beside it, may take the stream over.
	proxytest.StartMember(t, db, "a", &proxy.Options{LeaseTTL: 3 * time.Second, ClaimInterval: 50 * time.Millisecond, RebalanceInterval: -1})
	b := proxytest.StartMemberURLs(t, db, cutURL, db, "b", &proxy.Options{LeaseTTL: 3 * time.Second, ClaimInterval: 50 * time.Millisecond, RebalanceInterval: -1})
	h := handoff(t, b.Bundle, map[string]any{"url": origin.Srv.URL})
	origin.PublishN(3)
	waitBacklogs(t, b.Store, []string{h.ID}, 3)
	epoch := func() (e int64) {
		t.Helper()
		if err := b.Store.Pool().QueryRow(context.Background(), `SELECT lease_epoch FROM streams WHERE id = $1`, h.ID).Scan(&e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	first := epoch()
	for round := 1; round <= 3; round++ {
		cutter.armed.Store(true)
		start := time.Now()
		origin.PublishN(3)
		eventually(t, 20*time.Second, "a commit cut", func() bool { return int(cutter.cut.Load()) == round })
		waitBacklogs(t, b.Store, []string{h.ID}, 3+4*round-1)
		t.Logf("round %d: the events of the cut commit stored once after %s", round, time.Since(start))
		// One more event, after the retry: stored by the same holder.
		origin.PublishN(1)
		waitBacklogs(t, b.Store, []string{h.ID}, 3+4*round)
		if e := epoch(); e != first || b.Held() != 1 {
			t.Fatalf("round %d: lease epoch %d (was %d), b holds %d streams: the holder was dropped", round, e, first, b.Held())
		}
	}
	origin.PublishN(3)
	waitBacklogs(t, b.Store, []string{h.ID}, 18)
}

// TestTakeoverConnectsSpreadHandoffsImmediate: an instance that claims 150 streams at once
// with a takeover rate of 100/s connects them over about 1.5 s, never more than a few per
// 100 ms, while a handoff made meanwhile connects at once.
func TestTakeoverConnectsSpreadHandoffsImmediate(t *testing.T) {
	t.Parallel()
	db := proxytest.MigratedDatabase(t)
	var (
		mu       sync.Mutex
		connects = map[string]time.Time{}
	)
	origin := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		connects[r.URL.Path] = time.Now()
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	setup := proxytest.StartMember(t, db, "setup", &proxy.Options{ClaimInterval: time.Hour, RebalanceInterval: -1})
	setup.Stop(t)
	const n, rate = 150, 100
	fleetStreams(t, setup.Store, origin.URL+"/s", n)
	start := time.Now()
	a := proxytest.StartMember(t, db, "a", &proxy.Options{TakeoverRate: rate, RebalanceInterval: -1})
	eventually(t, 10*time.Second, "the streams claimed", func() bool { return a.Held() == n })
	time.Sleep(200 * time.Millisecond) // into the takeover
	handoffAt := time.Now()
	handoff(t, a.Bundle, map[string]any{"url": origin.URL + "/handoff"})
	eventually(t, 10*time.Second, "every stream connected", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(connects) == n+1
	})
	mu.Lock()
	defer mu.Unlock()
	if d := connects["/handoff"].Sub(handoffAt); d > 300*time.Millisecond {
		t.Errorf("the handoff connected %s after it was made, behind the takeover", d)
	}
	var times []time.Time
	for p, at := range connects {
		if p != "/handoff" {
			times = append(times, at)
		}
	}
	slices.SortFunc(times, time.Time.Compare)
	span := times[len(times)-1].Sub(times[0])
	busiest := 0
	for i, j := 0, 0; i < len(times); i++ {
		for times[i].Sub(times[j]) > 100*time.Millisecond {
			j++
		}
		busiest = max(busiest, i-j+1)
	}
	t.Logf("%d takeover connects over %s (first %s after start), at most %d in 100 ms; the handoff connected %s after it was made",
		n, span.Round(time.Millisecond), times[0].Sub(start).Round(time.Millisecond), busiest, connects["/handoff"].Sub(handoffAt).Round(time.Millisecond))
	if span < time.Duration(n-rate/5)*time.Second/rate {
		t.Errorf("%d takeover connects within %s: faster than %d/s", n, span, rate)
	}
	if busiest > rate/10+5 {
		t.Errorf("%d takeover connects within 100 ms, at %d/s", busiest, rate)
	}
}
