package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pushproxy/pushproxy"
)

// AllowList decides which upstream addresses the proxy may dial. The proxy dials URLs that
// clients give it, so it must not become a way into the operator's private network: the check
// runs at dial time, on the very address dialed (after DNS, and again after every redirect).
//
// Entries (from --upstream-allow):
//   - "*": any host whose addresses are public;
//   - "host" or "host:port": that host name (on any port, or that port), whatever it resolves
//     to, private addresses included;
//   - "10.0.0.0/8", "127.0.0.1" or "::1": addresses in that network (or that address), on any
//     port; "10.0.0.0/8:443", "127.0.0.1:9090", "[::1]:9090" or "[fd00::/8]:443": on that
//     port only. A port narrows an address or network entry as it narrows a name.
//
// An empty list means "*". A non-empty list without "*" permits only what it lists.
// Loopback, private, link-local and other non-public addresses are refused unless listed.
type AllowList struct {
	anyPublic bool
	hosts     map[string]bool // lower-case host names
	hostPorts map[string]bool // lower-case "host:port"
	nets      []netPort

	// Resolver resolves host names for CheckHost and for Dialer when its net.Dialer has no
	// resolver of its own; nil means net.DefaultResolver.
	Resolver *net.Resolver
}

func (a *AllowList) resolver() *net.Resolver {
	if a.Resolver != nil {
		return a.Resolver
	}
	return net.DefaultResolver
}

// netPort is an address or network entry, on one port or ("") any.
type netPort struct {
	prefix netip.Prefix
	port   string
}

// ParseAllowList parses --upstream-allow entries.
func ParseAllowList(entries []string) (*AllowList, error) {
	a := &AllowList{hosts: map[string]bool{}, hostPorts: map[string]bool{}}
	n := 0
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		n++
		if e == "*" {
			a.anyPublic = true
			continue
		}
		// An address or network alone ("::1" and "fd00::/8" hold colons of their own).
		if p, ok := parseNet(strings.Trim(e, "[]")); ok {
			a.nets = append(a.nets, netPort{prefix: p})
			continue
		}
		if strings.Contains(e, "/") && !strings.Contains(e, "]") && strings.Count(e, ":") != 1 {
			return nil, fmt.Errorf("upstream allow entry %q: not a CIDR", e)
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			if strings.ContainsAny(e, " :@/[]") {
				return nil, fmt.Errorf("upstream allow entry %q: not a host, host:port, address or CIDR", e)
			}
			a.hosts[strings.ToLower(e)] = true
			continue
		}
		if host == "" || port == "" {
			return nil, fmt.Errorf("upstream allow entry %q: empty host or port", e)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("upstream allow entry %q: bad port %q", e, port)
		}
		if p, ok := parseNet(host); ok {
			a.nets = append(a.nets, netPort{prefix: p, port: port})
			continue
		}
		if strings.ContainsAny(host, " :@/[]") || strings.HasPrefix(e, "[") {
			return nil, fmt.Errorf("upstream allow entry %q: not a host, address or CIDR before the port", e)
		}
		a.hostPorts[strings.ToLower(host)+":"+port] = true
	}
	if n == 0 {
		a.anyPublic = true
	}
	return a, nil
}

// parseNet parses an address ("10.0.0.5", "::1") or a network ("10.0.0.0/8") as a prefix.
func parseNet(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() {
			// "::ffff:10.0.0.0/104": the IPv4 network it maps (dialed addresses are unmapped).
			if p.Bits() < 96 {
				return netip.Prefix{}, false
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), true
}

// BlockedError is returned when a dial is refused by the allow list.
type BlockedError struct {
	Host string
	Addr netip.Addr
}

func (e *BlockedError) Error() string {
	if e.Addr.IsValid() && e.Addr.String() != e.Host {
		return fmt.Sprintf("upstream %s (%s) is not allowed: %s addresses must be listed in --upstream-allow", e.Host, e.Addr, addrKind(e.Addr))
	}
	return fmt.Sprintf("upstream %s is not allowed: %s addresses must be listed in --upstream-allow", e.Host, addrKind(e.Addr))
}

func (a *AllowList) permits(host, port string, ip netip.Addr) bool {
	host = strings.ToLower(host)
	if a.hosts[host] || a.hostPorts[host+":"+port] {
		return true
	}
	ip = ip.Unmap()
	for _, n := range a.nets {
		if n.prefix.Contains(ip) && (n.port == "" || n.port == port) {
			return true
		}
	}
	return a.anyPublic && isPublic(ip)
}

// nonPublic lists special-purpose ranges beyond what netip's predicates cover.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"), // NAT64: may reach IPv4 private space
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2001:db8::/32"),
	netip.MustParsePrefix("2002::/16"), // 6to4: embeds an IPv4 address
}

func isPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsMulticast() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

func addrKind(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local"
	case isPublic(ip):
		return "public"
	default:
		return "special-purpose"
	}
}

// resolve returns the addresses of host (itself if it is an IP literal).
func resolve(ctx context.Context, r *net.Resolver, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	return ips, nil
}

// Dialer returns a DialContext that dials only permitted addresses. It resolves the host
// itself and dials the checked address, so DNS cannot answer differently between the check
// and the dial.
func (a *AllowList) Dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	r := a.resolver()
	if d.Resolver != nil {
		r = d.Resolver
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := resolve(ctx, r, host)
		if err != nil {
			return nil, err
		}
		var (
			blocked *BlockedError
			lastErr error
		)
		for _, ip := range ips {
			if !a.permits(host, port, ip) {
				if blocked == nil {
					blocked = &BlockedError{Host: host, Addr: ip}
				}
				continue
			}
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			lastErr = err
		}
		if lastErr != nil {
			return nil, lastErr
		}
		if blocked != nil {
			return nil, blocked
		}
		return nil, fmt.Errorf("%s has no addresses", host)
	}
}

// CheckHost tells a client at handoff time whether the proxy may dial host:port, so that a
// forbidden URL gets a clear 4xx rather than a stream that fails later. The dial-time check
// still applies. A name that does not exist is EINVALID; a resolver that fails or does not
// answer before ctx ends is EUNAVAILABLE (the caller bounds the wait with ctx).
func (a *AllowList) CheckHost(ctx context.Context, host, port string) error {
	ips, err := resolve(ctx, a.resolver(), host)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return pushproxy.Errorf(pushproxy.EINVALID, "url: host %q does not resolve", host)
		}
		return pushproxy.Errorf(pushproxy.EUNAVAILABLE, "url: cannot resolve host %q now: try again", host)
	}
	if len(ips) == 0 {
		return pushproxy.Errorf(pushproxy.EINVALID, "url: host %q has no addresses", host)
	}
	for _, ip := range ips {
		if a.permits(host, port, ip) {
			return nil
		}
	}
	return pushproxy.Errorf(pushproxy.EFORBIDDEN, "url: %s", (&BlockedError{Host: host, Addr: ips[0]}).Error())
}
