package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pushproxy/pushproxy"
)

// Append is what one holder has to commit for its stream: events (with their sequence
// numbers already assigned, contiguous after the stream's committed head), the upstream
// resume point after them, and optional status changes. Everything is fenced by Epoch.
type Append struct {
	StreamID string
	Epoch    int64
	Events   []pushproxy.Event
	// HeadSeq is the seq of the newest event the holder has produced (the stream's head
	// after this append).
	HeadSeq  int64
	ResumeID string
	RetryMS  int64 // -1: unchanged

	// State, when not "", ends holding: closed or failed, with StateReason.
	State       string
	StateReason string
	// UpstreamStatus, when not 0, records the origin's last HTTP status.
	UpstreamStatus int
	// Connected records a change of the upstream connection: ConnUnchanged (the zero
	// value), ConnDown or ConnUp.
	Connected int
	// Connects is added to the stream's count of successful connects.
	Connects int64
	// Error, when not "", is recorded as the stream's last error.
	Error string
	// Urgent marks that Events hold an event type the stream wakes its device for at once.
	Urgent bool
}

// Values of Append.Connected.
const (
	ConnUnchanged = 0
	ConnDown      = 1
	ConnUp        = 2
)

// connectedSQL maps Append.Connected to what the commit statement takes: -1 unchanged,
// 0 disconnected, 1 connected.
var connectedSQL = map[int]int32{ConnUnchanged: -1, ConnDown: 0, ConnUp: 1}

// CommitResult tells which appends took effect.
type CommitResult struct {
	// Lost lists the appends that were discarded: the stream's lease has a newer epoch or
	// another owner, or the stream is no longer held. Their holders must stop.
	Lost []Lease
	// Events is the number of events inserted, and Bytes their size (EventSize).
	Events int
	Bytes  int64
	// Wakeups is the number of wake-ups queued or made urgent.
	Wakeups int64
}

// Lease names a stream and the fencing epoch of one lease on it.
type Lease struct {
	StreamID string
	Epoch    int64
}

// CommitOptions bound what Commit keeps.
type CommitOptions struct {
	// MaxBacklog is the most events a stream keeps queued; older ones are trimmed (readers
	// then see a gap signal). 0: no bound.
	MaxBacklog int64
	// MaxBacklogBytes is the most stored bytes (EventSize) a stream keeps queued; the oldest
	// events beyond it are trimmed, as by MaxBacklog. 0: no bound.
	MaxBacklogBytes int64
	// Wake, when set, queues a wake-up for the sleeping devices of streams that got events,
	// in the same transaction.
	Wake *WakePolicy
}

// Commit appends a batch of events for many streams in one transaction: each stream's
// resume point and status are updated under its lease fence, the events of the streams that
// pass the fence are copied in, overflowing backlogs are trimmed, and the instances with a reader
// open on a stream with new events are notified (pushproxy_notify_readers: once per commit). Appends must name distinct streams.
func (s *Store) Commit(ctx context.Context, owner string, appends []Append, opts CommitOptions) (CommitResult, error) {
	var res CommitResult
	if len(appends) == 0 {
		return res, nil
	}
	maxBacklog := opts.MaxBacklog
	if maxBacklog <= 0 {
		maxBacklog = 1 << 62
	}
	n := len(appends)
	var (
		ids       = make([]string, n)
		epochs    = make([]int64, n)
		heads     = make([]int64, n)
		resumes   = make([][]byte, n)
		retries   = make([]int64, n)
		states    = make([]string, n)
		reasons   = make([]string, n)
		statuses  = make([]int32, n)
		connected = make([]int32, n)
		connects  = make([]int64, n)
		errs      = make([]string, n)
		sizes     = make([]int64, n)
	)
	compacted := newCompactKeys(appends)
	for i, a := range appends {
		ids[i], epochs[i], heads[i] = a.StreamID, a.Epoch, a.HeadSeq
		resumes[i], retries[i] = []byte(a.ResumeID), a.RetryMS
		states[i], reasons[i] = a.State, cleanText(a.StateReason)
		statuses[i], connected[i], connects[i], errs[i] = int32(a.UpstreamStatus), connectedSQL[a.Connected], a.Connects, cleanText(a.Error)
		// The events that will be stored are those the trim below keeps: seq > head-maxBacklog.
		for _, ev := range a.Events {
			if ev.Seq > a.HeadSeq-maxBacklog && !compacted.replaced(a.StreamID, ev) {
				sizes[i] += EventSize(ev)
			}
		}
	}
	conn, err := s.pool.pool.Acquire(ctx)
	if err != nil {
		return CommitResult{}, classify(fmt.Errorf("commit: %w", err))
	}
	defer conn.Release()
	// The first round trip begins the transaction and updates the streams; the statements
	// that follow depend on what the update found; the last round trip queues the
	// wake-ups, notifies and commits (inPipelinedTx).
	first := &pgx.Batch{}
	first.Queue(`BEGIN`)
	// The commit's statements find every row by index, and must whatever the statistics say
	// (see the UPDATE below): a sequential scan of streams per commit, chosen with statistics
	// taken while the table was small, cost 6 ms a commit in the handoff bench.
	first.Queue(`SET LOCAL enable_seqscan = off`)
	// A small commit's statements are planned once per connection rather than for each
	// commit (the store's sessions plan each statement for its arguments otherwise: Open):
	// every row is found by its key, and planning the UPDATE and the wake-ups took a third of
	// a small commit (BenchmarkCommitSmall: 1.0 ms instead of 1.4-1.7 ms). A large commit
	// keeps plans made for its arrays' lengths: with the generic ones, ingest at its ceiling
	// (4,096 events over 100 streams a commit) committed 134,000-166,000 events/s instead
	// of 166,000-195,000. TestPlansUseIndexes checks both kinds.
	if n <= genericPlanMaxStreams {
		first.Queue(`SET LOCAL plan_cache_mode = force_generic_plan`)
	}
	type floors struct{ before, after int64 }
	var (
		fenced    = make(map[string]floors, n)
		overBytes []string // streams that may be over opts.MaxBacklogBytes
	)
	// trim_from records the floor the UPDATE found on the locked row (SET reads the row
	// before the update): the statement's snapshot may be older than that row when an
	// acknowledgement moved the floor while the UPDATE waited for the lock, and the
	// acknowledged rows, still there for ReclaimAcked, are not the trim's to delete.
	//
	// The streams are found by their ids (streams_pkey), however stale the statistics:
	// "held" is written as "neither closed nor failed" (the CHECK allows nothing else),
	// so that no partial index on held streams matches, s.id = ANY($1) tells the
	// planner how few rows it will touch, and no sequential scan is planned (commitBegin). Statistics taken before the instance's streams
	// were handed off (a fleet's first minutes, a bench) otherwise made Postgres read
	// every stream of the owner (by streams_held_owner_created, or a sequential scan)
	// and filter them by id: 1.4 ms for a commit of 11 of 500 streams, growing with the
	// streams the instance holds (TestCommitFindsStreamsByIDOnStaleStatistics).
	q := first.Queue(`
		WITH u AS (
			SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bigint[],
				$6::text[], $7::text[], $8::int[], $9::int[], $10::bigint[], $11::text[], $14::bigint[])
			AS u(id, epoch, head, resume, retry, state, reason, status, connected, connects, err, size)
		), upd AS (
			UPDATE streams s SET
				head_seq = u.head,
				resume_id = u.resume,
				retry_ms = CASE WHEN u.retry >= 0 THEN u.retry ELSE s.retry_ms END,
				floor_seq = GREATEST(s.floor_seq, u.head - $12::bigint),
				trim_from = s.floor_seq,
				backlog_bytes = s.backlog_bytes + u.size,
				state = CASE WHEN u.state <> '' THEN u.state ELSE s.state END,
				state_reason = CASE WHEN u.state <> '' THEN u.reason ELSE s.state_reason END,
				closed_at = CASE WHEN u.state <> '' THEN now() ELSE s.closed_at END,
				lease_owner = CASE WHEN u.state <> '' THEN NULL ELSE s.lease_owner END,
				upstream_status = CASE WHEN u.status <> 0 THEN u.status ELSE s.upstream_status END,
				connected = CASE WHEN u.state <> '' THEN false WHEN u.connected >= 0 THEN u.connected = 1 ELSE s.connected END,
				connects = s.connects + u.connects,
				last_error = CASE WHEN u.err <> '' THEN u.err ELSE s.last_error END,
				last_error_at = CASE WHEN u.err <> '' THEN now() ELSE s.last_error_at END,
				updated_at = now()
			FROM u
			WHERE s.id = ANY($1::uuid[]) AND s.id = u.id AND s.lease_owner = $13 AND s.lease_epoch = u.epoch
				AND s.state NOT IN ('closed', 'failed')
			RETURNING s.id::text, s.floor_seq, s.trim_from, s.backlog_bytes
		)
		SELECT * FROM upd`,
		ids, epochs, heads, resumes, retries, states, reasons, statuses, connected, connects, errs,
		maxBacklog, owner, sizes)
	q.Query(func(rows pgx.Rows) error {
		var (
			id                   string
			after, before, bytes int64
		)
		_, err := pgx.ForEachRow(rows, []any{&id, &after, &before, &bytes}, func() error {
			fenced[id] = floors{before, after}
			if opts.MaxBacklogBytes > 0 && bytes > opts.MaxBacklogBytes {
				overBytes = append(overBytes, id)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("update streams: %w", err)
		}
		return nil
	})
	err = inPipelinedTx(ctx, conn, first, func() (*pgx.Batch, error) {
		// Everything else depends only on which streams passed the fence: it goes out in one
		// batch with COMMIT. The events of a commit of up to insertMaxEvents are inserted from
		// arrays in that batch, not copied (COPY): an instance frozen in the middle of a COPY
		// (SIGSTOP, a paused VM) leaves its session waiting for the data, which neither
		// statement_timeout nor idle_in_transaction_session_timeout ends, so the streams' rows
		// stayed locked and no other instance could take them over (TestEndToEndFleetChaos,
		// once the commit had few other round trips). Larger commits still copy: inserting
		// 4,096 events from arrays cut ingest at its ceiling by a fifth.
		var (
			evStreams                    [][16]byte
			evSeqs                       []int64
			evIDs, evTypes, evData, keys [][]byte
			notify                       []string
			woken                        []string
			urgent                       []bool
			trimIDs                      []string
			trimLo, trimHi               []int64
		)
		for i, a := range appends {
			f, ok := fenced[a.StreamID]
			if !ok {
				res.Lost = append(res.Lost, Lease{StreamID: a.StreamID, Epoch: a.Epoch})
				continue
			}
			sid, err := parseUUID(a.StreamID)
			if err != nil {
				return nil, err
			}
			added := 0
			for _, ev := range a.Events {
				if ev.Seq <= f.after || compacted.replaced(a.StreamID, ev) {
					continue // trimmed, or replaced by a newer event, before it was ever stored
				}
				evStreams, evSeqs = append(evStreams, sid), append(evSeqs, ev.Seq)
				evIDs, evTypes, evData = append(evIDs, []byte(ev.LastEventID)), append(evTypes, []byte(ev.Type)), append(evData, []byte(ev.Data))
				keys = append(keys, compactKey(ev))
				added++
			}
			res.Bytes += sizes[i] // the same events: those the trim keeps
			if added > 0 || a.State != "" {
				notify = append(notify, a.StreamID)
			}
			if added > 0 {
				woken, urgent = append(woken, a.StreamID), append(urgent, a.Urgent)
			}
			if f.after > f.before {
				trimIDs = append(trimIDs, a.StreamID)
				trimLo, trimHi = append(trimLo, f.before), append(trimHi, f.after)
			}
			res.Events += added
		}
		last := &pgx.Batch{}
		switch n := len(evSeqs); {
		case n > insertMaxEvents:
			rows := make([][]any, n)
			for i := range rows {
				rows[i] = []any{evStreams[i], evSeqs[i], evIDs[i], evTypes[i], evData[i], keys[i]}
			}
			_, err := conn.CopyFrom(ctx, pgx.Identifier{"events"},
				[]string{"stream_id", "seq", "last_event_id", "type", "data", "compact_key"}, pgx.CopyFromRows(rows))
			if err != nil {
				return nil, fmt.Errorf("copy events: %w", err)
			}
		case n > 0:
			last.Queue(insertEventsSQL, evStreams, evSeqs, evIDs, evTypes, evData, keys)
		}
		compacted.queue(last, func(id string) bool { _, ok := fenced[id]; return ok })
		if len(trimIDs) > 0 {
			last.Queue(`
				WITH d AS (
					DELETE FROM events e USING unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS t(id, lo, hi)
					WHERE e.stream_id = t.id AND e.seq > t.lo AND e.seq <= t.hi
					RETURNING e.stream_id, `+sizeExpr+` AS n
				)
				UPDATE streams s SET backlog_bytes = s.backlog_bytes - d.n
				FROM (SELECT stream_id, sum(n) AS n FROM d GROUP BY stream_id) d
				WHERE s.id = d.stream_id`, trimIDs, trimLo, trimHi)
		}
		queueTrimBacklogBytes(last, overBytes, opts.MaxBacklogBytes)
		if opts.Wake != nil && len(woken) > 0 {
			last.Queue(scheduleWakeupsSQL, scheduleWakeupsArgs(opts.Wake, woken, urgent)...).Exec(func(tag pgconn.CommandTag) error {
				res.Wakeups = tag.RowsAffected()
				return nil
			})
		}
		if len(notify) > 0 {
			last.Queue(`SELECT pushproxy_notify_readers($1::text[])`, notify)
		}
		return last, nil
	})
	if err != nil {
		return CommitResult{}, err
	}
	return res, nil
}

// rollback ends conn's failed transaction, if it is still open, so that the connection goes
// back to the pool clean: within rollbackTimeout, even when ctx has ended (a connection
// that cannot answer by then is closed, and the pool drops it).
func rollback(ctx context.Context, conn *pgxpool.Conn) {
	if conn.Conn().IsClosed() || conn.Conn().PgConn().TxStatus() == 'I' {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	_, _ = conn.Exec(rctx, `ROLLBACK`)
}

// rollbackTimeout bounds rollback.
const rollbackTimeout = 5 * time.Second

// insertMaxEvents is the most events a commit inserts from arrays; a larger one copies them.
const insertMaxEvents = 256

// insertEventsSQL stores a commit's events, given as arrays of their columns.
const insertEventsSQL = `
	INSERT INTO events (stream_id, seq, last_event_id, type, data, compact_key)
	SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[])`

// genericPlanMaxStreams is the most streams a commit has whose statements run their generic
// plans.
const genericPlanMaxStreams = 32

// inPipelinedTx runs a transaction on conn in as few round trips as its statements allow:
// first, which must begin the transaction, goes out as one batch; body, from its answers,
// runs what must run on its own (a COPY) and returns the rest, which goes out in one batch
// with COMMIT (pgx.BeginTxFunc would send BEGIN and COMMIT on their own, and each statement
// in between). Between batches the session is idle in its transaction, where
// idle_in_transaction_session_timeout ends it if this instance is frozen. A
// transaction that fails is rolled back, so the connection goes back to the pool clean (or
// closed, when the failure was the connection's); its error is classified.
func inPipelinedTx(ctx context.Context, conn *pgxpool.Conn, first *pgx.Batch, body func() (*pgx.Batch, error)) (err error) {
	defer func() {
		if err != nil {
			rollback(ctx, conn)
		}
		err = classify(err)
	}()
	if err := conn.SendBatch(ctx, first).Close(); err != nil {
		return err
	}
	last, err := body()
	if err != nil {
		return err
	}
	last.Queue(`COMMIT`).Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" { // Postgres answers COMMIT with ROLLBACK in an aborted transaction
			return fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
		}
		return nil
	})
	return conn.SendBatch(ctx, last).Close()
}

// EventSize is what an event counts for in a backlog's size: the stored bytes of its
// effective id, its type and its data.
func EventSize(ev pushproxy.Event) int64 {
	return int64(len(ev.LastEventID) + len(ev.Type) + len(ev.Data))
}

// sizeExpr is EventSize in SQL, over a row of events.
const sizeExpr = `octet_length(e.last_event_id) + octet_length(e.type) + octet_length(e.data)`

// cleanText makes a string safe for a text column: valid UTF-8 and no NUL. Reasons and
// errors carry what origins and push services sent (an HTTP reason phrase is any bytes), and
// one bad byte would make Postgres refuse the whole batch.
func cleanText(s string) string {
	const max = 1024
	if len(s) > max {
		s = s[:max]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// parseUUID turns the textual form into the 16 bytes COPY's binary format wants.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	if !pushproxy.IsUUID(s) {
		return u, fmt.Errorf("invalid uuid %q", s)
	}
	j := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		u[j/2] |= unhex(s[i]) << (4 * (1 - j%2))
		j++
	}
	return u, nil
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
