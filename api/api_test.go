package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
)

type problemDoc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   string `json:"code"`
}

func checkProblem(t *testing.T, resp *http.Response, body []byte, status int, code, detailPart string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (%s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q", ct)
	}
	var p problemDoc
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("problem document: %v: %s", err, body)
	}
	if p.Status != status || p.Code != code || p.Type != api.ProblemTypePrefix+code || p.Title == "" {
		t.Fatalf("problem = %+v, want status %d code %s", p, status, code)
	}
	if !strings.Contains(p.Detail, detailPart) {
		t.Fatalf("detail %q does not say %q", p.Detail, detailPart)
	}
}

func TestHandoffRejectsBadInputWithProblems(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	big := `{"url":"http://127.0.0.1:1/","headers":{"X-Big":"` + strings.Repeat("a", 70<<10) + `"}}`
	cases := []struct {
		name, body, ctype string
		status            int
		code, detail      string
	}{
		{"empty body", "", "application/json", 400, "invalid", "empty"},
		{"malformed JSON", `{"url":`, "application/json", 400, "invalid", "truncated"},
		{"syntax error", `{"url" "x"}`, "application/json", 400, "invalid", "malformed JSON"},
		{"not an object", `[1,2]`, "application/json", 400, "invalid", "expected a JSON object"},
		{"trailing data", `{"url":"http://127.0.0.1:1/"} {}`, "application/json", 400, "invalid", "after the JSON object"},
		{"unknown field", `{"url":"http://127.0.0.1:1/","colour":"red"}`, "application/json", 400, "invalid", `unknown field "colour"`},
		{"wrong type", `{"url":42}`, "application/json", 400, "invalid", "url: expected string"},
		{"missing url", `{}`, "application/json", 400, "invalid", "url: required"},
		{"ftp url", `{"url":"ftp://example.com/x"}`, "application/json", 400, "invalid", "scheme must be http or https"},
		{"relative url", `{"url":"/events"}`, "application/json", 400, "invalid", "scheme"},
		{"credentials in url", `{"url":"http://u:p@127.0.0.1:1/"}`, "application/json", 400, "invalid", "credentials"},
		{"bad port", `{"url":"http://127.0.0.1:99999/"}`, "application/json", 400, "invalid", "port"},
		{"header name not a token", `{"url":"http://127.0.0.1:1/","headers":{"Bad Name":"x"}}`, "application/json", 400, "invalid", "not a valid header name"},
		{"header value with CRLF", `{"url":"http://127.0.0.1:1/","headers":{"X-A":"a\r\nX-Injected: 1"}}`, "application/json", 400, "invalid", "CR, LF"},
		{"managed header", `{"url":"http://127.0.0.1:1/","headers":{"last-event-id":"3"}}`, "application/json", 400, "invalid", "set by the proxy"},
		{"duplicate header", `{"url":"http://127.0.0.1:1/","headers":{"x-a":"1","X-A":"2"}}`, "application/json", 400, "invalid", "given twice"},
		{"last event id with LF", `{"url":"http://127.0.0.1:1/","last_event_id":"a\nb"}`, "application/json", 400, "invalid", "last_event_id"},
		{"push without token", `{"url":"http://127.0.0.1:1/","push":{"platform":"fcm"}}`, "application/json", 400, "invalid", "push.token: required"},
		{"push bad platform", `{"url":"http://127.0.0.1:1/","push":{"platform":"sms","token":"x"}}`, "application/json", 400, "invalid", "push.platform"},
		{"apns token not hex", `{"url":"http://127.0.0.1:1/","push":{"platform":"apns","token":"zz"}}`, "application/json", 400, "invalid", "hex"},
		{"apns bad environment", `{"url":"http://127.0.0.1:1/","push":{"platform":"apns","token":"` + strings.Repeat("ab", 32) + `","environment":"staging"}}`, "application/json", 400, "invalid", "push.environment"},
		{"oversized body", big, "application/json", 413, "too-large", "larger than"},
		{"wrong content type", `{"url":"http://127.0.0.1:1/"}`, "text/plain", 415, "unsupported-media-type", "application/json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, "POST", b.API.URL+"/v1/streams", c.body, http.Header{"Content-Type": {c.ctype}})
			checkProblem(t, resp, body, c.status, c.code, c.detail)
		})
	}
}

func TestHandoffRefusesPrivateUpstreamsUnlessListed(t *testing.T) {
	t.Parallel()
	allow, err := upstream.ParseAllowList(nil) // default: public hosts only
	if err != nil {
		t.Fatal(err)
	}
	_, b := proxytest.Start(t, &proxy.Options{Upstream: allow}, nil)
	for _, u := range []string{"http://127.0.0.1:9/", "http://10.1.2.3/", "http://[::1]:80/", "http://169.254.169.254/latest/meta-data/", "http://localhost:8080/"} {
		resp, body := do(t, "POST", b.API.URL+"/v1/streams", `{"url":"`+u+`"}`, nil)
		checkProblem(t, resp, body, 403, "forbidden", "--upstream-allow")
	}
}

func TestAPIKeysGuardHandoff(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{APIKeys: []string{"k1", "k2"}})
	body := `{"url":"http://127.0.0.1:1/"}`
	resp, out := do(t, "POST", b.API.URL+"/v1/streams", body, nil)
	checkProblem(t, resp, out, 401, "unauthorized", "API key is required")
	if resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatal("401 without WWW-Authenticate")
	}
	resp, out = do(t, "POST", b.API.URL+"/v1/streams", body, http.Header{"Authorization": {"Bearer nope"}})
	checkProblem(t, resp, out, 401, "unauthorized", "not valid")
	resp, out = do(t, "POST", b.API.URL+"/v1/streams", body, http.Header{"Authorization": {"Bearer k2"}})
	if resp.StatusCode != 201 {
		t.Fatalf("with a key: %d %s", resp.StatusCode, out)
	}
}

func TestStreamTokenIsRequired(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/"})
	for _, path := range []string{"/v1/streams/" + h.ID, "/v1/streams/" + h.ID + "/events"} {
		resp, out := do(t, "GET", b.API.URL+path, "", nil)
		checkProblem(t, resp, out, 401, "unauthorized", "token is required")
		resp, out = do(t, "GET", b.API.URL+path+"?token=wrong", "", nil)
		checkProblem(t, resp, out, 401, "unauthorized", "not valid")
		resp, out = do(t, "GET", b.API.URL+path, "", http.Header{"Authorization": {"Bearer wrong"}})
		checkProblem(t, resp, out, 401, "unauthorized", "not valid")
	}
	resp, out := do(t, "DELETE", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer wrong"}})
	checkProblem(t, resp, out, 401, "unauthorized", "not valid")
	resp, out = do(t, "GET", b.API.URL+"/v1/streams/6f1c1a57-0000-4000-8000-000000000000?token=x", "", nil)
	checkProblem(t, resp, out, 404, "not-found", "no stream")
	resp, out = do(t, "GET", b.API.URL+"/v1/streams/not-an-id/events?token=x", "", nil)
	checkProblem(t, resp, out, 404, "not-found", "no stream")
	resp, out = do(t, "GET", b.API.URL+"/v1/nothing", "", nil)
	checkProblem(t, resp, out, 404, "not-found", "no such route")
	resp, out = do(t, "PUT", b.API.URL+"/v1/streams/"+h.ID, "", nil)
	checkProblem(t, resp, out, 405, "method-not-allowed", "PUT")
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, out := do(t, "GET", b.API.URL+p, "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, out)
		}
	}
}
