package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/envflag"
)

// The public listener's handler has no http.ServeMux in front of the API (metrics and the
// profiler are on the admin listener), whose path cleaning would answer "..", "." and "//"
// with a redirect of its own (repeating the query, tokens included, in Location) before the
// API could answer them.
func TestPublicHandlerLeavesEveryPathToTheAPI(t *testing.T) {
	var seen []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.URL.RequestURI())
		w.WriteHeader(http.StatusTeapot)
	})
	h := bodyDeadline(time.Second, api)
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
}

// --cors-origins has its environment twin, and a value that is not an origin stops serve
// before it touches anything.
func TestCORSOriginsFlag(t *testing.T) {
	var sc serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sc.flags(fs)
	env := map[string]string{"PUSHPROXY_CORS_ORIGINS": "https://app.example,http://localhost:5173"}
	if err := envflag.Parse(fs, envPrefix, nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(sc.CORSOrigins, " ") != "https://app.example http://localhost:5173" {
		t.Fatalf("cors origins %q", sc.CORSOrigins)
	}
	sc.CORSOrigins = listFlag{"app.example"}
	sc.DatabaseURL = "postgres://postgres@127.0.0.1:1/none?connect_timeout=1"
	_, err := openServer(context.Background(), sc, slog.New(slog.DiscardHandler), func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "--cors-origins") {
		t.Fatalf("openServer with a bad origin: %v", err)
	}
}
