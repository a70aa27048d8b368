package api

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// feed computes a snapshot on an interval while anyone watches, and hands each new one to
// every watcher. However many dashboards are open, the database sees one query set per
// interval, and none when nobody watches.
type feed struct {
	interval time.Duration
	compute  func(context.Context) ([]byte, error)
	onError  func(error)

	mu      sync.Mutex
	subs    map[chan []byte]struct{}
	last    []byte
	running bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

func newFeed(interval time.Duration, compute func(context.Context) ([]byte, error), onError func(error)) *feed {
	return &feed{interval: interval, compute: compute, onError: onError, subs: map[chan []byte]struct{}{}, stop: make(chan struct{})}
}

// subscribe returns a channel that receives the latest snapshot whenever it changes (the
// current one first, if there is one), and a function to stop. The channel is closed when
// the feed shuts down.
func (f *feed) subscribe() (<-chan []byte, func()) {
	c := make(chan []byte, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		close(c)
		return c, func() {}
	}
	f.subs[c] = struct{}{}
	if f.last != nil {
		c <- f.last
	}
	if !f.running {
		f.running = true
		f.done = make(chan struct{})
		go f.run(f.done)
	}
	return c, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, c)
	}
}

func (f *feed) run(done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-f.stop:
			cancel()
		case <-done:
		}
	}()
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	for {
		b, err := f.compute(ctx)
		if err != nil && ctx.Err() == nil && f.onError != nil {
			f.onError(err)
		}
		f.mu.Lock()
		if err == nil && !bytes.Equal(b, f.last) {
			f.last = b
			for c := range f.subs {
				select { // the newest snapshot replaces one not yet taken
				case <-c:
				default:
				}
				c <- b
			}
		}
		if len(f.subs) == 0 || f.closed {
			// Nobody watches: stop, and forget the snapshot (it would be stale by the
			// time someone comes back).
			f.running, f.last = false, nil
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		select {
		case <-tick.C:
		case <-f.stop:
		}
	}
}

// shutdown ends the feed: watchers' channels are closed, and it returns once the loop has
// stopped or ctx ends.
func (f *feed) shutdown(ctx context.Context) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.stop)
	for c := range f.subs {
		close(c)
	}
	f.subs = nil
	done := f.done
	f.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
}
