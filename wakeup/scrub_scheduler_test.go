package wakeup_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
)

// storedTexts is every error text the store shows about the device of stream: its wake-ups',
// its last error and dead reason, the stream's state reason, the dead devices' list.
func (b *bundle) storedTexts(t *testing.T, stream string) []string {
	t.Helper()
	ctx := context.Background()
	dev := b.device(t, stream)
	ws := b.wakeState(t, dev)
	out := []string{ws.LastError, ws.DeadReason}
	recent, err := b.st.RecentWakeups(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range recent {
		out = append(out, w.Error)
	}
	dead, err := b.st.DeadDevices(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dead {
		out = append(out, d.DeadReason)
	}
	s, err := b.st.GetStream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	return append(out, s.StateReason)
}

// noToken fails when a text holds token in any letter case.
func noToken(t *testing.T, texts []string, token string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(strings.ToLower(s), strings.ToLower(token)) {
			t.Errorf("a stored error holds the push token: %q", s)
		}
	}
}

// The real APNs sender meets a network error whose net/http text names the request URL, which
// ends with the device token: what the store keeps holds no token.
func TestAPNsNetworkErrorStoresNoToken(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refuses connections from now on
	key := filepath.Join(t.TempDir(), "AuthKey.p8")
	if _, err := fakeapns.GenerateAuthKey(key); err != nil {
		t.Fatal(err)
	}
	apns, err := wakeup.NewAPNs(wakeup.APNsOptions{KeyFile: key, KeyID: "KEY1234567", TeamID: "TEAM123456", Topic: "com.example.app", URL: "https://" + addr})
	if err != nil {
		t.Fatal(err)
	}
	defer apns.Close()
	b.sched = wakeup.New(b.st, map[string]wakeup.Sender{pushproxy.PlatformAPNs: apns}, &wakeup.Options{
		InstanceID: owner, Now: b.clock.Now, Jitter: time.Nanosecond,
	})
	s := b.stream(t, tokenA)
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	if n := b.run(t); n != 1 {
		t.Fatalf("claimed %d wake-ups, want 1", n)
	}
	ws := b.wakeState(t, b.device(t, s))
	if ws.LastOutcome != pushproxy.OutcomeRetry || !strings.Contains(ws.LastError, addr) {
		t.Fatalf("wake state %+v, want a retry after a network error naming %s", ws, addr)
	}
	noToken(t, b.storedTexts(t, s), tokenA)
}

// A sender whose errors hold the token (in another letter case, as a URL would) is caught
// where errors are stored: the wake-up, the device's last error and dead reason, and the
// stream's state reason once the device is given up.
func TestStoreMasksTheTokenInErrors(t *testing.T) {
	t.Parallel()
	for _, token := range []string{
		"abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
		"https://push.example/send/Ab_c-d:e.f(g)[h]*x?y=1+2|z$^", // regular expression characters
	} {
		t.Run(token[:8], func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			upper := strings.ToUpper(token)
			s := b.stream(t, token)
			dev := b.device(t, s)
			b.sender.fail = []error{
				&wakeup.SendError{Kind: wakeup.KindRetry, Err: fmt.Errorf(`Post "%s/3/device/%s": EOF`, upper, upper)},
				&wakeup.SendError{Kind: wakeup.KindTokenGone, Reason: "token " + upper + " unregistered"},
			}
			b.events(t, s, 1, false)
			b.clock.Advance(3 * time.Second)
			b.run(t)
			ws := b.wakeState(t, dev)
			if want := `Post "[push token]/3/device/[push token]": EOF`; !strings.Contains(ws.LastError, want) {
				t.Errorf("last error %q, want it to hold %q", ws.LastError, want)
			}
			b.clock.Advance(time.Hour)
			b.run(t)
			ws = b.wakeState(t, dev)
			if ws.DeadAt.IsZero() || ws.DeadReason != "token [push token] unregistered" {
				t.Fatalf("wake state %+v, want a dead device", ws)
			}
			if _, err := b.st.FailDeadDevices(context.Background(), store.Fence{}, b.clock.Now().Add(48*time.Hour), time.Hour, 1000); err != nil {
				t.Fatal(err)
			}
			texts := b.storedTexts(t, s)
			noToken(t, texts, token)
			if last := texts[len(texts)-1]; !strings.Contains(last, "[push token]") {
				t.Errorf("stream state reason %q", last)
			}
		})
	}
}

// The real FCM sender meets an FCM that quotes the registration token in its error (as
// Google's field validation errors quote the value they refuse): what the store keeps holds
// no token.
func TestFCMErrorQuotingTheTokenStoresNoToken(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const token = "fcm-token_Quoted:0123456789abcdefghij"
	tokens := fakefcm.New(fakefcm.Options{}) // the OAuth token endpoint
	if err := tokens.Start(); err != nil {
		t.Fatal(err)
	}
	defer tokens.Close()
	quoting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"error":{"code":503,"message":"The service is unavailable for \"%s\"","status":"UNAVAILABLE"}}`, token)
	}))
	defer quoting.Close()
	creds := filepath.Join(t.TempDir(), "sa.json")
	if err := tokens.WriteCredentials(creds); err != nil {
		t.Fatal(err)
	}
	fcm, err := wakeup.NewFCM(context.Background(), wakeup.FCMOptions{CredentialsFile: creds, URL: quoting.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer fcm.Close()
	b.sched = wakeup.New(b.st, map[string]wakeup.Sender{pushproxy.PlatformFCM: fcm}, &wakeup.Options{
		InstanceID: owner, Now: b.clock.Now, Jitter: time.Nanosecond,
	})
	st, epoch, err := b.st.CreateStream(context.Background(), store.NewStream{
		URL: "http://origin.test/events", TokenHash: []byte("h"), LeaseOwner: owner,
		Push: &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: token},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.epochs[st.ID] = epoch
	b.events(t, st.ID, 1, false)
	b.clock.Advance(3 * time.Second)
	if n := b.run(t); n != 1 {
		t.Fatalf("claimed %d wake-ups, want 1", n)
	}
	ws := b.wakeState(t, b.device(t, st.ID))
	if ws.LastOutcome != pushproxy.OutcomeRetry || !strings.Contains(ws.LastError, "UNAVAILABLE") || !strings.Contains(ws.LastError, "[push token]") {
		t.Fatalf("wake state %+v, want a retry after FCM's 503 with the token masked", ws)
	}
	noToken(t, b.storedTexts(t, st.ID), token)
}

// lockedBuffer is a bytes.Buffer for a logger used from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The scheduler logs refused credentials at error level: the line holds no push token even
// when the sender's error does.
func TestCredentialsLogHoldsNoToken(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	b := setup(t, &wakeup.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	s := b.stream(t, tokenA)
	b.sender.fail = []error{&wakeup.SendError{Kind: wakeup.KindCredentials, Status: 403, Reason: "InvalidProviderToken",
		Err: fmt.Errorf("refused for device %s", strings.ToUpper(tokenA))}}
	b.events(t, s, 1, false)
	b.clock.Advance(3 * time.Second)
	b.run(t)
	out := logs.String()
	if !strings.Contains(out, "push credentials refused") || !strings.Contains(out, "refused for device [push token]") {
		t.Fatalf("log %q", out)
	}
	if strings.Contains(strings.ToLower(out), tokenA) {
		t.Errorf("the log holds the push token: %s", out)
	}
}
