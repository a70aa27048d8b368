package wakeup

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
)

const fcmTestToken = "fcm-registration-token_0123456789:abcdefghijklmnopqrstuvwxyz"

type fcmFixture struct {
	fake   *fakefcm.Server
	sender *FCM
	clock  *testClock
}

// newFCMFixture starts a fake FCM and a sender with its credentials; creds, when not nil,
// replaces the credentials.
func newFCMFixture(t *testing.T, creds func(f *fakefcm.Server) []byte) *fcmFixture {
	t.Helper()
	f := &fcmFixture{clock: &testClock{}}
	f.fake = fakefcm.New(fakefcm.Options{ProjectID: "demo-project", Clock: f.clock.Now})
	if err := f.fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.fake.Close)
	file := filepath.Join(t.TempDir(), "service-account.json")
	if creds == nil {
		if err := f.fake.WriteCredentials(file); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(file, creds(f.fake), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	f.sender, err = NewFCM(context.Background(), FCMOptions{CredentialsFile: file, URL: f.fake.URL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.sender.Close)
	return f
}

func (f *fcmFixture) only(t *testing.T) fakefcm.Message {
	t.Helper()
	msgs := f.fake.Messages()
	if len(msgs) != 1 {
		t.Fatalf("the fake received %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

func TestFCMSendsADataMessage(t *testing.T) {
	f := newFCMFixture(t, nil)
	before := time.Now()
	name, err := f.sender.Send(context.Background(), Push{
		ID: apnsTestPushID, Platform: "fcm", Token: fcmTestToken, CollapseID: "device-1", TTL: time.Hour,
		Pending: map[string]int64{"s1": 3, "s2": 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := f.only(t)
	if m.Status != 200 || name != m.Name || !strings.HasPrefix(name, "projects/demo-project/messages/") {
		t.Fatalf("Send returned %q; the fake answered %d %q %s", name, m.Status, m.Name, m.ErrorMessage)
	}
	if m.Token != fcmTestToken || len(m.Data) != 1 || m.Android != (fakefcm.AndroidConfig{CollapseKey: "device-1", Priority: "normal", TTL: "3600s"}) {
		t.Errorf("the fake received %+v", m)
	}
	jsonEqual(t, []byte(m.Data["pushproxy"]), `{"streams":{"s1":3,"s2":1},"total":4}`)
	h := m.APNSHeaders
	exp, _ := strconv.ParseInt(h["apns-expiration"], 10, 64)
	if h["apns-push-type"] != "background" || h["apns-priority"] != "5" || h["apns-collapse-id"] != "device-1" ||
		exp < before.Add(time.Hour).Unix() || exp > time.Now().Add(time.Hour).Unix() {
		t.Errorf("APNs headers %v", h)
	}
	jsonEqual(t, m.APNSPayload, `{"aps":{"content-available":1}}`)

	// The access token is reused.
	if _, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Pending: map[string]int64{"s1": 1}}); err != nil {
		t.Fatal(err)
	}
	if n := f.fake.TokensIssued(); n != 1 {
		t.Errorf("%d access tokens fetched for two sends, want 1", n)
	}
}

func TestFCMUrgentAndTTL0(t *testing.T) {
	f := newFCMFixture(t, nil)
	if _, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Urgent: true, AlertText: "New messages", Pending: map[string]int64{"s": 1}}); err != nil {
		t.Fatal(err)
	}
	m := f.only(t)
	if m.Android.Priority != "high" || m.Android.TTL != "0s" || m.APNSHeaders["apns-push-type"] != "alert" ||
		m.APNSHeaders["apns-priority"] != "10" || m.APNSHeaders["apns-expiration"] != "0" {
		t.Errorf("the fake received %+v", m)
	}
	jsonEqual(t, m.APNSPayload, `{"aps":{"alert":"New messages","mutable-content":1,"content-available":1}}`)

	f.fake.Reset()
	if _, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Urgent: true, Pending: map[string]int64{"s": 1}}); err != nil {
		t.Fatal(err)
	}
	if m := f.only(t); m.Android.Priority != "high" || m.APNSHeaders["apns-push-type"] != "background" {
		t.Errorf("urgent without alert text: %+v", m)
	}
}

func TestFCMManyStreamsFit(t *testing.T) {
	f := newFCMFixture(t, nil)
	if _, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Pending: manyStreams(500)}); err != nil {
		t.Fatal(err)
	}
	m := f.only(t)
	v := m.Data["pushproxy"]
	if quoted, _ := json.Marshal(v); len(quoted) > fcmStreamsBudget+2 {
		t.Errorf("the pushproxy data is %d bytes once quoted", len(quoted))
	}
	var obj struct {
		Streams map[string]int64 `json:"streams"`
		Total   int64            `json:"total"`
		Omitted int              `json:"omitted"`
	}
	if err := json.Unmarshal([]byte(v), &obj); err != nil {
		t.Fatal(err)
	}
	if obj.Omitted == 0 || len(obj.Streams)+obj.Omitted != 500 || obj.Total != 500*501/2 {
		t.Errorf("%d streams, %d omitted, total %d", len(obj.Streams), obj.Omitted, obj.Total)
	}
}

func TestFCMErrors(t *testing.T) {
	f := newFCMFixture(t, nil)
	for _, tc := range []struct {
		name       string
		token      string
		inject     func(token string)
		kind       string
		status     int
		reason     string
		retryAfter time.Duration
	}{
		{"UNREGISTERED", fcmTestToken + "-1", func(tok string) { f.fake.Unregister(tok) }, KindTokenGone, 404, "UNREGISTERED", 0},
		{"invalid registration token", "not a token!", func(string) {}, KindTokenGone, 400, "INVALID_ARGUMENT", 0},
		{"QUOTA_EXCEEDED", fcmTestToken + "-2", func(string) { f.fake.FailNext(1, fakefcm.QuotaExceeded, 30*time.Second) }, KindThrottled, 429, "QUOTA_EXCEEDED", 30 * time.Second},
		{"UNAVAILABLE", fcmTestToken + "-3", func(string) { f.fake.FailNext(1, fakefcm.Unavailable, 0) }, KindRetry, 503, "UNAVAILABLE", 0},
		{"UNAVAILABLE with Retry-After", fcmTestToken + "-4", func(string) { f.fake.FailNext(1, fakefcm.Unavailable, 10*time.Second) }, KindRetry, 503, "UNAVAILABLE", 10 * time.Second},
		{"INTERNAL", fcmTestToken + "-5", func(string) { f.fake.FailNext(1, fakefcm.Internal, 0) }, KindRetry, 500, "INTERNAL", 0},
		{"SENDER_ID_MISMATCH", fcmTestToken + "-6", func(tok string) { f.fake.FailToken(tok, fakefcm.SenderIDMismatch, 0) }, KindCredentials, 403, "SENDER_ID_MISMATCH", 0},
		{"THIRD_PARTY_AUTH_ERROR", fcmTestToken + "-7", func(string) { f.fake.FailNext(1, fakefcm.ThirdPartyAuthError, 0) }, KindCredentials, 401, "THIRD_PARTY_AUTH_ERROR", 0},
		{"other INVALID_ARGUMENT", fcmTestToken + "-8", func(string) { f.fake.FailNext(1, fakefcm.InvalidArgument, 0) }, KindInvalid, 400, "INVALID_ARGUMENT", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.fake.Reset()
			tc.inject(tc.token)
			_, err := f.sender.Send(context.Background(), Push{Token: tc.token, Pending: map[string]int64{"s": 1}})
			se := sendErr(t, err, tc.kind)
			if se.Status != tc.status || se.Reason != tc.reason || se.RetryAfter != tc.retryAfter {
				t.Errorf("got %+v, want status %d reason %q retry after %v", se, tc.status, tc.reason, tc.retryAfter)
			}
			// The Firebase client's own retries are stopped: one request per send.
			if n := len(f.fake.Messages()); n != 1 {
				t.Errorf("the fake received %d requests, want 1", n)
			}
		})
	}
	t.Run("revoked access token", func(t *testing.T) {
		f.fake.RevokeTokens()
		_, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Pending: map[string]int64{"s": 1}})
		if se := sendErr(t, err, KindCredentials); se.Status != 401 || se.Reason != "UNAUTHENTICATED" {
			t.Errorf("%+v", se)
		}
	})
	t.Run("no token", func(t *testing.T) {
		_, err := f.sender.Send(context.Background(), Push{Pending: map[string]int64{"s": 1}})
		sendErr(t, err, KindTokenGone)
	})
}

func TestFCMRefusedCredentials(t *testing.T) {
	f := newFCMFixture(t, func(s *fakefcm.Server) []byte {
		b, err := s.CredentialsJSONWithUnknownKey()
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
	_, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Pending: map[string]int64{"s": 1}})
	se := sendErr(t, err, KindCredentials)
	if se.Reason != "invalid_grant" || se.Status != 400 || !strings.Contains(se.Error(), "access token") {
		t.Errorf("%+v: %v", se, se)
	}
	if n := len(f.fake.Messages()); n != 0 {
		t.Errorf("%d messages reached the fake without an access token", n)
	}
}

func TestFCMNetworkErrorsAreRetry(t *testing.T) {
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return "http://" + ln.Addr().String()
	}
	t.Run("FCM unreachable", func(t *testing.T) {
		f := newFCMFixture(t, nil)
		file := filepath.Join(t.TempDir(), "sa.json")
		if err := f.fake.WriteCredentials(file); err != nil {
			t.Fatal(err)
		}
		s, err := NewFCM(context.Background(), FCMOptions{CredentialsFile: file, URL: closed()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.Send(context.Background(), Push{Token: fcmTestToken, Pending: map[string]int64{"s": 1}})
		if se := sendErr(t, err, KindRetry); se.Status != 0 {
			t.Errorf("%+v", se)
		}
	})
	t.Run("token endpoint unreachable", func(t *testing.T) {
		tokenURL := closed() + "/token"
		f := newFCMFixture(t, func(s *fakefcm.Server) []byte {
			var m map[string]any
			if err := json.Unmarshal(s.CredentialsJSON(), &m); err != nil {
				t.Fatal(err)
			}
			m["token_uri"] = tokenURL
			b, _ := json.Marshal(m)
			return b
		})
		_, err := f.sender.Send(context.Background(), Push{Token: fcmTestToken, Pending: map[string]int64{"s": 1}})
		sendErr(t, err, KindRetry)
	})
}

func TestNewFCMErrors(t *testing.T) {
	dir := t.TempDir()
	fake := fakefcm.New(fakefcm.Options{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	write := func(name string, change func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(fake.CredentialsJSON(), &m); err != nil {
			t.Fatal(err)
		}
		change(m)
		b, _ := json.Marshal(m)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", func(map[string]any) {})
	notJSON := filepath.Join(dir, "garbage.json")
	os.WriteFile(notJSON, []byte("{"), 0o600)
	for _, tc := range []struct {
		name string
		opts FCMOptions
		want string
	}{
		{"no file", FCMOptions{}, "CredentialsFile"},
		{"missing file", FCMOptions{CredentialsFile: filepath.Join(dir, "nope.json")}, "no such file"},
		{"not JSON", FCMOptions{CredentialsFile: notJSON}, "not JSON"},
		{"not a service account", FCMOptions{CredentialsFile: write("user.json", func(m map[string]any) { m["type"] = "authorized_user" })}, "service account"},
		{"no email", FCMOptions{CredentialsFile: write("noemail.json", func(m map[string]any) { delete(m, "client_email") })}, "client_email"},
		{"no key", FCMOptions{CredentialsFile: write("nokey.json", func(m map[string]any) { m["private_key"] = "" })}, "private_key"},
		{"bad key", FCMOptions{CredentialsFile: write("badkey.json", func(m map[string]any) {
			m["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		})}, "private_key"},
		{"no project", FCMOptions{CredentialsFile: write("noproject.json", func(m map[string]any) { delete(m, "project_id") })}, "ProjectID"},
		{"bad URL", FCMOptions{CredentialsFile: good, URL: "ftp://x"}, "URL"},
		{"negative timeout", FCMOptions{CredentialsFile: good, Timeout: -1}, "Timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewFCM(context.Background(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "fcm: ") {
				t.Errorf("NewFCM: %v, want an error about %q", err, tc.want)
			}
		})
	}
	s, err := NewFCM(context.Background(), FCMOptions{CredentialsFile: write("noproject2.json", func(m map[string]any) { delete(m, "project_id") }), ProjectID: "p"})
	if err != nil {
		t.Errorf("ProjectID given: %v", err)
	} else {
		s.Close()
	}
}
