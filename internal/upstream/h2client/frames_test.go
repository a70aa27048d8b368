package h2client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
)

// open opens a stream on u or fails the test.
func open(t *testing.T, p *h2client.Pool, u string) (*h2client.Stream, *h2client.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, resp, err := p.Open(ctx, mustURL(t, u), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, resp
}

// readAll reads s to its end, failing the test after 10 s.
func readAll(t *testing.T, s *h2client.Stream) ([]byte, error) {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(streamio.Blocking(s))
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(10 * time.Second):
		s.Close() // ends the read
		<-done
		t.Fatal("the stream did not end")
		return nil, nil
	}
}

// openAll opens a stream on each URL at once, and fails the test if one fails. The streams
// are closed when the test ends.
func openAll(t *testing.T, p *h2client.Pool, urls []string) ([]*h2client.Stream, []*h2client.Response) {
	t.Helper()
	streams := make([]*h2client.Stream, len(urls))
	heads := make([]*h2client.Response, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			pu, err := url.Parse(u)
			if err == nil {
				streams[i], heads[i], err = p.Open(ctx, pu, nil)
			}
			if err != nil {
				errs[i] = fmt.Errorf("open %s: %w", u, err)
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range streams {
			if s != nil {
				s.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return streams, heads
}

// check reports a server-side error to the test (servers run on their own goroutines).
func check(t *testing.T, err error) bool {
	if err != nil {
		t.Errorf("server: %v", err)
		return false
	}
	return true
}

// TestPeerThatStopsReadingStallsOnlyItsConnection: a server that stops reading and floods
// the client with PINGs (each wants an answer) while it sends data. The client's reading
// goroutine must go on delivering that data, another connection of the pool must not
// notice, and the connection must close once too many answers pile up, with nothing
// left running.
func TestPeerThatStopsReadingStallsOnlyItsConnection(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	stalled := make(chan struct{})   // the server stopped reading, and a PING's answer waits
	delivered := make(chan struct{}) // the test read data sent after that
	finished := make(chan struct{})  // the stuck connection is closed
	pings := make(chan int, 1)
	var o *rawOrigin
	o = newRawOrigin(t, nil, func(n int, rc *rawConn) {
		id, err := rc.request()
		if !check(t, err) {
			return
		}
		if n == 2 { // the healthy connection
			check(t, rc.head(id, false, ":status", "200"))
			check(t, rc.data(id, []byte("data: 0\n\n"), 16384, 0, false))
			if !o.await(finished) {
				return
			}
			check(t, rc.data(id, []byte("data: 1\n\n"), 16384, 0, false))
			rc.awaitClose()
			return
		}
		check(t, rc.head(id, false, ":status", "200"))
		rc.stopReading()
		// Nobody reads the pipe now: the answer to this PING blocks the client's writer.
		check(t, rc.fr.WritePing(false, [8]byte{1}))
		close(stalled)
		check(t, rc.fr.WriteData(id, false, []byte("data: after the stall\n\n")))
		if !o.await(delivered) {
			return
		}
		sent := 0
		for ; rc.fr.WritePing(false, [8]byte{2}) == nil; sent++ {
		}
		pings <- sent
	})
	p, u := o.pool(h2client.Options{WriteTimeout: time.Hour})
	stuck, _ := open(t, p, u.String())
	<-stalled
	r := streamio.Blocking(stuck)
	want := "data: after the stall\n\n"
	got := make([]byte, len(want))
	readDone := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(r, got)
		readDone <- err
	}()
	select {
	case err := <-readDone:
		if err != nil || string(got) != want {
			t.Fatalf("read %q %v", got, err)
		}
	case <-time.After(5 * time.Second):
		stuck.Close()
		t.Fatal("the reading goroutine stopped while a write waits on the server")
	}

	// Another connection (to another origin) works while this one is stuck.
	healthy, _ := open(t, p, "http://other.test/events")
	hr := streamio.Blocking(healthy)
	buf := make([]byte, 64)
	if n, err := hr.Read(buf); err != nil || string(buf[:n]) != "data: 0\n\n" {
		t.Fatalf("healthy stream: %q %v", buf[:n], err)
	}

	// The flood of PINGs closes the stuck connection, and only it.
	close(delivered)
	_, err := io.ReadAll(r)
	if err == nil || !strings.Contains(err.Error(), "not reading") {
		t.Fatalf("the stuck stream ended with %v, want the server not reading", err)
	}
	if n := <-pings; n < 1000 {
		t.Fatalf("the connection closed after %d PINGs: too early", n)
	}
	close(finished)
	if n, err := hr.Read(buf); err != nil || string(buf[:n]) != "data: 1\n\n" {
		t.Fatalf("the healthy stream after the stuck one closed: %q %v", buf[:n], err)
	}
	healthy.Close()
	p.Close()
}

// TestWriteWithoutProgressClosesTheConnection: a server that stops reading while the client
// has something to send loses the connection after WriteTimeout.
func TestWriteWithoutProgressClosesTheConnection(t *testing.T) {
	var o *rawOrigin
	o = newRawOrigin(t, nil, func(n int, rc *rawConn) {
		id, err := rc.request()
		if !check(t, err) || !check(t, rc.head(id, false, ":status", "200")) {
			return
		}
		rc.stopReading()
		check(t, rc.fr.WritePing(false, [8]byte{1}))
		o.await(nil)
	})
	p, u := o.pool(h2client.Options{WriteTimeout: 500 * time.Millisecond})
	s, _ := open(t, p, u.String())
	_, err := readAll(t, s)
	if err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("read: %v, want the write timeout", err)
	}
}

// TestGoAwayGraceful: a GOAWAY whose last stream id is below some open streams lets the
// streams up to it finish on the old connection, sends the others again on a new one, and
// closes the old one when its last stream ends.
func TestGoAwayGraceful(t *testing.T) {
	oldClosed := make(chan error, 1)
	proceed := make(chan struct{})
	var o *rawOrigin
	o = newRawOrigin(t, nil, func(n int, rc *rawConn) {
		if n == 1 {
			first, err := rc.request()
			if !check(t, err) || !check(t, rc.head(first, false, ":status", "200")) {
				return
			}
			if _, err := rc.request(); !check(t, err) {
				return
			}
			check(t, rc.fr.WriteGoAway(first, http2.ErrCodeNo, nil))
			if !o.await(proceed) {
				return
			}
			check(t, rc.data(first, []byte("data: old\n\n"), 16384, 0, true))
			oldClosed <- rc.awaitClose()
			return
		}
		for {
			id, err := rc.request()
			if err != nil {
				return
			}
			check(t, rc.eventsOK(id, fmt.Sprintf("data: new %d\n\n", id)))
		}
	})
	p, u := o.pool(h2client.Options{})
	first, _ := open(t, p, u.String())
	// The second request goes out on the same connection, and the server drops it in its
	// GOAWAY: Open sends it again on a new connection.
	second, resp := open(t, p, u.String())
	if resp.Status != 200 {
		t.Fatalf("second: %+v", resp)
	}
	if b, err := readAll(t, second); err != nil || string(b) != "data: new 1\n\n" {
		t.Fatalf("second stream: %q %v", b, err)
	}
	// New streams go to the new connection while the old one drains.
	third, _ := open(t, p, u.String())
	if b, err := readAll(t, third); err != nil || string(b) != "data: new 3\n\n" {
		t.Fatalf("third stream: %q %v", b, err)
	}
	close(proceed)
	if b, err := readAll(t, first); err != nil || string(b) != "data: old\n\n" {
		t.Fatalf("the stream below the GOAWAY's last id: %q %v", b, err)
	}
	select {
	case err := <-oldClosed:
		check(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the connection that went away was not closed after its last stream")
	}
	if d := o.dialed.Load(); d != 2 {
		t.Fatalf("%d connections, want 2", d)
	}
}

// TestGoAwayLastStreamZero: a GOAWAY that processed nothing sends the request again on a new
// connection; a server that always does so gets a bounded number of attempts.
func TestGoAwayLastStreamZero(t *testing.T) {
	t.Run("once", func(t *testing.T) {
		o := newRawOrigin(t, nil, func(n int, rc *rawConn) {
			id, err := rc.request()
			if !check(t, err) {
				return
			}
			if n == 1 {
				check(t, rc.fr.WriteGoAway(0, http2.ErrCodeNo, nil))
				rc.awaitClose()
				return
			}
			check(t, rc.eventsOK(id, "data: x\n\n"))
		})
		p, u := o.pool(h2client.Options{})
		s, _ := open(t, p, u.String())
		if b, err := readAll(t, s); err != nil || string(b) != "data: x\n\n" {
			t.Fatalf("%q %v", b, err)
		}
	})
	t.Run("always", func(t *testing.T) {
		o := newRawOrigin(t, nil, func(n int, rc *rawConn) {
			if _, err := rc.request(); check(t, err) {
				check(t, rc.fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, nil))
				rc.awaitClose()
			}
		})
		p, u := o.pool(h2client.Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err := p.Open(ctx, u, nil)
		if err == nil || !strings.Contains(err.Error(), "going away") {
			t.Fatalf("open: %v", err)
		}
		if d := o.dialed.Load(); d > 5 {
			t.Fatalf("%d connections for one Open", d)
		}
	})
}

// TestResetStream: a RST_STREAM fails its stream only; one that refuses a stream before
// the head makes Open try again; another before the head is Open's error.
func TestResetStream(t *testing.T) {
	o := newRawOrigin(t, nil, func(n int, rc *rawConn) {
		// Stream 1: refused; its retry, 3: head, data, then reset; 5: served in full.
		refused, err := rc.request()
		if !check(t, err) || !check(t, rc.fr.WriteRSTStream(refused, http2.ErrCodeRefusedStream)) {
			return
		}
		reset, err := rc.request()
		if !check(t, err) || !check(t, rc.head(reset, false, ":status", "200")) || !check(t, rc.data(reset, []byte("data: a\n\n"), 16384, 0, false)) {
			return
		}
		whole, err := rc.request()
		if !check(t, err) || !check(t, rc.head(whole, false, ":status", "200")) {
			return
		}
		check(t, rc.fr.WriteRSTStream(reset, http2.ErrCodeInternal))
		check(t, rc.data(whole, []byte("data: b\n\n"), 16384, 0, true))
		// Stream 7: reset before its head.
		early, err := rc.request()
		if check(t, err) {
			check(t, rc.fr.WriteRSTStream(early, http2.ErrCodeInternal))
		}
		rc.awaitClose()
	})
	p, u := o.pool(h2client.Options{})
	reset, _ := open(t, p, u.String())
	whole, _ := open(t, p, u.String())
	b, err := readAll(t, reset)
	if string(b) != "data: a\n\n" || err == nil || !strings.Contains(err.Error(), "reset by the server (INTERNAL_ERROR)") {
		t.Fatalf("reset stream: %q %v", b, err)
	}
	if b, err := readAll(t, whole); err != nil || string(b) != "data: b\n\n" {
		t.Fatalf("the other stream: %q %v", b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := p.Open(ctx, u, nil); err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") {
		t.Fatalf("open reset before its head: %v", err)
	}
	if d := o.dialed.Load(); d != 1 {
		t.Fatalf("%d connections, want 1", d)
	}
}

// TestContinuationAndPadding: a response head split over HEADERS and CONTINUATION frames,
// with padding, and a body in padded DATA frames much longer than the stream's window (the
// client must give the padding back, or the server stalls); and a request head too long for
// one frame, which the client splits.
func TestContinuationAndPadding(t *testing.T) {
	long := strings.Repeat("x", 40000) // more than two frames
	body := bytes.Repeat([]byte("data: 0123456789\n\n"), 2000)
	requestHeader := make(chan string, 1)
	o := newRawOrigin(t, nil, func(n int, rc *rawConn) {
		f, err := rc.expect(http2.FrameHeaders)
		if !check(t, err) {
			return
		}
		for _, hf := range f.fields {
			if hf.Name == "x-long" {
				requestHeader <- hf.Value
			}
		}
		rc.window[f.streamID] = 16 << 10
		block := rc.block(":status", "200", "content-type", "text/event-stream", "x-long", long)
		check(t, rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.streamID, BlockFragment: block[:10000], PadLength: 200}))
		check(t, rc.fr.WriteContinuation(f.streamID, false, block[10000:20000]))
		check(t, rc.fr.WriteContinuation(f.streamID, true, block[20000:]))
		check(t, rc.data(f.streamID, body, 1000, 255, true))
		rc.awaitClose()
	})
	p, u := o.pool(h2client.Options{StreamWindow: 16 << 10})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, resp, err := p.Open(ctx, u, map[string][]string{"X-Long": {long}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := <-requestHeader; got != long {
		t.Fatalf("the server got a request header of %d bytes, want %d", len(got), len(long))
	}
	if resp.Header.Get("X-Long") != long || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("head: %d bytes of X-Long, %q", len(resp.Header.Get("X-Long")), resp.Header.Get("Content-Type"))
	}
	if b, err := readAll(t, s); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("body: %d bytes, %v; want %d identical", len(b), err, len(body))
	}
}

// TestTrailersAndInformational: 100 and 103 heads before the final one are skipped, trailers
// end the body; an informational head that ends the stream and trailers that do not are
// the server's errors.
func TestTrailersAndInformational(t *testing.T) {
	reset := make(chan struct{})
	var o *rawOrigin
	o = newRawOrigin(t, nil, func(n int, rc *rawConn) {
		defer rc.awaitClose()
		defer close(reset)
		id, err := rc.request()
		if !check(t, err) {
			return
		}
		check(t, rc.head(id, false, ":status", "100"))
		check(t, rc.head(id, false, ":status", "103", "link", "</style.css>; rel=preload"))
		check(t, rc.head(id, false, ":status", "200", "content-type", "text/event-stream"))
		check(t, rc.data(id, []byte("data: one\n\n"), 16384, 0, false))
		check(t, rc.head(id, true, "grpc-status", "0"))

		if id, err = rc.request(); check(t, err) {
			check(t, rc.head(id, true, ":status", "103"))
		}
		if id, err = rc.request(); check(t, err) {
			check(t, rc.head(id, false, ":status", "200"))
			check(t, rc.data(id, []byte("data: two\n\n"), 16384, 0, false))
			check(t, rc.head(id, false, "x-trailer", "1"))
			f, err := rc.expect(http2.FrameRSTStream)
			if check(t, err) && (f.streamID != id || f.code != http2.ErrCodeProtocol) {
				t.Errorf("the client reset stream %d with %v, want %d with PROTOCOL_ERROR", f.streamID, f.code, id)
			}
		}
	})
	defer o.await(reset)
	p, u := o.pool(h2client.Options{})
	s, resp := open(t, p, u.String())
	if resp.Status != 200 || resp.Header.Get("Link") != "" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("head: %+v", resp)
	}
	if b, err := readAll(t, s); err != nil || string(b) != "data: one\n\n" {
		t.Fatalf("body: %q %v", b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := p.Open(ctx, u, nil); err == nil || !strings.Contains(err.Error(), "informational") {
		t.Fatalf("a 103 that ends the stream: %v", err)
	}
	s, _ = open(t, p, u.String())
	if b, err := readAll(t, s); string(b) != "data: two\n\n" || err == nil || !strings.Contains(err.Error(), "trailers") {
		t.Fatalf("trailers without END_STREAM: %q %v", b, err)
	}
}

// TestStreamLimitTwo: a server that allows two streams per connection and a burst of
// callers: every one gets its stream, on as few connections as the limit allows, and a
// stream that ends makes room for a caller waiting.
func TestStreamLimitTwo(t *testing.T) {
	events := make(chan string)
	defer close(events)
	srv := newServer(t, false, 2, eventSource(events, nil))
	p := newPool(t, h2client.Options{H2C: true})
	u := mustURL(t, srv.URL)
	const n = 40
	streams, _ := openAll(t, p, slices.Repeat([]string{srv.URL}, n))
	if a := srv.accepted.Load(); a != n/2 {
		t.Fatalf("%d connections for %d streams at 2 per connection, want %d", a, n, n/2)
	}
	// Every connection is full: callers wait for room, and get it as streams end.
	got := make(chan *h2client.Stream)
	for range 3 {
		go func() {
			s, _, err := p.Open(context.Background(), u, nil)
			if err != nil {
				t.Error(err)
			}
			got <- s
		}()
	}
	for i := range 3 {
		// Dials may have started for them; a closed stream serves one at once.
		streams[i].Close()
		(<-got).Close()
	}
	for _, s := range streams[3:] {
		s.Close()
	}
}

// TestEndedStreamServesAWaitingCaller: with its connection full and a dial that does not
// end, a caller gets the room of a stream that ends; a caller whose context ends while it
// waits leaves the queue, and takes no room with it.
func TestEndedStreamServesAWaitingCaller(t *testing.T) {
	release := make(chan struct{})
	dialing := make(chan struct{}, 10)
	o := newRawOrigin(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 1}}, func(n int, rc *rawConn) {
		for {
			id, err := rc.request()
			if err != nil {
				return
			}
			check(t, rc.head(id, false, ":status", "200"))
		}
	})
	o.beforeDial = func(ctx context.Context, n int) error {
		if n == 1 {
			return nil
		}
		dialing <- struct{}{}
		select { // later dials wait for the test
		case <-release:
			return errors.New("no more connections")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(release)
	p, u := o.pool(h2client.Options{})
	first, _ := open(t, p, u.String())

	type result struct {
		s   *h2client.Stream
		err error
	}
	got := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, _, err := p.Open(ctx, u, nil)
		got <- result{s, err}
	}()
	<-dialing // the caller waits, and a dial for it hangs
	first.Close()
	r := <-got
	if r.err != nil {
		t.Fatalf("the waiting caller: %v", r.err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := p.Open(ctx, u, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open on a full connection with the dial hanging: %v", err)
	}
	r.s.Close()
	open(t, p, u.String()) // the room went to no caller that left
	if d := o.dialed.Load(); d != 2 {
		t.Fatalf("%d dials, want 2", d)
	}
}

// TestServerChangesItsStreamLimit: a server that raises SETTINGS_MAX_CONCURRENT_STREAMS
// serves a caller waiting for room at once, on the same connection; one that lowers it gets
// no stream beyond the new limit.
func TestServerChangesItsStreamLimit(t *testing.T) {
	limit := make(chan uint32)
	acked := make(chan struct{}, 10)
	dialing := make(chan struct{}, 10)
	var o *rawOrigin
	o = newRawOrigin(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 1}}, func(n int, rc *rawConn) {
		for {
			select {
			case f, ok := <-rc.in:
				if !ok {
					return
				}
				switch {
				case f.typ == http2.FrameHeaders:
					check(t, rc.head(f.streamID, false, ":status", "200"))
				case f.typ == http2.FrameSettings && f.flags.Has(http2.FlagSettingsAck):
					acked <- struct{}{}
				}
			case v := <-limit:
				check(t, rc.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: v}))
			case <-o.done:
				return
			}
		}
	})
	o.beforeDial = func(ctx context.Context, n int) error {
		if n > 1 { // only one connection: later dials hang
			dialing <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	p, u := o.pool(h2client.Options{})
	first, _ := open(t, p, u.String())
	<-acked // the SETTINGS of the handshake

	type result struct {
		s   *h2client.Stream
		err error
	}
	waiting := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, _, err := p.Open(ctx, u, nil)
		waiting <- result{s, err}
	}()
	<-dialing // the caller waits for room
	limit <- 2
	second := <-waiting
	if second.err != nil {
		t.Fatalf("a caller waiting when the limit went up: %v", second.err)
	}
	defer second.s.Close()
	<-acked

	limit <- 1
	<-acked
	first.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if s, _, err := p.Open(ctx, u, nil); !errors.Is(err, context.DeadlineExceeded) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("open with one stream open at a limit of one: %v, want to wait", err)
	}
	second.s.Close()
	open(t, p, u.String())
	if d := o.dialed.Load(); d != 2 {
		t.Fatalf("%d dials, want 2", d)
	}
}
