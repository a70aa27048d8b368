// Package h2client is a small HTTP/2 client for long-lived GET responses, such as event
// streams held by the ten thousand. It multiplexes the streams of one origin over few
// connections, as net/http's transport does, but costs no goroutine per stream: each
// connection has one goroutine that reads its frames and hands every stream's data to that
// stream's buffer, which holds nothing while it is empty, and one that writes the frames the
// others queue. (net/http keeps a goroutine per request alive until the response ends, which
// for an idle event stream is forever.)
//
// It speaks HTTP/2 over TLS (ALPN "h2") and over cleartext with prior knowledge (h2c). It
// sends only GET requests without a body, never pushes, and retries a request only when the
// server says it did not process it (a stream refused, or above a GOAWAY's last stream id):
// a caller that gets an error reconnects by itself.
//
// Connections are opened as the server's SETTINGS_MAX_CONCURRENT_STREAMS requires (nginx
// allows 128 streams per connection, Go's server 250): callers beyond the room of the open
// connections wait, in order, for a connection being dialed or a stream ending, and the pool
// dials as many connections as the waiting callers need, a few at a time.
//
// Nothing a server does blocks a connection's reading goroutine on a write: acknowledgements,
// window updates and resets are queued for the writing goroutine, and a server that stops
// reading loses its connection (its queue grew too long, or a write made no progress for
// Options.WriteTimeout), not the reading of other connections or streams.
package h2client

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
)

// ErrNotHTTP2 is returned by Open when a TLS server chose a protocol other than h2: the
// caller should use HTTP/1.1 for that origin.
var ErrNotHTTP2 = errors.New("h2client: the server does not speak HTTP/2")

// Options configure a Pool. Zero fields take defaults.
type Options struct {
	// Dial opens the transport connection (it may refuse addresses). Default: net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSConfig is the base TLS configuration for https:// origins; ServerName and
	// NextProtos are set per connection.
	TLSConfig *tls.Config
	// H2C speaks HTTP/2 with prior knowledge to http:// origins; without it Open refuses them.
	H2C bool
	// StreamWindow is the receive window of each stream: the most bytes a stream buffers
	// before its reader takes them (default 64 KiB).
	StreamWindow uint32
	// MaxHeaderListSize bounds a response's header block (default 64 KiB).
	MaxHeaderListSize uint32
	// PingInterval sends a PING on a connection that read nothing for this long, and
	// PingTimeout closes it when the answer does not come in time (defaults 30 s and 15 s).
	PingInterval, PingTimeout time.Duration
	// WriteTimeout closes a connection whose server took nothing of a write for this long:
	// it stopped reading (default 10 s).
	WriteTimeout time.Duration
	// IdleTimeout closes a connection that has had no stream for this long (default 90 s).
	IdleTimeout time.Duration
	// NotHTTP2TTL is how long an origin that refused h2 is remembered (default 10 min).
	NotHTTP2TTL time.Duration
}

// Pool holds HTTP/2 connections to origins, by scheme and authority.
type Pool struct {
	o      Options
	ctx    context.Context // the dials' context, canceled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	origins map[string]*origin   // by key
	noH2    map[string]time.Time // by key: refused h2 until then
	closed  bool
}

// origin is what the pool holds for one scheme and authority.
type origin struct {
	conns   []*conn   // usable or draining connections
	waiters []*waiter // callers waiting for room on a connection, first come first served
	dialing int       // dials in flight
	limit   uint32    // the stream limit the latest connection advertised (0: none dialed yet)
	barren  int       // dials in a row that brought no room for a stream
}

// waiter is a caller of Pool.conn waiting for room. done is closed when c (with a stream
// reserved for the waiter) or err is set.
type waiter struct {
	done chan struct{}
	c    *conn
	err  error
}

const (
	// maxDialsInFlight bounds the connections dialed at once to one origin.
	maxDialsInFlight = 4
	// maxBarrenDials fails the waiting callers after this many dials in a row brought no
	// room for a stream (a server that allows none must not make the pool dial forever).
	maxBarrenDials = 4
	// maxAttempts bounds the streams one Open sends for a request the server did not process
	// (REFUSED_STREAM, GOAWAY): a server that refuses everything gets an error, not a loop.
	maxAttempts = 5
)

// NewPool returns an empty pool.
func NewPool(o Options) *Pool {
	if o.Dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		o.Dial = d.DialContext
	}
	o.StreamWindow = cmp.Or(o.StreamWindow, 64<<10)
	o.MaxHeaderListSize = cmp.Or(o.MaxHeaderListSize, 64<<10)
	o.PingInterval = cmp.Or(o.PingInterval, 30*time.Second)
	o.PingTimeout = cmp.Or(o.PingTimeout, 15*time.Second)
	o.WriteTimeout = cmp.Or(o.WriteTimeout, 10*time.Second)
	o.IdleTimeout = cmp.Or(o.IdleTimeout, 90*time.Second)
	o.NotHTTP2TTL = cmp.Or(o.NotHTTP2TTL, 10*time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{o: o, ctx: ctx, cancel: cancel, origins: map[string]*origin{}, noH2: map[string]time.Time{}}
}

// Usable tells whether Open may serve u: an http:// URL needs H2C, and an https:// origin
// that recently refused h2 is left to HTTP/1.1.
func (p *Pool) Usable(u *url.URL) bool {
	switch u.Scheme {
	case "http":
		return p.o.H2C
	case "https":
		p.mu.Lock()
		defer p.mu.Unlock()
		until, ok := p.noH2[key(u)]
		return !ok || time.Now().After(until)
	}
	return false
}

var errPoolClosed = errors.New("h2client: pool closed")

// Close closes every connection; their streams fail, and so do the callers waiting and the
// dials under way.
func (p *Pool) Close() {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	var all []*conn
	for _, o := range p.origins {
		all = append(all, o.conns...)
		o.conns = nil
		failWaitersLocked(o, errPoolClosed)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.close(errPoolClosed)
	}
}

// Response is the head of a response.
type Response struct {
	Status int
	Header http.Header
}

// Open sends a GET for u with the given header and waits, as long as ctx allows, for the
// response's head. The body is read from the returned Stream, which the caller must Close.
func (p *Pool) Open(ctx context.Context, u *url.URL, header http.Header) (*Stream, *Response, error) {
	for attempt := 1; ; attempt++ {
		c, err := p.conn(ctx, u)
		if err != nil {
			return nil, nil, err
		}
		s, err := c.open(u, header)
		if err == nil {
			var resp *Response
			if resp, err = s.awaitHead(ctx); err == nil {
				return s, resp, nil
			}
			s.Close()
		}
		// A connection that closed or went away since it was chosen, a stream refused or
		// above a GOAWAY's last stream id: the server did not process the request, and
		// another stream may carry it.
		if !errors.Is(err, errUnprocessed) || attempt == maxAttempts || ctx.Err() != nil {
			return nil, nil, err
		}
	}
}

func key(u *url.URL) string {
	return u.Scheme + "://" + streamio.HostPort(u)
}

// errUnprocessed marks the errors of a request the server did not process: Open may send
// it again.
var errUnprocessed = errors.New("the server did not process the request")

var errNoRoom = errors.New("h2client: no connection to the server has room for another stream")

// conn returns a connection to u's origin with a stream reserved for the caller (open takes
// it). Callers that find no room wait in order for a dial or for a stream to end.
func (p *Pool) conn(ctx context.Context, u *url.URL) (*conn, error) {
	k := key(u)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if until, ok := p.noH2[k]; ok {
		if time.Now().Before(until) {
			p.mu.Unlock()
			return nil, ErrNotHTTP2
		}
		delete(p.noH2, k)
	}
	o := p.origins[k]
	if o == nil {
		o = &origin{}
		p.origins[k] = o
	}
	if len(o.waiters) == 0 { // else they come first
		for _, c := range o.conns {
			if c.reserve() {
				p.mu.Unlock()
				return c, nil
			}
		}
	}
	w := &waiter{done: make(chan struct{})}
	o.waiters = append(o.waiters, w)
	p.dialMoreLocked(k, o, u)
	p.mu.Unlock()

	select {
	case <-w.done:
		return w.c, w.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	select {
	case <-w.done: // served meanwhile: give the room back
		p.mu.Unlock()
		if w.c != nil {
			w.c.unreserve()
		}
	default:
		if i := slices.Index(o.waiters, w); i >= 0 {
			o.waiters = slices.Delete(o.waiters, i, i+1)
		}
		p.dropIfUnusedLocked(k, o)
		p.mu.Unlock()
	}
	return nil, ctx.Err()
}

// dialMoreLocked starts the dials that o's waiters need: as many connections as fit them
// at the latest advertised stream limit (one while the limit is unknown), a few at a time.
func (p *Pool) dialMoreLocked(k string, o *origin, u *url.URL) {
	if len(o.waiters) == 0 {
		return
	}
	want := 1
	if o.limit > 0 {
		want = (len(o.waiters) + int(o.limit) - 1) / int(o.limit)
	}
	for range min(want, maxDialsInFlight) - o.dialing {
		o.dialing++
		go p.dial(k, &url.URL{Scheme: u.Scheme, Host: u.Host})
	}
}

// dial makes a connection for key k on the pool's context rather than a caller's (it serves
// every caller waiting), and hands its room to the waiters.
func (p *Pool) dial(k string, u *url.URL) {
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	c, err := p.newConn(ctx, u)
	p.mu.Lock()
	o := p.origins[k]
	o.dialing--
	switch {
	case p.closed:
		if err == nil {
			defer c.close(errPoolClosed) // after the unlock: close tells the pool
		}
	case errors.Is(err, ErrNotHTTP2):
		p.noH2[k] = time.Now().Add(p.o.NotHTTP2TTL)
		failWaitersLocked(o, err)
	case err != nil:
		// Other dials may still serve the waiters; when none is left, they fail.
		if o.dialing == 0 {
			failWaitersLocked(o, err)
		}
	default:
		if c.alive() { // else it closed already, and forgot itself
			o.conns = append(o.conns, c)
			o.limit = c.limit()
		}
		waiting := len(o.waiters)
		if serveWaitersLocked(o) > 0 || waiting == 0 {
			o.barren = 0
		} else if o.barren++; o.barren >= maxBarrenDials {
			o.barren = 0
			failWaitersLocked(o, errNoRoom)
		}
		p.dialMoreLocked(k, o, u)
	}
	p.dropIfUnusedLocked(k, o)
	p.mu.Unlock()
}

// roomMade hands the room that c has (a stream ended, the server raised its limit) to the
// callers waiting for its origin.
func (p *Pool) roomMade(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if o := p.origins[c.key]; o != nil && len(o.waiters) > 0 {
		serveWaitersLocked(o)
	}
}

// serveWaitersLocked reserves room on o's connections for its waiters, in order, and
// returns how many it served.
func serveWaitersLocked(o *origin) int {
	n := 0
	for _, c := range o.conns {
		for n < len(o.waiters) && c.reserve() {
			o.waiters[n].c = c
			close(o.waiters[n].done)
			n++
		}
	}
	o.waiters = slices.Delete(o.waiters, 0, n)
	return n
}

func failWaitersLocked(o *origin, err error) {
	for _, w := range o.waiters {
		w.err = err
		close(w.done)
	}
	o.waiters = nil
}

func (p *Pool) dropIfUnusedLocked(k string, o *origin) {
	if len(o.conns) == 0 && len(o.waiters) == 0 && o.dialing == 0 && p.origins[k] == o {
		delete(p.origins, k)
	}
}

// forget removes c from the pool (it is closed or going away).
func (p *Pool) forget(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.origins[c.key]
	if o == nil {
		return
	}
	if i := slices.Index(o.conns, c); i >= 0 {
		o.conns = slices.Delete(o.conns, i, i+1)
	}
	p.dropIfUnusedLocked(c.key, o)
}
