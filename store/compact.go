package store

import (
	"github.com/jackc/pgx/v5"
	"github.com/pushproxy/pushproxy"
)

// compactKeys knows the newest seq of each (stream, compaction key) among the events of a
// commit: events it replaces in the same batch are not inserted at all, and compact deletes
// the older queued ones.
type compactKeys struct {
	at   map[string]int // stream + NUL + key -> index in the slices below
	ids  []string
	keys [][]byte
	seqs []int64
}

// newCompactKeys gathers the keys of the appends' events.
func newCompactKeys(appends []Append) compactKeys {
	var c compactKeys
	for _, a := range appends {
		for _, ev := range a.Events {
			if ev.CompactKey == "" {
				continue
			}
			k := a.StreamID + "\x00" + ev.CompactKey
			if i, ok := c.at[k]; ok {
				c.seqs[i] = max(c.seqs[i], ev.Seq)
				continue
			}
			if c.at == nil {
				c.at = map[string]int{}
			}
			c.at[k] = len(c.ids)
			c.ids, c.keys, c.seqs = append(c.ids, a.StreamID), append(c.keys, []byte(ev.CompactKey)), append(c.seqs, ev.Seq)
		}
	}
	return c
}

// replaced reports whether a newer event of the same batch replaces ev of stream.
func (c *compactKeys) replaced(stream string, ev pushproxy.Event) bool {
	if ev.CompactKey == "" {
		return false
	}
	return c.seqs[c.at[stream+"\x00"+ev.CompactKey]] > ev.Seq
}

// compactKey is the value of an event's compact_key column (nil: no key, never compacted).
func compactKey(ev pushproxy.Event) []byte {
	if ev.CompactKey == "" {
		return nil
	}
	return []byte(ev.CompactKey)
}

// queue queues on b the statement that deletes the queued events that the events just
// inserted replace: those of the same stream with the same key and an older seq, and takes
// their size off the streams' backlog_bytes. The survivors keep their seqs, ids, types and data; the stream's
// head and floor do not move, so resumption, acknowledgement and wake-ups are unchanged.
// It runs after the commit's UPDATE of streams, which locked the streams' rows first (as an
// acknowledgement does), so the two never deadlock over the events.
// Only the streams for which fenced is true (their appends passed the lease fence) are
// compacted: a holder that lost its lease changes nothing.
func (c *compactKeys) queue(b *pgx.Batch, fenced func(stream string) bool) {
	var (
		ids  []string
		keys [][]byte
		seqs []int64
	)
	for i, id := range c.ids {
		if fenced(id) {
			ids, keys, seqs = append(ids, id), append(keys, c.keys[i]), append(seqs, c.seqs[i])
		}
	}
	if len(ids) > 0 {
		b.Queue(compactSQL, ids, keys, seqs)
	}
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
