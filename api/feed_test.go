package api

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// TestFeedSharesOneComputationAmongWatchers checks that watchers share the snapshots, that
// the loop stops when nobody watches, and that shutdown closes the watchers' channels.
func TestFeedSharesOneComputationAmongWatchers(t *testing.T) {
	var calls atomic.Int64
	f := newFeed(time.Hour, func(context.Context) ([]byte, error) {
		return []byte(strconv.FormatInt(calls.Add(1), 10)), nil
	}, nil)
	a, stopA := f.subscribe()
	if got := string(<-a); got != "1" {
		t.Fatalf("first watcher got %q", got)
	}
	b, stopB := f.subscribe()
	if got := string(<-b); got != "1" {
		t.Fatalf("second watcher got %q, want the snapshot already made", got)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d computations for two watchers in one interval", n)
	}
	stopB()
	f.shutdown()
	stopA() // after shutdown: harmless
	if _, ok := <-a; ok {
		t.Fatal("a watcher's channel stays open after shutdown")
	}
	if c, _ := f.subscribe(); func() bool { _, ok := <-c; return ok }() {
		t.Fatal("a watcher after shutdown gets snapshots")
	}
}

func TestFeedStopsWhenNobodyWatches(t *testing.T) {
	var calls atomic.Int64
	f := newFeed(time.Millisecond, func(context.Context) ([]byte, error) {
		return []byte(strconv.FormatInt(calls.Add(1), 10)), nil
	}, nil)
	defer f.shutdown()
	c, stop := f.subscribe()
	<-c
	<-c // a later snapshot: the loop runs
	stop()
	<-f.loop.Stopped() // the loop ends by itself
	f.mu.Lock()
	running, last := f.running, f.last
	f.mu.Unlock()
	if running || last != nil {
		t.Fatalf("after the last watcher left: running %v, snapshot %q", running, last)
	}
	// A new watcher starts it again, with a fresh snapshot.
	before := calls.Load()
	c, stop = f.subscribe()
	defer stop()
	if got, _ := strconv.ParseInt(string(<-c), 10, 64); got <= before {
		t.Fatalf("new watcher got snapshot %d, made before it came (%d)", got, before)
	}
}

// TestFeedShutdownWaitsForTheLoop: shutdown cancels a computation in progress and returns
// only once the loop has returned.
func TestFeedShutdownWaitsForTheLoop(t *testing.T) {
	computing := make(chan struct{})
	var returned atomic.Bool
	f := newFeed(time.Hour, func(ctx context.Context) ([]byte, error) {
		close(computing)
		<-ctx.Done()
		returned.Store(true)
		return nil, ctx.Err()
	}, nil)
	c, stop := f.subscribe()
	defer stop()
	<-computing
	f.shutdown()
	if !returned.Load() {
		t.Fatal("shutdown returned while the computation ran")
	}
	select {
	case <-f.loop.Stopped():
	default:
		t.Fatal("the loop runs after shutdown")
	}
	if _, ok := <-c; ok {
		t.Fatal("a watcher's channel stays open after shutdown")
	}
	f.shutdown() // idempotent
}
