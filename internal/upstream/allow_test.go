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
	for _, bad := range []string{"10.0.0.0/33", "a b", "user@host", ":80"} {
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
