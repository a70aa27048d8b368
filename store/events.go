package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// Cursor is where a reader resumes in a stream's backlog.
type Cursor struct {
	// After is the seq after which the reader gets events.
	After int64
	// Gap is true when events the reader has not seen may be gone: its Last-Event-ID is no
	// longer queued (or was never seen), or the backlog overflowed and was trimmed.
	Gap bool
}

// Resume resolves a reader's Last-Event-ID into a cursor and acknowledges everything up to
// it: those events no longer count as backlog and are deleted.
//
// The id is matched, in order, against: the id of the reader's previous acknowledgement;
// the oldest queued event replayed with that id (the oldest, so that events which inherited
// the same id from the origin are replayed rather than lost); a proxy-assigned id. An id
// that matches nothing yields every queued event and Gap. provided=false (no Last-Event-ID
// at all) yields every queued event, without acknowledging anything.
func (s *Store) Resume(ctx context.Context, streamID, lastEventID string, provided bool) (Cursor, error) {
	if !pushproxy.IsUUID(streamID) {
		return Cursor{}, errNoStream(streamID)
	}
	if err := s.touchRead(ctx, streamID); err != nil {
		return Cursor{}, err
	}
	var cur Cursor
	err := s.lockingTx(ctx, func(tx pgx.Tx) error {
		var (
			head, floor, ackedSeq int64
			ackedID               []byte
		)
		err := tx.QueryRow(ctx, `SELECT head_seq, floor_seq, acked_seq, acked_id FROM streams WHERE id = $1`, streamID).
			Scan(&head, &floor, &ackedSeq, &ackedID)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNoStream(streamID)
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
		if !provided {
			cur = Cursor{After: floor, Gap: floor > ackedSeq}
			return nil
		}
		seq, found := int64(0), false
		switch {
		case lastEventID == string(ackedID):
			seq, found = ackedSeq, true
		case lastEventID == "":
			// Events without an origin id are replayed under proxy ids: an empty id names
			// none of them.
		default:
			err := tx.QueryRow(ctx, `
				SELECT seq FROM events WHERE stream_id = $1 AND seq > $2 AND last_event_id = $3
				ORDER BY seq LIMIT 1`, streamID, floor, []byte(lastEventID)).Scan(&seq)
			switch {
			case err == nil:
				found = true
			case !errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("find last event id: %w", err)
			default:
				if n, ok := pushproxy.ParseProxyID(lastEventID); ok && n <= head {
					seq, found = n, true
				}
			}
		}
		if !found {
			// Signal the gap once: the reader's id becomes the acknowledged position, so
			// coming back with it again resumes without a new gap signal.
			cur = Cursor{After: floor, Gap: true}
			return ack(ctx, tx, streamID, floor, lastEventID)
		}
		if seq < floor {
			// Acknowledged (or trimmed) already; trimmed events past it are missing.
			cur = Cursor{After: floor, Gap: floor > max(seq, ackedSeq)}
			return nil
		}
		cur = Cursor{After: seq}
		if seq == ackedSeq && lastEventID == string(ackedID) {
			return nil
		}
		return ack(ctx, tx, streamID, seq, lastEventID)
	})
	return cur, err
}

// touchRead records that a device read the stream, so it is not idle (--stream-idle-ttl):
// at most once a minute per stream, and without waiting for the row's lock (a commit holding
// it means the read is recorded by the next one).
func (s *Store) touchRead(ctx context.Context, streamID string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE streams SET read_at = now() WHERE id = (
			SELECT id FROM streams WHERE id = $1 AND read_at < now() - interval '1 minute'
			FOR NO KEY UPDATE SKIP LOCKED)`, streamID)
	if err != nil {
		return fmt.Errorf("record read: %w", err)
	}
	return nil
}

// ack records that the reader has everything up to seq, and deletes it.
func ack(ctx context.Context, tx pgx.Tx, streamID string, seq int64, lastEventID string) error {
	_, err := tx.Exec(ctx, `
		UPDATE streams SET acked_seq = $2, acked_id = $3, floor_seq = GREATEST(floor_seq, $2), updated_at = now()
		WHERE id = $1 AND acked_seq <= $2`, streamID, seq, []byte(lastEventID))
	if err != nil {
		return fmt.Errorf("acknowledge: %w", err)
	}
	// The UPDATE above locked the stream's row first, as Commit does, so the two never
	// deadlock over its events.
	_, err = tx.Exec(ctx, `
		WITH d AS (DELETE FROM events e WHERE e.stream_id = $1 AND e.seq <= $2 RETURNING `+sizeExpr+` AS n)
		UPDATE streams SET backlog_bytes = backlog_bytes - (SELECT coalesce(sum(n), 0) FROM d)
		WHERE id = $1`, streamID, seq)
	if err != nil {
		return fmt.Errorf("delete acknowledged events: %w", err)
	}
	return nil
}

// EventsAfter returns up to limit queued events of a stream with seq > after, oldest first.
func (s *Store) EventsAfter(ctx context.Context, streamID string, after int64, limit int) ([]pushproxy.Event, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT seq, last_event_id, type, data FROM events
		WHERE stream_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, streamID, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	var (
		evs           []pushproxy.Event
		seq           int64
		id, typ, data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&seq, &id, &typ, &data}, func() error {
		evs = append(evs, pushproxy.Event{Seq: seq, LastEventID: string(id), Type: string(typ), Data: string(data)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return evs, nil
}
