package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
)

// compactKeys gathers, while a commit builds its rows, the newest seq of each (stream,
// compaction key) among the events it inserts. The zero value is ready to use.
type compactKeys struct {
	at   map[string]int // stream + NUL + key -> index in the slices below
	ids  []string
	keys [][]byte
	seqs []int64
}

// add records ev of stream and returns the value of its compact_key column (nil: no key,
// never compacted).
func (c *compactKeys) add(stream string, ev pushproxy.Event) []byte {
	if ev.CompactKey == "" {
		return nil
	}
	k := stream + "\x00" + ev.CompactKey
	if i, ok := c.at[k]; ok {
		c.seqs[i] = max(c.seqs[i], ev.Seq)
		return []byte(ev.CompactKey)
	}
	if c.at == nil {
		c.at = map[string]int{}
	}
	c.at[k] = len(c.ids)
	c.ids, c.keys, c.seqs = append(c.ids, stream), append(c.keys, []byte(ev.CompactKey)), append(c.seqs, ev.Seq)
	return []byte(ev.CompactKey)
}

// compact deletes, in one statement, the queued events that the events just inserted
// replace: those of the same stream with the same key and an older seq (the inserted ones
// included, when a batch holds several events with one key), and takes their size off the
// streams' backlog_bytes. The survivors keep their seqs, ids, types and data; the stream's
// head and floor do not move, so resumption, acknowledgement and wake-ups are unchanged.
// It runs after the commit's UPDATE of streams, which locked the streams' rows first (as an
// acknowledgement does), so the two never deadlock over the events.
func (c *compactKeys) compact(ctx context.Context, tx pgx.Tx) error {
	if len(c.ids) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, compactSQL, c.ids, c.keys, c.seqs)
	if err != nil {
		return fmt.Errorf("compact backlogs: %w", err)
	}
	return nil
}

// compactSQL takes the (stream, key, newest seq) triples of a commit; it finds the older
// events by the partial index events_compact_key.
const compactSQL = `
	WITH d AS (
		DELETE FROM events e USING unnest($1::uuid[], $2::bytea[], $3::bigint[]) AS k(id, key, seq)
		WHERE e.stream_id = k.id AND e.compact_key = k.key AND e.seq < k.seq
		RETURNING e.stream_id, ` + sizeExpr + ` AS n
	)
	UPDATE streams s SET backlog_bytes = s.backlog_bytes - d.n
	FROM (SELECT stream_id, sum(n) AS n FROM d GROUP BY stream_id) d
	WHERE s.id = d.stream_id`
