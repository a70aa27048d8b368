// Package startstop is the one lifecycle of the proxy's background loops (river's
// rivershared/startstop is the model): a Loop runs one function on a goroutine of its own,
// started once, stopped once, and waited for, so that no goroutine outlives Stop.
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrStop is the cause of a loop's context when Stop canceled it.
var ErrStop = errors.New("loop stopped")

// Loop runs one background function. The zero value is ready to use; a Loop must not be
// copied after first use.
type Loop struct {
	mu      sync.Mutex
	running bool
	cancel  context.CancelCauseFunc
	started chan struct{} // closed when the current (or next) run has begun
	stopped chan struct{} // closed when the current (or next) run has returned
}

// Start runs run(ctx) on a new goroutine, with ctx derived from parent: it ends when parent
// does or when Stop is called (its cause is then ErrStop). run must return soon after ctx
// ends. Start returns false and runs nothing while an earlier run has not returned; once it
// has (by itself or through Stop), Start runs the function again.
func (l *Loop) Start(parent context.Context, run func(ctx context.Context)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running {
		return false
	}
	l.running = true
	if l.started == nil || isClosed(l.started) {
		l.started = make(chan struct{})
	}
	if l.stopped == nil || isClosed(l.stopped) {
		l.stopped = make(chan struct{})
	}
	ctx, cancel := context.WithCancelCause(parent)
	l.cancel = cancel
	started, stopped := l.started, l.stopped
	go func() {
		defer func() {
			cancel(nil)
			l.mu.Lock()
			defer l.mu.Unlock()
			l.running = false
			close(stopped)
		}()
		close(started)
		run(ctx)
	}()
	return true
}

// Stop cancels the running function's context and returns once the function has returned.
// It does nothing on a loop that is not running, so it is idempotent; calls made at once
// all wait. It must not be called from the loop's own function.
func (l *Loop) Stop() {
	l.mu.Lock()
	if !l.running {
		l.mu.Unlock()
		return
	}
	l.cancel(ErrStop)
	stopped := l.stopped
	l.mu.Unlock()
	<-stopped
}

// Started returns a channel closed once the loop's function has begun: the current run's,
// or the next one's when it is not running and has never run.
func (l *Loop) Started() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started == nil {
		l.started = make(chan struct{})
	}
	return l.started
}

// Stopped returns a channel closed once the loop's function has returned: the current
// run's, the last one's, or (before any Start) the first one's.
func (l *Loop) Stopped() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped == nil {
		l.stopped = make(chan struct{})
	}
	return l.stopped
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
