package store_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgfill"
	"github.com/pushproxy/pushproxy/store"
)

// pgDumpBin is the server's own pg_dump (the shared server and pglocal's are PostgreSQL 15).
const pgDumpBin = "/usr/lib/postgresql/15/bin/pg_dump"

// TestCredentialsAreErasedTheMomentAStreamEnds: every way a stream ends (the device takes
// it back, the origin ends it, it fails, its device's token died, its device is forgotten,
// nobody read it) erases its forwarded headers and its URL's userinfo and query at once; a
// pg_dump --data-only of the database then holds none of them, while it does hold those of
// a stream still held (the dump would show them).
func TestCredentialsAreErasedTheMomentAStreamEnds(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	var secrets []string
	mk := func(name string, push *pushproxy.PushAddress) (pushproxy.Stream, int64, string) {
		t.Helper()
		secret := "s3cret-" + name
		s, epoch, err := st.CreateStream(ctx, store.NewStream{
			URL:       "https://user-" + secret + ":pw@origin.test/events?token=q-" + secret + "#frag-" + secret,
			Headers:   map[string]string{"Authorization": "Bearer h-" + secret, "X-Other": "x-" + secret},
			TokenHash: []byte("hash"), Push: push, LeaseOwner: owner,
		})
		if err != nil {
			t.Fatal(err)
		}
		commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 2, seqID), HeadSeq: 2, ResumeID: "e2"})
		return s, epoch, secret
	}
	dev := func(token string) *pushproxy.PushAddress {
		return &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: token}
	}
	var ended []string

	s, _, sec := mk("device-close", nil)
	if _, err := st.CloseStream(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	for _, state := range []string{pushproxy.StateClosed, pushproxy.StateFailed} {
		s, epoch, sec := mk("origin-"+state, nil)
		commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, HeadSeq: 2, ResumeID: "e2", RetryMS: -1, State: state, StateReason: "origin said so"})
		ended, secrets = append(ended, s.ID), append(secrets, sec)
	}

	s, _, sec = mk("dead-device", dev("dead-token"))
	if _, err := st.Pool().Exec(ctx, `UPDATE devices SET dead_at = now() - interval '2 days', dead_reason = 'Unregistered' WHERE token = 'dead-token'`); err != nil {
		t.Fatal(err)
	}
	if n, err := st.FailDeadDevices(ctx, store.Fence{}, time.Now(), 24*time.Hour, 10); err != nil || n != 1 {
		t.Fatalf("failed %d streams of the dead device: %v", n, err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	s, _, sec = mk("forgotten-device", dev("forgotten-token"))
	if _, err := st.Pool().Exec(ctx, `UPDATE devices SET dead_at = now(), dead_reason = 'Unregistered' WHERE token = 'forgotten-token'`); err != nil {
		t.Fatal(err)
	}
	if err := st.ForgetDevice(ctx, s.DeviceID); err != nil {
		t.Fatal(err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	s, _, sec = mk("idle", nil)
	if _, err := st.Pool().Exec(ctx, `UPDATE streams SET read_at = now() - interval '8 days' WHERE id = $1`, s.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CloseIdleStreams(ctx, store.Fence{}, 7*24*time.Hour, 10); err != nil || n != 1 {
		t.Fatalf("closed %d idle streams: %v", n, err)
	}
	ended, secrets = append(ended, s.ID), append(secrets, sec)

	held, _, heldSecret := mk("still-held", nil)

	for _, id := range ended {
		got, err := st.GetStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == pushproxy.StateHeld || len(got.Headers) != 0 || got.URL != "https://origin.test/events" {
			t.Errorf("ended stream %s (%s): headers %v, url %q", id, got.StateReason, got.Headers, got.URL)
		}
	}
	if got, _ := st.GetStream(ctx, held.ID); len(got.Headers) != 2 || !strings.Contains(got.URL, "q-"+heldSecret) {
		t.Errorf("held stream lost its credentials: %v %q", got.Headers, got.URL)
	}

	out, err := exec.CommandContext(ctx, pgDumpBin, "--data-only", "--dbname", b.url).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	dump := string(out)
	if !strings.Contains(dump, "h-"+heldSecret) || !strings.Contains(dump, "q-"+heldSecret) {
		t.Fatalf("the dump does not hold the held stream's header and query: it could not show an ended one's either")
	}
	for _, sec := range secrets {
		if strings.Contains(dump, sec) {
			t.Errorf("pg_dump --data-only holds %q of a stream that ended", sec)
		}
	}
}

// TestBacklogIsTrimmedAtMaxBytes: past the byte bound the oldest events go, exactly as many
// as needed, and the next reader gets the gap signal.
func TestBacklogIsTrimmedAtMaxBytesInCommits(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	ev := func(seq int64) pushproxy.Event {
		return pushproxy.Event{Seq: seq, LastEventID: fmt.Sprintf("%03d", seq), Type: "t", Data: strings.Repeat("x", 96)}
	}
	// Every event is 3 + 1 + 96 = 100 bytes; the bound is 1,000 bytes: 10 events.
	opts := store.CommitOptions{MaxBacklogBytes: 1000}
	var evs []pushproxy.Event
	for i := int64(1); i <= 10; i++ {
		evs = append(evs, ev(i))
	}
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: 10, ResumeID: "010", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	got, _ := st.GetStream(ctx, s.ID)
	if got.FloorSeq != 0 || got.HeadSeq != 10 {
		t.Fatalf("at the bound exactly: floor %d head %d, want nothing trimmed", got.FloorSeq, got.HeadSeq)
	}
	cur, err := st.Resume(ctx, s.ID, "", false)
	if err != nil || cur.Gap {
		t.Fatalf("resume at the bound: %+v %v", cur, err)
	}
	// Three more: 1,300 bytes, so the three oldest go.
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: []pushproxy.Event{ev(11), ev(12), ev(13)}, HeadSeq: 13, ResumeID: "013", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	got, _ = st.GetStream(ctx, s.ID)
	evsLeft, _ := st.EventsAfter(ctx, s.ID, 0, 100)
	var bytes int64
	if err := st.Pool().QueryRow(ctx, `SELECT backlog_bytes FROM streams WHERE id = $1`, s.ID).Scan(&bytes); err != nil {
		t.Fatal(err)
	}
	if got.FloorSeq != 3 || len(evsLeft) != 10 || evsLeft[0].Seq != 4 || bytes != 1000 {
		t.Fatalf("floor %d, %d events left (first %v), %d bytes; want floor 3, events 4..13, 1000 bytes", got.FloorSeq, len(evsLeft), evsLeft[0].Seq, bytes)
	}
	cur, err = st.Resume(ctx, s.ID, "", false)
	if err != nil || !cur.Gap || cur.After != 3 {
		t.Fatalf("resume after the trim: %+v %v, want a gap after 3", cur, err)
	}
}

// TestMaintenanceLeaseIsExclusiveAndFenced: one leader at a time; a renewal keeps the epoch;
// a lapsed lease is taken with a new epoch, and the statements of the old one change nothing.
func TestMaintenanceLeaseIsExclusiveAndFenced(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	fa, ok, err := st.TakeLeadership(ctx, "a", time.Minute)
	if err != nil || !ok || fa.Epoch != 1 {
		t.Fatalf("a takes: %+v %v %v", fa, ok, err)
	}
	if _, ok, err := st.TakeLeadership(ctx, "b", time.Minute); err != nil || ok {
		t.Fatalf("b took a fresh lease: %v %v", ok, err)
	}
	if f, ok, _ := st.TakeLeadership(ctx, "a", time.Minute); !ok || f != fa {
		t.Fatalf("a renews: %+v %v, want %+v", f, ok, fa)
	}
	// The lease lapses (a froze): b takes it with a new epoch.
	if _, err := st.Pool().Exec(ctx, `UPDATE maintenance_leader SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	fb, ok, err := st.TakeLeadership(ctx, "b", time.Minute)
	if err != nil || !ok || fb.Epoch != 2 {
		t.Fatalf("b takes the lapsed lease: %+v %v %v", fb, ok, err)
	}
	if id, _ := st.MaintenanceLeader(ctx); id != "b" {
		t.Fatalf("leader %q", id)
	}
	// a wakes and runs a rule under its old fence: nothing happens.
	if _, err := st.Pool().Exec(ctx, `INSERT INTO devices (platform, token) VALUES ('fcm', 'x')`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `INSERT INTO wakeups (device_id, state, created_at, due_at, finished_at)
		SELECT id, 'sent', now(), now(), now() - interval '30 days' FROM devices`); err != nil {
		t.Fatal(err)
	}
	if n, err := st.TrimWakeups(ctx, fa, time.Now(), 10); err != nil || n != 0 {
		t.Fatalf("the old leader trimmed %d wake-ups: %v", n, err)
	}
	if err := st.RefreshGauges(ctx, fa); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := st.GetGauges(ctx); ok {
		t.Fatal("the old leader wrote the gauges")
	}
	if n, err := st.TrimWakeups(ctx, fb, time.Now(), 10); err != nil || n != 1 {
		t.Fatalf("the leader trimmed %d wake-ups: %v", n, err)
	}
	// Resigning hands over at once.
	if err := st.ResignLeadership(ctx, fb); err != nil {
		t.Fatal(err)
	}
	if f, ok, _ := st.TakeLeadership(ctx, "a", time.Minute); !ok || f.Epoch != 3 {
		t.Fatalf("a after b resigned: %+v %v", f, ok)
	}
}

// recorder is a pgx tracer that keeps the statements it sees.
type recorder struct {
	mu    sync.Mutex
	on    bool
	stmts []recorded
}

type recorded struct {
	sql  string
	args []any
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on && !strings.HasPrefix(strings.TrimSpace(d.SQL), "begin") && !strings.HasPrefix(d.SQL, "commit") {
		r.stmts = append(r.stmts, recorded{d.SQL, d.Args})
	}
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

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

// TestRetentionPlansUseIndexes: at 100,000 streams and a million events, every statement
// of every retention rule finds its rows by index: no sequential scan of events or streams.
func TestRetentionPlansUseIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a database with 100,000 streams and a million events")
	}
	t.Parallel()
	url := migratedDatabase(t)
	rec := &recorder{}
	st := open(t, url, &store.Options{Tracer: rec})
	ctx := context.Background()
	if err := pgfill.Fill(ctx, st.Pool(), pgfill.Sizes{Streams: 100000, StreamsPerDevice: 2, Ended: 10, EventsPerStream: 11, WakeupsPerDevice: 2}); err != nil {
		t.Fatal(err)
	}
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
	rules := map[string]func() error{
		"close idle": func() error { _, err := st.CloseIdleStreams(ctx, f, 7*24*time.Hour, 1000); return err },
		"fail dead":  func() error { _, err := st.FailDeadDevices(ctx, f, time.Now(), 24*time.Hour, 1000); return err },
		"dead devices": func() error {
			_, err := st.DeleteDeadDevices(ctx, f, time.Now(), 24*time.Hour, 1000)
			return err
		},
		"trim wake-ups": func() error { _, err := st.TrimWakeups(ctx, f, time.Now().Add(-7*24*time.Hour), 1000); return err },
		"expired":       func() error { _, err := st.ExpiredStreams(ctx, 7*24*time.Hour, 1000); return err },
		"events of":     func() error { _, err := st.DeleteEventsOf(ctx, f, ended, 1000); return err },
		"delete streams": func() error {
			_, _, err := st.DeleteStreams(ctx, f, ended)
			return err
		},
		"gone instances": func() error { _, err := st.ReleaseGoneInstances(ctx, f, time.Minute, 1000); return err },
		"backlog age":    func() error { _, _, err := st.TrimOldEvents(ctx, f, time.Hour, "", 1000); return err },
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for name, run := range rules {
		rec.start()
		if err := run(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		stmts := rec.take()
		if len(stmts) == 0 {
			t.Fatalf("%s ran no statement", name)
		}
		for _, s := range stmts {
			if !strings.Contains(s.sql, "streams") && !strings.Contains(s.sql, "events") {
				continue
			}
			var plan string
			if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_custom_plan`); err != nil {
					return err
				}
				rows, err := tx.Query(ctx, "EXPLAIN "+s.sql, s.args...)
				if err != nil {
					return err
				}
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				plan = strings.Join(lines, "\n")
				return err
			}); err != nil {
				t.Fatalf("%s: explain: %v\n%s", name, err, s.sql)
			}
			for _, table := range []string{"events", "streams"} {
				if strings.Contains(plan, "Seq Scan on "+table) {
					t.Errorf("%s: a sequential scan of %s:\n%s\n%s", name, table, s.sql, plan)
				}
			}
			t.Logf("%s:\n%s", name, plan)
		}
	}
}
