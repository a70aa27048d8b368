package api

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
)

func TestClientAddr(t *testing.T) {
	t.Parallel()
	trusted, err := ParseTrustedProxies([]string{"10.0.0.0/8", "192.0.2.1", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		peer string
		xff  []string
		want string
	}{
		{"203.0.113.5:4000", nil, "203.0.113.5"},
		{"203.0.113.5:4000", []string{"1.2.3.4"}, "203.0.113.5"}, // an untrusted peer's claim
		{"10.1.2.3:80", nil, "10.1.2.3"},
		{"10.1.2.3:80", []string{"198.51.100.9"}, "198.51.100.9"},
		{"10.1.2.3:80", []string{"6.6.6.6, 198.51.100.9"}, "198.51.100.9"},             // the client's own claim on the left
		{"10.1.2.3:80", []string{"6.6.6.6, 198.51.100.9, 192.0.2.1"}, "198.51.100.9"},  // through two proxies
		{"10.1.2.3:80", []string{"6.6.6.6", "198.51.100.9, 10.9.9.9"}, "198.51.100.9"}, // several header lines
		{"10.1.2.3:80", []string{"not-an-address, 10.9.9.9"}, "10.9.9.9"},              // garbage ends the walk
		{"10.1.2.3:80", []string{"garbage"}, "10.1.2.3"},                               // at the hop that added it
		{"10.1.2.3:80", []string{"10.4.4.4, 10.5.5.5"}, "10.4.4.4"},                    // all trusted: the leftmost
		{"10.1.2.3:80", []string{"[2001:db8::1]:443"}, "2001:db8::1"},                  // with a port
		{"10.1.2.3:80", []string{"198.51.100.9:1234"}, "198.51.100.9"},                 // IPv4 with a port
		{"[fd00::1]:80", []string{"::ffff:198.51.100.9"}, "198.51.100.9"},              // mapped
		{"[fe80::1%eth0]:80", []string{"198.51.100.9"}, "fe80::1"},                     // untrusted, zone dropped
		{"10.1.2.3:80", []string{strings.Repeat("1", 100)}, "10.1.2.3"},                // huge entry
		{"bogus", []string{"198.51.100.9"}, "invalid IP"},                              // no peer address
	}
	for _, c := range cases {
		r := &http.Request{RemoteAddr: c.peer, Header: http.Header{"X-Forwarded-For": c.xff}}
		if got := trustedProxies(trusted).clientAddr(r).String(); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
	if _, err := ParseTrustedProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}

func TestKeyedLimiterForgetsFullBuckets(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	l := newKeyedLimiter(2, 4)
	l.now = func() time.Time { return now }
	for i := range 4 {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, retry := l.allow("a")
	if ok || retry <= 0 || retry > time.Second {
		t.Fatalf("over the burst: %v, retry %s", ok, retry)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another key refused")
	}
	now = now.Add(500 * time.Millisecond) // one token back for a
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("a refilled token refused")
	}
	now = now.Add(2 * time.Minute) // every bucket full again: forgotten at the next sweep
	l.allow("c")
	if n := l.size(); n != 1 {
		t.Fatalf("%d keys remembered after their buckets refilled, want 1", n)
	}
	// Beyond maxKeys active keys, new keys share one bucket: memory stays bounded.
	l.maxKeys = 8
	for i := range 100 {
		l.allow(string(rune('A' + i)))
	}
	if n := l.size(); n > l.maxKeys {
		t.Fatalf("%d keys remembered, bound %d", n, l.maxKeys)
	}
	if newKeyedLimiter(0, 10) != nil {
		t.Fatal("a zero rate is a limit")
	}
	if ok, _ := (*keyedLimiter)(nil).allow("x"); !ok {
		t.Fatal("no limiter refused")
	}
}

// FuzzClientAddr: any peer and X-Forwarded-For give either the peer itself or an address
// the forwarded header names, never a trusted proxy when an untrusted hop exists, and never
// a panic.
func FuzzClientAddr(f *testing.F) {
	trusted, _ := ParseTrustedProxies([]string{"10.0.0.0/8", "::1"})
	f.Add("10.0.0.1:80", "198.51.100.9, 10.0.0.2")
	f.Add("[::1]:80", "[2001:db8::1]:1, , x")
	f.Add("203.0.113.1:5", "10.0.0.5")
	f.Add("10.0.0.1:80", "::ffff:10.0.0.1,fe80::1%25eth0")
	f.Fuzz(func(t *testing.T, peer, xff string) {
		r := &http.Request{RemoteAddr: peer, Header: http.Header{"X-Forwarded-For": {xff}}}
		got := trustedProxies(trusted).clientAddr(r)
		p := parseAddr(peer)
		if !p.IsValid() || !trustedProxies(trusted).trusts(p) {
			if got != p {
				t.Fatalf("untrusted peer %q: %v", peer, got)
			}
			return
		}
		named := got == p
		for _, e := range strings.Split(xff, ",") {
			named = named || parseAddr(strings.TrimSpace(e)) == got
		}
		if !named {
			t.Fatalf("client %v named nowhere in %q", got, xff)
		}
		_ = addrKey(got)
	})
}

// FuzzDeviceSecret: the device credential of a handoff is either refused as invalid or is
// exactly a 43-character base64url text of 32 bytes, whose hash matches itself only.
func FuzzDeviceSecret(f *testing.F) {
	f.Add(newDeviceSecret())
	f.Add("")
	f.Add(strings.Repeat("A", 43))
	f.Add(strings.Repeat("_", 42) + "=")
	f.Add(strings.Repeat("A", 42) + "B") // non-canonical trailing bits
	f.Add("\xff" + strings.Repeat("A", 42))
	f.Fuzz(func(t *testing.T, secret string) {
		got, err := parseDeviceSecret(secret)
		if err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
				t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
			}
			if len(secret) >= 8 && strings.Contains(pushproxy.ErrorMessage(err), secret) {
				t.Fatalf("the message repeats the secret: %q", pushproxy.ErrorMessage(err))
			}
			return
		}
		b, derr := base64.RawURLEncoding.DecodeString(got)
		if got != secret || len(got) != deviceSecretLen || derr != nil || len(b) != 32 || base64.RawURLEncoding.EncodeToString(b) != got {
			t.Fatalf("accepted %q", secret)
		}
		// The body form: the secret inside a handoff's push object.
		body := `{"url":"https://h/","push":{"platform":"apns","token":"` + strings.Repeat("ab", 32) + `","device_secret":"` + got + `"}}`
		h, err := parseHandoff(strings.NewReader(body))
		if err != nil || h.DeviceSecret != got {
			t.Fatalf("handoff with %q: %v", got, err)
		}
	})
}

// FuzzValidatePush: a push address is refused as invalid or has a token of its platform's
// shape.
func FuzzValidatePush(f *testing.F) {
	f.Add("apns", strings.Repeat("0f", 32), "com.example.app", "production")
	f.Add("fcm", "cXz1AbCdEfGhIjKlMnOpQr:APA91bH"+strings.Repeat("x-_9", 30), "", "")
	f.Add("fcm", "short", "", "")
	f.Add("apns", strings.Repeat("0F", 100), "", "development")
	f.Fuzz(func(t *testing.T, platform, token, topic, env string) {
		a, err := validatePush(&pushRequest{Platform: platform, Token: token, Topic: topic, Environment: env})
		if err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
				t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
			}
			return
		}
		switch a.Platform {
		case pushproxy.PlatformAPNs:
			if checkAPNsToken(a.Token) != nil || strings.ToLower(a.Token) != a.Token {
				t.Fatalf("accepted APNs token %q", a.Token)
			}
		case pushproxy.PlatformFCM:
			if len(a.Token) < minFCMTokenLen || len(a.Token) > maxFCMTokenLen || checkFCMToken(a.Token) != nil {
				t.Fatalf("accepted FCM token %q", a.Token)
			}
		default:
			t.Fatalf("accepted platform %q", a.Platform)
		}
	})
}
