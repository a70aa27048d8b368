package api_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
)

// deviceRow is what the store keeps of a device, as a push is sent from it.
type deviceRow struct {
	Topic, Environment string
	SecretHash         []byte
	Dead               bool
	UpdatedAt          time.Time
	HeldStreams        int
}

func readDevice(t *testing.T, b *testBundle, platform, token string) deviceRow {
	t.Helper()
	var d deviceRow
	err := b.Store.Pool().QueryRow(context.Background(), `
		SELECT d.topic, d.environment, d.secret_hash, d.dead_at IS NOT NULL, d.updated_at,
			(SELECT count(*) FROM streams s WHERE s.device_id = d.id AND s.state = 'held')
		FROM devices d WHERE d.platform = $1 AND d.token = $2`, platform, token).
		Scan(&d.Topic, &d.Environment, &d.SecretHash, &d.Dead, &d.UpdatedAt, &d.HeldStreams)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// postHandoff posts a handoff and returns its status, problem code (if any) and 201 body.
func postHandoff(t *testing.T, b *testBundle, body map[string]any, header http.Header) (int, string, handoffResult) {
	t.Helper()
	raw, _ := json.Marshal(body)
	h := http.Header{"Content-Type": {"application/json"}}
	for k, v := range header {
		h[k] = v
	}
	resp, out := do(t, "POST", b.API.URL+"/v1/streams", string(raw), h)
	var res handoffResult
	if resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, "", res
	}
	var p struct {
		Code string `json:"code"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(out, &p); err != nil || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("handoff answered %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), out)
	}
	if p.Type != api.ProblemTypePrefix+p.Code {
		t.Fatalf("problem type %q, code %q", p.Type, p.Code)
	}
	return resp.StatusCode, p.Code, res
}

func randomSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// TestDeviceTakeoverRefused is defect 9: a stranger who knows a device's push token tries to
// change its topic and environment (which would make real pushes fail with BadDeviceToken
// and mark the device dead), to fill its stream quota, and to revive it once dead. Every
// attempt is refused and leaves the device row as it was; the real app's handoffs, with the
// device secret its first handoff answered, keep working.
func TestDeviceTakeoverRefused(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	tok := apnsToken(1)
	push := func(topic, env, secret string) map[string]any {
		p := map[string]any{"platform": "apns", "token": tok, "topic": topic, "environment": env}
		if secret != "" {
			p["device_secret"] = secret
		}
		return map[string]any{"url": o.Srv.URL, "push": p}
	}

	// The real app's first handoff fixes the device and answers its secret, once.
	status, code, first := postHandoff(t, b, push("com.example.app", "production", ""), nil)
	if status != http.StatusCreated || len(first.DeviceSecret) != 43 {
		t.Fatalf("first handoff: %d %s, device_secret %q", status, code, first.DeviceSecret)
	}
	secret := first.DeviceSecret
	before := readDevice(t, b, "apns", tok)
	if before.Topic != "com.example.app" || before.Environment != "production" || len(before.SecretHash) != 32 || before.HeldStreams != 1 {
		t.Fatalf("device after the first handoff: %+v", before)
	}

	attempts := []struct {
		name       string
		body       map[string]any
		status     int
		code       string
		wantDetail string
	}{
		{"other topic and environment, no secret", push("com.evil.app", "development", ""), 401, "device-secret-required", ""},
		{"same attributes, no secret (fill the quota)", push("com.example.app", "production", ""), 401, "device-secret-required", ""},
		{"other topic, a wrong secret", push("com.evil.app", "development", randomSecret()), 403, "device-secret-mismatch", ""},
		{"same attributes, a wrong secret", push("com.example.app", "production", randomSecret()), 403, "device-secret-mismatch", ""},
		{"a secret of another shape", push("com.evil.app", "production", "guess"), 400, "invalid", ""},
		{"the secret's hash as the secret", push("com.evil.app", "production", base64.RawURLEncoding.EncodeToString(before.SecretHash)), 403, "device-secret-mismatch", ""},
	}
	for _, a := range attempts {
		status, code, res := postHandoff(t, b, a.body, nil)
		if status != a.status || code != a.code || res.DeviceSecret != "" {
			t.Errorf("%s: %d %s (device_secret %q), want %d %s", a.name, status, code, res.DeviceSecret, a.status, a.code)
		}
		if after := readDevice(t, b, "apns", tok); !equalDevice(after, before) {
			t.Fatalf("%s: the device row changed: %+v, was %+v", a.name, after, before)
		}
	}
	// Upper-case hex is the same token: no way around the secret either.
	body := push("com.evil.app", "development", "")
	body["push"].(map[string]any)["token"] = strings.ToUpper(tok)
	if status, code, _ := postHandoff(t, b, body, nil); status != 401 || code != "device-secret-required" {
		t.Errorf("upper-case token: %d %s", status, code)
	}

	// The real app adds a stream with its secret: same device, no new secret answered.
	status, code, second := postHandoff(t, b, push("com.example.app", "production", secret), nil)
	if status != http.StatusCreated || second.DeviceSecret != "" {
		t.Fatalf("the app's second handoff: %d %s, device_secret %q", status, code, second.DeviceSecret)
	}
	if d := readDevice(t, b, "apns", tok); d.HeldStreams != 2 || d.Topic != "com.example.app" || d.Environment != "production" {
		t.Fatalf("device after the app's second handoff: %+v", d)
	}

	// A dead device is not revived by a stranger; its own app revives it with its secret.
	if _, err := b.Store.Pool().Exec(context.Background(), `UPDATE devices SET dead_at = now(), dead_reason = 'Unregistered' WHERE token = $1`, tok); err != nil {
		t.Fatal(err)
	}
	dead := readDevice(t, b, "apns", tok)
	for _, a := range []map[string]any{push("com.example.app", "production", ""), push("com.example.app", "production", randomSecret())} {
		if status, _, _ := postHandoff(t, b, a, nil); status != 401 && status != 403 {
			t.Fatalf("a stranger's handoff for a dead device: %d", status)
		}
		if d := readDevice(t, b, "apns", tok); !equalDevice(d, dead) || !d.Dead {
			t.Fatalf("a stranger changed the dead device: %+v", d)
		}
	}
	if status, code, _ := postHandoff(t, b, push("com.example.app", "production", secret), nil); status != http.StatusCreated {
		t.Fatalf("the app's handoff after its token was reported dead: %d %s", status, code)
	}
	if d := readDevice(t, b, "apns", tok); d.Dead {
		t.Fatalf("the app's handoff did not revive its device: %+v", d)
	}

	// A deliberate change of environment by the app itself, with its secret.
	if status, code, _ := postHandoff(t, b, push("com.example.app", "development", secret), nil); status != http.StatusCreated {
		t.Fatalf("the app's change of environment: %d %s", status, code)
	}
	if d := readDevice(t, b, "apns", tok); d.Environment != "development" || d.Topic != "com.example.app" {
		t.Fatalf("device after the app's change: %+v", d)
	}
}

func equalDevice(a, b deviceRow) bool {
	return a.Topic == b.Topic && a.Environment == b.Environment && string(a.SecretHash) == string(b.SecretHash) &&
		a.Dead == b.Dead && a.UpdatedAt.Equal(b.UpdatedAt) && a.HeldStreams == b.HeldStreams
}

// TestDeviceSecretFlows: an app that presents its secret for a push token the proxy does not
// know yet (a new token, or a device the operator forgot) makes the device with that secret;
// a device of an older release (no secret) gets one at its next handoff that keeps its
// attributes, and cannot be changed without it.
func TestDeviceSecretFlows(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	fcm := fcmToken("flows")
	own := randomSecret()
	body := map[string]any{"url": o.Srv.URL, "push": map[string]any{"platform": "fcm", "token": fcm, "device_secret": own}}
	if status, code, res := postHandoff(t, b, body, nil); status != 201 || res.DeviceSecret != "" {
		t.Fatalf("handoff with the app's own secret: %d %s %q", status, code, res.DeviceSecret)
	}
	if status, code, _ := postHandoff(t, b, body, nil); status != 201 {
		t.Fatalf("second handoff with the app's own secret: %d %s", status, code)
	}
	delete(body["push"].(map[string]any), "device_secret")
	if status, code, _ := postHandoff(t, b, body, nil); status != 401 || code != "device-secret-required" {
		t.Fatalf("handoff without it: %d %s", status, code)
	}

	// A device of an older release: no secret.
	legacy := apnsToken(2)
	if _, err := b.Store.Pool().Exec(context.Background(), `INSERT INTO devices (platform, token, topic, environment) VALUES ('apns', $1, 'com.example.app', 'production')`, legacy); err != nil {
		t.Fatal(err)
	}
	lp := func(topic string) map[string]any {
		return map[string]any{"url": o.Srv.URL, "push": map[string]any{"platform": "apns", "token": legacy, "topic": topic}}
	}
	if status, code, _ := postHandoff(t, b, lp("com.evil.app"), nil); status != 403 || code != "device-secret-mismatch" {
		t.Fatalf("legacy device, other topic: %d %s", status, code)
	}
	status, code, res := postHandoff(t, b, lp("com.example.app"), nil)
	if status != 201 || len(res.DeviceSecret) != 43 {
		t.Fatalf("legacy device, same attributes: %d %s %q", status, code, res.DeviceSecret)
	}
	if status, code, _ := postHandoff(t, b, lp("com.example.app"), nil); status != 401 || code != "device-secret-required" {
		t.Fatalf("legacy device once it has a secret: %d %s", status, code)
	}
}

// TestPushTokenShapes: made-up push tokens are refused, so they cannot multiply devices
// (and the per-device quota) at will.
func TestPushTokenShapes(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	cases := []struct {
		platform, token string
		ok              bool
	}{
		{"apns", apnsToken(3), true},
		{"apns", strings.Repeat("AB", 50), true},
		{"apns", strings.Repeat("ab", 31), false},       // 62 hex characters
		{"apns", strings.Repeat("ab", 32) + "a", false}, // odd
		{"apns", strings.Repeat("ab", 101), false},      // 202
		{"apns", strings.Repeat("zz", 32), false},
		{"fcm", fcmToken("shape"), true},
		{"fcm", "device-1", false},
		{"fcm", strings.Repeat("a", 99), false},
		{"fcm", strings.Repeat("a", 4097), false},
		{"fcm", fcmToken("shape")[:150] + ".x", false},
		{"fcm", fcmToken("shape")[:150] + "/=", false},
	}
	for _, c := range cases {
		body := map[string]any{"url": "http://127.0.0.1:1/", "push": map[string]any{"platform": c.platform, "token": c.token}}
		status, code, _ := postHandoff(t, b, body, nil)
		if c.ok != (status == 201) || (!c.ok && code != "invalid") {
			t.Errorf("%s token of %d characters: %d %s", c.platform, len(c.token), status, code)
		}
	}
}
