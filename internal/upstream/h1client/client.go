// Package h1client is a small HTTP/1.1 client for long-lived GET responses, such as event
// streams held by the ten thousand. Each response has its own connection and one goroutine
// that reads it into the stream's buffer with a small read buffer and a shallow stack;
// the stream's reader is notified instead of waiting (see Stream.SetNotify), so that an
// idle stream costs a few kilobytes, where net/http keeps three goroutines and two bufio
// buffers per connection.
//
// It sends only GET requests without a body, one per connection, and does not follow
// redirects or retry.
package h1client

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
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
)

// ErrWouldBlock is returned by TryRead when the stream has no data yet.
var ErrWouldBlock = streamio.ErrWouldBlock

var _ streamio.Stream = (*Stream)(nil)

// Options configure a Client. Zero fields take defaults.
type Options struct {
	// Dial opens the connection (it may refuse addresses). Default: net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSConfig is the base TLS configuration for https:// URLs.
	TLSConfig *tls.Config
	// MaxHeaderBytes bounds the response head (default 64 KiB).
	MaxHeaderBytes int
	// MaxBuffered is how much of a body the stream buffers before the connection's reader
	// waits for the stream's reader to catch up (default 64 KiB).
	MaxBuffered int
}

// Client makes requests.
type Client struct{ o Options }

// New returns a Client.
func New(o Options) *Client {
	if o.Dial == nil {
		o.Dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	o.MaxHeaderBytes = cmp.Or(o.MaxHeaderBytes, 64<<10)
	o.MaxBuffered = cmp.Or(o.MaxBuffered, 64<<10)
	return &Client{o: o}
}

// Response is the head of a response. Line is the status line after the protocol
// ("503 Service Unavailable"), as the server wrote it.
type Response struct {
	Status int
	Line   string
	Header http.Header
}

// Open connects, sends a GET for u with header, and reads the response head, as long as ctx
// allows. The body is read from the returned Stream, which the caller must Close.
func (c *Client) Open(ctx context.Context, u *url.URL, header http.Header) (*Stream, *Response, error) {
	return c.OpenWithin(ctx, u, header, Timeouts{})
}

// Timeouts bound the two phases of a request. Zero: no bound but the context's.
type Timeouts struct {
	// Connect bounds the dial, the TLS handshake and the request's write, together.
	Connect time.Duration
	// Head bounds the wait for the response head once the request is sent: an origin may
	// send its head only with its first event, which can be long in coming.
	Head time.Duration
}

// ErrConnectTimeout and ErrHeadTimeout tell which phase of OpenWithin timed out.
var (
	ErrConnectTimeout = errors.New("timed out connecting to the origin")
	ErrHeadTimeout    = errors.New("no response head from the origin")
)

// OpenWithin is Open with each phase bounded by t as well as by ctx.
func (c *Client) OpenWithin(ctx context.Context, u *url.URL, header http.Header, t Timeouts) (*Stream, *Response, error) {
	start := time.Now()
	dctx := ctx
	if t.Connect > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, start.Add(t.Connect))
		defer cancel()
	}
	nc, err := c.o.Dial(dctx, "tcp", streamio.HostPort(u))
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, nil, fmt.Errorf("%w within %s", ErrConnectTimeout, t.Connect)
		}
		return nil, nil, err
	}
	// The context bounds everything up to the head; each phase sets its own deadline, unless
	// the context ended already.
	d := &deadlines{nc: nc}
	if t.Connect > 0 {
		d.set(start.Add(t.Connect))
	}
	stop := context.AfterFunc(ctx, d.cancel)
	s, resp, err := c.open(nc, u, header, d, t.Head)
	if !stop() || ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
		s = nil
	}
	if err != nil {
		nc.Close()
		switch {
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return nil, nil, err
		case d.head:
			return nil, nil, fmt.Errorf("%w within %s of the request", ErrHeadTimeout, t.Head)
		default:
			return nil, nil, fmt.Errorf("%w within %s", ErrConnectTimeout, t.Connect)
		}
	}
	_ = nc.SetDeadline(time.Time{})
	go s.readLoop()
	return s, resp, nil
}

// deadlines sets a connection's deadline for each phase of Open, and for good when the
// context ends: a phase that starts after that must not lift it.
type deadlines struct {
	nc       net.Conn
	mu       sync.Mutex
	canceled bool
	head     bool // the request is sent: waiting for the head (set and read by Open's goroutine)
}

func (d *deadlines) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.canceled {
		_ = d.nc.SetDeadline(t)
	}
}

func (d *deadlines) cancel() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.canceled = true
	_ = d.nc.SetDeadline(time.Unix(1, 0))
}

// headPhase starts the wait for the head, bounded by wait (0: only the context).
func (d *deadlines) headPhase(wait time.Duration) {
	var t time.Time
	if wait > 0 {
		t = time.Now().Add(wait)
	}
	d.set(t)
	d.head = true
}

func (c *Client) open(nc net.Conn, u *url.URL, header http.Header, d *deadlines, headWait time.Duration) (*Stream, *Response, error) {
	if u.Scheme == "https" {
		cfg := &tls.Config{}
		if c.o.TLSConfig != nil {
			cfg = c.o.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		if err := tc.Handshake(); err != nil {
			return nil, nil, err
		}
		nc = tc
	}
	if _, err := io.WriteString(nc, requestHead(u, header)); err != nil {
		return nil, nil, err
	}
	d.headPhase(headWait)
	lr := &io.LimitedReader{R: nc, N: int64(c.o.MaxHeaderBytes)}
	br := bufio.NewReaderSize(lr, 4096)
	tp := textproto.NewReader(br)
	var resp *Response
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return nil, nil, headError(err, lr)
		}
		proto, status, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
			return nil, nil, fmt.Errorf("malformed HTTP response %q", truncate(line))
		}
		code, _, _ := strings.Cut(status, " ")
		n, err := strconv.Atoi(code)
		if err != nil || len(code) != 3 || n < 100 {
			return nil, nil, fmt.Errorf("malformed HTTP status code %q", truncate(code))
		}
		mh, err := tp.ReadMIMEHeader()
		if err != nil {
			return nil, nil, headError(err, lr)
		}
		if n >= 200 || n == http.StatusSwitchingProtocols {
			resp = &Response{Status: n, Line: status, Header: http.Header(mh)}
			break
		}
		// 1xx: another head follows.
	}
	s := &Stream{nc: nc, max: c.o.MaxBuffered}
	te := transferCodings(resp.Header)
	switch {
	case resp.Status == http.StatusNoContent || resp.Status == http.StatusNotModified || resp.Status < 200:
		s.framing = framingNone
	case len(te) > 0 && strings.EqualFold(te[len(te)-1], "chunked"):
		s.framing = framingChunked
	case len(te) > 0:
		// A transfer coding other than chunked last: the body ends with the connection,
		// whatever Content-Length says (RFC 9112, section 6.3).
		s.framing = framingClose
	case resp.Header.Get("Content-Length") != "":
		n, err := strconv.ParseInt(strings.TrimSpace(resp.Header.Get("Content-Length")), 10, 64)
		if err != nil || n < 0 {
			return nil, nil, fmt.Errorf("bad Content-Length %q", truncate(resp.Header.Get("Content-Length")))
		}
		s.framing, s.remaining, s.done = framingLength, n, n == 0
	default:
		s.framing = framingClose
	}
	// What the head's buffer read past the head is the start of the body.
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n)
		if err := s.decode(rest); err != nil {
			// The head was fine: the body's error is the stream's to report.
			s.endLocked(err)
			s.done = true
		}
	}
	if s.framing == framingNone {
		s.done = true
	}
	return s, resp, nil
}

func headError(err error, lr *io.LimitedReader) error {
	if lr.N <= 0 {
		return errors.New("the response head is too large")
	}
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// transferCodings lists the response's transfer codings in order, from every
// Transfer-Encoding line and every comma-separated element of each.
func transferCodings(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Transfer-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}

// Headers that are about one connection, which the client sets itself.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Host": true, "Te": true, "Content-Length": true,
}

func requestHead(u *url.URL, header http.Header) string {
	var b strings.Builder
	path := u.RequestURI()
	b.WriteString("GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\n")
	ua := false
	for k, vs := range header {
		ck := http.CanonicalHeaderKey(k)
		if hopHeaders[ck] {
			continue
		}
		ua = ua || ck == "User-Agent"
		for _, v := range vs {
			// Values were checked by the API (no CR or LF); drop any that are not.
			if strings.ContainsAny(v, "\r\n") || strings.ContainsAny(ck, " \t\r\n:") {
				continue
			}
			b.WriteString(ck + ": " + v + "\r\n")
		}
	}
	if !ua {
		b.WriteString("User-Agent: Go-http-client/1.1\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// Body framings.
const (
	framingNone = iota
	framingLength
	framingChunked
	framingClose
)

// Stream is one response's body.
type Stream struct {
	nc  net.Conn
	max int

	mu     sync.Mutex
	room   *sync.Cond // signalled when the reader drains a full buffer
	buf    []byte     // decoded body not yet read; nil when empty
	off    int
	err    error // io.EOF at the body's end, or why it failed
	closed bool
	notify func()

	// Body framing state, touched only by the reading goroutine (and open before it).
	framing   int
	remaining int64 // framingLength: bytes left; framingChunked: of the current chunk
	chunk     chunkState
	line      []byte // a chunk-size line being assembled
	done      bool   // the framing says the body ended
}

// SetNotify sets a function called, without locks held, whenever data or the end arrives,
// or the stream is closed. It runs on the stream's reading goroutine and must not block.
func (s *Stream) SetNotify(f func()) {
	s.mu.Lock()
	s.notify = f
	ready := s.off < len(s.buf) || s.err != nil
	s.mu.Unlock()
	if ready && f != nil {
		f()
	}
}

// TryRead reads what is buffered; with nothing buffered and the body not ended, it returns
// ErrWouldBlock.
func (s *Stream) TryRead(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.off < len(s.buf) {
		n := copy(b, s.buf[s.off:])
		s.off += n
		if s.off == len(s.buf) {
			full := len(s.buf) >= s.max
			s.buf, s.off = nil, 0 // an idle stream holds no buffer
			if full && s.room != nil {
				s.room.Signal()
			}
		}
		return n, nil
	}
	if s.closed {
		return 0, errors.New("h1client: stream closed")
	}
	if s.err != nil {
		return 0, s.err
	}
	return 0, ErrWouldBlock
}

// Close closes the connection; the reading goroutine ends.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.buf, s.off = nil, 0
	if s.room != nil {
		s.room.Broadcast()
	}
	notify := s.notify
	s.mu.Unlock()
	err := s.nc.Close()
	if notify != nil {
		notify()
	}
	return err
}

// minRead is the smallest read buffer: an idle stream's goroutine waits with one of them.
const minRead = 256

// readLoop reads the connection until the body ends or fails. Its read buffer starts
// small, grows while reads fill it, and is small again as soon as one does not.
func (s *Stream) readLoop() {
	defer s.nc.Close()
	if s.err != nil {
		s.end(s.err) // the start of the body, read with the head, was bad
		return
	}
	var buf []byte
	size := minRead
	for !s.done {
		if len(buf) != size {
			buf = make([]byte, size)
		}
		n, err := s.nc.Read(buf)
		// Grow while reads fill the buffer (the stream is busy); otherwise the next read,
		// which may wait for long, gets the smallest one.
		if n == size && size < 16<<10 {
			size *= 2
		} else {
			size = minRead
		}
		if n > 0 {
			if derr := s.decode(buf[:n]); derr != nil {
				s.end(derr)
				return
			}
			if !s.wait() {
				return
			}
		}
		if err != nil {
			if s.framing == framingClose && err == io.EOF {
				s.done = true
				break
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			s.end(err)
			return
		}
	}
	s.end(io.EOF)
}

// wait blocks while the stream's buffer is full, and reports false if the stream was
// closed. It also notifies the reader of what came.
func (s *Stream) wait() bool {
	s.mu.Lock()
	streamio.UnlockAndNotify(&s.mu, s.notify)
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf)-s.off >= s.max && !s.closed {
		if s.room == nil {
			s.room = sync.NewCond(&s.mu)
		}
		s.room.Wait()
	}
	return !s.closed
}

func (s *Stream) end(err error) {
	s.mu.Lock()
	s.endLocked(err)
	streamio.UnlockAndNotify(&s.mu, s.notify)
}

func (s *Stream) endLocked(err error) {
	if s.err == nil {
		s.err = err
	}
}

// push appends decoded body bytes.
func (s *Stream) push(b []byte) {
	if len(b) == 0 {
		return
	}
	s.mu.Lock()
	if !s.closed {
		if s.off == len(s.buf) {
			s.buf, s.off = s.buf[:0], 0
		}
		s.buf = append(s.buf, b...)
	}
	s.mu.Unlock()
}

// Chunked decoding states (RFC 9112, section 7.1).
type chunkState int

const (
	chunkSize     chunkState = iota // reading a chunk-size line
	chunkData                       // reading chunk data
	chunkDataEnd                    // reading the CRLF after chunk data
	chunkTrailers                   // reading trailer lines until an empty one
)

const maxChunkLine = 4096

// decode turns raw connection bytes into body bytes by the framing.
func (s *Stream) decode(b []byte) error {
	switch s.framing {
	case framingNone:
		return nil // bytes after a body-less response: ignored (the connection is not reused)
	case framingClose:
		s.push(b)
		return nil
	case framingLength:
		n := int64(len(b))
		if n > s.remaining {
			n = s.remaining
		}
		s.push(b[:n])
		s.remaining -= n
		if s.remaining == 0 {
			s.done = true
		}
		return nil
	}
	for len(b) > 0 && !s.done {
		switch s.chunk {
		case chunkSize, chunkTrailers, chunkDataEnd:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				if len(s.line)+len(b) > maxChunkLine {
					return errors.New("chunked encoding: line too long")
				}
				s.line = append(s.line, b...)
				return nil
			}
			line := append(s.line, b[:i]...)
			s.line = nil
			b = b[i+1:]
			line = bytes.TrimSuffix(line, []byte("\r"))
			switch s.chunk {
			case chunkDataEnd:
				if len(line) != 0 {
					return errors.New("chunked encoding: data not followed by CRLF")
				}
				s.chunk = chunkSize
			case chunkTrailers:
				if len(line) == 0 {
					s.done = true
				}
			case chunkSize:
				if i := bytes.IndexByte(line, ';'); i >= 0 {
					line = line[:i] // chunk extensions are ignored
				}
				n, err := strconv.ParseUint(strings.TrimSpace(string(line)), 16, 62)
				if err != nil {
					return fmt.Errorf("chunked encoding: bad chunk size %q", truncate(string(line)))
				}
				if n == 0 {
					s.chunk = chunkTrailers
				} else {
					s.chunk, s.remaining = chunkData, int64(n)
				}
			}
		case chunkData:
			n := int64(len(b))
			if n > s.remaining {
				n = s.remaining
			}
			s.push(b[:n])
			b = b[n:]
			s.remaining -= n
			if s.remaining == 0 {
				s.chunk = chunkDataEnd
			}
		}
	}
	return nil
}
