package store_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
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

type testBundle struct {
	url string
}

// setup returns a store on a fresh, migrated database.
func setup(t *testing.T) (*store.Store, *testBundle) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	ctx := context.Background()
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	return st, &testBundle{url: url}
}

const owner = "instance-a"

func newStream(t *testing.T, st *store.Store, push *pushproxy.PushAddress) (pushproxy.Stream, int64) {
	t.Helper()
	s, epoch, err := st.CreateStream(context.Background(), store.NewStream{
		URL: "http://origin.test/events", TokenHash: []byte("hash"), Push: push,
		LeaseOwner: owner,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, epoch
}

func events(from, to int64, id func(int64) string) []pushproxy.Event {
	var evs []pushproxy.Event
	for i := from; i <= to; i++ {
		evs = append(evs, pushproxy.Event{Seq: i, LastEventID: id(i), Type: "update", Data: "payload"})
	}
	return evs
}

func seqID(i int64) string { return "e" + itoa(i) }

func itoa(i int64) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func commit(t *testing.T, st *store.Store, as ...store.Append) store.CommitResult {
	t.Helper()
	res, err := st.Commit(context.Background(), owner, as, store.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestMigrateIsIdempotentAndReportsStatus(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := context.Background()
	if err := store.Migrate(ctx, b.url, nil); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	status, err := store.GetMigrationStatus(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	if status.Current != status.Latest || status.Latest < 1 {
		t.Fatalf("status = %+v, want current == latest >= 1", status)
	}
	if err := store.CheckSchema(ctx, b.url); err != nil {
		t.Fatal(err)
	}
}

func TestCommitStoresEventsByteExactWithResumePoint(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	evs := []pushproxy.Event{
		{Seq: 1, LastEventID: "1", Type: "", Data: "a\x00b"},
		{Seq: 2, LastEventID: "1", Type: "weird\x00type", Data: "line1\nline2\n\nπ😀\uFFFD"},
		{Seq: 3, LastEventID: "", Type: "add", Data: ""},
	}
	res := commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: 3, ResumeID: "", RetryMS: 1500})
	if len(res.Lost) != 0 || res.Events != 3 {
		t.Fatalf("commit result %+v", res)
	}
	got, err := st.EventsAfter(ctx, s.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(evs) {
		t.Fatalf("got %d events, want %d", len(got), len(evs))
	}
	for i := range evs {
		if got[i] != evs[i] {
			t.Errorf("event %d: got %#v, want %#v", i, got[i], evs[i])
		}
	}
	s2, err := st.GetStream(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s2.HeadSeq != 3 || s2.RetryMS != 1500 || s2.Backlog() != 3 || s2.NewestID != pushproxy.ProxyIDPrefix+"3" {
		t.Fatalf("stream after commit: head %d retry %d backlog %d newest %q", s2.HeadSeq, s2.RetryMS, s2.Backlog(), s2.NewestID)
	}
}

func TestCommitIsFencedByLeaseEpoch(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 2, seqID), HeadSeq: 2, ResumeID: "e2", RetryMS: -1})

	// The lease expires and another instance claims the stream.
	if _, err := st.Pool().Exec(ctx, `UPDATE instances SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	claims, err := st.ClaimStreams(ctx, "instance-b", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != 1 || claims[0].Epoch != epoch+1 || claims[0].Stream.ResumeID != "e2" || claims[0].Stream.HeadSeq != 2 {
		t.Fatalf("claims = %+v", claims)
	}
	// The old holder's commit changes nothing and is reported lost.
	res := commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(3, 3, seqID), HeadSeq: 3, ResumeID: "e3", RetryMS: -1})
	if len(res.Lost) != 1 || res.Lost[0] != (store.Lease{StreamID: s.ID, Epoch: epoch}) || res.Events != 0 {
		t.Fatalf("stale commit: %+v", res)
	}
	// The new holder commits under its epoch.
	res, err = st.Commit(ctx, "instance-b", []store.Append{{StreamID: s.ID, Epoch: epoch + 1, Events: events(3, 4, seqID), HeadSeq: 4, ResumeID: "e4", RetryMS: -1}}, store.CommitOptions{})
	if err != nil || len(res.Lost) != 0 || res.Events != 2 {
		t.Fatalf("new holder commit: %+v %v", res, err)
	}
	got, err := st.EventsAfter(ctx, s.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[2].LastEventID != "e3" || got[3].LastEventID != "e4" {
		t.Fatalf("events = %+v", got)
	}
	// Renewal by the old owner no longer lists the stream.
	held, err := st.RenewLeases(ctx, owner, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if held[s.ID] {
		t.Fatal("old owner still renews the stream")
	}
}

func TestCommitFinalStateReleasesLease(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, HeadSeq: 0, RetryMS: -1, State: pushproxy.StateFailed, StateReason: "origin answered 404", UpstreamStatus: 404, Error: "origin answered 404"})
	got, err := st.GetStream(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != pushproxy.StateFailed || got.StateReason != "origin answered 404" || got.UpstreamStatus != 404 || got.LastError == "" || got.ClosedAt.IsZero() {
		t.Fatalf("stream = %+v", got)
	}
	claims, err := st.ClaimStreams(ctx, "instance-b", time.Minute, 10)
	if err != nil || len(claims) != 0 {
		t.Fatalf("a failed stream was claimed: %+v %v", claims, err)
	}
}

func TestBacklogIsTrimmedAtMax(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	opts := store.CommitOptions{MaxBacklog: 3}
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: events(1, 2, seqID), HeadSeq: 2, ResumeID: "e2", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: events(3, 7, seqID), HeadSeq: 7, ResumeID: "e7", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	got, err := st.EventsAfter(ctx, s.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Seq != 5 {
		t.Fatalf("after trim: %+v", got)
	}
	// A reader that had e2 finds it gone: everything queued, with a gap.
	cur, err := st.Resume(ctx, s.ID, "e2", true)
	if err != nil {
		t.Fatal(err)
	}
	if cur != (store.Cursor{After: 4, Gap: true}) {
		t.Fatalf("cursor = %+v", cur)
	}
}

func TestResumeAcknowledgesAndMatchesIDs(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	// e1, then two events that inherit e1's id (the origin sent no id on them), then e4.
	ids := map[int64]string{1: "e1", 2: "e1", 3: "e1", 4: "e4", 5: "", 6: ""}
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 6, func(i int64) string { return ids[i] }), HeadSeq: 6, RetryMS: -1})

	cases := []struct {
		name     string
		id       string
		provided bool
		want     store.Cursor
	}{
		{"no id: everything, nothing acknowledged", "", false, store.Cursor{After: 0}},
		{"an inherited id resumes after its first event", "e1", true, store.Cursor{After: 1}},
		{"the acknowledged id again", "e1", true, store.Cursor{After: 1}},
		{"unknown id: everything queued, gap", "nope", true, store.Cursor{After: 1, Gap: true}},
		{"proxy-assigned id", pushproxy.ProxyIDPrefix + "5", true, store.Cursor{After: 5}},
		{"an id older than the acknowledgement", "e4", true, store.Cursor{After: 5, Gap: true}},
	}
	for _, c := range cases {
		cur, err := st.Resume(ctx, s.ID, c.id, c.provided)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if cur != c.want {
			t.Fatalf("%s: cursor %+v, want %+v", c.name, cur, c.want)
		}
	}
	// Acknowledged events are deleted and no longer count.
	got, err := st.GetStream(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Backlog() != 1 || got.AckedSeq != 5 {
		t.Fatalf("backlog %d acked %d", got.Backlog(), got.AckedSeq)
	}
	left, err := st.EventsAfter(ctx, s.ID, 0, 10)
	if err != nil || len(left) != 1 || left[0].Seq != 6 {
		t.Fatalf("left = %+v %v", left, err)
	}
}

func TestHandoffIDIsTheFirstAcknowledgement(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), ResumeID: "41"})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := st.Resume(ctx, s.ID, "41", true)
	if err != nil || cur != (store.Cursor{}) {
		t.Fatalf("cursor %+v %v", cur, err)
	}
}

func TestStreamsPerDeviceAreBounded(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	push := &pushproxy.PushAddress{Platform: "fcm", Token: "tok"}
	var device string
	for i := 0; i < 2; i++ {
		s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push, MaxPerDevice: 2})
		if err != nil {
			t.Fatal(err)
		}
		if device != "" && s.DeviceID != device {
			t.Fatalf("same push address, different devices: %s %s", device, s.DeviceID)
		}
		device = s.DeviceID
	}
	_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push, MaxPerDevice: 2})
	if pushproxy.ErrorCode(err) != pushproxy.ELIMIT {
		t.Fatalf("third stream: %v, want %s", err, pushproxy.ELIMIT)
	}
}

func TestCloseStreamDropsBacklogAndReportsAcknowledgement(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, epoch := newStream(t, st, nil)
	commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, 3, seqID), HeadSeq: 3, ResumeID: "e3", RetryMS: -1})
	if _, err := st.Resume(ctx, s.ID, "e1", true); err != nil {
		t.Fatal(err)
	}
	res, err := st.CloseStream(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stream.State != pushproxy.StateClosed || res.Stream.AckedID != "e1" || res.Stream.ResumeID != "e3" || res.Discarded != 2 {
		t.Fatalf("close: %+v", res)
	}
	// Closing again reports the same, and later commits of the old holder are lost.
	res, err = st.CloseStream(ctx, s.ID)
	if err != nil || res.Stream.State != pushproxy.StateClosed || res.Discarded != 0 {
		t.Fatalf("second close: %+v %v", res, err)
	}
	if r := commit(t, st, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(4, 4, seqID), HeadSeq: 4, RetryMS: -1}); len(r.Lost) != 1 {
		t.Fatalf("commit after close: %+v", r)
	}
	if _, err := st.CloseStream(ctx, "00000000-0000-0000-0000-000000000000"); pushproxy.ErrorCode(err) != pushproxy.ENOTFOUND {
		t.Fatalf("unknown stream: %v", err)
	}
	if _, err := st.GetStream(ctx, "not-a-uuid"); pushproxy.ErrorCode(err) != pushproxy.ENOTFOUND {
		t.Fatalf("malformed id: %v", err)
	}
}

func TestReadersMakeADeviceAwake(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, _ := newStream(t, st, &pushproxy.PushAddress{Platform: "fcm", Token: "t1"})
	awake := func() bool {
		a, err := st.DeviceAwake(ctx, s.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if awake() {
		t.Fatal("awake before any reader")
	}
	r, err := st.OpenReader(ctx, s.ID, s.DeviceID, owner, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !awake() {
		t.Fatal("asleep with a reader open")
	}
	if err := st.CloseReaderDelivered(ctx, r, s.ID, 0, nil); err != nil {
		t.Fatal(err)
	}
	if awake() {
		t.Fatal("awake after the reader closed")
	}
	// A reader whose instance stopped refreshing expires.
	if _, err := st.OpenReader(ctx, s.ID, s.DeviceID, "dead-instance", -time.Second); err != nil {
		t.Fatal(err)
	}
	if awake() {
		t.Fatal("an expired reader keeps the device awake")
	}
}

func TestCommitNotifiesReadersInstances(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	notes := make(chan string, 10)
	l := store.NewListener(b.url, store.ReaderChannel("instance-a"), nil, func(p string) { notes <- p }, func() {})
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	read, epochR := newStream(t, st, nil)      // a reader on instance-a
	unread, epochU := newStream(t, st, nil)    // no reader
	elsewhere, epochE := newStream(t, st, nil) // a reader on another instance
	for _, r := range []struct{ stream, instance string }{{read.ID, "instance-a"}, {read.ID, "instance-a"}, {elsewhere.ID, "instance-b"}} {
		if _, err := st.OpenReader(ctx, r.stream, "", r.instance, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(1); i <= 2; i++ {
		commit(t, st,
			store.Append{StreamID: read.ID, Epoch: epochR, Events: events(i, i, seqID), HeadSeq: i, RetryMS: -1},
			store.Append{StreamID: unread.ID, Epoch: epochU, Events: events(i, i, seqID), HeadSeq: i, RetryMS: -1},
			store.Append{StreamID: elsewhere.ID, Epoch: epochE, Events: events(i, i, seqID), HeadSeq: i, RetryMS: -1})
		// Exactly one notification per commit (two readers of the stream on the instance
		// make one), naming only the stream read on this instance: the second commit's
		// arrives next, so nothing else came in between.
		select {
		case got := <-notes:
			if got != read.ID {
				t.Fatalf("commit %d: notification %q, want %q", i, got, read.ID)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("commit %d: no notification within 10s", i)
		}
	}
}

// TestBacklogBytesFollowEveryChange checks the maintained backlog size against the events
// actually stored, through every statement that adds or deletes them: commits, trims,
// acknowledgements and closes.
func TestBacklogBytesFollowEveryChange(t *testing.T) {
	t.Parallel()
	st, b := setup(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sized := func(from, to int64) []pushproxy.Event {
		var evs []pushproxy.Event
		for i := from; i <= to; i++ {
			evs = append(evs, pushproxy.Event{Seq: i, LastEventID: seqID(i), Type: strings.Repeat("t", int(i%3)), Data: strings.Repeat("d\x00", int(i))})
		}
		return evs
	}
	check := func(step string, want int64) {
		t.Helper()
		rows, err := conn.Query(ctx, `
			SELECT s.id::text, s.backlog_bytes, coalesce(sum(octet_length(e.last_event_id) + octet_length(e.type) + octet_length(e.data)), 0)
			FROM streams s LEFT JOIN events e ON e.stream_id = s.id AND e.seq > s.floor_seq GROUP BY s.id`)
		if err != nil {
			t.Fatal(err)
		}
		var (
			id          string
			kept, truth int64
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &kept, &truth}, func() error {
			if kept != truth {
				t.Errorf("%s: stream %s keeps backlog_bytes %d, its events take %d", step, id, kept, truth)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.RefreshGauges(ctx, store.Fence{}); err != nil {
			t.Fatal(err)
		}
		stats, _, err := st.GetGauges(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if stats.Bytes != want {
			t.Errorf("%s: backlog bytes %d, want %d", step, stats.Bytes, want)
		}
	}
	size := func(evs []pushproxy.Event) (n int64) {
		for _, ev := range evs {
			n += store.EventSize(ev)
		}
		return n
	}
	a, ea := newStream(t, st, nil)
	c, ec := newStream(t, st, nil)
	opts := store.CommitOptions{MaxBacklog: 4}
	res, err := st.Commit(ctx, owner, []store.Append{
		{StreamID: a.ID, Epoch: ea, Events: sized(1, 3), HeadSeq: 3, RetryMS: -1},
		{StreamID: c.ID, Epoch: ec, Events: sized(1, 2), HeadSeq: 2, RetryMS: -1},
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := size(sized(1, 3)) + size(sized(1, 2)); res.Bytes != want {
		t.Errorf("commit reports %d bytes, want %d", res.Bytes, want)
	}
	check("first commit", size(sized(1, 3))+size(sized(1, 2)))

	// a overflows: 1-3 stored, 4-9 arrive, so 1-5 go (1-3 trimmed, 4-5 never stored).
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: a.ID, Epoch: ea, Events: sized(4, 9), HeadSeq: 9, RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	check("trim", size(sized(6, 9))+size(sized(1, 2)))

	if _, err := st.Resume(ctx, a.ID, seqID(7), true); err != nil {
		t.Fatal(err)
	}
	check("acknowledge", size(sized(8, 9))+size(sized(1, 2)))

	if _, err := st.CloseStream(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	check("close", size(sized(8, 9)))
}

// TestClaimTakesTheOldestUnownedAndLapsedStreams: a claim takes the streams nobody holds and
// those of instances whose lease lapsed, oldest first across both, at most its limit, and
// none of a live instance.
func TestClaimTakesTheOldestUnownedAndLapsedStreams(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	if err := st.RenewInstance(ctx, "lapsed", -time.Minute); err != nil {
		t.Fatal(err)
	}
	ages := map[string]int{} // stream id -> hours old
	for _, s := range []struct {
		owner string
		hours int
	}{{"", 3}, {"", 1}, {"", 5}, {"lapsed", 4}, {"lapsed", 2}, {owner, 6}} {
		str, _ := newStream(t, st, nil)
		var lease any
		if s.owner != "" {
			lease = s.owner
		}
		if _, err := st.Pool().Exec(ctx, `UPDATE streams SET lease_owner = $2, created_at = now() - make_interval(hours => $3) WHERE id = $1`, str.ID, lease, s.hours); err != nil {
			t.Fatal(err)
		}
		ages[str.ID] = s.hours
	}
	claimed := func(limit int) []int {
		claims, err := st.ClaimStreams(ctx, "instance-b", time.Minute, limit)
		if err != nil {
			t.Fatal(err)
		}
		var hours []int
		for _, c := range claims {
			hours = append(hours, ages[c.Stream.ID])
		}
		slices.Sort(hours)
		return hours
	}
	if got := claimed(3); !slices.Equal(got, []int{3, 4, 5}) {
		t.Fatalf("first claim took the streams %v hours old, not 3, 4 and 5", got)
	}
	if got := claimed(10); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("second claim took the streams %v hours old, not 1 and 2", got)
	}
}
