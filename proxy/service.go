package proxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/startstop"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/internal/upstream/h1client"
	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/store"
)

// Options configure a Service. A zero field takes its value in DefaultOptions, except the
// fields whose comment gives zero (or nil) a meaning of its own: InstanceID, MaxHeldStreams,
// Upstream, UpstreamH2C, UpstreamIdleTimeout, Wake, Waker, Logger and Metrics.
type Options struct {
	// InstanceID names this instance in leases and reader presence ("": host-pid-random).
	InstanceID string
	// LeaseTTL is how long a lease lasts without renewal; an instance that dies loses its
	// streams to the others after this long.
	LeaseTTL time.Duration
	// ClaimInterval is how often the instance looks for streams nobody holds.
	ClaimInterval time.Duration
	// ClaimBatch bounds how many streams one claim takes.
	ClaimBatch int
	// MaxHeldStreams bounds the streams this instance holds (0: no bound).
	MaxHeldStreams int
	// RebalanceInterval is how often the instance compares the streams it holds with its
	// fair share (held streams / live instances) and hands the excess over to the others;
	// claims then take no more than the share. Negative: no balancing (claims take what
	// they find, nothing is handed over).
	RebalanceInterval time.Duration
	// RebalanceRate bounds the streams handed over per second while above the share.
	RebalanceRate int
	// TakeoverRate bounds the first connects per second of streams this instance claims
	// (taken over from a dead or stopped instance, or handed over), spread with jitter;
	// handoffs to this instance connect at once. Negative: no bound.
	TakeoverRate int

	// MaxEventSize bounds one upstream event (and line), in bytes.
	MaxEventSize int
	// MaxBacklog bounds the events queued per stream; older ones are dropped.
	MaxBacklog int64
	// MaxBacklogBytes bounds the stored bytes queued per stream (0: no bound); older events
	// are dropped.
	MaxBacklogBytes int64
	// MaxStreamsPerDevice bounds the streams held for one device.
	MaxStreamsPerDevice int
	// MaxStreamsPerKey bounds the streams held under one API key (0: no bound).
	MaxStreamsPerKey int
	// MaxReadersPerStream bounds the events readers open at once on one stream, over all
	// instances (0: no bound).
	MaxReadersPerStream int
	// CommitBatch bounds the events committed in one transaction.
	CommitBatch int
	// CommitQueue bounds the events waiting for the committer; holders block beyond it.
	CommitQueue int

	// Upstream is the allow-list of the origins the proxy may dial (nil: any public host).
	Upstream *upstream.AllowList
	// UpstreamH2C speaks HTTP/2 without TLS (prior knowledge) to http:// origins.
	UpstreamH2C bool
	// UpstreamRetry is the reconnect delay when the origin sent no retry: field.
	UpstreamRetry time.Duration
	// UpstreamBackoffMax caps the reconnect delay.
	UpstreamBackoffMax time.Duration
	// UpstreamMaxRedirects bounds redirects followed per connect.
	UpstreamMaxRedirects int
	// UpstreamConnectTimeout bounds the connection (TCP, TLS) and the request's write; the
	// wait for the response head is bounded by UpstreamIdleTimeout.
	UpstreamConnectTimeout time.Duration
	// UpstreamIdleTimeout reconnects a stream that sent nothing for this long, its head
	// included (0: never, not DefaultOptions' value).
	UpstreamIdleTimeout time.Duration

	// ReaderTTL is how long a reader's presence outlives its instance's last refresh.
	ReaderTTL time.Duration
	// ReaderPoll is how often the instance polls the heads of the streams it has readers
	// of, to ring readers whose notification was missed (a listener reconnecting, a full
	// notification queue): the longest a reader waits for an event then.
	ReaderPoll time.Duration

	// Wake, when set, queues wake-ups for sleeping devices in the transactions that commit
	// their events, and after a device's last reader closes with events undelivered.
	Wake *store.WakePolicy
	// Waker is told when wake-ups may have been queued, so it sends them without polling
	// (nil: nobody is told).
	Waker Waker

	Logger  *slog.Logger // nil: discard
	Metrics Metrics      // nil: measure nothing
}

// SetWaker sets the Waker after New (it usually needs the service's instance id). Call it
// before Start.
func (s *Service) SetWaker(w Waker) { s.opts.Waker = w }

// wakeAfterReaders queues wake-ups for devices whose readers went away without closing (their
// instance died): they are asleep, maybe with events those readers were never sent.
func (s *Service) wakeAfterReaders(ctx context.Context, devices []string) {
	if s.opts.Wake == nil || len(devices) == 0 {
		return
	}
	if err := s.store.RearmWakeups(ctx, devices, s.opts.Wake); err != nil && ctx.Err() == nil {
		s.log.ErrorContext(ctx, "queueing wake-ups after lost readers failed", slog.String("error", err.Error()))
	}
	s.kick()
}

// kick tells the waker, if any, that wake-ups may have been queued.
func (s *Service) kick() {
	if s.opts.Waker != nil {
		s.opts.Waker.Kick()
	}
}

// Waker is told when wake-ups may have been queued.
type Waker interface {
	Kick()
}

// DefaultOptions are the values New gives zero fields (see Options for the exceptions), and
// the defaults of `pushproxy serve`'s flags: UpstreamIdleTimeout is one of those only.
var DefaultOptions = Options{
	LeaseTTL:               30 * time.Second,
	ClaimInterval:          2 * time.Second,
	ClaimBatch:             1000,
	RebalanceInterval:      5 * time.Second,
	RebalanceRate:          500,
	TakeoverRate:           1000,
	MaxEventSize:           1 << 20,
	MaxBacklog:             10000,
	MaxStreamsPerDevice:    32,
	CommitBatch:            4096,
	CommitQueue:            16384,
	UpstreamRetry:          3 * time.Second,
	UpstreamBackoffMax:     5 * time.Minute,
	UpstreamMaxRedirects:   5,
	UpstreamConnectTimeout: 30 * time.Second,
	UpstreamIdleTimeout:    10 * time.Minute,
	ReaderTTL:              60 * time.Second,
	ReaderPoll:             time.Second,
}

// NewInstanceID returns an instance id for an instance given none: host-pid-random.
func NewInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func (o *Options) withDefaults() Options {
	r := *o
	d := DefaultOptions
	r.LeaseTTL = cmp.Or(r.LeaseTTL, d.LeaseTTL)
	r.ClaimInterval = cmp.Or(r.ClaimInterval, d.ClaimInterval)
	r.ClaimBatch = cmp.Or(r.ClaimBatch, d.ClaimBatch)
	r.RebalanceInterval = cmp.Or(r.RebalanceInterval, d.RebalanceInterval)
	r.RebalanceRate = cmp.Or(r.RebalanceRate, d.RebalanceRate)
	r.TakeoverRate = cmp.Or(r.TakeoverRate, d.TakeoverRate)
	r.MaxEventSize = cmp.Or(r.MaxEventSize, d.MaxEventSize)
	r.MaxBacklog = cmp.Or(r.MaxBacklog, d.MaxBacklog)
	r.MaxStreamsPerDevice = cmp.Or(r.MaxStreamsPerDevice, d.MaxStreamsPerDevice)
	r.CommitBatch = cmp.Or(r.CommitBatch, d.CommitBatch)
	r.CommitQueue = cmp.Or(r.CommitQueue, d.CommitQueue)
	r.UpstreamRetry = cmp.Or(r.UpstreamRetry, d.UpstreamRetry)
	r.UpstreamBackoffMax = cmp.Or(r.UpstreamBackoffMax, d.UpstreamBackoffMax)
	r.UpstreamMaxRedirects = cmp.Or(r.UpstreamMaxRedirects, d.UpstreamMaxRedirects)
	r.UpstreamConnectTimeout = cmp.Or(r.UpstreamConnectTimeout, d.UpstreamConnectTimeout)
	r.ReaderTTL = cmp.Or(r.ReaderTTL, d.ReaderTTL)
	r.ReaderPoll = cmp.Or(r.ReaderPoll, d.ReaderPoll)
	if r.InstanceID == "" {
		r.InstanceID = NewInstanceID()
	}
	if r.Upstream == nil {
		r.Upstream, _ = upstream.ParseAllowList(nil)
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics = noopMetrics{}
	}
	return r
}

// Metrics receives what the service measures. The default does nothing.
type Metrics interface {
	// Reconnect counts an upstream reconnect by kind: connect, status, eof, read, idle.
	Reconnect(kind string)
	// Committed records one batch commit.
	Committed(res store.CommitResult, streams int, took time.Duration)
}

type noopMetrics struct{}

func (noopMetrics) Reconnect(string)                                 {}
func (noopMetrics) Committed(store.CommitResult, int, time.Duration) {}

// Service is the proxy's engine: the holders of upstream streams, the committer that batches
// their events into Postgres, the lease loop, and the hub that wakes event readers. Its
// exported methods are what the HTTP surface (package api) needs.
type Service struct {
	opts       Options
	store      *store.Store
	dbURL      string
	log        *slog.Logger
	metrics    Metrics
	h1         *h1client.Client // upstreams over HTTP/1.1
	parserOpts sse.ParserOptions
	h2         *h2client.Pool // upstreams over HTTP/2

	commits chan commitItem
	com     *committer
	hub     *hub
	pages   *pageReader

	mu      sync.Mutex
	holders map[string]*holder // by stream id
	holdSeq uint64             // numbers holders in the order they started
	holdWG  sync.WaitGroup     // every holder goroutine, replaced and unheld ones included
	orphans map[string]bool    // streams leased to us without a holder at the last renewal
	stopped bool

	nextConnect time.Time     // the next free slot for a claimed stream's first connect
	lastShed    time.Time     // the last hand-over of a series (lease loop only)
	claimNow    chan struct{} // rung when another instance handed streams over

	stopOnce sync.Once
	stopErr  error

	ctx        context.Context // the lifetime of holders and background loops
	cancel     context.CancelFunc
	holdCtx    context.Context
	holdEnd    context.CancelFunc
	listener   *store.Listener
	committing startstop.Loop // the committer
	leases     startstop.Loop // claims and renewals (runLeases)
	polling    startstop.Loop // the readers' slow poll (runPoll)
	running    bool           // Start succeeded

	// testClaim, when set (by tests), is called as each claim begins (true) and ends.
	testClaim func(begin bool)
	// testHandoff, when set (by tests), is called as a handoff has chosen its lease owner.
	testHandoff func()
}

// New returns a Service on st. dbURL is used for the LISTEN connection.
func New(st *store.Store, dbURL string, opts *Options) *Service {
	if opts == nil {
		opts = &Options{}
	}
	o := opts.withDefaults()
	s := &Service{
		opts:     o,
		store:    st,
		dbURL:    dbURL,
		log:      o.Logger,
		metrics:  o.Metrics,
		holders:  map[string]*holder{},
		hub:      newHub(),
		claimNow: make(chan struct{}, 1),
		pages:    newPageReader(st),
	}
	dial := o.Upstream.Dialer(&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second})
	s.h1 = h1client.New(h1client.Options{Dial: dial})
	s.h2 = h2client.NewPool(h2client.Options{
		Dial: dial,
		H2C:  o.UpstreamH2C,
		// Find dead connections under idle streams.
		PingInterval: 30 * time.Second, PingTimeout: 15 * time.Second, IdleTimeout: 90 * time.Second,
	})
	s.parserOpts = sse.ParserOptions{MaxEventSize: o.MaxEventSize}
	s.commits = make(chan commitItem, o.CommitQueue)
	s.com = &committer{
		in:          s.commits,
		store:       st,
		owner:       o.InstanceID,
		opts:        store.CommitOptions{MaxBacklog: o.MaxBacklog, MaxBacklogBytes: o.MaxBacklogBytes, Wake: o.Wake},
		maxBatch:    o.CommitBatch,
		log:         o.Logger,
		onLost:      s.lost,
		metrics:     o.Metrics.Committed,
		onWake:      s.kick,
		onCommitted: s.ringCommitted,
	}
	return s
}

// InstanceID returns the name this instance holds leases under.
func (s *Service) InstanceID() string { return s.opts.InstanceID }

// Start starts the background work: the notification listener, the committer, and the lease
// loop (claims, renewals and reader presence). It connects to the database first, so that a
// bad configuration fails here; ctx bounds only that.
func (s *Service) Start(ctx context.Context) error {
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.holdCtx, s.holdEnd = context.WithCancel(s.ctx)
	// A previous run under the same instance id died without releasing its leases and
	// readers (a crash, SIGKILL): they are this run's to take over now, not after the TTL.
	if err := s.store.ReleaseLeases(ctx, s.opts.InstanceID); err != nil {
		s.cancel()
		return err
	}
	devices, err := s.store.DropReaders(ctx, s.opts.InstanceID)
	if err != nil {
		s.cancel()
		return err
	}
	s.wakeAfterReaders(ctx, devices)
	// The instance lease must be live before a handoff makes this instance a stream's owner.
	if err := s.store.RenewInstance(ctx, s.opts.InstanceID, s.opts.LeaseTTL); err != nil {
		s.cancel()
		return err
	}
	// Readers' notifications come on this instance's own channel; claim notes (streams
	// released by another instance) on the shared one.
	s.listener = store.NewListener(s.dbURL, store.ReaderChannel(s.opts.InstanceID), s.log, s.onNote, s.hub.notifyAll)
	s.listener.SessionOf(s.opts.InstanceID)
	s.listener.Also(store.EventsChannel)
	if err := s.listener.Start(ctx); err != nil {
		s.cancel()
		return err
	}
	s.committing.Start(s.ctx, s.com.run)
	s.leases.Start(s.ctx, s.runLeases)
	s.polling.Start(s.ctx, s.runPoll)
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	return nil
}

// Stop stops holding streams: holders end, what they handed over is committed, the leases
// are released for other instances to claim at once, and readers' presence is dropped.
// It returns when everything has stopped or ctx ends. Stop is idempotent, and a call made
// while another runs waits for it.
func (s *Service) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.stop(ctx) })
	return s.stopErr
}

func (s *Service) stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.running {
		// Never started, or Start failed before anything ran.
		s.stopped = true
		s.mu.Unlock()
		if s.cancel != nil {
			s.cancel()
		}
		return nil
	}
	s.stopped = true // no holder starts after this
	s.mu.Unlock()

	s.holdEnd()
	// Holders read their streams without waiting on them: close the streams.
	s.mu.Lock()
	holders := make([]*holder, 0, len(s.holders))
	for _, h := range s.holders {
		holders = append(holders, h)
	}
	s.mu.Unlock()
	for _, h := range holders {
		h.stop()
	}
	// Every holder goroutine, also those already unheld or replaced, which may still be
	// handing over their last items: the committer's input closes only after all of them.
	holdersDone := make(chan struct{})
	go func() {
		s.holdWG.Wait()
		close(holdersDone)
	}()
	allDone := true
	select {
	case <-holdersDone:
	case <-ctx.Done():
		allDone = false
	}
	s.hub.closeAll()
	// With every holder gone nothing sends to the committer any more: closing its input
	// lets it commit what is queued and stop. Past the deadline, it is cut off instead
	// (what it had not committed is fetched again from the origin by the next holder).
	if allDone {
		close(s.commits)
		select {
		case <-s.committing.Stopped():
		case <-ctx.Done():
		}
	}
	s.cancel()
	s.committing.Stop()
	s.leases.Stop()
	s.polling.Stop()
	s.listener.Stop()
	s.h2.Close()
	// The drain may have used up ctx; releasing the leases matters more than the deadline.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	var errs []error
	if err := s.store.ReleaseLeases(rctx, s.opts.InstanceID); err != nil {
		errs = append(errs, err)
	} else if err := s.store.NotifyClaim(rctx); err != nil {
		errs = append(errs, err)
	}
	if devices, err := s.store.DropReaders(rctx, s.opts.InstanceID); err != nil {
		errs = append(errs, err)
	} else {
		s.wakeAfterReaders(rctx, devices)
	}
	return errors.Join(errs...)
}

// claimAgain is the pause before the next claim when the last one took a full batch.
const claimAgain = 10 * time.Millisecond

// runLeases claims streams nobody holds, renews this instance's leases and refreshes its
// readers' presence, one at a time: a claim that took a full batch is followed by another
// soon rather than after a full interval, in this loop too.
func (s *Service) runLeases(ctx context.Context) {
	claim := time.NewTimer(0) // at once
	defer claim.Stop()
	renew := time.NewTicker(s.opts.LeaseTTL / 3)
	defer renew.Stop()
	var (
		balance   <-chan time.Time // nil: no balancing
		balanceAt *time.Timer
	)
	if s.balancing() {
		balanceAt = time.NewTimer(s.opts.RebalanceInterval)
		defer balanceAt.Stop()
		balance = balanceAt.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.claimNow:
			if !claim.Stop() {
				select { // a fire that raced the stop
				case <-claim.C:
				default:
				}
			}
			s.claimAndReset(ctx, claim)
		case <-claim.C:
			s.claimAndReset(ctx, claim)
		case <-renew.C:
			s.renew(ctx)
		case <-balance:
			balanceAt.Reset(s.rebalance(ctx))
		}
	}
}

// claimAndReset claims and sets the claim timer: a claim that took a full batch is followed
// by another soon.
func (s *Service) claimAndReset(ctx context.Context, claim *time.Timer) {
	next := s.opts.ClaimInterval
	if s.claim(ctx) {
		next = min(next, claimAgain)
	}
	claim.Reset(next)
}

// claim takes streams nobody holds and starts their holders. It reports whether it took a
// full batch: there may be more.
func (s *Service) claim(ctx context.Context) bool {
	if s.testClaim != nil {
		s.testClaim(true)
		defer s.testClaim(false)
	}
	limit := s.claimLimit(ctx)
	if limit <= 0 {
		return false
	}
	claims, err := s.store.ClaimStreams(ctx, s.opts.InstanceID, s.opts.LeaseTTL, limit)
	if err != nil {
		if ctx.Err() == nil {
			s.log.ErrorContext(ctx, "claiming streams failed", slog.String("error", err.Error()))
		}
		return false
	}
	for _, c := range claims {
		s.hold(c, s.connectDelay())
	}
	if len(claims) > 0 {
		s.log.InfoContext(ctx, "claimed streams", slog.Int("count", len(claims)))
	}
	return len(claims) == limit
}

func (s *Service) renew(ctx context.Context) {
	// Holders started after this point may hold streams the query below does not see yet.
	s.mu.Lock()
	before := s.holdSeq
	s.mu.Unlock()
	held, err := s.store.RenewLeases(ctx, s.opts.InstanceID, s.opts.LeaseTTL)
	if err != nil {
		if ctx.Err() == nil {
			s.log.ErrorContext(ctx, "renewing leases failed", slog.String("error", err.Error()))
		}
		return
	}
	// Holders whose streams are no longer ours (closed through another instance, or taken
	// over after we stalled) stop.
	s.mu.Lock()
	var gone []*holder
	for id, h := range s.holders {
		if !held[id] && h.seq <= before {
			gone = append(gone, h)
		}
	}
	// Streams leased to us with no holder (a handoff between its insert and its holder, or
	// a holder lost to a bug) are released after two renewals in a row, for a claim to pick
	// up under a new epoch: a lease must never sit with nobody holding it.
	var orphans []string
	seen := map[string]bool{}
	for id := range held {
		if s.holders[id] == nil {
			if s.orphans[id] {
				orphans = append(orphans, id)
			} else {
				seen[id] = true
			}
		}
	}
	s.orphans = seen
	s.mu.Unlock()
	for _, h := range gone {
		s.unhold(h)
	}
	if len(orphans) > 0 {
		s.log.WarnContext(ctx, "releasing streams leased to this instance without a holder", slog.Int("count", len(orphans)))
		if err := s.store.ReleaseStreams(ctx, s.opts.InstanceID, orphans); err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "releasing orphaned leases failed", slog.String("error", err.Error()))
		}
	}
	// Leases of instances without a row (whatever left them) would never be claimed.
	if n, err := s.store.ReleaseOwnerless(ctx); err != nil && ctx.Err() == nil {
		s.log.ErrorContext(ctx, "releasing ownerless leases failed", slog.String("error", err.Error()))
	} else if n > 0 {
		s.log.WarnContext(ctx, "released leases of instances that no longer exist", slog.Int64("count", n))
		s.claimSoon()
	}
	devices, err := s.store.RefreshReaders(ctx, s.opts.InstanceID, s.opts.ReaderTTL)
	if err != nil && ctx.Err() == nil {
		s.log.ErrorContext(ctx, "refreshing readers failed", slog.String("error", err.Error()))
	}
	s.wakeAfterReaders(ctx, devices)
}

// hold starts a holder for a claimed stream, replacing any older one; its first connect
// waits delay. It reports false if the service is stopping: nothing holds the stream.
func (s *Service) hold(c store.Claim, delay time.Duration) bool {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return false
	}
	old := s.holders[c.Stream.ID]
	s.holdSeq++
	h := &holder{
		seq:      s.holdSeq,
		s:        s,
		id:       c.Stream.ID,
		epoch:    c.Epoch,
		url:      c.Stream.URL,
		headers:  c.Stream.Headers,
		resumeID: c.Stream.ResumeID,
		retryMS:  c.Stream.RetryMS,
		head:     c.Stream.HeadSeq,
		urgent:   c.Stream.UrgentEvents,
		compact:  compaction(c.Stream.CompactBy),
	}
	h.ctx.parent = s.holdCtx
	s.holders[h.id] = h
	s.holdWG.Add(1)
	s.mu.Unlock()
	if old != nil {
		old.stop()
	}
	if delay > 0 {
		h.runLater(&h.ctx, delay)
	} else {
		go h.run(&h.ctx)
	}
	return true
}

// compaction parses a stream's stored compaction setting (validated at handoff); nil: none.
func compaction(by string) *pushproxy.Compaction {
	c, err := pushproxy.ParseCompaction(by)
	if err != nil || !c.Enabled() {
		return nil
	}
	return &c
}

// ringCommitted rings this instance's readers of a commit's streams (hub.ringCommitted);
// those whose holder is still the one that committed, under a lease the fence let pass, are
// this instance's own.
func (s *Service) ringCommitted(batch []store.Append, lost []store.Lease) {
	s.hub.ringCommitted(batch, func(batch []store.Append) map[string]bool {
		own := make(map[string]bool, len(batch))
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, a := range batch {
			h := s.holders[a.StreamID]
			own[a.StreamID] = h != nil && h.epoch == a.Epoch && !slices.Contains(lost, store.Lease{StreamID: a.StreamID, Epoch: a.Epoch})
		}
		return own
	})
}

// finished forgets a holder that has ended.
func (s *Service) finished(h *holder) {
	s.forget(h)
	s.holdWG.Done()
}

// unhold stops a holder.
func (s *Service) unhold(h *holder) {
	h.stop()
	s.forget(h)
}

// forget drops h from the holders, if it is still the stream's, and the hub's record that
// the stream is this instance's own.
func (s *Service) forget(h *holder) {
	s.mu.Lock()
	gone := s.holders[h.id] == h
	if gone {
		delete(s.holders, h.id)
	}
	s.mu.Unlock()
	if gone {
		s.hub.forgetCommitted(h.id)
	}
}

// lost stops the holders whose commits were refused by the lease fence.
func (s *Service) lost(leases []store.Lease) {
	for _, l := range leases {
		s.mu.Lock()
		h := s.holders[l.StreamID]
		s.mu.Unlock()
		if h != nil && h.epoch <= l.Epoch {
			s.log.Info("lost the lease of a stream", slog.String("stream", l.StreamID))
			s.unhold(h)
		}
	}
}

// Held returns the number of streams this instance holds.
func (s *Service) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.holders)
}

// Stopped reports whether Stop has been called: the instance takes no more streams and is
// not ready.
func (s *Service) Stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// CheckUpstream checks u's host against the upstream allow-list (Options.Upstream), as a
// dial would: a handoff to an origin the proxy may not dial is refused at once.
func (s *Service) CheckUpstream(ctx context.Context, u *url.URL) error {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return s.opts.Upstream.CheckHost(ctx, u.Hostname(), port)
}

// Handoff creates a stream and holds it on this instance, unless this instance is stopping
// or holds Options.MaxHeldStreams already: then another instance claims it. It fills in
// ns.MaxPerDevice, ns.MaxPerKey and ns.LeaseOwner.
func (s *Service) Handoff(ctx context.Context, ns store.NewStream) (pushproxy.Stream, error) {
	owner := s.opts.InstanceID
	if s.Stopped() || (s.opts.MaxHeldStreams > 0 && s.Held() >= s.opts.MaxHeldStreams) {
		owner = "" // another instance claims it
	}
	ns.MaxPerDevice, ns.MaxPerKey, ns.LeaseOwner = s.opts.MaxStreamsPerDevice, s.opts.MaxStreamsPerKey, owner
	if s.testHandoff != nil {
		s.testHandoff()
	}
	st, epoch, err := s.store.CreateStream(ctx, ns)
	if err != nil {
		return st, err
	}
	if owner != "" && !s.hold(store.Claim{Stream: st, Epoch: epoch}, 0) {
		// Stop began after the check above: its release of this instance's leases may have
		// run before the insert committed, and deleted the instance's row, so no claim would
		// ever take the stream. Release it now, for another instance to claim.
		if err := s.store.ReleaseStreams(context.WithoutCancel(ctx), owner, []string{st.ID}); err != nil {
			s.log.ErrorContext(ctx, "releasing a stream handed off while stopping failed", slog.String("error", err.Error()))
		}
	}
	return st, nil
}

// CloseStream closes a stream (its backlog is dropped) and stops holding it.
func (s *Service) CloseStream(ctx context.Context, id string) (store.CloseResult, error) {
	res, err := s.store.CloseStream(ctx, id)
	if err != nil {
		return res, err
	}
	s.mu.Lock()
	h := s.holders[id]
	s.mu.Unlock()
	if h != nil {
		s.unhold(h)
	}
	// This instance's readers learn of the end now, not from its notification (which may
	// come back before the holder is gone, and be taken for this instance's own commit).
	// The holder, gone, is forgotten (unhold): the stream is no longer this instance's own.
	s.hub.notify(id)
	return res, nil
}

// Subscribe rings the returned channel (it holds at most one pending ring) when streamID
// may have new events, on any instance. Subscribe before reading, so that nothing committed
// in between is missed. The channel is closed when the service stops; call unsubscribe when
// done.
func (s *Service) Subscribe(streamID string) (news <-chan struct{}, unsubscribe func()) {
	sub := s.hub.subscribe(streamID)
	return sub.c, func() { s.hub.unsubscribe(sub) }
}

// OpenReader records an open reader of st on this instance: its device counts as awake
// until CloseReader (or until this instance stops refreshing it for Options.ReaderTTL).
func (s *Service) OpenReader(ctx context.Context, st pushproxy.Stream) (readerID string, err error) {
	return s.store.OpenReaderLimited(ctx, st.ID, st.DeviceID, s.opts.InstanceID, s.opts.ReaderTTL, s.opts.MaxReadersPerStream)
}

// CloseReader closes a reader that was sent the events of streamID up to delivered. If its
// device is left asleep with events undelivered, a wake-up is queued and the waker told.
func (s *Service) CloseReader(ctx context.Context, readerID, streamID string, delivered int64) error {
	err := s.store.CloseReaderDelivered(ctx, readerID, streamID, delivered, s.opts.Wake)
	s.kick()
	return err
}

// MarkRead records that deviceID fetched: it answers the wake-up the device was sent.
func (s *Service) MarkRead(ctx context.Context, deviceID string) error {
	return s.store.MarkRead(ctx, deviceID, s.opts.Wake)
}

// Kick tells the waker, if any, that wake-ups may have been queued (by an operator, say).
func (s *Service) Kick() { s.kick() }

// runPoll rings the readers whose stream moved since the last poll (hub.poll), every
// ReaderPoll: notifications are an optimisation, this is the guarantee.
func (s *Service) runPoll(ctx context.Context) {
	t := time.NewTicker(s.opts.ReaderPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := s.hub.watched()
		if len(ids) == 0 {
			continue
		}
		marks, err := s.store.StreamMarks(ctx, ids)
		if err != nil {
			if ctx.Err() == nil {
				s.log.WarnContext(ctx, "polling readers' streams failed", slog.String("error", err.Error()))
			}
			continue
		}
		s.hub.poll(marks)
	}
}

// ReadEvents returns up to limit queued events of streamID after after, oldest first, as
// store.EventsAfter does; the reads of many readers woken at once are served together.
func (s *Service) ReadEvents(ctx context.Context, streamID string, after int64, limit int) ([]pushproxy.Event, error) {
	evs, err := s.pages.read(ctx, streamID, after, limit)
	if err == nil && len(evs) < limit {
		// The reader has all there was and now waits: the poll rings it only for more.
		upto := after
		if len(evs) > 0 {
			upto = evs[len(evs)-1].Seq
		}
		s.hub.readTo(streamID, upto)
	}
	return evs, err
}
