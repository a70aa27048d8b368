package h1client_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/upstream/h1client"
)

// lateServer answers every request with resp after delay: an origin that writes its head
// with its first event.
func lateServer(t *testing.T, resp string, delay time.Duration) string {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return rawServerAfter(t, resp, delay, done)
}

// TestConnectTimeoutDoesNotCoverTheHead: the connect timeout bounds the dial and the
// request; a head that comes well after it, within the head timeout, is taken.
func TestConnectTimeoutDoesNotCoverTheHead(t *testing.T) {
	c := h1client.New(h1client.Options{})
	u := mustURL(t, lateServer(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 12\r\n\r\ndata: late\n\n", 500*time.Millisecond))
	s, resp, err := c.OpenWithin(context.Background(), u, nil, h1client.Timeouts{Connect: 100 * time.Millisecond, Head: 10 * time.Second})
	if err != nil {
		t.Fatalf("a late head: %v", err)
	}
	defer s.Close()
	if resp.Status != 200 {
		t.Fatalf("status %d", resp.Status)
	}
	if body, err := readAll(t, s); err != nil || string(body) != "data: late\n\n" {
		t.Fatalf("body %q, %v", body, err)
	}
}

// TestHeadTimeout: with no head within the head timeout, OpenWithin says so.
func TestHeadTimeout(t *testing.T) {
	c := h1client.New(h1client.Options{})
	u := mustURL(t, lateServer(t, "", time.Hour))
	start := time.Now()
	_, _, err := c.OpenWithin(context.Background(), u, nil, h1client.Timeouts{Connect: 10 * time.Second, Head: 100 * time.Millisecond})
	if !errors.Is(err, h1client.ErrHeadTimeout) || errors.Is(err, h1client.ErrConnectTimeout) {
		t.Fatalf("no head: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("gave up after %s", took)
	}
}

// TestConnectTimeout: a dial or a TLS handshake that does not finish within the connect
// timeout fails with ErrConnectTimeout, whatever the head timeout.
func TestConnectTimeout(t *testing.T) {
	t.Run("dial", func(t *testing.T) {
		c := h1client.New(h1client.Options{Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}})
		_, _, err := c.OpenWithin(context.Background(), mustURL(t, "http://origin.test/"), nil, h1client.Timeouts{Connect: 100 * time.Millisecond, Head: time.Hour})
		if !errors.Is(err, h1client.ErrConnectTimeout) {
			t.Fatalf("a dial that hangs: %v", err)
		}
	})
	t.Run("tls", func(t *testing.T) {
		// A server that accepts and never says a word: the TLS handshake hangs.
		u := mustURL(t, strings.Replace(lateServer(t, "", time.Hour), "http:", "https:", 1))
		c := h1client.New(h1client.Options{})
		_, _, err := c.OpenWithin(context.Background(), u, nil, h1client.Timeouts{Connect: 100 * time.Millisecond, Head: time.Hour})
		if !errors.Is(err, h1client.ErrConnectTimeout) {
			t.Fatalf("a handshake that hangs: %v", err)
		}
	})
}

// TestCanceledWhileWaitingForTheHead: the context still ends the wait for the head, and a
// phase that starts after it ended does not lift that.
func TestCanceledWhileWaitingForTheHead(t *testing.T) {
	c := h1client.New(h1client.Options{})
	u := mustURL(t, lateServer(t, "", time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, _, err := c.OpenWithin(ctx, u, nil, h1client.Timeouts{Connect: time.Hour})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
	// Canceled before it starts: the dial is not even waited for.
	if _, _, err := c.OpenWithin(ctx, u, nil, h1client.Timeouts{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled before: %v", err)
	}
}
