package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/proxy"
)

// loopbackTrusted trusts the test client (127.0.0.1) as a proxy, so that X-Forwarded-For
// names the client.
var loopbackTrusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// expectRateLimited checks a 429 rate-limited answer with a Retry-After of whole seconds.
func expectRateLimited(t *testing.T, what string, status int, code string, resp *http.Response) {
	t.Helper()
	if status != http.StatusTooManyRequests || code != "rate-limited" {
		t.Fatalf("%s: %d %s, want 429 rate-limited", what, status, code)
	}
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Fatalf("%s: Retry-After %q", what, resp.Header.Get("Retry-After"))
	}
}

// handoffAs posts a handoff of url from the client address xff (as a trusted proxy reports
// it) with the API key key (either may be ""), and returns the answer.
func handoffAs(t *testing.T, b *testBundle, origin, xff, key string) (*http.Response, int, string) {
	t.Helper()
	h := http.Header{"Content-Type": {"application/json"}}
	if xff != "" {
		h.Set("X-Forwarded-For", xff)
	}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	resp, out := do(t, "POST", b.API.URL+"/v1/streams", `{"url":"`+origin+`"}`, h)
	return resp, resp.StatusCode, problemCode(out)
}

func problemCode(body []byte) string {
	const k = `"code":"`
	s := string(body)
	i := strings.Index(s, k)
	if i < 0 {
		return ""
	}
	s = s[i+len(k):]
	return s[:strings.IndexByte(s, '"')]
}

// TestHandoffRatePerAddress: a client address over its rate is answered 429 rate-limited
// with Retry-After; another address is unaffected. X-Forwarded-For counts only from a
// trusted proxy: a client cannot spread itself over made-up addresses.
func TestHandoffRatePerAddress(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{HandoffRatePerAddress: 0.01, HandoffBurst: 2, TrustedProxies: loopbackTrusted})
	o := newScriptOrigin(t, 0)
	for i := range 2 {
		if _, status, code := handoffAs(t, b, o.Srv.URL, "198.51.100.7, 203.0.113.1", ""); status != 201 {
			t.Fatalf("handoff %d: %d %s", i, status, code)
		}
	}
	resp, status, code := handoffAs(t, b, o.Srv.URL, "198.51.100.8, 203.0.113.1", "") // its own claim changed: still 203.0.113.1
	expectRateLimited(t, "third handoff from one address", status, code, resp)
	if _, status, code := handoffAs(t, b, o.Srv.URL, "203.0.113.2", ""); status != 201 {
		t.Fatalf("another address: %d %s", status, code)
	}
	// An IPv6 client is one /64.
	for i := range 2 {
		if _, status, code := handoffAs(t, b, o.Srv.URL, "2001:db8:1:2::"+strconv.Itoa(i+1), ""); status != 201 {
			t.Fatalf("IPv6 handoff %d: %d %s", i, status, code)
		}
	}
	resp, status, code = handoffAs(t, b, o.Srv.URL, "2001:db8:1:2:ffff::1", "")
	expectRateLimited(t, "another address of the same /64", status, code, resp)

	// Without trusted proxies, X-Forwarded-For is the client's own claim: ignored.
	_, u := setup(t, &api.Options{HandoffRatePerAddress: 0.01, HandoffBurst: 2})
	for i := range 3 {
		resp, status, code := handoffAs(t, u, o.Srv.URL, "203.0.113."+strconv.Itoa(10+i), "")
		if i < 2 && status != 201 {
			t.Fatalf("untrusted handoff %d: %d %s", i, status, code)
		}
		if i == 2 {
			expectRateLimited(t, "made-up forwarded addresses from an untrusted peer", status, code, resp)
		}
	}
}

// TestHandoffRatePerKey: an API key over its rate is answered 429 rate-limited; another key
// is unaffected. A wrong key is refused without spending the key's budget.
func TestHandoffRatePerKey(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{APIKeys: []string{"key-one", "key-two"}, HandoffRatePerKey: 0.01, HandoffBurst: 2})
	o := newScriptOrigin(t, 0)
	if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-wrong"); status != 401 || code != "unauthorized" {
		t.Fatalf("wrong key: %d %s", status, code)
	}
	for i := range 2 {
		if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-one"); status != 201 {
			t.Fatalf("handoff %d: %d %s", i, status, code)
		}
	}
	resp, status, code := handoffAs(t, b, o.Srv.URL, "", "key-one")
	expectRateLimited(t, "third handoff under one key", status, code, resp)
	if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-two"); status != 201 {
		t.Fatalf("another key: %d %s", status, code)
	}
}

// TestStreamsPerKey: an API key that holds --max-streams-per-key streams is answered 409
// key-stream-limit; another key is unaffected; closing a stream makes room again.
func TestStreamsPerKey(t *testing.T) {
	t.Parallel()
	_, b := proxytest.Start(t, &proxy.Options{MaxStreamsPerKey: 2}, &api.Options{APIKeys: []string{"key-one", "key-two"}})
	o := newScriptOrigin(t, 0)
	var first handoffResult
	for i := range 2 {
		raw := `{"url":"` + o.Srv.URL + `"}`
		resp, out := do(t, "POST", b.API.URL+"/v1/streams", raw, http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer key-one"}})
		if resp.StatusCode != 201 {
			t.Fatalf("handoff %d: %d %s", i, resp.StatusCode, out)
		}
		if i == 0 {
			first = decodeHandoff(t, out)
		}
	}
	if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-one"); status != 409 || code != "key-stream-limit" {
		t.Fatalf("third stream under one key: %d %s", status, code)
	}
	if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-two"); status != 201 {
		t.Fatalf("another key: %d %s", status, code)
	}
	if resp, out := do(t, "DELETE", b.API.URL+"/v1/streams/"+first.ID, "", http.Header{"Authorization": {"Bearer " + first.Token}}); resp.StatusCode != 200 {
		t.Fatalf("close: %d %s", resp.StatusCode, out)
	}
	if _, status, code := handoffAs(t, b, o.Srv.URL, "", "key-one"); status != 201 {
		t.Fatalf("after a close: %d %s", status, code)
	}
}

// TestReadersPerStream: a stream with --max-readers-per-stream readers open answers another
// reader 409 reader-limit; readers of another stream are unaffected; a closed reader makes
// room again.
func TestReadersPerStream(t *testing.T) {
	t.Parallel()
	_, b := proxytest.Start(t, &proxy.Options{MaxReadersPerStream: 1}, nil)
	o := newScriptOrigin(t, 0)
	h1 := handoff(t, b, map[string]any{"url": o.Srv.URL})
	h2 := handoff(t, b, map[string]any{"url": o.Srv.URL})
	r1 := openSSE(t, b, h1, nil)
	if r1.resp.StatusCode != 200 {
		t.Fatalf("first reader: %d", r1.resp.StatusCode)
	}
	resp, out := do(t, "GET", b.API.URL+h1.EventsURL, "", nil)
	if resp.StatusCode != 409 || problemCode(out) != "reader-limit" {
		t.Fatalf("second reader of one stream: %d %s", resp.StatusCode, out)
	}
	r2 := openSSE(t, b, h2, nil)
	if r2.resp.StatusCode != 200 {
		t.Fatalf("reader of another stream: %d", r2.resp.StatusCode)
	}
	r2.close()
	r1.close()
	eventually(t, 10*time.Second, "the closed reader's place freed", func() bool {
		var n int
		_ = b.Store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM readers WHERE stream_id = $1`, h1.ID).Scan(&n)
		return n == 0
	})
	r3 := openSSE(t, b, h1, nil)
	defer r3.close()
	if r3.resp.StatusCode != 200 {
		t.Fatalf("reader after the first closed: %d", r3.resp.StatusCode)
	}
}

// TestLoginRatePerAddress: a stranger guessing the admin token is slowed down (429 with
// Retry-After) without locking the operator, at another address, out.
func TestLoginRatePerAddress(t *testing.T) {
	t.Parallel()
	const admin = "the-admin-token-of-this-test"
	_, b := setup(t, &api.Options{AdminToken: admin, LoginRatePerAddress: 0.01, TrustedProxies: loopbackTrusted})
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	login := func(xff, token string) *http.Response {
		req, _ := http.NewRequest("POST", b.API.URL+"/admin/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-For", xff)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	var resp *http.Response
	for range 20 {
		if resp = login("203.0.113.66", "a-guess"); resp.StatusCode == http.StatusTooManyRequests {
			break
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a wrong token: %d", resp.StatusCode)
		}
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("the stranger was never slowed down: %d", resp.StatusCode)
	}
	// Even the right token from the stranger's address waits...
	if resp := login("203.0.113.66", admin); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the stranger's address: %d", resp.StatusCode)
	}
	// ...but the operator, elsewhere, signs in.
	resp = login("198.51.100.1", admin)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusUnauthorized || len(resp.Cookies()) == 0 {
		t.Fatalf("the operator's sign-in: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
}

func decodeHandoff(t *testing.T, body []byte) handoffResult {
	t.Helper()
	var h handoffResult
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestStreamsPerDevice: a device that holds --max-streams-per-device streams is answered 409
// limit-exceeded, even for its own app; another device is unaffected. (A stranger cannot
// fill it: without the device secret every handoff for its token is refused.)
func TestStreamsPerDevice(t *testing.T) {
	t.Parallel()
	_, b := proxytest.Start(t, &proxy.Options{MaxStreamsPerDevice: 2}, nil)
	o := newScriptOrigin(t, 0)
	secret := randomSecret()
	body := func(tok string) map[string]any {
		return map[string]any{"url": o.Srv.URL, "push": map[string]any{"platform": "fcm", "token": tok, "device_secret": secret}}
	}
	for i := range 2 {
		if status, code, _ := postHandoff(t, b, body(fcmToken("full")), nil); status != 201 {
			t.Fatalf("handoff %d: %d %s", i, status, code)
		}
	}
	if status, code, _ := postHandoff(t, b, body(fcmToken("full")), nil); status != 409 || code != "limit-exceeded" {
		t.Fatalf("third stream of one device: %d %s", status, code)
	}
	if status, code, _ := postHandoff(t, b, body(fcmToken("other")), nil); status != 201 {
		t.Fatalf("another device: %d %s", status, code)
	}
}
