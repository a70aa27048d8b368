package api

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

const maxAdminPage = 500

// adminRoutes mounts the operators' API, behind the admin token.
func (s *Server) adminRoutes(r chi.Router) {
	r.Use(s.requireAdmin)
	r.Get("/streams", s.handleAdminStreams)
	r.Get("/streams/{id}", s.handleAdminStream)
	r.Post("/streams/{id}/close", s.handleAdminCloseStream)
	r.Get("/totals", s.handleAdminTotals)
	r.Get("/origins", s.handleAdminOrigins)
	r.Get("/devices", s.handleAdminDevices)
	r.Get("/wakeups", s.handleAdminWakeups)
	r.Get("/overview", s.handleAdminOverview)
	r.Get("/devices/{id}", s.handleAdminDevice)
	r.Post("/devices/{id}/wake", s.handleAdminWake)
	r.Delete("/devices/{id}", s.handleAdminForget)
}

// handleAdminStream is GET /v1/streams/{id} without the stream token.
func (s *Server) handleAdminStream(w http.ResponseWriter, r *http.Request) {
	st, err := s.store.GetStream(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeStream(w, r, st)
}

func (s *Server) handleAdminCloseStream(w http.ResponseWriter, r *http.Request) {
	s.closeStream(w, r, chi.URLParam(r, "id"))
}

type adminWakeup struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	Urgent     bool       `json:"urgent"`
	CreatedAt  time.Time  `json:"created_at"`
	DueAt      time.Time  `json:"due_at"`
	SentAt     *time.Time `json:"sent_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Attempts   int        `json:"attempts"`
	Outcome    string     `json:"outcome"`
	Error      string     `json:"error,omitempty"`
	Pending    int64      `json:"pending_events"`
}

type adminDevice struct {
	ID          string        `json:"id"`
	Platform    string        `json:"platform"`
	Topic       string        `json:"topic,omitempty"`
	Environment string        `json:"environment,omitempty"`
	CreatedAt   time.Time     `json:"created_at"`
	Wake        *wakeResponse `json:"wake"`
	Streams     []string      `json:"streams"`
	Wakeups     []adminWakeup `json:"wakeups"`
}

func (s *Server) handleAdminDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.store.GetDevice(r.Context(), chi.URLParam(r, "id"), 50)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := adminDevice{ID: d.ID, Platform: d.Platform, Topic: d.Topic, Environment: d.Environment, CreatedAt: d.CreatedAt,
		Wake: toWakeResponse(d.Wake), Streams: d.Streams, Wakeups: []adminWakeup{}}
	for _, h := range d.History {
		out.Wakeups = append(out.Wakeups, toAdminWakeup(h))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleAdminWake(w http.ResponseWriter, r *http.Request) {
	due, err := s.store.WakeNow(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.svc.Kick()
	writeJSON(w, http.StatusAccepted, map[string]bool{"wakeup_due": due})
}

func (s *Server) handleAdminForget(w http.ResponseWriter, r *http.Request) {
	if err := s.store.ForgetDevice(r.Context(), chi.URLParam(r, "id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// isAdminToken tells whether tok is the configured admin token (never when there is none).
func (s *Server) isAdminToken(tok string) bool {
	return s.opts.AdminToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.AdminToken)) == 1
}

// requireAdmin lets through requests bearing the admin token. With no token configured the
// admin API is off.
func (s *Server) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.AdminToken == "" {
			writeProblem(w, http.StatusForbidden, pushproxy.EFORBIDDEN, "the admin API is off: start the proxy with --admin-token (PUSHPROXY_ADMIN_TOKEN)")
			return
		}
		tok, ok := bearer(r)
		if !ok {
			writeProblem(w, http.StatusUnauthorized, pushproxy.EUNAUTHORIZED, "the admin token is required: Authorization: Bearer <token>")
			return
		}
		if !s.isAdminToken(tok) {
			writeProblem(w, http.StatusUnauthorized, pushproxy.EUNAUTHORIZED, "the admin token is not valid")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type adminStream struct {
	ID            string     `json:"id"`
	DeviceID      string     `json:"device_id,omitempty"`
	Host          string     `json:"host"`
	State         string     `json:"state"`
	StateReason   string     `json:"state_reason,omitempty"`
	Backlog       int64      `json:"backlog"`
	BacklogBytes  int64      `json:"backlog_bytes"`
	OldestEventAt *time.Time `json:"oldest_event_at"`
	Upstream      struct {
		Status      int        `json:"status"`
		Connected   bool       `json:"connected"`
		LastError   string     `json:"last_error,omitempty"`
		LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	} `json:"upstream"`
	CreatedAt time.Time `json:"created_at"`
}

type adminStreamsPage struct {
	Streams    []adminStream `json:"streams"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

func (s *Server) handleAdminStreams(w http.ResponseWriter, r *http.Request) {
	f, err := parseStreamsQuery(r.URL.Query())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rows, err := s.store.ListStreams(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	page := adminStreamsPage{Streams: make([]adminStream, 0, len(rows))}
	for _, row := range rows {
		page.Streams = append(page.Streams, toAdminStream(row))
	}
	if len(rows) == f.Limit {
		b, _ := json.Marshal(rows[len(rows)-1].Key)
		page.NextCursor = base64.RawURLEncoding.EncodeToString(b)
	}
	writeJSON(w, http.StatusOK, page)
}

type adminTotals struct {
	ComputedAt      *time.Time       `json:"computed_at"`
	Streams         map[string]int64 `json:"streams"`
	Connected       int64            `json:"upstreams_connected"`
	BacklogEvents   int64            `json:"backlog_events"`
	BacklogBytes    int64            `json:"backlog_bytes"`
	OldestEventAt   *time.Time       `json:"oldest_event_at"`
	Devices         int64            `json:"devices"`
	DeadDevices     int64            `json:"dead_devices"`
	PendingWakeups  int64            `json:"pending_wakeups"`
	WakeupsLastHour map[string]int64 `json:"wakeups_last_hour"`
	InstancesAlive  int64            `json:"instances_alive"`
}

func (s *Server) handleAdminTotals(w http.ResponseWriter, r *http.Request) {
	t, err := s.store.GetTotals(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toAdminTotals(t))
}

func toAdminTotals(t store.Totals) adminTotals {
	return adminTotals{
		ComputedAt: timePtr(t.ComputedAt), Streams: t.Streams, Connected: t.Connected, BacklogEvents: t.BacklogEvents, BacklogBytes: t.BacklogBytes, OldestEventAt: timePtr(t.OldestEventAt),
		Devices: t.Devices, DeadDevices: t.DeadDevices, PendingWakeups: t.PendingWakeups, WakeupsLastHour: t.WakeupsLastHour,
		InstancesAlive: t.InstancesAlive,
	}
}

func toAdminStream(row store.StreamSummary) adminStream {
	a := adminStream{ID: row.ID, DeviceID: row.DeviceID, Host: row.Host, State: row.State, StateReason: row.StateReason,
		Backlog: row.Backlog, BacklogBytes: row.BacklogBytes, OldestEventAt: timePtr(row.OldestEventAt), CreatedAt: row.CreatedAt}
	a.Upstream.Status, a.Upstream.Connected, a.Upstream.LastError = row.Upstream.Status, row.Upstream.Connected, row.Upstream.LastError
	a.Upstream.LastErrorAt = timePtr(row.Upstream.LastErrorAt)
	return a
}

func toAdminWakeup(h store.WakeupRecord) adminWakeup {
	return adminWakeup{ID: h.ID, State: h.State, Urgent: h.Urgent, CreatedAt: h.CreatedAt, DueAt: h.DueAt,
		SentAt: timePtr(h.SentAt), FinishedAt: timePtr(h.FinishedAt), Attempts: h.Attempts, Outcome: h.Outcome, Error: h.Error, Pending: h.Pending}
}

// parseStreamsQuery reads the query of GET /v1/admin/streams: state, sort, host, limit and
// cursor.
func parseStreamsQuery(q url.Values) (store.StreamFilter, error) {
	f := store.StreamFilter{Sort: q.Get("sort"), State: q.Get("state"), Host: q.Get("host"), Limit: 50}
	switch f.State {
	case "", pushproxy.StateHeld, pushproxy.StateClosed, pushproxy.StateFailed:
	default:
		return f, invalid("state: must be held, closed or failed")
	}
	switch f.Sort {
	case "", store.SortBacklog, store.SortAge, store.SortErrors:
	default:
		return f, invalid("sort: must be %s, %s or %s", store.SortBacklog, store.SortAge, store.SortErrors)
	}
	if !cleanText(f.Host) || len(f.Host) > maxURLLength {
		return f, invalid("host: must be a host name: UTF-8 text without control characters, at most %d bytes", maxURLLength)
	}
	var err error
	if f.Limit, err = parseLimit(q.Get("limit"), 50, maxAdminPage); err != nil {
		return f, err
	}
	if c := q.Get("cursor"); c != "" {
		var k store.StreamKey
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || json.Unmarshal(b, &k) != nil || !pushproxy.IsUUID(k.ID) {
			return f, invalid("cursor: not a cursor this API made")
		}
		f.After = &k
	}
	return f, nil
}

// limitParam reads ?limit=, from 1 to maxAdminPage, def when absent.
func limitParam(r *http.Request, def int) (int, error) {
	return parseLimit(r.URL.Query().Get("limit"), def, maxAdminPage)
}

// parseLimit reads a page size from 1 to most, def when v is empty.
func parseLimit(v string, def, most int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, invalid("limit: must be an integer from 1 to %d", most)
	}
	return n, nil
}

type adminOrigin struct {
	Host         string     `json:"host"`
	Held         int64      `json:"held"`
	Disconnected int64      `json:"disconnected"`
	Failed       int64      `json:"failed"`
	LastError    string     `json:"last_error,omitempty"`
	LastErrorAt  *time.Time `json:"last_error_at"`
}

type adminDeviceSummary struct {
	ID         string     `json:"id"`
	Platform   string     `json:"platform"`
	CreatedAt  time.Time  `json:"created_at"`
	DeadAt     *time.Time `json:"dead_at"`
	DeadReason string     `json:"dead_reason,omitempty"`
	Streams    int64      `json:"held_streams"`
	Backlog    int64      `json:"backlog"`
}

type adminRecentWakeup struct {
	adminWakeup
	DeviceID string `json:"device_id"`
	Platform string `json:"platform"`
}

// overview is everything the dashboard shows, in one document.
type overview struct {
	Totals          adminTotals          `json:"totals"`
	LargestBacklogs []adminStream        `json:"largest_backlogs"`
	OldestBacklogs  []adminStream        `json:"oldest_backlogs"`
	FailingOrigins  []adminOrigin        `json:"failing_origins"`
	DeadDevices     []adminDeviceSummary `json:"dead_devices"`
	RecentWakeups   []adminRecentWakeup  `json:"recent_wakeups"`
}

// overviewRows bounds each list of the overview.
const overviewRows = 10

func (s *Server) failingOrigins(ctx context.Context, limit int) ([]adminOrigin, error) {
	rows, err := s.store.FailingOrigins(ctx, limit)
	return toAdminOrigins(rows), err
}

func toAdminOrigins(rows []store.OriginSummary) []adminOrigin {
	out := make([]adminOrigin, 0, len(rows))
	for _, o := range rows {
		out = append(out, adminOrigin{Host: o.Host, Held: o.Held, Disconnected: o.Disconnected, Failed: o.Failed,
			LastError: o.LastError, LastErrorAt: timePtr(o.LastErrorAt)})
	}
	return out
}

func (s *Server) deadDevices(ctx context.Context, limit int) ([]adminDeviceSummary, error) {
	rows, err := s.store.DeadDevices(ctx, limit)
	out := make([]adminDeviceSummary, 0, len(rows))
	for _, d := range rows {
		out = append(out, adminDeviceSummary{ID: d.ID, Platform: d.Platform, CreatedAt: d.CreatedAt, DeadAt: timePtr(d.DeadAt),
			DeadReason: d.DeadReason, Streams: d.Streams, Backlog: d.Backlog})
	}
	return out, err
}

func (s *Server) recentWakeups(ctx context.Context, limit int) ([]adminRecentWakeup, error) {
	rows, err := s.store.RecentWakeups(ctx, limit)
	out := make([]adminRecentWakeup, 0, len(rows))
	for _, w := range rows {
		out = append(out, adminRecentWakeup{adminWakeup: toAdminWakeup(w.WakeupRecord), DeviceID: w.DeviceID, Platform: w.Platform})
	}
	return out, err
}

// topStreams lists, in sort order and as they are now, the streams of ids (the top of that
// order when the gauges were computed) that still have a backlog. Finding the top itself
// reads every stream with a backlog (0.2 s by backlog, 0.7 s by age at 100,000 streams and a
// million events): the maintenance leader does that, once for all instances and dashboards.
func (s *Server) topStreams(ctx context.Context, sort string, ids []string) ([]adminStream, error) {
	if len(ids) == 0 {
		return []adminStream{}, nil
	}
	rows, err := s.store.ListStreams(ctx, store.StreamFilter{Sort: sort, Limit: overviewRows, WithBacklog: true, IDs: ids})
	out := make([]adminStream, 0, len(rows))
	for _, row := range rows {
		out = append(out, toAdminStream(row))
	}
	return out, err
}

func (s *Server) overview(ctx context.Context) (overview, error) {
	var (
		o   overview
		err error
	)
	t, err := s.store.GetTotals(ctx)
	if err != nil {
		return o, err
	}
	o.Totals = toAdminTotals(t)
	if o.LargestBacklogs, err = s.topStreams(ctx, store.SortBacklog, t.LargestBacklogs); err != nil {
		return o, err
	}
	if o.OldestBacklogs, err = s.topStreams(ctx, store.SortAge, t.OldestBacklogs); err != nil {
		return o, err
	}
	o.FailingOrigins = toAdminOrigins(t.FailingOrigins)
	if o.DeadDevices, err = s.deadDevices(ctx, overviewRows); err != nil {
		return o, err
	}
	o.RecentWakeups, err = s.recentWakeups(ctx, overviewRows)
	return o, err
}

// listHandler serves a list from one of the functions above as {"<key>": [...]}.
func listHandler[T any](s *Server, key string, list func(context.Context, int) ([]T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		limit, err := limitParam(r, 50)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		rows, err := list(r.Context(), limit)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string][]T{key: rows})
	}
}

func (s *Server) handleAdminOrigins(w http.ResponseWriter, r *http.Request) {
	listHandler(s, "origins", s.failingOrigins)(w, r)
}

// handleAdminDevices lists devices; only the dead ones (?state=dead) so far.
func (s *Server) handleAdminDevices(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("state") != "dead" {
		s.writeError(w, r, invalid("state: must be dead (only dead devices are listed)"))
		return
	}
	listHandler(s, "devices", s.deadDevices)(w, r)
}

func (s *Server) handleAdminWakeups(w http.ResponseWriter, r *http.Request) {
	listHandler(s, "wakeups", s.recentWakeups)(w, r)
}

func (s *Server) handleAdminOverview(w http.ResponseWriter, r *http.Request) {
	o, err := s.overview(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}
