package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/migrations"
	"github.com/pushproxy/pushproxy/store"
)

func secretHash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// TestFirstHandoffOfADeviceWinsOnce: handoffs racing to create one device (each bringing a
// secret of its own, none presenting one) make one device with one secret; every other is
// refused as needing that secret, and the device's attributes are the winner's.
func TestFirstHandoffOfADeviceWinsOnce(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	const n = 8
	var (
		wg      sync.WaitGroup
		errs    = make([]error, n)
		streams = make([]pushproxy.Stream, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			push := &pushproxy.PushAddress{Platform: "apns", Token: "ab12", Topic: "topic-" + itoa(int64(i)), Environment: "production"}
			streams[i], _, errs[i] = st.CreateStream(ctx, store.NewStream{
				URL: "http://o.test/", TokenHash: []byte("h"), Push: push, DeviceSecretHash: secretHash("secret-" + itoa(int64(i))),
			})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch code := pushproxy.ErrorCode(err); code {
		case "":
			if winner >= 0 {
				t.Fatalf("handoffs %d and %d both created the device", winner, i)
			}
			winner = i
		case pushproxy.EDEVICESECRETREQUIRED:
		default:
			t.Fatalf("handoff %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no handoff created the device")
	}
	var topic string
	var hash []byte
	if err := st.Pool().QueryRow(ctx, `SELECT topic, secret_hash FROM devices WHERE token = 'ab12'`).Scan(&topic, &hash); err != nil {
		t.Fatal(err)
	}
	if topic != "topic-"+itoa(int64(winner)) || string(hash) != string(secretHash("secret-"+itoa(int64(winner)))) {
		t.Fatalf("device topic %q, not the winner's (%d)", topic, winner)
	}
	// The winner's secret opens it; a loser's does not.
	push := &pushproxy.PushAddress{Platform: "apns", Token: "ab12", Topic: topic, Environment: "production"}
	_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push,
		DeviceSecretHash: secretHash("secret-" + itoa(int64((winner+1)%n))), DeviceSecretGiven: true})
	if pushproxy.ErrorCode(err) != pushproxy.EDEVICESECRETMISMATCH {
		t.Fatalf("a loser's secret: %v", err)
	}
	s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push,
		DeviceSecretHash: secretHash("secret-" + itoa(int64(winner))), DeviceSecretGiven: true})
	if err != nil || s.DeviceID != streams[winner].DeviceID {
		t.Fatalf("the winner's secret: %v (device %s, want %s)", err, s.DeviceID, streams[winner].DeviceID)
	}
}

// TestStreamsPerKeyAreBounded: concurrent handoffs under one API key never hold more than
// the bound; another key and keyless handoffs are not counted.
func TestStreamsPerKeyAreBounded(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	// Bounds below, at and above the key's 16 slots: the slots' shares add up to the bound
	// however many handoffs race.
	for _, c := range []struct{ bound, racing int }{{3, 10}, {16, 40}, {37, 80}} {
		key, other := secretHash(fmt.Sprint("key-", c.bound)), secretHash(fmt.Sprint("other-", c.bound))
		if ok := raceHandoffs(t, st, key, c.bound, c.racing); ok != c.bound {
			t.Fatalf("%d streams held under a key bounded to %d (%d handoffs raced)", ok, c.bound, c.racing)
		}
		for _, k := range [][]byte{other, nil} {
			if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: k, MaxPerKey: c.bound}); err != nil {
				t.Fatalf("another key's handoff: %v", err)
			}
		}
	}
}

// setupWithConn is setup with a connection of the test's own to its database.
func setupWithConn(t *testing.T) (*store.Store, *pgx.Conn) {
	t.Helper()
	st, b := setup(t)
	conn, err := pgx.Connect(context.Background(), b.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return st, conn
}

// keyCount returns a key's count (its slots in api_key_streams) and the streams it actually
// holds.
func keyCount(t *testing.T, ctx context.Context, conn *pgx.Conn, key []byte) (counted, held int) {
	t.Helper()
	err := conn.QueryRow(ctx, `
		SELECT coalesce((SELECT sum(held) FROM api_key_streams WHERE key_hash = $1), 0),
			(SELECT count(*) FROM streams WHERE api_key_hash = $1 AND state = 'held')`, key).Scan(&counted, &held)
	if err != nil {
		t.Fatal(err)
	}
	return counted, held
}

// TestKeyQuotaUnderChurn: handoffs and closes racing under one key never hold more streams
// than the bound, every one of them gets a place eventually, and the key's counter ends
// equal to the streams it holds.
func TestKeyQuotaUnderChurn(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	key := secretHash("churn")
	const bound, workers, rounds = 3, 6, 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		placed  int
		maxSeen int
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			giveUp := time.Now().Add(30 * time.Second) // the places never freed: fail, not hang
			for done := 0; done < rounds; {
				if time.Now().After(giveUp) {
					t.Errorf("%d of %d handoffs placed in 30s", done, rounds)
					return
				}
				s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound})
				switch pushproxy.ErrorCode(err) {
				case pushproxy.EKEYLIMIT:
					continue
				case "":
				default:
					t.Errorf("handoff: %v", err)
					return
				}
				var n int
				mu.Lock()
				err = conn.QueryRow(ctx, `SELECT count(*) FROM streams WHERE api_key_hash = $1 AND state = 'held'`, key).Scan(&n)
				placed++
				maxSeen = max(maxSeen, n)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := st.CloseStream(ctx, s.ID); err != nil {
					t.Error(err)
					return
				}
				done++
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if maxSeen > bound || placed != workers*rounds {
		t.Fatalf("%d handoffs placed (want %d), at most %d streams held at once under a bound of %d", placed, workers*rounds, maxSeen, bound)
	}
	if counted, held := keyCount(t, ctx, conn, key); counted != 0 || held != 0 {
		t.Fatalf("counter %d, held %d after every stream was closed", counted, held)
	}
}

// TestKeyQuotaIsFreedWhenStreamsStopBeingHeld: a stream closed, failed (by any path: here
// an UPDATE as the maintenance sweeps make) or deleted while held gives its place back; a
// held stream inserted by older code (which knows nothing of the counter) is counted.
func TestKeyQuotaIsFreedWhenStreamsStopBeingHeld(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	key := secretHash("freed")
	handoff := func() (pushproxy.Stream, error) {
		s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 2})
		return s, err
	}
	full := func(how string) {
		t.Helper()
		if _, err := handoff(); pushproxy.ErrorCode(err) != pushproxy.EKEYLIMIT {
			t.Fatalf("%s: handoff over the bound: %v, want %s", how, err, pushproxy.EKEYLIMIT)
		}
	}
	a, err := handoff()
	if err != nil {
		t.Fatal(err)
	}
	b2, err := handoff()
	if err != nil {
		t.Fatal(err)
	}
	full("two held")
	if _, err := st.CloseStream(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	c, err := handoff()
	if err != nil {
		t.Fatalf("after a close: %v", err)
	}
	full("closed one, handed off one")
	if _, err := conn.Exec(ctx, `UPDATE streams SET state = 'failed', state_reason = 'test', closed_at = now() WHERE id = $1`, b2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := handoff(); err != nil {
		t.Fatalf("after a failure: %v", err)
	}
	full("failed one, handed off one")
	if _, err := conn.Exec(ctx, `DELETE FROM streams WHERE id = $1`, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := handoff(); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	// Older code inserts without reserving: the trigger counts its stream.
	if _, err := conn.Exec(ctx, `INSERT INTO streams (url, headers, token_hash, api_key_hash) VALUES ('http://o.test/', '{}', 'h', $1)`, key); err != nil {
		t.Fatal(err)
	}
	if counted, held := keyCount(t, ctx, conn, key); counted != 3 || held != 3 {
		t.Fatalf("counter %d, held %d; want 3 and 3", counted, held)
	}
	full("an older instance's stream counted")
}

// TestFailedHandoffReleasesItsReservation: a handoff refused (here: the device's secret does
// not match) takes no place under its key.
func TestFailedHandoffReleasesItsReservation(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	key := secretHash("released")
	push := &pushproxy.PushAddress{Platform: "apns", Token: "cd34", Topic: "t", Environment: "production"}
	if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push, DeviceSecretHash: secretHash("right")}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push,
			DeviceSecretHash: secretHash("wrong"), DeviceSecretGiven: true, APIKeyHash: key, MaxPerKey: 1})
		if pushproxy.ErrorCode(err) != pushproxy.EDEVICESECRETMISMATCH {
			t.Fatalf("handoff with the wrong secret: %v, want %s", err, pushproxy.EDEVICESECRETMISMATCH)
		}
	}
	if counted, _ := keyCount(t, ctx, conn, key); counted != 0 {
		t.Fatalf("counter %d after refused handoffs only", counted)
	}
	if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 1}); err != nil {
		t.Fatalf("the key's first stream: %v", err)
	}
	if counted, held := keyCount(t, ctx, conn, key); counted != 1 || held != 1 {
		t.Fatalf("counter %d, held %d; want 1 and 1", counted, held)
	}
}

// TestKeyQuotaCountsAreBackfilled: the streams held under each key before migration 012
// are counted by it (closed ones and keyless ones are not), and the quota holds after it.
func TestKeyQuotaCountsAreBackfilled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	before := fstest.MapFS{}
	for i := 1; i <= 11; i++ {
		names, err := fs.Glob(migrations.FS, fmt.Sprintf("%03d_*.sql", i))
		if err != nil || len(names) != 1 {
			t.Fatalf("migration %d: %v %v", i, names, err)
		}
		b, err := fs.ReadFile(migrations.FS, names[0])
		if err != nil {
			t.Fatal(err)
		}
		before[names[0]] = &fstest.MapFile{Data: b}
	}
	if err := store.MigrateFS(ctx, url, before, nil); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	key, other := secretHash("old-1"), secretHash("old-2")
	_, err = conn.Exec(ctx, `
		INSERT INTO streams (url, headers, token_hash, api_key_hash, state)
		VALUES ('http://o.test/', '{}', 'h', $1, 'held'), ('http://o.test/', '{}', 'h', $1, 'held'),
			('http://o.test/', '{}', 'h', $1, 'closed'), ('http://o.test/', '{}', 'h', $2, 'held'),
			('http://o.test/', '{}', 'h', NULL, 'held')`, key, other)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key  []byte
		want int
	}{{key, 2}, {other, 1}} {
		if counted, held := keyCount(t, ctx, conn, c.key); counted != c.want || held != c.want {
			t.Fatalf("counter %d, held %d; want %d", counted, held, c.want)
		}
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 2}); pushproxy.ErrorCode(err) != pushproxy.EKEYLIMIT {
		t.Fatalf("a third stream under a key holding 2 from before the migration: %v, want %s", err, pushproxy.EKEYLIMIT)
	}
}

// TestKeyQuotaIsExactAfterTheBoundIsLowered: streams handed off under a high bound may sit
// unevenly in the key's slots (here all in one, put there by hand: the store deals its
// handoffs different slots), so after the bound is lowered a slot holds more than its new
// share. No handoff is admitted while the key holds the new bound or more, and once
// streams close, handoffs racing for the places left fill them exactly.
func TestKeyQuotaIsExactAfterTheBoundIsLowered(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	key := secretHash("lowered")
	var held []string
	for range 20 {
		s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 1000})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s.ID)
	}
	for _, q := range []string{
		`UPDATE streams SET key_slot = 0 WHERE api_key_hash = $1 AND state = 'held'`,
		`UPDATE api_key_streams SET held = CASE WHEN slot = 0 THEN 20 ELSE 0 END WHERE key_hash = $1`,
	} {
		if _, err := conn.Exec(ctx, q, key); err != nil {
			t.Fatal(err)
		}
	}
	const lower = 12
	if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: lower}); pushproxy.ErrorCode(err) != pushproxy.EKEYLIMIT {
		t.Fatalf("a handoff under a bound of %d with 20 held: %v, want %s", lower, err, pushproxy.EKEYLIMIT)
	}
	for _, id := range held[:14] { // 6 left, in slot 0 (its new share: 1): 6 places under the new bound
		if _, err := st.CloseStream(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if ok := raceHandoffs(t, st, key, lower, 30); ok != lower-6 {
		t.Fatalf("%d of 30 racing handoffs admitted into the %d places left under the lowered bound", ok, lower-6)
	}
	if counted, n := keyCount(t, ctx, conn, key); counted != lower || n != lower {
		t.Fatalf("counter %d, held %d; want %d", counted, n, lower)
	}
}

// raceHandoffs runs n handoffs under key at once, bounded to bound streams, and returns how
// many were admitted (the others must be refused with EKEYLIMIT).
func raceHandoffs(t *testing.T, st *store.Store, key []byte, bound, n int) int {
	t.Helper()
	return race(t, n, func(int) error {
		_, _, err := st.CreateStream(context.Background(), store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound})
		return err
	})
}

// race runs handoff(0) to handoff(n-1) at once and returns how many were admitted (the
// others must be refused with EKEYLIMIT).
func race(t *testing.T, n int, handoff func(i int) error) int {
	t.Helper()
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := handoff(i); pushproxy.ErrorCode(err) {
			case "":
				mu.Lock()
				ok++
				mu.Unlock()
			case pushproxy.EKEYLIMIT:
			default:
				t.Errorf("handoff: %v", err)
			}
		}()
	}
	wg.Wait()
	return ok
}

// TestKeyQuotaIsExactAcrossInstancesAndVersions: handoffs under one key racing through two
// instances (each deals its handoffs the slots to try first, unaware of the other's, so
// theirs collide and wait) and through code of schema version 14 (which takes its place
// with pushproxy_take_key_slot) are admitted exactly up to the bound, and the key's counter
// ends equal to the streams it holds.
func TestKeyQuotaIsExactAcrossInstancesAndVersions(t *testing.T) {
	t.Parallel()
	a, b := setup(t)
	ctx := context.Background()
	other, err := store.Open(ctx, b.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Version 14's statement, on a pool of its own (pgxpool's default size: a few at once).
	older, err := pgxpool.New(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Close()
	for _, bound := range []int{5, 16, 45} {
		key := secretHash(fmt.Sprint("fleet-", bound))
		ok := race(t, 3*bound, func(i int) error {
			if i%3 == 2 {
				var slot *int16
				err := older.QueryRow(ctx, `
					INSERT INTO streams (url, headers, token_hash, api_key_hash, key_slot)
					SELECT 'http://o.test/', '{}', 'h', $1, k.slot
					FROM (SELECT pushproxy_take_key_slot($1, $2::int) AS slot) k WHERE k.slot IS NOT NULL
					RETURNING key_slot`, key, bound).Scan(&slot)
				if errors.Is(err, pgx.ErrNoRows) {
					return pushproxy.Errorf(pushproxy.EKEYLIMIT, "full")
				}
				return err
			}
			st := a
			if i%3 == 1 {
				st = other
			}
			_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound})
			return err
		})
		if ok != bound {
			t.Fatalf("%d streams admitted under a key bounded to %d (%d handoffs raced through two instances and older code)", ok, bound, 3*bound)
		}
		if counted, held := keyCount(t, ctx, conn, key); counted != bound || held != bound {
			t.Fatalf("counter %d, held %d; want %d", counted, held, bound)
		}
	}
}

// TestKeyQuotaCountsOlderCodesStreamsExactly: a held stream inserted by older code is counted
// in its connection's slot, whatever that slot's share: the key's next handoff counts all
// its slots instead of trusting their shares, and is refused at the bound.
func TestKeyQuotaCountsOlderCodesStreamsExactly(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	key := secretHash("older")
	const bound = 16 // a share of one stream per slot
	for range bound - 1 {
		if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound}); err != nil {
			t.Fatal(err)
		}
	}
	// Older code's connection, on a slot that is full already.
	var conn *pgx.Conn
	for attempt := 0; conn == nil; attempt++ {
		c, err := pgx.Connect(ctx, b.url)
		if err != nil {
			t.Fatal(err)
		}
		var full bool
		err = c.QueryRow(ctx, `SELECT held >= 1 FROM api_key_streams WHERE key_hash = $1 AND slot = pg_backend_pid() % 16`, key).Scan(&full)
		if err != nil {
			t.Fatal(err)
		}
		if full {
			conn = c
			defer conn.Close(ctx)
		} else {
			c.Close(ctx)
		}
		if attempt > 200 {
			t.Fatal("no connection landed on a full slot")
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO streams (url, headers, token_hash, api_key_hash) VALUES ('http://o.test/', '{}', 'h', $1)`, key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound}); pushproxy.ErrorCode(err) != pushproxy.EKEYLIMIT {
		t.Fatalf("a handoff with %d held under a bound of %d (one inserted by older code): %v, want %s", bound, bound, err, pushproxy.EKEYLIMIT)
	}
}

// TestKeyedHandoffsTakeOneStatement: once a key's slots exist and its bound is known, a
// keyed handoff takes its place and inserts its stream in one statement, without
// pushproxy_key_slot; a handoff that finds its slot full is done again with the function,
// which refuses it when the key is full, and inserts nothing.
func TestKeyedHandoffsTakeOneStatement(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	rec := &recorder{}
	st := open(t, url, &store.Options{Tracer: rec})
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	ctx := context.Background()
	handoff := func(key []byte, bound int) error {
		_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: bound})
		return err
	}
	calls := func(stmts []recorded, what string) int {
		n := 0
		for _, s := range stmts {
			n += strings.Count(s.sql, what)
		}
		return n
	}

	roomy := secretHash("roomy")
	if err := handoff(roomy, 1000); err != nil { // makes the key's slots and records its bound
		t.Fatal(err)
	}
	for i := 2; i <= 40; i++ {
		stmts := rec.record(t, "keyed handoff", func() error { return handoff(roomy, 1000) })
		if calls(stmts, "pushproxy_key_slot(") != 0 || calls(stmts, "UPDATE api_key_streams") != 1 {
			t.Fatalf("handoff %d under a key with free places: want one statement taking its place and no pushproxy_key_slot, got:\n%v", i, stmts)
		}
	}

	// A bound of one place a slot, all taken: the slot dealt is full.
	full := secretHash("full")
	for range 16 {
		if err := handoff(full, 16); err != nil {
			t.Fatal(err)
		}
	}
	var err2 error
	stmts := rec.record(t, "keyed handoff over the bound", func() error { err2 = handoff(full, 16); return nil })
	if pushproxy.ErrorCode(err2) != pushproxy.EKEYLIMIT {
		t.Fatalf("handoff over the bound: %v, want %s", err2, pushproxy.EKEYLIMIT)
	}
	if calls(stmts, "UPDATE api_key_streams") != 1 || calls(stmts, "pushproxy_key_slot(") != 1 {
		t.Fatalf("the handoff over the bound: want its slot tried, then the function, got:\n%v", stmts)
	}
	for key, want := range map[string]int{"roomy": 40, "full": 16} {
		if counted, held := keyCount(t, ctx, conn, secretHash(key)); counted != want || held != want {
			t.Fatalf("key %s counts %d and holds %d streams, want %d", key, counted, held, want)
		}
	}
}

// TestAKeyedHandoffThatTimesOutIsUnavailable: a keyed handoff that waits past the statement
// timeout for its key's slot (another transaction holds every slot's row) fails as
// unavailable (503, retry), not as an internal error, on the one-statement path as on the
// others.
func TestAKeyedHandoffThatTimesOutIsUnavailable(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	st := open(t, url, &store.Options{StatementTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	key := secretHash("busy")
	handoff := func() error {
		_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 1000})
		return err
	}
	if err := handoff(); err != nil { // makes the key's slots
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT 1 FROM api_key_streams WHERE key_hash = $1 FOR UPDATE`, key); err != nil {
		t.Fatal(err)
	}
	if err := handoff(); pushproxy.ErrorCode(err) != pushproxy.EUNAVAILABLE {
		t.Fatalf("a handoff waiting past the statement timeout: %v (code %q), want unavailable", err, pushproxy.ErrorCode(err))
	}
}
