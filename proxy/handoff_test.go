package proxy

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/pushproxy/pushproxy"
)

// FuzzParseHandoff: any body either parses into a handoff that is safe to act on, or is
// refused with a client error; never a panic, never an internal error.
func FuzzParseHandoff(f *testing.F) {
	seeds := []string{
		`{"url":"https://example.com/events"}`,
		`{"url":"http://127.0.0.1:9000/events?x=1#frag","last_event_id":"42","headers":{"Authorization":"Bearer x"},"push":{"platform":"fcm","token":"abc:DEF_-."}}`,
		`{"url":"https://h/","push":{"platform":"apns","token":"` + strings.Repeat("0f", 32) + `","topic":"com.example.app","environment":"development"}}`,
		`{"url":"http://[::1]:80/","headers":{"x-a":"1","X-A":"2"}}`,
		`{"url":"http://h/","headers":{"Bad Name":"x"}}`,
		`{"url":"http://h/","headers":{"X":"a\r\nb"}}`,
		`{"url":"ftp://h/"}`, `{"url":""}`, `{}`, `[]`, `null`, `{"url":"http://h/"} x`, ``,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		h, err := parseHandoff(strings.NewReader(string(body)))
		if err != nil {
			if code := pushproxy.ErrorCode(err); code != pushproxy.EINVALID && code != pushproxy.ETOOLARGE {
				t.Fatalf("error of kind %q: %v", code, err)
			}
			return
		}
		if h.URL == nil || (h.URL.Scheme != "http" && h.URL.Scheme != "https") || h.URL.Hostname() == "" || h.URL.User != nil {
			t.Fatalf("accepted url %v", h.URL)
		}
		if _, err := url.Parse(h.URL.String()); err != nil {
			t.Fatalf("accepted url does not reparse: %v", err)
		}
		if strings.ContainsAny(h.LastEventID, "\r\n\x00") {
			t.Fatalf("accepted last event id %q", h.LastEventID)
		}
		for k, v := range h.Headers {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) || managedHeaders[k] {
				t.Fatalf("accepted header %q: %q", k, v)
			}
		}
		if h.Push != nil && h.Push.Platform != pushproxy.PlatformAPNs && h.Push.Platform != pushproxy.PlatformFCM {
			t.Fatalf("accepted platform %q", h.Push.Platform)
		}
	})
}

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
