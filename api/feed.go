package api

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy/internal/startstop"
)

// feed computes a snapshot on an interval while anyone watches, and hands each new one to
// every watcher. However many dashboards are open, the database sees one query set per
// interval, and none when nobody watches.
type feed struct {
	interval time.Duration
	compute  func(context.Context) ([]byte, error)
	onError  func(error)

	loop startstop.Loop // runs while anyone watches

	mu      sync.Mutex
	subs    map[chan []byte]struct{}
	last    []byte
	running bool // the loop runs and has not decided to end
	closed  bool
}

func newFeed(interval time.Duration, compute func(context.Context) ([]byte, error), onError func(error)) *feed {
	return &feed{interval: interval, compute: compute, onError: onError, subs: map[chan []byte]struct{}{}}
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
		// A previous run that found nobody watching may not have returned yet: it needs
		// no lock to do so.
		f.loop.Stop()
		f.loop.Start(context.Background(), f.run)
	}
	return c, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, c)
	}
}

func (f *feed) run(ctx context.Context) {
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
		case <-ctx.Done():
		}
	}
}

// shutdown ends the feed: watchers' channels are closed, and it returns once the loop has
// stopped (a computation in progress is canceled).
func (f *feed) shutdown() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		for c := range f.subs {
			close(c)
		}
		f.subs = nil
	}
	f.mu.Unlock()
	f.loop.Stop()
}
