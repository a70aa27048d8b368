package openapicheck

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestDescriptionLoads(t *testing.T) {
	s := MustLoad(t)
	if !s.Doc.IsOpenAPI31OrLater() {
		t.Errorf("api/openapi.yaml is OpenAPI %s, want 3.1", s.Doc.OpenAPI)
	}
}

const (
	streamID   = "6f1c1a57-0000-4000-8000-000000000000"
	goodStream = `{"id":"` + streamID + `","url":"http://o.example/","state":"held","backlog":0,"newest_event_id":null,` +
		`"acked_event_id":"","upstream_last_event_id":"","upstream":{"status":200,"connected":true,"connects":1,"retry_ms":null},` +
		`"has_push":false,"urgent_events":[],"created_at":"2026-11-27T15:20:08Z"}`
	notFound = `{"type":"urn:pushproxy:problem:not-found","title":"Not Found","status":404,"detail":"no such route","code":"not-found"}`
)

// wakeups is an answer of GET /v1/admin/wakeups with one wake-up, extra added to it.
func wakeups(extra string) string {
	return `{"wakeups":[{"id":"w","state":"done","urgent":false,"created_at":"2026-11-27T15:20:08Z","due_at":"2026-11-27T15:20:08Z",` +
		`"sent_at":null,"finished_at":null,"attempts":1,"outcome":"sent","pending_events":2,"device_id":"d","platform":"fcm"` + extra + `}]}`
}

func jsonHeader(ct string) http.Header { return http.Header{"Content-Type": {ct}} }

// TestCheckCatchesMismatches: every kind of mismatch the middleware reports is caught, and a
// matching exchange passes.
func TestCheckCatchesMismatches(t *testing.T) {
	s := MustLoad(t)
	get := func(target string, h ...string) *http.Request {
		r := httptest.NewRequest("GET", target, nil)
		for i := 0; i+1 < len(h); i += 2 {
			r.Header.Set(h[i], h[i+1])
		}
		return r
	}
	post := func(target, ct string) *http.Request {
		r := httptest.NewRequest("POST", target, nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		return r
	}
	auth := []string{"Authorization", "Bearer tok"}
	handoffOK := `{"id":"` + streamID + `","token":"t","events_url":"/v1/streams/x/events?token=t","state":"held"}`
	cases := []struct {
		name    string
		req     *http.Request
		reqBody string
		status  int
		header  http.Header
		body    string
		want    string // "" for a match; else a part of the message
	}{
		{"a described answer", get("/v1/streams/"+streamID, auth...), "", 200, jsonHeader("application/json"), goodStream, ""},
		{"the token in the query", get("/v1/streams/" + streamID + "?token=x"), "", 200, jsonHeader("application/json"), goodStream, ""},
		{"a field the description lacks", get("/v1/streams/"+streamID, auth...), "", 200, jsonHeader("application/json"),
			strings.Replace(goodStream, `"has_push":false`, `"has_push":false,"secret":"x"`, 1), `property "secret" is unsupported`},
		{"a required field missing", get("/v1/streams/"+streamID, auth...), "", 200, jsonHeader("application/json"),
			strings.Replace(goodStream, `"state":"held",`, ``, 1), `"state"`},
		{"a status not described", get("/v1/streams/"+streamID, auth...), "", 418, jsonHeader("application/problem+json"), notFound, "status 418 is not described"},
		{"an error that is not a problem document", get("/v1/streams/"+streamID, auth...), "", 404, jsonHeader("text/plain"), "nope", "text/plain"},
		{"a problem with an unknown code", get("/v1/streams/"+streamID, auth...), "", 404, jsonHeader("application/problem+json"),
			strings.ReplaceAll(notFound, "not-found", "gone"), "/code"},
		{"an unknown route answered 200", get("/v1/nothing"), "", 200, jsonHeader("application/json"), `{}`, "no operation in api/openapi.yaml matches"},
		{"an unknown route answered 404", get("/v1/nothing"), "", 404, jsonHeader("application/problem+json"), notFound, ""},
		{"a 405 without Allow", httptest.NewRequest("PUT", "/v1/streams/"+streamID, nil), "", 405, jsonHeader("application/problem+json"),
			strings.ReplaceAll(strings.ReplaceAll(notFound, "not-found", "method-not-allowed"), "404", "405"), "without Allow"},
		{"an invalid handoff accepted", post("/v1/streams", "application/json"), `{"last_event_id":"1"}`, 201,
			http.Header{"Content-Type": {"application/json"}, "Location": {"/v1/streams/" + streamID}}, handoffOK, "the document is stricter than the server"},
		{"an invalid handoff refused", post("/v1/streams", "application/json"), `{"last_event_id":"1"}`, 400, jsonHeader("application/problem+json"),
			strings.ReplaceAll(strings.ReplaceAll(notFound, "not-found", "invalid"), "404", "400"), ""},
		{"a handoff without Content-Type", post("/v1/streams", ""), `{"url":"http://o.example/"}`, 201,
			http.Header{"Content-Type": {"application/json"}, "Location": {"/v1/streams/" + streamID}}, handoffOK, ""},
		{"a 201 without Location", post("/v1/streams", "application/json"), `{"url":"http://o.example/"}`, 201, jsonHeader("application/json"), handoffOK, "Location"},
		{"a webpush handoff", post("/v1/streams", "application/json"),
			`{"url":"http://o.example/","push":{"platform":"webpush","subscription":{"endpoint":"https://push.example/x","keys":{"p256dh":"BA","auth":"AA"}}}}`, 201,
			http.Header{"Content-Type": {"application/json"}, "Location": {"/v1/streams/" + streamID}}, handoffOK, ""},
		{"an event stream where none is described", get("/v1/admin/totals", auth...), "", 200, jsonHeader("text/event-stream"), "", "text/event-stream"},
		{"an event stream of events", get("/v1/streams/"+streamID+"/events", auth...), "", 200, jsonHeader("text/event-stream"), "", ""},
		{"a JSON page with a wrong type", get("/v1/streams/"+streamID+"/events", "Authorization", "Bearer t", "Accept", "application/json"), "", 200,
			jsonHeader("application/json"), `{"events":[],"last_event_id":"","more":"no","gap":false}`, "/more"},
		{"a wake-up as described", get("/v1/admin/wakeups", auth...), "", 200, jsonHeader("application/json"), wakeups(""), ""},
		{"a wake-up with a field the description lacks", get("/v1/admin/wakeups", auth...), "", 200, jsonHeader("application/json"),
			wakeups(`,"token":"x"`), "token"},
		{"no credentials answered 200", get("/v1/admin/totals"), "", 200, jsonHeader("application/json"), `{}`, "the document is stricter than the server"},
	}
	for _, c := range cases {
		got := s.Check(c.req, []byte(c.reqBody), c.status, c.header, []byte(c.body))
		switch {
		case c.want == "" && got != "":
			t.Errorf("%s: reported %q, want a match", c.name, got)
		case c.want != "" && !strings.Contains(got, c.want):
			t.Errorf("%s: reported %q, want it to say %q", c.name, got, c.want)
		}
	}
}

// TestMiddlewareFailsTheTest: the middleware reports through the test, once per mismatch, and
// passes event streams through flushed.
func TestMiddlewareFailsTheTest(t *testing.T) {
	s := MustLoad(t)
	rec := &recordingTB{TB: t}
	h := s.Middleware(rec, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"fine"}`))
	}))
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/healthz", nil))
	}
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "GET /healthz → 200") || !strings.Contains(rec.errors[0], "/status") {
		t.Errorf("reported %q, want one error about /status of GET /healthz", rec.errors)
	}
	sse := s.Middleware(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.Write([]byte(": ok\n\n"))
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush through the middleware: %v", err)
		}
	}))
	w := httptest.NewRecorder()
	sse.ServeHTTP(w, httptest.NewRequest("GET", "/v1/streams/"+streamID+"/events?token=x", nil))
	if !w.Flushed || w.Body.String() != ": ok\n\n" {
		t.Errorf("event stream: flushed %v, body %q", w.Flushed, w.Body.String())
	}
}

type recordingTB struct {
	testing.TB
	errors []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// BenchmarkCheck is the cost of checking one exchange (a stream's state).
func BenchmarkCheck(b *testing.B) {
	s := MustLoad(b)
	h := jsonHeader("application/json")
	for b.Loop() {
		r := httptest.NewRequest("GET", "/v1/streams/"+streamID, nil)
		r.Header.Set("Authorization", "Bearer tok")
		if msg := s.Check(r, nil, 200, h, []byte(goodStream)); msg != "" {
			b.Fatal(msg)
		}
	}
}
