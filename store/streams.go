package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// NewStream is a handoff to record.
type NewStream struct {
	URL       string
	Headers   map[string]string
	ResumeID  string
	TokenHash []byte
	Push      *pushproxy.PushAddress // nil: the stream wakes nobody
	// MaxPerDevice bounds the streams a device may have held at once (0: no bound).
	MaxPerDevice int
	// DeviceSecretHash is the SHA-256 of the device secret (see handoffDevice): the one the
	// handoff presented when DeviceSecretGiven, else a new one, stored if the handoff
	// creates the device. nil: none (a device created so has no secret).
	DeviceSecretHash  []byte
	DeviceSecretGiven bool
	// APIKeyHash is the SHA-256 of the API key the stream is handed off with (nil: none);
	// MaxPerKey bounds the streams held under one key (0: no bound).
	APIKeyHash []byte
	MaxPerKey  int
	// LeaseOwner, when set, takes the lease at once: the instance that accepted the handoff
	// starts holding it. It must be an instance whose row exists (RenewInstance) and is not
	// being released (ReleaseLeases): a stream whose owner has no instance row is never
	// claimed by another.
	LeaseOwner string
	// UrgentEvents are event types that wake the device at once.
	UrgentEvents []string
	// CompactBy is the stream's compaction setting (pushproxy.ParseCompaction; "": none).
	CompactBy string
}

// Claim is a stream an instance now holds, with the fencing epoch of its lease.
type Claim struct {
	Stream pushproxy.Stream
	Epoch  int64
}

const streamColumns = `s.id, coalesce(s.device_id::text, ''), s.url, s.headers, s.state, s.state_reason,
	s.resume_id, coalesce(s.retry_ms, -1), s.head_seq, s.floor_seq, s.acked_seq, s.acked_id,
	s.upstream_status, ` + connectedExpr + `, s.connects, s.last_error, s.last_error_at,
	s.created_at, s.updated_at, s.closed_at, s.token_hash, s.urgent_events, s.compact_by, s.lease_epoch`

// connectedExpr is whether a stream's upstream is connected, as the API and operators are
// told: the holder's last committed word (the connected column), and only while the holder
// is alive (its instance lease is fresh). A holder that died (kill -9, a freeze) left the
// column true; its stream is not connected for that. The ARRAY is computed once per
// statement, so this costs one scan of the few instances even over every stream.
const connectedExpr = `(s.connected AND coalesce(s.lease_owner = ANY (ARRAY(
	SELECT i.id FROM instances i WHERE i.expires_at > now())), false))`

// backlogExpr is the number of events queued on stream s: its seqs above the floor, but
// for a compacted backlog, which has holes in its seqs, its events (at most --max-backlog,
// and as many as its keys when compaction does its work).
const backlogExpr = `CASE WHEN s.compact_by <> '' THEN (SELECT count(*) FROM events e WHERE e.stream_id = s.id AND e.seq > s.floor_seq)
	ELSE s.head_seq - s.floor_seq END`

func scanStream(row pgx.Row) (pushproxy.Stream, int64, error) {
	var (
		st                  pushproxy.Stream
		resume, acked       []byte
		lastErrAt, closedAt *time.Time
		epoch               int64
	)
	err := row.Scan(&st.ID, &st.DeviceID, &st.URL, &st.Headers, &st.State, &st.StateReason,
		&resume, &st.RetryMS, &st.HeadSeq, &st.FloorSeq, &st.AckedSeq, &acked,
		&st.UpstreamStatus, &st.Connected, &st.Connects, &st.LastError, &lastErrAt,
		&st.CreatedAt, &st.UpdatedAt, &closedAt, &st.TokenHash, &st.UrgentEvents, &st.CompactBy, &epoch)
	if err != nil {
		return st, 0, err
	}
	st.ResumeID, st.AckedID = string(resume), string(acked)
	if lastErrAt != nil {
		st.LastErrorAt = *lastErrAt
	}
	if closedAt != nil {
		st.ClosedAt = *closedAt
	}
	return st, epoch, nil
}

// CreateStream records a handoff: the device (found or created by its push address) and the
// stream. It returns the stream and, when ns.LeaseOwner is set, the epoch of its lease.
func (s *Store) CreateStream(ctx context.Context, ns NewStream) (pushproxy.Stream, int64, error) {
	var (
		st    pushproxy.Stream
		epoch int64
	)
	wp, err := s.webpushColumns(ns.Push)
	if err != nil {
		return st, 0, err
	}
	var slot int16
	if len(ns.APIKeyHash) > 0 {
		slot = s.keySlots.take()
		defer s.keySlots.give(slot)
	}
	// A keyed handoff tries the one-statement path into its slot first; when that finds no
	// place, the handoff is done again with the path that may wait for the key's slots. A
	// slot whose share of a bound below the slots' number is 0 has no place ever.
	fast := len(ns.APIKeyHash) > 0 && (ns.MaxPerKey <= 0 || ns.MaxPerKey >= keySlotCount || int(slot) < ns.MaxPerKey)
	st, epoch, err = s.createStream(ctx, ns, wp, slot, fast)
	if fast && errors.Is(err, errKeySlotMissed) {
		st, epoch, err = s.createStream(ctx, ns, wp, slot, false)
	}
	return st, epoch, err
}

// createStream is CreateStream's transaction; fast is insertKeyedStream's.
func (s *Store) createStream(ctx context.Context, ns NewStream, wp webpushColumns, slot int16, fast bool) (pushproxy.Stream, int64, error) {
	var (
		st    pushproxy.Stream
		epoch int64
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var deviceID *string
		if ns.Push != nil {
			id, err := handoffDevice(ctx, tx, &ns, wp)
			if err != nil {
				return err
			}
			if err := checkDeviceQuota(ctx, tx, id, ns.MaxPerDevice); err != nil {
				return err
			}
			deviceID = &id
		}
		var owner *string
		epochStart := int64(0)
		if ns.LeaseOwner != "" {
			owner = &ns.LeaseOwner
			epochStart = 1
		}
		row, err := s.sealRow(ns.URL, ns.Headers)
		if err != nil {
			return err
		}
		urgent := ns.UrgentEvents
		if urgent == nil {
			urgent = []string{}
		}
		args := []any{row.ID, deviceID, row.URL, row.Headers, row.Sealed, ns.TokenHash, []byte(ns.ResumeID), owner, epochStart, urgent, ns.APIKeyHash, ns.CompactBy}
		if len(ns.APIKeyHash) == 0 {
			st, epoch, err = scanStream(tx.QueryRow(ctx, insertStream, args...))
			err = wrapInsert(err)
		} else {
			st, epoch, err = insertKeyedStream(ctx, tx, ns.MaxPerKey, slot, fast, args)
		}
		if err != nil {
			return err
		}
		// The holder this instance starts gets the credentials in clear, as a claim would.
		st.URL, st.Headers = ns.URL, ns.Headers
		return nil
	})
	return st, epoch, err
}

// GetStream returns a stream, with NewestID filled in.
func (s *Store) GetStream(ctx context.Context, id string) (pushproxy.Stream, error) {
	if !pushproxy.IsUUID(id) {
		return pushproxy.Stream{}, errNoStream(id)
	}
	row := s.pool.QueryRow(ctx, `SELECT `+streamColumns+`,
		(SELECT e.last_event_id FROM events e WHERE e.stream_id = s.id AND e.seq = s.head_seq AND s.head_seq > s.floor_seq),
		`+backlogExpr+`
		FROM streams s WHERE s.id = $1`, id)
	var (
		st     pushproxy.Stream
		newest []byte
		queued *int64
	)
	st, _, err := scanStreamWith(row, &newest, &queued)
	st.Queued = queued
	if errors.Is(err, pgx.ErrNoRows) {
		return st, errNoStream(id)
	}
	if err != nil {
		return st, fmt.Errorf("get stream: %w", err)
	}
	if st.HeadSeq > st.FloorSeq {
		st.NewestID = pushproxy.ReplayID(st.HeadSeq, string(newest))
	}
	return st, nil
}

// scanStreamWith scans streamColumns followed by extra destinations.
func scanStreamWith(row pgx.Row, extra ...any) (pushproxy.Stream, int64, error) {
	return scanStream(rowWithExtra{row, extra})
}

type rowWithExtra struct {
	pgx.Row
	extra []any
}

func (r rowWithExtra) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.extra...)...) }

func errNoStream(id string) error {
	return pushproxy.Errorf(pushproxy.ENOTFOUND, "no stream %q", id)
}

// CloseResult is what closing a stream reports.
type CloseResult struct {
	Stream    pushproxy.Stream
	Discarded int64 // queued events dropped because the device took the stream back
}

// CloseStream stops holding a stream on the device's request: its state becomes closed, its
// lease is released and its backlog deleted. Closing a stream that is not held changes
// nothing and reports it as it is.
func (s *Store) CloseStream(ctx context.Context, id string) (CloseResult, error) {
	if !pushproxy.IsUUID(id) {
		return CloseResult{}, errNoStream(id)
	}
	var res CloseResult
	err := s.lockingTx(ctx, func(tx pgx.Tx) error {
		// The backlog's rows are left to ReclaimAcked: the row lock taken here is held for
		// two small statements and a count, not for a delete of the backlog.
		var floor int64
		err := tx.QueryRow(ctx, `SELECT floor_seq FROM streams WHERE id = $1 FOR UPDATE`, id).Scan(&floor)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("close stream: %w", err)
		}
		row := tx.QueryRow(ctx, `
			UPDATE streams s SET state = 'closed', state_reason = 'closed by the device',
				closed_at = now(), updated_at = now(), lease_owner = NULL,
				connected = false, floor_seq = head_seq, backlog_bytes = 0
			WHERE s.id = $1 AND s.state = 'held'
			RETURNING `+streamColumns, id)
		st, _, err := scanStream(row)
		if errors.Is(err, pgx.ErrNoRows) {
			row = tx.QueryRow(ctx, `SELECT `+streamColumns+` FROM streams s WHERE s.id = $1`, id)
			st, _, err = scanStream(row)
			if errors.Is(err, pgx.ErrNoRows) {
				return errNoStream(id)
			}
			res.Stream = st
			return err
		}
		if err != nil {
			return fmt.Errorf("close stream: %w", err)
		}
		res = CloseResult{Stream: st}
		err = tx.QueryRow(ctx, `SELECT count(*) FROM events WHERE stream_id = $1 AND seq > $2`, id, floor).Scan(&res.Discarded)
		if err != nil {
			return fmt.Errorf("close stream: count backlog: %w", err)
		}
		if err := queueReclaim(ctx, tx, id, st.HeadSeq); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pushproxy_notify_readers(ARRAY[$1::text])`, id)
		return err
	})
	return res, err
}

// RenewInstance extends owner's instance lease by ttl. An instance holds its streams while
// its lease is fresh; when it lapses (the instance died, or stalled), other instances claim
// them, and the fencing epochs turn away the stalled instance's late commits.
func (s *Store) RenewInstance(ctx context.Context, owner string, ttl time.Duration) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO instances (id, expires_at) VALUES ($1, now() + $2::interval)
		ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at`, owner, ttl)
	if err != nil {
		return fmt.Errorf("renew instance lease: %w", err)
	}
	return nil
}

// ClaimStreams renews owner's instance lease and takes up to limit held streams that no live
// instance holds (no owner, or an owner whose lease lapsed), and returns them with their new
// fencing epochs.
func (s *Store) ClaimStreams(ctx context.Context, owner string, ttl time.Duration, limit int) ([]Claim, error) {
	if err := s.RenewInstance(ctx, owner, ttl); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `
		UPDATE streams s SET lease_owner = $1, lease_epoch = s.lease_epoch + 1, connected = false
		WHERE s.id = ANY (ARRAY(
			-- Each arm finds its streams by the partial index on lease_owner: no walk of
			-- every held stream (in created_at order, looking for the few unowned). Only an
			-- owner with an expired row is claimed from. Rows are deleted only by
			-- ReleaseLeases, which clears the owner's leases in the same statement; the row
			-- of an instance that died stays, expired, until that id renews again. A stream
			-- whose owner has no row at all is not claimed (see NewStream.LeaseOwner).
			-- Each arm locks at most $2 rows; the oldest $2 of them are claimed.
			SELECT x.id FROM (
				SELECT * FROM (
					SELECT c.id, c.created_at FROM streams c
					WHERE c.state = 'held' AND c.lease_owner IS NULL AND `+openableSQL(3)+`
					ORDER BY c.created_at LIMIT $2 FOR UPDATE SKIP LOCKED) c
				UNION ALL
				SELECT c.id, c.created_at FROM instances i CROSS JOIN LATERAL (
					SELECT c.id, c.created_at FROM streams c
					WHERE c.state = 'held' AND c.lease_owner = i.id AND `+openableSQL(3)+`
					ORDER BY c.created_at LIMIT $2 FOR UPDATE SKIP LOCKED) c
				WHERE i.expires_at <= now()
			) x
			ORDER BY x.created_at
			LIMIT $2))
		RETURNING `+streamColumns+`, s.credentials_sealed`, owner, limit, s.prefixes())
	if err != nil {
		return nil, fmt.Errorf("claim streams: %w", err)
	}
	var sealed [][]byte
	claims, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Claim, error) {
		var b []byte
		st, epoch, err := scanStreamWith(row, &b)
		sealed = append(sealed, b)
		return Claim{Stream: st, Epoch: epoch}, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim streams: %w", err)
	}
	return s.openClaims(ctx, claims, sealed)
}

// RenewLeases renews owner's instance lease and returns the ids of the streams it still
// holds: a holder whose stream is missing lost it (closed, or taken by another instance).
func (s *Store) RenewLeases(ctx context.Context, owner string, ttl time.Duration) (map[string]bool, error) {
	if err := s.RenewInstance(ctx, owner, ttl); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id::text FROM streams WHERE lease_owner = $1 AND state = 'held'`, owner)
	if err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	held := map[string]bool{}
	var id string
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error { held[id] = true; return nil })
	if err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	return held, nil
}

// ReleaseStreams gives up owner's leases of the given streams, for any instance to claim.
func (s *Store) ReleaseStreams(ctx context.Context, owner string, ids []string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE streams SET lease_owner = NULL, connected = false
		WHERE lease_owner = $1 AND id = ANY($2::uuid[])`, owner, ids)
	if err != nil {
		return fmt.Errorf("release streams: %w", err)
	}
	return nil
}

// ReleaseLeases gives up every lease owner holds, so another instance can claim the streams
// at once (on graceful shutdown).
func (s *Store) ReleaseLeases(ctx context.Context, owner string) error {
	_, err := s.pool.Exec(ctx, `
		WITH gone AS (DELETE FROM instances WHERE id = $1)
		UPDATE streams SET lease_owner = NULL, connected = false
		WHERE lease_owner = $1`, owner)
	if err != nil {
		return fmt.Errorf("release leases: %w", err)
	}
	return nil
}
