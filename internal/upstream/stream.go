package upstream

import (
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
)

// ErrWouldBlock is returned by a Stream's TryRead when it has no data yet.
var ErrWouldBlock = errors.New("no data yet")

// Stream is a response body read without waiting: TryRead returns what is buffered, or
// ErrWouldBlock, and the function given to SetNotify is called (without locks held, on the
// connection's reading goroutine, so it must not block) whenever data or the end arrives or
// the stream is closed.
type Stream interface {
	TryRead([]byte) (int, error)
	SetNotify(func())
	Close() error
}

// HostPort is u's host and port, the scheme's default port when u has none.
func HostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// UnlockAndNotify unlocks mu, then calls notify if it is set: a notify function never runs
// under the stream's lock (it may read the stream at once). Pass notify as read under mu.
func UnlockAndNotify(mu *sync.Mutex, notify func()) {
	mu.Unlock()
	if notify != nil {
		notify()
	}
}

// Blocking returns a reader over s that waits for data, for callers that have a goroutine
// to spare (tests, tools). It takes over s's notify function.
func Blocking(s Stream) io.Reader {
	ready := make(chan struct{}, 1)
	s.SetNotify(func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	return &blocking{s: s, ready: ready}
}

type blocking struct {
	s     Stream
	ready chan struct{}
}

func (b *blocking) Read(p []byte) (int, error) {
	for {
		n, err := b.s.TryRead(p)
		if err != ErrWouldBlock {
			return n, err
		}
		<-b.ready
	}
}
