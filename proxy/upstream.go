package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/pushproxy/pushproxy/internal/upstream"
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
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				err = errors.New("timeout awaiting response headers")
			}
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
		if next.Hostname() != u.Hostname() {
			// As net/http does: credentials are not sent on to another host.
			header = header.Clone()
			for _, k := range []string{"Authorization", "Www-Authenticate", "Cookie", "Cookie2"} {
				header.Del(k)
			}
		}
		u = next
	}
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// openOnce sends the GET to u, over HTTP/2 when the origin speaks it, and waits for the
// response's head for at most --upstream-connect-timeout.
func (s *Service) openOnce(ctx context.Context, u *url.URL, header http.Header) (*originResponse, error) {
	hctx, cancel := context.WithTimeout(ctx, s.opts.UpstreamConnectTimeout)
	defer cancel()
	var (
		resp originResponse
		st   originStream
	)
	if s.h2.Usable(u) {
		h2s, r, err := s.h2.Open(hctx, u, header)
		switch {
		case err == nil:
			st, resp = h2s, originResponse{status: r.Status, header: r.Header, proto: "h2"}
		case !errors.Is(err, h2client.ErrNotHTTP2):
			return nil, err
		}
	}
	if st == nil {
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, &url.Error{Op: "parse", URL: u.Redacted(), Err: fmt.Errorf("unsupported scheme %q", u.Scheme)}
		}
		h1s, r, err := s.h1.Open(hctx, u, header)
		if err != nil {
			return nil, err
		}
		st, resp = h1s, originResponse{status: r.Status, line: r.Line, header: r.Header, proto: "http/1.1"}
	}
	resp.body = st
	return &resp, nil
}
