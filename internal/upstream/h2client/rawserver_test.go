package h2client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
)

// rawOrigin is an HTTP/2 server written frame by frame by the test, for what a real server
// does not do on demand (GOAWAY, resets, CONTINUATION, padding, 1xx, a peer that stops
// reading). Its connections are net.Pipes handed to the pool by its Dial: nothing is
// buffered between the two ends.
type rawOrigin struct {
	t        *testing.T
	settings []http2.Setting
	serve    func(n int, rc *rawConn) // runs per connection (n from 1), on its own goroutine
	dialed   atomic.Int32
	wg       sync.WaitGroup
	done     chan struct{} // closed when the test ends
	// beforeDial, when set, runs first in each dial (n from 1); an error fails the dial.
	beforeDial func(ctx context.Context, n int) error
}

// newRawOrigin returns an origin whose connections send settings and then run serve.
func newRawOrigin(t *testing.T, settings []http2.Setting, serve func(n int, rc *rawConn)) *rawOrigin {
	o := &rawOrigin{t: t, settings: settings, serve: serve, done: make(chan struct{})}
	t.Cleanup(func() {
		close(o.done)
		o.wg.Wait()
	})
	return o
}

// await waits for ch to close, and reports false if the test ended first.
func (o *rawOrigin) await(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-o.done:
		return false
	}
}

func (o *rawOrigin) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n := int(o.dialed.Add(1))
	if o.beforeDial != nil {
		if err := o.beforeDial(ctx, n); err != nil {
			return nil, err
		}
	}
	client, server := net.Pipe()
	rc := newRawConn(server)
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer rc.close()
		if err := rc.fr.WriteSettings(o.settings...); err != nil {
			return
		}
		o.serve(n, rc)
	}()
	return client, nil
}

// pool returns a pool that dials o for every origin, and the URL of one.
func (o *rawOrigin) pool(opts h2client.Options) (*h2client.Pool, *url.URL) {
	opts.H2C, opts.Dial = true, o.dial
	p := h2client.NewPool(opts)
	o.t.Cleanup(p.Close) // before o.wg.Wait: cleanups run last first
	return p, &url.URL{Scheme: "http", Host: "origin.test", Path: "/events"}
}

// clientFrame is what the client sent, as the server read it.
type clientFrame struct {
	typ      http2.FrameType
	streamID uint32
	flags    http2.Flags
	fields   []hpack.HeaderField // HEADERS
	code     http2.ErrCode       // RST_STREAM, GOAWAY
	incr     uint32              // WINDOW_UPDATE
}

// rawConn is the server's end of one connection. A goroutine reads what the client sends
// into in, until stopReading; the test's goroutine writes with fr.
type rawConn struct {
	nc     net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	in     chan clientFrame
	stop   chan struct{} // closed by stopReading
	window map[uint32]int64
	connWn int64
}

func newRawConn(nc net.Conn) *rawConn {
	rc := &rawConn{nc: nc, fr: http2.NewFramer(nc, nc), in: make(chan clientFrame, 1024), stop: make(chan struct{}),
		window: map[uint32]int64{}, connWn: 65535}
	rc.enc = hpack.NewEncoder(&rc.encBuf)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.fr.MaxHeaderListSize = 1 << 20
	go rc.readLoop()
	return rc
}

func (rc *rawConn) readLoop() {
	defer close(rc.in)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(rc.nc, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	for {
		select {
		case <-rc.stop:
			return
		default:
		}
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return
		}
		cf := clientFrame{typ: f.Header().Type, streamID: f.Header().StreamID, flags: f.Header().Flags}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			cf.fields = f.Fields
		case *http2.RSTStreamFrame:
			cf.code = f.ErrCode
		case *http2.GoAwayFrame:
			cf.code = f.ErrCode
		case *http2.WindowUpdateFrame:
			cf.incr = f.Increment
		}
		select {
		case rc.in <- cf:
		case <-rc.stop:
			return
		}
	}
}

// stopReading makes the server read nothing more: the client's writes block.
func (rc *rawConn) stopReading() {
	close(rc.stop)
	rc.nc.SetReadDeadline(time.Now()) // ends a read under way
}

func (rc *rawConn) close() {
	select {
	case <-rc.stop:
	default:
		close(rc.stop)
	}
	rc.nc.Close()
}

var errNoFrame = errors.New("no such frame from the client in time")

// expect returns the next frame of type typ the client sent, keeping account of the window
// updates it passes.
func (rc *rawConn) expect(typ http2.FrameType) (clientFrame, error) {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-rc.in:
			if !ok {
				return clientFrame{}, io.EOF
			}
			rc.account(f)
			if f.typ == typ {
				return f, nil
			}
		case <-timeout:
			return clientFrame{}, errNoFrame
		}
	}
}

func (rc *rawConn) account(f clientFrame) {
	if f.typ == http2.FrameWindowUpdate {
		if f.streamID == 0 {
			rc.connWn += int64(f.incr)
		} else {
			rc.window[f.streamID] += int64(f.incr)
		}
	}
}

// request waits for the client's next request and returns its stream id.
func (rc *rawConn) request() (uint32, error) {
	f, err := rc.expect(http2.FrameHeaders)
	if err == nil {
		rc.window[f.streamID] += 64 << 10 // the pool's default StreamWindow, as it advertised
	}
	return f.streamID, err
}

// block encodes header fields, name and value pairs.
func (rc *rawConn) block(kv ...string) []byte {
	rc.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		rc.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(rc.encBuf.Bytes())
}

// head sends a response head in one HEADERS frame.
func (rc *rawConn) head(id uint32, end bool, kv ...string) error {
	return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.block(kv...), EndHeaders: true, EndStream: end})
}

// data sends b on stream id in frames of at most size bytes, each with pad bytes of padding,
// as the client's windows allow (waiting for its WINDOW_UPDATEs).
func (rc *rawConn) data(id uint32, b []byte, size, pad int, end bool) error {
	for first := true; first || len(b) > 0; first = false {
		n := min(len(b), size)
		cost := int64(n)
		if pad > 0 {
			cost += int64(pad) + 1
		}
		for rc.window[id] < cost || rc.connWn < cost {
			if _, err := rc.expect(http2.FrameWindowUpdate); err != nil {
				return err
			}
		}
		rc.window[id] -= cost
		rc.connWn -= cost
		var padding []byte
		if pad > 0 {
			padding = make([]byte, pad)
		}
		if err := rc.fr.WriteDataPadded(id, end && n == len(b), b[:n], padding); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// eventsOK answers a stream with a 200 event-stream head and body, ending it.
func (rc *rawConn) eventsOK(id uint32, body string) error {
	if err := rc.head(id, false, ":status", "200", "content-type", "text/event-stream"); err != nil {
		return err
	}
	return rc.data(id, []byte(body), 16384, 0, true)
}

// awaitClose waits for the client to close the connection (it reads EOF).
func (rc *rawConn) awaitClose() error {
	for {
		if _, err := rc.expect(0xff); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}
