package wakeup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

func TestMaskToken(t *testing.T) {
	const tok = "AbC:d-E_f"
	for _, tc := range []struct{ in, want string }{
		{"no token here", "no token here"},
		{"x AbC:d-E_f y AbC:d-E_f", "x [push token] y [push token]"},
		{"upper ABC:D-E_F lower abc:d-e_f", "upper [push token] lower [push token]"},
		{"query token=" + url.QueryEscape(tok), "query token=[push token]"},
		{"\xff\xfeé AbC:d-E_f \xff", "\xff\xfeé [push token] \xff"}, // offsets survive invalid UTF-8
		{"AbC:d-E", "AbC:d-E"},
	} {
		if got := maskToken(tc.in, tok); got != tc.want {
			t.Errorf("maskToken(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := maskToken("abc", ""); got != "abc" {
		t.Errorf("empty token: %q", got)
	}
}

func FuzzMaskToken(f *testing.F) {
	f.Add("Post \"https://h/3/device/00ff\": EOF", "00FF")
	f.Add("\xffaa\xffAA", "aA")
	f.Fuzz(func(t *testing.T, s, tok string) {
		got := maskToken(s, tok)
		if tok != "" && !strings.Contains(asciiLower(TokenMask), asciiLower(tok)) &&
			strings.Contains(asciiLower(got), asciiLower(tok)) {
			t.Fatalf("maskToken(%q, %q) = %q still holds the token", s, tok, got)
		}
	})
}

// chainHolds reports whether the text of err or of any error it wraps holds token.
func chainHolds(err error, token string) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		if strings.Contains(asciiLower(err.Error()), asciiLower(token)) {
			return true
		}
	}
	return false
}

// closedAddr is an address that refuses connections.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// hangUpAddr is the address of a server that accepts connections and closes them at once.
func hangUpAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// newTestAPNs is an APNs sender with a fresh auth key, sending to url.
func newTestAPNs(t *testing.T, url string) *APNs {
	t.Helper()
	key := filepath.Join(t.TempDir(), "AuthKey.p8")
	if _, err := fakeapns.GenerateAuthKey(key); err != nil {
		t.Fatal(err)
	}
	s, err := NewAPNs(APNsOptions{KeyFile: key, KeyID: apnsTestKeyID, TeamID: apnsTestTeamID, Topic: apnsTestTopic, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestAPNsNetworkErrorsHoldNoToken(t *testing.T) {
	tok := hexToken(7)
	for name, addr := range map[string]string{"refused": closedAddr(t), "hung up": hangUpAddr(t)} {
		t.Run(name, func(t *testing.T) {
			s := newTestAPNs(t, "https://"+addr)
			for _, token := range []string{tok, strings.ToUpper(tok)} {
				_, err := s.Send(context.Background(), Push{Token: token, Pending: map[string]int64{"s": 1}})
				se := sendErr(t, err, KindRetry)
				if chainHolds(err, tok) {
					t.Fatalf("the error holds the device token: %v", err)
				}
				var ue *url.Error
				if errors.As(err, &ue) {
					t.Errorf("the *url.Error (%v) is reachable", ue)
				}
				if !strings.Contains(se.Error(), "apns: Post https://"+addr+": ") {
					t.Errorf("error %q does not say what failed", se)
				}
			}
		})
	}
}

func TestFCMErrorsHoldNoToken(t *testing.T) {
	const tok = "fcm-token_QUOTED:0123456789abcdefghij"
	f := newFCMFixture(t, nil)
	// An FCM that answers each send with an error quoting the registration token, as Google's
	// field validation errors quote the value they refuse.
	status := http.StatusBadRequest
	quoting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":%d,"message":"Invalid value at 'message.token' (TYPE_STRING), \"%s\"","status":%q}}`,
			status, tok, map[int]string{400: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}[status])
	}))
	defer quoting.Close()
	file := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(file, f.fake.CredentialsJSON(), 0o600); err != nil {
		t.Fatal(err)
	}
	sender := func(u string) *FCM {
		s, err := NewFCM(context.Background(), FCMOptions{CredentialsFile: file, URL: u})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	for _, tc := range []struct {
		name string
		url  string
		kind string
		set  func()
	}{
		{"400 quoting the token", quoting.URL, KindInvalid, func() { status = 400 }},
		{"503 quoting the token", quoting.URL, KindRetry, func() { status = 503 }},
		{"refused", "http://" + closedAddr(t), KindRetry, func() {}},
		{"hung up", "http://" + hangUpAddr(t), KindRetry, func() {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.set()
			_, err := sender(tc.url).Send(context.Background(), Push{Token: tok, Pending: map[string]int64{"s": 1}})
			se := sendErr(t, err, tc.kind)
			if chainHolds(err, tok) {
				t.Fatalf("the error holds the registration token: %v", err)
			}
			if strings.Contains(tc.name, "quoting") && !strings.Contains(se.Error(), TokenMask) {
				t.Errorf("error %q: FCM's message is lost", se)
			}
		})
	}
}
