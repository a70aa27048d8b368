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
// it: those events no longer count as backlog. Acknowledging moves the stream's floor and
// queues the rows below it in events_reclaim; ReclaimAcked deletes them later, in batches,
// so the stream's row lock is held for one small update, never for a delete of the backlog.
//
// The id is matched, in order, against: the id of the reader's previous acknowledgement;
// the oldest queued event replayed with that id (the oldest, so that events which inherited
// the same id from the origin are replayed rather than lost); a proxy-assigned id. An id
// that matches nothing yields every queued event and Gap. provided=false (no Last-Event-ID
// at all) yields every queued event, without acknowledging anything.
func (s *Store) Resume(ctx context.Context, streamID, lastEventID string, provided bool) (Cursor, error) {
	return s.ResumeRead(ctx, streamID, nil, lastEventID, provided)
}

// ResumeRead is Resume for a reader that has read the stream's row in its request already
// (read, from GetStream; nil: none): the first attempt decides from that read, and only
// an acknowledgement writes, in one round trip. It reads the row again only when the floor
// moved in between (a commit trimmed the backlog, another reader acknowledged).
func (s *Store) ResumeRead(ctx context.Context, streamID string, read *pushproxy.Stream, lastEventID string, provided bool) (Cursor, error) {
	if !pushproxy.IsUUID(streamID) {
		return Cursor{}, errNoStream(streamID)
	}
	var m mark
	if read != nil {
		m = mark{head: read.HeadSeq, floor: read.FloorSeq, ackedSeq: read.AckedSeq, ackedID: read.AckedID}
	}
	for attempt := 0; ; attempt++ {
		if read == nil || attempt > 0 {
			var ackedID []byte
			err := s.pool.QueryRow(ctx, `SELECT head_seq, floor_seq, acked_seq, acked_id FROM streams WHERE id = $1`, streamID).
				Scan(&m.head, &m.floor, &m.ackedSeq, &ackedID)
			m.ackedID = string(ackedID)
			if errors.Is(err, pgx.ErrNoRows) {
				return Cursor{}, errNoStream(streamID)
			}
			if err != nil {
				return Cursor{}, fmt.Errorf("read stream: %w", err)
			}
		}
		cur, acked, err := s.resume(ctx, streamID, m, lastEventID, provided)
		if errors.Is(err, errFloorMoved) {
			continue // the acknowledged size is stale: read again
		}
		if err == nil && !acked {
			// An acknowledgement records the read itself.
			err = s.touchRead(ctx, streamID)
		}
		return cur, err
	}
}

// mark is what resume needs of a stream's row.
type mark struct {
	head, floor, ackedSeq int64
	ackedID               string
}

// errFloorMoved: the stream's floor changed under an acknowledgement.
var errFloorMoved = errors.New("floor moved")

// resume resolves lastEventID against m, the stream's row as read, and acknowledges what it
// names (acked: whether it did).
func (s *Store) resume(ctx context.Context, streamID string, m mark, lastEventID string, provided bool) (cur Cursor, acked bool, err error) {
	if !provided {
		return Cursor{After: m.floor, Gap: m.floor > m.ackedSeq}, false, nil
	}
	seq, found := int64(0), false
	switch {
	case lastEventID == m.ackedID:
		seq, found = m.ackedSeq, true
	case lastEventID == "":
		// Events without an origin id are replayed under proxy ids: an empty id names
		// none of them.
	default:
		// An origin's id, or a proxy id: found (by the oldest queued event replayed with
		// it) and acknowledged in one statement.
		n, isProxy := pushproxy.ParseProxyID(lastEventID)
		var proxySeq *int64
		if isProxy {
			proxySeq = &n
		}
		var err error
		if found, err = s.ackByID(ctx, streamID, m.floor, lastEventID, proxySeq, &seq); err != nil {
			return cur, false, err
		}
		if found {
			return Cursor{After: seq}, true, nil
		}
		if isProxy && n <= m.head {
			seq, found = n, true // at or below the floor
		}
	}
	if !found {
		// Signal the gap once: the reader's id becomes the acknowledged position, so
		// coming back with it again resumes without a new gap signal.
		return Cursor{After: m.floor, Gap: true}, true, s.ack(ctx, streamID, m.floor, m.floor, lastEventID)
	}
	if seq < m.floor {
		// Acknowledged (or trimmed) already; trimmed events past it are missing.
		return Cursor{After: m.floor, Gap: m.floor > max(seq, m.ackedSeq)}, false, nil
	}
	if seq == m.ackedSeq && lastEventID == m.ackedID {
		return Cursor{After: seq}, false, nil
	}
	return Cursor{After: seq}, true, s.ack(ctx, streamID, m.floor, seq, lastEventID)
}

// touchRead records that a device read the stream, so it is not idle (--stream-idle-ttl):
// at most once a minute per stream, and without waiting for the row's lock (a commit holding
// it means the read is recorded by the next one).
func (s *Store) touchRead(ctx context.Context, streamID string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE streams SET read_at = now() WHERE id = (
			SELECT id FROM streams WHERE id = $1 AND `+readStale+`
			FOR NO KEY UPDATE SKIP LOCKED)`, streamID)
	if err != nil {
		return fmt.Errorf("record read: %w", err)
	}
	return nil
}

// ack records that the reader has everything up to seq (>= floor, the floor read before):
// the floor moves to seq, the backlog's size drops by the acknowledged events', their rows
// are queued for ReclaimAcked, and the read is recorded (touchRead). It applies only if the
// floor has not moved since it was read (else errFloorMoved). One round trip: the
// transaction is sent whole (a batch), so the stream's row lock, taken by the statement
// after it summed the acknowledged events' size, is held for the rest of that round trip
// and the commit. The commit is not waited for (synchronous_commit off): an acknowledgement
// lost in a crash loses no event, the device is served again what it had, and acknowledges
// it again with its next Last-Event-ID. The lock waits at most the lock timeout.
func (s *Store) ack(ctx context.Context, streamID string, floor, seq int64, lastEventID string) error {
	var moved bool
	err := s.inAckTx(ctx, ackSQL, []any{streamID, floor, seq, []byte(lastEventID)}, &moved)
	if errors.Is(err, pgx.ErrNoRows) {
		return errFloorMoved
	}
	return err
}

// ackByID acknowledges up to the oldest queued event after floor replayed with the id
// lastEventID, as ack does, and reports whether there is one (its seq in *seq). proxySeq,
// when lastEventID is a proxy id, is the seq it names.
func (s *Store) ackByID(ctx context.Context, streamID string, floor int64, lastEventID string, proxySeq *int64, seq *int64) (found bool, err error) {
	var (
		at    *int64
		moved bool
	)
	if err := s.inAckTx(ctx, ackByIDSQL, []any{streamID, floor, []byte(lastEventID), proxySeq}, &at, &moved); err != nil {
		return false, err
	}
	if at == nil {
		return false, nil
	}
	if !moved {
		return true, errFloorMoved
	}
	*seq = *at
	return true, nil
}

// inAckTx runs an acknowledging statement, which returns one row (scanned into dest), in a
// transaction sent whole (see ack).
func (s *Store) inAckTx(ctx context.Context, sql string, args []any, dest ...any) error {
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(s.lockTimeoutSQL)
	b.Queue(`SET LOCAL synchronous_commit = off`)
	b.Queue(sql, args...).QueryRow(func(row pgx.Row) error { return row.Scan(dest...) })
	b.Queue(`COMMIT`)
	conn, err := s.pool.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acknowledge: %w", classify(err))
	}
	defer conn.Release()
	err = conn.SendBatch(ctx, b).Close()
	if err != nil {
		// The statement failed (a lock timeout, say): Postgres skipped the COMMIT and the
		// transaction is aborted. Ended here, the connection goes back to the pool instead
		// of being closed by it.
		rollback(ctx, conn)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if err != nil {
		return fmt.Errorf("acknowledge: %w", classify(err))
	}
	return nil
}

// queueReclaim records that the rows of streamID's events up to seq (at or below its floor)
// are garbage, for ReclaimAcked.
func queueReclaim(ctx context.Context, tx pgx.Tx, streamID string, seq int64) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO events_reclaim (stream_id, upto_seq) VALUES ($1, $2)
		ON CONFLICT (stream_id) DO UPDATE SET upto_seq = GREATEST(events_reclaim.upto_seq, excluded.upto_seq)`,
		streamID, seq)
	if err != nil {
		return fmt.Errorf("queue reclaim: %w", err)
	}
	return nil
}

// ReclaimAcked deletes up to about limit rows of acknowledged events (those at or below
// their stream's floor, queued in events_reclaim by acknowledgements), in statements of at
// most batch rows taken from up to batch queued streams at once, each its own short
// transaction. It never locks a stream's row, so it holds up no request or commit. It
// returns how many rows it deleted; fewer than limit means the queue is done, and a caller
// loops (with a pause between calls) while it gets limit or more.
func (s *Store) ReclaimAcked(ctx context.Context, batch, limit int) (int64, error) {
	batch, limit = max(batch, 1), max(limit, 1)
	var total int64
	for total < int64(limit) {
		var ids []string
		var n int64
		err := s.pool.QueryRow(ctx, reclaimSQL, batch).Scan(&n, &ids)
		if err != nil {
			return total, fmt.Errorf("reclaim acknowledged events: %w", err)
		}
		total += n
		if len(ids) == 0 {
			break
		}
		// The streams of this batch whose rows up to their mark are all gone leave the
		// queue (unless another acknowledgement raised the mark meanwhile: then rows are
		// left and the stream stays).
		tag, err := s.pool.Exec(ctx, reclaimDoneSQL, ids)
		if err != nil {
			return total, fmt.Errorf("reclaim acknowledged events: %w", err)
		}
		if n == 0 && tag.RowsAffected() == 0 {
			break // nothing deleted and no stream done: nothing more to do now
		}
	}
	return total, nil
}

// EventsAfter returns up to limit queued events of a stream with seq > after, oldest first.
// Events at or below the stream's floor are gone, whether or not their rows are reclaimed.
func (s *Store) EventsAfter(ctx context.Context, streamID string, after int64, limit int) ([]pushproxy.Event, error) {
	rows, err := s.pool.Query(ctx, pageSQL, streamID, after, limit)
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

// pageSQL reads a page of a stream's events after a position and above its floor. The floor
// comes from a scalar subquery (evaluated once, before the scan) so that the bound is an
// index condition of the range scan: as a join condition, Postgres filters the stream's
// whole backlog row by row instead.
const pageSQL = `
		SELECT seq, last_event_id, type, data FROM events
		WHERE stream_id = $1 AND seq > GREATEST($2::bigint, (SELECT floor_seq FROM streams WHERE id = $1))
		ORDER BY seq LIMIT $3`

// PageRequest asks for up to Limit events of a stream after After (as EventsAfter).
type PageRequest struct {
	StreamID string
	After    int64
	Limit    int
}

// EventsAfterMany answers many page requests in one statement (one index range scan per
// request): the readers woken by one commit are served by one query, not one each. The
// result holds the events of reqs[i] at index i.
func (s *Store) EventsAfterMany(ctx context.Context, reqs []PageRequest) ([][]pushproxy.Event, error) {
	ids := make([]string, len(reqs))
	afters := make([]int64, len(reqs))
	limits := make([]int32, len(reqs))
	for i, r := range reqs {
		if !pushproxy.IsUUID(r.StreamID) {
			return nil, errNoStream(r.StreamID)
		}
		ids[i], afters[i], limits[i] = r.StreamID, r.After, int32(r.Limit)
	}
	rows, err := s.pool.Query(ctx, pagesSQL, ids, afters, limits)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	out := make([][]pushproxy.Event, len(reqs))
	var (
		i             int64
		seq           int64
		id, typ, data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&i, &seq, &id, &typ, &data}, func() error {
		out[i-1] = append(out[i-1], pushproxy.Event{Seq: seq, LastEventID: string(id), Type: string(typ), Data: string(data)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return out, nil
}

// readStale is true of a stream whose read mark (read_at) is due again: it is written at
// most once a minute, so that reads keep their updates few and HOT.
const readStale = `read_at < now() - interval '1 minute'`

// ackSQL moves a stream's floor, if it is where the acknowledgement read it ($2), to $3,
// takes the acknowledged events' size off the backlog's (summed before the row is locked: a
// subquery on parameters only is run once, before the update), queues the rows below it
// for ReclaimAcked (when it moved), and records the read at most once a minute (read_at is
// indexed: an unchanged value keeps the update HOT).
const ackSQL = `
		WITH u AS (
			UPDATE streams SET acked_seq = $3, acked_id = $4, floor_seq = $3,
				backlog_bytes = backlog_bytes - (SELECT coalesce(sum(` + sizeExpr + `), 0) FROM events e
					WHERE e.stream_id = $1 AND e.seq > $2 AND e.seq <= $3),
				read_at = CASE WHEN ` + readStale + ` THEN now() ELSE read_at END,
				updated_at = now()
			WHERE id = $1 AND floor_seq = $2
			RETURNING true
		), q AS (
			-- Only a floor that moved queues rows: the reclaimer deletes up to the mark,
			-- whatever the floor.
			INSERT INTO events_reclaim (stream_id, upto_seq) SELECT $1, $3 FROM u WHERE $3::bigint > $2::bigint
			ON CONFLICT (stream_id) DO UPDATE SET upto_seq = GREATEST(events_reclaim.upto_seq, excluded.upto_seq)
		)
		SELECT true FROM u`

// ackByIDSQL is ackSQL up to the oldest queued event after the floor ($2) replayed with the
// id $3: the oldest whose origin id is $3 (the subquery, fenced by OFFSET 0, walks the
// stream's backlog in seq order and stops at the first match: unfenced, Postgres may
// estimate the match rare and scan the table and sort instead), or, when $3 is a proxy id
// (the seq it names in $4, else NULL) and no event up to that seq carries it as an origin
// id, that seq, if it is above the floor and at most the head. A proxy id's walk stops at
// its seq: the events up to it are those the acknowledgement's size is summed over. It
// returns the seq found (NULL: none) and whether the floor moved (false: not where the
// acknowledgement read it, or nothing found).
const ackByIDSQL = `
		WITH t AS (
			SELECT seq FROM (SELECT coalesce(
				(SELECT seq FROM (SELECT seq, last_event_id FROM events WHERE stream_id = $1 AND seq > $2
					AND ($4::bigint IS NULL OR seq <= $4::bigint)
					ORDER BY seq OFFSET 0) b
				WHERE last_event_id = $3 LIMIT 1),
				(SELECT $4::bigint FROM streams WHERE id = $1 AND $4::bigint > $2 AND $4::bigint <= head_seq)) AS seq) f
			WHERE seq IS NOT NULL
		), u AS (
			UPDATE streams SET acked_seq = (SELECT seq FROM t), acked_id = $3, floor_seq = (SELECT seq FROM t),
				backlog_bytes = backlog_bytes - (SELECT coalesce(sum(` + sizeExpr + `), 0) FROM events e
					WHERE e.stream_id = $1 AND e.seq > $2 AND e.seq <= (SELECT seq FROM t)),
				read_at = CASE WHEN ` + readStale + ` THEN now() ELSE read_at END,
				updated_at = now()
			WHERE id = $1 AND floor_seq = $2 AND EXISTS (SELECT 1 FROM t)
			RETURNING true
		), q AS (
			INSERT INTO events_reclaim (stream_id, upto_seq) SELECT $1, t.seq FROM t, u
			ON CONFLICT (stream_id) DO UPDATE SET upto_seq = GREATEST(events_reclaim.upto_seq, excluded.upto_seq)
		)
		SELECT (SELECT seq FROM t), EXISTS (SELECT 1 FROM u)`

// reclaimSQL deletes a batch of a stream's rows at or below a reclaim mark.
const reclaimSQL = `
	WITH q AS (
		SELECT stream_id, upto_seq FROM events_reclaim ORDER BY queued_at LIMIT $1
	), victims AS (
		SELECT v.ctid FROM q CROSS JOIN LATERAL (
			SELECT ctid FROM events WHERE stream_id = q.stream_id AND seq <= q.upto_seq ORDER BY seq LIMIT $1) v
		LIMIT $1
	), d AS (
		DELETE FROM events WHERE ctid = ANY (ARRAY(SELECT ctid FROM victims))
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM d), coalesce((SELECT array_agg(stream_id::text) FROM q), '{}')`

// reclaimDoneSQL takes the streams of a reclaim batch ($1) with nothing left up to their
// mark off the queue.
const reclaimDoneSQL = `
	DELETE FROM events_reclaim r WHERE r.stream_id = ANY ($1::uuid[])
		AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = r.stream_id AND e.seq <= r.upto_seq)`

// pagesSQL reads pages of many streams (EventsAfterMany).
const pagesSQL = `
		SELECT w.i, e.seq, e.last_event_id, e.type, e.data
		FROM unnest($1::uuid[], $2::bigint[], $3::int[]) WITH ORDINALITY AS w(id, after, lim, i)
		CROSS JOIN LATERAL (
			SELECT seq, last_event_id, type, data FROM events
			WHERE stream_id = w.id AND seq > GREATEST(w.after, (SELECT floor_seq FROM streams WHERE id = w.id))
			ORDER BY seq LIMIT w.lim) e
		ORDER BY w.i, e.seq`
