// Package maintenance runs what one instance at a time does for the whole database: the
// retention rules (ended streams deleted, idle streams closed, old events dropped, dead and
// orphaned devices deleted, gone instances' rows deleted), failing the streams of dead
// devices, trimming the wake-up history, computing the database-wide gauges that every
// instance's /metrics reads from one row, and ending the database sessions that instances
// left stuck in a transaction (store.EndStuckSessions).
//
// The one instance is the leader: it holds a lease, a row in Postgres with an expiry and a
// fencing epoch (store.TakeLeadership). A leased row rather than a session advisory lock:
// a frozen leader (SIGSTOP, a paused VM) keeps its session and so an advisory lock forever,
// but its lease lapses by the clock, another instance takes over, and the frozen one's late
// statements are fenced off by the epoch. Every instance runs a Runner; the others wait.
//
// It is a package of its own, wired from cmd/pushproxy, rather than a loop of proxy.Service:
// it holds no upstream and serves no reader, it needs only the store, and it is started and
// tested on its own (two runners on one database).
package maintenance

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy/internal/startstop"
	"github.com/pushproxy/pushproxy/store"
)

// Rules of retention, as counted by Metrics.Retention.
const (
	RuleClosedStreams = "closed_streams" // ended streams deleted after --closed-retention
	RuleClosedEvents  = "closed_events"  // their events
	RuleIdleStreams   = "idle_streams"   // held streams closed after --stream-idle-ttl
	RuleBacklogAge    = "backlog_age"    // queued events dropped after --max-backlog-age
	RuleDeadStreams   = "dead_streams"   // streams of dead devices failed after --wake-dead-grace
	RuleDeadDevices   = "dead_devices"   // dead devices deleted after --wake-dead-grace
	RuleOrphanDevices = "orphan_devices" // devices deleted with their last stream
	RuleWakeupHistory = "wakeup_history" // finished wake-ups deleted after --wake-history
	RuleGoneInstances = "gone_instances" // rows of instances gone longer than a lease
	RuleAckedEvents   = "acked_events"   // acknowledged events' rows, reclaimed off the request path
)

// Metrics receives what the runner does. The default does nothing.
type Metrics interface {
	// Retention counts n rows deleted or closed by a rule.
	Retention(rule string, n int64)
	// Leading reports whether this instance is the maintenance leader now.
	Leading(bool)
}

type noopMetrics struct{}

func (noopMetrics) Retention(string, int64) {}
func (noopMetrics) Leading(bool)            {}

// Options configure a Runner. Zero values take the defaults of DefaultOptions, except the
// rules a zero turns off (MaxBacklogAge).
type Options struct {
	// InstanceID names this instance in the lease.
	InstanceID string
	// LeaseTTL is how long the lease lasts unrenewed: another instance takes over after it
	// when the leader dies. It is renewed every third of it.
	LeaseTTL time.Duration
	// GaugeInterval is how often the leader recomputes the gauges.
	GaugeInterval time.Duration
	// Interval is how often the leader runs the retention rules.
	Interval time.Duration
	// BatchSize bounds the rows of one statement; BatchPause is the wait between batches.
	BatchSize  int
	BatchPause time.Duration

	// ClosedRetention: ended streams (and their events) are deleted this long after they
	// ended.
	ClosedRetention time.Duration
	// StreamIdleTTL: a held stream nobody read for this long is closed.
	StreamIdleTTL time.Duration
	// MaxBacklogAge: queued events older than this are dropped (0: no bound).
	MaxBacklogAge time.Duration
	// DeadGrace: the streams of a device whose token was reported dead are failed, and the
	// device deleted, this long after.
	DeadGrace time.Duration
	// WakeupHistory: finished wake-ups are deleted this long after they finished.
	WakeupHistory time.Duration
	// InstanceGone: the row of an instance whose lease lapsed this long ago is deleted (0:
	// the lease TTL of the instances, InstanceLeaseTTL).
	InstanceGone time.Duration

	Logger  *slog.Logger
	Metrics Metrics
}

// DefaultOptions are the defaults of every option.
var DefaultOptions = Options{
	LeaseTTL:        30 * time.Second,
	GaugeInterval:   10 * time.Second,
	Interval:        time.Minute,
	BatchSize:       1000,
	BatchPause:      100 * time.Millisecond,
	ClosedRetention: 7 * 24 * time.Hour,
	StreamIdleTTL:   7 * 24 * time.Hour,
	DeadGrace:       24 * time.Hour,
	WakeupHistory:   7 * 24 * time.Hour,
	InstanceGone:    30 * time.Second,
}

func (o *Options) withDefaults() Options {
	r, d := *o, DefaultOptions
	r.LeaseTTL = cmp.Or(r.LeaseTTL, d.LeaseTTL)
	r.GaugeInterval = cmp.Or(r.GaugeInterval, d.GaugeInterval)
	r.Interval = cmp.Or(r.Interval, d.Interval)
	r.BatchSize = cmp.Or(r.BatchSize, d.BatchSize)
	r.BatchPause = cmp.Or(r.BatchPause, d.BatchPause)
	r.ClosedRetention = cmp.Or(r.ClosedRetention, d.ClosedRetention)
	r.StreamIdleTTL = cmp.Or(r.StreamIdleTTL, d.StreamIdleTTL)
	r.DeadGrace = cmp.Or(r.DeadGrace, d.DeadGrace)
	r.WakeupHistory = cmp.Or(r.WakeupHistory, d.WakeupHistory)
	r.InstanceGone = cmp.Or(r.InstanceGone, d.InstanceGone)
	if r.InstanceID == "" {
		// An empty id would be no fence at all (store.Fence's zero value).
		r.InstanceID = fmt.Sprintf("maintenance-%016x", rand.Uint64())
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics = noopMetrics{}
	}
	return r
}

// Runner takes part in the election and, while it leads, runs the maintenance.
type Runner struct {
	st   *store.Store
	opts Options
	log  *slog.Logger
	loop startstop.Loop

	mu        sync.Mutex
	fence     store.Fence // the lease held, zero when not leading
	renewedAt time.Time
	gaugesAt  time.Time
	// resign: Stop gives the lease up (a graceful shutdown); false only in tests that
	// simulate a leader killed without a word.
	resign bool
}

// New returns a runner over st.
func New(st *store.Store, opts *Options) *Runner {
	if opts == nil {
		opts = &Options{}
	}
	o := opts.withDefaults()
	return &Runner{st: st, opts: o, log: o.Logger, resign: true}
}

// Start runs the runner until Stop. Starting a running runner does nothing.
func (r *Runner) Start(ctx context.Context) {
	r.loop.Start(context.WithoutCancel(ctx), r.run)
}

// Stop stops the runner and, if it leads, gives the lease up for another instance to take
// at once. It is idempotent.
func (r *Runner) Stop() { r.loop.Stop() }

// Abandon stops the runner without giving up its lease, as a leader killed with SIGKILL
// would: the others take over only when the lease lapses. For tests.
func (r *Runner) Abandon() {
	r.mu.Lock()
	r.resign = false
	r.mu.Unlock()
	r.loop.Stop()
}

// ID is the id the runner leads under.
func (r *Runner) ID() string { return r.opts.InstanceID }

// Leading reports whether the runner holds the lease now (as of its last renewal).
func (r *Runner) Leading() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fence.Epoch != 0 && time.Since(r.renewedAt) < r.opts.LeaseTTL
}

func (r *Runner) run(ctx context.Context) {
	defer func() {
		r.mu.Lock()
		f, resign := r.fence, r.resign
		r.fence = store.Fence{}
		r.mu.Unlock()
		r.opts.Metrics.Leading(false)
		if f.Epoch != 0 && resign {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := r.st.ResignLeadership(ctx, f); err != nil {
				r.log.WarnContext(ctx, "giving up the maintenance lease", slog.String("error", err.Error()))
			}
		}
	}()
	var lastPass time.Time
	for ctx.Err() == nil {
		// A follower looks at the lease every third of it; the leader wakes for whatever is
		// due first: a renewal, the gauges, the next pass.
		wait := r.opts.LeaseTTL / 3
		if r.tick(ctx) {
			if time.Since(lastPass) >= r.opts.Interval {
				lastPass = time.Now()
				r.pass(ctx)
			}
			wait = min(wait, r.opts.GaugeInterval, max(0, r.opts.Interval-time.Since(lastPass)))
		}
		if !sleep(ctx, wait+rand.N(wait/10+1)) {
			return
		}
	}
}

// tick renews (or tries to take) the lease when a third of it has passed, and recomputes
// the gauges when they are due. It reports whether the runner leads.
func (r *Runner) tick(ctx context.Context) bool {
	r.mu.Lock()
	due := r.fence.Epoch == 0 || time.Since(r.renewedAt) >= r.opts.LeaseTTL/3
	r.mu.Unlock()
	if due {
		// The lease is counted from before the statement: a slow answer shortens it.
		start := time.Now()
		f, ok, err := r.st.TakeLeadership(ctx, r.opts.InstanceID, r.opts.LeaseTTL)
		if err != nil {
			if ctx.Err() == nil {
				r.log.WarnContext(ctx, "maintenance lease", slog.String("error", err.Error()))
			}
			ok = false
		}
		r.mu.Lock()
		was := r.fence
		if ok {
			r.fence, r.renewedAt = f, start
		} else if err == nil || time.Since(r.renewedAt) >= r.opts.LeaseTTL {
			r.fence = store.Fence{}
		}
		now := r.fence
		r.mu.Unlock()
		if now.Epoch != was.Epoch {
			if now.Epoch != 0 {
				r.log.InfoContext(ctx, "leading maintenance", slog.Int64("epoch", now.Epoch))
			} else {
				r.log.InfoContext(ctx, "no longer leading maintenance")
			}
			r.opts.Metrics.Leading(now.Epoch != 0)
		}
	}
	f, ok := r.leading()
	if !ok {
		return false
	}
	// The sessions instances left stuck in a transaction (a COPY frozen with its instance)
	// are ended at each tick once the instance's lease lapsed, or after a lease: their
	// streams' rows are released for the claims of the others.
	if n, err := r.st.EndStuckSessions(ctx, r.opts.InstanceID, r.opts.LeaseTTL); err != nil {
		if ctx.Err() == nil {
			r.log.WarnContext(ctx, "ending the stuck sessions of instances", slog.String("error", err.Error()))
		}
	} else if n > 0 {
		r.log.WarnContext(ctx, "ended database sessions that instances left stuck in a transaction", slog.Int64("sessions", n))
	}
	r.mu.Lock()
	gaugesDue := time.Since(r.gaugesAt) >= r.opts.GaugeInterval
	r.mu.Unlock()
	if gaugesDue {
		if err := r.st.RefreshGauges(ctx, f); err != nil {
			if ctx.Err() == nil {
				r.log.WarnContext(ctx, "computing the gauges", slog.String("error", err.Error()))
			}
		} else {
			r.mu.Lock()
			r.gaugesAt = time.Now()
			r.mu.Unlock()
		}
	}
	return true
}

func (r *Runner) leading() (store.Fence, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fence, r.fence.Epoch != 0
}

// RunOnce takes (or renews) the lease and, if it leads, runs one pass: every rule until it
// has nothing left to do, or for Interval at most. It reports whether it led. For tests and operators' one-off runs; Start does this on its own.
func (r *Runner) RunOnce(ctx context.Context) bool {
	if !r.tick(ctx) {
		return false
	}
	r.pass(ctx)
	return true
}

// pass runs every rule, batch after batch, until each has nothing left to do, Interval has
// passed, the lease is lost, or ctx ends.
func (r *Runner) pass(ctx context.Context) {
	o := r.opts
	n := o.BatchSize
	rules := []struct {
		name string
		run  func(f store.Fence) (int64, bool, error) // rows, more to do
	}{
		{RuleDeadStreams, func(f store.Fence) (int64, bool, error) {
			k, err := r.st.FailDeadDevices(ctx, f, time.Now(), o.DeadGrace, n)
			return k, k >= int64(n), err
		}},
		{RuleDeadDevices, func(f store.Fence) (int64, bool, error) {
			k, err := r.st.DeleteDeadDevices(ctx, f, time.Now(), o.DeadGrace, n)
			return k, k >= int64(n), err
		}},
		{RuleIdleStreams, func(f store.Fence) (int64, bool, error) {
			k, err := r.st.CloseIdleStreams(ctx, f, o.StreamIdleTTL, n)
			return k, k >= int64(n), err
		}},
		{RuleClosedStreams, func(f store.Fence) (int64, bool, error) { return r.deleteEnded(ctx, f) }},
		{RuleWakeupHistory, func(f store.Fence) (int64, bool, error) {
			k, err := r.st.TrimWakeups(ctx, f, time.Now().Add(-o.WakeupHistory), n)
			return k, k >= int64(n), err
		}},
		{RuleGoneInstances, func(f store.Fence) (int64, bool, error) {
			k, err := r.st.ReleaseGoneInstances(ctx, f, o.InstanceGone, n)
			return k, false, err
		}},
		{RuleAckedEvents, func(store.Fence) (int64, bool, error) {
			// Not fenced: deleting rows below a floor is the same whoever does it.
			k, err := r.st.ReclaimAcked(ctx, n, 10*n)
			return k, k >= int64(10*n), err
		}},
	}
	if o.MaxBacklogAge > 0 {
		var after string
		rules = append(rules, struct {
			name string
			run  func(f store.Fence) (int64, bool, error)
		}{RuleBacklogAge, func(f store.Fence) (int64, bool, error) {
			k, last, err := r.st.TrimOldEvents(ctx, f, o.MaxBacklogAge, after, n)
			after = last
			return k, last != "", err
		}})
	}
	// The rules run in rounds, in order (a rule may leave work for the next: failed
	// streams, then their devices), each at most turnBatches batches a round; a rule that
	// is done leaves the rounds, which go on while any has more to do. One with a long queue
	// (acknowledged rows under heavy reading) does not hold the others up for the pass, and
	// a pass ends after Interval, so that the next one (due at once) gives every rule its
	// turn again: streams that expired meanwhile do not wait for a queue to drain.
	start := time.Now()
	for len(rules) > 0 && time.Since(start) < o.Interval {
		left := rules[:0] // (written behind the range: never ahead of it)
		for _, rule := range rules {
			done := true
			for range turnBatches {
				f, ok := r.leading()
				if !ok || ctx.Err() != nil {
					return
				}
				k, again, err := rule.run(f)
				if err != nil {
					if ctx.Err() == nil {
						r.log.WarnContext(ctx, "maintenance", slog.String("rule", rule.name), slog.String("error", err.Error()))
					}
					break
				}
				if k > 0 {
					r.opts.Metrics.Retention(rule.name, k)
					r.log.DebugContext(ctx, "maintenance", slog.String("rule", rule.name), slog.Int64("rows", k))
				}
				if done = !again; done {
					break
				}
				if !sleep(ctx, o.BatchPause) || !r.tick(ctx) {
					return
				}
			}
			if !done {
				left = append(left, rule)
			}
		}
		rules = left
	}
}

// turnBatches is how many batches a retention rule runs before the next rule's turn.
const turnBatches = 10

// deleteEnded deletes one batch of ended streams past the closed retention: their events
// first (in batches), then their rows and the devices left without a stream.
func (r *Runner) deleteEnded(ctx context.Context, f store.Fence) (int64, bool, error) {
	n := r.opts.BatchSize
	ids, err := r.st.ExpiredStreams(ctx, r.opts.ClosedRetention, n)
	if err != nil || len(ids) == 0 {
		return 0, false, err
	}
	for {
		k, err := r.st.DeleteEventsOf(ctx, f, ids, n)
		if err != nil {
			return 0, false, err
		}
		if k > 0 {
			r.opts.Metrics.Retention(RuleClosedEvents, k)
		}
		if k < int64(n) {
			break
		}
		if !sleep(ctx, r.opts.BatchPause) || !r.tick(ctx) {
			return 0, false, ctx.Err()
		}
		if f, _ = r.leading(); f.Epoch == 0 {
			return 0, false, nil
		}
	}
	streams, devices, err := r.st.DeleteStreams(ctx, f, ids)
	if devices > 0 {
		r.opts.Metrics.Retention(RuleOrphanDevices, devices)
	}
	// More may be due when the batch was full and went through; a batch that deleted
	// nothing (its streams locked, or the lease lost) waits for the next pass.
	return streams, len(ids) >= n && streams > 0, err
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
