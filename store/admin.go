package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// Sort orders of ListStreams.
const (
	SortBacklog = "backlog" // largest backlog first
	SortAge     = "age"     // oldest unread event first
	SortErrors  = "errors"  // most recent upstream error first
)

// StreamFilter selects and orders streams for operators.
type StreamFilter struct {
	Sort  string // SortBacklog (default), SortAge, SortErrors
	State string // "" for any
	Host  string // origin host, "" for any
	// WithBacklog keeps only streams with unread events (cheaper for SortAge: the others
	// need no lookup of their oldest event).
	WithBacklog bool
	// IDs, when not nil, keeps only these streams.
	IDs   []string
	Limit int
	// After is the position to continue from: the Key of the last stream of the previous page.
	After *StreamKey
}

// StreamKey is a stream's position in a sorted listing (keyset pagination).
type StreamKey struct {
	Value int64  `json:"v"` // the sort value: backlog, oldest event (unix µs), or last error (unix µs)
	ID    string `json:"id"`
}

// StreamSummary is one row of an operator's listing. It holds no token, header or query.
type StreamSummary struct {
	ID            string
	DeviceID      string
	Host          string
	State         string
	StateReason   string
	Backlog       int64
	BacklogBytes  int64
	OldestEventAt time.Time // zero when the backlog is empty
	Upstream      struct {
		Status      int
		Connected   bool
		LastError   string
		LastErrorAt time.Time
	}
	CreatedAt time.Time
	Key       StreamKey
}

var sortExpr = map[string]string{
	SortBacklog: backlogExpr,
	// Oldest first: negate so that every order is "largest value first".
	SortAge:    `coalesce(-(extract(epoch FROM o.created_at) * 1e6)::bigint, -9223372036854775807)`,
	SortErrors: `coalesce((extract(epoch FROM s.last_error_at) * 1e6)::bigint, -9223372036854775807)`,
}

// ListStreams lists streams for operators, largest sort value first, by pages.
func (s *Store) ListStreams(ctx context.Context, f StreamFilter) ([]StreamSummary, error) {
	if f.Sort == "" {
		f.Sort = SortBacklog
	}
	expr, ok := sortExpr[f.Sort]
	if !ok {
		return nil, pushproxy.Errorf(pushproxy.EINVALID, "sort: must be backlog, age or errors")
	}
	if f.Limit <= 0 {
		f.Limit = 50
	}
	afterV, afterID := int64(0), ""
	if f.After != nil {
		afterV, afterID = f.After.Value, f.After.ID
		if !pushproxy.IsUUID(afterID) {
			return nil, pushproxy.Errorf(pushproxy.EINVALID, "cursor: not a cursor this API made")
		}
	}
	q := `
		SELECT * FROM (
			SELECT s.id::text, coalesce(s.device_id::text, ''), s.url, s.state, s.state_reason,
				` + backlogExpr + `, s.backlog_bytes, o.created_at, s.upstream_status, ` + connectedExpr + `, s.last_error,
				s.last_error_at, s.created_at, ` + expr + ` AS k
			FROM streams s
			LEFT JOIN LATERAL (SELECT e.created_at FROM events e WHERE e.stream_id = s.id AND e.seq > s.floor_seq
				ORDER BY e.seq LIMIT 1) o ON true
			WHERE ($1 = '' OR s.state = $1) AND (NOT $6 OR s.head_seq > s.floor_seq)
				AND ($2 = '' OR ` + hostExpr + ` = lower($2)) AND ($7::uuid[] IS NULL OR s.id = ANY($7::uuid[]))
		) x
		WHERE $3::text = '' OR (x.k, x.id) < ($4::bigint, $3::text)
		ORDER BY x.k DESC, x.id DESC
		LIMIT $5`
	var ids []string
	if f.IDs != nil {
		ids = make([]string, 0, len(f.IDs))
		for _, id := range f.IDs {
			if pushproxy.IsUUID(id) {
				ids = append(ids, id)
			}
		}
	}
	rows, err := s.pool.Query(ctx, q, f.State, f.Host, afterID, afterV, f.Limit, f.WithBacklog, ids)
	if err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StreamSummary, error) {
		var (
			r           StreamSummary
			rawURL      string
			oldest, lea *time.Time
		)
		err := row.Scan(&r.ID, &r.DeviceID, &rawURL, &r.State, &r.StateReason, &r.Backlog, &r.BacklogBytes, &oldest,
			&r.Upstream.Status, &r.Upstream.Connected, &r.Upstream.LastError, &lea, &r.CreatedAt, &r.Key.Value)
		if u, perr := url.Parse(rawURL); perr == nil {
			r.Host = u.Host
		}
		if oldest != nil {
			r.OldestEventAt = *oldest
		}
		if lea != nil {
			r.Upstream.LastErrorAt = *lea
		}
		r.Key.ID = r.ID
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	return out, nil
}

// Totals are the numbers an operator looks at first: the gauges the maintenance leader
// computes every few seconds (RefreshGauges), and the live instances.
type Totals struct {
	// ComputedAt is when the leader computed the gauges; zero before it first did (every
	// number below but InstancesAlive is then zero).
	ComputedAt      time.Time
	Streams         map[string]int64 // by state
	Connected       int64            // held streams whose upstream is connected
	BacklogEvents   int64
	BacklogBytes    int64
	OldestEventAt   time.Time // of all unread events; zero when none
	Devices         int64
	DeadDevices     int64
	WakeupsLastHour map[string]int64 // by outcome
	PendingWakeups  int64
	InstancesAlive  int64
	// LargestBacklogs and OldestBacklogs name the streams at the top of each order when the
	// gauges were computed (Gauges).
	LargestBacklogs, OldestBacklogs []string
	FailingOrigins                  []OriginSummary // the most troubled, as computed then
}

// GetTotals reads the totals: one row, however many streams there are (at 100,000 streams
// and a million events, computing them took 400 ms).
func (s *Store) GetTotals(ctx context.Context) (Totals, error) {
	t := Totals{Streams: map[string]int64{}, WakeupsLastHour: map[string]int64{}}
	for _, st := range []string{pushproxy.StateHeld, pushproxy.StateClosed, pushproxy.StateFailed} {
		t.Streams[st] = 0
	}
	g, ok, err := s.GetGauges(ctx)
	if err != nil {
		return t, fmt.Errorf("totals: %w", err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM instances WHERE expires_at > now()`).Scan(&t.InstancesAlive); err != nil {
		return t, fmt.Errorf("totals: %w", err)
	}
	if !ok {
		return t, nil
	}
	t.ComputedAt, t.Connected, t.BacklogEvents, t.BacklogBytes = g.ComputedAt, g.Connected, g.Events, g.Bytes
	maps.Copy(t.Streams, g.Streams)
	maps.Copy(t.WakeupsLastHour, g.WakeupsLastHour)
	t.Devices, t.DeadDevices, t.PendingWakeups = g.Devices, g.DeadDevices, g.PendingWakeups
	t.LargestBacklogs, t.OldestBacklogs, t.FailingOrigins = g.LargestBacklogs, g.OldestBacklogs, g.FailingOrigins
	if g.AgeCount > 0 {
		t.OldestEventAt = g.ComputedAt.Add(-time.Duration(g.OldestAge * float64(time.Second)))
	}
	return t, nil
}

// WakeupRecord is one wake-up in a device's history.
type WakeupRecord struct {
	ID         string
	State      string
	Urgent     bool
	CreatedAt  time.Time
	DueAt      time.Time
	SentAt     time.Time
	FinishedAt time.Time
	Attempts   int
	Outcome    string
	Error      string
	Pending    int64
}

// DeviceView is a device as operators see it: never its token.
type DeviceView struct {
	ID          string
	Platform    string
	Topic       string
	Environment string
	CreatedAt   time.Time
	Wake        pushproxy.WakeState
	Streams     []string
	History     []WakeupRecord // newest first
}

// GetDevice returns a device with its streams and its last wake-ups.
func (s *Store) GetDevice(ctx context.Context, id string, history int) (DeviceView, error) {
	var d DeviceView
	if !pushproxy.IsUUID(id) {
		return d, pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", id)
	}
	ws, err := s.DeviceWakeState(ctx, id)
	if err != nil {
		return d, err
	}
	d.Wake = ws
	err = s.pool.QueryRow(ctx, `
		SELECT id::text, platform, topic, environment, created_at,
			coalesce((SELECT array_agg(s.id::text ORDER BY s.created_at) FROM streams s WHERE s.device_id = d.id), '{}')
		FROM devices d WHERE id = $1`, id).Scan(&d.ID, &d.Platform, &d.Topic, &d.Environment, &d.CreatedAt, &d.Streams)
	if err != nil {
		return d, fmt.Errorf("get device: %w", err)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT `+wakeupColumns+` FROM wakeups w WHERE w.device_id = $1 ORDER BY w.created_at DESC LIMIT $2`, id, history)
	if err != nil {
		return d, fmt.Errorf("device wake-ups: %w", err)
	}
	d.History, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (WakeupRecord, error) {
		var w WakeupRecord
		err := scanWakeup(row, &w)
		return w, err
	})
	if err != nil {
		return d, fmt.Errorf("device wake-ups: %w", err)
	}
	return d, nil
}

// ForgetDevice deletes a device whose token was reported dead, with its wake-up history; its
// streams still held are failed. A live device is a conflict: forgetting it would silently
// stop its wake-ups.
func (s *Store) ForgetDevice(ctx context.Context, id string) error {
	if !pushproxy.IsUUID(id) {
		return pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", id)
	}
	return s.lockingTx(ctx, func(tx pgx.Tx) error {
		var dead bool
		err := tx.QueryRow(ctx, `SELECT dead_at IS NOT NULL FROM devices WHERE id = $1 FOR UPDATE`, id).Scan(&dead)
		if errors.Is(err, pgx.ErrNoRows) {
			return pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", id)
		}
		if err != nil {
			return fmt.Errorf("forget device: %w", err)
		}
		if !dead {
			return pushproxy.Errorf(pushproxy.ECONFLICT, "the device's push token is not dead: only dead devices are forgotten")
		}
		_, err = tx.Exec(ctx, `
			WITH f AS (
				UPDATE streams SET state = 'failed', state_reason = 'the device was forgotten by an operator',
					lease_owner = NULL, connected = false, closed_at = now(), updated_at = now()
				WHERE device_id = $1 AND state = 'held' RETURNING id::text
			)
			SELECT pushproxy_notify_readers(array_agg(id)) FROM f`, id)
		if err != nil {
			return fmt.Errorf("forget device: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE id = $1`, id); err != nil {
			return fmt.Errorf("forget device: %w", err)
		}
		return nil
	})
}

// WakeNow makes a device's wake-up due at once: an outstanding one is pulled in; otherwise
// one is queued if the device is asleep, alive, and has events not delivered (ignoring the
// debounce and the wait for a read; the platform budget still applies). It reports whether
// a wake-up is due now.
func (s *Store) WakeNow(ctx context.Context, deviceID string) (bool, error) {
	if !pushproxy.IsUUID(deviceID) {
		return false, pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", deviceID)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE wakeups SET due_at = least(due_at, now()) WHERE device_id = $1 AND state = 'pending'`, deviceID)
	if err != nil {
		return false, fmt.Errorf("wake now: %w", err)
	}
	if tag.RowsAffected() > 0 {
		return true, nil
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)`, deviceID).Scan(&exists); err != nil {
		return false, fmt.Errorf("wake now: %w", err)
	}
	if !exists {
		return false, pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", deviceID)
	}
	// No debounce, no jitter, and no wait for a read (awaiting_since + 0 is in the past).
	return s.ScheduleWakeup(ctx, deviceID, &WakePolicy{})
}
