package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// WakePolicy is how wake-ups are scheduled when events land for a sleeping device.
type WakePolicy struct {
	// Now is the scheduler's clock (tests inject one); nil means time.Now.
	Now func() time.Time
	// Debounce delays a wake-up after the first event of a burst, so a flurry costs one push.
	Debounce time.Duration
	// Jitter adds a random delay up to this long, so that devices fed by one origin do not
	// all wake in the same second.
	Jitter time.Duration
	// Rewake is how long after a push that the device did not answer (by reading) another
	// one may be sent.
	Rewake time.Duration
}

func (p *WakePolicy) now() time.Time {
	if p.Now == nil {
		return time.Now()
	}
	return p.Now()
}

// scheduleWakeups queues a wake-up for each device of streams (with the urgency given per
// stream), unless the device is dead, awake, or already has one outstanding. An urgent
// wake-up skips the debounce and the wait for a read, and makes an outstanding pending one
// urgent and due at once. It runs in the caller's transaction.
func scheduleWakeups(ctx context.Context, tx pgx.Tx, p *WakePolicy, streams []string, urgent []bool) (int64, error) {
	if len(streams) == 0 {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, scheduleWakeupsSQL, scheduleWakeupsArgs(p, streams, urgent)...)
	if err != nil {
		return 0, fmt.Errorf("schedule wake-ups: %w", err)
	}
	return tag.RowsAffected(), nil
}

// scheduleWakeupsSQL is scheduleWakeups' statement, with scheduleWakeupsArgs.
const scheduleWakeupsSQL = `
		INSERT INTO wakeups AS w (device_id, urgent, created_at, due_at)
		SELECT DISTINCT ON (s.device_id) s.device_id, u.urgent, $3::timestamptz,
			CASE WHEN u.urgent THEN greatest($3::timestamptz, d.throttled_until)
			ELSE greatest($3::timestamptz + $4::interval + random() * $5::interval,
				d.awaiting_since + $6::interval, d.throttled_until) END
		FROM unnest($1::uuid[], $2::bool[]) AS u(id, urgent)
		JOIN streams s ON s.id = u.id
		JOIN devices d ON d.id = s.device_id
		WHERE d.dead_at IS NULL
			AND NOT EXISTS (SELECT 1 FROM readers r WHERE r.device_id = d.id AND r.expires_at > now())
		ORDER BY s.device_id, u.urgent DESC
		ON CONFLICT (device_id) WHERE state IN ('pending', 'sending') DO UPDATE
			SET urgent = true, due_at = least(w.due_at, excluded.due_at)
			WHERE excluded.urgent AND NOT w.urgent AND w.state = 'pending'`

func scheduleWakeupsArgs(p *WakePolicy, streams []string, urgent []bool) []any {
	return []any{streams, urgent, p.now(), p.Debounce, p.Jitter, p.Rewake}
}

// ScheduleWakeup queues a wake-up for a device now if it is asleep and has events not yet
// delivered: after its last reader closed, or when an operator asks.
func (s *Store) ScheduleWakeup(ctx context.Context, deviceID string, p *WakePolicy) (bool, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var streams []string
		rows, err := tx.Query(ctx, `
			SELECT id::text FROM streams
			WHERE device_id = $1 AND head_seq > greatest(floor_seq, delivered_seq)`, deviceID)
		if err != nil {
			return err
		}
		streams, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		n, err = scheduleWakeups(ctx, tx, p, streams, make([]bool, len(streams)))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("schedule wake-up: %w", err)
	}
	return n > 0, nil
}

// RearmWakeups queues a wake-up for each of devices that is asleep and has events not yet
// delivered. The scheduler calls it for wake-ups it skipped (the device was awake, or had
// read everything) whose claim may have hidden events committed meanwhile.
func (s *Store) RearmWakeups(ctx context.Context, devices []string, p *WakePolicy) error {
	for _, d := range devices {
		if _, err := s.ScheduleWakeup(ctx, d, p); err != nil {
			return err
		}
	}
	return nil
}

// CloseReaderDelivered removes an open reader, records the newest event it was sent (so that
// event needs no wake-up), and, when that left the device asleep with events not delivered,
// queues a wake-up.
func (s *Store) CloseReaderDelivered(ctx context.Context, readerID, streamID string, deliveredSeq int64, p *WakePolicy) error {
	var deviceID *string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `DELETE FROM readers WHERE id = $1 RETURNING device_id::text`, readerID).Scan(&deviceID); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE streams SET delivered_seq = greatest(delivered_seq, $2) WHERE id = $1`, streamID, deliveredSeq)
		return err
	})
	if err != nil {
		return fmt.Errorf("close reader: %w", err)
	}
	if deviceID == nil || p == nil {
		return nil
	}
	_, err = s.ScheduleWakeup(ctx, *deviceID, p)
	return err
}

// MarkRead records that a device read (it woke): the push it was sent has been answered,
// so a wake-up that waited for that answer is due after the debounce only. A read while a
// push is being sent answers that push too (read_at, which FinishWakeups compares with the
// wake-up's claim): the app may fetch before the sender has recorded its push.
func (s *Store) MarkRead(ctx context.Context, deviceID string, p *WakePolicy) error {
	if deviceID == "" {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE devices d SET awaiting_since = NULL, read_at = now()
			WHERE d.id = $1 AND (d.awaiting_since IS NOT NULL
				OR EXISTS (SELECT 1 FROM wakeups w WHERE w.device_id = d.id AND w.state = 'sending'))`, deviceID); err != nil {
			return err
		}
		if p == nil {
			return nil
		}
		// Not before a throttle the platform asked for.
		_, err := tx.Exec(ctx, `
			UPDATE wakeups w SET due_at = greatest($2::timestamptz + $3::interval, d.throttled_until)
			FROM devices d
			WHERE d.id = w.device_id AND w.device_id = $1 AND w.state = 'pending'
				AND w.due_at > greatest($2::timestamptz + $3::interval, d.throttled_until)`,
			deviceID, p.now(), p.Debounce)
		return err
	})
	if err != nil {
		return fmt.Errorf("mark read: %w", err)
	}
	return nil
}

// ClaimWakeups takes up to limit wake-ups that are due at now (and those whose sender died
// while sending) for owner, for ttl. It returns them with what the scheduler needs to decide:
// presence, pending counts, and the pushes sent within window.
func (s *Store) ClaimWakeups(ctx context.Context, owner string, now time.Time, ttl time.Duration, limit int, window time.Duration) ([]pushproxy.Wakeup, error) {
	rows, err := s.pool.Query(ctx, `
		WITH claimed AS (
			UPDATE wakeups w SET state = 'sending', lease_owner = $1, lease_expires_at = $2::timestamptz + $3::interval,
				attempts = w.attempts + 1, claimed_at = now()
			WHERE w.id IN (
				SELECT id FROM wakeups
				WHERE (state = 'pending' AND due_at <= $2) OR (state = 'sending' AND lease_expires_at < $2)
				ORDER BY due_at
				LIMIT $4
				FOR UPDATE SKIP LOCKED)
			RETURNING w.*
		)
		SELECT c.id::text, c.device_id::text, d.platform, d.token, d.topic, d.environment,
			coalesce(d.webpush_p256dh, ''), d.webpush_auth, d.webpush_auth_sealed, c.urgent, c.attempts,
			c.created_at, c.due_at, d.dead_at IS NOT NULL,
			EXISTS (SELECT 1 FROM readers r WHERE r.device_id = d.id AND r.expires_at > now()),
			coalesce(p.ids, '{}'), coalesce(p.counts, '{}'),
			coalesce((SELECT array_agg(x.sent_at ORDER BY x.sent_at) FROM wakeups x
				WHERE x.device_id = d.id AND x.state = 'sent' AND x.sent_at > $2::timestamptz - $5::interval), '{}')
		FROM claimed c JOIN devices d ON d.id = c.device_id
		-- The device's streams with events not delivered, and how many, in one pass.
		LEFT JOIN LATERAL (
			SELECT array_agg(s.id::text ORDER BY s.id) AS ids,
				array_agg(s.head_seq - greatest(s.floor_seq, s.delivered_seq) ORDER BY s.id) AS counts
			FROM streams s
			WHERE s.device_id = d.id AND s.head_seq > greatest(s.floor_seq, s.delivered_seq)) p ON true`,
		owner, now, ttl, limit, window)
	if err != nil {
		return nil, fmt.Errorf("claim wake-ups: %w", err)
	}
	ws, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pushproxy.Wakeup, error) {
		var (
			w      pushproxy.Wakeup
			ids    []string
			counts []int64
			auth   *string
			sealed []byte
		)
		err := row.Scan(&w.ID, &w.DeviceID, &w.Push.Platform, &w.Push.Token, &w.Push.Topic, &w.Push.Environment,
			&w.Push.WebPushP256dh, &auth, &sealed, &w.Urgent, &w.Attempts, &w.CreatedAt, &w.DueAt, &w.Dead, &w.Awake, &ids, &counts, &w.RecentSends)
		if err != nil {
			return w, err
		}
		// A secret this instance cannot open (sealed under a key it lacks) is left empty:
		// the scheduler skips the wake-up without declaring the subscription dead.
		_ = s.openWebPushAuth(&w.Push, auth, sealed)
		w.Pending = make(map[string]int64, len(ids))
		for i, id := range ids {
			w.Pending[id] = counts[i]
		}
		return w, nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim wake-ups: %w", err)
	}
	return ws, nil
}

// FinishWakeups records what became of claimed wake-ups, in one transaction: sent ones
// update their device (last push, awaiting a read); dead tokens mark the device dead; those
// with a RetryAt go back to the queue. A result for a wake-up owner no longer holds is
// ignored (another instance took it over).
//
// The senders keep push tokens out of their errors; as a second line, the device's token is
// masked as "[push token]" in every error stored here (the wake-up's, and the device's last
// error and dead reason, which the streams' state reason quotes).
func (s *Store) FinishWakeups(ctx context.Context, owner string, now time.Time, results []pushproxy.WakeupResult) error {
	if len(results) == 0 {
		return nil
	}
	n := len(results)
	var (
		ids, outcomes, errs, pushIDs = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		pending                      = make([]int64, n)
		retryAt, throttled           = make([]*time.Time, n), make([]*time.Time, n)
	)
	for i, r := range results {
		ids[i], outcomes[i], errs[i], pushIDs[i], pending[i] = r.ID, cleanText(r.Outcome), cleanText(r.Error), cleanText(r.PushID), r.Pending
		if !r.RetryAt.IsZero() {
			t := r.RetryAt
			retryAt[i] = &t
		}
		if !r.ThrottledUntil.IsZero() {
			t := r.ThrottledUntil
			throttled[i] = &t
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The wake-ups are locked in device order first, the order a commit's
		// scheduleWakeups locks them in (its INSERT ... ON CONFLICT goes through the devices
		// sorted): two transactions that lock several of the same rows in one order cannot
		// deadlock, while in the order of the results they did, a commit stalling for the
		// deadlock timeout before one of the two was aborted.
		if _, err := tx.Exec(ctx, `SELECT FROM wakeups WHERE id = ANY($1::uuid[]) ORDER BY device_id FOR UPDATE`, ids); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			WITH given AS (
				SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::timestamptz[])
				AS r(id, outcome, err, push_id, pending, retry_at, throttled_until)
			), r AS (
				-- The device's push token is masked in the error, whatever its letter case.
				SELECT g.id, g.outcome, g.push_id, g.pending, g.retry_at, g.throttled_until,
					CASE WHEN coalesce(d.token, '') = '' THEN g.err
						ELSE regexp_replace(g.err, regexp_replace(d.token, '([^[:alnum:]])', '\\\1', 'g'), '[push token]', 'gi')
					END AS err
				FROM given g LEFT JOIN wakeups w0 ON w0.id = g.id LEFT JOIN devices d ON d.id = w0.device_id
			), w AS (
				UPDATE wakeups w SET
					state = CASE WHEN r.retry_at IS NOT NULL THEN 'pending'
						WHEN r.outcome = 'sent' THEN 'sent'
						WHEN r.outcome IN ('awake', 'nothing-pending', 'dead', 'no-sender') THEN 'skipped'
						ELSE 'failed' END,
					due_at = coalesce(r.retry_at, w.due_at),
					sent_at = CASE WHEN r.outcome = 'sent' THEN $9::timestamptz END,
					finished_at = CASE WHEN r.retry_at IS NULL THEN $9::timestamptz END,
					lease_owner = NULL, lease_expires_at = NULL,
					outcome = r.outcome, error = r.err, push_id = r.push_id, pending_events = r.pending
				FROM r
				WHERE w.id = r.id AND w.state = 'sending' AND w.lease_owner = $8
				RETURNING w.device_id, r.outcome, r.err, r.throttled_until, w.claimed_at
			)
			UPDATE devices d SET
				last_push_at = CASE WHEN w.outcome = 'sent' THEN $9::timestamptz ELSE d.last_push_at END,
				-- Awaiting an answer, unless the device read after the push was claimed (it
				-- answered while the push was being sent: MarkRead).
				awaiting_since = CASE WHEN w.outcome = 'sent' AND NOT coalesce(d.read_at >= w.claimed_at, false) THEN $9::timestamptz
					ELSE d.awaiting_since END,
				last_push_outcome = w.outcome,
				last_push_error = w.err,
				throttled_until = coalesce(w.throttled_until, d.throttled_until),
				dead_at = CASE WHEN w.outcome = 'token-gone' THEN $9::timestamptz ELSE d.dead_at END,
				dead_reason = CASE WHEN w.outcome = 'token-gone' THEN w.err ELSE d.dead_reason END
			FROM w WHERE d.id = w.device_id`,
			ids, outcomes, errs, pushIDs, pending, retryAt, throttled, owner, now)
		return err
	})
	if err != nil {
		return fmt.Errorf("finish wake-ups: %w", err)
	}
	return nil
}

// NextWakeupDue returns when the earliest pending wake-up is due, or false if none is.
func (s *Store) NextWakeupDue(ctx context.Context) (time.Time, bool, error) {
	var t *time.Time
	err := s.pool.QueryRow(ctx, `
		SELECT least((SELECT min(due_at) FROM wakeups WHERE state = 'pending'),
			(SELECT min(lease_expires_at) FROM wakeups WHERE state = 'sending'))`).Scan(&t)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next wake-up: %w", err)
	}
	if t == nil {
		return time.Time{}, false, nil
	}
	return *t, true, nil
}

// DeviceWakeState returns a device's wake-up state.
func (s *Store) DeviceWakeState(ctx context.Context, deviceID string) (pushproxy.WakeState, error) {
	var (
		ws                                 pushproxy.WakeState
		last, next, throttled, dead, await *time.Time
		reason                             *string
	)
	err := s.pool.QueryRow(ctx, `
		SELECT d.last_push_at, d.last_push_outcome, d.last_push_error, d.awaiting_since, d.throttled_until,
			d.dead_at, d.dead_reason,
			(SELECT due_at FROM wakeups w WHERE w.device_id = d.id AND w.state IN ('pending', 'sending'))
		FROM devices d WHERE d.id = $1`, deviceID).Scan(&last, &ws.LastOutcome, &ws.LastError, &await, &throttled, &dead, &reason, &next)
	if errors.Is(err, pgx.ErrNoRows) {
		return ws, pushproxy.Errorf(pushproxy.ENOTFOUND, "no device %q", deviceID)
	}
	if err != nil {
		return ws, fmt.Errorf("device wake state: %w", err)
	}
	for _, f := range []struct {
		src *time.Time
		dst *time.Time
	}{{last, &ws.LastPushAt}, {next, &ws.NextPushAt}, {throttled, &ws.ThrottledTill}, {dead, &ws.DeadAt}} {
		if f.src != nil {
			*f.dst = *f.src
		}
	}
	ws.Awaiting = await != nil
	if reason != nil {
		ws.DeadReason = *reason
	}
	return ws, nil
}
