package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgfill"
	"github.com/pushproxy/pushproxy/store"
)

// bigTables are the tables that grow with the fleet and its history: a statement on the hot
// path or of maintenance never scans one of them whole. (readers holds the open
// connections, instances and events_reclaim a handful of rows: scanned whole, they cost
// less than an index.)
var bigTables = []string{"events", "streams", "devices", "wakeups"}

// jitAboveCost is Postgres's default jit_above_cost: a statement estimated above it is
// compiled before it runs, which costs hundreds of milliseconds on a statement that would
// take one.
const jitAboveCost = 100000

// TestPlansUseIndexes: at 100,000 streams, a million queued events, 50,000 devices, 100,000
// wake-ups of history and 25,000 pending, and 5,000 open readers (statistics fresh, as
// autovacuum keeps them),
// every statement of the hot paths and of every retention rule finds its rows by index: no
// sequential scan of a table that grows with the fleet, and no estimate that would have
// Postgres compile the statement (JIT) before running it, in the plan it makes for the
// statement's arguments. The store's sessions plan every statement so (plan_cache_mode
// force_custom_plan); were they not to, the generic plans a prepared statement switches to
// after five executions (pgx prepares every statement) would be checked too.
//
// The statements are recorded as the store runs them (a pgx tracer), so the test explains
// exactly the SQL the code sends, with its arguments. One database is filled once for all
// the subtests; they run in order, the retention rules (which delete) last.
func TestPlansUseIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a database with 100,000 streams and a million events")
	}
	t.Parallel()
	url := migratedDatabase(t)
	rec := &recorder{}
	st := open(t, url, &store.Options{Tracer: rec})
	ctx := context.Background()
	if err := pgfill.Fill(ctx, st.Pool(), pgfill.Sizes{Streams: 100000, StreamsPerDevice: 2, Ended: 10,
		EventsPerStream: 11, WakeupsPerDevice: 2, PendingEvery: 2, ReadersEvery: 20}); err != nil {
		t.Fatal(err)
	}
	p := newPlanner(t, ctx, url, st)
	t.Run("serving", func(t *testing.T) { servingPlans(t, ctx, st, p) })
	t.Run("hot paths", func(t *testing.T) { hotPathPlans(t, ctx, st, rec, p) })
	t.Run("retention", func(t *testing.T) { retentionPlans(t, ctx, st, rec, p) })
}

// newPlanner returns a planner on connections of its own to url, planning as st's sessions
// do.
func newPlanner(t *testing.T, ctx context.Context, url string, st *store.Store) *planner {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	var mode string
	if err := st.Pool().QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	// The statements inside the store's functions are planned when they run: auto_explain,
	// on a session of its own, reports their plans as notices.
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	cfg.RuntimeParams["plan_cache_mode"] = mode
	nested, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nested.Close(ctx) })
	if _, err := nested.Exec(ctx, `LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;
		SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json;
		SET auto_explain.log_level = notice`); err != nil {
		t.Fatal(err)
	}
	p := &planner{conn: conn, generic: mode != "force_custom_plan", nested: nested, notices: &notices}
	t.Logf("the store's sessions plan with plan_cache_mode %s: generic plans checked: %v", mode, p.generic)
	return p
}

// TestCommitFindsStreamsByIDOnStaleStatistics: the commit finds its streams by id when the
// statistics are older than the instance's streams (a fleet's first minutes: streams was
// analysed empty), not by reading every stream of the owner (streams_held_owner_created:
// 1.4 ms for a commit of 11 streams of 500 in the live bench) nor by scanning streams.
func TestCommitFindsStreamsByIDOnStaleStatistics(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	rec := &recorder{}
	st := open(t, url, &store.Options{Tracer: rec})
	ctx := context.Background()
	const me = "instance-stale"
	// Analysed empty, and kept so: autovacuum must not analyse it again during the test.
	for _, q := range []string{`ALTER TABLE streams SET (autovacuum_enabled = false)`, `ANALYZE streams`} {
		if _, err := st.Pool().Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := st.Pool().Query(ctx, `
		INSERT INTO streams (url, headers, token_hash, lease_owner, lease_epoch)
		SELECT 'http://o.test/' || g, '{}', 'h', $1, 1 FROM generate_series(1, 2000) g
		RETURNING id::text`, me)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RenewInstance(ctx, me, time.Minute); err != nil {
		t.Fatal(err)
	}
	p := newPlanner(t, ctx, url, st)
	stmts := rec.record(t, "commit", func() error {
		var as []store.Append
		for _, id := range ids[:11] {
			as = append(as, store.Append{StreamID: id, Epoch: 1, HeadSeq: 1, ResumeID: "1", RetryMS: -1,
				Events: []pushproxy.Event{{Seq: 1, LastEventID: "1", Data: "tick"}}})
		}
		res, err := st.Commit(ctx, me, as, store.CommitOptions{})
		if err == nil && (len(res.Lost) > 0 || res.Events != 11) {
			err = fmt.Errorf("the commit did not take: %+v", res)
		}
		return err
	})
	p.check(t, "commit", stmts, []string{"streams_pkey"})
	for _, s := range stmts {
		if !strings.Contains(s.sql, "UPDATE streams") {
			continue
		}
		args := s.args
		if _, ok := args[0].(pgx.QueryExecMode); ok {
			args = args[1:]
		}
		for _, generic := range []bool{false, true} { // (a small commit runs its generic plans)
			plan, err := p.explain(ctx, s.sql, args, generic)
			if err != nil {
				t.Fatal(err)
			}
			plan.walk(func(n planNode) {
				if (n.Relation == "streams" && n.Type == "Seq Scan") || (strings.HasPrefix(n.Index, "streams_") && n.Index != "streams_pkey") {
					t.Errorf("the commit reads streams by %s %s, not by id (generic plan: %v):\n%s", n.Type, n.Index, generic, plan)
				}
			})
		}
	}
}

// servingPlans: the statements of a page read and of an acknowledgement, the batched page
// read and the reclaimer's delete.
func servingPlans(t *testing.T, ctx context.Context, st *store.Store, p *planner) {
	var id, other string
	err := st.Pool().QueryRow(ctx, `SELECT min(id::text), max(id::text) FROM (SELECT id FROM streams WHERE state = 'held' LIMIT 2) s`).Scan(&id, &other)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		sql  string
		args []any
		uses []string
	}{
		{"page read", store.PageSQL, []any{id, int64(3), 1001}, []string{"events_pkey", "streams_pkey"}},
		{"batched page read", store.PagesSQL, []any{[]string{id, other}, []int64{3, 0}, []int32{500, 500}}, []string{"events_pkey", "streams_pkey"}},
		{"acknowledgement by id", store.AckByIDSQL, []any{id, int64(2), []byte("7"), nil}, []string{"events_pkey", "streams_pkey"}},
		{"acknowledgement by proxy id", store.AckByIDSQL, []any{id, int64(2), []byte(pushproxy.ProxyIDPrefix + "7"), int64(7)}, []string{"events_pkey", "streams_pkey"}},
		{"acknowledgement", store.AckSQL, []any{id, int64(2), int64(7), []byte("7")}, []string{"streams_pkey", "events_pkey"}},
		{"reclaim batch", store.ReclaimSQL, []any{1000}, []string{"events_pkey"}},
		{"reclaim done", store.ReclaimDoneSQL, []any{[]string{id, other}}, []string{"events_pkey"}},
		{"compaction", store.CompactSQL, []any{[]string{id}, [][]byte{[]byte("S1")}, []int64{1000}}, []string{"events_compact_key", "streams_pkey"}},
	} {
		p.check(t, c.name, []recorded{{c.sql, c.args}}, c.uses)
	}
}

// hotPathPlans: the statements an instance runs all along, at every claim and renewal
// interval, every commit, every read, every wake-up and every handoff.
func hotPathPlans(t *testing.T, ctx context.Context, st *store.Store, rec *recorder, p *planner) {
	const me = "instance-0"
	// A few streams are waiting to be claimed (released by an instance that stopped).
	if _, err := st.Pool().Exec(ctx, `
		UPDATE streams SET lease_owner = NULL WHERE id IN (
			SELECT id FROM streams WHERE lease_owner = 'instance-1' AND state = 'held' LIMIT 50)`); err != nil {
		t.Fatal(err)
	}
	// A few streams are leased to an instance that has no row (ReleaseOwnerless's case).
	if _, err := st.Pool().Exec(ctx, `
		UPDATE streams SET lease_owner = 'instance-vanished' WHERE id IN (
			SELECT id FROM streams WHERE lease_owner = 'instance-2' AND state = 'held' LIMIT 20)`); err != nil {
		t.Fatal(err)
	}
	// Streams of this instance whose devices sleep (no reader), and one that is read.
	type held struct {
		id, device string
		head       int64
		epoch      int64
	}
	rows, _ := st.Pool().Query(ctx, `
		SELECT s.id::text, s.device_id::text, s.head_seq, s.lease_epoch FROM streams s JOIN devices d ON d.id = s.device_id
		WHERE s.lease_owner = $1 AND s.state = 'held' AND d.dead_at IS NULL
			AND NOT EXISTS (SELECT 1 FROM readers r WHERE r.device_id = s.device_id)
			AND NOT EXISTS (SELECT 1 FROM wakeups w WHERE w.device_id = s.device_id AND w.state = 'pending')
		LIMIT 4`, me)
	hs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (held, error) {
		var h held
		return h, r.Scan(&h.id, &h.device, &h.head, &h.epoch)
	})
	if err != nil || len(hs) < 4 {
		t.Fatal(len(hs), err)
	}
	var readerStream, readerDevice string
	if err := st.Pool().QueryRow(ctx, `SELECT stream_id::text, device_id::text FROM readers LIMIT 1`).Scan(&readerStream, &readerDevice); err != nil {
		t.Fatal(err)
	}
	wake := &store.WakePolicy{Debounce: time.Second, Rewake: time.Minute}
	var readerID string
	var claimed []pushproxy.Wakeup
	// Balancing counts every held stream (only with --rebalance-interval): no index makes
	// a count of 90,000 rows cheaper than reading them.
	whole := map[string][]string{"fleet load": {"streams"}}
	ops := []struct {
		name string
		run  func() error
		uses []string // indexes the plans must use
	}{
		{"claim", func() error {
			cs, err := st.ClaimStreams(ctx, me, time.Minute, 100)
			if err == nil && len(cs) != 50 {
				err = fmt.Errorf("claimed %d streams, not the 50 unowned", len(cs))
			}
			return err
		},
			[]string{"streams_held_owner_created"}},
		{"renew", func() error { _, err := st.RenewLeases(ctx, me, time.Minute); return err },
			[]string{"streams_lease_owner"}},
		{"release ownerless", func() error {
			n, err := st.ReleaseOwnerless(ctx)
			if err == nil && n != 20 {
				err = fmt.Errorf("released %d leases, not 20", n)
			}
			return err
		}, []string{"streams_lease_owner"}},
		{"refresh readers", func() error { _, err := st.RefreshReaders(ctx, me, time.Minute); return err },
			[]string{"readers_instance_id"}},
		{"commit", func() error {
			var as []store.Append
			for i, h := range hs[:3] {
				var evs []pushproxy.Event
				for seq := h.head + 1; seq <= h.head+3; seq++ {
					ev := pushproxy.Event{Seq: seq, LastEventID: fmt.Sprint(seq), Type: "tick", Data: `{"sym":"ACME","price":12.35}`}
					if i == 0 {
						ev.CompactKey = "ACME"
					}
					evs = append(evs, ev)
				}
				as = append(as, store.Append{StreamID: h.id, Epoch: h.epoch, Events: evs, HeadSeq: h.head + 3, ResumeID: fmt.Sprint(h.head + 3), RetryMS: -1})
			}
			res, err := st.Commit(ctx, me, as, store.CommitOptions{MaxBacklog: 8, MaxBacklogBytes: 200, Wake: &store.WakePolicy{}})
			if err == nil && (len(res.Lost) > 0 || res.Wakeups == 0) {
				err = fmt.Errorf("the commit did not take: %+v", res)
			}
			return err
		}, []string{"streams_pkey", "events_pkey", "events_compact_key", "devices_pkey", "readers_device_id", "readers_stream_id"}},
		{"wake-up claim", func() error {
			claimed, err = st.ClaimWakeups(ctx, me, time.Now().Add(time.Minute), time.Minute, 100, time.Hour)
			if err == nil && len(claimed) == 0 {
				err = fmt.Errorf("no wake-up claimed")
			}
			return err
		}, []string{"wakeups_due", "devices_pkey", "wakeups_device_sent", "streams_device_id"}},
		{"wake-up finish", func() error {
			var rs []pushproxy.WakeupResult
			for _, w := range claimed {
				rs = append(rs, pushproxy.WakeupResult{ID: w.ID, Outcome: "sent"})
			}
			return st.FinishWakeups(ctx, me, time.Now(), rs)
		}, []string{"wakeups_pkey", "devices_pkey"}},
		{"next wake-up", func() error { _, _, err := st.NextWakeupDue(ctx); return err },
			[]string{"wakeups_due", "wakeups_sending"}},
		{"resume", func() error { _, err := st.Resume(ctx, hs[3].id, "5", true); return err },
			[]string{"streams_pkey", "events_pkey"}},
		{"page", func() error { _, err := st.EventsAfter(ctx, hs[3].id, 5, 1001); return err },
			[]string{"streams_pkey", "events_pkey"}},
		{"pages", func() error {
			_, err := st.EventsAfterMany(ctx, []store.PageRequest{{StreamID: hs[3].id, After: 5, Limit: 500}, {StreamID: readerStream, Limit: 500}})
			return err
		}, []string{"streams_pkey", "events_pkey"}},
		{"get stream", func() error { _, err := st.GetStream(ctx, hs[3].id); return err },
			[]string{"streams_pkey", "events_pkey"}},
		{"mark read", func() error { return st.MarkRead(ctx, hs[3].device, wake) },
			[]string{"devices_pkey", "wakeups_one_outstanding|wakeups_due"}},
		{"open reader", func() error {
			readerID, err = st.OpenReaderLimited(ctx, hs[3].id, hs[3].device, me, time.Minute, 5)
			return err
		}, []string{"readers_stream_id"}},
		{"device awake", func() error { _, err := st.DeviceAwake(ctx, hs[3].device); return err },
			[]string{"readers_device_id"}},
		{"close reader", func() error { return st.CloseReaderDelivered(ctx, readerID, hs[3].id, hs[3].head, wake) },
			[]string{"readers_pkey", "streams_pkey", "streams_device_id"}},
		{"stream marks", func() error { _, err := st.StreamMarks(ctx, []string{hs[3].id, readerStream}); return err },
			[]string{"streams_pkey"}},
		{"dashboard", func() error {
			tt, err := st.GetTotals(ctx)
			if err != nil {
				return err
			}
			_, err = st.ListStreams(ctx, store.StreamFilter{Sort: store.SortAge, Limit: 10, WithBacklog: true,
				IDs: append(tt.OldestBacklogs, hs[3].id, readerStream)})
			return err
		}, []string{"streams_pkey", "events_pkey"}},
		{"wake state", func() error { _, err := st.DeviceWakeState(ctx, readerDevice); return err },
			[]string{"devices_pkey", "wakeups_one_outstanding|wakeups_device"}},
		{"handoff", func() error {
			key := []byte("plans-api-key-hash")
			for i, dev := range []string{"token-8", "token-new"} { // an existing device, a new one
				_, _, err := st.CreateStream(ctx, store.NewStream{URL: "https://origin.example/plans", TokenHash: []byte("hash"),
					Push: &pushproxy.PushAddress{Platform: "fcm", Token: dev}, MaxPerDevice: 10, DeviceSecretHash: []byte(fmt.Sprint("secret", i)),
					APIKeyHash: key, MaxPerKey: 1000, LeaseOwner: me})
				if err != nil {
					return err
				}
			}
			return nil
		}, []string{"devices_platform_token_key", "streams_device_id"}},
		{"close", func() error { _, err := st.CloseStream(ctx, hs[2].id); return err },
			[]string{"streams_pkey", "events_pkey"}},
		{"fleet load", func() error { _, err := st.FleetLoad(ctx); return err }, nil},
		{"hand over", func() error { _, err := st.HandOver(ctx, me, []string{hs[1].id}); return err },
			[]string{"streams_pkey"}},
		{"release", func() error { return st.ReleaseStreams(ctx, me, []string{hs[0].id}) },
			[]string{"streams_pkey"}},
		{"reclaim", func() error {
			n, err := st.ReclaimAcked(ctx, 1000, 10000)
			if err == nil && n == 0 {
				err = fmt.Errorf("nothing reclaimed")
			}
			return err
		}, []string{"events_pkey"}},
	}
	for _, op := range ops {
		p.check(t, op.name, rec.record(t, op.name, op.run), op.uses, whole[op.name]...)
	}
}

// retentionPlans: every statement of every retention rule.
func retentionPlans(t *testing.T, ctx context.Context, st *store.Store, rec *recorder, p *planner) {
	f, ok, err := st.TakeLeadership(ctx, "leader", time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	// One instance is long gone, with the few streams the others did not claim yet (they
	// claim a dead instance's streams within a lease; this rule runs a lease later).
	if _, err := st.Pool().Exec(ctx, `
		UPDATE instances SET expires_at = now() - interval '1 hour' WHERE id = 'instance-3';
		UPDATE streams SET lease_owner = 'instance-0' WHERE lease_owner = 'instance-3' AND random() < 0.99;
		ANALYZE streams`); err != nil {
		t.Fatal(err)
	}
	var ended []string
	if err := pgx.BeginFunc(ctx, st.Pool(), func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id::text FROM streams WHERE state <> 'held' LIMIT 3`)
		ended, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Each rule runs once, its statements recorded, then explained with the same arguments.
	rules := []struct {
		name string
		run  func() error
	}{
		{"close idle", func() error { _, err := st.CloseIdleStreams(ctx, f, 7*24*time.Hour, 1000); return err }},
		{"fail dead", func() error { _, err := st.FailDeadDevices(ctx, f, time.Now(), 24*time.Hour, 1000); return err }},
		{"dead devices", func() error { _, err := st.DeleteDeadDevices(ctx, f, time.Now(), 24*time.Hour, 1000); return err }},
		{"trim wake-ups", func() error {
			_, err := st.TrimWakeups(ctx, f, time.Now().Add(-7*24*time.Hour), 1000)
			return err
		}},
		{"expired", func() error { _, err := st.ExpiredStreams(ctx, 7*24*time.Hour, 1000); return err }},
		{"events of", func() error { _, err := st.DeleteEventsOf(ctx, f, ended, 1000); return err }},
		{"delete streams", func() error { _, _, err := st.DeleteStreams(ctx, f, ended); return err }},
		{"gone instances", func() error { _, err := st.ReleaseGoneInstances(ctx, f, time.Minute, 1000); return err }},
		{"backlog age", func() error { _, _, err := st.TrimOldEvents(ctx, f, time.Hour, "", 1000); return err }},
	}
	for _, r := range rules {
		p.check(t, r.name, rec.record(t, r.name, r.run), nil)
	}
}

// recorder is a pgx tracer that keeps the statements it sees, batched ones included.
type recorder struct {
	mu    sync.Mutex
	on    bool
	stmts []recorded
}

type recorded struct {
	sql  string
	args []any
}

var (
	_ pgx.QueryTracer = (*recorder)(nil)
	_ pgx.BatchTracer = (*recorder)(nil)
)

func (r *recorder) add(sql string, args []any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on {
		r.stmts = append(r.stmts, recorded{sql, args})
	}
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(d.SQL, d.Args)
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *recorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (r *recorder) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.add(d.SQL, d.Args)
}

func (r *recorder) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// record returns the statements that run sends; it fails t if run fails or sends none.
func (r *recorder) record(t *testing.T, name string, run func() error) []recorded {
	t.Helper()
	r.start()
	err := run()
	stmts := r.take()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(stmts) == 0 {
		t.Fatalf("%s ran no statement", name)
	}
	return stmts
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stmts
	r.stmts, r.on = nil, false
	return s
}

func (r *recorder) start() {
	r.mu.Lock()
	r.on = true
	r.mu.Unlock()
}

// planner explains statements on a connection of its own.
type planner struct {
	conn *pgx.Conn
	// generic: the store's sessions may run generic plans, so those are checked too.
	generic bool
	// nested runs a call of a function of the store's (rolled back) and notices collects
	// the plans of the statements the function ran.
	nested  *pgx.Conn
	notices *[]string
}

// function is a recorded call of one of the store's functions, whose statements EXPLAIN of
// the call does not show.
var function = regexp.MustCompile(`^\s*SELECT pushproxy_\w+\(`)

// inside returns the plans of the statements that sql (a call of a function) runs.
func (p *planner) inside(ctx context.Context, sql string, args []any, generic bool) ([]planNode, error) {
	*p.notices = nil
	tx, err := p.nested.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	if generic { // PL/pgSQL plans its statements as the session's plan_cache_mode says
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
			return nil, err
		}
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return nil, err
	}
	var plans []planNode
	for _, n := range *p.notices {
		_, js, ok := strings.Cut(n, "plan:")
		var e struct {
			Query string   `json:"Query Text"`
			Plan  planNode `json:"Plan"`
		}
		if !ok || json.Unmarshal([]byte(js), &e) != nil {
			return nil, fmt.Errorf("not a plan: %q", n)
		}
		if strings.TrimSpace(e.Query) != strings.TrimSpace(sql) {
			plans = append(plans, e.Plan)
		}
	}
	return plans, nil
}

// planNode is a node of EXPLAIN (FORMAT JSON).
type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
	Cost     float64    `json:"Total Cost"`
	Plans    []planNode `json:"Plans"`
}

// walk calls fn for n and every node below it.
func (n planNode) walk(fn func(planNode)) {
	fn(n)
	for _, c := range n.Plans {
		c.walk(fn)
	}
}

// String is the plan in one line per node, indented: node type, relation, index.
func (n planNode) String() string {
	var b strings.Builder
	var write func(planNode, int)
	write = func(n planNode, depth int) {
		b.WriteString(strings.Repeat("  ", depth) + n.Type)
		if n.Relation != "" {
			b.WriteString(" on " + n.Relation)
		}
		if n.Index != "" {
			b.WriteString(" using " + n.Index)
		}
		b.WriteString("\n")
		for _, c := range n.Plans {
			write(c, depth+1)
		}
	}
	write(n, 1)
	return b.String()
}

// planned reports whether a recorded statement is one to explain: a query or a change of
// rows (not BEGIN, SET or the like).
// forcesGeneric matches a statement after which a transaction's statements run their generic
// plans.
var forcesGeneric = regexp.MustCompile(`(?i)(^|;)\s*SET\s+LOCAL\s+plan_cache_mode\s*=\s*force_generic_plan`)

func planned(sql string) bool {
	f := strings.Fields(sql)
	if len(f) == 0 {
		return false
	}
	switch strings.ToUpper(f[0]) {
	case "SELECT", "WITH", "INSERT", "UPDATE", "DELETE":
		return true
	}
	return false
}

// explain returns the plan of sql: the custom plan for args, or the generic plan.
func (p *planner) explain(ctx context.Context, sql string, args []any, generic bool) (planNode, error) {
	var out []struct {
		Plan planNode `json:"Plan"`
	}
	err := pgx.BeginFunc(ctx, p.conn, func(tx pgx.Tx) error {
		var raw []byte
		if !generic {
			if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+sql, args...).Scan(&raw); err != nil {
				return err
			}
			return json.Unmarshal(raw, &out)
		}
		// The plan of a prepared statement that Postgres no longer replans for each
		// execution's arguments: they do not matter, so NULLs stand in for them.
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "PREPARE plan_check AS "+sql); err != nil {
			return err
		}
		defer p.conn.Exec(ctx, `DEALLOCATE plan_check`)
		exec := "EXECUTE plan_check"
		if len(args) > 0 {
			exec += "(" + strings.TrimSuffix(strings.Repeat("NULL, ", len(args)), ", ") + ")"
		}
		if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+exec).Scan(&raw); err != nil {
			return err
		}
		return json.Unmarshal(raw, &out)
	})
	if err == nil && len(out) != 1 {
		err = fmt.Errorf("%d plans", len(out))
	}
	if err != nil {
		return planNode{}, err
	}
	return out[0].Plan, nil
}

// check explains each of stmts (custom and, if p.generic, generic plans) and fails t if one
// scans a big table sequentially (but those of scans, which must be scanned whole), or if the
// plans of all of them together do not use each of uses ("a|b": a or b).
func (p *planner) check(t *testing.T, name string, stmts []recorded, uses []string, scans ...string) {
	t.Helper()
	ctx := context.Background()
	kinds := []bool{false}
	if p.generic || slices.ContainsFunc(stmts, func(r recorded) bool { return forcesGeneric.MatchString(r.sql) }) {
		kinds = append(kinds, true) // (a transaction that plans its statements generically, as a commit does)
	}
	for _, generic := range kinds {
		kind := map[bool]string{false: "custom", true: "generic"}[generic]
		used := map[string]bool{}
		for _, s := range stmts {
			if !planned(s.sql) {
				continue
			}
			args := s.args
			if len(args) > 0 {
				if m, ok := args[0].(pgx.QueryExecMode); ok {
					args = args[1:]
					if generic && m != pgx.QueryExecModeCacheStatement && m != pgx.QueryExecModeCacheDescribe {
						continue // planned for each execution
					}
				}
			}
			plans := []planNode{}
			if function.MatchString(s.sql) {
				inside, err := p.inside(ctx, s.sql, args, generic)
				if err != nil || len(inside) == 0 {
					t.Fatalf("%s: the plans inside %s: %v %d", name, s.sql, err, len(inside))
				}
				plans = inside
			}
			plan, err := p.explain(ctx, s.sql, args, generic)
			if err != nil {
				t.Fatalf("%s: explain (%s): %v\n%s", name, kind, err, s.sql)
			}
			for i, plan := range append(plans, plan) {
				where := kind
				if i < len(plans) {
					where = "a statement inside, " + kind
				}
				plan.walk(func(n planNode) {
					if n.Index != "" {
						used[n.Index] = true
					}
					if n.Type == "Seq Scan" && slices.Contains(bigTables, n.Relation) && !slices.Contains(scans, n.Relation) {
						t.Errorf("%s (%s plan): a sequential scan of %s:\n%s\n%s", name, where, n.Relation, s.sql, plan)
					}
				})
				if plan.Cost >= jitAboveCost {
					t.Errorf("%s (%s plan): estimated at %.0f, Postgres compiles it (JIT) before running it:\n%s\n%s", name, where, plan.Cost, s.sql, plan)
				}
				t.Logf("%s (%s, cost %.0f):%s\n%s", name, where, plan.Cost, oneLine(s.sql), plan)
			}
		}
		for _, ix := range uses {
			if !slices.ContainsFunc(strings.Split(ix, "|"), func(ix string) bool { return used[ix] }) {
				t.Errorf("%s (%s plans): index %s not used", name, kind, ix)
			}
		}
	}
}

func oneLine(sql string) string {
	s := strings.Join(strings.Fields(sql), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return " " + s
}
