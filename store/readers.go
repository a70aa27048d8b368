package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// OpenReader records an open events reader of a stream (and so of its device, which counts
// as awake while it has one). It returns the reader's id.
func (s *Store) OpenReader(ctx context.Context, streamID, deviceID, instance string, ttl time.Duration) (string, error) {
	return s.OpenReaderLimited(ctx, streamID, deviceID, instance, ttl, 0)
}

// OpenReaderLimited is OpenReader, refused with EREADERLIMIT when the stream has max
// unexpired readers open already, on any instance (max 0: no bound).
func (s *Store) OpenReaderLimited(ctx context.Context, streamID, deviceID, instance string, ttl time.Duration, max int) (string, error) {
	var dev *string
	if deviceID != "" {
		dev = &deviceID
	}
	var id string
	insert := func(q pgx.Tx) error {
		return q.QueryRow(ctx, `
			INSERT INTO readers (stream_id, device_id, instance_id, expires_at, channel)
			VALUES ($1, $2, $3, now() + $4::interval, $5) RETURNING id::text`,
			streamID, dev, instance, ttl, ReaderChannel(instance)).Scan(&id)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if max <= 0 {
			return insert(tx)
		}
		// Readers of one stream opening at once are counted one after the other.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClassReaders, streamID); err != nil {
			return err
		}
		var n int
		err := tx.QueryRow(ctx, `SELECT count(*) FROM readers WHERE stream_id = $1 AND expires_at > now()`, streamID).Scan(&n)
		if err != nil {
			return err
		}
		if n >= max {
			return pushproxy.Errorf(pushproxy.EREADERLIMIT, "this stream has %d readers open, the most allowed; close one first", n)
		}
		return insert(tx)
	})
	if err != nil {
		return "", fmt.Errorf("open reader: %w", err)
	}
	return id, nil
}

// RefreshReaders extends the expiry of every reader instance has open, and removes readers
// of any instance that expired (a crashed instance's). It returns the devices of the removed
// readers: they may be asleep now, with events their reader was never sent.
func (s *Store) RefreshReaders(ctx context.Context, instance string, ttl time.Duration) ([]string, error) {
	_, err := s.pool.Exec(ctx, `UPDATE readers SET expires_at = now() + $2::interval WHERE instance_id = $1`, instance, ttl)
	if err != nil {
		return nil, fmt.Errorf("refresh readers: %w", err)
	}
	return s.dropReaders(ctx, `DELETE FROM readers WHERE expires_at < now() RETURNING device_id::text`)
}

// DropReaders removes every reader of instance (on shutdown, or at start after a crash) and
// returns their devices.
func (s *Store) DropReaders(ctx context.Context, instance string) ([]string, error) {
	return s.dropReaders(ctx, `DELETE FROM readers WHERE instance_id = $1 RETURNING device_id::text`, instance)
}

func (s *Store) dropReaders(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("drop readers: %w", err)
	}
	devices, err := pgx.CollectRows(rows, pgx.RowTo[*string])
	if err != nil {
		return nil, fmt.Errorf("drop readers: %w", err)
	}
	var out []string
	seen := map[string]bool{}
	for _, d := range devices {
		if d != nil && !seen[*d] {
			seen[*d] = true
			out = append(out, *d)
		}
	}
	return out, nil
}

// DeviceAwake reports whether a device has an unexpired reader open on any of its streams.
func (s *Store) DeviceAwake(ctx context.Context, deviceID string) (bool, error) {
	var awake bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM readers WHERE device_id = $1 AND expires_at > now())`, deviceID).Scan(&awake)
	if err != nil {
		return false, fmt.Errorf("device presence: %w", err)
	}
	return awake, nil
}

// StreamMark is what a reader waiting on a stream watches: its head and its state.
type StreamMark struct {
	Head  int64
	State string
}

// StreamMarks returns the head and state of the streams among ids that exist: the slow poll
// by which an instance catches notifications it missed.
func (s *Store) StreamMarks(ctx context.Context, ids []string) (map[string]StreamMark, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text, head_seq, state FROM streams WHERE id = ANY ($1::uuid[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("stream marks: %w", err)
	}
	out := make(map[string]StreamMark, len(ids))
	var (
		id string
		m  StreamMark
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &m.Head, &m.State}, func() error {
		out[id] = m
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stream marks: %w", err)
	}
	return out, nil
}
