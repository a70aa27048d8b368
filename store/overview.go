package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// hostExpr is the host of a stream's URL in SQL (no scheme, userinfo, port or path), lower
// case: what operators filter and group origins by.
const hostExpr = `lower(substring(s.url FROM '^[^:]+://(?:[^@/?#]*@)?(\[[^]]*\]|[^/:?#]*)'))`

// OriginSummary is one origin host whose streams are failing or cannot connect.
type OriginSummary struct {
	Host         string    `json:"host"`
	Held         int64     `json:"held"`         // streams held
	Disconnected int64     `json:"disconnected"` // of those, not connected now and with an error
	Failed       int64     `json:"failed"`       // streams that ended in failure
	LastError    string    `json:"last_error"`
	LastErrorAt  time.Time `json:"last_error_at"` // zero when no error was ever recorded
}

// failingOriginsSQL selects the failing origins, the most troubled first, as rows (host,
// held, disconnected, failed, last_error, last_error_at), at most limit of them (an
// expression).
func failingOriginsSQL(limit string) string {
	return `
		SELECT host, held, disconnected, failed, coalesce(last_error, '') AS last_error, last_error_at FROM (
			SELECT ` + hostExpr + ` AS host,
				count(*) FILTER (WHERE s.state = 'held') AS held,
				count(*) FILTER (WHERE s.state = 'held' AND NOT ` + connectedExpr + ` AND s.last_error <> '') AS disconnected,
				count(*) FILTER (WHERE s.state = 'failed') AS failed,
				(array_agg(s.last_error ORDER BY s.last_error_at DESC NULLS LAST))[1] AS last_error,
				max(s.last_error_at) AS last_error_at
			FROM streams s WHERE s.state IN ('held', 'failed')
			GROUP BY 1
		) o
		WHERE disconnected > 0 OR failed > 0
		ORDER BY disconnected + failed DESC, host
		LIMIT ` + limit
}

// FailingOrigins lists the origin hosts that have failed streams or held streams that are
// not connected after an error, the most troubled first.
func (s *Store) FailingOrigins(ctx context.Context, limit int) ([]OriginSummary, error) {
	rows, err := s.pool.Query(ctx, failingOriginsSQL("$1"), limit)
	if err != nil {
		return nil, fmt.Errorf("failing origins: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (OriginSummary, error) {
		var (
			o  OriginSummary
			at *time.Time
		)
		err := row.Scan(&o.Host, &o.Held, &o.Disconnected, &o.Failed, &o.LastError, &at)
		if at != nil {
			o.LastErrorAt = *at
		}
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("failing origins: %w", err)
	}
	return out, nil
}

// DeviceSummary is one device in an operator's listing: never its token.
type DeviceSummary struct {
	ID         string
	Platform   string
	CreatedAt  time.Time
	DeadAt     time.Time // zero while alive
	DeadReason string
	Streams    int64 // held
	Backlog    int64 // events queued on its streams
}

// DeadDevices lists the devices whose push token was reported dead, most recent first.
func (s *Store) DeadDevices(ctx context.Context, limit int) ([]DeviceSummary, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT d.id::text, d.platform, d.created_at, d.dead_at, coalesce(d.dead_reason, ''),
			count(s.id) FILTER (WHERE s.state = 'held'), coalesce(sum(`+backlogExpr+`), 0)
		FROM devices d LEFT JOIN streams s ON s.device_id = d.id
		WHERE d.dead_at IS NOT NULL
		GROUP BY d.id
		ORDER BY d.dead_at DESC, d.id
		LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("dead devices: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeviceSummary, error) {
		var d DeviceSummary
		err := row.Scan(&d.ID, &d.Platform, &d.CreatedAt, &d.DeadAt, &d.DeadReason, &d.Streams, &d.Backlog)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("dead devices: %w", err)
	}
	return out, nil
}

// RecentWakeup is a wake-up of any device, for the operators' feed.
type RecentWakeup struct {
	WakeupRecord
	DeviceID string
	Platform string
}

// RecentWakeups lists the latest wake-ups of all devices, newest first: finished ones by
// when they finished, outstanding ones first of all.
func (s *Store) RecentWakeups(ctx context.Context, limit int) ([]RecentWakeup, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+wakeupColumns+`, w.device_id::text, d.platform FROM (
			(SELECT * FROM wakeups WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT $1)
			UNION ALL
			(SELECT * FROM wakeups WHERE state IN ('pending', 'sending') ORDER BY due_at LIMIT $1)
		) w JOIN devices d ON d.id = w.device_id
		ORDER BY w.finished_at DESC NULLS FIRST, w.created_at DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("recent wake-ups: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RecentWakeup, error) {
		var w RecentWakeup
		err := scanWakeup(row, &w.WakeupRecord, &w.DeviceID, &w.Platform)
		return w, err
	})
	if err != nil {
		return nil, fmt.Errorf("recent wake-ups: %w", err)
	}
	return out, nil
}

// wakeupColumns are the columns scanWakeup reads, from wakeups aliased w.
const wakeupColumns = `w.id::text, w.state, w.urgent, w.created_at, w.due_at, w.sent_at, w.finished_at, w.attempts,
	w.outcome, w.error, w.pending_events`

// scanWakeup scans wakeupColumns into w, then any further columns into extra.
func scanWakeup(row pgx.Row, w *WakeupRecord, extra ...any) error {
	var sent, finish *time.Time
	dest := append([]any{&w.ID, &w.State, &w.Urgent, &w.CreatedAt, &w.DueAt, &sent, &finish, &w.Attempts, &w.Outcome, &w.Error, &w.Pending}, extra...)
	err := row.Scan(dest...)
	if sent != nil {
		w.SentAt = *sent
	}
	if finish != nil {
		w.FinishedAt = *finish
	}
	return err
}
