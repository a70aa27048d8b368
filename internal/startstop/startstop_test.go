package startstop_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy/internal/startstop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blockUntilDone is a loop function that records the cause its context ended with.
func blockUntilDone(cause *atomic.Value) func(context.Context) {
	return func(ctx context.Context) {
		<-ctx.Done()
		cause.Store(context.Cause(ctx))
	}
}

func TestStartRunsOnceAndStopWaits(t *testing.T) {
	var l startstop.Loop
	var cause atomic.Value
	var runs atomic.Int32
	run := func(ctx context.Context) { runs.Add(1); blockUntilDone(&cause)(ctx) }
	if !l.Start(context.Background(), run) {
		t.Fatal("first Start did not start")
	}
	<-l.Started()
	if l.Start(context.Background(), run) {
		t.Fatal("Start while running started a second run")
	}
	stopped := l.Stopped()
	select {
	case <-stopped:
		t.Fatal("Stopped closed while running")
	default:
	}
	l.Stop()
	// Stop has returned: the function has, with ErrStop as its context's cause.
	if got, _ := cause.Load().(error); !errors.Is(got, startstop.ErrStop) {
		t.Fatalf("cause = %v, want ErrStop", got)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("Stopped not closed after Stop")
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("%d runs", n)
	}
	l.Stop() // idempotent
}

func TestStopWithoutStart(t *testing.T) {
	var l startstop.Loop
	l.Stop()
	l.Stop()
}

func TestConcurrentStopsAllWait(t *testing.T) {
	var l startstop.Loop
	var cause atomic.Value
	l.Start(context.Background(), blockUntilDone(&cause))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			l.Stop()
			if cause.Load() == nil {
				t.Error("a Stop returned before the function did")
			}
		})
	}
	wg.Wait()
}

func TestParentCancelEndsTheRun(t *testing.T) {
	var l startstop.Loop
	var cause atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	l.Start(ctx, blockUntilDone(&cause))
	cancel()
	<-l.Stopped()
	if got, _ := cause.Load().(error); !errors.Is(got, context.Canceled) {
		t.Fatalf("cause = %v, want context.Canceled", got)
	}
}

func TestRestartAfterTheRunReturned(t *testing.T) {
	var l startstop.Loop
	release := make(chan struct{})
	l.Start(context.Background(), func(context.Context) { <-release })
	first := l.Stopped()
	close(release)
	<-first // returned by itself
	select {
	case <-l.Stopped():
	default:
		t.Fatal("Stopped of a finished run is not closed")
	}
	var cause atomic.Value
	if !l.Start(context.Background(), blockUntilDone(&cause)) {
		t.Fatal("Start after the run returned did not start")
	}
	second := l.Stopped()
	if second == first {
		t.Fatal("the second run reuses the first run's Stopped channel")
	}
	select {
	case <-second:
		t.Fatal("the second run's Stopped is closed while it runs")
	default:
	}
	l.Stop()
	<-second
}

func TestStartedBeforeStart(t *testing.T) {
	var l startstop.Loop
	started := l.Started()
	var cause atomic.Value
	l.Start(context.Background(), blockUntilDone(&cause))
	<-started // the channel taken before Start is the run's
	l.Stop()
}
