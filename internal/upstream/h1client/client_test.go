package h1client_test

import (
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
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy/internal/upstream/h1client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// readAll reads a stream to its end the way the proxy does: trying when notified.
func readAll(t *testing.T, s *h1client.Stream) ([]byte, error) {
	t.Helper()
	kick := make(chan struct{}, 1)
	s.SetNotify(func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	var got bytes.Buffer
	buf := make([]byte, 100)
	deadline := time.After(20 * time.Second)
	for {
		n, err := s.TryRead(buf)
		got.Write(buf[:n])
		switch {
		case err == nil:
			continue
		case errors.Is(err, h1client.ErrWouldBlock):
			select {
			case <-kick:
			case <-deadline:
				t.Fatalf("stuck after %q", got.String())
			}
		case err == io.EOF:
			return got.Bytes(), nil
		default:
			return got.Bytes(), err
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func open(t *testing.T, c *h1client.Client, rawURL string, h http.Header) (*h1client.Stream, *h1client.Response) {
	t.Helper()
	s, resp, err := c.Open(context.Background(), mustURL(t, rawURL), h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, resp
}

func TestChunkedEventStream(t *testing.T) {
	seen := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	c := h1client.New(h1client.Options{})
	s, resp := open(t, c, srv.URL+"/e?q=1", http.Header{"Last-Event-Id": {"7"}, "Connection": {"keep-alive"}})
	if resp.Status != 200 || resp.Line != "200 OK" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("head %+v", resp)
	}
	if h := <-seen; h.Get("Last-Event-Id") != "7" || h.Get("User-Agent") == "" {
		t.Fatalf("the server saw %v", h)
	}
	body, err := readAll(t, s)
	if err != nil || string(body) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Fatalf("body %q %v", body, err)
	}
}

// rawServer answers every connection with resp, then closes it (after hold, if set).
func rawServer(t *testing.T, resp string, hold chan struct{}) string {
	t.Helper()
	return rawServerAfter(t, resp, 0, hold)
}

// rawServerAfter is rawServer answering each request only after delay (the origin's own
// pace), or never if hold is closed first.
func rawServerAfter(t *testing.T, resp string, delay time.Duration, hold chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.Read(buf)
				if delay > 0 {
					select {
					case <-time.After(delay):
					case <-hold:
						return
					}
				}
				io.WriteString(c, resp)
				if hold != nil {
					<-hold
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func TestFramings(t *testing.T) {
	cases := []struct {
		name, resp, body string
		status           int
		line, err        string
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloIGNORED", "hello", 200, "200 OK", ""},
		{"close", "HTTP/1.1 200 OK\r\n\r\nuntil close", "until close", 200, "200 OK", ""},
		{"chunked with extensions and trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n", "hello!", 200, "200 OK", ""},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", "", 204, "204 No Content", ""},
		{"codings listed on one line", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "ok", 200, "200 OK", ""},
		{"codings on several lines", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "ok", 200, "200 OK", ""},
		{"not chunked last: until close, not the length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 2\r\n\r\nabcdef", "abcdef", 200, "200 OK", ""},
		{"informational first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", 200, "200 OK", ""},
		{"hostile reason", "HTTP/1.1 503 \xff\x00 busy\r\nContent-Length: 0\r\n\r\n", "", 503, "503 \xff\x00 busy", ""},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "abc", 200, "200 OK", "unexpected EOF"},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "", 200, "200 OK", "bad chunk size"},
		{"chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "a", 200, "200 OK", "not followed by CRLF"},
	}
	c := h1client.New(h1client.Options{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, resp := open(t, c, rawServer(t, tc.resp, nil), nil)
			if resp.Status != tc.status || resp.Line != tc.line {
				t.Fatalf("head %+v", resp)
			}
			body, err := readAll(t, s)
			if string(body) != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
}

func TestBadHeads(t *testing.T) {
	c := h1client.New(h1client.Options{MaxHeaderBytes: 1024})
	for name, resp := range map[string]string{
		"not http":  "SSH-2.0-OpenSSH\r\n\r\n",
		"bad code":  "HTTP/1.1 2x0 OK\r\n\r\n",
		"too large": "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n",
		"cut":       "HTTP/1.1 200 OK\r\nX: y",
		"bad len":   "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
	} {
		_, _, err := c.Open(context.Background(), mustURL(t, rawServer(t, resp, nil)), nil)
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestHeadTimeoutAndClose(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	c := h1client.New(h1client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := c.Open(ctx, mustURL(t, rawServer(t, "", hold)), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a server that never answers: %v", err)
	}
	// A stream closed while its goroutine waits for data: it ends (goleak checks).
	s, _ := open(t, c, rawServer(t, "HTTP/1.1 200 OK\r\n\r\n", hold), nil)
	s.Close()
	if _, err := s.TryRead(make([]byte, 1)); err == nil || errors.Is(err, h1client.ErrWouldBlock) {
		t.Fatalf("read after close: %v", err)
	}
}

// TestBackpressure: a body far larger than the stream's buffer arrives whole when read
// slowly; the connection's reader waits for room instead of buffering it all.
func TestBackpressure(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 100000) // 1 MB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer srv.Close()
	c := h1client.New(h1client.Options{MaxBuffered: 4096})
	s, _ := open(t, c, srv.URL, nil)
	got, err := readAll(t, s)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read %d bytes (%v), want %d identical", len(got), err, len(body))
	}
}

func TestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "over tls")
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c := h1client.New(h1client.Options{TLSConfig: &tls.Config{RootCAs: roots}})
	s, _ := open(t, c, srv.URL, nil)
	if body, err := readAll(t, s); err != nil || string(body) != "over tls" {
		t.Fatalf("body %q %v", body, err)
	}
}
