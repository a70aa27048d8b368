package api

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pushproxy/pushproxy"
)

// keyedLimiter is a token bucket per key (a client address, an API key's hash): rate r per
// second, bursts of b. A key whose bucket is full again is forgotten (a new bucket for it
// would be the same), so memory follows the keys active in the last b/r seconds; beyond
// maxKeys of those, new keys share one bucket (a flood of addresses slows itself, never the
// process's memory).
type keyedLimiter struct {
	r       rate.Limit
	b       int
	maxKeys int
	now     func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	overflow  *rate.Limiter
	lastSweep time.Time
}

// newKeyedLimiter returns a limiter of perSecond per key with bursts of burst (at least one
// second's worth), or nil (no limit) when perSecond is not positive.
func newKeyedLimiter(perSecond float64, burst int) *keyedLimiter {
	if perSecond <= 0 || math.IsNaN(perSecond) || math.IsInf(perSecond, 0) {
		return nil
	}
	b := max(burst, int(math.Ceil(perSecond)), 1)
	return &keyedLimiter{
		r: rate.Limit(perSecond), b: b, maxKeys: 1 << 16, now: time.Now,
		buckets:  map[string]*rate.Limiter{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), b),
	}
}

// allow takes a token from key's bucket, or says how long until one is there.
func (l *keyedLimiter) allow(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) > time.Minute || len(l.buckets) >= l.maxKeys {
		l.sweep(now)
	}
	lim, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) < l.maxKeys {
			lim = rate.NewLimiter(l.r, l.b)
			l.buckets[key] = lim
		} else {
			lim = l.overflow
		}
	}
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets the keys whose buckets are full.
func (l *keyedLimiter) sweep(now time.Time) {
	l.lastSweep = now
	for k, lim := range l.buckets {
		if lim.TokensAt(now) >= float64(l.b) {
			delete(l.buckets, k)
		}
	}
}

// size is the number of keys remembered.
func (l *keyedLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// rateLimited is the error of a request over a rate; it answers 429 with Retry-After.
type rateLimited struct {
	what  string
	retry time.Duration
}

func (e *rateLimited) Error() string { return "rate limited: " + e.what }

// limitError returns the 429 problem of a rate, or nil when the request is allowed.
func limitError(l *keyedLimiter, key, what string) error {
	ok, retry := l.allow(key)
	if ok {
		return nil
	}
	return &pushproxy.Error{
		Code:    pushproxy.ERATELIMITED,
		Message: fmt.Sprintf("too many %s; retry after %s", what, retryAfter(retry)+"s"),
		Err:     &rateLimited{what: what, retry: retry},
	}
}

// retryAfter is a Retry-After value: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

// trustedProxies is the set of peers whose X-Forwarded-For is believed.
type trustedProxies []netip.Prefix

// ParseTrustedProxies parses a list of CIDRs and addresses (an address is its own /32 or
// /128).
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func (t trustedProxies) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr returns the address of the client that sent r: the connection's peer, unless
// the peer is a trusted proxy; then the rightmost address of X-Forwarded-For that is not a
// trusted proxy (each proxy appends the address it got the request from, so the entries to
// the left of the first untrusted one are the client's own claims). An entry that is not an
// address ends the walk at the hop that added it.
func (t trustedProxies) clientAddr(r *http.Request) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if !peer.IsValid() || len(t) == 0 || !t.trusts(peer) {
		return peer
	}
	client := peer
	xff := r.Header.Values("X-Forwarded-For")
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a := parseAddr(strings.TrimSpace(parts[j]))
			if !a.IsValid() {
				return client
			}
			client = a
			if !t.trusts(a) {
				return client
			}
		}
	}
	return client
}

// parseAddr parses an address as RemoteAddr or X-Forwarded-For carry it: "1.2.3.4",
// "1.2.3.4:5678", "::1", "[::1]:5678"; the zero Addr when it is none of these.
func parseAddr(s string) netip.Addr {
	if len(s) > 64 {
		return netip.Addr{}
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone("")
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// addrKey is the rate-limit key of a client address: an IPv4 address, or the /64 of an IPv6
// one (a single host often holds a whole /64).
func addrKey(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown"
	}
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// admitHandoff applies the handoff's limits in the order that costs a stranger most: the
// rate of its address (whatever key it tries), the API key, then the rate of the key. It
// returns the API key ("" when none is required).
func (s *Server) admitHandoff(r *http.Request) (string, error) {
	if err := limitError(s.addrLimit, addrKey(s.proxies.clientAddr(r)), "handoffs from this client address"); err != nil {
		return "", err
	}
	key, err := s.checkAPIKey(r)
	if err != nil {
		return "", err
	}
	if key == "" {
		return "", nil
	}
	if err := limitError(s.keyLimit, string(keyHash(key)), "handoffs under this API key"); err != nil {
		return "", err
	}
	return key, nil
}
