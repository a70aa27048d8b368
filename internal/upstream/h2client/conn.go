package h2client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
)

const (
	initialWindow = 65535   // HTTP/2's initial connection window
	connWindow    = 1 << 30 // the connection window we keep open
	maxFrameSize  = 16384   // the largest frame we read or write (the protocol's default)

	// maxQueued bounds the bytes of frames queued for a connection's writer: a server that
	// makes it queue more (PINGs and SETTINGS it never reads the answers to) loses the
	// connection.
	maxQueued = 1 << 20
	// writeChunk is the most the writer hands the network at once: a write deadline is
	// about progress, not about the size of a burst.
	writeChunk = 16 << 10
)

var (
	errNotReading = errors.New("h2client: the server is not reading what it is sent")
	errGoneAway   = errors.New("h2client: the server went away and its last stream ended")
)

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
		streams: map[uint32]*Stream{},
		nextID:  1,
		// Until the server's SETTINGS say otherwise, assume the RFC's suggested minimum.
		maxStreams: 100,
		kick:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	c.fr = http2.NewFramer(io.Discard, bufio.NewReaderSize(nc, 4<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	// We advertise no larger frames than the protocol's default: a larger one is an error,
	// not a buffer of up to 16 MiB kept for the connection.
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.MaxHeaderListSize = p.o.MaxHeaderListSize
	c.wfr = http2.NewFramer((*queueWriter)(c), nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.lastRead.Store(time.Now().UnixNano())

	// The preface, our settings, and a large connection window (streams' own windows bound
	// what each buffers), written before the goroutines start.
	c.queued = append(c.queued, http2.ClientPreface...)
	err = c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: p.o.StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: p.o.MaxHeaderListSize},
	)
	if err == nil {
		err = c.wfr.WriteWindowUpdate(0, connWindow-initialWindow)
	}
	if err == nil {
		_ = nc.SetWriteDeadline(time.Now().Add(p.o.WriteTimeout))
		_, err = nc.Write(c.queued)
		_ = nc.SetWriteDeadline(time.Time{})
		c.queued = c.queued[:0]
	}
	if err == nil {
		// The server's SETTINGS come first: with its stream limit known, a burst of opens
		// fills this connection instead of dialing more. (The acknowledgement is queued for
		// the writer.)
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
	go c.writeLoop()
	return c, nil
}

// conn is one HTTP/2 connection. Its reading goroutine (readLoop) is the only one that
// reads; every frame it or anyone else sends is encoded into queued, under wmu, and written
// by its writing goroutine (writeLoop): no one waits on the network but those two.
//
// Locks are taken in the order Pool.mu, wmu, mu, Stream.mu; close is never called with one
// of them held.
type conn struct {
	pool *Pool
	key  string
	nc   net.Conn
	fr   *http2.Framer // reading: only readLoop

	wmu    sync.Mutex    // serializes frame encoding, and stream creation with it
	wfr    *http2.Framer // writes into queued
	queued []byte        // frames encoded, not yet handed to the writer
	werr   error         // set when the connection is closed: nothing more is queued
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	kick   chan struct{} // tells the writer that frames are queued
	done   chan struct{} // closed by close

	mu         sync.Mutex
	streams    map[uint32]*Stream
	nextID     uint32
	reserved   int    // streams promised to callers of Pool.conn, not yet opened
	maxStreams uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS
	goAway     bool   // no new streams
	err        error  // set when the connection is closed
	connUnack  uint32 // connection-level bytes consumed and not yet credited
	pingSent   bool
	idle, ping *time.Timer

	lastRead atomic.Int64 // unix nanos of the last frame read
}

// queueWriter is what wfr writes into: the connection's queue (under wmu).
type queueWriter conn

func (w *queueWriter) Write(b []byte) (int, error) {
	w.queued = append(w.queued, b...)
	return len(b), nil
}

// alive tells whether the connection is neither closed nor going away.
func (c *conn) alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goAway
}

func (c *conn) limit() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxStreams
}

// reserve promises the caller a stream on c, if it has room for one.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	busy := uint32(len(c.streams)) + uint32(c.reserved)
	if c.err != nil || c.goAway || busy >= c.maxStreams || c.nextID+2*uint32(c.reserved) >= 1<<31-1 {
		return false
	}
	c.reserved++
	c.idle.Stop()
	return true
}

// unreserve gives back a stream reserve promised and open did not take.
func (c *conn) unreserve() {
	c.mu.Lock()
	c.reserved--
	c.mu.Unlock()
	c.freed()
}

// open sends a request on a new stream, which reserve promised.
func (c *conn) open(u *url.URL, header http.Header) (*Stream, error) {
	c.wmu.Lock()
	c.mu.Lock()
	c.reserved--
	if c.err != nil || c.goAway {
		c.mu.Unlock()
		c.wmu.Unlock()
		c.freed()
		return nil, fmt.Errorf("h2client: the connection closed or went away: %w", errUnprocessed)
	}
	s := &Stream{c: c, id: c.nextID, window: c.pool.o.StreamWindow, head: make(chan struct{})}
	c.nextID += 2
	c.streams[s.id] = s
	c.mu.Unlock()
	// In the same critical section of wmu as the id: HEADERS go out in the order of ids.
	c.hbuf.Reset()
	c.writeRequestHeaders(u, header)
	block := c.hbuf.Bytes()
	first := block[:min(len(block), maxFrameSize)]
	err := c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: first, EndStream: true, EndHeaders: len(first) == len(block)})
	for rest := block[len(first):]; err == nil && len(rest) > 0; {
		n := min(len(rest), maxFrameSize)
		err = c.wfr.WriteContinuation(s.id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	err = c.checkQueueLocked(err)
	c.wmu.Unlock()
	if err = c.afterQueue(err); err != nil {
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

// queue encodes frames with write for the writer. It never waits on the network: it fails
// when the connection is closed, or closes it when the server let too much pile up. The
// caller holds none of the connection's or its streams' locks.
func (c *conn) queue(write func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	err := c.werr
	if err == nil {
		err = write(c.wfr)
	}
	err = c.checkQueueLocked(err)
	c.wmu.Unlock()
	return c.afterQueue(err)
}

// checkQueueLocked follows the encoding of frames, under wmu, with its error: a queue too
// long is an error too.
func (c *conn) checkQueueLocked(err error) error {
	if err == nil && len(c.queued) > maxQueued {
		err = errNotReading
	}
	return err
}

// afterQueue wakes the writer after frames were queued, or closes the connection when that
// failed (err from checkQueueLocked).
func (c *conn) afterQueue(err error) error {
	if err != nil {
		c.close(err)
		return err
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// writeLoop writes what is queued until the connection closes. A write that makes no
// progress for WriteTimeout closes the connection.
func (c *conn) writeLoop() {
	var out []byte
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.wmu.Lock()
		out, c.queued = c.queued, out[:0]
		c.wmu.Unlock()
		for b := out; len(b) > 0; {
			n := min(len(b), writeChunk)
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.pool.o.WriteTimeout))
			if _, err := c.nc.Write(b[:n]); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = fmt.Errorf("%w: a write made no progress for %v", errNotReading, c.pool.o.WriteTimeout)
				}
				c.close(fmt.Errorf("h2client: write: %w", err))
				return
			}
			b = b[n:]
		}
		if cap(out) > 64<<10 {
			out = nil // a burst's buffer is not kept
		}
	}
}

// readLoop reads the connection's frames until it fails.
func (c *conn) readLoop() {
	var err error
	for err == nil {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		var se http2.StreamError
		if errors.As(err, &se) {
			// One malformed response (a bad header, say): that stream fails, not the others.
			err = c.reset(se.StreamID, se.Code, fmt.Errorf("h2client: %v", se))
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

// opened tells whether id names a stream c opened (and may have closed since): a server
// that sends frames on another is broken.
func (c *conn) opened(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return id%2 == 1 && id < c.nextID
}

var errProtocol = http2.ConnectionError(http2.ErrCodeProtocol)

// reset fails the stream id, if it is open, with err, and resets it with code. The RST is
// queued before the stream leaves the connection: no stream that takes its room can reach
// the server first.
func (c *conn) reset(id uint32, code http2.ErrCode, err error) error {
	qerr := c.queue(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	if s := c.stream(id); s != nil {
		c.remove(s)
		s.fail(err)
	}
	return qerr
}

func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		s := c.stream(f.StreamID)
		if s == nil {
			if !c.opened(f.StreamID) {
				return errProtocol
			}
			return nil // a stream we reset: the server had not seen it yet
		}
		if err := s.onHeaders(f); err != nil {
			return c.reset(s.id, http2.ErrCodeProtocol, err)
		}
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.RSTStreamFrame:
		if s := c.stream(f.StreamID); s != nil {
			c.remove(s)
			err := fmt.Errorf("h2client: stream reset by the server (%v)", f.ErrCode)
			if f.ErrCode == http2.ErrCodeRefusedStream {
				err = fmt.Errorf("%w: %w", err, errUnprocessed)
			}
			s.fail(err)
		} else if !c.opened(f.StreamID) {
			return errProtocol
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		raised := false
		err := f.ForeachSetting(func(st http2.Setting) error {
			switch st.ID {
			case http2.SettingMaxConcurrentStreams:
				c.mu.Lock()
				raised = st.Val > c.maxStreams
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
		if raised {
			c.pool.roomMade(c)
		}
		return c.queue(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingSent = false
			c.mu.Unlock()
			return nil
		}
		return c.queue(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return errProtocol
	}
	return nil
}

// onGoAway takes the connection out of the pool: the streams above the last one the server
// processes fail (Open sends them again on another connection), the others go on, and the
// connection closes when the last of them ends.
func (c *conn) onGoAway(f *http2.GoAwayFrame) {
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
		s.fail(fmt.Errorf("h2client: the server is going away (%v): %w", f.ErrCode, errUnprocessed))
	}
	c.closeIfIdle()
}

func (c *conn) onData(f *http2.DataFrame) error {
	n := f.Header().Length // counts padding too
	s := c.stream(f.StreamID)
	if s == nil {
		if !c.opened(f.StreamID) {
			return errProtocol
		}
		// A stream we closed: credit the connection at once.
		return c.credit(nil, n)
	}
	dropped, code, err := s.onData(f.Data(), n, f.StreamEnded())
	if err != nil {
		if err := c.reset(s.id, code, err); err != nil {
			return err
		}
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
	return c.queue(func(fr *http2.Framer) error {
		if connInc > 0 {
			if err := fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return fr.WriteWindowUpdate(s.id, streamInc)
		}
		return nil
	})
}

// remove forgets s on the connection, and gives its room to another stream.
func (c *conn) remove(s *Stream) {
	c.mu.Lock()
	_, ok := c.streams[s.id]
	delete(c.streams, s.id)
	c.mu.Unlock()
	if ok {
		c.freed()
	}
}

// freed follows a stream or a promise of one leaving c: a connection that went away closes
// with its last stream, an idle one after IdleTimeout, and any other gives the room to a
// caller waiting.
func (c *conn) freed() {
	c.mu.Lock()
	empty := len(c.streams) == 0 && c.reserved == 0 && c.err == nil
	goAway := c.goAway
	if empty && !goAway {
		c.idle.Reset(c.pool.o.IdleTimeout)
	}
	c.mu.Unlock()
	switch {
	case empty && goAway:
		c.close(errGoneAway)
	case !goAway:
		c.pool.roomMade(c)
	}
}

// closeIfIdle closes the connection if it has no stream.
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.reserved == 0 && c.err == nil
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
	_ = c.queue(func(fr *http2.Framer) error {
		return fr.WritePing(false, [8]byte{'p', 'u', 's', 'h', 'p', 'r', 'x', 'y'})
	})
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
	c.wmu.Lock()
	c.werr, c.queued = err, nil
	c.wmu.Unlock()
	close(c.done)
	c.pool.forget(c)
	c.nc.Close()
	for _, s := range streams {
		s.fail(fmt.Errorf("h2client: connection lost: %w", err))
	}
}
