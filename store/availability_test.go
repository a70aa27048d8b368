package store_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/store"
)

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		<-tick.C
	}
}

func migratedDatabase(t testing.TB) string {
	t.Helper()
	url := pgtest.NewDatabase(t)
	if err := store.Migrate(context.Background(), url, nil); err != nil {
		t.Fatal(err)
	}
	return url
}

func open(t testing.TB, url string, opts *store.Options) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// freezeInCommit opens a transaction on conn that locks the stream's row as a commit does,
// and leaves it open: the session of an instance stopped in the middle of a commit.
func freezeInCommit(t *testing.T, ctx context.Context, begin func(context.Context) (pgx.Tx, error), streamID string) pgx.Tx {
	t.Helper()
	tx, err := begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE streams SET head_seq = head_seq, updated_at = now() WHERE id = $1`, streamID); err != nil {
		t.Fatal(err)
	}
	return tx
}

func TestFrozenInstanceLosesItsLocksAndItsStreams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDatabase(t)
	const ttl = time.Second
	frozen := open(t, url, &store.Options{LeaseTTL: ttl, IdleInTransactionTimeout: 300 * time.Millisecond})
	other := open(t, url, nil)
	renewed := time.Now()
	if err := frozen.RenewInstance(ctx, "frozen", ttl); err != nil {
		t.Fatal(err)
	}
	s, epoch, err := frozen.CreateStream(ctx, store.NewStream{URL: "http://origin.test/", TokenHash: []byte("h"), LeaseOwner: "frozen"})
	if err != nil {
		t.Fatal(err)
	}
	tx := freezeInCommit(t, ctx, frozen.Pool().Begin, s.ID)
	defer tx.Rollback(ctx)

	// The other instance claims the stream once the frozen session is cut (and its locks
	// gone) and the frozen instance's lease has lapsed: not for as long as the freeze lasts.
	var claims []store.Claim
	waitFor(t, 10*time.Second, "the frozen instance's stream was never claimed", func() bool {
		claims, err = other.ClaimStreams(ctx, "taker", time.Minute, 10)
		if err != nil {
			t.Fatal(err)
		}
		return len(claims) > 0
	})
	took := time.Since(renewed)
	if took < ttl {
		t.Fatalf("claimed %s after the lease was renewed, before it (%s) lapsed", took, ttl)
	}
	t.Logf("the frozen instance's stream was claimed %s after its last renewal (lease %s)", took, ttl)
	if len(claims) != 1 || claims[0].Stream.ID != s.ID || claims[0].Epoch != epoch+1 {
		t.Fatalf("claims = %+v, want %s at epoch %d", claims, s.ID, epoch+1)
	}
	// The frozen instance, when it wakes, finds its session gone: nothing it had is committed.
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("the frozen transaction committed after its session should have been ended")
	}
}

// TestAFrozenCopyIsEndedWithItsInstancesLease: an instance frozen while its commit copies
// events (a commit of more than 256) holds its streams' rows: a session waiting for a COPY's
// data is not idle in its transaction, and no statement timeout ends it. Once its lease
// lapsed, EndStuckSessions (the maintenance leader's) ends that session by its name, the
// stream is claimed by another instance, and nothing of the frozen commit is stored.
func TestAFrozenCopyIsEndedWithItsInstancesLease(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := migratedDatabase(t)
	freezer := &copyFreezer{frozen: make(chan struct{})}
	frozenURL := pgtest.Intercept(t, url, freezer.serve)
	const ttl = time.Second
	frozen := open(t, frozenURL, &store.Options{InstanceID: "frozen", LeaseTTL: ttl, IdleInTransactionTimeout: 300 * time.Millisecond, StatementTimeout: 300 * time.Millisecond})
	other := open(t, url, &store.Options{InstanceID: "other"})
	// A lease that stays fresh until the test makes it lapse.
	if err := frozen.RenewInstance(ctx, "frozen", time.Minute); err != nil {
		t.Fatal(err)
	}
	s, epoch, err := frozen.CreateStream(ctx, store.NewStream{URL: "http://origin.test/", TokenHash: []byte("h"), LeaseOwner: "frozen"})
	if err != nil {
		t.Fatal(err)
	}
	freezer.armed.Store(true)
	committed := make(chan error, 1)
	go func() {
		_, err := frozen.Commit(ctx, "frozen", []store.Append{{StreamID: s.ID, Epoch: epoch, Events: events(1, 300, seqID), HeadSeq: 300, RetryMS: -1}}, store.CommitOptions{})
		committed <- err
	}()
	select {
	case <-freezer.frozen:
	case err := <-committed:
		t.Fatalf("the commit of 300 events ended without copying them: %v", err)
	case <-ctx.Done():
		t.Fatal("the commit never sent a COPY's data")
	}
	copying := func() (n int) {
		t.Helper()
		err := other.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND xact_start IS NOT NULL AND state = 'active' AND query ILIKE 'copy %'`, store.SessionName("frozen")).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 10*time.Second, "the frozen instance's session never waited in its COPY", func() bool { return copying() == 1 })
	if n, err := other.EndStuckSessions(ctx, "other", time.Minute); err != nil || n != 0 {
		t.Fatalf("ended %d sessions (%v) of an instance whose lease is fresh", n, err)
	}
	// What the session's timeouts would have done, they would have done by now: they do not
	// apply to a session waiting for a COPY's data.
	time.Sleep(1 * time.Second)
	if n := copying(); n != 1 {
		t.Fatalf("sessions named %q waiting in a COPY after 3 times their timeouts: %d, want the frozen commit's", store.SessionName("frozen"), n)
	}
	if _, err := other.Pool().Exec(ctx, `UPDATE instances SET expires_at = now() - interval '1 second' WHERE id = 'frozen'`); err != nil {
		t.Fatal(err)
	}
	// Its lease lapsed, but the frozen COPY holds the stream's row.
	if claims, err := other.ClaimStreams(ctx, "other", time.Minute, 10); err != nil || len(claims) != 0 {
		t.Fatalf("claims while the frozen COPY holds the row: %+v, %v", claims, err)
	}
	if n, err := other.EndStuckSessions(ctx, "other", time.Minute); err != nil || n != 1 {
		t.Fatalf("ended %d sessions (%v), want the frozen commit's", n, err)
	}
	var claims []store.Claim
	waitFor(t, 10*time.Second, "the frozen instance's stream was never claimed", func() bool {
		claims, err = other.ClaimStreams(ctx, "other", time.Minute, 10)
		if err != nil {
			t.Fatal(err)
		}
		return len(claims) > 0
	})
	if len(claims) != 1 || claims[0].Stream.ID != s.ID || claims[0].Epoch != epoch+1 || claims[0].Stream.HeadSeq != 0 {
		t.Fatalf("claims = %+v, want %s at epoch %d with nothing committed", claims, s.ID, epoch+1)
	}
	if err := <-committed; err == nil {
		t.Fatal("the frozen commit succeeded after its session was ended")
	}
	var stored int
	if err := other.Pool().QueryRow(ctx, `SELECT count(*) FROM events WHERE stream_id = $1`, s.ID).Scan(&stored); err != nil || stored != 0 {
		t.Fatalf("%d events of the frozen commit stored (%v)", stored, err)
	}
}

// copyFreezer is a TCP proxy between a store and Postgres that, once armed, stops passing on
// what the client sends at the first data of a COPY (CopyData; pgx sends it right after the
// COPY statement, without waiting for the server's CopyInResponse): the session of an
// instance frozen in the middle of a commit that copies its events, with the server
// waiting for the data. It passes nothing more on that connection until the server ends it.
type copyFreezer struct {
	armed  atomic.Bool
	frozen chan struct{} // closed once a session froze
	once   sync.Once
}

func (f *copyFreezer) serve(client, server net.Conn) {
	done := make(chan struct{})
	go func() { // the server's answers, to the client
		defer close(done)
		defer client.Close()
		io.Copy(client, server)
	}()
	typed := false // the start-up message has no type byte
	for {
		m, err := pgtest.ReadMessage(client, typed)
		if err != nil {
			return
		}
		typed = true
		if m[0] == 'd' && f.armed.CompareAndSwap(true, false) {
			f.once.Do(func() { close(f.frozen) })
			<-done // until the server ends the session
			return
		}
		if _, err := server.Write(m); err != nil {
			return
		}
	}
}

func TestRequestsOnAFrozenStreamAnswerUnavailableAtOnce(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := migratedDatabase(t)
	const lockTimeout = 200 * time.Millisecond
	st := open(t, url, &store.Options{LockTimeout: lockTimeout})
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	s, _ := newStream(t, st, &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: "tok"})
	if _, err := st.Pool().Exec(ctx, `UPDATE devices SET dead_at = now(), dead_reason = 'test'`); err != nil {
		t.Fatal(err)
	}
	// The frozen instance's session, with no timeout of its own: the freeze lasts.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx := freezeInCommit(t, ctx, conn.Begin, s.ID)

	requests := []struct {
		name string
		do   func(context.Context) error
	}{
		{"acknowledging read", func(ctx context.Context) error { _, err := st.Resume(ctx, s.ID, "anything", true); return err }},
		{"close", func(ctx context.Context) error { _, err := st.CloseStream(ctx, s.ID); return err }},
		{"forget device", func(ctx context.Context) error { return st.ForgetDevice(ctx, s.DeviceID) }},
	}
	for _, r := range requests {
		start := time.Now()
		err := r.do(ctx)
		took := time.Since(start)
		var pe *pgconn.PgError
		if pushproxy.ErrorCode(err) != pushproxy.EUNAVAILABLE || !errors.As(err, &pe) || pe.Code != "55P03" {
			t.Fatalf("%s during the freeze: %v, want unavailable from the lock timeout", r.name, err)
		}
		if took > lockTimeout+2*time.Second {
			t.Fatalf("%s took %s, with a lock timeout of %s", r.name, took, lockTimeout)
		}
		t.Logf("%s during the freeze: unavailable after %s", r.name, took)
		if msg := pushproxy.ErrorMessage(err); !strings.Contains(msg, "retry") {
			t.Errorf("%s: message %q does not say to retry", r.name, msg)
		}
	}
	// A read takes no lock: it answers during the freeze.
	if _, err := st.GetStream(ctx, s.ID); err != nil {
		t.Fatalf("get stream during the freeze: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range requests[:2] {
		if err := r.do(ctx); err != nil {
			t.Fatalf("%s after the freeze: %v", r.name, err)
		}
	}
}

func TestSessionTimeoutsStayBelowTheLease(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	ctx := context.Background()
	st := open(t, url, &store.Options{LeaseTTL: 3 * time.Second})
	var stmt, idle string
	if err := st.Pool().QueryRow(ctx, `SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')`).Scan(&stmt, &idle); err != nil {
		t.Fatal(err)
	}
	if stmt != "1s" || idle != "1s" {
		t.Fatalf("statement_timeout %s, idle_in_transaction_session_timeout %s; want a third of the lease, 1s", stmt, idle)
	}
	for _, o := range []store.Options{
		{LeaseTTL: time.Second, StatementTimeout: time.Second},
		{LeaseTTL: time.Second, IdleInTransactionTimeout: 2 * time.Second},
		{LockTimeout: -time.Second},
		{StatementTimeout: -time.Second},
	} {
		if st, err := store.Open(ctx, url, &o); err == nil {
			st.Close()
			t.Errorf("Open(%+v) accepted timeouts not below the lease", o)
		}
	}
}

func TestPoolExhaustionIsUnavailable(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	st := open(t, url, &store.Options{MaxConns: 1})
	ctx := context.Background()
	c, err := st.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = st.GetStream(tctx, "00000000-0000-0000-0000-000000000000")
	if pushproxy.ErrorCode(err) != pushproxy.EUNAVAILABLE {
		t.Fatalf("get stream with the pool exhausted: %v, want unavailable", err)
	}
}

func TestConnectedFollowsTheHoldersLease(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, HeadSeq: 0, RetryMS: -1, Connected: store.ConnUp, UpstreamStatus: 200, Error: "the origin closed the stream"})

	check := func(want bool) {
		t.Helper()
		got, err := st.GetStream(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		list, err := st.ListStreams(ctx, store.StreamFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.RefreshGauges(ctx, store.Fence{}); err != nil {
			t.Fatal(err)
		}
		totals, err := st.GetTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stats, _, err := st.GetGauges(ctx)
		if err != nil {
			t.Fatal(err)
		}
		origins, err := st.FailingOrigins(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(0)
		if want {
			n = 1
		}
		if got.Connected != want || len(list) != 1 || list[0].Upstream.Connected != want ||
			totals.Connected != n || stats.Connected != n || (len(origins) == 1) == want || (len(totals.FailingOrigins) == 1) == want {
			t.Fatalf("want connected %v: stream %v, listing %+v, totals %d, gauges %d, failing origins %+v",
				want, got.Connected, list, totals.Connected, stats.Connected, origins)
		}
	}
	check(true)
	// The holder dies (kill -9): its lease lapses, its last word was "connected".
	if _, err := st.Pool().Exec(ctx, `UPDATE instances SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	check(false)
	// It comes back and renews before anyone claimed the stream.
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	check(true)
}

// TestUnreachableDatabaseIsUnavailable stops a cluster of its own under a store, checks that
// every kind of call reports pushproxy.EUNAVAILABLE, starts the cluster again and checks
// that the same store recovers by itself.
func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops a cluster of its own")
	}
	t.Parallel()
	ctx := context.Background()
	pg := pgtest.NewCluster(t)
	url := pg.NewDatabase("pushproxy")
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st := open(t, url, &store.Options{MaxConns: 4})
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	push := &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: "tok"}
	s, epoch := newStream(t, st, push)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 2, seqID), HeadSeq: 2, ResumeID: "e2", RetryMS: -1})

	calls := []struct {
		name string
		do   func(context.Context) error
	}{
		{"ping", st.Ping},
		{"handoff", func(ctx context.Context) error {
			_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/", TokenHash: []byte("h"), Push: push, LeaseOwner: owner})
			return err
		}},
		{"get stream", func(ctx context.Context) error { _, err := st.GetStream(ctx, s.ID); return err }},
		{"resume", func(ctx context.Context) error { _, err := st.Resume(ctx, s.ID, "e1", true); return err }},
		{"events", func(ctx context.Context) error { _, err := st.EventsAfter(ctx, s.ID, 0, 10); return err }},
		{"open reader", func(ctx context.Context) error {
			_, err := st.OpenReader(ctx, s.ID, s.DeviceID, owner, time.Minute)
			return err
		}},
		{"list streams", func(ctx context.Context) error { _, err := st.ListStreams(ctx, store.StreamFilter{}); return err }},
		{"totals", func(ctx context.Context) error { _, err := st.GetTotals(ctx); return err }},
		{"claim", func(ctx context.Context) error { _, err := st.ClaimStreams(ctx, owner, time.Minute, 10); return err }},
		{"renew", func(ctx context.Context) error { _, err := st.RenewLeases(ctx, owner, time.Minute); return err }},
		{"commit", func(ctx context.Context) error {
			_, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, HeadSeq: 2, ResumeID: "e2", RetryMS: -1}}, store.CommitOptions{})
			return err
		}},
		{"wake state", func(ctx context.Context) error { _, err := st.DeviceWakeState(ctx, s.DeviceID); return err }},
		{"schedule wake-up", func(ctx context.Context) error {
			_, err := st.ScheduleWakeup(ctx, s.DeviceID, &store.WakePolicy{})
			return err
		}},
		{"listener", func(ctx context.Context) error {
			l := store.NewListener(url, store.EventsChannel, nil, func(string) {}, func() {})
			err := l.Start(ctx)
			if err == nil {
				l.Stop()
			}
			return err
		}},
		{"close", func(ctx context.Context) error { _, err := st.CloseStream(ctx, s.ID); return err }},
	}

	pg.Stop()
	// Twice: first on the pool's connections that the shutdown ended, then on new ones
	// that the closed port refuses.
	for round := range 2 {
		for _, c := range calls {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := c.do(cctx)
			cancel()
			if code := pushproxy.ErrorCode(err); code != pushproxy.EUNAVAILABLE {
				t.Errorf("round %d, %s with the database down: code %q (%v), want unavailable", round, c.name, code, err)
			}
			if msg := pushproxy.ErrorMessage(err); strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, strconv.Itoa(pg.Port())) {
				t.Errorf("%s: the message shown to clients names the database: %q", c.name, msg)
			}
		}
	}

	pg.Start()
	// The same store recovers by itself: no call fails once the database answers.
	back := time.Now()
	waitFor(t, 5*time.Second, "the store did not reconnect", func() bool { return st.Ping(ctx) == nil })
	t.Logf("the store answered %s after the database accepted connections again", time.Since(back))
	for _, c := range calls {
		if err := c.do(ctx); err != nil {
			t.Errorf("%s after the database came back: %v", c.name, err)
		}
	}
}

// TestSessionNamesAreWhatPostgresKeeps: an instance's session name is "pushproxy <id>" when
// Postgres keeps that as it is (63 bytes of printable ASCII at most); other ids get names
// of that kind too, distinct per id.
func TestSessionNamesAreWhatPostgresKeeps(t *testing.T) {
	long := strings.Repeat("h", 60)
	ids := []string{"host-1234-abcd", long, long + "x", "hôte-1", "tab\tid", ""}
	seen := map[string]string{}
	for _, id := range ids {
		name := store.SessionName(id)
		if len(name) > 63 || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r >= 0x7f }) {
			t.Errorf("SessionName(%q) = %q: Postgres would not keep it as it is", id, name)
		}
		if other, ok := seen[name]; ok {
			t.Errorf("ids %q and %q are both named %q", id, other, name)
		}
		seen[name] = id
	}
	if got := store.SessionName("host-1234-abcd"); got != "pushproxy host-1234-abcd" {
		t.Errorf("SessionName of a plain id = %q", got)
	}
}

// TestSessionsAreNamedAfterTheirInstance: the pool's sessions and the listener's carry the
// instance's session name, so the maintenance leader can find them; a name the URL gives
// is kept.
func TestSessionsAreNamedAfterTheirInstance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDatabase(t)
	st := open(t, url, &store.Options{InstanceID: "named"})
	l := store.NewListener(url, store.EventsChannel, nil, func(string) {}, func() {})
	l.SessionOf("named")
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	given := open(t, url+"&application_name=mine", &store.Options{InstanceID: "given"})
	if err := given.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	count := func(name string) (n int) {
		t.Helper()
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(store.SessionName("named")); n < 2 {
		t.Fatalf("%d sessions named %q, want the pool's and the listener's", n, store.SessionName("named"))
	}
	if count("mine") != 1 || count(store.SessionName("given")) != 0 {
		t.Fatal("the URL's application_name was not kept")
	}
}
