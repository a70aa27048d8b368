package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/cors"

	"github.com/pushproxy/pushproxy"
)

// CORS on the device routes (/v1/streams...), so that a web app on another origin can hand
// off, read events_url and take its stream back. Only the origins in Options.CORSOrigins
// are allowed; "*" allows any. The device API authenticates with bearer tokens, never with
// cookies, so no response allows credentials (and "*" is safe to send). The admin API and
// the dashboard get no CORS at all.

// corsAllowedHeaders are the request headers a device sends.
var corsAllowedHeaders = []string{"Authorization", "Content-Type", "Last-Event-ID", "Accept"}

// corsExposedHeaders are the response headers a page may read.
var corsExposedHeaders = []string{"Location", "Retry-After", "Pushproxy-Gap"}

// CheckCORSOrigins checks --cors-origins entries: "*" alone, or origins as a browser sends
// them (scheme://host[:port], no path).
func CheckCORSOrigins(origins []string) error {
	for _, o := range origins {
		if o == "*" {
			if len(origins) > 1 {
				return fmt.Errorf("cors origins: * allows every origin and cannot be combined with others")
			}
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || strings.Contains(o, "*") {
			return fmt.Errorf("cors origins: %q is not an origin (scheme://host[:port], e.g. https://app.example.com)", o)
		}
	}
	return nil
}

// newCORS returns the CORS middleware of the device routes, nil without origins.
func newCORS(origins []string) func(http.Handler) http.Handler {
	if len(origins) == 0 {
		return nil
	}
	list := make([]string, len(origins))
	for i, o := range origins {
		list[i] = strings.TrimSuffix(o, "/")
	}
	return cors.New(cors.Options{
		AllowedOrigins:     list,
		AllowedMethods:     []string{http.MethodGet, http.MethodPost, http.MethodDelete},
		AllowedHeaders:     corsAllowedHeaders,
		ExposedHeaders:     corsExposedHeaders,
		AllowCredentials:   false,
		MaxAge:             600,
		OptionsPassthrough: true, // preflight below answers: 204, or 403 when refused
	}).Handler
}

// preflight answers an OPTIONS request on a device route once the CORS middleware has
// looked at it: 204 when it allowed the request, a 403 problem when it refused the origin,
// method or headers. An OPTIONS that is no preflight learns the route's methods (Allow).
func preflight(routes *routeTable) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") == "" || r.Header.Get("Access-Control-Request-Method") == "" {
			w.Header().Set("Allow", strings.Join(routes.allowed(r.URL.Path), ", "))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if w.Header().Get("Access-Control-Allow-Origin") == "" {
			writeProblem(w, http.StatusForbidden, pushproxy.EFORBIDDEN,
				"cross-origin request refused: the origin is not in --cors-origins, or the method or a header is not allowed")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
