package store

import (
	"context"
	"fmt"
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
	SortBacklog: `s.head_seq - s.floor_seq`,
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
				s.head_seq - s.floor_seq, o.created_at, s.upstream_status, s.connected, s.last_error,
				s.last_error_at, s.created_at, ` + expr + ` AS k
			FROM streams s
			LEFT JOIN LATERAL (SELECT e.created_at FROM events e WHERE e.stream_id = s.id AND e.seq > s.floor_seq
				ORDER BY e.seq LIMIT 1) o ON true
			WHERE ($1 = '' OR s.state = $1)
				AND ($2 = '' OR lower(substring(s.url FROM '^[a-z]+://([^/:?#]+)')) = lower($2))
		) x
		WHERE $3::text = '' OR (x.k, x.id) < ($4::bigint, $3::text)
		ORDER BY x.k DESC, x.id DESC
		LIMIT $5`
	rows, err := s.pool.Query(ctx, q, f.State, f.Host, afterID, afterV, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StreamSummary, error) {
		var (
			r           StreamSummary
			rawURL      string
			oldest, lea *time.Time
		)
		err := row.Scan(&r.ID, &r.DeviceID, &rawURL, &r.State, &r.StateReason, &r.Backlog, &oldest,
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

// Totals are the numbers an operator looks at first.
type Totals struct {
	Streams         map[string]int64 // by state
	Connected       int64            // held streams whose upstream is connected
	BacklogEvents   int64
	OldestEventAt   time.Time // of all unread events; zero when none
	Devices         int64
	DeadDevices     int64
	WakeupsLastHour map[string]int64 // by outcome
	PendingWakeups  int64
	InstancesAlive  int64
}

// GetTotals computes the totals.
func (s *Store) GetTotals(ctx context.Context) (Totals, error) {
	t := Totals{Streams: map[string]int64{}, WakeupsLastHour: map[string]int64{}}
	for _, st := range []string{pushproxy.StateHeld, pushproxy.StateClosed, pushproxy.StateFailed} {
		t.Streams[st] = 0
	}
	var oldest *time.Time
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT state, count(*) FROM streams GROUP BY state`)
		if err != nil {
			return err
		}
		var (
			k string
			n int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&k, &n}, func() error { t.Streams[k] = n; return nil }); err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `
			SELECT
				(SELECT count(*) FROM streams WHERE state = 'held' AND connected),
				(SELECT coalesce(sum(head_seq - floor_seq), 0) FROM streams),
				(SELECT min(e.created_at) FROM streams s JOIN events e ON e.stream_id = s.id AND e.seq = s.floor_seq + 1
					WHERE s.head_seq > s.floor_seq),
				(SELECT count(*) FROM devices),
				(SELECT count(*) FROM devices WHERE dead_at IS NOT NULL),
				(SELECT count(*) FROM wakeups WHERE state IN ('pending', 'sending')),
				(SELECT count(*) FROM instances WHERE expires_at > now())`).Scan(
			&t.Connected, &t.BacklogEvents, &oldest, &t.Devices, &t.DeadDevices, &t.PendingWakeups, &t.InstancesAlive)
		if err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT outcome, count(*) FROM wakeups WHERE finished_at > now() - interval '1 hour' GROUP BY outcome`)
		if err != nil {
			return err
		}
		_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error { t.WakeupsLastHour[k] = n; return nil })
		return err
	})
	if err != nil {
		return t, fmt.Errorf("totals: %w", err)
	}
	if oldest != nil {
		t.OldestEventAt = *oldest
	}
	return t, nil
}
