// Package fakeutil holds what the fakes (APNs, FCM, Web Push) share: the log of what they
// received, the failures a test injects, the count of requests in flight, and a plain HTTP
// server.
package fakeutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"
)

// Log is what a fake received, in order, for tests to read and wait on. The zero value is
// ready to use.
type Log[T any] struct {
	mu      sync.Mutex
	items   []T
	changed chan struct{}
}

// Add records v and wakes the waiters.
func (l *Log[T]) Add(v T) {
	l.mu.Lock()
	l.items = append(l.items, v)
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	l.mu.Unlock()
}

// All returns what was recorded, in order.
func (l *Log[T]) All() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.items...)
}

// WaitFor waits until n items were recorded in all and returns them all.
func (l *Log[T]) WaitFor(ctx context.Context, n int) ([]T, error) {
	for {
		l.mu.Lock()
		if len(l.items) >= n {
			out := append([]T(nil), l.items...)
			l.mu.Unlock()
			return out, nil
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Reset forgets what was recorded.
func (l *Log[T]) Reset() {
	l.mu.Lock()
	l.items = nil
	l.mu.Unlock()
}

// Faults are the failures a test injects: for one token (a number of times, or for good),
// and for the next requests whatever their token. A token's failure comes first. The zero
// value is ready to use.
type Faults[F any] struct {
	mu    sync.Mutex
	token map[string]*fault[F]
	next  []*fault[F]
}

type fault[F any] struct {
	f         F
	remaining int // < 0: for good
}

// SetToken makes the requests for token fail with f, the next times requests, or every one
// from now on when times <= 0.
func (x *Faults[F]) SetToken(token string, f F, times int) {
	if times <= 0 {
		times = -1
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.token == nil {
		x.token = make(map[string]*fault[F])
	}
	x.token[token] = &fault[F]{f: f, remaining: times}
}

// ClearToken forgets the failure set for token.
func (x *Faults[F]) ClearToken(token string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.token, token)
}

// AddNext makes the next n requests fail with f, after the failures added before.
func (x *Faults[F]) AddNext(n int, f F) {
	if n <= 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.next = append(x.next, &fault[F]{f: f, remaining: n})
}

// Take returns the failure for a request for token, if any, and uses it up; forToken tells
// whether it was set for the token rather than for the next requests.
func (x *Faults[F]) Take(token string) (f F, forToken, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if r := x.token[token]; r != nil {
		if r.remaining > 0 {
			r.remaining--
			if r.remaining == 0 {
				delete(x.token, token)
			}
		}
		return r.f, true, true
	}
	if len(x.next) > 0 {
		r := x.next[0]
		r.remaining--
		if r.remaining == 0 {
			x.next = x.next[1:]
		}
		return r.f, false, true
	}
	return f, false, false
}

// Reset forgets every failure set.
func (x *Faults[F]) Reset() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.token, x.next = nil, nil
}

// InFlight counts the requests a fake is handling, and their peak.
type InFlight struct {
	mu      sync.Mutex
	active  int
	peak    int
	drained chan struct{}
}

// Enter counts a request in.
func (c *InFlight) Enter() {
	c.mu.Lock()
	c.active++
	c.peak = max(c.peak, c.active)
	c.mu.Unlock()
}

// Leave counts a request out.
func (c *InFlight) Leave() {
	c.mu.Lock()
	c.active--
	if c.active == 0 && c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
	c.mu.Unlock()
}

// Peak is the most requests handled at once.
func (c *InFlight) Peak() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}

// ResetPeak starts counting the peak anew from the requests in flight now.
func (c *InFlight) ResetPeak() {
	c.mu.Lock()
	c.peak = c.active
	c.mu.Unlock()
}

// Wait returns when no request is in flight.
func (c *InFlight) Wait() {
	c.mu.Lock()
	if c.active == 0 {
		c.mu.Unlock()
		return
	}
	if c.drained == nil {
		c.drained = make(chan struct{})
	}
	ch := c.drained
	c.mu.Unlock()
	<-ch
}

// HTTPServer is a fake's plain HTTP server.
type HTTPServer struct {
	srv    *http.Server
	url    string
	served chan struct{}
}

// StartHTTP listens on addr ("127.0.0.1:0" when "") and serves h; name prefixes its errors.
// Errors of the server go to errLog, discarded when nil.
func StartHTTP(name, addr string, h http.Handler, errLog *log.Logger) (*HTTPServer, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if errLog == nil {
		errLog = log.New(io.Discard, "", 0)
	}
	s := &HTTPServer{
		srv:    &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog},
		url:    "http://" + net.JoinHostPort(host, port),
		served: make(chan struct{}),
	}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL is the server's base URL, e.g. http://127.0.0.1:41234.
func (s *HTTPServer) URL() string { return s.url }

// Close stops the server, closing its connections, and waits for it to stop serving.
func (s *HTTPServer) Close() {
	s.srv.Close()
	<-s.served
}

// RandomHex is n random bytes in hex.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
