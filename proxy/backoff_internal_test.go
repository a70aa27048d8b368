package proxy

import (
	"testing"
	"time"
)

// TestBackoff: the wait before a reconnect. After a connection with an event, the origin's
// retry (or the default), however small; after connections without one, at least 1 s
// whatever retry: says, doubling, capped, with jitter that never goes below the floor.
func TestBackoff(t *testing.T) {
	s := &Service{opts: Options{UpstreamRetry: 3 * time.Second, UpstreamBackoffMax: time.Minute}}
	cases := []struct {
		retryMS    int64
		failures   int
		retryAfter time.Duration
		lo, hi     time.Duration
	}{
		{0, 0, 0, 0, 0},
		{-1, 0, 0, 3 * time.Second * 3 / 4, 3 * time.Second * 5 / 4},
		{0, 1, 0, time.Second, time.Second * 5 / 4},
		{0, 2, 0, 1500 * time.Millisecond, 2500 * time.Millisecond},
		{0, 3, 0, 3 * time.Second, 5 * time.Second},
		{10, 1, 0, time.Second, time.Second * 5 / 4},
		{-1, 1, 0, 3 * time.Second * 3 / 4, 3 * time.Second * 5 / 4},
		{-1, 2, 0, 6 * time.Second * 3 / 4, 6 * time.Second * 5 / 4},
		{0, 40, 0, 45 * time.Second, 75 * time.Second},
		{0, 1, 10 * time.Second, 10 * time.Second, 10 * time.Second},
	}
	for _, c := range cases {
		h := &holder{s: s, retryMS: c.retryMS}
		for range 50 {
			if d := h.backoff(c.failures, c.retryAfter); d < c.lo || d > c.hi {
				t.Fatalf("retry %d ms, %d failures, Retry-After %s: %s, want %s to %s", c.retryMS, c.failures, c.retryAfter, d, c.lo, c.hi)
			}
		}
	}
	// A cap below the floor wins (give or take the jitter).
	h := &holder{s: &Service{opts: Options{UpstreamRetry: time.Millisecond, UpstreamBackoffMax: 200 * time.Millisecond}}, retryMS: 0}
	for range 50 {
		if d := h.backoff(5, 0); d < 200*time.Millisecond || d > 250*time.Millisecond {
			t.Fatalf("capped at 200ms: %s", d)
		}
	}
}
