package wakeup_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var _ wakeup.Queue = (*store.Store)(nil)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is a Sender that records pushes and fails as told. The platform fakes check the
// wire format; these tests are about when pushes are sent.
type recorder struct {
	mu     sync.Mutex
	pushes []wakeup.Push
	fail   []error // returned by the next sends, in order
}

func (r *recorder) Send(_ context.Context, p wakeup.Push) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.fail) > 0 {
		err := r.fail[0]
		r.fail = r.fail[1:]
		return "", err
	}
	r.pushes = append(r.pushes, p)
	return fmt.Sprintf("push-%d", len(r.pushes)), nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pushes)
}

func (r *recorder) last() wakeup.Push {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pushes[len(r.pushes)-1]
}

type bundle struct {
	st     *store.Store
	clock  *clock
	policy *store.WakePolicy
	sender *recorder
	sched  *wakeup.Scheduler
	epochs map[string]int64
	heads  map[string]int64
}

const owner = "test-instance"

func setup(t *testing.T, opts *wakeup.Options) *bundle {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	b := &bundle{st: st, clock: &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}, sender: &recorder{},
		epochs: map[string]int64{}, heads: map[string]int64{}}
	b.policy = &store.WakePolicy{Now: b.clock.Now, Debounce: 2 * time.Second, Rewake: 15 * time.Minute}
	o := wakeup.Options{}
	if opts != nil {
		o = *opts
	}
	o.InstanceID, o.Now, o.Jitter = owner, b.clock.Now, time.Nanosecond
	o.Rearm = func(ctx context.Context, devices []string) error { return st.RearmWakeups(ctx, devices, b.policy) }
	b.sched = wakeup.New(st, map[string]wakeup.Sender{pushproxy.PlatformAPNs: b.sender, pushproxy.PlatformFCM: b.sender,
		pushproxy.PlatformWebPush: b.sender}, &o)
	return b
}

func (b *bundle) stream(t *testing.T, token string) string {
	t.Helper()
	return b.streamFor(t, &pushproxy.PushAddress{Platform: pushproxy.PlatformAPNs, Token: token, Topic: "com.example.app", Environment: "production"})
}

func (b *bundle) streamFor(t *testing.T, push *pushproxy.PushAddress) string {
	t.Helper()
	s, epoch, err := b.st.CreateStream(context.Background(), store.NewStream{
		URL: "http://origin.test/events", TokenHash: []byte("h"), LeaseOwner: owner, Push: push,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.epochs[s.ID] = epoch
	return s.ID
}

// events commits n events on stream, queuing wake-ups as the proxy's committer does.
func (b *bundle) events(t *testing.T, stream string, n int, urgent bool) {
	t.Helper()
	a := store.Append{StreamID: stream, Epoch: b.epochs[stream], RetryMS: -1, Urgent: urgent}
	for i := 0; i < n; i++ {
		b.heads[stream]++
		a.Events = append(a.Events, pushproxy.Event{Seq: b.heads[stream], LastEventID: fmt.Sprint(b.heads[stream]), Data: "x"})
	}
	a.HeadSeq, a.ResumeID = b.heads[stream], fmt.Sprint(b.heads[stream])
	if _, err := b.st.Commit(context.Background(), owner, []store.Append{a}, store.CommitOptions{Wake: b.policy}); err != nil {
		t.Fatal(err)
	}
}

// read acknowledges everything on stream, as a device fetching its backlog does.
func (b *bundle) read(t *testing.T, stream, deviceID string) {
	t.Helper()
	ctx := context.Background()
	if _, err := b.st.Resume(ctx, stream, fmt.Sprint(b.heads[stream]), true); err != nil {
		t.Fatal(err)
	}
	if err := b.st.MarkRead(ctx, deviceID, b.policy); err != nil {
		t.Fatal(err)
	}
}

func (b *bundle) run(t *testing.T) int {
	t.Helper()
	n, err := b.sched.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *bundle) device(t *testing.T, stream string) string {
	t.Helper()
	s, err := b.st.GetStream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	return s.DeviceID
}

func (b *bundle) wakeState(t *testing.T, device string) pushproxy.WakeState {
	t.Helper()
	ws, err := b.st.DeviceWakeState(context.Background(), device)
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

const tokenA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func TestBurstOnTwoStreamsIsOnePushThenOneMoreAfterARead(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s1, s2 := b.stream(t, tokenA), b.stream(t, tokenA)
	dev := b.device(t, s1)
	if b.device(t, s2) != dev {
		t.Fatal("two streams of one push address must be one device")
	}
	b.events(t, s1, 3, false)
	b.events(t, s2, 2, false)
	b.clock.Advance(time.Second)
	b.events(t, s1, 1, false)
	if n := b.run(t); n != 0 || b.sender.count() != 0 {
		t.Fatalf("within the debounce: claimed %d, sent %d", n, b.sender.count())
	}
	b.clock.Advance(1500 * time.Millisecond)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("after the burst: %d pushes, want 1", b.sender.count())
	}
	p := b.sender.last()
	if p.Pending[s1] != 4 || p.Pending[s2] != 2 || p.Token != tokenA || p.Topic != "com.example.app" || p.Urgent {
		t.Fatalf("push %+v", p)
	}
	if ws := b.wakeState(t, dev); ws.LastOutcome != pushproxy.OutcomeSent || !ws.Awaiting {
		t.Fatalf("wake state %+v", ws)
	}

	// More events before the device answers: no second push until it reads (or the re-wake
	// interval passes).
	b.clock.Advance(time.Minute)
	b.events(t, s2, 5, false)
	b.clock.Advance(time.Minute)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("before the device read: %d pushes, want 1", b.sender.count())
	}
	// It reads everything; a later event brings exactly one more push.
	b.read(t, s1, dev)
	b.read(t, s2, dev)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("everything was read: %d pushes, want 1", b.sender.count())
	}
	b.events(t, s1, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	b.clock.Advance(time.Minute)
	b.run(t)
	if b.sender.count() != 2 {
		t.Fatalf("after a read and a new event: %d pushes, want 2", b.sender.count())
	}
	if p := b.sender.last(); len(p.Pending) != 1 || p.Pending[s1] != 1 {
		t.Fatalf("second push announces %v", p.Pending)
	}
}

// TestAReadWhileThePushIsSentAnswersIt: the app wakes and reads before the sender has
// recorded its push as sent. That read answered the push: the next event's push comes
// after the debounce, not after the re-wake interval.
func TestAReadWhileThePushIsSentAnswersIt(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.stream(t, tokenA)
	dev := b.device(t, s)
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	read := false
	sched := b.racing(func() {
		if !read {
			read = true
			b.read(t, s, dev)
		}
	})
	if _, err := sched.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !read || b.sender.count() != 1 {
		t.Fatalf("%d pushes, want 1", b.sender.count())
	}
	if ws := b.wakeState(t, dev); ws.LastOutcome != pushproxy.OutcomeSent || ws.Awaiting {
		t.Fatalf("wake state %+v: the device read while its push was sent, and is not awaited", ws)
	}
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	if b.sender.count() != 2 {
		t.Fatalf("%d pushes after a new event, want 2 (not held back for the re-wake interval)", b.sender.count())
	}
}

func TestUnansweredPushIsRepeatedAfterTheRewakeInterval(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.stream(t, tokenA)
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	b.events(t, s, 1, false) // the device never reads
	b.clock.Advance(14 * time.Minute)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("%d pushes before the re-wake interval", b.sender.count())
	}
	b.clock.Advance(2 * time.Minute)
	b.run(t)
	if b.sender.count() != 2 {
		t.Fatalf("%d pushes after the re-wake interval, want 2", b.sender.count())
	}
}

func TestNoPushWhileAReaderIsOpenAndPushesResumeAfter(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.stream(t, tokenA)
	dev := b.device(t, s)
	ctx := context.Background()
	reader, err := b.st.OpenReader(ctx, s, dev, owner, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b.events(t, s, 3, false)
	b.clock.Advance(time.Minute)
	b.run(t)
	if b.sender.count() != 0 {
		t.Fatal("pushed to a device with a reader open")
	}
	// The reader saw 2 of the 3 events before it closed: the device is asleep with one
	// undelivered, so a wake-up is queued.
	if err := b.st.CloseReaderDelivered(ctx, reader, s, 2, b.policy); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(3 * time.Second)
	b.run(t)
	if b.sender.count() != 1 || b.sender.last().Pending[s] != 1 {
		t.Fatalf("after the reader closed: %d pushes", b.sender.count())
	}

	// A wake-up already queued when a reader opens is skipped, not sent.
	b.read(t, s, dev)
	b.events(t, s, 1, false)
	reader, err = b.st.OpenReader(ctx, s, dev, owner, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(3 * time.Second)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatal("pushed to a device with a reader open")
	}
	if err := b.st.CloseReaderDelivered(ctx, reader, s, b.heads[s], b.policy); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(3 * time.Second)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatal("pushed for events the reader was sent")
	}
}

func TestBudgetHoldsOverASimulatedHour(t *testing.T) {
	t.Parallel()
	b := setup(t, &wakeup.Options{BudgetAPNs: 3})
	s := b.stream(t, tokenA)
	dev := b.device(t, s)
	start := b.clock.Now()
	var sent []time.Duration
	// An event every 5 minutes for two hours; the device reads each push at once.
	for i := 0; i < 24; i++ {
		b.events(t, s, 1, false)
		for j := 0; j < 5; j++ {
			b.clock.Advance(time.Minute)
			before := b.sender.count()
			b.run(t)
			if b.sender.count() > before {
				sent = append(sent, b.clock.Now().Sub(start))
				b.read(t, s, dev)
			}
		}
	}
	// In any hour-long window, at most 3 pushes.
	for i := range sent {
		n := 0
		for _, d := range sent[i:] {
			if d-sent[i] < time.Hour {
				n++
			}
		}
		if n > 3 {
			t.Fatalf("%d pushes within an hour of %s: %v", n, sent[i], sent)
		}
	}
	if len(sent) != 6 {
		t.Fatalf("sent at %v: want 3 per hour over two hours", sent)
	}
	if sent[3] < time.Hour {
		t.Fatalf("the 4th push went at %s, inside the first hour", sent[3])
	}
}

// A Web Push device is woken with its subscription's keys, within --wake-budget-webpush
// (not the other platforms' budgets); one whose auth secret cannot be opened is skipped,
// not declared dead.
func TestWebPushWakeupsCarryTheKeysWithinTheirBudget(t *testing.T) {
	t.Parallel()
	b := setup(t, &wakeup.Options{BudgetWebPush: 2, BudgetAPNs: 5, BudgetFCM: 5})
	const endpoint = "https://push.example/push/budget"
	s := b.streamFor(t, &pushproxy.PushAddress{Platform: pushproxy.PlatformWebPush, Token: endpoint, WebPushP256dh: "BKey", WebPushAuth: "authSecret"})
	dev := b.device(t, s)
	sent := 0
	for i := 0; i < 12; i++ { // an event every 5 minutes for an hour, read at once
		b.events(t, s, 1, false)
		for j := 0; j < 5; j++ {
			b.clock.Advance(time.Minute)
			before := b.sender.count()
			b.run(t)
			if b.sender.count() > before {
				sent++
				p := b.sender.last()
				if p.Platform != pushproxy.PlatformWebPush || p.Token != endpoint || p.WebPushKeys == nil ||
					p.WebPushKeys.P256dh != "BKey" || p.WebPushKeys.Auth != "authSecret" {
					t.Fatalf("push %+v, keys %+v", p, p.WebPushKeys)
				}
				b.read(t, s, dev)
			}
		}
	}
	if sent != 2 {
		t.Fatalf("%d Web Push wake-ups within the hour, want the budget of 2", sent)
	}

	noAuth := b.streamFor(t, &pushproxy.PushAddress{Platform: pushproxy.PlatformWebPush, Token: endpoint + "-2", WebPushP256dh: "BKey"})
	b.events(t, noAuth, 1, false)
	b.clock.Advance(time.Minute)
	b.run(t)
	if p := b.sender.last(); p.Token == endpoint+"-2" {
		t.Fatal("a wake-up without the auth secret was sent")
	}
	if ws := b.wakeState(t, b.device(t, noAuth)); ws.LastOutcome != pushproxy.OutcomeNoSender || !ws.DeadAt.IsZero() {
		t.Fatalf("wake state %+v, want no-sender and not dead", ws)
	}
}

func TestNextAllowed(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	cases := []struct {
		sends  []time.Time
		now    time.Time
		budget int
		ok     bool
		next   time.Time
	}{
		{nil, at(0), 3, true, at(0)},
		{[]time.Time{at(0), at(10)}, at(20), 3, true, at(20)},
		{[]time.Time{at(0), at(10), at(20)}, at(30), 3, false, at(60)},
		{[]time.Time{at(0), at(10), at(20)}, at(61), 3, true, at(61)},
		{[]time.Time{at(-70), at(10), at(20)}, at(30), 3, true, at(30)},
		{[]time.Time{at(0), at(10), at(20), at(30)}, at(40), 3, false, at(70)},
	}
	for i, c := range cases {
		next, ok := wakeup.NextAllowed(c.sends, c.now, c.budget, time.Hour)
		if ok != c.ok || !next.Equal(c.next) {
			t.Errorf("case %d: got %v %v, want %v %v", i, next, ok, c.next, c.ok)
		}
	}
}

func TestUrgentEventsSkipTheDebounce(t *testing.T) {
	t.Parallel()
	b := setup(t, &wakeup.Options{AlertText: "New activity"})
	s := b.stream(t, tokenA)
	b.events(t, s, 2, false)
	b.run(t)
	if b.sender.count() != 0 {
		t.Fatal("sent within the debounce")
	}
	b.events(t, s, 1, true)
	b.run(t)
	if b.sender.count() != 1 || !b.sender.last().Urgent || b.sender.last().AlertText != "New activity" {
		t.Fatalf("urgent event: %d pushes", b.sender.count())
	}
}

func TestDeadTokenMarksTheDeviceAndStopsItsStreamsAfterTheGrace(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.stream(t, tokenA)
	dev := b.device(t, s)
	b.sender.fail = []error{&wakeup.SendError{Kind: wakeup.KindTokenGone, Reason: "Unregistered", Status: 410}}
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	ws := b.wakeState(t, dev)
	if ws.DeadAt.IsZero() || ws.DeadReason != "Unregistered" || ws.LastOutcome != pushproxy.OutcomeTokenGone {
		t.Fatalf("wake state %+v", ws)
	}
	// No more wake-ups for it.
	b.events(t, s, 1, false)
	b.clock.Advance(time.Minute)
	if n := b.run(t); n != 0 || b.sender.count() != 0 {
		t.Fatalf("claimed %d for a dead device", n)
	}
	ctx := context.Background()
	if n, _ := b.st.FailDeadDevices(ctx, store.Fence{}, b.clock.Now(), time.Hour, 1000); n != 0 {
		t.Fatal("failed streams within the grace period")
	}
	b.clock.Advance(time.Hour)
	if n, err := b.st.FailDeadDevices(ctx, store.Fence{}, b.clock.Now(), time.Hour, 1000); err != nil || n != 1 {
		t.Fatalf("failed %d streams after the grace: %v", n, err)
	}
	if st, _ := b.st.GetStream(ctx, s); st.State != pushproxy.StateFailed {
		t.Fatalf("stream state %s", st.State)
	}
}

func TestThrottledAndServerErrorsAreRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	b := setup(t, &wakeup.Options{RetryBase: time.Second})
	s := b.stream(t, tokenA)
	b.sender.fail = []error{
		&wakeup.SendError{Kind: wakeup.KindThrottled, Status: 429, Reason: "TooManyRequests", RetryAfter: 30 * time.Second},
		&wakeup.SendError{Kind: wakeup.KindRetry, Status: 503, Reason: "ServiceUnavailable"},
	}
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t) // 429: not before 30s
	dev := b.device(t, s)
	if ws := b.wakeState(t, dev); ws.LastOutcome != pushproxy.OutcomeThrottled || ws.ThrottledTill.Sub(b.clock.Now()) < 30*time.Second {
		t.Fatalf("after 429: %+v", ws)
	}
	b.clock.Advance(20 * time.Second)
	if n := b.run(t); n != 0 {
		t.Fatal("retried before Retry-After")
	}
	b.clock.Advance(11 * time.Second)
	b.run(t) // 503: retried after the backoff (2nd attempt: 2s)
	if ws := b.wakeState(t, dev); ws.LastOutcome != pushproxy.OutcomeRetry {
		t.Fatalf("after 503: %+v", ws)
	}
	b.clock.Advance(time.Second)
	if n := b.run(t); n != 0 {
		t.Fatal("retried before the backoff")
	}
	b.clock.Advance(2 * time.Second)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("%d pushes after the retries, want 1", b.sender.count())
	}
}

func TestWakeupOfADeadSchedulerIsTakenOverOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, &wakeup.Options{LeaseTTL: 30 * time.Second})
	s := b.stream(t, tokenA)
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	// Another instance claims the wake-up and dies before sending.
	ws, err := b.st.ClaimWakeups(context.Background(), "dead-instance", b.clock.Now(), 30*time.Second, 10, time.Hour)
	if err != nil || len(ws) != 1 {
		t.Fatalf("claim: %v %v", ws, err)
	}
	b.run(t)
	if b.sender.count() != 0 {
		t.Fatal("sent a wake-up another instance holds")
	}
	b.clock.Advance(31 * time.Second)
	b.run(t)
	b.clock.Advance(time.Hour)
	b.run(t)
	if b.sender.count() != 1 {
		t.Fatalf("%d pushes, want exactly 1", b.sender.count())
	}
	// The dead instance's late report changes nothing.
	if err := b.st.FinishWakeups(context.Background(), "dead-instance", b.clock.Now(), []pushproxy.WakeupResult{{ID: ws[0].ID, DeviceID: ws[0].DeviceID, Outcome: pushproxy.OutcomeRetry, RetryAt: b.clock.Now()}}); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Minute)
	if n := b.run(t); n != 0 {
		t.Fatal("a stale report put the wake-up back")
	}
}

// racingQueue is the store, with something happening between a claim and its finish.
type racingQueue struct {
	*store.Store
	beforeFinish func()
}

// racing returns a scheduler of b's APNs sender over b's store that runs beforeFinish
// between each claim and its finish.
func (b *bundle) racing(beforeFinish func()) *wakeup.Scheduler {
	return wakeup.New(racingQueue{b.st, beforeFinish}, map[string]wakeup.Sender{pushproxy.PlatformAPNs: b.sender}, &wakeup.Options{
		InstanceID: owner, Now: b.clock.Now, Jitter: time.Nanosecond,
		Rearm: func(ctx context.Context, devices []string) error { return b.st.RearmWakeups(ctx, devices, b.policy) },
	})
}

func (q racingQueue) FinishWakeups(ctx context.Context, owner string, now time.Time, rs []pushproxy.WakeupResult) error {
	q.beforeFinish()
	return q.Store.FinishWakeups(ctx, owner, now, rs)
}

func TestEventsCommittedWhileAWakeupIsClaimedAreNotLost(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.stream(t, tokenA)
	dev := b.device(t, s)
	b.events(t, s, 1, false)
	b.read(t, s, dev) // the device read it: the queued wake-up has nothing pending
	b.clock.Advance(3 * time.Second)
	// While the scheduler has the wake-up claimed, an event is committed (the commit finds a
	// wake-up outstanding and queues nothing); the claimed one finishes as nothing-pending.
	committed := false
	sched := b.racing(func() {
		if !committed {
			committed = true
			b.events(t, s, 1, false)
		}
	})
	run := func() {
		if _, err := sched.RunOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	run()
	if !committed || b.sender.count() != 0 {
		t.Fatalf("first run: committed %v, %d pushes", committed, b.sender.count())
	}
	b.clock.Advance(3 * time.Second)
	run()
	if b.sender.count() != 1 || b.sender.last().Pending[s] != 1 {
		t.Fatalf("%d pushes for the event committed during the claim, want 1", b.sender.count())
	}
}
