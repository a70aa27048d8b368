package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/api"
)

func TestCORSOnDeviceRoutes(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{CORSOrigins: []string{"https://app.example", "http://localhost:5173"}, AdminToken: "adm"})
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/"})
	preflight := func(path, origin, method, headers string) (*http.Response, []byte) {
		hd := http.Header{"Origin": {origin}, "Access-Control-Request-Method": {method}}
		if headers != "" {
			hd.Set("Access-Control-Request-Headers", headers)
		}
		return do(t, "OPTIONS", b.API.URL+path, "", hd)
	}
	for _, c := range []struct{ path, method, headers string }{
		{"/v1/streams", "POST", "content-type,authorization"},
		{"/v1/streams/" + h.ID, "GET", "authorization"},
		{"/v1/streams/" + h.ID, "DELETE", "authorization,last-event-id"},
		{"/v1/streams/" + h.ID + "/events", "GET", "last-event-id,authorization"},
	} {
		for _, origin := range []string{"https://app.example", "http://localhost:5173"} {
			resp, out := preflight(c.path, origin, c.method, c.headers)
			if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
				resp.Header.Get("Access-Control-Allow-Methods") != c.method ||
				!strings.EqualFold(resp.Header.Get("Access-Control-Allow-Headers"), strings.ReplaceAll(c.headers, ",", ", ")) ||
				resp.Header.Get("Access-Control-Allow-Credentials") != "" {
				t.Fatalf("preflight %s %s from %s: %d %v %s", c.method, c.path, origin, resp.StatusCode, resp.Header, out)
			}
		}
	}
	// Refused: another origin, a method or a header the device API does not take.
	for _, c := range []struct{ origin, method, headers string }{
		{"https://evil.example", "GET", ""},
		{"https://app.example.evil", "GET", ""},
		{"http://app.example", "GET", ""},
		{"https://app.example", "PUT", ""},
		{"https://app.example", "GET", "x-custom"},
		{"https://app.example", "GET", "cookie"},
	} {
		resp, out := preflight("/v1/streams/"+h.ID+"/events", c.origin, c.method, c.headers)
		checkProblem(t, resp, out, 403, "forbidden", "--cors-origins")
		if resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("refused preflight %+v allowed the origin", c)
		}
	}
	// The actual request: an allowed origin may read the answer and its headers; another may not.
	resp, out := do(t, "GET", b.API.URL+h.EventsURL, "", http.Header{"Origin": {"https://app.example"}, "Accept": {"application/json"}})
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
		t.Fatalf("GET from an allowed origin: %d %v %s", resp.StatusCode, resp.Header, out)
	}
	resp, _ = do(t, "GET", b.API.URL+h.EventsURL, "", http.Header{"Origin": {"https://evil.example"}, "Accept": {"application/json"}})
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("GET from another origin may read the answer")
	}
	// Errors carry CORS too, so the page can read why.
	resp, _ = do(t, "GET", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Origin": {"https://app.example"}})
	if resp.StatusCode != 401 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("401 to an allowed origin: %d %v", resp.StatusCode, resp.Header)
	}
	// The admin API gets no CORS at all.
	resp, _ = do(t, "GET", b.API.URL+"/v1/admin/streams", "", http.Header{"Origin": {"https://app.example"}, "Authorization": {"Bearer adm"}})
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("admin GET: %d %v", resp.StatusCode, resp.Header)
	}
	resp, out = preflight("/v1/admin/streams", "https://app.example", "GET", "authorization")
	checkProblem(t, resp, out, 401, "unauthorized", "admin token")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("admin preflight: %v", resp.Header)
	}
	// An OPTIONS that is no preflight learns the methods.
	resp, _ = do(t, "OPTIONS", b.API.URL+"/v1/streams/"+h.ID, "", nil)
	if resp.StatusCode != 204 || resp.Header.Get("Allow") != "GET, DELETE, OPTIONS" {
		t.Fatalf("OPTIONS: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestCORSAnyOriginAndNone(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{CORSOrigins: []string{"*"}})
	hd := http.Header{"Origin": {"https://anything.example"}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type"}}
	resp, _ := do(t, "OPTIONS", b.API.URL+"/v1/streams", "", hd)
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" || resp.Header.Get("Access-Control-Allow-Credentials") != "" {
		t.Fatalf("preflight with *: %d %v", resp.StatusCode, resp.Header)
	}
	// Without --cors-origins: no CORS; the preflight is a 405 that says what is allowed.
	_, b = setup(t, nil)
	resp, out := do(t, "OPTIONS", b.API.URL+"/v1/streams", "", hd)
	checkProblem(t, resp, out, 405, "method-not-allowed", "OPTIONS")
	if resp.Header.Get("Allow") != "POST" || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight without CORS: %v", resp.Header)
	}
}

// Every 405 says which methods the route takes.
func TestEvery405HasAllow(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{AdminToken: "adm"})
	id := "6f1c1a57-0000-4000-8000-000000000000"
	for path, want := range map[string]string{
		"/healthz":                           "GET",
		"/v1/streams":                        "POST",
		"/v1/streams/" + id:                  "GET, DELETE",
		"/v1/streams/" + id + "/events":      "GET",
		"/v1/admin/streams/" + id + "/close": "POST",
		"/v1/admin/devices/" + id:            "GET, DELETE",
		"/admin/login":                       "POST",
	} {
		for _, m := range []string{"PUT", "PATCH", "PROPFIND", "TRACE", "HEAD"} {
			if strings.Contains(want, m) {
				continue
			}
			resp, out := do(t, m, b.API.URL+path, "", http.Header{"Authorization": {"Bearer adm"}})
			if m == "HEAD" {
				if resp.StatusCode != 405 || resp.Header.Get("Allow") != want {
					t.Fatalf("HEAD %s: %d Allow %q", path, resp.StatusCode, resp.Header.Get("Allow"))
				}
				continue
			}
			checkProblem(t, resp, out, 405, "method-not-allowed", m)
			if got := resp.Header.Get("Allow"); got != want {
				t.Fatalf("%s %s: Allow %q, want %q", m, path, got, want)
			}
		}
	}
}

func TestCheckCORSOrigins(t *testing.T) {
	for _, ok := range [][]string{nil, {"*"}, {"https://app.example"}, {"http://localhost:5173", "https://a.example/"}} {
		if err := api.CheckCORSOrigins(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range [][]string{{"*", "https://a.example"}, {"app.example"}, {"https://*.example"}, {"https://a.example/path"}, {"ftp://a.example"}, {"https://u@a.example"}, {""}} {
		if err := api.CheckCORSOrigins(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
