package origin

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event is one published event.
type Event struct {
	ID   string // decimal sequence number: "1", "2", ...
	Type string // SSE event type ("" is the default "message")
	Data string
}

// Options configure an Origin. New(nil) uses DefaultOptions. In a non-nil Options the zero
// value of Symbols, History, Heartbeat, TickInterval and WriteTimeout means the default, while
// a zero Rate means no automatic ticks and a zero Retry means no retry: line.
type Options struct {
	// Symbols is the size of the symbol universe (default 20).
	Symbols int
	// Rate is the total number of ticker events generated per second, across all symbols
	// (DefaultOptions: 5). 0: no automatic ticks; only Tick, TickN and Emit publish.
	Rate float64
	// TickInterval is how often the ticker wakes; each tick generates as many events as the
	// rate accrued since the previous one, so high rates cost no timer per event.
	// Default: 1/Rate, but at least 10ms (at 30,000 events/s: 300 events every 10ms).
	TickInterval time.Duration
	// History is how many published events are kept for Last-Event-ID replay (default 10000).
	History int
	// Retry is the retry: value sent on connect (DefaultOptions: 3s). 0: none is sent.
	Retry time.Duration
	// Heartbeat is the interval of the ": heartbeat" comment on otherwise quiet streams
	// (default 15s; negative: none). Heartbeats need Start.
	Heartbeat time.Duration
	// DropEvery, if > 0, ends each stream after this many events were sent on it (the
	// snapshot does not count), so that clients reconnect with Last-Event-ID.
	DropEvery int
	// WriteTimeout bounds each write to a stream (default 10s; negative: none). A client that
	// reads nothing for this long is disconnected.
	WriteTimeout time.Duration
	// Seed makes the ticker deterministic: the same seed gives the same events.
	Seed int64
	// AllowEmit enables POST /emit.
	AllowEmit bool
	// Logger receives connection and error logs (default: discard).
	Logger *slog.Logger
	// Now is the clock of the "time" fields in event data (default time.Now). The ticker's
	// pacing always uses the real clock.
	Now func() time.Time
}

// DefaultOptions are the options of New(nil).
func DefaultOptions() Options {
	return Options{
		Symbols:      20,
		Rate:         5,
		History:      10000,
		Retry:        3 * time.Second,
		Heartbeat:    15 * time.Second,
		WriteTimeout: 10 * time.Second,
	}
}

const (
	minTickInterval = 10 * time.Millisecond
	maxBatch        = 512 // events a stream copies out of the history per write
)

// ErrClosed is returned by WaitFor once the Origin is closed.
var ErrClosed = errors.New("origin: closed")

// Stats count what an Origin did.
type Stats struct {
	Published uint64 // events published so far (= the newest id)
	Open      int    // streams open now
	Connects  uint64 // streams accepted
	Resumed   uint64 // streams that replayed from a known Last-Event-ID
	Snapshots uint64 // streams that started with a snapshot
	Evicted   uint64 // streams ended because their cursor fell out of the history
	Dropped   uint64 // streams ended by DropEvery
	Sent      uint64 // events written to streams (snapshots not counted)
}

// entry is one published event with its wire form. ev's strings point into wire when they can.
type entry struct {
	ev   Event
	sym  string // the symbol the event is about; "" reaches every filter
	wire string
}

// Origin is the SSE stock ticker. All methods are safe for concurrent use.
type Origin struct {
	opts    Options
	log     *slog.Logger
	now     func() time.Time
	handler http.Handler

	mu        sync.Mutex
	ring      []entry       // seq s lives at ring[(s-1)%len(ring)]
	head      uint64        // newest seq, 0 before the first event
	wake      chan struct{} // closed when head, hbGen, kickGen or closed change; nil: nobody waits
	statsWake chan struct{} // closed when stats change; nil: nobody waits
	hbGen     uint64
	kickGen   uint64
	closed    bool
	started   bool
	stats     Stats
	sent      atomic.Uint64

	// ticker state, under mu
	rng      *rand.Rand
	syms     []symbol // sorted by name
	listed   []int    // indexes into syms
	unlisted []int
	scratch  []byte
	snapSeq  uint64
	snapWire string // cached unfiltered snapshot for snapSeq; "" none

	done chan struct{}
	wg   sync.WaitGroup

	testHookBeforeWrite func() // called by a stream before each live write
}

// New returns an Origin; nil opts means DefaultOptions. It publishes nothing until Start (or
// Tick/Emit) and serves streams right away through Handler.
func New(opts *Options) *Origin {
	var op Options
	if opts == nil {
		op = DefaultOptions()
	} else {
		op = *opts
	}
	d := DefaultOptions()
	if op.Symbols <= 0 {
		op.Symbols = d.Symbols
	}
	if op.History <= 0 {
		op.History = d.History
	}
	if op.Heartbeat == 0 {
		op.Heartbeat = d.Heartbeat
	}
	if op.WriteTimeout == 0 {
		op.WriteTimeout = d.WriteTimeout
	}
	if op.Rate < 0 {
		op.Rate = 0
	}
	if op.TickInterval <= 0 && op.Rate > 0 {
		op.TickInterval = max(minTickInterval, time.Duration(float64(time.Second)/op.Rate))
	}
	o := &Origin{
		opts: op,
		log:  op.Logger,
		now:  op.Now,
		ring: make([]entry, op.History),
		rng:  rand.New(rand.NewPCG(uint64(op.Seed), 0x9e3779b97f4a7c15)),
		done: make(chan struct{}),
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	o.initSymbols()
	o.handler = o.routes()
	return o
}

// Options returns the effective options (defaults filled in).
func (o *Origin) Options() Options { return o.opts }

// Start runs the background goroutine: the automatic ticker (when Rate > 0) and the
// heartbeats. It returns at once; the goroutine ends when ctx is done or at Close. Calls after
// the first, or after Close, do nothing.
func (o *Origin) Start(ctx context.Context) {
	o.mu.Lock()
	if o.started || o.closed {
		o.mu.Unlock()
		return
	}
	o.started = true
	o.wg.Add(1)
	o.mu.Unlock()
	go o.loop(ctx)
}

// Run is Start followed by waiting for ctx; it then closes the Origin and returns ctx's error.
func (o *Origin) Run(ctx context.Context) error {
	o.Start(ctx)
	select {
	case <-ctx.Done():
	case <-o.done:
	}
	o.Close()
	return ctx.Err()
}

// Close stops the background goroutine, waits for it, and ends every open stream (their
// handlers return promptly; new requests get 503). It is idempotent. Close the Origin before
// the http.Server that serves it: httptest.Server.Close waits for open streams.
func (o *Origin) Close() {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		close(o.done)
		o.wakeLocked()
		o.statsChangedLocked()
	}
	o.mu.Unlock()
	o.wg.Wait()
}

// Disconnect ends every stream open now; clients reconnect (with Last-Event-ID) as usual.
func (o *Origin) Disconnect() {
	o.mu.Lock()
	o.kickGen++
	o.wakeLocked()
	o.mu.Unlock()
}

func (o *Origin) loop(ctx context.Context) {
	defer o.wg.Done()
	var hbC, tickC <-chan time.Time
	if o.opts.Heartbeat > 0 {
		t := time.NewTicker(o.opts.Heartbeat)
		defer t.Stop()
		hbC = t.C
	}
	var perTick float64
	if o.opts.Rate > 0 {
		t := time.NewTicker(o.opts.TickInterval)
		defer t.Stop()
		tickC = t.C
		perTick = o.opts.Rate * o.opts.TickInterval.Seconds()
	}
	// At most this many events per tick: catch up on a late tick, but never a flood that
	// would evict every reader after a stall.
	maxPerTick := max(1, min(int(10*perTick)+1, o.opts.History/2))
	last := time.Now()
	var acc float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.done:
			return
		case <-hbC:
			o.mu.Lock()
			o.hbGen++
			o.wakeLocked()
			o.mu.Unlock()
		case now := <-tickC:
			acc += o.opts.Rate * now.Sub(last).Seconds()
			last = now
			n := int(acc)
			acc -= float64(n)
			if n > maxPerTick {
				n, acc = maxPerTick, 0
			}
			if n > 0 {
				o.TickN(n)
			}
		}
	}
}

// wakeLocked wakes every waiting stream.
func (o *Origin) wakeLocked() {
	if o.wake != nil {
		close(o.wake)
		o.wake = nil
	}
}

// waitChLocked is the channel the next wakeLocked closes.
func (o *Origin) waitChLocked() chan struct{} {
	if o.wake == nil {
		o.wake = make(chan struct{})
	}
	return o.wake
}

func (o *Origin) statsChangedLocked() {
	if o.statsWake != nil {
		close(o.statsWake)
		o.statsWake = nil
	}
}

// Stats returns the counters now.
func (o *Origin) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.statsLocked()
}

func (o *Origin) statsLocked() Stats {
	s := o.stats
	s.Published = o.head
	s.Sent = o.sent.Load()
	return s
}

// WaitFor blocks until cond holds for the Stats (checked now and after every publish, connect
// and disconnect), ctx is done, or the Origin is closed. Sent alone changing does not re-check.
func (o *Origin) WaitFor(ctx context.Context, cond func(Stats) bool) error {
	for {
		o.mu.Lock()
		if cond(o.statsLocked()) {
			o.mu.Unlock()
			return nil
		}
		if o.closed {
			o.mu.Unlock()
			return ErrClosed
		}
		if o.statsWake == nil {
			o.statsWake = make(chan struct{})
		}
		ch := o.statsWake
		o.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// oldestLocked is the seq of the oldest event in the history (head+1 when it is empty).
func (o *Origin) oldestLocked() uint64 {
	if o.head < uint64(len(o.ring)) {
		return 1
	}
	return o.head - uint64(len(o.ring)) + 1
}

func (o *Origin) at(seq uint64) *entry { return &o.ring[(seq-1)%uint64(len(o.ring))] }

// parseID is the seq of an id, which must be its exact canonical decimal form.
func parseID(id string) (uint64, bool) {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != id {
		return 0, false
	}
	return n, true
}

// lookupLocked is the seq of id if every event after it is still in the history.
func (o *Origin) lookupLocked(id string) (uint64, bool) {
	n, ok := parseID(id)
	if !ok || n > o.head || n+1 < o.oldestLocked() {
		return 0, false
	}
	return n, true
}

// History returns the events published after the one with id after, oldest first. ok is false
// when after is not the exact id of an event in the history, nor the one just before the
// oldest (then some events after it were evicted or it was never published). "0" names the
// start before the first event.
func (o *Origin) History(after string) ([]Event, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, ok := o.lookupLocked(after)
	if !ok {
		return nil, false
	}
	return o.eventsLocked(n), true
}

func (o *Origin) eventsLocked(after uint64) []Event {
	evs := make([]Event, 0, o.head-after)
	for s := after + 1; s <= o.head; s++ {
		evs = append(evs, o.at(s).ev)
	}
	return evs
}

// Published returns every event still in the history, oldest first: all events published so
// far as long as there were at most Options.History of them.
func (o *Origin) Published() []Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.eventsLocked(o.oldestLocked() - 1)
}

// LastID is the id of the newest published event, "0" before the first.
func (o *Origin) LastID() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strconv.FormatUint(o.head, 10)
}

// Emit publishes an arbitrary event with the next id and wakes the streams. Line breaks in typ
// are removed; data may hold several lines (one data: line each).
func (o *Origin) Emit(typ, data string) Event {
	typ = strings.NewReplacer("\r", "", "\n", "").Replace(typ)
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.appendLocked(typ, "", nil, data)
	o.publishedLocked()
	return e.ev
}

// appendLocked encodes the next event into the history and returns it. The data is what
// appendData appends (it must not contain line breaks) or, when appendData is nil, raw.
func (o *Origin) appendLocked(typ, sym string, appendData func([]byte) []byte, raw string) *entry {
	o.head++
	b := append(o.scratch[:0], "id: "...)
	idStart := len(b)
	b = strconv.AppendUint(b, o.head, 10)
	idEnd := len(b)
	b = append(b, '\n')
	if typ != "" {
		b = append(b, "event: "...)
		b = append(b, typ...)
		b = append(b, '\n')
	}
	var dataStart, dataEnd int
	if appendData != nil {
		b = append(b, "data: "...)
		dataStart = len(b)
		b = appendData(b)
		dataEnd = len(b)
		b = append(b, '\n')
	} else {
		b = appendDataLines(b, raw)
	}
	b = append(b, '\n')
	wire := string(b)
	if cap(b) <= 64<<10 {
		o.scratch = b
	} else {
		o.scratch = nil
	}
	e := o.at(o.head)
	*e = entry{ev: Event{ID: wire[idStart:idEnd], Type: typ, Data: raw}, sym: sym, wire: wire}
	if appendData != nil {
		e.ev.Data = wire[dataStart:dataEnd]
	}
	return e
}

// appendDataLines appends one "data: " line per line of data (split on CRLF, CR, LF).
func appendDataLines(b []byte, data string) []byte {
	for {
		i := strings.IndexAny(data, "\r\n")
		if i < 0 {
			b = append(b, "data: "...)
			b = append(b, data...)
			return append(b, '\n')
		}
		b = append(b, "data: "...)
		b = append(b, data[:i]...)
		b = append(b, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
}

// publishedLocked wakes streams and stats waiters after events were appended.
func (o *Origin) publishedLocked() {
	o.wakeLocked()
	o.statsChangedLocked()
}
