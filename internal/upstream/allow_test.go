package upstream

import (
	"net/netip"
	"testing"
)

func TestAllowList(t *testing.T) {
	cases := []struct {
		entries []string
		host    string
		port    string
		ip      string
		want    bool
	}{
		{nil, "example.com", "443", "93.184.216.34", true},
		{nil, "localhost", "80", "127.0.0.1", false},
		{nil, "x", "80", "10.0.0.1", false},
		{nil, "x", "80", "172.16.5.4", false},
		{nil, "x", "80", "192.168.1.1", false},
		{nil, "x", "80", "169.254.169.254", false},
		{nil, "x", "80", "100.64.0.1", false},
		{nil, "x", "80", "::1", false},
		{nil, "x", "80", "fd00::1", false},
		{nil, "x", "80", "::ffff:127.0.0.1", false},
		{nil, "x", "80", "0.0.0.0", false},
		{[]string{"127.0.0.0/8"}, "x", "80", "127.0.0.2", true},
		{[]string{"127.0.0.0/8"}, "example.com", "443", "93.184.216.34", false},
		{[]string{"127.0.0.0/8", "*"}, "example.com", "443", "93.184.216.34", true},
		{[]string{"origin.internal"}, "ORIGIN.internal", "8080", "10.1.1.1", true},
		{[]string{"origin.internal:8080"}, "origin.internal", "8080", "10.1.1.1", true},
		{[]string{"origin.internal:8080"}, "origin.internal", "9090", "10.1.1.1", false},
		{[]string{"10.0.0.5"}, "x", "80", "10.0.0.5", true},
		{[]string{"10.0.0.5"}, "x", "80", "10.0.0.6", false},
		// A port narrows an address or a network as it narrows a name.
		{[]string{"127.0.0.1:9090"}, "127.0.0.1", "9090", "127.0.0.1", true},
		{[]string{"127.0.0.1:9090"}, "127.0.0.1", "9091", "127.0.0.1", false},
		{[]string{"127.0.0.1:9090"}, "localhost", "80", "127.0.0.1", false},
		{[]string{"127.0.0.1:9090"}, "x", "9090", "127.0.0.2", false},
		{[]string{"127.0.0.1:9090"}, "x", "9090", "::ffff:127.0.0.1", true},
		{[]string{"127.0.0.1:9090", "127.0.0.1:9091"}, "x", "9091", "127.0.0.1", true},
		{[]string{"10.0.0.0/8:443"}, "x", "443", "10.9.8.7", true},
		{[]string{"10.0.0.0/8:443"}, "x", "80", "10.9.8.7", false},
		{[]string{"10.0.0.0/8:443"}, "x", "443", "11.0.0.1", false},
		{[]string{"10.0.0.0/8:443", "10.1.0.0/16"}, "x", "80", "10.1.2.3", true},
		{[]string{"[::1]:9090"}, "x", "9090", "::1", true},
		{[]string{"[::1]:9090"}, "x", "9091", "::1", false},
		{[]string{"[::1]"}, "x", "9091", "::1", true},
		{[]string{"::1"}, "x", "1", "::1", true},
		{[]string{"[fd00::/8]:443"}, "x", "443", "fd12::1", true},
		{[]string{"[fd00::/8]:443"}, "x", "8443", "fd12::1", false},
		{[]string{"[fd00::/8]:443"}, "x", "443", "fe80::1", false},
		{[]string{"fd00::/8"}, "x", "8443", "fd12::1", true},
		{[]string{"::ffff:10.0.0.0/104"}, "x", "80", "10.2.3.4", true},
		{[]string{"[::ffff:10.0.0.0/104]:80"}, "x", "80", "10.2.3.4", true},
		{[]string{"[::ffff:10.0.0.0/104]:80"}, "x", "81", "10.2.3.4", false},
	}
	for _, c := range cases {
		a, err := ParseAllowList(c.entries)
		if err != nil {
			t.Fatal(err)
		}
		ip := mustAddr(t, c.ip)
		if got := a.permits(c.host, c.port, ip); got != c.want {
			t.Errorf("allow %q: %s:%s (%s) = %v, want %v", c.entries, c.host, c.port, c.ip, got, c.want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "a b", "user@host", ":80", "host:", "host:0", "host:http", "host:65536",
		"127.0.0.1:", "127.0.0.1:0", "10.0.0.0/33:80", "10.0.0.0/8:x", "[fd00::/8]:", "fd00::/129", "[fe80::1%eth0]:80", "fe80::1%eth0", "a/b:80", "[h]:80",
		"::ffff:10.0.0.0/104:80", // an IPv6 address or network with a port must be bracketed
	} {
		if _, err := ParseAllowList([]string{bad}); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
