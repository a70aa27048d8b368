package h2client_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	streamio "github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is an HTTP/2 test server that counts the connections it accepts.
type server struct {
	*httptest.Server
	accepted atomic.Int32
	closed   atomic.Int32
}

func newServer(t *testing.T, tlsOn bool, maxStreams uint32, h http.Handler) *server {
	t.Helper()
	s := &server{}
	ts := httptest.NewUnstartedServer(h)
	ts.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: int(maxStreams)}
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.accepted.Add(1)
		case http.StateClosed:
			s.closed.Add(1)
		}
	}
	if tlsOn {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		ts.Config.Protocols = &p
		ts.Start()
	}
	s.Server = ts
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
	})
	return s
}

func newPool(t *testing.T, o h2client.Options) *h2client.Pool {
	t.Helper()
	p := h2client.NewPool(o)
	t.Cleanup(p.Close)
	return p
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// eventSource answers an event stream: one event per value sent on its channel, flushed,
// then the end when the channel closes.
func eventSource(events chan string, seen chan<- http.Header) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen <- r.Header.Clone()
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				fmt.Fprintf(w, "data: %s\n\n", ev)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	})
}

func TestStreamH2C(t *testing.T) {
	events := make(chan string)
	seen := make(chan http.Header, 1)
	srv := newServer(t, false, 0, eventSource(events, seen))
	p := newPool(t, h2client.Options{H2C: true})
	u := mustURL(t, srv.URL+"/events?x=1")
	if !p.Usable(u) {
		t.Fatal("an http:// URL with H2C is not usable")
	}
	h := http.Header{"Last-Event-Id": {"41"}, "Authorization": {"Bearer abc"}, "Connection": {"close"}}
	s, resp, err := p.Open(context.Background(), u, h)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if resp.Status != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("head: %+v", resp)
	}
	got := <-seen
	if got.Get("Last-Event-Id") != "41" || got.Get("Authorization") != "Bearer abc" || got.Get("Connection") != "" {
		t.Fatalf("the server saw %v", got)
	}
	br := bufio.NewReader(streamio.Blocking(s))
	for i := range 3 {
		events <- fmt.Sprint(i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		if blank, _ := br.ReadString('\n'); blank != "\n" {
			t.Fatalf("event %d: no blank line", i)
		}
	}
	close(events)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the end: %v", err)
	}
}

func TestManyStreamsShareOneConnection(t *testing.T) {
	events := make(chan string)
	defer close(events)
	srv := newServer(t, false, 1000, eventSource(events, nil))
	p := newPool(t, h2client.Options{H2C: true})
	u := mustURL(t, srv.URL)
	const n = 300
	streams, _ := openAll(t, p, slices.Repeat([]string{u.String()}, n))
	if a := srv.accepted.Load(); a != 1 {
		t.Fatalf("%d connections for %d streams, want 1", a, n)
	}
	for _, s := range streams {
		s.Close()
	}
}

func TestServerStreamLimitOpensMoreConnections(t *testing.T) {
	events := make(chan string)
	defer close(events)
	srv := newServer(t, false, 10, eventSource(events, nil))
	p := newPool(t, h2client.Options{H2C: true})
	u := mustURL(t, srv.URL)
	var streams []*h2client.Stream
	for range 25 {
		s, _, err := p.Open(context.Background(), u, nil)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if a := srv.accepted.Load(); a != 3 {
		t.Fatalf("%d connections for 25 streams at 10 per connection, want 3", a)
	}
	for _, s := range streams {
		s.Close()
	}
}

// TestFlowControl sends far more than the stream window and reads it all, slowly.
func TestFlowControl(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	srv := newServer(t, false, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 10000)
			w.Write(rest[:n])
			w.(http.Flusher).Flush()
			rest = rest[n:]
		}
	}))
	p := newPool(t, h2client.Options{H2C: true, StreamWindow: 16 << 10})
	s, _, err := p.Open(context.Background(), mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got bytes.Buffer
	buf := make([]byte, 777)
	r := streamio.Blocking(s)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("read %d bytes, want %d identical", got.Len(), len(body))
	}
}

func TestCloseCancelsTheRequestAndIdleConnectionsClose(t *testing.T) {
	canceled := make(chan struct{})
	srv := newServer(t, false, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(canceled)
	}))
	p := newPool(t, h2client.Options{H2C: true, IdleTimeout: 50 * time.Millisecond})
	s, _, err := p.Open(context.Background(), mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	r := streamio.Blocking(s)
	go func() {
		_, err := r.Read(make([]byte, 10))
		readErr <- err
	}()
	s.Close()
	if err := <-readErr; err == nil {
		t.Fatal("a Read blocked on a closed stream returned no error")
	}
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's handler was not canceled")
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle connection was not closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConnectionLossFailsItsStreams(t *testing.T) {
	events := make(chan string)
	defer close(events)
	srv := newServer(t, false, 0, eventSource(events, nil))
	p, s := openH2C(t, srv)
	defer s.Close()
	srv.CloseClientConnections()
	if _, err := io.ReadAll(streamio.Blocking(s)); err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("read after the connection dropped: %v", err)
	}
	// The pool dials again.
	s2, _, err := p.Open(context.Background(), mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestStatusAndEmptyBody(t *testing.T) {
	srv := newServer(t, false, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	p := newPool(t, h2client.Options{H2C: true})
	s, resp, err := p.Open(context.Background(), mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if resp.Status != 503 || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("head: %+v", resp)
	}
	if b, err := io.ReadAll(streamio.Blocking(s)); err != nil || len(b) != 0 {
		t.Fatalf("body: %q %v", b, err)
	}
}

func TestTLS(t *testing.T) {
	events := make(chan string, 1)
	srv := newServer(t, true, 0, eventSource(events, nil))
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	p := newPool(t, h2client.Options{TLSConfig: &tls.Config{RootCAs: roots}})
	u := mustURL(t, strings.Replace(srv.URL, "127.0.0.1", "example.com", 1))
	u.Host = srv.Listener.Addr().String()
	s, resp, err := p.Open(context.Background(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if resp.Status != 200 {
		t.Fatalf("status %d", resp.Status)
	}
	events <- "over tls"
	close(events)
	b, err := io.ReadAll(streamio.Blocking(s))
	if err != nil || string(b) != "data: over tls\n\n" {
		t.Fatalf("body %q %v", b, err)
	}
	if p.Usable(mustURL(t, "http://"+srv.Listener.Addr().String())) {
		t.Fatal("http:// is usable without H2C")
	}
}

func TestTLSServerWithoutHTTP2(t *testing.T) {
	ts := httptest.NewTLSServer(http.NotFoundHandler()) // HTTP/1.1 only
	defer ts.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	p := newPool(t, h2client.Options{TLSConfig: &tls.Config{RootCAs: roots}})
	u := mustURL(t, ts.URL)
	if _, _, err := p.Open(context.Background(), u, nil); !errors.Is(err, h2client.ErrNotHTTP2) {
		t.Fatalf("open on an HTTP/1.1 server: %v", err)
	}
	if p.Usable(u) {
		t.Fatal("an origin that refused h2 is still usable")
	}
}

// TestUnansweredPingClosesTheConnection runs a server that completes the handshake and then
// answers nothing: the client's keepalive must give up on it.
func TestUnansweredPingClosesTheConnection(t *testing.T) {
	addr, _ := silentServer(t)
	p := newPool(t, h2client.Options{H2C: true, PingInterval: 20 * time.Millisecond, PingTimeout: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := p.Open(ctx, mustURL(t, "http://"+addr), nil)
	if err == nil || !strings.Contains(err.Error(), "did not answer a ping") {
		t.Fatalf("open on a silent server: %v", err)
	}
}

// TestNotifyAndTryRead reads a stream without a goroutine waiting in Read: the notify
// function says when to try.
func TestNotifyAndTryRead(t *testing.T) {
	events := make(chan string)
	srv := newServer(t, false, 0, eventSource(events, nil))
	_, s := openH2C(t, srv)
	defer s.Close()
	kick := make(chan struct{}, 1)
	s.SetNotify(func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	buf := make([]byte, 64)
	if n, err := s.TryRead(buf); n != 0 || err != h2client.ErrWouldBlock {
		t.Fatalf("TryRead with nothing there: %d %v", n, err)
	}
	// Read everything that comes until the end, trying only when notified.
	var got strings.Builder
	events <- "a"
	events <- "b"
	close(events)
	for {
		<-kick
		n, err := s.TryRead(buf)
		for err == nil {
			got.Write(buf[:n])
			n, err = s.TryRead(buf)
		}
		if err == io.EOF {
			break
		}
		if err != h2client.ErrWouldBlock {
			t.Fatal(err)
		}
	}
	if got.String() != "data: a\n\ndata: b\n\n" {
		t.Fatalf("read %q", got.String())
	}
}

// TestServerAllowingNoStreams: a server whose SETTINGS allow no stream at all gets a bounded
// number of connection attempts, then an error, not an endless dialing loop.
func TestServerAllowingNoStreams(t *testing.T) {
	addr, accepted := silentServer(t, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
	p := newPool(t, h2client.Options{H2C: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := p.Open(ctx, mustURL(t, "http://"+addr), nil)
	if err == nil || !strings.Contains(err.Error(), "no connection") {
		t.Fatalf("open: %v", err)
	}
	if n := accepted.Load(); n > 5 {
		t.Fatalf("%d connections for one open", n)
	}
}

// silentServer accepts h2c connections, sends its SETTINGS, and then answers nothing. It
// returns its address and how many connections it accepted.
func silentServer(t *testing.T, settings ...http2.Setting) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	accepted := new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(c, preface); err != nil {
					return
				}
				http2.NewFramer(c, c).WriteSettings(settings...)
				go io.Copy(io.Discard, c)
				<-done
			}()
		}
	}()
	return ln.Addr().String(), accepted
}

// openH2C opens a stream on srv through a new h2c pool.
func openH2C(t *testing.T, srv *server) (*h2client.Pool, *h2client.Stream) {
	t.Helper()
	p := newPool(t, h2client.Options{H2C: true})
	s, _, err := p.Open(context.Background(), mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

// TestWindowOverrunFailsTheStream: a server that sends past the stream's window gets the
// stream reset, and the stream's reader sees an error instead of waiting forever.
func TestWindowOverrunFailsTheStream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		fr.WriteSettings()
		// Wait for the request, then answer it ignoring the client's window.
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.HeadersFrame); ok {
				var block bytes.Buffer
				hpack.NewEncoder(&block).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: block.Bytes(), EndHeaders: true})
				chunk := make([]byte, 16384)
				for range 4 {
					fr.WriteData(h.StreamID, false, chunk)
				}
				go io.Copy(io.Discard, c)
				<-done
				return
			}
		}
	}()
	p := newPool(t, h2client.Options{H2C: true, StreamWindow: 16384})
	s, _, err := p.Open(context.Background(), mustURL(t, "http://"+ln.Addr().String()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(streamio.Blocking(s))
		readErr <- err
	}()
	select {
	case err = <-readErr:
	case <-time.After(10 * time.Second):
		s.Close() // ends the read
		t.Fatal("the stream's reader still waits after the stream was reset")
	}
	if err == nil || !strings.Contains(err.Error(), "flow-control window") {
		t.Fatalf("read past an overrun window: %v", err)
	}
}
