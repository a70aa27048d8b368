package store_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// TestFinishWakeupsAndCommitDoNotDeadlock: a commit queues wake-ups for many devices (its
// INSERT ... ON CONFLICT locks each device's outstanding wake-up, in device order) while a
// dispatcher records what became of the claimed wake-ups of the same devices
// (FinishWakeups updates them). Locking several of the same rows in different orders, they
// deadlocked: Postgres aborted one after its deadlock_timeout (1 s), a commit of events
// stalled that long and was retried (commit p99 above a second in the soak bench).
func TestFinishWakeupsAndCommitDoNotDeadlock(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	const devices = 200
	var as []store.Append
	for i := range devices {
		s, epoch := newStream(t, st, &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: "lock-" + itoa(int64(i))})
		as = append(as, store.Append{StreamID: s.ID, Epoch: epoch, RetryMS: -1})
	}
	head := int64(0)
	commitAll := func() error {
		head++
		for i := range as {
			as[i].Events, as[i].HeadSeq, as[i].ResumeID = events(head, head, seqID), head, seqID(head)
		}
		_, err := st.Commit(ctx, owner, as, store.CommitOptions{Wake: &store.WakePolicy{}})
		return err
	}
	for round := range 15 {
		if err := commitAll(); err != nil {
			t.Fatal(err)
		}
		ws, err := st.ClaimWakeups(ctx, owner, time.Now().Add(time.Second), time.Minute, devices, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != devices {
			t.Fatalf("round %d: claimed %d wake-ups, want one per device (%d)", round, len(ws), devices)
		}
		// The dispatcher's results come in whatever order its sends ended.
		slices.SortFunc(ws, func(a, b pushproxy.Wakeup) int { return strings.Compare(b.DeviceID, a.DeviceID) })
		results := make([]pushproxy.WakeupResult, len(ws))
		for i, w := range ws {
			results[i] = pushproxy.WakeupResult{ID: w.ID, DeviceID: w.DeviceID, Outcome: pushproxy.OutcomeNoSender}
		}
		var wg sync.WaitGroup
		var finishErr, commitErr error
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			finishErr = st.FinishWakeups(ctx, owner, time.Now(), results)
		}()
		go func() {
			defer wg.Done()
			<-start
			commitErr = commitAll()
		}()
		t0 := time.Now()
		close(start)
		wg.Wait()
		if finishErr != nil || commitErr != nil {
			t.Fatalf("round %d, after %s: finish: %v; commit: %v", round, time.Since(t0).Round(time.Millisecond), finishErr, commitErr)
		}
	}
}
