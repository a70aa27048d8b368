package store

import "github.com/jackc/pgx/v5"

// queueTrimBacklogBytes queues on b the statement that drops the oldest events of the given
// streams whose backlog is over max stored bytes (EventSize), until it is within max, as the
// trim by count does: their floor moves up and readers behind it are told of a gap. The newest event is always kept, so a
// stream's backlog is never emptied by the bound (one event is bounded by the event size).
// Only streams over the bound are scanned.
func queueTrimBacklogBytes(b *pgx.Batch, ids []string, max int64) {
	if max <= 0 || len(ids) == 0 {
		return
	}
	b.Queue(`
		WITH over AS (
			SELECT s.id, s.floor_seq, s.head_seq, s.backlog_bytes - $2::bigint AS excess
			FROM streams s WHERE s.id = ANY($1::uuid[]) AND s.backlog_bytes > $2::bigint
		), cut AS (
			SELECT c.stream_id, LEAST(min(c.seq), min(c.head_seq) - 1) AS hi FROM (
				SELECT e.stream_id, e.seq, o.head_seq, o.excess,
					sum(`+sizeExpr+`) OVER (PARTITION BY e.stream_id ORDER BY e.seq) AS cum
				FROM events e JOIN over o ON e.stream_id = o.id AND e.seq > o.floor_seq
			) c WHERE c.cum >= c.excess GROUP BY c.stream_id
		), d AS (
			DELETE FROM events e USING cut, over o
			WHERE e.stream_id = cut.stream_id AND o.id = cut.stream_id AND e.seq > o.floor_seq AND e.seq <= cut.hi
			RETURNING e.stream_id, `+sizeExpr+` AS n
		)
		UPDATE streams s SET floor_seq = cut.hi,
			backlog_bytes = s.backlog_bytes - coalesce((SELECT sum(d.n) FROM d WHERE d.stream_id = s.id), 0)
		FROM cut WHERE s.id = cut.stream_id AND cut.hi > s.floor_seq`, ids, max)
}
