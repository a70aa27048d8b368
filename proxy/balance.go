package proxy

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/pushproxy/pushproxy/store"
)

// Balancing. Every instance aims at its fair share of the held streams: their number divided
// by the live instances, rounded up, and within MaxHeldStreams. A claim takes no more than
// the share (so an instance that joins takes streams as the others release them, and one
// that sheds does not take them back); an instance above its share hands the excess over, at
// most RebalanceRate streams a second: it stops their holders, commits what they read, and
// releases the leases with a notification (store.ClaimNote) on which the instances below
// their share claim at once. The next holder resumes from the committed point under a new
// lease epoch, which fences off anything the old holder still had in flight: nothing is lost
// or doubled.
//
// Streams taken over (claimed, not handed off to this instance) connect at most
// TakeoverRate a second, with jitter: an instance that inherits 50,000 streams of a dead one
// does not open 50,000 connections at once. A handoff's first connect is immediate.

// shedStep is the pause between two hand-overs while an instance is above its share.
const shedStep = 250 * time.Millisecond

// fairShare returns the streams this instance should hold, given the fleet's load.
func (s *Service) fairShare(l store.Load) int {
	alive := max(l.Alive, 1)
	share := int((l.Held + int64(alive) - 1) / int64(alive))
	if s.opts.MaxHeldStreams > 0 {
		share = min(share, s.opts.MaxHeldStreams)
	}
	return share
}

// balancing reports whether the instance balances its load with the others.
func (s *Service) balancing() bool { return s.opts.RebalanceInterval > 0 }

// claimLimit is how many streams a claim may take: a batch, within MaxHeldStreams and, when
// balancing, within the fair share.
func (s *Service) claimLimit(ctx context.Context) int {
	limit := s.opts.ClaimBatch
	s.mu.Lock()
	held := len(s.holders)
	s.mu.Unlock()
	if s.opts.MaxHeldStreams > 0 {
		limit = min(limit, s.opts.MaxHeldStreams-held)
	}
	if s.balancing() && limit > 0 {
		l, err := s.store.FleetLoad(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.ErrorContext(ctx, "counting the fleet's load failed", slog.String("error", err.Error()))
			}
			return 0
		}
		limit = min(limit, s.fairShare(l)-held)
	}
	return limit
}

// rebalance hands over streams while this instance holds more than its fair share, at most
// RebalanceRate a second. It returns when to look again: soon while there is excess left.
func (s *Service) rebalance(ctx context.Context) time.Duration {
	l, err := s.store.FleetLoad(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.ErrorContext(ctx, "counting the fleet's load failed", slog.String("error", err.Error()))
		}
		return s.opts.RebalanceInterval
	}
	share := s.fairShare(l)
	s.mu.Lock()
	excess := len(s.holders) - share
	if excess <= 0 || s.stopped {
		s.mu.Unlock()
		return s.opts.RebalanceInterval
	}
	// The streams due since the last hand-over at RebalanceRate (a slow hand-over, with
	// Postgres busy, makes the next one larger), at most a second's worth.
	since := shedStep
	if !s.lastShed.IsZero() {
		since = min(time.Since(s.lastShed), time.Second)
	}
	s.lastShed = time.Now()
	n := min(excess, max(1, int(float64(s.opts.RebalanceRate)*since.Seconds())))
	shed := make([]*holder, 0, n)
	for _, h := range s.holders { // map order: no preference among streams
		if len(shed) == n {
			break
		}
		shed = append(shed, h)
	}
	s.mu.Unlock()
	moved := s.handOver(ctx, shed)
	s.log.InfoContext(ctx, "handed streams over to balance the fleet", slog.Int("count", moved),
		slog.Int("share", share), slog.Int("instances", l.Alive), slog.Int("excess", excess-moved))
	if excess > n {
		return shedStep
	}
	s.lastShed = time.Time{}
	return s.opts.RebalanceInterval
}

// handOver stops the holders, waits for what they read to be committed, and releases their
// leases for others to claim. It returns how many leases it released.
func (s *Service) handOver(ctx context.Context, hs []*holder) int {
	if len(hs) == 0 {
		return 0
	}
	// Stop closes the committer's input once every holder and hand-over is done.
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return 0
	}
	s.holdWG.Add(1)
	s.mu.Unlock()
	defer s.holdWG.Done()
	gone := make([]<-chan struct{}, len(hs))
	ids := make([]string, len(hs))
	for i, h := range hs {
		gone[i] = h.onFinish()
		ids[i] = h.id
		s.unhold(h)
	}
	// Every holder ends soon after stop (its stream is closed, its timer stopped), and what
	// the holders queued before they ended is committed before the release: the committer
	// takes its input in order, and a flush item is answered after the commit of everything
	// queued before it. Both waits are bounded (the lease loop waits meanwhile, and a
	// committer that lags must not slow the hand-over down): past the bound the leases are
	// released anyway, the lease fence refuses what the old holders still commit, and the
	// next holders fetch it again from the origin.
	wctx, cancel := context.WithTimeout(s.holdCtx, min(time.Second, s.opts.LeaseTTL/8))
	defer cancel()
	for _, g := range gone {
		select {
		case <-g:
		case <-wctx.Done():
		}
	}
	if wctx.Err() == nil {
		done := make(chan bool, 1)
		select {
		case s.commits <- commitItem{flush: true, done: done}:
			select {
			case <-done:
			case <-wctx.Done():
			}
		case <-wctx.Done():
		}
	}
	if s.holdCtx.Err() != nil {
		return 0 // stopping: Stop releases every lease
	}
	n, err := s.store.HandOver(ctx, s.opts.InstanceID, ids)
	if err != nil && ctx.Err() == nil {
		// The holders are gone: the renewal finds the leases without one and releases them.
		s.log.ErrorContext(ctx, "handing streams over failed", slog.String("error", err.Error()))
	}
	return n
}

// connectDelay returns how long a stream just claimed waits before its first connect: claimed
// streams connect at most TakeoverRate a second, each at a random point of its slot.
func (s *Service) connectDelay() time.Duration {
	if s.opts.TakeoverRate <= 0 {
		return 0
	}
	per := time.Second / time.Duration(s.opts.TakeoverRate)
	now := time.Now()
	s.mu.Lock()
	slot := s.nextConnect
	if slot.Before(now) {
		slot = now
	}
	s.nextConnect = slot.Add(per)
	s.mu.Unlock()
	return slot.Sub(now) + rand.N(per+1)
}

// claimSoon makes the lease loop claim at once (another instance handed streams over).
func (s *Service) claimSoon() {
	select {
	case s.claimNow <- struct{}{}:
	default:
	}
}

// onNote handles a notification on store.EventsChannel: a stream's news, or streams handed
// over for claiming.
func (s *Service) onNote(payload string) {
	if payload == store.ClaimNote {
		s.claimSoon()
		return
	}
	s.hub.notify(payload)
}
