package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/pushproxy/pushproxy/sse"
)

// The dashboard: an HTML page served at /admin/ that shows the overview and follows it live
// over SSE (/admin/live). It is plain files embedded in the binary: no build step.
//
// A browser cannot put the admin token in an EventSource's headers, so the page takes it once
// in a login form and keeps a session cookie: a random session id. The database keeps its
// hash (admin_sessions), its expiry (Options.SessionTTL after sign-in) and a mark of the admin
// token it was opened with: every instance sharing the database accepts it until it expires,
// signing out deletes it everywhere, and changing the token ends every session. Requests with
// the token as a Bearer header are served too (scripts, tests).

//go:embed dashboard
var dashboardFiles embed.FS

var loginPage = template.Must(template.ParseFS(dashboardFiles, "dashboard/login.html"))

const (
	sessionCookie = "pushproxy_admin"
	sessionLabel  = "pushproxy dashboard session v1"
	// dashboardCSP allows the page its own script, style and live feed, and nothing else.
	dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
		"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

// dashboardRoutes mounts the dashboard under /admin.
func (s *Server) dashboardRoutes(r chi.Router) {
	r.Use(dashboardHeaders)
	r.Post("/login", s.handleLogin)
	r.Post("/logout", s.handleLogout)
	r.Get("/login.css", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, dashboardFiles, "dashboard/login.css")
	})
	r.Group(func(r chi.Router) {
		r.Use(s.requireSession)
		r.Get("/", s.handleDashboard)
		r.Get("/live", s.handleDashboardLive)
		assets, _ := fs.Sub(dashboardFiles, "dashboard/assets")
		r.Handle("/assets/*", http.StripPrefix("/admin/assets/", http.FileServerFS(assets)))
	})
}

func dashboardHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", dashboardCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// tokenMark is the mark of the admin token a session is opened with ("" without one): an
// HMAC of a fixed label under the token, so the database never holds the token itself.
func tokenMark(adminToken string) []byte {
	if adminToken == "" {
		return nil
	}
	m := hmac.New(sha256.New, []byte(adminToken))
	m.Write([]byte(sessionLabel))
	return m.Sum(nil)
}

// sessionHash is what the database keeps of a session id.
func sessionHash(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

// sessionIDLen is the length of a session id: 32 random bytes, base64url without padding.
const sessionIDLen = 43

func newSessionID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// dashboardAccess tells whether r carries the admin token (Bearer) or a live session cookie.
func (s *Server) dashboardAccess(r *http.Request) bool {
	if s.opts.AdminToken == "" {
		return false
	}
	if tok, ok := bearer(r); ok {
		return s.isAdminToken(tok)
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) != sessionIDLen {
		return false
	}
	ok, err := s.store.AdminSessionValid(r.Context(), sessionHash(c.Value), s.tokenMark)
	if err != nil {
		s.log.WarnContext(r.Context(), "dashboard session check failed", slog.String("error", err.Error()))
		return false
	}
	return ok
}

// requireSession serves the login form, with 401, to requests without access.
func (s *Server) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.dashboardAccess(r) {
			s.renderLogin(w, http.StatusUnauthorized, "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) renderLogin(w http.ResponseWriter, status int, msg string) {
	if s.opts.AdminToken == "" {
		status, msg = http.StatusForbidden, "The dashboard is off: start the proxy with --admin-token (PUSHPROXY_ADMIN_TOKEN)."
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = loginPage.Execute(w, struct {
		Error string
		On    bool
	}{msg, s.opts.AdminToken != ""})
}

// loginBurst is the burst of sign-in attempts per client address; the rate is
// Options.LoginRatePerAddress. Per address, so that a stranger guessing cannot lock the
// operator out.
const loginBurst = 10

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	if ok, retry := s.loginLimit.allow(addrKey(s.proxies.clientAddr(r))); !ok {
		w.Header().Set("Retry-After", retryAfter(retry))
		s.renderLogin(w, http.StatusTooManyRequests, "Too many attempts: wait a second and try again.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := r.PostFormValue("token")
	if !s.isAdminToken(tok) {
		s.renderLogin(w, http.StatusUnauthorized, "That is not the admin token.")
		return
	}
	id := newSessionID()
	if err := s.store.CreateAdminSession(r.Context(), sessionHash(id), s.tokenMark, s.opts.SessionTTL); err != nil {
		s.log.WarnContext(r.Context(), "dashboard sign-in failed", slog.String("error", err.Error()))
		s.renderLogin(w, http.StatusServiceUnavailable, "The database is unavailable: try again shortly.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: id, Path: "/admin/", MaxAge: int(s.opts.SessionTTL / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: isHTTPS(r),
	})
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

// handleLogout ends the session on every instance and clears the cookie.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil && len(c.Value) == sessionIDLen {
		if err := s.store.DeleteAdminSession(r.Context(), sessionHash(c.Value)); err != nil {
			s.log.WarnContext(r.Context(), "dashboard sign-out failed", slog.String("error", err.Error()))
			s.renderLogin(w, http.StatusServiceUnavailable, "The database is unavailable: the session is still open; try again shortly.")
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/admin/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: isHTTPS(r)})
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

// isHTTPS tells whether the client reached us over TLS, directly or through a proxy that
// says so.
func isHTTPS(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (s *Server) handleDashboard(w http.ResponseWriter, r *http.Request) {
	b, err := dashboardFiles.ReadFile("dashboard/index.html")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b)
}

// OverviewEventType is the SSE event type of the dashboard feed's snapshots.
const OverviewEventType = "overview"

// handleDashboardLive streams the overview: the current one at once, then each change,
// while the session lasts (checked at each heartbeat).
func (s *Server) handleDashboardLive(w http.ResponseWriter, r *http.Request) {
	snaps, stop := s.dash.subscribe()
	defer stop()
	sw, rc, err := startEventStream(w)
	if err != nil || rc.Flush() != nil {
		return
	}
	heartbeat := time.NewTicker(s.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case b, ok := <-snaps:
			if !ok {
				return
			}
			if sw.WriteEvent(sse.Event{Type: OverviewEventType, Data: string(b)}) != nil || rc.Flush() != nil {
				return
			}
		case <-heartbeat.C:
			// A session that ended (signed out, expired) ends its feed too.
			if !s.dashboardAccess(r) || sw.WriteComment("") != nil || rc.Flush() != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// computeOverview is the dashboard feed's snapshot.
func (s *Server) computeOverview(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	o, err := s.overview(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(o)
}

func (s *Server) overviewFailed(err error) {
	s.log.Warn("dashboard overview failed", slog.String("error", err.Error()))
}
