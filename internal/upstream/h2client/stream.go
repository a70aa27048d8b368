package h2client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"

	"golang.org/x/net/http2"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
)

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
		// The window update is queued, never waited for; a failure closed the connection,
		// and the stream hears of it.
		_ = s.c.credit(s, uint32(n))
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

var (
	errNoStatus          = errors.New("h2client: the response has no valid :status")
	errHeaderListTooLong = errors.New("h2client: the response's header list is longer than MaxHeaderListSize")
	errInformationalEnd  = errors.New("h2client: an informational (1xx) response ended the stream")
	errTrailersNoEnd     = errors.New("h2client: trailers that do not end the stream")
	errDataBeforeHead    = errors.New("h2client: DATA before the response head")
	errWindowOverrun     = errors.New("h2client: the server sent more than the stream's flow-control window")
)

// onHeaders takes a HEADERS frame: an informational head (1xx, skipped), the response's
// head, or its trailers (which end it). An error is the server's: the stream is reset.
func (s *Stream) onHeaders(f *http2.MetaHeadersFrame) error {
	if f.Truncated {
		return errHeaderListTooLong
	}
	s.mu.Lock()
	if s.headDone {
		s.mu.Unlock()
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			return errTrailersNoEnd
		}
		// Trailers: nothing to take from them but the end.
		s.c.remove(s)
		s.fail(io.EOF)
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	switch {
	case err != nil || status < 100 || status > 999 || status == http.StatusSwitchingProtocols:
		s.mu.Unlock()
		return errNoStatus
	case status < 200 && f.StreamEnded():
		s.mu.Unlock()
		return errInformationalEnd
	case status < 200:
		s.mu.Unlock()
		return nil // 100, 103: the final head follows
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
	return nil
}

// onData buffers a DATA frame's payload; n is the frame's flow-controlled length. It
// returns how many data bytes it dropped (a closed stream keeps none), or the error that
// fails the stream and the code to reset it with.
func (s *Stream) onData(data []byte, n uint32, end bool) (dropped uint32, code http2.ErrCode, err error) {
	s.mu.Lock()
	switch {
	case n > s.window:
		s.mu.Unlock()
		return 0, http2.ErrCodeFlowControl, errWindowOverrun
	case !s.headDone:
		s.mu.Unlock()
		return 0, http2.ErrCodeProtocol, errDataBeforeHead
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
	return dropped, 0, nil
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
	if !ended {
		// Reset before the room is given to another stream (see conn.reset).
		_ = s.c.queue(func(fr *http2.Framer) error { return fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
	}
	s.c.remove(s)
	if unread > 0 {
		// Dropped unread: the connection's window must get them back.
		_ = s.c.credit(nil, unread)
	}
	return nil
}
