package maintenance_test

import (
	"context"
	neturl "net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/maintenance"
	"github.com/pushproxy/pushproxy/metrics"
	"github.com/pushproxy/pushproxy/store"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

const owner = "instance-a"

// counts records Metrics calls.
type counts struct {
	mu      sync.Mutex
	rows    map[string]int64
	order   []string // the rule of each batch that deleted something, in turn
	leading bool
}

func (c *counts) Retention(rule string, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rows == nil {
		c.rows = map[string]int64{}
	}
	c.rows[rule] += n
	c.order = append(c.order, rule)
}

func (c *counts) Leading(on bool) {
	c.mu.Lock()
	c.leading = on
	c.mu.Unlock()
}

func (c *counts) get(rule string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rows[rule]
}

func (c *counts) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.rows {
		n += v
	}
	return n
}

type bundle struct {
	url string
	st  *store.Store
}

func setup(t *testing.T) *bundle {
	t.Helper()
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	return &bundle{url: url, st: openStore(t, url)}
}

func openStore(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.RenewInstance(context.Background(), owner, time.Hour); err != nil {
		t.Fatal(err)
	}
	return st
}

// exec runs SQL that sets the scene (backdating rows).
func (b *bundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.st.Pool().Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// stream hands off a stream (with a device when token is not "") with n queued events.
func (b *bundle) stream(t *testing.T, token string, n int64) pushproxy.Stream {
	t.Helper()
	ctx := context.Background()
	var push *pushproxy.PushAddress
	if token != "" {
		push = &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: token}
	}
	s, epoch, err := b.st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/e", TokenHash: []byte("h"), Push: push, LeaseOwner: owner})
	if err != nil {
		t.Fatal(err)
	}
	var evs []pushproxy.Event
	for i := int64(1); i <= n; i++ {
		evs = append(evs, pushproxy.Event{Seq: i, LastEventID: "e", Type: "t", Data: "d"})
	}
	if n > 0 {
		if _, err := b.st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: n, ResumeID: "e", RetryMS: -1}}, store.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (b *bundle) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := b.st.Pool().QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (b *bundle) state(t *testing.T, id string) pushproxy.Stream {
	t.Helper()
	s, err := b.st.GetStream(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runner returns a runner with tiny batches (every rule needs several) and no pause worth
// the name.
func (b *bundle) runner(t *testing.T, st *store.Store, id string, o maintenance.Options) (*maintenance.Runner, *counts) {
	t.Helper()
	c := &counts{}
	o.InstanceID, o.Metrics = id, c
	if o.BatchSize == 0 {
		o.BatchSize = 2
	}
	o.BatchPause = time.Millisecond
	r := maintenance.New(st, &o)
	t.Cleanup(r.Stop)
	return r, c
}

const week = 7 * 24 * time.Hour

// TestClosedRetentionDeletesEndedStreamsPastItAndNothingElse: ended streams (closed or
// failed) past the retention go with all their events and the devices they leave without
// a stream; streams ended just inside it, held streams, and devices with a stream left stay.
func TestClosedRetentionDeletesEndedStreamsPastItAndNothingElse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	gone1 := b.stream(t, "lonely", 5)      // its device has no other stream: both go
	gone2 := b.stream(t, "shared", 3)      // its device keeps another stream
	keptHeld := b.stream(t, "shared", 2)   // held: stays
	keptInside := b.stream(t, "inside", 4) // ended an hour inside the retention: stays
	gone3 := b.stream(t, "", 7)            // no device
	for _, s := range []pushproxy.Stream{gone1, gone2, gone3, keptInside} {
		if _, err := b.st.CloseStream(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Five events left after close on each (the origin-ended path keeps its backlog until
	// deletion; a close leaves what it discarded to the reclaimer).
	b.exec(t, `DELETE FROM events e USING streams s WHERE e.stream_id = s.id AND s.state = 'closed'`)
	b.exec(t, `INSERT INTO events (stream_id, seq, last_event_id, type, data)
		SELECT s.id, g, 'x', 't', 'd' FROM streams s, generate_series(1, 5) g WHERE s.state = 'closed'`)
	b.exec(t, `UPDATE streams SET closed_at = now() - $2::interval - interval '1 minute' WHERE id = ANY($1::uuid[])`,
		[]string{gone1.ID, gone2.ID, gone3.ID}, week)
	b.exec(t, `UPDATE streams SET closed_at = now() - $2::interval + interval '1 hour' WHERE id = $1`, keptInside.ID, week)
	b.exec(t, `UPDATE devices SET updated_at = now() - interval '8 days'`)

	r, c := b.runner(t, b.st, "leader", maintenance.Options{ClosedRetention: week})
	if !r.RunOnce(ctx) {
		t.Fatal("the only runner does not lead")
	}
	for _, s := range []pushproxy.Stream{gone1, gone2, gone3} {
		if n := b.count(t, `SELECT count(*) FROM streams WHERE id = $1`, s.ID); n != 0 {
			t.Errorf("stream past the retention kept")
		}
		if n := b.count(t, `SELECT count(*) FROM events WHERE stream_id = $1`, s.ID); n != 0 {
			t.Errorf("%d events of a deleted stream kept", n)
		}
	}
	for _, s := range []pushproxy.Stream{keptHeld, keptInside} {
		if n := b.count(t, `SELECT count(*) FROM events WHERE stream_id = $1`, s.ID); n == 0 {
			t.Errorf("events of a stream %s inside the retention deleted", s.ID)
		}
	}
	if got := b.state(t, keptInside.ID); got.State != pushproxy.StateClosed {
		t.Errorf("stream inside the retention: %s", got.State)
	}
	if n := b.count(t, `SELECT count(*) FROM devices WHERE token = 'lonely'`); n != 0 {
		t.Error("a device left without a stream was kept")
	}
	if n := b.count(t, `SELECT count(*) FROM devices WHERE token IN ('shared', 'inside')`); n != 2 {
		t.Errorf("%d of the devices with a stream left are kept, want 2", n)
	}
	if c.get(maintenance.RuleClosedStreams) != 3 || c.get(maintenance.RuleClosedEvents) != 15 || c.get(maintenance.RuleOrphanDevices) != 1 {
		t.Errorf("counted %v", c.rows)
	}
}

// TestRulesTakeTurns: a rule with much to do (here ended streams, a batch of one each) lets
// the next rules (here acknowledged rows to reclaim) have their turn before it is done, and
// every rule finishes within the pass.
func TestRulesTakeTurns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const ended = 35
	for range ended {
		b.stream(t, "", 0)
	}
	b.exec(t, `UPDATE streams SET state = 'closed', closed_at = now() - $1::interval - interval '1 minute'`, week)
	acked := b.stream(t, "", 60)
	b.exec(t, `UPDATE streams SET floor_seq = 60 WHERE id = $1`, acked.ID)
	b.exec(t, `INSERT INTO events_reclaim (stream_id, upto_seq) VALUES ($1, 60)`, acked.ID)
	r, c := b.runner(t, b.st, "leader", maintenance.Options{ClosedRetention: week, BatchSize: 1})
	if !r.RunOnce(ctx) {
		t.Fatal("the only runner does not lead")
	}
	if got := c.get(maintenance.RuleClosedStreams); got != ended {
		t.Fatalf("%d ended streams deleted, want %d", got, ended)
	}
	if got := c.get(maintenance.RuleAckedEvents); got != 60 {
		t.Fatalf("%d acknowledged rows reclaimed, want 60", got)
	}
	firstAcked, lastClosed := -1, -1
	for i, rule := range c.order {
		switch {
		case rule == maintenance.RuleAckedEvents && firstAcked < 0:
			firstAcked = i
		case rule == maintenance.RuleClosedStreams:
			lastClosed = i
		}
	}
	if firstAcked > lastClosed {
		t.Fatalf("acknowledged rows waited for every ended stream to go: %v", c.order)
	}
}

// TestIdleStreamsAreClosedAndNothingElse: a held stream nobody read for the TTL is closed
// with a reason that says so (its holder's renewal no longer lists it); one read just inside
// the TTL, one with a reader open, and ended ones are left alone; a read resets the clock.
func TestIdleStreamsAreClosedAndNothingElse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	idle := b.stream(t, "a", 1)
	inside := b.stream(t, "b", 1)
	reading := b.stream(t, "c", 1)
	readNow := b.stream(t, "d", 1)
	b.exec(t, `UPDATE streams SET read_at = now() - $1::interval - interval '1 minute'`, week)
	b.exec(t, `UPDATE streams SET read_at = now() - $2::interval + interval '1 hour' WHERE id = $1`, inside.ID, week)
	if _, err := b.st.OpenReader(ctx, reading.ID, reading.DeviceID, owner, time.Hour); err != nil {
		t.Fatal(err)
	}
	// The device reads readNow (a JSON page or an EventSource: both resume).
	if _, err := b.st.Resume(ctx, readNow.ID, "", false); err != nil {
		t.Fatal(err)
	}
	r, c := b.runner(t, b.st, "leader", maintenance.Options{StreamIdleTTL: week})
	r.RunOnce(ctx)
	got := b.state(t, idle.ID)
	if got.State != pushproxy.StateClosed || got.StateReason != store.StreamIdleReason(week) {
		t.Fatalf("idle stream: %s %q", got.State, got.StateReason)
	}
	for _, s := range []pushproxy.Stream{inside, reading, readNow} {
		if got := b.state(t, s.ID); got.State != pushproxy.StateHeld {
			t.Errorf("stream %s closed: %q", s.ID, got.StateReason)
		}
	}
	held, err := b.st.RenewLeases(ctx, owner, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if held[idle.ID] || !held[inside.ID] {
		t.Fatalf("the holder's renewal lists %v", held)
	}
	if n := c.get(maintenance.RuleIdleStreams); n != 1 {
		t.Fatalf("counted %d idle streams", n)
	}
}

// TestOldEventsAreDroppedAndTheReaderToldOfTheGap: events older than --max-backlog-age go,
// oldest first; younger ones (and every event of a stream within the age) stay; the next
// reader gets the gap signal.
func TestOldEventsAreDroppedAndTheReaderToldOfTheGap(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var old, young []pushproxy.Stream
	for range 5 { // more streams than a batch: the keyset pages through them
		old = append(old, b.stream(t, "", 10))
		young = append(young, b.stream(t, "", 3))
	}
	for _, s := range old {
		// Events 1..6 are older than an hour, 7..10 just inside it.
		b.exec(t, `UPDATE events SET created_at = now() - interval '1 hour' - (11 - seq) * interval '1 minute' WHERE stream_id = $1 AND seq <= 6`, s.ID)
		b.exec(t, `UPDATE events SET created_at = now() - interval '59 minutes' WHERE stream_id = $1 AND seq > 6`, s.ID)
	}
	r, c := b.runner(t, b.st, "leader", maintenance.Options{MaxBacklogAge: time.Hour})
	r.RunOnce(ctx)
	for _, s := range old {
		got := b.state(t, s.ID)
		evs, _ := b.st.EventsAfter(ctx, s.ID, 0, 100)
		if got.FloorSeq != 6 || len(evs) != 4 || evs[0].Seq != 7 {
			t.Fatalf("old stream: floor %d, %d events left", got.FloorSeq, len(evs))
		}
		var bytes int64
		b.st.Pool().QueryRow(ctx, `SELECT backlog_bytes FROM streams WHERE id = $1`, s.ID).Scan(&bytes)
		if bytes != 4*3 {
			t.Fatalf("backlog bytes %d after the trim, want 12", bytes)
		}
		cur, err := b.st.Resume(ctx, s.ID, "", false)
		if err != nil || !cur.Gap || cur.After != 6 {
			t.Fatalf("reader after the trim: %+v %v", cur, err)
		}
	}
	for _, s := range young {
		if got := b.state(t, s.ID); got.FloorSeq != 0 {
			t.Fatalf("young stream trimmed to %d", got.FloorSeq)
		}
	}
	if n := c.get(maintenance.RuleBacklogAge); n != 5*6 {
		t.Fatalf("counted %d events dropped, want 30", n)
	}
}

// TestDeadDevicesAreFailedThenDeletedPastTheGrace: a device whose token died more than the
// grace ago has its streams failed and is deleted (with its wake-up history); one that died
// just inside the grace keeps its streams held.
func TestDeadDevicesAreFailedThenDeletedPastTheGrace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	grace := 24 * time.Hour
	dead1, dead2 := b.stream(t, "dead", 1), b.stream(t, "dead", 1)
	inside := b.stream(t, "inside", 1)
	alive := b.stream(t, "alive", 1)
	b.exec(t, `UPDATE devices SET dead_at = now() - $1::interval - interval '1 minute', dead_reason = 'Unregistered' WHERE token = 'dead'`, grace)
	b.exec(t, `UPDATE devices SET dead_at = now() - $1::interval + interval '1 hour', dead_reason = 'Unregistered' WHERE token = 'inside'`, grace)
	b.exec(t, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at) SELECT id, 'failed', now(), now(), now() FROM devices`)
	r, c := b.runner(t, b.st, "leader", maintenance.Options{DeadGrace: grace, BatchSize: 1})
	r.RunOnce(ctx)
	for _, s := range []pushproxy.Stream{dead1, dead2} {
		if got := b.state(t, s.ID); got.State != pushproxy.StateFailed || got.DeviceID != "" {
			t.Errorf("stream of the dead device: %s, device %q", got.State, got.DeviceID)
		}
	}
	for _, s := range []pushproxy.Stream{inside, alive} {
		if got := b.state(t, s.ID); got.State != pushproxy.StateHeld {
			t.Errorf("stream %s: %s", s.ID, got.State)
		}
	}
	if n := b.count(t, `SELECT count(*) FROM devices WHERE token = 'dead'`); n != 0 {
		t.Error("the dead device was kept")
	}
	if n := b.count(t, `SELECT count(*) FROM wakeups`); n != 2 {
		t.Errorf("%d wake-ups left, want those of the two live devices", n)
	}
	if c.get(maintenance.RuleDeadStreams) != 2 || c.get(maintenance.RuleDeadDevices) != 1 {
		t.Errorf("counted %v", c.rows)
	}
}

// TestWakeupHistoryAndGoneInstancesAreTrimmed: finished wake-ups past the history go, those
// just inside it and outstanding ones stay; an instance gone longer than a lease loses its
// leases and its row, one gone for less (and a live one) keep theirs.
func TestWakeupHistoryAndGoneInstancesAreTrimmed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	s := b.stream(t, "dev", 0)
	b.exec(t, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at)
		SELECT d.id, 'sent', now(), now(), now() - $1::interval - g * interval '1 minute' FROM devices d, generate_series(1, 5) g`, week)
	b.exec(t, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at)
		SELECT id, 'sent', now(), now(), now() - $1::interval + interval '1 hour' FROM devices`, week)
	b.exec(t, `INSERT INTO wakeups (device_id, state, created_at, due_at) SELECT id, 'pending', now() - interval '30 days', now() FROM devices`)

	lease := 30 * time.Second
	b.exec(t, `INSERT INTO instances (id, expires_at) VALUES ('gone', now() - interval '31 seconds'), ('late', now() - interval '20 seconds')`)
	b.exec(t, `UPDATE streams SET lease_owner = 'gone' WHERE id = $1`, s.ID)
	late := b.stream(t, "", 0)
	b.exec(t, `UPDATE streams SET lease_owner = 'late' WHERE id = $1`, late.ID)

	r, c := b.runner(t, b.st, "leader", maintenance.Options{WakeupHistory: week, InstanceGone: lease})
	r.RunOnce(ctx)
	if n := b.count(t, `SELECT count(*) FROM wakeups`); n != 2 {
		t.Errorf("%d wake-ups left, want the one inside the history and the pending one", n)
	}
	if n := b.count(t, `SELECT count(*) FROM instances WHERE id = 'gone'`); n != 0 {
		t.Error("the instance gone longer than a lease was kept")
	}
	if n := b.count(t, `SELECT count(*) FROM instances WHERE id IN ('late', $1)`, owner); n != 2 {
		t.Error("an instance gone less than a lease, or a live one, was deleted")
	}
	// The gone instance's lease was released (its stream is free to claim, though no
	// instance row names its owner any more); the late one's stays with it.
	if n := b.count(t, `SELECT count(*) FROM streams WHERE id = $1 AND lease_owner IS NULL`, s.ID); n != 1 {
		t.Error("the gone instance's lease was not released")
	}
	if n := b.count(t, `SELECT count(*) FROM streams WHERE id = $1 AND lease_owner = 'late'`, late.ID); n != 1 {
		t.Error("the late instance's lease was released")
	}
	claims, err := b.st.ClaimStreams(ctx, "other", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) == 0 || claims[0].Stream.ID != s.ID && (len(claims) < 2 || claims[1].Stream.ID != s.ID) {
		t.Fatalf("claimed %v, want the gone instance's stream among them", claims)
	}
	if c.get(maintenance.RuleWakeupHistory) != 5 || c.get(maintenance.RuleGoneInstances) != 1 {
		t.Errorf("counted %v", c.rows)
	}
}

// TestTheLeaderEndsTheSessionsOfLapsedInstances: a session named after an instance whose
// lease lapsed (store.SessionName), left in a transaction that holds a stream's row and
// waiting for its client (as a COPY frozen with its instance is), is ended by the leader's
// tick, and the row freed. Left alone: a live instance's session in a transaction, the
// lapsed instance's idle session and its statement that is running (not waiting for its
// client). A live instance's session stuck longer than a lease (an earlier process frozen
// under an id a new one renews) is ended too.
func TestTheLeaderEndsTheSessionsOfLapsedInstances(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	s := b.stream(t, "", 0)
	b.exec(t, `INSERT INTO instances (id, expires_at) VALUES ('lapsed', now() - interval '1 second'), ('live', now() + interval '1 minute')`)
	session := func(instance string) *pgx.Conn {
		t.Helper()
		u, err := neturl.Parse(b.url)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Del("application_name")
		// (%20, not the + of Values.Encode, which pgx leaves as it is)
		u.RawQuery = q.Encode() + "&application_name=" + neturl.PathEscape(store.SessionName(instance))
		conn, err := pgx.Connect(ctx, u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	begin := func(conn *pgx.Conn, sql string, args ...any) pgx.Tx {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	frozen, idle, running, live := session("lapsed"), session("lapsed"), session("lapsed"), session("live")
	frozenTx := begin(frozen, `SELECT 1 FROM streams WHERE id = $1 FOR UPDATE`, s.ID)
	liveTx := begin(live, `SELECT 1`)
	runningTx := begin(running, `SELECT 1`)
	slept := make(chan error, 1)
	go func() { _, err := runningTx.Exec(ctx, `SELECT pg_sleep(3)`); slept <- err }()
	waitFor(t, 10*time.Second, "the running statement never started", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'`, running.PgConn().PID()) == 1
	})

	const lease = 2 * time.Second
	r, _ := b.runner(t, b.st, "leader", maintenance.Options{LeaseTTL: lease})
	if !r.RunOnce(ctx) {
		t.Fatal("the only runner does not lead")
	}
	gone := func(conn *pgx.Conn) bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, conn.PgConn().PID()) == 0
	}
	// pg_terminate_backend signals the session, which ends soon after.
	waitFor(t, 10*time.Second, "the lapsed instance's stuck session was not ended", func() bool { return gone(frozen) })
	if err := frozenTx.Commit(ctx); err == nil {
		t.Fatal("the lapsed instance's transaction committed: its session was not ended")
	}
	if n := b.count(t, `SELECT count(*) FROM (SELECT 1 FROM streams WHERE id = $1 FOR UPDATE SKIP LOCKED) l`, s.ID); n != 1 {
		t.Fatal("the stream's row is still locked")
	}
	if err := <-slept; err != nil {
		t.Fatalf("the lapsed instance's running statement: %v", err)
	}
	if err := runningTx.Commit(ctx); err != nil {
		t.Fatalf("the lapsed instance's running transaction: %v", err)
	}
	if err := idle.Ping(ctx); err != nil {
		t.Fatalf("the lapsed instance's idle session: %v", err)
	}
	if gone(live) {
		t.Fatal("the live instance's session in a transaction was ended within a lease")
	}
	// Stuck for longer than a lease, the live instance's session goes too.
	waitFor(t, 10*time.Second, "the live instance's session stuck longer than a lease was not ended", func() bool {
		r.RunOnce(ctx)
		return gone(live)
	})
	if err := liveTx.Commit(ctx); err == nil {
		t.Fatal("the stuck transaction committed")
	}
}

// gather collects the database-wide gauges as an instance's /metrics would.
func gather(t *testing.T, st *store.Store) map[string]string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewBacklogCollector(st, nil))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()+labels(m)] = m.String()
		}
	}
	return out
}

func labels(m *dto.Metric) string {
	s := ""
	for _, l := range m.GetLabel() {
		s += "{" + l.GetName() + "=" + l.GetValue() + "}"
	}
	return s
}

// TestOneLeaderRunsMaintenanceAndAnotherTakesOverWhenItDies: two runners (two instances'
// worth, each with its own pool) on one database: exactly one leads and runs maintenance;
// both instances' collectors report the same gauges, from the leader's one row; the leader
// is killed without a word (its lease is not given up) and the other takes over within a
// lease, computes the gauges and runs the rules.
func TestOneLeaderRunsMaintenanceAndAnotherTakesOverWhenItDies(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	stA, stB := b.st, openStore(t, b.url)
	for range 3 {
		b.stream(t, "", 4)
	}
	lease := 900 * time.Millisecond
	o := maintenance.Options{LeaseTTL: lease, GaugeInterval: 50 * time.Millisecond, Interval: 50 * time.Millisecond, WakeupHistory: time.Hour}
	ra, ca := b.runner(t, stA, "a", o)
	rb, cb := b.runner(t, stB, "b", o)
	ra.Start(ctx)
	rb.Start(ctx)

	waitFor(t, 5*time.Second, "a leader", func() bool { return ra.Leading() || rb.Leading() })
	leader, follower, lc, fc := ra, rb, ca, cb
	if rb.Leading() {
		leader, follower, lc, fc = rb, ra, cb, ca
	}
	// Finished wake-ups past the history keep arriving: only the leader deletes them.
	b.exec(t, `INSERT INTO devices (platform, token) VALUES ('fcm', 'x')`)
	trim := func() {
		b.exec(t, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at)
			SELECT id, 'sent', now(), now(), now() - interval '2 hours' FROM devices`)
	}
	trim()
	waitFor(t, 5*time.Second, "the leader trims", func() bool { return lc.get(maintenance.RuleWakeupHistory) > 0 })
	if follower.Leading() || fc.total() != 0 {
		t.Fatalf("the follower leads (%v) or ran maintenance (%d rows)", follower.Leading(), fc.total())
	}
	waitFor(t, 5*time.Second, "gauges", func() bool { _, ok, _ := stA.GetGauges(ctx); return ok })
	// Both read the one row: compare two scrapes of the same computation (the leader may
	// recompute between them).
	var ga, gb map[string]string
	waitFor(t, 5*time.Second, "two scrapes of one computation", func() bool {
		ga, gb = gather(t, stA), gather(t, stB)
		const at = "pushproxy_gauges_computed_timestamp_seconds"
		return ga[at] != "" && ga[at] == gb[at]
	})
	if len(ga) == 0 || len(ga) != len(gb) {
		t.Fatalf("gauges: %d and %d series", len(ga), len(gb))
	}
	for k, v := range ga {
		if gb[k] != v {
			t.Errorf("%s: %s on one instance, %s on the other", k, v, gb[k])
		}
	}
	if g, _, _ := stA.GetGauges(ctx); g.Events != 12 || g.Streams[pushproxy.StateHeld] != 3 || g.Leader != leader.ID() {
		t.Errorf("gauges %+v, want 12 events over 3 held streams, computed by %s", g, leader.ID())
	}

	// The leader dies (no resignation): the other takes over once the lease lapses.
	killed := time.Now()
	leader.Abandon()
	waitFor(t, 5*time.Second, "the takeover", follower.Leading)
	if took := time.Since(killed); took > lease+lease/2 {
		t.Errorf("takeover after %s, lease %s", took, lease)
	}
	trim()
	waitFor(t, 5*time.Second, "the new leader trims", func() bool { return fc.get(maintenance.RuleWakeupHistory) > 0 })
	before, _, _ := stB.GetGauges(ctx)
	waitFor(t, 5*time.Second, "gauges from the new leader", func() bool {
		g, _, _ := stB.GetGauges(ctx)
		return g.Leader == follower.ID() && g.ComputedAt.After(before.ComputedAt)
	})
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
