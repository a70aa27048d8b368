package fakefcm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const regToken = "fcm-token_0123456789:abcdefghijklmnopqrstuvwxyz"

type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

type fixture struct {
	srv   *fakefcm.Server
	clock *clock
	sa    serviceAccount
	key   *rsa.PrivateKey
}

func start(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{clock: &clock{}}
	f.srv = fakefcm.New(fakefcm.Options{ProjectID: "demo-project", Clock: f.clock.now})
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		f.srv.Close()
	})
	if err := json.Unmarshal(f.srv.CredentialsJSON(), &f.sa); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(f.sa.PrivateKey))
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	f.key = k.(*rsa.PrivateKey)
	return f
}

func b64(v any) string {
	b, ok := v.([]byte)
	if !ok {
		b, _ = json.Marshal(v)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// assertion is a service-account JWT; change alters its claims before it is signed.
func (f *fixture) assertion(t *testing.T, key *rsa.PrivateKey, change func(map[string]any)) string {
	t.Helper()
	now := f.clock.now().Unix()
	claims := map[string]any{
		"iss": f.sa.ClientEmail, "aud": f.sa.TokenURI, "scope": fakefcm.ScopeMessaging,
		"iat": now, "exp": now + 3600,
	}
	if change != nil {
		change(claims)
	}
	signing := b64(map[string]string{"alg": "RS256", "typ": "JWT", "kid": f.sa.PrivateKeyID}) + "." + b64(claims)
	d := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(sig)
}

func (f *fixture) token(t *testing.T, grant, assertion string) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(f.srv.TokenURL(), url.Values{"grant_type": {grant}, "assertion": {assertion}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func (f *fixture) accessToken(t *testing.T) string {
	t.Helper()
	status, body := f.token(t, fakefcm.JWTBearerGrant, f.assertion(t, f.key, nil))
	if status != 200 {
		t.Fatalf("token: %d %v", status, body)
	}
	return body["access_token"].(string)
}

func TestTokenEndpoint(t *testing.T) {
	f := start(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	status, body := f.token(t, fakefcm.JWTBearerGrant, f.assertion(t, f.key, nil))
	if status != 200 || body["token_type"] != "Bearer" || body["expires_in"] != float64(3600) || !strings.HasPrefix(body["access_token"].(string), "ya29.") {
		t.Errorf("valid assertion: %d %v", status, body)
	}
	for _, tc := range []struct {
		name      string
		grant     string
		assertion string
		want      string
	}{
		{"other grant", "client_credentials", f.assertion(t, f.key, nil), "unsupported_grant_type"},
		{"not a JWT", fakefcm.JWTBearerGrant, "abc", "invalid_grant"},
		{"signed by another key", fakefcm.JWTBearerGrant, f.assertion(t, other, nil), "invalid_grant"},
		{"other issuer", fakefcm.JWTBearerGrant, f.assertion(t, f.key, func(c map[string]any) { c["iss"] = "x@y.iam.gserviceaccount.com" }), "invalid_grant"},
		{"other audience", fakefcm.JWTBearerGrant, f.assertion(t, f.key, func(c map[string]any) { c["aud"] = "https://oauth2.googleapis.com/token" }), "invalid_grant"},
		{"expired", fakefcm.JWTBearerGrant, f.assertion(t, f.key, func(c map[string]any) {
			c["iat"], c["exp"] = f.clock.now().Add(-2*time.Hour).Unix(), f.clock.now().Add(-time.Hour).Unix()
		}), "invalid_grant"},
		{"too long-lived", fakefcm.JWTBearerGrant, f.assertion(t, f.key, func(c map[string]any) { c["exp"] = f.clock.now().Add(2 * time.Hour).Unix() }), "invalid_grant"},
		{"no messaging scope", fakefcm.JWTBearerGrant, f.assertion(t, f.key, func(c map[string]any) { c["scope"] = "https://www.googleapis.com/auth/userinfo.email" }), "invalid_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.token(t, tc.grant, tc.assertion)
			if status != 400 || body["error"] != tc.want {
				t.Errorf("got %d %v, want 400 %s", status, body, tc.want)
			}
		})
	}
	if n := f.srv.TokensIssued(); n != 1 {
		t.Errorf("%d tokens issued, want 1", n)
	}
}

type fcmErr struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type      string `json:"@type"`
			ErrorCode string `json:"errorCode"`
		} `json:"details"`
	} `json:"error"`
}

func (f *fixture) send(t *testing.T, project, bearer, body string) (*http.Response, fcmErr, map[string]string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL()+"/v1/projects/"+project+"/messages:send", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e fcmErr
	var ok map[string]string
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &ok); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	} else if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return resp, e, ok
}

const validMessage = `{"message":{"token":%q,"data":{"pushproxy":"{\"streams\":{\"s\":1},\"total\":1}"},
	"android":{"priority":"normal","collapse_key":"c","ttl":"3600s"},
	"apns":{"headers":{"apns-priority":"5","apns-push-type":"background","apns-expiration":"0"},"payload":{"aps":{"content-available":1}}}}}`

func TestSendAcceptsAValidMessageAndRecordsIt(t *testing.T) {
	f := start(t)
	tok := f.accessToken(t)
	resp, _, ok := f.send(t, "demo-project", tok, fmt.Sprintf(validMessage, regToken))
	if resp.StatusCode != 200 || !strings.HasPrefix(ok["name"], "projects/demo-project/messages/") {
		t.Fatalf("%d %v", resp.StatusCode, ok)
	}
	msgs, err := f.srv.WaitFor(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.Token != regToken || m.Data["pushproxy"] != `{"streams":{"s":1},"total":1}` || m.Android.Priority != "normal" ||
		m.Android.TTL != "3600s" || m.Android.CollapseKey != "c" || m.APNSHeaders["apns-push-type"] != "background" ||
		m.Name != ok["name"] || m.Status != 200 || m.Project != "demo-project" {
		t.Errorf("recorded %+v", m)
	}
}

func TestSendRefusesLikeFCM(t *testing.T) {
	f := start(t)
	tok := f.accessToken(t)
	valid := fmt.Sprintf(validMessage, regToken)
	for _, tc := range []struct {
		name    string
		project string
		bearer  string
		body    string
		code    int
		status  string
		fcmCode string
	}{
		{"no bearer", "demo-project", "", valid, 401, "UNAUTHENTICATED", ""},
		{"unknown bearer", "demo-project", "ya29.nope", valid, 401, "UNAUTHENTICATED", ""},
		{"other project", "other-project", tok, valid, 403, "PERMISSION_DENIED", ""},
		{"not JSON", "demo-project", tok, `{"message":`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"unknown field", "demo-project", tok, `{"message":{"token":"` + regToken + `","priority":"high"}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"no message", "demo-project", tok, `{}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"no target", "demo-project", tok, `{"message":{"data":{"a":"b"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"two targets", "demo-project", tok, `{"message":{"token":"` + regToken + `","topic":"news"}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"data value not a string", "demo-project", tok, `{"message":{"token":"` + regToken + `","data":{"n":1}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"reserved data key", "demo-project", tok, `{"message":{"token":"` + regToken + `","data":{"google.x":"1"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"data too big", "demo-project", tok, `{"message":{"token":"` + regToken + `","data":{"x":"` + strings.Repeat("x", 4096) + `"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"bad android priority", "demo-project", tok, `{"message":{"token":"` + regToken + `","android":{"priority":"urgent"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"ttl without s", "demo-project", tok, `{"message":{"token":"` + regToken + `","android":{"ttl":"3600"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"ttl over 28 days", "demo-project", tok, `{"message":{"token":"` + regToken + `","android":{"ttl":"2419201s"}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"APNs background at priority 10", "demo-project", tok, `{"message":{"token":"` + regToken + `","apns":{"headers":{"apns-push-type":"background","apns-priority":"10"},"payload":{"aps":{"content-available":1}}}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"APNs background with an alert", "demo-project", tok, `{"message":{"token":"` + regToken + `","apns":{"headers":{"apns-push-type":"background","apns-priority":"5"},"payload":{"aps":{"content-available":1,"alert":"x"}}}}}`, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
		{"bad registration token", "demo-project", tok, fmt.Sprintf(validMessage, "not a token!"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, e, _ := f.send(t, tc.project, tc.bearer, tc.body)
			if resp.StatusCode != tc.code || e.Error.Code != tc.code || e.Error.Status != tc.status || e.Error.Message == "" {
				t.Errorf("got %d %+v, want %d %s", resp.StatusCode, e.Error, tc.code, tc.status)
			}
			got := ""
			if len(e.Error.Details) == 1 {
				if e.Error.Details[0].Type != "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
					t.Errorf("detail type %q", e.Error.Details[0].Type)
				}
				got = e.Error.Details[0].ErrorCode
			}
			if got != tc.fcmCode {
				t.Errorf("FCM error code %q, want %q", got, tc.fcmCode)
			}
		})
	}
	t.Run("the registration token message", func(t *testing.T) {
		_, e, _ := f.send(t, "demo-project", tok, fmt.Sprintf(validMessage, "not a token!"))
		if !strings.Contains(e.Error.Message, "registration token") {
			t.Errorf("message %q", e.Error.Message)
		}
	})
}

func TestInjectedFailuresAndRevocation(t *testing.T) {
	f := start(t)
	tok := f.accessToken(t)
	body := func(token string) string { return fmt.Sprintf(validMessage, token) }
	other := regToken + "-other"

	f.srv.Unregister(regToken)
	resp, e, _ := f.send(t, "demo-project", tok, body(regToken))
	if resp.StatusCode != 404 || e.Error.Status != "NOT_FOUND" || e.Error.Details[0].ErrorCode != "UNREGISTERED" {
		t.Errorf("unregistered: %d %+v", resp.StatusCode, e.Error)
	}
	f.srv.ClearToken(regToken)

	f.srv.FailToken(regToken, fakefcm.SenderIDMismatch, 1)
	if resp, e, _ := f.send(t, "demo-project", tok, body(regToken)); resp.StatusCode != 403 || e.Error.Details[0].ErrorCode != "SENDER_ID_MISMATCH" {
		t.Errorf("sender id mismatch: %d %+v", resp.StatusCode, e.Error)
	}
	if resp, _, _ := f.send(t, "demo-project", tok, body(regToken)); resp.StatusCode != 200 {
		t.Errorf("after the one failure: %d", resp.StatusCode)
	}

	for _, tc := range []struct {
		code       string
		status     int
		retryAfter string
	}{
		{fakefcm.QuotaExceeded, 429, "30"},
		{fakefcm.Unavailable, 503, ""},
		{fakefcm.Internal, 500, ""},
		{fakefcm.ThirdPartyAuthError, 401, ""},
	} {
		ra := time.Duration(0)
		if tc.retryAfter != "" {
			ra = 30 * time.Second
		}
		f.srv.FailNext(1, tc.code, ra)
		resp, e, _ := f.send(t, "demo-project", tok, body(other))
		if resp.StatusCode != tc.status || e.Error.Details[0].ErrorCode != tc.code || resp.Header.Get("Retry-After") != tc.retryAfter {
			t.Errorf("%s: %d %+v Retry-After %q", tc.code, resp.StatusCode, e.Error, resp.Header.Get("Retry-After"))
		}
	}
	if resp, _, _ := f.send(t, "demo-project", tok, body(other)); resp.StatusCode != 200 {
		t.Errorf("after the failures: %d", resp.StatusCode)
	}

	f.srv.RevokeTokens()
	if resp, e, _ := f.send(t, "demo-project", tok, body(other)); resp.StatusCode != 401 || e.Error.Status != "UNAUTHENTICATED" {
		t.Errorf("revoked token: %d %+v", resp.StatusCode, e.Error)
	}
	tok = f.accessToken(t)
	f.clock.advance(61 * time.Minute)
	if resp, _, _ := f.send(t, "demo-project", tok, body(other)); resp.StatusCode != 401 {
		t.Errorf("token after an hour: %d", resp.StatusCode)
	}
}

func TestCredentialsWithAnUnknownKey(t *testing.T) {
	f := start(t)
	b, err := f.srv.CredentialsJSONWithUnknownKey()
	if err != nil {
		t.Fatal(err)
	}
	var sa serviceAccount
	if err := json.Unmarshal(b, &sa); err != nil {
		t.Fatal(err)
	}
	if sa.Type != "service_account" || sa.TokenURI != f.srv.TokenURL() || sa.PrivateKey == f.sa.PrivateKey || sa.ClientEmail != f.sa.ClientEmail {
		t.Errorf("credentials %+v", sa)
	}
}
