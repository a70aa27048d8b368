package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics endpoint is mounted without an http.ServeMux, whose path cleaning would answer
// "..", "." and "//" with a redirect of its own (repeating the query, tokens included, in
// Location) before the API could answer them.
func TestWithMetricsLeavesEveryOtherPathToTheAPI(t *testing.T) {
	var seen []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.URL.RequestURI())
		w.WriteHeader(http.StatusTeapot)
	})
	h := withMetrics(api, prometheus.NewRegistry())
	paths := []string{
		"/v1/streams/x/../y/events?token=secret",
		"/v1//streams?token=secret",
		"/v1/streams/./x",
		"//metrics",
		"/metrics/",
		"/metrics/../metrics",
	}
	for _, p := range paths {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "http://proxy"+p, nil)
		req.URL.Path, req.URL.RawPath = strings.SplitN(p, "?", 2)[0], ""
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusTeapot || rec.Header().Get("Location") != "" {
			t.Fatalf("%s: %d Location %q: not left to the API", p, rec.Code, rec.Header().Get("Location"))
		}
	}
	if len(seen) != len(paths) {
		t.Fatalf("the API saw %q", seen)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "http://proxy/metrics", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
}
