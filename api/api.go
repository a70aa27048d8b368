package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.RequestID)
	r.Use(s.logRequests)
	r.Use(s.recoverer)
	r.Use(checkRequest)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, pushproxy.ENOTFOUND, "no such route: "+r.Method+" "+r.URL.Path)
	})
	routes := &routeTable{mux: r}
	r.MethodNotAllowed(methodNotAllowed(routes))
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.handleReady)
	r.Route("/v1/streams", func(r chi.Router) {
		if cors := newCORS(s.opts.CORSOrigins); cors != nil {
			r.Use(cors)
			for _, p := range []string{"/", "/{id}", "/{id}/events"} {
				r.Options(p, preflight(routes))
			}
		}
		r.Post("/", s.handleHandoff)
		r.Get("/{id}", s.handleGetStream)
		r.Delete("/{id}", s.handleCloseStream)
		r.Get("/{id}/events", s.handleEvents)
	})
	r.Get("/v1/openapi.yaml", handleOpenAPI)
	r.Route("/v1/webpush", func(r chi.Router) {
		if cors := newCORS(s.opts.CORSOrigins); cors != nil {
			r.Use(cors)
			r.Options("/vapid-public-key", preflight(routes))
		}
		r.Get("/vapid-public-key", s.handleVAPIDPublicKey)
	})
	r.Route("/v1/admin", s.adminRoutes)
	r.Get("/admin", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/admin/", http.StatusMovedPermanently)
	})
	r.Route("/admin", s.dashboardRoutes)
	return r
}

func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		return rc.RoutePattern()
	}
	return "unmatched"
}

// logRequests logs every request with its request id, route pattern, status and duration,
// and counts it in the metrics. It never logs the path or the query: they carry stream ids
// and tokens (events_url has ?token=).
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		defer func() {
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			route, took := routePattern(r), time.Since(start)
			s.opts.Metrics.Request(route, r.Method, status, took)
			lvl := slog.LevelDebug
			if status >= 500 {
				lvl = slog.LevelError
			}
			s.log.Log(r.Context(), lvl, "request",
				slog.String("request_id", middleware.GetReqID(r.Context())),
				slog.String("method", r.Method), slog.String("route", route),
				slog.Int("status", status), slog.Duration("took", took), slog.Int("bytes", ww.BytesWritten()))
		}()
		next.ServeHTTP(ww, r)
	})
}

// recoverer turns a panic into a 500 problem and a log line (never the process).
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "handler panicked", "route", routePattern(r), "panic", v)
				writeProblem(w, http.StatusInternalServerError, pushproxy.EINTERNAL, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		writeProblem(w, http.StatusServiceUnavailable, pushproxy.EUNAVAILABLE, "database unreachable")
		return
	}
	if s.svc.Stopped() {
		writeProblem(w, http.StatusServiceUnavailable, pushproxy.EUNAVAILABLE, "shutting down")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "instance": s.svc.InstanceID(), "held_streams": s.svc.Held()})
}

// bearer returns the token of an "Authorization: Bearer" header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// checkAPIKey checks the handoff's API key and returns it ("" when none is required).
func (s *Server) checkAPIKey(r *http.Request) (string, error) {
	if len(s.opts.APIKeys) == 0 {
		return "", nil
	}
	tok, ok := bearer(r)
	if !ok {
		return "", pushproxy.Errorf(pushproxy.EUNAUTHORIZED, "an API key is required: Authorization: Bearer <key>")
	}
	for _, k := range s.opts.APIKeys {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(k)) == 1 {
			return k, nil
		}
	}
	return "", pushproxy.Errorf(pushproxy.EUNAUTHORIZED, "the API key is not valid")
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// handoffResponse is the body of 201 Created.
type handoffResponse struct {
	ID        string `json:"id"`
	Token     string `json:"token"`
	EventsURL string `json:"events_url"`
	State     string `json:"state"`
	// DeviceSecret is the device's new secret, answered once: by the handoff that created
	// the device (or gave a device of an older release its first secret).
	DeviceSecret string `json:"device_secret,omitempty"`
}

func (s *Server) handleHandoff(w http.ResponseWriter, r *http.Request) {
	key, err := s.admitHandoff(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeProblem(w, http.StatusUnsupportedMediaType, "unsupported-media-type", "the body must be application/json")
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	h, err := parseHandoff(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if h.Push != nil && h.Push.Platform == pushproxy.PlatformWebPush {
		if err := s.opts.WebPushEndpoints.Check(h.Push.Token); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := s.svc.CheckUpstream(ctx, h.URL); err != nil {
		s.writeError(w, r, err)
		return
	}
	tok := newToken()
	ns := store.NewStream{
		URL:          h.URL.String(),
		Headers:      h.Headers,
		ResumeID:     h.LastEventID,
		TokenHash:    hashToken(tok),
		Push:         h.Push,
		UrgentEvents: h.UrgentEvents,
		CompactBy:    h.CompactBy,
		APIKeyHash:   keyHash(key),
	}
	var issued string // a new device secret, answered if the handoff creates the device
	if h.Push != nil {
		if h.DeviceSecret != "" {
			ns.DeviceSecretHash, ns.DeviceSecretGiven = hashToken(h.DeviceSecret), true
		} else {
			issued = newDeviceSecret()
			ns.DeviceSecretHash = hashToken(issued)
		}
	}
	st, err := s.svc.Handoff(r.Context(), ns)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/streams/"+st.ID)
	writeJSON(w, http.StatusCreated, handoffResponse{
		ID:           st.ID,
		Token:        tok,
		EventsURL:    "/v1/streams/" + st.ID + "/events?token=" + url.QueryEscape(tok),
		State:        st.State,
		DeviceSecret: issued,
	})
}

// handleVAPIDPublicKey answers the application server key a web app subscribes with
// (pushManager.subscribe({applicationServerKey})), base64url without padding.
func (s *Server) handleVAPIDPublicKey(w http.ResponseWriter, r *http.Request) {
	if s.opts.VAPIDPublicKey == "" {
		writeProblem(w, http.StatusNotFound, pushproxy.ENOTFOUND, "this proxy sends no Web Push (no VAPID key configured)")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"vapid_public_key": s.opts.VAPIDPublicKey})
}

// authorizedStream loads the stream named in the route and checks the stream token (Bearer
// header, or ?token= for EventSource, which cannot set headers).
func (s *Server) authorizedStream(r *http.Request) (pushproxy.Stream, error) {
	id := chi.URLParam(r, "id")
	tok, ok := bearer(r)
	if !ok {
		tok = r.URL.Query().Get("token")
	}
	st, err := s.store.GetStream(r.Context(), id)
	if err != nil {
		return st, err
	}
	if tok == "" {
		return st, pushproxy.Errorf(pushproxy.EUNAUTHORIZED, "the stream token is required: Authorization: Bearer <token> or ?token=")
	}
	if subtle.ConstantTimeCompare(hashToken(tok), st.TokenHash) != 1 {
		return st, pushproxy.Errorf(pushproxy.EUNAUTHORIZED, "the stream token is not valid for this stream")
	}
	return st, nil
}

// streamResponse is the body of GET /v1/streams/{id}.
type streamResponse struct {
	ID            string           `json:"id"`
	URL           string           `json:"url"`
	State         string           `json:"state"`
	StateReason   string           `json:"state_reason,omitempty"`
	Backlog       int64            `json:"backlog"`
	NewestEventID *string          `json:"newest_event_id"`
	AckedEventID  string           `json:"acked_event_id"`
	ResumeEventID string           `json:"upstream_last_event_id"`
	Upstream      upstreamResponse `json:"upstream"`
	HasPush       bool             `json:"has_push"`
	UrgentEvents  []string         `json:"urgent_events"`
	Wake          *wakeResponse    `json:"wake,omitempty"`
	Compact       *compactRequest  `json:"compact"` // null: no compaction
	CreatedAt     time.Time        `json:"created_at"`
	ClosedAt      *time.Time       `json:"closed_at,omitempty"`
}

// wakeResponse is the device's wake-up state.
type wakeResponse struct {
	LastPushAt     *time.Time `json:"last_push_at"`
	LastOutcome    string     `json:"last_outcome"`
	LastError      string     `json:"last_error,omitempty"`
	NextPushAt     *time.Time `json:"next_push_at"`
	AwaitingRead   bool       `json:"awaiting_read"`
	ThrottledUntil *time.Time `json:"throttled_until,omitempty"`
	DeadAt         *time.Time `json:"dead_at,omitempty"`
	DeadReason     string     `json:"dead_reason,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func toWakeResponse(ws pushproxy.WakeState) *wakeResponse {
	return &wakeResponse{
		LastPushAt: timePtr(ws.LastPushAt), LastOutcome: ws.LastOutcome, LastError: ws.LastError,
		NextPushAt: timePtr(ws.NextPushAt), AwaitingRead: ws.Awaiting, ThrottledUntil: timePtr(ws.ThrottledTill),
		DeadAt: timePtr(ws.DeadAt), DeadReason: ws.DeadReason,
	}
}

type upstreamResponse struct {
	Status      int        `json:"status"`
	Connected   bool       `json:"connected"`
	Connects    int64      `json:"connects"`
	RetryMS     *int64     `json:"retry_ms"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

func toStreamResponse(st pushproxy.Stream) streamResponse {
	resp := streamResponse{
		ID: st.ID, URL: store.WithoutQuery(st.URL), State: st.State, StateReason: st.StateReason,
		Backlog: st.Backlog(), AckedEventID: st.AckedID, ResumeEventID: st.ResumeID,
		HasPush: st.DeviceID != "", CreatedAt: st.CreatedAt, UrgentEvents: st.UrgentEvents,
		Upstream: upstreamResponse{Status: st.UpstreamStatus, Connected: st.Connected, Connects: st.Connects, LastError: st.LastError},
	}
	if st.CompactBy != "" {
		resp.Compact = &compactRequest{By: st.CompactBy}
	}
	if st.Backlog() > 0 {
		resp.NewestEventID = &st.NewestID
	}
	if st.RetryMS >= 0 {
		resp.Upstream.RetryMS = &st.RetryMS
	}
	if !st.LastErrorAt.IsZero() {
		resp.Upstream.LastErrorAt = &st.LastErrorAt
	}
	if !st.ClosedAt.IsZero() {
		resp.ClosedAt = &st.ClosedAt
	}
	return resp
}

func (s *Server) handleGetStream(w http.ResponseWriter, r *http.Request) {
	st, err := s.authorizedStream(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeStream(w, r, st)
}

// writeStream answers a stream with its device's wake-up state.
func (s *Server) writeStream(w http.ResponseWriter, r *http.Request, st pushproxy.Stream) {
	resp := toStreamResponse(st)
	if st.DeviceID != "" {
		ws, err := s.store.DeviceWakeState(r.Context(), st.DeviceID)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		resp.Wake = toWakeResponse(ws)
	}
	writeJSON(w, http.StatusOK, resp)
}

// closeResponse is the body of DELETE /v1/streams/{id}.
type closeResponse struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// LastEventID is what the device reconnects to the origin with: the id it acknowledged,
	// so the origin replays whatever the device had not read.
	LastEventID string `json:"last_event_id"`
	// UpstreamLastEventID is the newest id the proxy had received from the origin.
	UpstreamLastEventID string `json:"upstream_last_event_id"`
	// Discarded counts queued events dropped unread.
	Discarded int64 `json:"discarded"`
}

func (s *Server) handleCloseStream(w http.ResponseWriter, r *http.Request) {
	st, err := s.authorizedStream(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// A Last-Event-ID (header or query) acknowledges what the device read before the close.
	id, ok, err := lastEventID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ok {
		if _, err := s.store.ResumeRead(r.Context(), st.ID, &st, id, true); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	s.closeStream(w, r, st.ID)
}

// closeStream stops holding a stream, drops its backlog, and answers where to resume the
// origin.
func (s *Server) closeStream(w http.ResponseWriter, r *http.Request, id string) {
	res, err := s.svc.CloseStream(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, closeResponse{
		ID: res.Stream.ID, State: res.Stream.State, LastEventID: res.Stream.AckedID,
		UpstreamLastEventID: res.Stream.ResumeID, Discarded: res.Discarded,
	})
}
