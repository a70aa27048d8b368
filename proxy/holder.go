package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/store"
)

// holder holds one upstream stream: it connects, parses the event stream, hands every event
// to the committer, and reconnects with backoff until the stream ends, fails, or the holder
// is stopped. No goroutine of its own waits on an idle stream: the connection's reader (one
// per HTTP/2 connection, or a small one per HTTP/1.1 connection) notifies the holder, which
// starts one to parse what came (see pump), so that a held stream costs only its few fields.
type holder struct {
	s       *Service
	seq     uint64 // order of start, for lease renewal
	id      string
	epoch   int64
	url     string
	headers map[string]string
	urgent  []string              // event types that wake the device at once
	compact *pushproxy.Compaction // the stream's compaction by key; nil: none

	resumeID string // Last-Event-ID for the next connect
	retryMS  int64  // the origin's retry: value, -1 if none
	head     int64  // seq of the newest event handed to the committer
	connHead int64  // head when the current connection began

	failures int // connections in a row that delivered no event

	ctx      holderCtx
	mu       sync.Mutex
	cur      originStream // the stream being read, if any
	retry    *time.Timer  // the reconnect after a backoff, if one is due
	stopped  bool
	ended    bool          // finish ran
	gone     chan struct{} // made by onFinish, closed by finish
	finished sync.Once
}

// holderCtx is a holder's context: it ends when the holder is stopped. It registers nothing
// with its parent, the service's, whose end the service passes on by stopping every holder:
// an idle stream keeps no cancellation machinery.
type holderCtx struct {
	parent context.Context
	mu     sync.Mutex
	done   chan struct{} // made by the first Done
	err    error
}

func (c *holderCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *holderCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *holderCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *holderCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *holderCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = context.Canceled
		if c.done != nil {
			close(c.done)
		}
	}
}

// outcome is how one connection ended.
type outcome struct {
	state      string // pushproxy.StateClosed or StateFailed: stop holding; "": reconnect
	reason     string
	status     int
	retryAfter time.Duration // from a Retry-After header, 0 if none
	kind       string        // why a reconnect is needed, for metrics: connect, status, eof, read, idle
}

// run makes one connection. An event stream goes on without a goroutine (pump), which calls
// after when it ends; any other answer goes to after at once.
func (h *holder) run(ctx context.Context) {
	if out, detached := h.connect(ctx); !detached {
		h.after(ctx, out)
	}
}

// after handles the end of a connection: it records a final state and finishes the holder,
// or schedules the next connect after the backoff.
func (h *holder) after(ctx context.Context, out outcome) {
	if ctx.Err() != nil {
		h.finish()
		return
	}
	if out.state != "" {
		h.s.log.InfoContext(ctx, "upstream stream ended", slog.String("stream", h.id), slog.String("state", out.state), slog.String("reason", out.reason))
		h.send(ctx, h.item(store.Append{State: out.state, StateReason: out.reason, UpstreamStatus: out.status, Connected: store.ConnDown, Error: errIf(out.state == pushproxy.StateFailed, out.reason)}), true)
		h.finish()
		return
	}
	// Only an event resets the count: an origin that answers and closes at once, whatever
	// its retry: says, is backed off as one that refuses.
	if h.head > h.connHead {
		h.failures = 0
	} else {
		h.failures++
	}
	delay := h.backoff(h.failures, out.retryAfter)
	h.s.metrics.Reconnect(out.kind)
	h.s.log.DebugContext(ctx, "upstream reconnecting", slog.String("stream", h.id), slog.String("reason", out.reason), slog.Duration("delay", delay))
	// No goroutine waits out the backoff (an origin outage may put every stream of it
	// here at once): a timer connects again, and stop cancels it.
	h.runLater(ctx, delay)
}

// runLater runs the holder's next connect after delay, on a timer that stop cancels.
func (h *holder) runLater(ctx context.Context, delay time.Duration) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		h.finish()
		return
	}
	defer h.mu.Unlock()
	h.retry = time.AfterFunc(delay, func() {
		h.mu.Lock()
		h.retry = nil
		stopped := h.stopped
		h.mu.Unlock()
		if stopped {
			h.finish()
			return
		}
		h.run(ctx)
	})
}

// finish marks the holder as ended.
func (h *holder) finish() {
	h.finished.Do(func() {
		h.mu.Lock()
		h.ended = true
		if h.gone != nil {
			close(h.gone)
		}
		h.mu.Unlock()
		h.s.finished(h)
	})
}

// onFinish returns a channel closed once the holder has ended (at once if it has).
func (h *holder) onFinish() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone == nil {
		h.gone = make(chan struct{})
		if h.ended {
			close(h.gone)
		}
	}
	return h.gone
}

func errIf(b bool, s string) string {
	if b {
		return s
	}
	return ""
}

// minBackoff is the least wait before a reconnect that follows a connection without an
// event (unless --upstream-backoff-max is smaller).
const minBackoff = time.Second

// backoff is the wait before the next connect: the origin's retry (or the configured
// default) after a connection that delivered an event; after failures connections in a row
// without one, that retry but at least minBackoff, doubled for each failure after the first,
// up to the cap. Jitter keeps streams of one origin from reconnecting in step.
func (h *holder) backoff(failures int, retryAfter time.Duration) time.Duration {
	o := h.s.opts
	d := o.UpstreamRetry
	if h.retryMS >= 0 {
		d = time.Duration(h.retryMS) * time.Millisecond
	}
	floor := time.Duration(0)
	if failures > 0 {
		floor = min(minBackoff, o.UpstreamBackoffMax)
		d = max(d, floor)
		for i := 1; i < failures && d < o.UpstreamBackoffMax; i++ {
			d *= 2
		}
	}
	d = min(d, o.UpstreamBackoffMax)
	// Jitter: between 3/4 and 5/4 of d, never below the floor.
	if d > 0 {
		d = max(d*3/4+rand.N(d/2+1), floor)
	}
	return max(d, retryAfter)
}

// item returns a with the holder's identity and position filled in.
func (h *holder) item(a store.Append) store.Append {
	a.StreamID, a.Epoch, a.HeadSeq, a.ResumeID = h.id, h.epoch, h.head, h.resumeID
	if a.RetryMS == 0 {
		a.RetryMS = h.retryMS
	}
	return a
}

// send hands a to the committer. With wait, it returns once a is committed; it reports false
// if ctx ended first or the lease was lost.
func (h *holder) send(ctx context.Context, a store.Append, wait bool) bool {
	if ctx.Err() != nil {
		// Stopped on purpose (the service stops, the stream moved or was taken back): what
		// the stop cut short is no error of the stream's, and the next holder resumes from
		// what was committed.
		return false
	}
	it := commitItem{Append: a}
	var done chan bool
	if wait {
		done = make(chan bool, 1)
		it.done = done
	}
	select {
	case h.s.commits <- it:
	case <-ctx.Done():
		return false
	}
	if !wait {
		return true
	}
	select {
	case ok := <-done:
		return ok
	case <-ctx.Done():
		return false
	}
}

var errTooManyRedirects = errors.New("too many redirects")

// connect makes one connection to the origin and, if it answers with an event stream, hands
// it to a pump and reports detached; otherwise it reports how the connection ended.
func (h *holder) connect(ctx context.Context) (outcome, bool) {
	resp, out, ok := h.open(ctx)
	if !ok {
		return out, false
	}
	h.pump(ctx, resp.body, out)
	return out, true
}

func (h *holder) newParser(body io.Reader) *sse.Parser {
	p := sse.NewParser(body, &h.s.parserOpts)
	// The id a browser would still have: events without an id keep it.
	p.SetLastEventID(h.resumeID)
	return p
}

// open sends the request and checks the response's head. It reports ok with a response
// whose events are to be read; otherwise out says how the connection ended.
func (h *holder) open(ctx context.Context) (*originResponse, outcome, bool) {
	header := make(http.Header, len(h.headers)+3)
	for k, v := range h.headers {
		header.Set(k, v)
	}
	header.Set("Accept", "text/event-stream")
	// Without Accept-Encoding any coding is acceptable (RFC 9110, 12.5.3): ask for none.
	// Compression would cost a decoder's memory per idle stream.
	header.Set("Accept-Encoding", "identity")
	header.Set("Cache-Control", "no-cache")
	if h.resumeID != "" {
		header.Set("Last-Event-ID", h.resumeID)
	}
	h.connHead = h.head
	resp, err := h.s.openUpstream(ctx, h.url, header)
	if err != nil {
		var (
			blocked *upstream.BlockedError
			badURL  *url.Error
		)
		switch {
		case errors.As(err, &badURL) && badURL.Op == "parse":
			return nil, outcome{state: pushproxy.StateFailed, reason: "invalid url: " + scrubURLError(badURL)}, false
		case errors.As(err, &blocked):
			return nil, outcome{state: pushproxy.StateFailed, reason: blocked.Error()}, false
		case errors.Is(err, errTooManyRedirects):
			return nil, outcome{state: pushproxy.StateFailed, reason: fmt.Sprintf("more than %d redirects", h.s.opts.UpstreamMaxRedirects)}, false
		}
		out := outcome{reason: "connect: " + scrubURLError(err), kind: "connect"}
		var noHead *noHeadError
		if errors.As(err, &noHead) {
			out.reason, out.kind = err.Error(), "idle"
		}
		// Every failed attempt is recorded, with its time: refused, DNS, TLS, no head, a
		// head too large.
		h.send(ctx, h.item(store.Append{Connected: store.ConnDown, Error: out.reason}), false)
		return nil, out, false
	}
	out := outcome{status: resp.status}
	switch {
	case resp.status == http.StatusNoContent:
		out.state, out.reason = pushproxy.StateClosed, "the origin ended the stream (204 No Content)"
	case resp.status == http.StatusRequestTimeout || resp.status == http.StatusTooManyRequests || resp.status >= 500:
		out.reason, out.kind = "origin answered "+resp.statusText(), "status"
		out.retryAfter = parseRetryAfter(resp.header.Get("Retry-After"), h.s.opts.UpstreamBackoffMax)
		h.send(ctx, h.item(store.Append{UpstreamStatus: resp.status, Connected: store.ConnDown, Error: out.reason}), false)
	case resp.status != http.StatusOK:
		out.state, out.reason = pushproxy.StateFailed, "origin answered "+resp.statusText()
	case !sse.IsEventStream(resp.header.Get("Content-Type")):
		out.state = pushproxy.StateFailed
		out.reason = fmt.Sprintf("origin answered 200 with content type %.100q, not text/event-stream", resp.header.Get("Content-Type"))
	case contentCoded(resp.header):
		// Asked for identity, sent something else: the proxy would store compressed bytes
		// as events, or none. As with a wrong content type, retrying gets the same answer.
		out.state = pushproxy.StateFailed
		out.reason = fmt.Sprintf("origin answered with Content-Encoding %.100q though the proxy asked for identity (Accept-Encoding: identity); serve the event stream uncompressed", strings.Join(resp.header.Values("Content-Encoding"), ", "))
	default:
		if !h.attach(resp.body) {
			return nil, out, false
		}
		if h.send(ctx, h.item(store.Append{UpstreamStatus: http.StatusOK, Connected: store.ConnUp, Connects: 1}), false) {
			h.s.log.DebugContext(ctx, "upstream connected", slog.String("stream", h.id), slog.String("proto", resp.proto))
			resp.header = nil // not needed any more: an idle stream keeps as little as it can
			return resp, out, true
		}
		h.detach(resp.body)
		return nil, out, false
	}
	resp.body.Close()
	return nil, out, false
}

// consume hands the parser's events to the committer until the connection ends, which it
// records in out and reports with true, or until the parser is pending (false).
func (h *holder) consume(ctx context.Context, body *pendingBody, p *sse.Parser, out *outcome) bool {
	for {
		ev, err := p.Next()
		if err == sse.ErrPending {
			return false
		}
		if err != nil {
			if ms, ok := p.Retry(); ok {
				h.retryMS = ms
			}
			h.resumeID = p.LastEventID()
			switch {
			case body.idleFired.Load():
				out.reason, out.kind = fmt.Sprintf("no data from the origin for %s", h.s.opts.UpstreamIdleTimeout), "idle"
			case errors.Is(err, sse.ErrEventTooLarge):
				out.state = pushproxy.StateFailed
				out.reason = fmt.Sprintf("the origin sent an event or line larger than %d bytes", h.s.opts.MaxEventSize)
				return true
			case err == io.EOF:
				out.reason, out.kind = "the origin closed the stream", "eof"
			default:
				out.reason, out.kind = "read: "+scrubURLError(err), "read"
			}
			h.send(ctx, h.item(store.Append{Connected: store.ConnDown, Error: out.reason}), false)
			return true
		}
		if ms, ok := p.Retry(); ok {
			h.retryMS = ms
		}
		// The event must reach the committer even when the idle timer fires while the send
		// waits (it keeps running during commit backpressure): the resume point moves past
		// it, so dropping it would lose it for good. Only the holder's own end (ctx) stops
		// the send, and then the next holder resumes from what was committed.
		prevHead, prevResume := h.head, h.resumeID
		h.head++
		h.resumeID = p.LastEventID()
		a := h.item(store.Append{Events: []pushproxy.Event{{Seq: h.head, LastEventID: ev.LastEventID, Type: ev.Type, Data: ev.Data, CompactKey: h.compactKey(ev.Type, ev.Data)}}, Urgent: h.isUrgent(ev.Type)})
		if !h.sendEvent(ctx, body, a) {
			h.head, h.resumeID = prevHead, prevResume
			return true
		}
	}
}

// sendEvent hands an event to the committer. While the committer's queue is full the wait
// may be long, and it is not the origin's silence: the idle timer is held meanwhile.
func (h *holder) sendEvent(ctx context.Context, body *pendingBody, a store.Append) bool {
	if body.idle == nil || len(h.s.commits) < cap(h.s.commits) {
		return h.send(ctx, a, false)
	}
	body.idle.Stop()
	ok := h.send(ctx, a, false)
	if !body.idleFired.Load() {
		body.idle.Reset(body.d)
	}
	return ok
}

// pump reads a stream without a goroutine waiting on it: each time data or the end
// arrives, one goroutine parses what is there and goes away (a second notification while it
// runs makes it look again). When the connection ends, that goroutine carries on with the
// holder: after, then run.
func (h *holder) pump(ctx context.Context, st originStream, out outcome) {
	ps := &pumpState{h: h, ctx: ctx, out: out}
	ps.body = pendingBody{s: st, d: h.s.opts.UpstreamIdleTimeout}
	if ps.body.d > 0 {
		// Silence for that long closes the stream; consume then tells why.
		ps.body.idle = time.AfterFunc(ps.body.d, ps.idle)
	}
	ps.p = h.newParser(&ps.body)
	st.SetNotify(ps.kick)
	ps.kick() // what came with the head
}

// pumpState is one connection's reading state: everything an idle stream keeps, in one
// allocation.
type pumpState struct {
	h     *holder
	ctx   context.Context
	body  pendingBody
	p     *sse.Parser   // nil while suspended
	susp  sse.Suspended // the parser's state while suspended
	out   outcome
	state atomic.Int32 // 0: no goroutine; 1: one runs; 2: one runs and must look again
}

func (ps *pumpState) idle() {
	ps.body.idleFired.Store(true)
	ps.body.s.Close()
}

func (ps *pumpState) kick() {
	for {
		switch ps.state.Load() {
		case 0:
			if ps.state.CompareAndSwap(0, 1) {
				go ps.work()
				return
			}
		case 1:
			if ps.state.CompareAndSwap(1, 2) {
				return
			}
		default:
			return
		}
	}
}

func (ps *pumpState) work() {
	h := ps.h
	for {
		if ps.p == nil {
			ps.p = sse.Resume(&ps.body, &h.s.parserOpts, ps.susp)
			ps.susp = sse.Suspended{}
		}
		if h.consume(ps.ctx, &ps.body, ps.p, &ps.out) {
			if ps.body.idle != nil {
				ps.body.idle.Stop()
			}
			h.detach(ps.body.s)
			h.after(ps.ctx, ps.out)
			return
		}
		// Between events the parser is dropped: an idle stream keeps only what it must
		// remember of the stream. Otherwise it keeps no read buffer. Either way the last
		// event ID, which may point into the parser's slab of event strings, is taken from
		// a copy, so that the slab can go while the stream is idle.
		if st, ok := ps.p.Suspend(); ok {
			ps.p, ps.susp = nil, st
			h.resumeID = st.LastEventID() // a copy already, equal to h.resumeID
		} else {
			ps.p.Release()
			h.resumeID = strings.Clone(h.resumeID)
		}
		if ps.state.CompareAndSwap(1, 0) {
			return
		}
		ps.state.Store(1)
	}
}

// attach makes st the holder's current stream, which stop closes; a holder already stopped
// closes it at once and reports false.
func (h *holder) attach(st originStream) bool {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		st.Close()
		return false
	}
	h.cur = st
	h.mu.Unlock()
	return true
}

// detach closes the current stream and forgets it.
func (h *holder) detach(st originStream) {
	h.mu.Lock()
	if h.cur == st {
		h.cur = nil
	}
	h.mu.Unlock()
	st.Close()
}

// stop ends the holder: its context ends (a connect in progress gives up) and its current
// stream is closed (its pump then sees the end and finishes the holder).
func (h *holder) stop() {
	h.ctx.cancel()
	h.mu.Lock()
	h.stopped = true
	cur, retry := h.cur, h.retry
	h.retry = nil
	h.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
	if retry != nil && retry.Stop() {
		h.finish() // it was waiting out a backoff: nothing else runs for it
	}
}

// pendingBody reads a stream for a parser that must not wait: no data is
// sse.ErrPending. Data pushes the idle timer back.
type pendingBody struct {
	s         originStream
	idle      *time.Timer
	d         time.Duration
	idleFired atomic.Bool
}

func (r *pendingBody) Read(b []byte) (int, error) {
	n, err := r.s.TryRead(b)
	if err == upstream.ErrWouldBlock {
		return 0, sse.ErrPending
	}
	if n > 0 && r.idle != nil {
		r.idle.Reset(r.d)
	}
	return n, err
}

// contentCoded reports whether a response has a content coding other than identity.
func contentCoded(h http.Header) bool {
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

// isUrgent reports whether events of type typ wake the device at once.
func (h *holder) isUrgent(typ string) bool {
	if typ == "" {
		typ = "message"
	}
	return slices.Contains(h.urgent, typ)
}

// compactKey is the compaction key of an event ("": none, never compacted).
func (h *holder) compactKey(typ, data string) string {
	if h.compact == nil {
		return ""
	}
	key, _ := h.compact.Key(typ, data)
	return key
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date), capped.
func parseRetryAfter(v string, limit time.Duration) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
		d = time.Duration(min(n, int64(limit/time.Second)+1)) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return max(0, min(d, limit))
}

// scrubURLError drops the URL from net/http's errors: a URL may carry secrets in its query,
// and errors end up in logs and in the API.
func scrubURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
