// Package h2client is a small HTTP/2 client for long-lived GET responses, such as event
// streams held by the ten thousand. It multiplexes the streams of one origin over few
// connections, as net/http's transport does, but costs no goroutine per stream: each
// connection has one goroutine that reads its frames and hands every stream's data to that
// stream's buffer, which holds nothing while it is empty. (net/http keeps a goroutine per
// request alive until the response ends, which for an idle event stream is forever.)
//
// It speaks HTTP/2 over TLS (ALPN "h2") and over cleartext with prior knowledge (h2c). It
// sends only GET requests without a body, never pushes, and does not retry: a caller that
// gets an error reconnects by itself.
package h2client

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

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
	// IdleTimeout closes a connection that has had no stream for this long (default 90 s).
	IdleTimeout time.Duration
	// NotHTTP2TTL is how long an origin that refused h2 is remembered (default 10 min).
	NotHTTP2TTL time.Duration
}

// Pool holds HTTP/2 connections to origins, by scheme and authority.
type Pool struct {
	o Options

	mu     sync.Mutex
	conns  map[string][]*conn   // by key: usable or draining connections
	dials  map[string]*dialCall // by key: the dial in flight
	noH2   map[string]time.Time // by key: refused h2 until then
	closed bool
}

type dialCall struct {
	done chan struct{}
	c    *conn
	err  error
}

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
	o.IdleTimeout = cmp.Or(o.IdleTimeout, 90*time.Second)
	o.NotHTTP2TTL = cmp.Or(o.NotHTTP2TTL, 10*time.Minute)
	return &Pool{o: o, conns: map[string][]*conn{}, dials: map[string]*dialCall{}, noH2: map[string]time.Time{}}
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

// Close closes every connection; their streams fail.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*conn
	for _, cs := range p.conns {
		all = append(all, cs...)
	}
	p.conns = map[string][]*conn{}
	p.mu.Unlock()
	for _, c := range all {
		c.close(errors.New("h2client: pool closed"))
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
	for attempt := 0; ; attempt++ {
		c, err := p.conn(ctx, u)
		if err != nil {
			return nil, nil, err
		}
		s, err := c.open(u, header)
		if errors.Is(err, errConnFull) && attempt < 3 {
			continue // the connection filled up or went away meanwhile: another one
		}
		if err != nil {
			return nil, nil, err
		}
		resp, err := s.awaitHead(ctx)
		if err != nil {
			s.Close()
			return nil, nil, err
		}
		return s, resp, nil
	}
}

func key(u *url.URL) string {
	return u.Scheme + "://" + streamio.HostPort(u)
}

var errConnFull = errors.New("h2client: connection cannot take another stream")

// maxDialsPerOpen bounds the connections one Open waits for: each new one may be filled by
// other callers first, and a server that allows no stream at all must not make it dial
// forever.
const maxDialsPerOpen = 4

// conn returns a connection to u's origin with room for a stream, dialing one if needed.
// Concurrent callers wait for one dial rather than each making their own.
func (p *Pool) conn(ctx context.Context, u *url.URL) (*conn, error) {
	k := key(u)
	for dials := 0; ; dials++ {
		if dials > maxDialsPerOpen {
			return nil, errors.New("h2client: no connection to the server has room for another stream")
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("h2client: pool closed")
		}
		if until, ok := p.noH2[k]; ok {
			if time.Now().Before(until) {
				p.mu.Unlock()
				return nil, ErrNotHTTP2
			}
			delete(p.noH2, k)
		}
		for _, c := range p.conns[k] {
			if c.hasRoom() {
				p.mu.Unlock()
				return c, nil
			}
		}
		call := p.dials[k]
		if call == nil {
			call = &dialCall{done: make(chan struct{})}
			p.dials[k] = call
			go p.dial(k, u, call)
		}
		p.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if call.err != nil {
			return nil, call.err
		}
		// Loop: the new connection may be full already, by other waiters.
	}
}

// dial makes a connection for key k on its own context: it serves every caller waiting.
func (p *Pool) dial(k string, u *url.URL, call *dialCall) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.newConn(ctx, u)
	p.mu.Lock()
	delete(p.dials, k)
	switch {
	case errors.Is(err, ErrNotHTTP2):
		p.noH2[k] = time.Now().Add(p.o.NotHTTP2TTL)
	case err == nil && p.closed:
		err = errors.New("h2client: pool closed")
	case err == nil && !c.alive():
		err = errors.New("h2client: the connection ended as it opened")
	case err == nil:
		p.conns[k] = append(p.conns[k], c)
	}
	p.mu.Unlock()
	if err != nil && c != nil {
		c.close(err)
	}
	call.c, call.err = c, err
	close(call.done)
}

// forget removes c from the pool (it is closed or going away).
func (p *Pool) forget(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := p.conns[c.key]
	for i, x := range cs {
		if x == c {
			cs = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(cs) == 0 {
		delete(p.conns, c.key)
	} else {
		p.conns[c.key] = cs
	}
}

func (p *Pool) newConn(ctx context.Context, u *url.URL) (*conn, error) {
	nc, err := p.o.Dial(ctx, "tcp", streamio.HostPort(u))
	if err != nil {
		return nil, err
	}
	if u.Scheme == "https" {
		cfg := &tls.Config{}
		if p.o.TLSConfig != nil {
			cfg = p.o.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"h2", "http/1.1"}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		if tc.ConnectionState().NegotiatedProtocol != "h2" {
			tc.Close()
			return nil, ErrNotHTTP2
		}
		nc = tc
	}
	c := &conn{
		pool: p, key: key(u), nc: nc,
		bw:      bufio.NewWriterSize(nc, 4<<10),
		streams: map[uint32]*Stream{},
		nextID:  1,
		// Until the server's SETTINGS say otherwise, assume the RFC's suggested minimum.
		maxStreams: 100,
	}
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 4<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	// We advertise no larger frames than the protocol's default: a larger one is an error,
	// not a buffer of up to 16 MiB kept for the connection.
	c.fr.SetMaxReadFrameSize(16384)
	c.fr.MaxHeaderListSize = p.o.MaxHeaderListSize
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.lastRead.Store(time.Now().UnixNano())

	// The preface, our settings, and a large connection window: streams' own windows bound
	// what each buffers.
	_ = nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
		nc.Close()
		return nil, err
	}
	err = c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: p.o.StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: p.o.MaxHeaderListSize},
	)
	if err == nil {
		err = c.fr.WriteWindowUpdate(0, connWindow-initialWindow)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	_ = nc.SetWriteDeadline(time.Time{})
	if err == nil {
		// The server's SETTINGS come first: with its stream limit known, a burst of opens
		// fills this connection instead of dialing more.
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f http2.Frame
		if f, err = c.fr.ReadFrame(); err == nil {
			if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
				err = c.handle(sf)
			} else {
				err = errors.New("h2client: the server did not start with SETTINGS")
			}
		}
		_ = nc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.idle = time.AfterFunc(p.o.IdleTimeout, c.closeIfIdle)
	c.ping = time.AfterFunc(p.o.PingInterval, c.keepalive)
	go c.readLoop()
	return c, nil
}

const (
	initialWindow = 65535   // HTTP/2's initial connection window
	connWindow    = 1 << 30 // the connection window we keep open
)

// conn is one HTTP/2 connection.
type conn struct {
	pool *Pool
	key  string
	nc   net.Conn
	fr   *http2.Framer // reading: only readLoop; writing: under wmu

	wmu  sync.Mutex // serializes frame writes, and stream creation with them
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu         sync.Mutex
	streams    map[uint32]*Stream
	nextID     uint32
	maxStreams uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS
	goAway     bool   // no new streams
	err        error  // set when the connection is closed
	connUnack  uint32 // connection-level bytes consumed and not yet credited
	pingSent   bool
	idle, ping *time.Timer

	lastRead atomic.Int64 // unix nanos of the last frame read
}

// alive tells whether the connection is neither closed nor going away.
func (c *conn) alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goAway
}

func (c *conn) hasRoom() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goAway && uint32(len(c.streams)) < c.maxStreams && c.nextID < 1<<31-1
}

// open sends a request on a new stream.
func (c *conn) open(u *url.URL, header http.Header) (*Stream, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.err != nil || c.goAway || uint32(len(c.streams)) >= c.maxStreams || c.nextID >= 1<<31-1 {
		c.mu.Unlock()
		return nil, errConnFull
	}
	s := &Stream{c: c, id: c.nextID, window: c.pool.o.StreamWindow, head: make(chan struct{})}
	c.nextID += 2
	c.streams[s.id] = s
	c.idle.Stop()
	c.mu.Unlock()

	c.hbuf.Reset()
	c.writeRequestHeaders(u, header)
	block := c.hbuf.Bytes()
	maxFrame := 16384 // the server may allow more; the minimum is always allowed
	first := block
	if len(first) > maxFrame {
		first = block[:maxFrame]
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer c.nc.SetWriteDeadline(time.Time{})
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: first, EndStream: true, EndHeaders: len(first) == len(block)})
	for rest := block[len(first):]; err == nil && len(rest) > 0; {
		n := min(len(rest), maxFrame)
		err = c.fr.WriteContinuation(s.id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		go c.close(err) // readLoop may hold c.mu; never close under wmu
		return nil, err
	}
	return s, nil
}

// Headers that are about one connection and not sent over HTTP/2 (RFC 9113, 8.2.2).
var connectionHeaders = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true,
	"upgrade": true, "host": true, "te": true,
}

func (c *conn) writeRequestHeaders(u *url.URL, header http.Header) {
	path := u.RequestURI()
	if u.Opaque == "" && path == "" {
		path = "/"
	}
	authority := u.Host
	if p := u.Port(); (u.Scheme == "https" && p == "443") || (u.Scheme == "http" && p == "80") {
		authority = u.Hostname()
		if strings.Contains(authority, ":") {
			authority = "[" + authority + "]"
		}
	}
	w := func(k, v string) { _ = c.henc.WriteField(hpack.HeaderField{Name: k, Value: v}) }
	w(":method", "GET")
	w(":scheme", u.Scheme)
	w(":authority", authority)
	w(":path", path)
	ua := false
	for k, vs := range header {
		lk := strings.ToLower(k)
		if connectionHeaders[lk] || !http2ValidHeader(lk) {
			continue
		}
		ua = ua || lk == "user-agent"
		for _, v := range vs {
			w(lk, v)
		}
	}
	if !ua {
		w("user-agent", "Go-http-client/2.0")
	}
}

func http2ValidHeader(k string) bool { return k != "" && !strings.HasPrefix(k, ":") }

// readLoop reads the connection's frames until it fails.
func (c *conn) readLoop() {
	var err error
	for err == nil {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		var se http2.StreamError
		if errors.As(err, &se) {
			// One malformed response (a bad header, say): that stream fails, not the others.
			if s := c.stream(se.StreamID); s != nil {
				c.remove(s)
				s.fail(fmt.Errorf("h2client: %v", se))
			}
			err = c.write(func() error { return c.fr.WriteRSTStream(se.StreamID, se.Code) })
			continue
		}
		if err != nil {
			break
		}
		c.lastRead.Store(time.Now().UnixNano())
		err = c.handle(f)
	}
	c.close(err)
}

func (c *conn) stream(id uint32) *Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if s := c.stream(f.StreamID); s != nil {
			s.onHeaders(f)
		}
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.RSTStreamFrame:
		if s := c.stream(f.StreamID); s != nil {
			c.remove(s)
			s.fail(fmt.Errorf("h2client: stream reset by the server (%v)", f.ErrCode))
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		err := f.ForeachSetting(func(st http2.Setting) error {
			switch st.ID {
			case http2.SettingMaxConcurrentStreams:
				c.mu.Lock()
				c.maxStreams = st.Val
				c.mu.Unlock()
			case http2.SettingHeaderTableSize:
				c.wmu.Lock()
				c.henc.SetMaxDynamicTableSizeLimit(st.Val)
				c.wmu.Unlock()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return c.write(func() error { return c.fr.WriteSettingsAck() })
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingSent = false
			c.mu.Unlock()
			return nil
		}
		return c.write(func() error { return c.fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goAway = true
		var gone []*Stream
		for id, s := range c.streams {
			if id > f.LastStreamID {
				gone = append(gone, s)
				delete(c.streams, id)
			}
		}
		c.mu.Unlock()
		c.pool.forget(c)
		for _, s := range gone {
			s.fail(fmt.Errorf("h2client: the server is going away (%v)", f.ErrCode))
		}
		c.closeIfIdle()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

func (c *conn) onData(f *http2.DataFrame) error {
	n := f.Header().Length // counts padding too
	s := c.stream(f.StreamID)
	if s == nil {
		// A stream we closed: credit the connection at once.
		return c.credit(nil, n)
	}
	ok, dropped := s.onData(f.Data(), n, f.StreamEnded())
	if !ok {
		c.remove(s)
		_ = c.write(func() error { return c.fr.WriteRSTStream(s.id, http2.ErrCodeFlowControl) })
		s.fail(errors.New("h2client: the server sent more than the stream's flow-control window"))
		return c.credit(nil, n)
	}
	if f.StreamEnded() {
		c.remove(s)
	}
	// Padding, and data a closed stream drops, are consumed at once: give them back now
	// (the stream's share too, once enough adds up), or padded frames could stall it.
	if pad := n - uint32(len(f.Data())); pad+dropped > 0 {
		return c.credit(s, pad+dropped)
	}
	return nil
}

// credit gives back n consumed bytes to the connection's window, and to s's when not nil,
// in batches.
func (c *conn) credit(s *Stream, n uint32) error {
	c.mu.Lock()
	c.connUnack += n
	var connInc uint32
	if c.connUnack >= connWindow/4 {
		connInc, c.connUnack = c.connUnack, 0
	}
	c.mu.Unlock()
	var streamInc uint32
	if s != nil {
		streamInc = s.takeCredit()
	}
	if connInc == 0 && streamInc == 0 {
		return nil
	}
	return c.write(func() error {
		if connInc > 0 {
			if err := c.fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return c.fr.WriteWindowUpdate(s.id, streamInc)
		}
		return nil
	})
}

// write runs one or more frame writes and flushes them.
func (c *conn) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer c.nc.SetWriteDeadline(time.Time{})
	if err := f(); err != nil {
		return err
	}
	return c.bw.Flush()
}

// remove forgets s on the connection.
func (c *conn) remove(s *Stream) {
	c.mu.Lock()
	_, ok := c.streams[s.id]
	delete(c.streams, s.id)
	empty := len(c.streams) == 0
	c.mu.Unlock()
	if ok && empty {
		c.idle.Reset(c.pool.o.IdleTimeout)
	}
}

// closeIfIdle closes the connection if it has no stream.
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.err == nil
	if idle {
		c.goAway = true // in the same critical section: no stream opens on it any more
	}
	c.mu.Unlock()
	if idle {
		c.close(errors.New("h2client: idle connection closed"))
	}
}

// keepalive pings a connection that read nothing for a while, and closes it when the
// answer is late.
func (c *conn) keepalive() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	quiet := time.Since(time.Unix(0, c.lastRead.Load()))
	switch {
	case c.pingSent && quiet >= c.pool.o.PingTimeout:
		c.mu.Unlock()
		c.close(errors.New("h2client: the server did not answer a ping"))
		return
	case c.pingSent:
		c.ping.Reset(c.pool.o.PingTimeout - quiet)
		c.mu.Unlock()
		return
	case quiet < c.pool.o.PingInterval:
		c.ping.Reset(c.pool.o.PingInterval - quiet)
		c.mu.Unlock()
		return
	}
	c.pingSent = true
	c.ping.Reset(c.pool.o.PingTimeout)
	c.mu.Unlock()
	if err := c.write(func() error { return c.fr.WritePing(false, [8]byte{'p', 'u', 's', 'h', 'p', 'r', 'x', 'y'}) }); err != nil {
		c.close(err)
	}
}

// close closes the connection once; its streams fail with err.
func (c *conn) close(err error) {
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*Stream{}
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.ping != nil {
		c.ping.Stop()
	}
	c.mu.Unlock()
	c.pool.forget(c)
	c.nc.Close()
	for _, s := range streams {
		s.fail(fmt.Errorf("h2client: connection lost: %w", err))
	}
}

// Stream is one request's response body.
type Stream struct {
	c  *conn
	id uint32

	head chan struct{} // closed when the response head (or an error) is in
	resp *Response

	mu       sync.Mutex
	buf      []byte // received, not yet read; nil when empty
	off      int
	err      error  // io.EOF after END_STREAM, or why the stream failed
	window   uint32 // bytes the server may still send
	unacked  uint32 // bytes read and not yet credited back
	headDone bool
	closed   bool
	notify   func() // called, without locks held, when data or the end arrives
}

// ErrWouldBlock is returned by TryRead when the stream has no data yet.
var ErrWouldBlock = streamio.ErrWouldBlock

var _ streamio.Stream = (*Stream)(nil)

// SetNotify sets a function that is called whenever data or the end arrives, or the stream
// is closed. It runs on the connection's reading goroutine: it must not block (start work
// elsewhere). With it, a stream needs no goroutine waiting on it.
func (s *Stream) SetNotify(f func()) {
	s.mu.Lock()
	s.notify = f
	s.mu.Unlock()
}

// TryRead reads what is buffered, or reports the end of the body (io.EOF) or why the
// stream failed; with no data, and the stream neither ended nor failed, it returns
// ErrWouldBlock. (streamio.Blocking makes a reader that waits.)
func (s *Stream) TryRead(b []byte) (int, error) {
	s.mu.Lock()
	if s.off < len(s.buf) {
		n := copy(b, s.buf[s.off:])
		s.off += n
		if s.off == len(s.buf) {
			// Drained: let go of the buffer, so that an idle stream holds nothing.
			s.buf, s.off = nil, 0
		}
		s.unacked += uint32(n)
		s.mu.Unlock()
		if err := s.c.credit(s, uint32(n)); err != nil {
			go s.c.close(err)
		}
		return n, nil
	}
	err := s.err
	switch {
	case s.closed:
		err = errStreamClosed
	case err == nil:
		err = ErrWouldBlock
	}
	s.mu.Unlock()
	return 0, err
}

func (s *Stream) awaitHead(ctx context.Context) (*Response, error) {
	select {
	case <-s.head:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := s.resp
	if resp == nil {
		return nil, s.err
	}
	s.resp = nil // the caller has it: an idle stream keeps as little as it can
	return resp, nil
}

func (s *Stream) onHeaders(f *http2.MetaHeadersFrame) {
	status, err := strconv.Atoi(f.PseudoValue("status"))
	s.mu.Lock()
	if s.headDone {
		// Trailers: nothing to take from them but the end.
		s.mu.Unlock()
		if f.StreamEnded() {
			s.c.remove(s)
			s.fail(io.EOF)
		}
		return
	}
	if err != nil || status < 100 || status > 999 {
		s.mu.Unlock()
		s.c.remove(s)
		_ = s.c.write(func() error { return s.c.fr.WriteRSTStream(s.id, http2.ErrCodeProtocol) })
		s.fail(errors.New("h2client: the response has no valid :status"))
		return
	}
	if status < 200 {
		s.mu.Unlock()
		return // 1xx: wait for the final head
	}
	h := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		h.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	s.resp, s.headDone = &Response{Status: status, Header: h}, true
	close(s.head)
	s.mu.Unlock()
	if f.StreamEnded() {
		s.c.remove(s)
		s.fail(io.EOF)
	}
}

// onData buffers a DATA frame's payload; n is the frame's flow-controlled length. It
// reports false when the server overran the window, and how many data bytes it dropped
// (a closed stream keeps none).
func (s *Stream) onData(data []byte, n uint32, end bool) (ok bool, dropped uint32) {
	s.mu.Lock()
	if n > s.window {
		s.mu.Unlock()
		return false, 0
	}
	s.window -= n
	s.unacked += n - uint32(len(data)) // padding is consumed at once
	if s.closed {
		s.unacked += uint32(len(data))
		dropped = uint32(len(data))
	} else if len(data) > 0 {
		if s.off == len(s.buf) {
			s.buf, s.off = s.buf[:0], 0
		}
		s.buf = append(s.buf, data...)
	}
	if end {
		s.endLocked(io.EOF)
	}
	streamio.UnlockAndNotify(&s.mu, s.notify)
	return true, dropped
}

func (s *Stream) endLocked(err error) {
	if s.err == nil {
		s.err = err
	}
	if !s.headDone {
		s.headDone = true
		close(s.head)
	}
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	s.endLocked(err)
	streamio.UnlockAndNotify(&s.mu, s.notify)
}

// takeCredit returns the bytes to credit back to the server, once enough were read.
func (s *Stream) takeCredit() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.unacked < s.c.pool.o.StreamWindow/4 {
		return 0
	}
	inc := s.unacked
	s.window += inc
	s.unacked = 0
	return inc
}

var errStreamClosed = errors.New("h2client: stream closed")

// Close ends the stream: a stream the server has not ended is reset (CANCEL).
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ended := s.err != nil
	unread := uint32(len(s.buf) - s.off)
	s.buf, s.off = nil, 0
	streamio.UnlockAndNotify(&s.mu, s.notify)
	s.c.remove(s)
	if unread > 0 {
		// Dropped unread: the connection's window must get them back.
		if err := s.c.credit(nil, unread); err != nil {
			go s.c.close(err)
		}
	}
	if !ended {
		_ = s.c.write(func() error { return s.c.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
	}
	return nil
}
