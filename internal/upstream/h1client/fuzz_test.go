package h1client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/upstream/h1client"
)

// FuzzResponse feeds arbitrary bytes as an origin's response (head, framing, chunked
// encoding): the client never panics or hangs, reports a three-digit status, and never makes
// a body larger than its input or gives a body to a 204.
func FuzzResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: x\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
		"HTTP/1.0 503 \xff\r\nRetry-After: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	u, _ := url.Parse("http://origin.test/events")
	f.Fuzz(func(t *testing.T, in []byte) {
		c := h1client.New(h1client.Options{
			MaxHeaderBytes: 4096,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				client, server := net.Pipe()
				go func() {
					defer server.Close()
					go io.Copy(io.Discard, server) // the request
					server.Write(in)
				}()
				return client, nil
			},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, resp, err := c.Open(ctx, u, nil)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Open hung on %q", in)
			}
			return
		}
		defer s.Close()
		if resp.Status < 100 || resp.Status > 999 {
			t.Fatalf("status %d from %q", resp.Status, in)
		}
		body, _ := readAll(t, s)
		if len(body) > len(in) {
			t.Fatalf("a body of %d bytes from %d bytes of input", len(body), len(in))
		}
		if strings.Contains(string(body), "HTTP/1.1 200 OK\r\n") && resp.Status == 204 {
			t.Fatalf("a 204's body: %q", body)
		}
	})
}
