package h2client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const fuzzWindow = 4096 // the streams' window in FuzzFrames: what each may buffer

// FuzzFrames feeds what a server sends, after its SETTINGS, to a connection carrying three
// requests (streams 1, 3 and 5), then closes it. Whatever the bytes, the client must not
// panic, every Open must return and every stream end once the connection is gone, no
// stream may buffer more than its window, and no goroutine may outlive the pool.
func FuzzFrames(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		before := runtime.NumGoroutine()
		var dials atomic.Int32
		p := NewPool(Options{
			H2C: true, StreamWindow: fuzzWindow, MaxHeaderListSize: 4096,
			PingInterval: time.Hour, IdleTimeout: time.Hour,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if dials.Add(1) > 1 {
					return nil, errors.New("one connection per run")
				}
				client, server := net.Pipe()
				go fuzzServer(server, in)
				return client, nil
			},
		})
		u := &url.URL{Scheme: "http", Host: "fuzz.test", Path: "/"}
		var wg sync.WaitGroup
		streams := make([]*Stream, 3)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s, _, err := p.Open(ctx, u, nil)
				if errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Open hung on a closed connection")
				}
				streams[i] = s
			}()
		}
		wg.Wait()
		for _, s := range streams {
			if s != nil {
				fuzzDrain(t, s)
			}
		}
		p.Close()
		for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Fatalf("%d goroutines left running:\n%s", runtime.NumGoroutine()-before, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// fuzzDrain reads s to its end, checking that it never holds more than its window.
func fuzzDrain(t *testing.T, s *Stream) {
	defer s.Close()
	ready := make(chan struct{}, 1)
	s.SetNotify(func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	timeout := time.After(5 * time.Second)
	buf := make([]byte, 512)
	for {
		s.mu.Lock()
		buffered := len(s.buf) - s.off
		s.mu.Unlock()
		if buffered > fuzzWindow {
			t.Fatalf("a stream buffers %d bytes, more than its window of %d", buffered, fuzzWindow)
		}
		_, err := s.TryRead(buf)
		switch {
		case err == nil:
			continue
		case !errors.Is(err, ErrWouldBlock):
			return
		}
		select {
		case <-ready:
		case <-timeout:
			t.Fatal("a stream did not end after its connection closed")
		}
	}
}

// fuzzServer answers the handshake, waits for the three requests, sends in and closes.
func fuzzServer(nc net.Conn, in []byte) {
	defer nc.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil {
		return
	}
	requests := make(chan struct{}, 3)
	go func() { // read what the client sends, to the end
		fr := http2.NewFramer(nil, nc)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.HeadersFrame); ok {
				select { // retries on the same connection may send more
				case requests <- struct{}{}:
				default:
				}
			}
		}
	}()
	if err := http2.NewFramer(nc, nil).WriteSettings(); err != nil {
		return
	}
	timeout := time.After(5 * time.Second)
	for range 3 {
		select {
		case <-requests:
		case <-timeout:
			return
		}
	}
	_, _ = nc.Write(in)
}

// fuzzSeeds are frame sequences that a server might send on streams 1, 3 and 5.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	seq := func(write func(fr *http2.Framer, block func(kv ...string) []byte)) {
		var out, hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		block := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return bytes.Clone(hb.Bytes())
		}
		write(http2.NewFramer(&out, nil), block)
		seeds = append(seeds, out.Bytes())
	}
	ok := func(fr *http2.Framer, block func(kv ...string) []byte, id uint32, end bool) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block(":status", "200", "content-type", "text/event-stream"), EndHeaders: true, EndStream: end})
	}
	// Three event streams, one ended.
	seq(func(fr *http2.Framer, block func(kv ...string) []byte) {
		for _, id := range []uint32{1, 3, 5} {
			ok(fr, block, id, false)
			fr.WriteData(id, id == 3, []byte("id: 1\ndata: x\n\n"))
		}
	})
	// CONTINUATION, padding, 1xx, trailers.
	seq(func(fr *http2.Framer, block func(kv ...string) []byte) {
		b := block(":status", "200", "x-a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "x-b", "bbbbbbbbbbbbbbbbbbbbbbbb")
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:5], PadLength: 7})
		fr.WriteContinuation(1, false, b[5:10])
		fr.WriteContinuation(1, true, b[10:])
		fr.WriteDataPadded(1, false, []byte("data: padded\n\n"), make([]byte, 20))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(":status", "103", "link", "</a>"), EndHeaders: true})
		ok(fr, block, 3, false)
		fr.WriteData(3, false, []byte("data: y\n\n"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block("x-trailer", "1"), EndHeaders: true, EndStream: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block(":status", "100"), EndHeaders: true, EndStream: true})
	})
	// Resets, GOAWAY, PING, SETTINGS, WINDOW_UPDATE, PRIORITY, an unknown frame.
	seq(func(fr *http2.Framer, block func(kv ...string) []byte) {
		ok(fr, block, 1, false)
		fr.WriteRSTStream(3, http2.ErrCodeRefusedStream)
		fr.WritePing(false, [8]byte{1, 2, 3})
		fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
		fr.WriteWindowUpdate(0, 1000)
		fr.WritePriority(1, http2.PriorityParam{StreamDep: 3, Weight: 7})
		fr.WriteRawFrame(0x20, 0, 1, []byte("unknown"))
		fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
		fr.WriteData(1, true, []byte("data: last\n\n"))
	})
	// A window overrun, DATA before HEADERS, a header list too long, a frame on a stream
	// never opened, a PUSH_PROMISE.
	seq(func(fr *http2.Framer, block func(kv ...string) []byte) {
		ok(fr, block, 1, false)
		fr.WriteData(1, false, make([]byte, fuzzWindow))
		fr.WriteData(1, false, []byte("x"))
		fr.WriteData(3, false, []byte("early"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block(":status", "200", "x-big", string(bytes.Repeat([]byte("b"), 5000))), EndHeaders: true})
		fr.WriteData(7, false, []byte("never opened"))
		fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: block(":method", "GET"), EndHeaders: true})
	})
	return seeds
}
