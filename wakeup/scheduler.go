package wakeup

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/startstop"
)

// Queue is the durable outbox of wake-ups the scheduler works from (store.Store).
type Queue interface {
	ClaimWakeups(ctx context.Context, owner string, now time.Time, ttl time.Duration, limit int, window time.Duration) ([]pushproxy.Wakeup, error)
	FinishWakeups(ctx context.Context, owner string, now time.Time, results []pushproxy.WakeupResult) error
	NextWakeupDue(ctx context.Context) (time.Time, bool, error)
}

// Metrics receives what the scheduler measures. The default does nothing.
type Metrics interface {
	// Wakeup counts one wake-up that ended with outcome; latency runs from its due time to
	// the platform's answer (0 for wake-ups not sent).
	Wakeup(platform, outcome string, latency time.Duration)
}

type noopMetrics struct{}

func (noopMetrics) Wakeup(string, string, time.Duration) {}

// OutcomeBudget records a wake-up put back because the device's hourly budget was spent.
const OutcomeBudget = "budget"

// Options configure a Scheduler. Zero values take the defaults of DefaultOptions.
type Options struct {
	// InstanceID names this instance in wake-up leases.
	InstanceID string
	// Budgets are the pushes allowed per device per BudgetWindow, by platform.
	BudgetAPNs, BudgetFCM, BudgetWebPush int
	BudgetWindow                         time.Duration
	// Jitter spreads retries and budget waits.
	Jitter time.Duration
	// LeaseTTL bounds a send: a wake-up claimed by an instance that died is taken over after it.
	LeaseTTL time.Duration
	// ClaimBatch is the most wake-ups claimed at once; MaxInFlight the most sends at once.
	ClaimBatch, MaxInFlight int
	// Dispatchers is how many claim-send-record loops run at once, so that one batch's
	// database round trips overlap another's sends.
	Dispatchers int
	// RetryBase and RetryMax bound the backoff of retried sends.
	RetryBase, RetryMax time.Duration
	// PushTTL is how long a platform keeps an undelivered push.
	PushTTL time.Duration
	// PollInterval bounds the wait between looks at the queue when nothing kicks it (wake-ups
	// queued by other instances, retries).
	PollInterval time.Duration
	// AlertText, when set, makes urgent APNs wake-ups alert pushes with this text and
	// mutable-content (APNs background pushes cannot be high priority).
	AlertText string
	// Rearm queues wake-ups again for devices whose wake-up was skipped (awake, nothing
	// pending) when events may have been committed after it was claimed (store.RearmWakeups
	// with the commit path's policy). nil: not done.
	Rearm func(ctx context.Context, devices []string) error
	// Now is the clock (tests inject one); nil means time.Now.
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics Metrics
}

// DefaultOptions are the defaults of every option.
var DefaultOptions = Options{
	BudgetAPNs: 3, // Apple asks for no more than a few background pushes per hour
	BudgetFCM:  12,
	// Browsers do not publish a budget for pushes without a notification (Chrome
	// tolerates a few before it shows one of its own); the wake-ups are silent to the user
	// only while the service worker does not have to show one, so as many as FCM.
	BudgetWebPush: 12,
	BudgetWindow:  time.Hour,
	Jitter:        time.Second,
	LeaseTTL:      2 * time.Minute, // well beyond a send's timeout and its wait for a slot
	ClaimBatch:    1000,
	MaxInFlight:   1000,
	Dispatchers:   2,
	RetryBase:     time.Second,
	RetryMax:      5 * time.Minute,
	PushTTL:       time.Hour,
	PollInterval:  time.Second,
}

func (o *Options) withDefaults() Options {
	r := *o
	d := DefaultOptions
	r.BudgetAPNs = cmp.Or(r.BudgetAPNs, d.BudgetAPNs)
	r.BudgetFCM = cmp.Or(r.BudgetFCM, d.BudgetFCM)
	r.BudgetWebPush = cmp.Or(r.BudgetWebPush, d.BudgetWebPush)
	r.BudgetWindow = cmp.Or(r.BudgetWindow, d.BudgetWindow)
	r.LeaseTTL = cmp.Or(r.LeaseTTL, d.LeaseTTL)
	r.ClaimBatch = cmp.Or(r.ClaimBatch, d.ClaimBatch)
	r.MaxInFlight = cmp.Or(r.MaxInFlight, d.MaxInFlight)
	r.Dispatchers = cmp.Or(r.Dispatchers, d.Dispatchers)
	r.RetryBase = cmp.Or(r.RetryBase, d.RetryBase)
	r.RetryMax = cmp.Or(r.RetryMax, d.RetryMax)
	r.PushTTL = cmp.Or(r.PushTTL, d.PushTTL)
	r.PollInterval = cmp.Or(r.PollInterval, d.PollInterval)
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics = noopMetrics{}
	}
	return r
}

// Scheduler sends the wake-ups queued in the outbox: one push per device and wake-up,
// within each device's budget, never to a device that is awake or dead, retried with backoff
// when the platform fails. Several instances may run schedulers on one queue.
type Scheduler struct {
	q       Queue
	senders map[string]Sender
	opts    Options
	log     *slog.Logger

	kick     chan struct{}
	sem      chan struct{}
	dispatch startstop.Loop // runs the dispatchers
}

// New returns a scheduler sending through senders (by platform: "apns", "fcm", "webpush");
// a platform without a sender gets its wake-ups skipped (outcome no-sender).
func New(q Queue, senders map[string]Sender, opts *Options) *Scheduler {
	if opts == nil {
		opts = &Options{}
	}
	o := opts.withDefaults()
	return &Scheduler{
		q: q, senders: senders, opts: o, log: o.Logger,
		kick: make(chan struct{}, 1),
		sem:  make(chan struct{}, o.MaxInFlight),
	}
}

// Kick tells the scheduler that wake-ups may be due now. It never blocks.
func (s *Scheduler) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Start runs the scheduler until Stop (ctx's values reach it, not its end). Starting a
// running scheduler does nothing.
func (s *Scheduler) Start(ctx context.Context) {
	s.dispatch.Start(context.WithoutCancel(ctx), func(ctx context.Context) {
		var wg sync.WaitGroup
		for range s.opts.Dispatchers {
			wg.Go(func() { s.loop(ctx) })
		}
		wg.Wait()
	})
}

// Stop stops the scheduler and waits for the sends in flight. It is idempotent.
func (s *Scheduler) Stop() { s.dispatch.Stop() }

// Stopped returns a channel closed once the scheduler has stopped (see startstop.Loop).
func (s *Scheduler) Stopped() <-chan struct{} { return s.dispatch.Stopped() }

func (s *Scheduler) loop(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		n, err := s.RunOnce(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait := backoff(failures, time.Second, 30*time.Second)
			s.log.ErrorContext(ctx, "wake-up scheduler failed; retrying", slog.String("error", err.Error()), slog.Duration("in", wait))
			if !sleep(ctx, wait, nil) {
				return
			}
			continue
		}
		failures = 0
		if n >= s.opts.ClaimBatch {
			continue // more may be due
		}
		wait := s.opts.PollInterval
		if due, ok, err := s.q.NextWakeupDue(ctx); err == nil && ok {
			wait = min(wait, max(0, due.Sub(s.opts.Now())))
		}
		if !sleep(ctx, wait, s.kick) {
			return
		}
	}
}

// RunOnce claims the wake-ups due now, sends those that should go, and records every
// outcome. It returns how many it claimed.
func (s *Scheduler) RunOnce(ctx context.Context) (int, error) {
	now := s.opts.Now()
	ws, err := s.q.ClaimWakeups(ctx, s.opts.InstanceID, now, s.opts.LeaseTTL, s.opts.ClaimBatch, s.opts.BudgetWindow)
	if err != nil || len(ws) == 0 {
		return 0, err
	}
	results := make([]pushproxy.WakeupResult, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		r, send := s.decide(w, now)
		if !send {
			results[i] = r
			s.opts.Metrics.Wakeup(w.Push.Platform, r.Outcome, 0)
			continue
		}
		s.sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-s.sem; wg.Done() }()
			results[i] = s.send(ctx, w)
		}()
	}
	wg.Wait()
	// Shutting down must not lose what was sent: record it with a context of its own.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.q.FinishWakeups(fctx, s.opts.InstanceID, s.opts.Now(), results); err != nil {
		return len(ws), err
	}
	// Events committed while a skipped wake-up was claimed found it outstanding and queued
	// nothing: look again for those devices.
	var rearm []string
	for _, r := range results {
		if r.RetryAt.IsZero() && (r.Outcome == pushproxy.OutcomeAwake || r.Outcome == pushproxy.OutcomeNothingPending) {
			rearm = append(rearm, r.DeviceID)
		}
	}
	if len(rearm) > 0 && s.opts.Rearm != nil {
		if err := s.opts.Rearm(fctx, rearm); err != nil {
			return len(ws), err
		}
		s.Kick()
	}
	return len(ws), nil
}

// decide returns whether w should be sent now; when not, the result to record.
func (s *Scheduler) decide(w pushproxy.Wakeup, now time.Time) (pushproxy.WakeupResult, bool) {
	r := pushproxy.WakeupResult{ID: w.ID, DeviceID: w.DeviceID, Pending: total(w.Pending)}
	switch {
	case w.Dead:
		r.Outcome = pushproxy.OutcomeDead
	case w.Awake:
		// The reader's close queues a new wake-up if events are left undelivered.
		r.Outcome = pushproxy.OutcomeAwake
	case len(w.Pending) == 0:
		r.Outcome = pushproxy.OutcomeNothingPending
	case s.senders[w.Push.Platform] == nil:
		r.Outcome = pushproxy.OutcomeNoSender
		r.Error = "no " + w.Push.Platform + " credentials configured"
	case w.Push.Platform == pushproxy.PlatformWebPush && w.Push.WebPushAuth == "":
		// Not the subscription's fault: its sealed secret needs a key this instance lacks.
		r.Outcome = pushproxy.OutcomeNoSender
		r.Error = "the subscription's auth secret is sealed under a key not in --secret-key-file"
	default:
		if at, ok := s.budgetAllows(w, now); !ok {
			r.Outcome = OutcomeBudget
			r.RetryAt = at.Add(jitter(s.opts.Jitter))
			return r, false
		}
		return r, true
	}
	return r, false
}

// budgetAllows reports whether the device's budget allows a push at now; if not, when it
// does next.
func (s *Scheduler) budgetAllows(w pushproxy.Wakeup, now time.Time) (time.Time, bool) {
	budget := s.opts.BudgetFCM
	switch w.Push.Platform {
	case pushproxy.PlatformAPNs:
		budget = s.opts.BudgetAPNs
	case pushproxy.PlatformWebPush:
		budget = s.opts.BudgetWebPush
	}
	return NextAllowed(w.RecentSends, now, budget, s.opts.BudgetWindow)
}

// NextAllowed applies a budget of pushes per window: given the times of recent sends, it
// reports whether one more is allowed at now, and if not, the earliest time it is (when the
// oldest send that counts leaves the window).
func NextAllowed(sends []time.Time, now time.Time, budget int, window time.Duration) (time.Time, bool) {
	var in []time.Time
	for _, t := range sends {
		if t.After(now.Add(-window)) && !t.After(now) {
			in = append(in, t)
		}
	}
	if len(in) < budget {
		return now, true
	}
	// The (len-budget)-th oldest must leave the window for a slot to open.
	return in[len(in)-budget].Add(window), false
}

func (s *Scheduler) send(ctx context.Context, w pushproxy.Wakeup) pushproxy.WakeupResult {
	r := pushproxy.WakeupResult{ID: w.ID, DeviceID: w.DeviceID, Pending: total(w.Pending)}
	p := Push{
		ID: w.ID, Platform: w.Push.Platform, Token: w.Push.Token, Topic: w.Push.Topic,
		Environment: w.Push.Environment, Urgent: w.Urgent, CollapseID: "pushproxy-wakeup",
		TTL: s.opts.PushTTL, Pending: w.Pending,
	}
	if w.Urgent {
		p.AlertText = s.opts.AlertText
	}
	if w.Push.Platform == pushproxy.PlatformWebPush {
		p.WebPushKeys = &WebPushKeys{P256dh: w.Push.WebPushP256dh, Auth: w.Push.WebPushAuth}
	}
	id, err := s.senders[w.Push.Platform].Send(ctx, p)
	now := s.opts.Now()
	latency := max(0, now.Sub(w.DueAt))
	if err == nil {
		r.Outcome, r.PushID = pushproxy.OutcomeSent, id
		s.opts.Metrics.Wakeup(w.Push.Platform, r.Outcome, latency)
		return r
	}
	var se *SendError
	if !errors.As(err, &se) {
		se = &SendError{Kind: KindRetry, Err: err}
	}
	if ctx.Err() != nil {
		// Shutting down: the push may not have gone; leave it due for whoever runs next.
		r.Outcome, r.Error, r.RetryAt = pushproxy.OutcomeRetry, "interrupted by shutdown", now
		return r
	}
	r.Error = se.Error()
	retry := now.Add(backoff(w.Attempts, s.opts.RetryBase, s.opts.RetryMax) + jitter(s.opts.Jitter))
	switch se.Kind {
	case KindTokenGone:
		r.Outcome = pushproxy.OutcomeTokenGone
		r.Error = se.Reason
		if r.Error == "" {
			r.Error = se.Error()
		}
	case KindThrottled:
		r.Outcome = pushproxy.OutcomeThrottled
		if se.RetryAfter > 0 {
			retry = later(retry, now.Add(se.RetryAfter))
		}
		r.RetryAt, r.ThrottledUntil = retry, retry
	case KindCredentials:
		r.Outcome, r.RetryAt = pushproxy.OutcomeCredentials, retry
		s.log.ErrorContext(ctx, "push credentials refused", slog.String("platform", w.Push.Platform), slog.String("error", maskToken(se.Error(), p.Token)))
	case KindInvalid:
		r.Outcome = pushproxy.OutcomeInvalid
	default:
		r.Outcome, r.RetryAt = pushproxy.OutcomeRetry, retry
	}
	s.opts.Metrics.Wakeup(w.Push.Platform, r.Outcome, latency)
	return r
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func total(pending map[string]int64) int64 {
	var n int64
	for _, c := range pending {
		n += c
	}
	return n
}

// backoff is base·2^(attempt-1), capped.
func backoff(attempt int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// sleep waits for d, a kick, or the end of ctx; it reports false when ctx ended.
func sleep(ctx context.Context, d time.Duration, kick <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-kick:
	}
	return true
}
