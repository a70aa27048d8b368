package wakeup_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/wakeup"
)

// blockingQueue is an empty outbox whose claims wait for the end of their context, counting
// the dispatchers inside a claim.
type blockingQueue struct {
	wakeup.Queue // nil: the methods below are the only ones the loops call here
	inside       atomic.Int32
	entered      chan struct{}
}

func (q *blockingQueue) ClaimWakeups(ctx context.Context, _ string, _ time.Time, _ time.Duration, _ int, _ time.Duration) ([]pushproxy.Wakeup, error) {
	q.inside.Add(1)
	defer q.inside.Add(-1)
	select {
	case q.entered <- struct{}{}:
	case <-ctx.Done():
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestStopWaitsForEveryDispatcher: Stop returns only once every dispatcher has left the
// queue, and a second Start after Stop runs (and stops) again.
func TestStopWaitsForEveryDispatcher(t *testing.T) {
	const dispatchers = 3
	q := &blockingQueue{entered: make(chan struct{}, dispatchers)}
	s := wakeup.New(q, nil, &wakeup.Options{Dispatchers: dispatchers})
	for round := range 2 {
		s.Start(context.Background())
		s.Start(context.Background()) // a running scheduler is not started twice
		for range dispatchers {
			<-q.entered
		}
		s.Stop()
		if n := q.inside.Load(); n != 0 {
			t.Fatalf("round %d: %d dispatchers still claiming after Stop", round, n)
		}
		select {
		case <-s.Stopped():
		default:
			t.Fatalf("round %d: Stopped not closed after Stop", round)
		}
		select {
		case <-q.entered:
			t.Fatalf("round %d: more than %d dispatchers ran", round, dispatchers)
		default:
		}
		s.Stop() // idempotent
	}
}
