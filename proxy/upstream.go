package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/internal/upstream/h1client"
	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
)

// originResponse is an origin's answer to a holder's request.
type originResponse struct {
	status int
	line   string // "503 Service Unavailable": HTTP/1.1's status line carries the origin's reason
	proto  string // "h2" or "http/1.1"
	header http.Header
	body   originStream
}

// originStream is a response body read without a goroutine waiting on it: h2client's and
// h1client's streams.
type originStream = upstream.Stream

func (r *originResponse) statusText() string {
	if r.line != "" {
		return r.line
	}
	return fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
}

// openUpstream sends a holder's GET, following redirects up to the bound. Origins that speak
// HTTP/2 (over TLS, or cleartext with --upstream-h2c) are reached through the h2 pool, the
// others over HTTP/1.1 with a connection each; neither keeps a goroutine waiting on an idle
// stream. The body must be closed (ending ctx does not: the holder does, see holder.stop).
func (s *Service) openUpstream(ctx context.Context, rawURL string, header http.Header) (*originResponse, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid url: %w", err)
	}
	for hops := 0; ; hops++ {
		resp, err := s.openOnce(ctx, u, header)
		if err != nil {
			return nil, err
		}
		loc := resp.header.Get("Location")
		if !isRedirect(resp.status) || loc == "" {
			return resp, nil
		}
		resp.body.Close()
		if hops >= s.opts.UpstreamMaxRedirects {
			return nil, errTooManyRedirects
		}
		// An invalid location, or one of another scheme, fails the stream in openOnce.
		next, err := u.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("redirect to an invalid location: %w", err)
		}
		if !sameOrigin(next, u) {
			// No forwarded header is sent on to another origin: any of them may be a
			// credential (Authorization, Cookie, X-Api-Key, ...). Only the proxy's own follow.
			header = proxyHeaders(header)
		}
		u = next
	}
}

// sameOrigin reports whether a and b have one origin: scheme, host and port.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(upstream.HostPort(a), upstream.HostPort(b))
}

// ownHeaders are the request headers the holder sets itself (see holder.open): the only ones
// that follow a redirect to another origin.
var ownHeaders = []string{"Accept", "Accept-Encoding", "Cache-Control", "Last-Event-Id"}

// proxyHeaders returns the proxy's own headers of h, without any forwarded one.
func proxyHeaders(h http.Header) http.Header {
	out := make(http.Header, len(ownHeaders))
	for _, k := range ownHeaders {
		if v := h.Values(k); len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// noHeadError: the origin sent no response head within the stream's idle wait.
type noHeadError struct{ wait time.Duration }

func (e *noHeadError) Error() string {
	return fmt.Sprintf("no response head from the origin within %s of the request", e.wait)
}

// openOnce sends the GET to u, over HTTP/2 when the origin speaks it, and waits for the
// response's head. --upstream-connect-timeout bounds the connection and the request; the
// wait for the head is the stream's idle wait (--upstream-idle-timeout), as an origin may send
// its head only with its first event (Node's writeHead, go-sse).
func (s *Service) openOnce(ctx context.Context, u *url.URL, header http.Header) (*originResponse, error) {
	connect, idle := s.opts.UpstreamConnectTimeout, s.opts.UpstreamIdleTimeout
	var (
		resp originResponse
		st   originStream
	)
	if s.h2.Usable(u) {
		// h2client bounds its dial and the request's write itself; one deadline covers the
		// connection and the head.
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if idle > 0 {
			hctx, cancel = context.WithTimeout(ctx, connect+idle)
		}
		h2s, r, err := s.h2.Open(hctx, u, header)
		cancel()
		switch {
		case err == nil:
			st, resp = h2s, originResponse{status: r.Status, header: r.Header, proto: "h2"}
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			return nil, &noHeadError{wait: idle}
		case !errors.Is(err, h2client.ErrNotHTTP2):
			return nil, err
		}
	}
	if st == nil {
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, &url.Error{Op: "parse", URL: u.Redacted(), Err: fmt.Errorf("unsupported scheme %q", u.Scheme)}
		}
		h1s, r, err := s.h1.OpenWithin(ctx, u, header, h1client.Timeouts{Connect: connect, Head: idle})
		if errors.Is(err, h1client.ErrHeadTimeout) {
			return nil, &noHeadError{wait: idle}
		}
		if err != nil {
			return nil, err
		}
		st, resp = h1s, originResponse{status: r.Status, line: r.Line, header: r.Header, proto: "http/1.1"}
	}
	resp.body = st
	return &resp, nil
}
