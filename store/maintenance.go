package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// The maintenance statements: every one touches at most a batch of rows, finds them by an
// index, takes row locks with SKIP LOCKED (a commit or a request holding a stream's row is
// never waited for, so maintenance cannot deadlock with them), and is fenced by the
// maintenance leader's lease: a leader that lost its lease (frozen, partitioned) changes
// nothing.

// Fence names a maintenance leader's lease. The zero Fence fences nothing (tests, one-off
// operator commands).
type Fence struct {
	Leader string
	Epoch  int64
}

// fenceSQL is the condition that f still holds the lease, with f's leader and epoch as
// parameters $a and $a+1.
func fenceSQL(a int) string {
	p, q := "$"+strconv.Itoa(a), "$"+strconv.Itoa(a+1)
	return `(` + p + `::text = '' OR EXISTS (SELECT 1 FROM maintenance_leader l
		WHERE l.name = 'maintenance' AND l.leader_id = ` + p + ` AND l.epoch = ` + q + ` AND l.expires_at > now()))`
}

// TakeLeadership takes or renews the maintenance lease for id, for ttl, and returns its
// fence. A lease still held by another leader is not taken (ok false). A leader renewing a
// lease it still holds keeps its epoch; taking a lapsed lease (even one's own) starts a new
// epoch, so the statements of the earlier term are fenced off.
func (s *Store) TakeLeadership(ctx context.Context, id string, ttl time.Duration) (Fence, bool, error) {
	var epoch int64
	err := s.pool.QueryRow(ctx, `
		INSERT INTO maintenance_leader AS l (name, leader_id, epoch, elected_at, expires_at)
		VALUES ('maintenance', $1, 1, now(), now() + $2::interval)
		ON CONFLICT (name) DO UPDATE SET
			epoch = CASE WHEN l.leader_id = $1 AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END,
			elected_at = CASE WHEN l.leader_id = $1 AND l.expires_at > now() THEN l.elected_at ELSE now() END,
			leader_id = $1, expires_at = excluded.expires_at
		WHERE l.leader_id = $1 OR l.expires_at <= now()
		RETURNING epoch`, id, ttl).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return Fence{}, false, nil
	}
	if err != nil {
		return Fence{}, false, fmt.Errorf("take maintenance lease: %w", err)
	}
	return Fence{Leader: id, Epoch: epoch}, true, nil
}

// ResignLeadership ends f's lease at once (graceful shutdown), for another instance to take.
func (s *Store) ResignLeadership(ctx context.Context, f Fence) error {
	_, err := s.pool.Exec(ctx, `UPDATE maintenance_leader SET expires_at = now()
		WHERE name = 'maintenance' AND leader_id = $1 AND epoch = $2 AND expires_at > now()`, f.Leader, f.Epoch)
	if err != nil {
		return fmt.Errorf("resign maintenance lease: %w", err)
	}
	return nil
}

// MaintenanceLeader returns the id of the instance whose maintenance lease is fresh, or "".
func (s *Store) MaintenanceLeader(ctx context.Context) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT leader_id FROM maintenance_leader WHERE name = 'maintenance' AND expires_at > now()`).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("maintenance leader: %w", err)
	}
	return id, nil
}

// StreamIdleReason is the state_reason of a stream closed because nobody read it.
func StreamIdleReason(ttl time.Duration) string {
	return "closed: the device did not read the stream for " + ttl.String()
}

// CloseIdleStreams closes up to limit held streams that no device has read for ttl and that
// have no reader open now, with a state_reason saying so; their holders stop (notified, and
// their lease renewal no longer lists them). It returns how many it closed.
func (s *Store) CloseIdleStreams(ctx context.Context, f Fence, ttl time.Duration, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		WITH c AS (
			UPDATE streams s SET state = 'closed', state_reason = $3, closed_at = now(), updated_at = now(),
				lease_owner = NULL, connected = false
			WHERE s.id = ANY (ARRAY(
				SELECT i.id FROM streams i
				WHERE i.state = 'held' AND i.read_at < now() - $1::interval
					AND NOT EXISTS (SELECT 1 FROM readers r WHERE r.stream_id = i.id AND r.expires_at > now())
				ORDER BY i.read_at
				LIMIT $2
				FOR NO KEY UPDATE SKIP LOCKED))
			AND s.state = 'held' AND `+fenceSQL(5)+`
			RETURNING s.id::text
		)
		SELECT pg_notify($4, id) FROM c`, ttl, limit, cleanText(StreamIdleReason(ttl)), EventsChannel, f.Leader, f.Epoch)
	if err != nil {
		return 0, fmt.Errorf("close idle streams: %w", err)
	}
	return tag.RowsAffected(), nil
}

// FailDeadDevices stops holding the streams of devices whose token was reported dead more
// than grace before now, at most limit of them. It returns how many streams it failed.
func (s *Store) FailDeadDevices(ctx context.Context, f Fence, now time.Time, grace time.Duration, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		WITH x AS (
			UPDATE streams s SET state = 'failed',
				state_reason = 'the device''s push token was reported dead: ' || coalesce(d.dead_reason, ''),
				lease_owner = NULL, connected = false,
				closed_at = now(), updated_at = now()
			FROM devices d
			WHERE s.id = ANY (ARRAY(
				SELECT i.id FROM (SELECT id FROM devices WHERE dead_at < $1::timestamptz - $2::interval
					ORDER BY dead_at LIMIT $4) dd
				-- The LIMIT keeps the lateral a nested loop over streams_device_id.
				CROSS JOIN LATERAL (SELECT id FROM streams WHERE device_id = dd.id AND state = 'held' LIMIT $4) c
				JOIN streams i ON i.id = c.id
				LIMIT $4
				FOR NO KEY UPDATE OF i SKIP LOCKED))
			AND s.device_id = d.id AND s.state = 'held' AND `+fenceSQL(5)+`
			RETURNING s.id::text
		)
		SELECT pg_notify($3, id) FROM x`, now, grace, EventsChannel, limit, f.Leader, f.Epoch)
	if err != nil {
		return 0, fmt.Errorf("fail dead devices: %w", err)
	}
	return tag.RowsAffected(), nil
}

// TrimWakeups deletes up to limit wake-ups of the history finished before t.
func (s *Store) TrimWakeups(ctx context.Context, f Fence, before time.Time, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM wakeups WHERE id = ANY (ARRAY(
			SELECT id FROM wakeups WHERE finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED))
		AND `+fenceSQL(3), before, limit, f.Leader, f.Epoch)
	if err != nil {
		return 0, fmt.Errorf("trim wake-ups: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ExpiredStreams returns up to limit streams that ended (closed or failed) more than
// retention ago, oldest first: DeleteEventsOf and then DeleteStreams remove them.
func (s *Store) ExpiredStreams(ctx context.Context, retention time.Duration, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id::text FROM streams WHERE state <> 'held' AND closed_at < now() - $1::interval
		ORDER BY closed_at LIMIT $2`, retention, limit)
	if err != nil {
		return nil, fmt.Errorf("expired streams: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("expired streams: %w", err)
	}
	return ids, nil
}

// DeleteEventsOf deletes up to limit events of the given ended streams, and returns how
// many it deleted (fewer than limit: none are left).
func (s *Store) DeleteEventsOf(ctx context.Context, f Fence, streams []string, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM events e USING (
			SELECT x.stream_id, x.seq FROM streams s
			CROSS JOIN LATERAL (SELECT stream_id, seq FROM events WHERE stream_id = s.id ORDER BY seq LIMIT $2) x
			WHERE s.id = ANY($1::uuid[]) AND s.state <> 'held'
			LIMIT $2) d
		WHERE e.stream_id = d.stream_id AND e.seq = d.seq AND `+fenceSQL(3), streams, limit, f.Leader, f.Epoch)
	if err != nil {
		return 0, fmt.Errorf("delete events of ended streams: %w", err)
	}
	return tag.RowsAffected(), nil
}

// DeleteStreams deletes the given ended streams that have no events left, with their
// readers, and then their devices when those have no stream left and were not updated for a
// minute (a handoff that reuses the device bumps it). It returns the streams and the
// devices it deleted.
func (s *Store) DeleteStreams(ctx context.Context, f Fence, streams []string) (nStreams, nDevices int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH d AS (
				DELETE FROM streams s WHERE s.id = ANY (ARRAY(
					SELECT i.id FROM streams i WHERE i.id = ANY($1::uuid[]) AND i.state <> 'held'
						AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = i.id)
					FOR UPDATE SKIP LOCKED))
				AND `+fenceSQL(2)+`
				RETURNING s.id, s.device_id
			), r AS (DELETE FROM readers WHERE stream_id IN (SELECT id FROM d))
			SELECT coalesce(device_id::text, '') FROM d`, streams, f.Leader, f.Epoch)
		if err != nil {
			return err
		}
		devs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		nStreams = int64(len(devs))
		var devices []string
		seen := map[string]bool{"": true}
		for _, d := range devs {
			if !seen[d] {
				seen[d] = true
				devices = append(devices, d)
			}
		}
		if len(devices) == 0 {
			return nil
		}
		nDevices, err = deleteDevices(ctx, tx, f, `d.id = ANY($1::uuid[]) AND d.updated_at < now() - interval '1 minute'
			AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.device_id = d.id)`, devices)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("delete ended streams: %w", err)
	}
	return nStreams, nDevices, nil
}

// deleteDevices deletes the devices matching cond (over devices d, with args from $1 and at
// most 3 of them), locked with SKIP LOCKED, under f; it returns how many.
func deleteDevices(ctx context.Context, tx pgx.Tx, f Fence, cond string, args ...any) (int64, error) {
	a := len(args) + 1
	tag, err := tx.Exec(ctx, `
		DELETE FROM devices WHERE id = ANY (ARRAY(SELECT d.id FROM devices d WHERE `+cond+` FOR UPDATE SKIP LOCKED))
		AND `+fenceSQL(a), append(args, f.Leader, f.Epoch)...)
	return tag.RowsAffected(), err
}

// DeleteDeadDevices deletes up to limit devices whose token was reported dead more than
// grace before now and that hold no stream any more (FailDeadDevices failed them), with
// their wake-up history. Their ended streams stay until the closed retention deletes them.
func (s *Store) DeleteDeadDevices(ctx context.Context, f Fence, now time.Time, grace time.Duration, limit int) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		n, err = deleteDevices(ctx, tx, f, `d.id = ANY (ARRAY(SELECT id FROM devices WHERE dead_at < $1::timestamptz - $2::interval
			ORDER BY dead_at LIMIT $3))
			AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.device_id = d.id AND s.state = 'held')`, now, grace, limit)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete dead devices: %w", err)
	}
	return n, nil
}

// ReleaseGoneInstances gives up, at most limit at a time, the leases of instances whose
// lease lapsed more than gone ago, and deletes the rows of those that hold nothing any more.
// (An instance row is deleted only with its leases released: a stream whose owner has no
// row is never claimed.) It returns the instances deleted.
func (s *Store) ReleaseGoneInstances(ctx context.Context, f Fence, gone time.Duration, limit int) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM instances WHERE expires_at < now() - $1::interval`, gone)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(ids) == 0 {
			return err
		}
		for _, id := range ids {
			_, err := tx.Exec(ctx, `
				UPDATE streams s SET lease_owner = NULL, connected = false
				WHERE s.id = ANY (ARRAY(
					SELECT c.id FROM streams c WHERE c.state = 'held' AND c.lease_owner = $1
					LIMIT $2
					FOR NO KEY UPDATE SKIP LOCKED))
				AND `+fenceSQL(3), id, limit, f.Leader, f.Epoch)
			if err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `
			DELETE FROM instances i WHERE i.id = ANY($1) AND i.expires_at < now() - $2::interval
				AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.lease_owner = i.id AND s.state = 'held')
				AND `+fenceSQL(3), ids, gone, f.Leader, f.Epoch)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("release gone instances: %w", err)
	}
	return n, nil
}

// TrimOldEvents drops, from up to limit held streams with ids after after (in id order),
// the queued events older than maxAge: the oldest go first, the floor moves past them, and
// the next reader gets the gap signal. It returns the events dropped and the last stream id
// it looked at ("" when it reached the end).
func (s *Store) TrimOldEvents(ctx context.Context, f Fence, maxAge time.Duration, after string, limit int) (dropped int64, last string, err error) {
	if after == "" {
		after = "00000000-0000-0000-0000-000000000000"
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var ids []string
		rows, err := tx.Query(ctx, `SELECT s.id::text FROM streams s WHERE s.id > $1 AND s.state = 'held' ORDER BY s.id LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		if len(ids) == limit {
			last = ids[len(ids)-1]
		}
		// The streams whose oldest queued event is too old, locked (SKIP LOCKED: a stream
		// in a commit is trimmed on the next pass), with their new floor: just before their
		// first event young enough (events of a stream are committed in seq order).
		rows, err = tx.Query(ctx, `
			WITH old AS (
				SELECT s.id, s.floor_seq, s.head_seq FROM streams s
				WHERE s.id = ANY($1::uuid[]) AND s.state = 'held' AND s.head_seq > s.floor_seq
					AND EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.id AND e.seq = s.floor_seq + 1
						AND e.created_at < now() - $2::interval)
					AND `+fenceSQL(3)+`
				FOR NO KEY UPDATE SKIP LOCKED
			)
			SELECT old.id::text, old.floor_seq, coalesce((SELECT e.seq - 1 FROM events e
				WHERE e.stream_id = old.id AND e.seq > old.floor_seq AND e.created_at >= now() - $2::interval
				ORDER BY e.seq LIMIT 1), old.head_seq)
			FROM old`, ids, maxAge, f.Leader, f.Epoch)
		if err != nil {
			return err
		}
		var (
			trimIDs        []string
			trimLo, trimHi []int64
			id             string
			lo, hi         int64
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &lo, &hi}, func() error {
			if hi > lo {
				trimIDs, trimLo, trimHi = append(trimIDs, id), append(trimLo, lo), append(trimHi, hi)
			}
			return nil
		})
		if err != nil || len(trimIDs) == 0 {
			return err
		}
		dropped, err = trimEvents(ctx, tx, trimIDs, trimLo, trimHi)
		return err
	})
	if err != nil {
		return 0, "", fmt.Errorf("trim old events: %w", err)
	}
	return dropped, last, nil
}

// trimEvents drops the events of streams ids[i] with lo[i] < seq <= hi[i], moves their
// floors to hi and their byte counts down. The caller holds the streams' row locks.
func trimEvents(ctx context.Context, tx pgx.Tx, ids []string, lo, hi []int64) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, `
		WITH t AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS t(id, lo, hi)),
		d AS (
			DELETE FROM events e USING t
			WHERE e.stream_id = t.id AND e.seq > t.lo AND e.seq <= t.hi
			RETURNING e.stream_id, `+sizeExpr+` AS n
		), u AS (
			UPDATE streams s SET floor_seq = GREATEST(s.floor_seq, t.hi),
				backlog_bytes = s.backlog_bytes - coalesce(g.n, 0)
			FROM t LEFT JOIN (SELECT stream_id, sum(n) AS n FROM d GROUP BY stream_id) g ON g.stream_id = t.id
			WHERE s.id = t.id
		)
		SELECT count(*) FROM d`, ids, lo, hi).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("trim backlogs: %w", err)
	}
	return n, nil
}

// Gauges are the database-wide gauges as the maintenance leader last computed them.
type Gauges struct {
	ComputedAt time.Time        `json:"-"`
	Leader     string           `json:"-"`
	Streams    map[string]int64 `json:"streams"` // by state
	Connected  int64            `json:"connected"`
	Events     int64            `json:"events"`
	Bytes      int64            `json:"bytes"`
	// Over streams with a backlog: the age of the oldest unread event of each, as a
	// histogram with cumulative counts per upper bound of GaugeAgeBuckets.
	OldestAge float64  `json:"oldest_age"`
	AgeCount  uint64   `json:"age_count"`
	AgeSum    float64  `json:"age_sum"`
	AgeCounts []uint64 `json:"age_counts"`
	// What the admin totals and the dashboard show beside the backlog (GetTotals).
	Devices         int64            `json:"devices"`
	DeadDevices     int64            `json:"dead_devices"`
	PendingWakeups  int64            `json:"pending_wakeups"`
	WakeupsLastHour map[string]int64 `json:"wakeups_last_hour"` // by outcome
	// The GaugeTopStreams streams with the largest backlogs, and with the oldest unread
	// events, largest first: the dashboard reads their rows by id.
	LargestBacklogs []string `json:"largest_backlogs"`
	OldestBacklogs  []string `json:"oldest_backlogs"`
	// The GaugeTopStreams most troubled origins (FailingOrigins).
	FailingOrigins []OriginSummary `json:"failing_origins"`
}

// GaugeTopStreams is how many streams Gauges names in each of its lists.
const GaugeTopStreams = 10

// GaugeAgeBuckets are the upper bounds (seconds) of the unread-age histogram.
var GaugeAgeBuckets = []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600}

// RefreshGauges computes the database-wide gauges and stores them in the one row every
// instance reads (GetGauges), under f. It is one statement: the ages of the streams' oldest
// unread events are summed into the histogram in the database, not sent over.
func (s *Store) RefreshGauges(ctx context.Context, f Fence) error {
	_, err := s.pool.Exec(ctx, refreshGaugesSQL, f.Leader, f.Epoch)
	if err != nil {
		return fmt.Errorf("compute gauges: %w", err)
	}
	return nil
}

// refreshGaugesSQL computes Gauges as JSON and stores them, fenced by $1 and $2.
var refreshGaugesSQL = func() string {
	var buckets []string
	for _, ub := range GaugeAgeBuckets {
		buckets = append(buckets, fmt.Sprintf("count(*) FILTER (WHERE a <= %g)", ub))
	}
	return `
		WITH st AS (
			SELECT s.state, count(*) AS n, count(*) FILTER (WHERE ` + connectedExpr + `) AS c,
				coalesce(sum(` + backlogExpr + `), 0) AS ev, coalesce(sum(s.backlog_bytes), 0) AS b
			FROM streams s GROUP BY s.state
		), ages AS (
			-- One index probe per stream with a backlog (the LIMIT keeps it a nested loop),
			-- not a scan of every queued event.
			SELECT s.id, extract(epoch FROM now() - e.created_at)::float8 AS a
			-- (The first event above the floor: a compacted backlog may lack floor + 1.)
			FROM streams s CROSS JOIN LATERAL (SELECT created_at FROM events e
				WHERE e.stream_id = s.id AND e.seq > s.floor_seq ORDER BY e.seq LIMIT 1) e
			WHERE s.head_seq > s.floor_seq
		), h AS (
			SELECT count(*) AS n, coalesce(sum(a), 0) AS sum, coalesce(max(a), 0) AS mx,
				ARRAY[` + strings.Join(buckets, ", ") + `] AS counts
			FROM ages
		)
		INSERT INTO gauges (name, computed_at, leader_id, value)
		SELECT 'backlog', now(), $1, jsonb_build_object(
			'streams', coalesce((SELECT jsonb_object_agg(state, n) FROM st), '{}'),
			'connected', coalesce((SELECT sum(c) FROM st), 0),
			'events', coalesce((SELECT sum(ev) FROM st), 0),
			'bytes', coalesce((SELECT sum(b) FROM st), 0),
			'oldest_age', h.mx, 'age_count', h.n, 'age_sum', h.sum, 'age_counts', to_jsonb(h.counts),
			'devices', (SELECT count(*) FROM devices),
			'dead_devices', (SELECT count(*) FROM devices WHERE dead_at IS NOT NULL),
			'pending_wakeups', (SELECT count(*) FROM wakeups WHERE state IN ('pending', 'sending')),
			'wakeups_last_hour', coalesce((SELECT jsonb_object_agg(outcome, n) FROM (SELECT outcome, count(*) AS n FROM wakeups
				WHERE finished_at > now() - interval '1 hour' GROUP BY outcome) w), '{}'),
			'largest_backlogs', to_jsonb(ARRAY(SELECT s.id::text FROM streams s WHERE s.head_seq > s.floor_seq
				ORDER BY ` + backlogExpr + ` DESC, s.id DESC LIMIT ` + strconv.Itoa(GaugeTopStreams) + `)),
			'oldest_backlogs', to_jsonb(ARRAY(SELECT id::text FROM ages ORDER BY a DESC, id DESC LIMIT ` + strconv.Itoa(GaugeTopStreams) + `)),
			'failing_origins', coalesce((SELECT jsonb_agg(to_jsonb(f)) FROM (` + failingOriginsSQL(strconv.Itoa(GaugeTopStreams)) + `) f), '[]'))
		FROM h WHERE ` + fenceSQL(1) + `
		ON CONFLICT (name) DO UPDATE SET computed_at = excluded.computed_at, leader_id = excluded.leader_id, value = excluded.value`
}()

// GetGauges reads the gauges the maintenance leader last computed; ok is false before the
// first computation.
func (s *Store) GetGauges(ctx context.Context) (g Gauges, ok bool, err error) {
	var v []byte
	err = s.pool.QueryRow(ctx, `SELECT computed_at, leader_id, value FROM gauges WHERE name = 'backlog'`).Scan(&g.ComputedAt, &g.Leader, &v)
	if errors.Is(err, pgx.ErrNoRows) {
		return g, false, nil
	}
	if err != nil {
		return g, false, fmt.Errorf("read gauges: %w", err)
	}
	if err := json.Unmarshal(v, &g); err != nil {
		return g, false, fmt.Errorf("read gauges: %w", err)
	}
	for _, st := range []string{pushproxy.StateHeld, pushproxy.StateClosed, pushproxy.StateFailed} {
		if _, ok := g.Streams[st]; !ok {
			if g.Streams == nil {
				g.Streams = map[string]int64{}
			}
			g.Streams[st] = 0
		}
	}
	return g, true, nil
}
