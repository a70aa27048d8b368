package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/wakeup"
)

// The keys of the RFC 8291 example subscription.
const (
	testP256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	testAuth   = "BTBZMqHH6r4Tts7J_aSIgg"
)

func webpushPush(endpoint, p256dh, auth string) map[string]any {
	return map[string]any{"platform": "webpush", "subscription": map[string]any{
		"endpoint": endpoint, "expirationTime": nil, "keys": map[string]any{"p256dh": p256dh, "auth": auth}}}
}

// Handoffs of Web Push subscriptions: well-formed ones on the browsers' push services are
// accepted (a device per endpoint, its keys stored); malformed subscriptions are 400
// invalid; endpoints on hosts not in --webpush-endpoints (private addresses, lookalikes,
// plain http) are 403 forbidden, and no answer repeats the endpoint's path.
func TestWebPushHandoff(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil) // the default --webpush-endpoints
	const url = "http://127.0.0.1:1/"
	const chrome = "https://fcm.googleapis.com/fcm/send/dGVzdC1lbmRwb2ludA:APA91b"
	for _, c := range []struct {
		name   string
		push   map[string]any
		status int
		code   string
	}{
		{"chrome", webpushPush(chrome, testP256dh, testAuth), 201, ""},
		{"firefox, padded keys", webpushPush("https://updates.push.services.mozilla.com/wpush/v2/gAAAAA", testP256dh+"=", testAuth+"=="), 201, ""},
		{"edge", webpushPush("https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB", testP256dh, testAuth), 201, ""},
		{"safari", webpushPush("https://web.push.apple.com/QGxyz", testP256dh, testAuth), 201, ""},

		{"no subscription", map[string]any{"platform": "webpush"}, 400, "invalid"},
		{"a token instead", map[string]any{"platform": "webpush", "token": chrome}, 400, "invalid"},
		{"token and subscription", func() map[string]any { p := webpushPush(chrome, testP256dh, testAuth); p["token"] = "x"; return p }(), 400, "invalid"},
		{"topic", func() map[string]any { p := webpushPush(chrome, testP256dh, testAuth); p["topic"] = "com.x"; return p }(), 400, "invalid"},
		{"subscription for fcm", func() map[string]any { p := webpushPush(chrome, testP256dh, testAuth); p["platform"] = "fcm"; return p }(), 400, "invalid"},
		{"no endpoint", webpushPush("", testP256dh, testAuth), 400, "invalid"},
		{"endpoint not a URL", webpushPush("fcm.googleapis.com/fcm/send/x", testP256dh, testAuth), 400, "invalid"},
		{"endpoint too long", webpushPush(chrome+strings.Repeat("x", 4096), testP256dh, testAuth), 400, "invalid"},
		{"no keys", map[string]any{"platform": "webpush", "subscription": map[string]any{"endpoint": chrome}}, 400, "invalid"},
		{"p256dh not a point", webpushPush(chrome, "BA"+testP256dh[2:], testAuth), 400, "invalid"},
		{"p256dh compressed", webpushPush(chrome, "Aw"+testP256dh[2:44], testAuth), 400, "invalid"},
		{"p256dh not base64url", webpushPush(chrome, testP256dh[:20]+"+/"+testP256dh[22:], testAuth), 400, "invalid"},
		{"auth of 15 bytes", webpushPush(chrome, testP256dh, testAuth[:20]), 400, "invalid"},
		{"unknown key field", map[string]any{"platform": "webpush", "subscription": map[string]any{"endpoint": chrome, "keys": map[string]any{"p256dh": testP256dh, "auth": testAuth, "x": 1}}}, 400, "invalid"},

		{"unlisted host", webpushPush("https://push.attacker.example/fcm/send/x", testP256dh, testAuth), 403, "forbidden"},
		{"lookalike host", webpushPush("https://fcm.googleapis.com.attacker.example/x", testP256dh, testAuth), 403, "forbidden"},
		{"plain http", webpushPush("http://fcm.googleapis.com/fcm/send/x", testP256dh, testAuth), 403, "forbidden"},
		{"loopback", webpushPush("https://127.0.0.1/push/x", testP256dh, testAuth), 403, "forbidden"},
		{"private address", webpushPush("https://10.1.2.3/push/x", testP256dh, testAuth), 403, "forbidden"},
		{"metadata address", webpushPush("https://169.254.169.254/latest/meta-data", testP256dh, testAuth), 403, "forbidden"},
		{"IPv6 loopback", webpushPush("https://[::1]:443/push/x", testP256dh, testAuth), 403, "forbidden"},
		{"another port", webpushPush("https://fcm.googleapis.com:8443/fcm/send/x", testP256dh, testAuth), 403, "forbidden"},
	} {
		raw, _ := json.Marshal(map[string]any{"url": url, "push": c.push})
		resp, out := do(t, "POST", b.API.URL+"/v1/streams", string(raw), http.Header{"Content-Type": {"application/json"}})
		var p struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(out, &p)
		if resp.StatusCode != c.status || p.Code != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, resp.StatusCode, out, c.status, c.code)
		}
		if resp.StatusCode != 201 && (strings.Contains(string(out), "/push/x") || strings.Contains(string(out), "/fcm/send/x")) {
			t.Errorf("%s: the answer repeats the endpoint: %s", c.name, out)
		}
	}
	var p256dh, auth string
	err := b.Store.Pool().QueryRow(context.Background(),
		`SELECT webpush_p256dh, webpush_auth FROM devices WHERE platform = 'webpush' AND token = $1`, chrome).Scan(&p256dh, &auth)
	if err != nil || p256dh != testP256dh || auth != testAuth {
		t.Fatalf("stored keys %q %q: %v", p256dh, auth, err)
	}
}

// An operator may list other push services, and plain http on an address (the fake push
// service on loopback); the list is what is allowed, the defaults no longer.
func TestWebPushEndpointsOption(t *testing.T) {
	t.Parallel()
	eps, err := wakeup.ParseWebPushEndpoints([]string{"push.example.com", "http://127.0.0.1:8790"})
	if err != nil {
		t.Fatal(err)
	}
	_, b := setup(t, &api.Options{WebPushEndpoints: eps})
	for endpoint, status := range map[string]int{
		"https://push.example.com/x":        201,
		"http://127.0.0.1:8790/push/x":      201,
		"http://127.0.0.1:8791/push/x":      403,
		"https://fcm.googleapis.com/send/x": 403,
	} {
		st, code, _ := postHandoff(t, b, map[string]any{"url": "http://127.0.0.1:1/", "push": webpushPush(endpoint, testP256dh, testAuth)}, nil)
		if st != status {
			t.Errorf("%s: %d %s, want %d", endpoint, st, code, status)
		}
	}
}

// GET /v1/webpush/vapid-public-key answers the key web apps subscribe with, or 404 when
// the proxy has none; it takes no API key, and answers CORS like the device routes.
func TestVAPIDPublicKeyRoute(t *testing.T) {
	t.Parallel()
	_, none := setup(t, nil)
	if resp, _ := do(t, "GET", none.API.URL+"/v1/webpush/vapid-public-key", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("without a key: %d", resp.StatusCode)
	}
	_, b := setup(t, &api.Options{VAPIDPublicKey: testP256dh, APIKeys: []string{"k"}, CORSOrigins: []string{"https://app.example"}})
	resp, out := do(t, "GET", b.API.URL+"/v1/webpush/vapid-public-key", "", http.Header{"Origin": {"https://app.example"}})
	var got struct {
		Key string `json:"vapid_public_key"`
	}
	if err := json.Unmarshal(out, &got); err != nil || resp.StatusCode != 200 || got.Key != testP256dh {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("no CORS answer: %v", resp.Header)
	}
}

// The admin documents of a Web Push device show neither its endpoint nor its keys.
func TestWebPushDeviceAdminDocument(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{AdminToken: "admin-token"})
	const endpoint = "https://fcm.googleapis.com/fcm/send/admin-doc-endpoint"
	st, _, res := postHandoff(t, b, map[string]any{"url": "http://127.0.0.1:1/", "push": webpushPush(endpoint, testP256dh, testAuth)}, nil)
	if st != 201 {
		t.Fatal(st)
	}
	var deviceID string
	if err := b.Store.Pool().QueryRow(context.Background(), `SELECT device_id::text FROM streams WHERE id = $1`, res.ID).Scan(&deviceID); err != nil {
		t.Fatal(err)
	}
	var doc json.RawMessage
	if code := adminGet(t, b, "/v1/admin/devices/"+deviceID, "admin-token", &doc); code != 200 {
		t.Fatalf("admin device: %d", code)
	}
	for _, secret := range []string{testAuth, "admin-doc-endpoint"} {
		if strings.Contains(string(doc), secret) {
			t.Errorf("the admin device document holds %q: %s", secret, doc)
		}
	}
	if !strings.Contains(string(doc), `"webpush"`) {
		t.Errorf("the admin device document does not name its platform: %s", doc)
	}
}
