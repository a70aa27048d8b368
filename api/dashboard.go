package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"embed"
	"encoding/hex"
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
// in a login form and keeps a session cookie: an HMAC of a fixed label under the admin token.
// Every instance sharing the token accepts it, and changing the token logs everyone out.
// Requests with the token as a Bearer header are served too (scripts, tests).

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

// sessionValue is the cookie value that proves the admin token was given ("" without one).
func sessionValue(adminToken string) string {
	if adminToken == "" {
		return ""
	}
	m := hmac.New(sha256.New, []byte(adminToken))
	m.Write([]byte(sessionLabel))
	return hex.EncodeToString(m.Sum(nil))
}

// dashboardAccess tells whether r carries the admin token (Bearer) or a session cookie.
func (s *Server) dashboardAccess(r *http.Request) bool {
	if s.opts.AdminToken == "" {
		return false
	}
	if tok, ok := bearer(r); ok {
		return s.isAdminToken(tok)
	}
	c, err := r.Cookie(sessionCookie)
	return err == nil && hmac.Equal([]byte(c.Value), []byte(s.session))
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
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: s.session, Path: "/admin/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: isHTTPS(r),
	})
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
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

// handleDashboardLive streams the overview: the current one at once, then each change.
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
			if sw.WriteComment("") != nil || rc.Flush() != nil {
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
