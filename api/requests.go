package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/pushproxy/pushproxy"
)

// What a request may carry before any handler reads it. The API is reached by strangers: a
// path, query or header it cannot store or compare (a NUL, bytes that are not UTF-8) is the
// client's mistake, answered 400 like any other, and never reaches Postgres (which refuses
// both, and would turn them into 500s).

// checkRequest refuses, before routing, what no route can take: paths with empty, "." or ".."
// segments (a client that sends them means some other path; the API does not guess which
// one nor redirect, so a token in the query never travels in a Location), and paths or
// queries that are not clean UTF-8 text. Refusals are problem documents, logged and counted
// under the route "unmatched" like any other unknown path.
func checkRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cleanPath(r.URL.Path) {
			writeProblem(w, http.StatusNotFound, pushproxy.ENOTFOUND, "no such route: a path has no empty, . or .. segments")
			return
		}
		if !cleanText(r.URL.Path) {
			writeProblem(w, http.StatusBadRequest, pushproxy.EINVALID, "path: must be UTF-8 text without control characters")
			return
		}
		if err := checkQuery(r.URL.RawQuery); err != nil {
			writeProblem(w, http.StatusBadRequest, pushproxy.EINVALID, pushproxy.ErrorMessage(err))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cleanPath reports whether p is an absolute path without empty, "." or ".." segments (a
// trailing slash is allowed).
func cleanPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		switch {
		case seg == "." || seg == "..":
			return false
		case seg == "" && i != len(segs)-1:
			return false
		}
	}
	return true
}

// cleanText reports whether s is UTF-8 without control characters (C0, DEL).
func cleanText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f })
}

// maxQueryBytes bounds a query string (net/http bounds the whole request head at 1 MiB).
const maxQueryBytes = 8 << 10

// checkQuery checks a raw query string: it parses, and every name and value is clean text.
func checkQuery(raw string) error {
	if raw == "" {
		return nil
	}
	if len(raw) > maxQueryBytes {
		return invalid("query: longer than %d bytes", maxQueryBytes)
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return invalid("query: not a valid query string (name=value pairs joined by &, percent-encoded)")
	}
	for name, vs := range q {
		if !cleanText(name) {
			return invalid("query: a parameter name must be UTF-8 text without control characters")
		}
		for _, v := range vs {
			if !cleanText(v) {
				return invalid("query: %s must be UTF-8 text without control characters", name)
			}
		}
	}
	return nil
}

// lastEventID returns the reader's Last-Event-ID: the header, else the last_event_id query
// parameter (for a first EventSource connect, which cannot set the header). An id that an
// event stream cannot carry (CR, LF, NUL, not UTF-8) or longer than the API stores is
// refused.
func lastEventID(r *http.Request) (id string, provided bool, err error) {
	if v, ok := r.Header["Last-Event-Id"]; ok && len(v) > 0 {
		id, provided = v[0], true
	} else if q := r.URL.Query(); q.Has("last_event_id") {
		id, provided = q.Get("last_event_id"), true
	}
	return id, provided, checkLastEventID(id)
}

// checkLastEventID checks an id a reader sends back.
func checkLastEventID(id string) error {
	switch {
	case len(id) > maxLastEventIDLength:
		return invalid("Last-Event-ID: longer than %d bytes", maxLastEventIDLength)
	case !utf8.ValidString(id) || strings.ContainsAny(id, "\r\n\x00"):
		return invalid("Last-Event-ID: must be UTF-8 without CR, LF or NUL (an event stream cannot carry such an id)")
	}
	return nil
}

// methodNotAllowed answers a method no route at the path takes, with the methods that are
// taken in Allow. A path no method reaches is not found.
func methodNotAllowed(routes *routeTable) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		allow := routes.allowed(r.URL.Path)
		if len(allow) == 0 {
			writeProblem(w, http.StatusNotFound, pushproxy.ENOTFOUND, "no such route: "+r.URL.Path)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeProblem(w, http.StatusMethodNotAllowed, "method-not-allowed", r.Method+" is not allowed on "+r.URL.Path+": only "+strings.Join(allow, ", "))
	}
}

// routeTable lists a router's routes, read once from the finished router (chi's own
// matching cannot tell which methods a mounted router's bare path takes).
type routeTable struct {
	mux    *chi.Mux
	once   sync.Once
	routes []routeEntry
}

type routeEntry struct {
	method string
	segs   []string // "{…}" matches one segment, "*" the rest
}

func (t *routeTable) load() {
	_ = chi.Walk(t.mux, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		t.routes = append(t.routes, routeEntry{method: method, segs: strings.Split(strings.Trim(route, "/"), "/")})
		return nil
	})
}

// allowed lists the methods some route takes at path, in a fixed order.
func (t *routeTable) allowed(path string) []string {
	t.once.Do(t.load)
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		for _, e := range t.routes {
			if e.method == m && e.matches(segs) {
				allow = append(allow, m)
				break
			}
		}
	}
	return allow
}

func (e routeEntry) matches(segs []string) bool {
	for i, p := range e.segs {
		switch {
		case p == "*":
			return true
		case i >= len(segs):
			return false
		case strings.HasPrefix(p, "{"):
			if segs[i] == "" {
				return false
			}
		case p != segs[i]:
			return false
		}
	}
	return len(segs) == len(e.segs)
}

// statusClientClosed is what the logs and metrics record for a request whose client went
// away before the answer (nginx's 499): nobody reads it, and it is not the server's error.
const statusClientClosed = 499

// clientGone reports whether r's client disconnected.
func clientGone(r *http.Request) bool {
	return errors.Is(r.Context().Err(), context.Canceled)
}

// retryAfterSeconds is the Retry-After of a 503.
const retryAfterSeconds = 2

// readerRetryMS is the retry: an event reader is told when the database is out: it
// reconnects that soon, so that it is back within about a second of the database.
const readerRetryMS = 1000

// unavailable reports whether err means the database (or another dependency) is out for
// now. The store classifies every database failure in one place (store/db.go), so the API
// only reads the kind.
func unavailable(err error) bool {
	return err != nil && pushproxy.ErrorCode(err) == pushproxy.EUNAVAILABLE
}
