package store_test

import (
	"context"
	"testing"

	"github.com/pushproxy/pushproxy/store"
)

// TestReclaimAckedTakesManyStreams: a call reclaims the acknowledged rows of more streams
// than it reads from the queue at once, up to its limit. A call that returns fewer rows
// than the limit tells the caller (the maintenance leader) that nothing is left: with many
// small acknowledgements (a fleet of devices each reading a few events) it returned after
// 100 streams, the rest waited for the next pass, and the events table grew without bound.
func TestReclaimAckedTakesManyStreams(t *testing.T) {
	t.Parallel()
	st, conn := setupWithConn(t)
	ctx := context.Background()
	const streams, each = 250, 4
	var as []store.Append
	var ids []string
	for range streams {
		s, epoch := newStream(t, st, nil)
		ids = append(ids, s.ID)
		as = append(as, store.Append{StreamID: s.ID, Epoch: epoch, Events: events(1, each, seqID), HeadSeq: each, RetryMS: -1})
	}
	commit(t, st, as...)
	for _, id := range ids {
		if _, err := st.Resume(ctx, id, seqID(each), true); err != nil {
			t.Fatal(err)
		}
	}
	// A limit below the backlog stops the call there (in whole batches); batches of 100
	// take several statements, each over many streams.
	n, err := st.ReclaimAcked(ctx, 100, 300)
	if err != nil {
		t.Fatal(err)
	}
	if n < 300 || n >= streams*each {
		t.Fatalf("a call limited to 300 rows reclaimed %d of %d", n, streams*each)
	}
	m, err := st.ReclaimAcked(ctx, 100, 10000)
	if err != nil {
		t.Fatal(err)
	}
	if n+m != streams*each {
		t.Fatalf("a call under its limit reclaimed %d rows after %d, want all %d acknowledged", m, n, streams*each)
	}
	var rows, queued int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM events_reclaim)`).Scan(&rows, &queued); err != nil {
		t.Fatal(err)
	}
	if rows != 0 || queued != 0 {
		t.Fatalf("%d rows and %d streams left to reclaim", rows, queued)
	}
}
