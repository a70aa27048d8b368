package proxy

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// commitItem is one holder's contribution to a batch. done, when not nil, receives the
// outcome once the item is committed (or dropped): holders use it as a barrier before they
// end, so that their last events and their final state land together, in order.
type commitItem struct {
	store.Append
	done chan<- bool // true: committed; false: the lease was lost
	// flush, with no Append, only asks for done once everything queued before it is
	// committed.
	flush bool
}

// committer turns the events of every holder of the instance into batched transactions:
// it takes whatever has queued up while the previous commit ran (up to maxBatch events),
// merges it per stream, and commits it in one transaction. With synchronous_commit on, a
// commit costs a WAL flush, so batching is what makes ingest fast.
type committer struct {
	in       chan commitItem
	store    *store.Store
	owner    string
	opts     store.CommitOptions
	maxBatch int
	log      *slog.Logger
	onLost   func([]store.Lease)
	metrics  func(res store.CommitResult, streams int, took time.Duration)
	onWake   func() // after a commit that queued wake-ups
	// onCommitted, after each transaction, gets the streams it committed, and the leases
	// the fence refused: this instance's readers of them are rung at once, without waiting
	// for the commit's notification to come back from Postgres (which still wakes the
	// readers on other instances).
	onCommitted func(batch []store.Append, lost []store.Lease)
}

// run commits until c.in is closed and empty, or ctx ends.
func (c *committer) run(ctx context.Context) {
	var pending []commitItem
	for {
		select {
		case it, ok := <-c.in:
			if !ok {
				return
			}
			pending = append(pending[:0], it)
		case <-ctx.Done():
			return
		}
		// Take what is queued, without waiting: the time the previous commit took is the
		// batching window.
		events := len(pending[0].Events)
	drain:
		for events < c.maxBatch {
			select {
			case it, ok := <-c.in:
				if !ok {
					break drain
				}
				pending = append(pending, it)
				events += len(it.Events)
			default:
				break drain
			}
		}
		if !c.commit(ctx, pending) {
			return
		}
		clear(pending)
	}
}

// commit commits items, retrying with backoff while the database fails. It returns false
// only when ctx ends first.
func (c *committer) commit(ctx context.Context, items []commitItem) bool {
	appends, stale := merge(items)
	backoff := 50 * time.Millisecond
	var (
		total    store.CommitResult
		oneByOne bool // after Postgres refused the batch for its data: find the culprit
		// The last attempt failed in a way that leaves its outcome unknown (the connection
		// dropped, maybe after COMMIT was sent): it may have committed.
		uncertain bool
	)
	for len(appends) > 0 {
		start := time.Now()
		batch := appends
		if oneByOne {
			batch = appends[:1]
		}
		res, err := c.store.Commit(ctx, c.owner, batch, c.opts)
		switch {
		case err == nil:
			if c.onCommitted != nil {
				c.onCommitted(batch, res.Lost)
			}
			if c.metrics != nil {
				c.metrics(res, len(batch), time.Since(start))
			}
			total.Events += res.Events
			total.Wakeups += res.Wakeups
			total.Lost = append(total.Lost, res.Lost...)
			appends = appends[len(batch):]
			backoff = 50 * time.Millisecond
			continue
		case ctx.Err() != nil:
			return false
		case uncertain && alreadyStored(err):
			// The previous attempt committed, but its answer was lost: events past the
			// committed head are written only under this lease epoch, which the fence
			// (passed again by this attempt) says is still ours, so the rows it found are
			// that attempt's, and the transaction wrote the whole batch or nothing.
			c.log.WarnContext(ctx, "a commit whose answer was lost had been committed; not committing it again", slog.Int("streams", len(batch)))
			if c.onCommitted != nil {
				c.onCommitted(batch, nil)
			}
			appends = appends[len(batch):]
			uncertain = false
			continue
		case isDataError(err) && !oneByOne:
			// One stream's data must not stop every stream of the instance: commit them
			// one by one to find it.
			c.log.ErrorContext(ctx, "commit refused for its data; committing stream by stream", slog.String("error", err.Error()))
			oneByOne = true
			continue
		case isDataError(err):
			// This stream's append is refused for good: its holder stops, and the stream
			// is claimed again from its last committed point.
			c.log.ErrorContext(ctx, "commit of one stream refused for its data; dropping its holder",
				slog.String("stream", batch[0].StreamID), slog.String("error", err.Error()))
			total.Lost = append(total.Lost, store.Lease{StreamID: batch[0].StreamID, Epoch: batch[0].Epoch})
			appends = appends[1:]
			continue
		}
		uncertain = true
		c.log.ErrorContext(ctx, "commit failed; retrying", slog.String("error", err.Error()), slog.Duration("backoff", backoff))
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second) // one attempt a second at most while the database is away: recovery within a second of its return
	}
	lost := make(map[store.Lease]bool, len(total.Lost))
	for _, l := range total.Lost {
		lost[l] = true
	}
	for k, it := range items {
		if it.done != nil {
			it.done <- !lost[store.Lease{StreamID: it.StreamID, Epoch: it.Epoch}] && !stale[k]
		}
	}
	if total.Wakeups > 0 && c.onWake != nil {
		c.onWake()
	}
	if len(total.Lost) > 0 && c.onLost != nil {
		c.onLost(total.Lost)
	}
	return true
}

// isDataError reports whether Postgres refused a statement for the data it was given (SQLSTATE
// classes 22, data exception, and 23, integrity constraint violation): retrying the same data
// fails the same way.
func isDataError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23"))
}

// alreadyStored reports whether a commit failed because its events are stored already (a
// unique violation on the events table's key).
func alreadyStored(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && (pe.TableName == "events" || pe.ConstraintName == "events_pkey")
}

// merge folds the items of one batch into one Append per stream, in order. Items of an older
// lease epoch of a stream than another item in the batch are stale (their holder was
// replaced): they are dropped, and reported by index.
func merge(items []commitItem) ([]store.Append, map[int]bool) {
	newest := make(map[string]int64, len(items))
	for _, it := range items {
		if it.flush {
			continue
		}
		if e, ok := newest[it.StreamID]; !ok || it.Epoch > e {
			newest[it.StreamID] = it.Epoch
		}
	}
	idx := make(map[string]int, len(newest))
	out := make([]store.Append, 0, len(newest))
	var stale map[int]bool
	for k, it := range items {
		if it.flush {
			continue
		}
		if it.Epoch != newest[it.StreamID] {
			if stale == nil {
				stale = map[int]bool{}
			}
			stale[k] = true
			continue
		}
		i, ok := idx[it.StreamID]
		if !ok {
			idx[it.StreamID] = len(out)
			a := it.Append
			a.Events = append([]pushproxy.Event(nil), a.Events...)
			out = append(out, a)
			continue
		}
		m := &out[i]
		m.Events = append(m.Events, it.Events...)
		m.HeadSeq, m.ResumeID = it.HeadSeq, it.ResumeID
		if it.RetryMS >= 0 {
			m.RetryMS = it.RetryMS
		}
		if it.State != "" {
			m.State, m.StateReason = it.State, it.StateReason
		}
		if it.UpstreamStatus != 0 {
			m.UpstreamStatus = it.UpstreamStatus
		}
		if it.Connected != store.ConnUnchanged {
			m.Connected = it.Connected
		}
		m.Connects += it.Connects
		if it.Error != "" {
			m.Error = it.Error
		}
		m.Urgent = m.Urgent || it.Urgent
	}
	return out, stale
}
