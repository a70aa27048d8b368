package api_test

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/openapicheck"
)

// TestOpenAPIDescribesEveryRoute walks the router (with every optional part on: CORS, the
// admin API) and compares its routes with the operations of api/openapi.yaml, both ways.
// The dashboard (/admin, /admin/...) is left out on purpose: see openapicheck.Excluded.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	spec := openapicheck.MustLoad(t)
	srv := api.New(nil, nil, &api.Options{CORSOrigins: []string{"https://app.example"}, AdminToken: "adm", APIKeys: []string{"k"}})
	defer srv.Close()
	routes, ok := srv.Handler().(chi.Routes)
	if !ok {
		t.Fatalf("Handler() is a %T, not a chi router", srv.Handler())
	}
	served := map[string]bool{}
	excluded := map[string]string{}
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if route != "/" {
			route = strings.TrimSuffix(route, "/") // a mounted router's "/" serves the bare path
		}
		if reason, ok := openapicheck.Excluded(route); ok {
			excluded[method+" "+route] = reason
			return nil
		}
		served[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for path, item := range spec.Doc.Paths.Map() {
		for method := range item.Operations() {
			described[method+" "+path] = true
		}
	}
	var missing, stale []string
	for r := range served {
		if !described[r] {
			missing = append(missing, r)
		}
	}
	for r := range described {
		if !served[r] {
			stale = append(stale, r)
		}
	}
	slices.Sort(missing)
	slices.Sort(stale)
	for _, r := range missing {
		t.Errorf("the router serves %s, which api/openapi.yaml does not describe: describe it (or exclude it with a reason in openapicheck.Excluded)", r)
	}
	for _, r := range stale {
		t.Errorf("api/openapi.yaml describes %s, which the router does not serve: remove it or fix its path or method", r)
	}
	if len(served) < 20 {
		t.Errorf("the walk found only %d routes: %v", len(served), served)
	}
	reasons := map[string][]string{}
	for r, why := range excluded {
		reasons[why] = append(reasons[why], r)
	}
	for why, rs := range reasons {
		slices.Sort(rs)
		t.Logf("not described: %s: %s", strings.Join(rs, ", "), why)
	}
}

// TestOpenAPIIsServed: the description is public (even with API keys and an admin token) and
// is the embedded file.
func TestOpenAPIIsServed(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{APIKeys: []string{"key"}, AdminToken: "adm"})
	resp, body := do(t, "GET", b.API.URL+"/v1/openapi.yaml", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/openapi.yaml: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("Content-Type = %q, want application/yaml", ct)
	}
	if !bytes.Equal(body, api.OpenAPI()) || !bytes.HasPrefix(body, []byte("openapi: 3.1.")) {
		t.Errorf("served %d bytes, not the embedded api/openapi.yaml (%d bytes)", len(body), len(api.OpenAPI()))
	}
	resp, body = do(t, "POST", b.API.URL+"/v1/openapi.yaml", "", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("POST /v1/openapi.yaml: %d Allow=%q %s", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
}
