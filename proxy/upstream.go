package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/pushproxy/pushproxy/internal/h2client"
)

// originResponse is an origin's answer to a holder's request.
type originResponse struct {
	status int
	line   string // "503 Service Unavailable": HTTP/1.1's status line carries the origin's reason
	header http.Header
	body   io.ReadCloser
}

func (r *originResponse) statusText() string {
	if r.line != "" {
		return r.line
	}
	return fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
}

// openUpstream sends a holder's GET, following redirects up to the bound. Origins that speak
// HTTP/2 (over TLS, or cleartext with --upstream-h2c) are reached through the h2 pool, which
// costs no goroutine per stream; others through net/http. The body must be closed; ending
// ctx closes it too.
func (s *Service) openUpstream(ctx context.Context, rawURL string, header http.Header) (*originResponse, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid url: %w", err)
	}
	for hops := 0; ; hops++ {
		if !s.h2.Usable(u) {
			return s.openHTTP1(ctx, u, header, s.opts.UpstreamMaxRedirects-hops)
		}
		hctx, cancel := context.WithTimeout(ctx, s.opts.UpstreamConnectTimeout)
		st, resp, err := s.h2.Open(hctx, u, header)
		cancel()
		if errors.Is(err, h2client.ErrNotHTTP2) {
			return s.openHTTP1(ctx, u, header, s.opts.UpstreamMaxRedirects-hops)
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				err = errors.New("timeout awaiting response headers")
			}
			return nil, err
		}
		loc := resp.Header.Get("Location")
		if !isRedirect(resp.Status) || loc == "" {
			stop := context.AfterFunc(ctx, func() { st.Close() })
			return &originResponse{status: resp.Status, header: resp.Header, body: &stopCloser{st, stop}}, nil
		}
		st.Close()
		if hops >= s.opts.UpstreamMaxRedirects {
			return nil, errTooManyRedirects
		}
		next, err := u.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("redirect to an invalid location: %w", err)
		}
		if next.Scheme != "http" && next.Scheme != "https" {
			return nil, fmt.Errorf("redirect to an unsupported scheme %q", next.Scheme)
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

// openHTTP1 sends the GET through net/http, with what is left of the redirect budget.
func (s *Service) openHTTP1(ctx context.Context, u *url.URL, header http.Header, redirects int) (*originResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("invalid url: %w", err)
	}
	req.Header = header
	c := *s.client
	c.CheckRedirect = func(_ *http.Request, via []*http.Request) error {
		if len(via) > redirects {
			return errTooManyRedirects
		}
		return nil
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	return &originResponse{status: resp.StatusCode, line: resp.Status, header: resp.Header, body: resp.Body}, nil
}

// stopCloser closes an h2 stream and drops the hook that would close it when the holder's
// context ends.
type stopCloser struct {
	*h2client.Stream
	stop func() bool
}

func (c *stopCloser) Close() error {
	c.stop()
	return c.Stream.Close()
}
