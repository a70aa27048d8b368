package wakeup

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/upstream"
)

// DefaultWebPushEndpoints are the push services of the major browsers: Chrome and other
// Chromium browsers (FCM), Firefox (Mozilla autopush), Edge (Windows Push Notification
// Services) and Safari on macOS and iOS (Apple).
var DefaultWebPushEndpoints = []string{
	"fcm.googleapis.com",
	"updates.push.services.mozilla.com",
	"*.notify.windows.com",
	"web.push.apple.com",
}

// WebPushEndpoints is the list of push services (--webpush-endpoints) a Web Push
// subscription's endpoint may name. Endpoints come from clients, so the proxy dials only
// these hosts, and only their public addresses.
//
// Entries:
//   - "host" or "host:port": an https endpoint on that host, on port 443 or that port;
//   - "*.example.com": an https endpoint on port 443 of any host under example.com (not
//     example.com itself);
//   - "http://host:port" (or "http://host", port 80): plain http to that host and port, for
//     a push service on the operator's own network or the fake of `pushproxy fakes` on
//     loopback.
//
// A host name is dialed only at its public addresses. An entry that is an IP address
// ("127.0.0.1:8790", "http://[::1]:8790", "10.0.0.5") permits that address even when it is
// private or loopback: the operator listed it explicitly.
type WebPushEndpoints struct {
	https    map[string]bool // "host:port", lower case
	suffixes []string        // ".example.com", on port 443
	http     map[string]bool // "host:port" allowed over plain http
	dial     *upstream.AllowList
}

// ParseWebPushEndpoints parses --webpush-endpoints entries. An empty list permits nothing.
func ParseWebPushEndpoints(entries []string) (*WebPushEndpoints, error) {
	e := &WebPushEndpoints{https: map[string]bool{}, http: map[string]bool{}}
	dial := []string{"*"}
	for _, raw := range entries {
		s := strings.ToLower(strings.TrimSpace(raw))
		if s == "" {
			continue
		}
		plain := false
		if rest, ok := strings.CutPrefix(s, "http://"); ok {
			s, plain = rest, true
		} else if rest, ok := strings.CutPrefix(s, "https://"); ok {
			s = rest
		}
		s = strings.TrimSuffix(s, "/")
		host, port := s, ""
		if h, p, err := net.SplitHostPort(s); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
				return nil, fmt.Errorf("webpush endpoint %q: bad port", raw)
			}
			host, port = h, p
		}
		if host == "" || strings.ContainsAny(host, " /@?#[]") || strings.Contains(host, ":") && !isIPLiteral(host) {
			return nil, fmt.Errorf("webpush endpoint %q: not a host, *.domain, host:port or http://host:port", raw)
		}
		port = portOrDefault(port, plain)
		key := net.JoinHostPort(host, port)
		switch {
		case strings.HasPrefix(host, "*."):
			if port != "443" || plain || strings.Contains(host[2:], "*") || !strings.Contains(host[2:], ".") {
				return nil, fmt.Errorf("webpush endpoint %q: a wildcard is \"*.domain.tld\", https on port 443", raw)
			}
			e.suffixes = append(e.suffixes, host[1:])
			continue
		case strings.Contains(host, "*"):
			return nil, fmt.Errorf("webpush endpoint %q: a wildcard stands only for the first labels (\"*.domain.tld\")", raw)
		}
		if plain {
			e.http[key] = true
		} else {
			e.https[key] = true
		}
		if isIPLiteral(host) {
			dial = append(dial, key)
		}
	}
	var err error
	if e.dial, err = upstream.ParseAllowList(dial); err != nil {
		return nil, fmt.Errorf("webpush endpoints: %w", err)
	}
	return e, nil
}

// portOrDefault is port, or the default port of http (plain) or https.
func portOrDefault(port string, plain bool) string {
	switch {
	case port != "":
		return port
	case plain:
		return "80"
	}
	return "443"
}

func isIPLiteral(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// Check says whether the proxy may send to endpoint, a subscription's endpoint URL: an
// https URL (http only to hosts listed as http://) whose host and port are listed. A refusal is a
// *pushproxy.Error (EINVALID for a URL that is not one, EFORBIDDEN for a host not listed)
// naming the host, never the whole URL (its path identifies the subscription).
func (e *WebPushEndpoints) Check(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return pushproxy.Errorf(pushproxy.EINVALID, "push.subscription.endpoint: not an absolute https URL")
	}
	var ok bool
	switch u.Scheme {
	case "https":
		ok = e.permits(u.Hostname(), u.Port(), false)
	case "http":
		ok = e.permits(u.Hostname(), u.Port(), true)
	default:
		return pushproxy.Errorf(pushproxy.EINVALID, "push.subscription.endpoint: not an https URL")
	}
	if !ok {
		return pushproxy.Errorf(pushproxy.EFORBIDDEN, "push.subscription.endpoint: %s://%s is not a push service this proxy sends to (--webpush-endpoints)", u.Scheme, u.Host)
	}
	return nil
}

// permits reports whether host and port ("" for the scheme's default) are listed, for
// plain http or https.
func (e *WebPushEndpoints) permits(host, port string, plain bool) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" {
		return false
	}
	port = portOrDefault(port, plain)
	key := net.JoinHostPort(host, port)
	if plain {
		return e.http[key]
	}
	if e.https[key] {
		return true
	}
	for _, s := range e.suffixes {
		if port == "443" && strings.HasSuffix(host, s) && len(host) > len(s) {
			return true
		}
	}
	return false
}

// Client returns an HTTP client for the Web Push sender that dials only listed hosts, and
// those only at public addresses unless listed as an address, checked at dial time on the
// address dialed (internal/upstream's AllowList); it follows no redirect and uses no
// environment proxy.
func (e *WebPushEndpoints) Client() *http.Client {
	dial := e.dial.Dialer(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second})
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.MaxIdleConnsPerHost = 100
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		// The transport names the port always; the scheme is not known here, so a host
		// and port listed for either may be dialed (Check decided the scheme).
		if !e.permits(host, port, false) && !e.permits(host, port, true) {
			return nil, &net.AddrError{Err: "not a listed push service (--webpush-endpoints)", Addr: host}
		}
		return dial(ctx, network, addr)
	}
	return &http.Client{
		Transport: t,
		// A redirect is answered as the push service's refusal (KindInvalid), not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
