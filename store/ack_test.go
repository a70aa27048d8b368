package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// TestAckLeavesRowsToReclaimer: an acknowledgement moves the floor only; the rows below it
// are never read again, and ReclaimAcked deletes them (and a closed stream's) in batches.
func TestAckLeavesRowsToReclaimer(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rowsOf := func(id string) (n int64) {
		t.Helper()
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM events WHERE stream_id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	acked, epochA := newStream(t, st, nil)
	closed, epochC := newStream(t, st, nil)
	commit(t, st,
		store.Append{StreamID: acked.ID, Epoch: epochA, Events: events(1, 30, seqID), HeadSeq: 30, RetryMS: -1},
		store.Append{StreamID: closed.ID, Epoch: epochC, Events: events(1, 30, seqID), HeadSeq: 30, RetryMS: -1})
	cur, err := st.Resume(ctx, acked.ID, seqID(20), true)
	if err != nil {
		t.Fatal(err)
	}
	if cur.After != 20 || cur.Gap {
		t.Fatalf("cursor %+v, want after 20 without gap", cur)
	}
	if n := rowsOf(acked.ID); n != 30 {
		t.Fatalf("the acknowledgement deleted rows: %d left, want 30", n)
	}
	// A reader behind the floor (another reader's position) never gets acknowledged events.
	evs, err := st.EventsAfter(ctx, acked.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 10 || evs[0].Seq != 21 {
		t.Fatalf("read after 0 returned %d events from seq %d, want 10 from 21", len(evs), evs[0].Seq)
	}
	res, err := st.CloseStream(ctx, closed.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Discarded != 30 {
		t.Fatalf("close discarded %d, want 30", res.Discarded)
	}
	// Batches of 7, at most 25 rows a call: the caller loops.
	var total int64
	for calls := 0; ; calls++ {
		n, err := st.ReclaimAcked(ctx, 7, 25)
		if err != nil {
			t.Fatal(err)
		}
		if n > 25+7 {
			t.Fatalf("one call deleted %d rows, limit 25 in batches of 7", n)
		}
		total += n
		if n == 0 {
			break
		}
		if calls > 10 {
			t.Fatal("reclaiming does not end")
		}
	}
	if total != 50 {
		t.Fatalf("reclaimed %d rows, want 20 acknowledged + 30 closed", total)
	}
	if n := rowsOf(acked.ID); n != 10 {
		t.Fatalf("%d rows left of the acknowledged stream, want its 10 unacknowledged", n)
	}
	if n := rowsOf(closed.ID); n != 0 {
		t.Fatalf("%d rows left of the closed stream", n)
	}
	var queued int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM events_reclaim`).Scan(&queued); err != nil {
		t.Fatal(err)
	}
	if queued != 0 {
		t.Fatalf("%d streams still queued for reclaiming", queued)
	}
	if evs, err = st.EventsAfter(ctx, acked.ID, 20, 100); err != nil || len(evs) != 10 {
		t.Fatalf("after reclaiming: %d events, %v; want 10", len(evs), err)
	}
}

// TestAckOfTenThousandDoesNotStallCommits: a reader acknowledges 10,000 queued events while
// 100 other streams (and its own) ingest through batched commits. The committer runs with a
// lock_timeout of 10 ms: any wait on the acknowledging request's row lock longer than that
// fails a commit (before acknowledgements moved only the floor, the request deleted 10,000
// rows while holding the stream's row lock, which every commit's batched UPDATE waits for).
func TestAckOfTenThousandDoesNotStallCommits(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	sep := "?"
	if strings.Contains(b.url, "?") {
		sep = "&"
	}
	committer, err := store.Open(ctx, b.url+sep+"options=-c%20lock_timeout%3D10ms", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer committer.Close()
	const backlog, others = 10000, 100
	reader, epoch := newStream(t, st, nil)
	data := strings.Repeat("x", 3000)
	var evs []pushproxy.Event
	for i := int64(1); i <= backlog; i++ {
		evs = append(evs, pushproxy.Event{Seq: i, LastEventID: seqID(i), Type: "tick", Data: data})
	}
	commit(t, st, store.Append{StreamID: reader.ID, Epoch: epoch, Events: evs, HeadSeq: backlog, RetryMS: -1})
	streams := []string{reader.ID}
	epochs := []int64{epoch}
	heads := []int64{backlog}
	for range others {
		s, e := newStream(t, st, nil)
		streams, epochs, heads = append(streams, s.ID), append(epochs, e), append(heads, 0)
	}

	var (
		stop    atomic.Bool
		commits atomic.Int64
		wg      sync.WaitGroup
		maxLat  time.Duration
		errs    = make(chan error, 1)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			as := make([]store.Append, len(streams))
			for i := range streams {
				heads[i]++
				as[i] = store.Append{StreamID: streams[i], Epoch: epochs[i], HeadSeq: heads[i], RetryMS: -1,
					Events: []pushproxy.Event{{Seq: heads[i], LastEventID: seqID(heads[i]), Type: "tick", Data: "live"}}}
			}
			start := time.Now()
			if _, err := committer.Commit(ctx, owner, as, store.CommitOptions{}); err != nil {
				errs <- err
				return
			}
			maxLat = max(maxLat, time.Since(start))
			commits.Add(1)
		}
	}()
	waitCommits := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for commits.Load() < n {
			select {
			case err := <-errs:
				t.Fatalf("a commit failed: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("commits stalled")
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitCommits(3)
	ackStart := time.Now()
	cur, err := st.Resume(ctx, reader.ID, seqID(backlog), true)
	ackTook := time.Since(ackStart)
	if err != nil {
		t.Fatal(err)
	}
	if cur.After != backlog {
		t.Fatalf("cursor after %d, want %d", cur.After, backlog)
	}
	waitCommits(commits.Load() + 3)
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("a commit waited on the acknowledgement's lock: %v", err)
	default:
	}
	t.Logf("acknowledging %d events took %v; %d commits of %d streams, slowest %v", backlog, ackTook, commits.Load(), len(streams), maxLat)
	// The acknowledged rows are reclaimed in the background, also without stalling commits.
	var reclaimed int64
	for {
		n, err := st.ReclaimAcked(ctx, 1000, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		reclaimed += n
	}
	if reclaimed != backlog {
		t.Fatalf("reclaimed %d rows, want %d", reclaimed, backlog)
	}
}

// TestReadsKeepStreamsFromIdling: a read records itself (read_at, which --stream-idle-ttl
// closes streams by), whether it acknowledges (in the acknowledgement's statement) or not,
// from the row read in the request (ResumeRead) or not; a read within the minute leaves it.
func TestReadsKeepStreamsFromIdling(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 30, seqID), HeadSeq: 30, RetryMS: -1})
	age := func() time.Duration {
		t.Helper()
		var secs float64
		if err := conn.QueryRow(ctx, `SELECT extract(epoch FROM now() - read_at) FROM streams WHERE id = $1`, s.ID).Scan(&secs); err != nil {
			t.Fatal(err)
		}
		return time.Duration(secs * float64(time.Second))
	}
	for _, c := range []struct {
		name     string
		id       string
		provided bool
		fromRow  bool
	}{
		{"acknowledging", seqID(10), true, false},
		{"acknowledging, from the request's read", seqID(20), true, true},
		{"at the acknowledged position", seqID(20), true, true},
		{"without a Last-Event-ID", "", false, false},
	} {
		if _, err := conn.Exec(ctx, `UPDATE streams SET read_at = now() - interval '8 days' WHERE id = $1`, s.ID); err != nil {
			t.Fatal(err)
		}
		var read *pushproxy.Stream
		if c.fromRow {
			got, err := st.GetStream(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			read = &got
		}
		if _, err := st.ResumeRead(ctx, s.ID, read, c.id, c.provided); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if a := age(); a > time.Minute {
			t.Fatalf("%s: the stream was last read %s ago, not now", c.name, a)
		}
	}
	// Within the minute, a read leaves read_at (an indexed column: its updates are not HOT).
	if _, err := conn.Exec(ctx, `UPDATE streams SET read_at = now() - interval '30 seconds' WHERE id = $1`, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Resume(ctx, s.ID, seqID(25), true); err != nil {
		t.Fatal(err)
	}
	if a := age(); a < 25*time.Second {
		t.Fatalf("a read 30s after the last moved read_at (now %s ago)", a)
	}
}

// TestResumeFromAStaleReadAcknowledgesExactly: a reader whose read of the stream's row is
// older than a commit that trimmed the backlog (the floor moved) is resumed from the row as
// it is now: the acknowledgement, by an origin's id or by a proxy id, applies once, at the
// reader's position, and the backlog's size is that of the events left.
func TestResumeFromAStaleReadAcknowledgesExactly(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	noID := func(int64) string { return "" }
	for _, c := range []struct {
		name string
		id   func(int64) string
	}{{"an origin's id", seqID}, {"a proxy id", noID}} {
		s, epoch := newStream(t, st, nil)
		commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 30, c.id), HeadSeq: 30, RetryMS: -1})
		read, err := st.GetStream(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		// A commit trims the backlog to 20 events: the floor moves from 0 to 20.
		_, err = st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: events(31, 40, c.id), HeadSeq: 40, RetryMS: -1}},
			store.CommitOptions{MaxBacklog: 20})
		if err != nil {
			t.Fatal(err)
		}
		cur, err := st.ResumeRead(ctx, s.ID, &read, pushproxy.ReplayID(25, c.id(25)), true)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if cur.After != 25 || cur.Gap {
			t.Fatalf("%s: cursor %+v, want after 25 without a gap", c.name, cur)
		}
		var floor, acked, bytes, left int64
		err = conn.QueryRow(ctx, `
			SELECT s.floor_seq, s.acked_seq, s.backlog_bytes,
				(SELECT coalesce(sum(octet_length(e.last_event_id) + octet_length(e.type) + octet_length(e.data)), 0)
				 FROM events e WHERE e.stream_id = s.id AND e.seq > s.floor_seq)
			FROM streams s WHERE s.id = $1`, s.ID).Scan(&floor, &acked, &bytes, &left)
		if err != nil {
			t.Fatal(err)
		}
		if floor != 25 || acked != 25 || bytes != left {
			t.Fatalf("%s: floor %d, acked %d, backlog_bytes %d for %d bytes of events left; want 25, 25, equal", c.name, floor, acked, bytes, left)
		}
	}
}

// TestAckThatLosesTheRaceQueuesNothing: an acknowledgement whose floor moved since it read
// the row (it is sent again from a fresh read) queues no rows for the reclaimer: were its
// retry never made (the request gone), rows above the real floor would be deleted.
func TestAckThatLosesTheRaceQueuesNothing(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 30, seqID), HeadSeq: 30, RetryMS: -1})
	if _, err := conn.Exec(ctx, `UPDATE streams SET floor_seq = 5 WHERE id = $1`, s.ID); err != nil {
		t.Fatal(err)
	}
	const staleFloor = 0
	var moved bool
	if err := conn.QueryRow(ctx, store.AckSQL, s.ID, int64(staleFloor), int64(20), []byte(seqID(20))).Scan(&moved); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("an acknowledgement from a stale floor: %v, want no row", err)
	}
	var at *int64
	if err := conn.QueryRow(ctx, store.AckByIDSQL, s.ID, int64(staleFloor), []byte(seqID(20)), nil).Scan(&at, &moved); err != nil || moved {
		t.Fatalf("an acknowledgement by id from a stale floor: moved %v, %v", moved, err)
	}
	var queued int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM events_reclaim WHERE stream_id = $1`, s.ID).Scan(&queued); err != nil {
		t.Fatal(err)
	}
	if queued != 0 {
		t.Fatalf("acknowledgements that did not move the floor queued %d reclaim marks", queued)
	}
}

// TestAProxyIDIsAcknowledgedInOneStatement: a reader coming back with a proxy id (its origin
// sends no ids) is acknowledged by one statement, which finds the seq the id names, not by a
// walk of the backlog for an origin id followed by a second acknowledgement. An origin id
// that looks like a proxy id still names the oldest event replayed with it; a proxy id past
// the head is an unknown id (everything queued, a gap); one at or below the floor
// acknowledges nothing more.
func TestAProxyIDIsAcknowledgedInOneStatement(t *testing.T) {
	t.Parallel()
	url := migratedDatabase(t)
	rec := &recorder{}
	st := open(t, url, &store.Options{Tracer: rec})
	ctx := context.Background()
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	s, epoch := newStream(t, st, nil)
	noID := func(int64) string { return "" }
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 40, noID), HeadSeq: 40, RetryMS: -1})
	acks := func(stmts []recorded) int {
		n := 0
		for _, s := range stmts {
			if strings.Contains(s.sql, "UPDATE streams SET acked_seq") {
				n++
			}
		}
		return n
	}
	var cur store.Cursor
	stmts := rec.record(t, "resume at a proxy id", func() (err error) {
		cur, err = st.Resume(ctx, s.ID, pushproxy.ProxyIDPrefix+"30", true)
		return err
	})
	if cur != (store.Cursor{After: 30}) {
		t.Fatalf("cursor %+v, want after 30", cur)
	}
	if n := acks(stmts); n != 1 {
		t.Fatalf("the resume at a proxy id ran %d acknowledging statements, want 1:\n%v", n, stmts)
	}
	got, err := st.GetStream(ctx, s.ID)
	if err != nil || got.FloorSeq != 30 || got.AckedSeq != 30 || got.Backlog() != 10 {
		t.Fatalf("after the acknowledgement: %+v %v", got, err)
	}
	var bytes int64
	if err := st.Pool().QueryRow(ctx, `SELECT backlog_bytes FROM streams WHERE id = $1`, s.ID).Scan(&bytes); err != nil || bytes != 10*store.EventSize(events(1, 1, noID)[0]) {
		t.Fatalf("backlog bytes after the acknowledgement: %d (%v), want the 10 events left", bytes, err)
	}

	for _, c := range []struct {
		name string
		id   string
		want store.Cursor
	}{
		{"at the floor: nothing more", pushproxy.ProxyIDPrefix + "30", store.Cursor{After: 30}},
		{"below the floor: nothing more", pushproxy.ProxyIDPrefix + "12", store.Cursor{After: 30}},
		{"past the head: unknown", pushproxy.ProxyIDPrefix + "41", store.Cursor{After: 30, Gap: true}},
	} {
		cur, err := st.Resume(ctx, s.ID, c.id, true)
		if err != nil || cur != c.want {
			t.Fatalf("%s: cursor %+v (%v), want %+v", c.name, cur, err, c.want)
		}
	}

	// An origin that sends ids in the proxy's form: the oldest event replayed with the id
	// wins, here the origin's event 42, before event 45 that the id names.
	ids := map[int64]string{42: pushproxy.ProxyIDPrefix + "45"}
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(41, 50, func(i int64) string { return ids[i] }), HeadSeq: 50, RetryMS: -1})
	if cur, err := st.Resume(ctx, s.ID, pushproxy.ProxyIDPrefix+"45", true); err != nil || cur != (store.Cursor{After: 42}) {
		t.Fatalf("a proxy-shaped origin id: cursor %+v (%v), want after 42", cur, err)
	}
}
