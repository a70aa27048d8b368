package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// sized returns events from..to, each of n stored bytes (id "eN" plus data).
func sized(from, to int64, n int) []pushproxy.Event {
	evs := events(from, to, seqID)
	for i := range evs {
		evs[i].Data = strings.Repeat("x", n-len(evs[i].LastEventID)-len(evs[i].Type))
	}
	return evs
}

// TestBacklogIsTrimmedAtMaxBytes: a stream whose backlog outgrows the byte bound loses its
// oldest events until it fits (readers get a gap, as with the count bound); a stream within
// the bound, in the same commit, keeps everything; the newest event is never trimmed.
func TestBacklogIsTrimmedAtMaxBytes(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	big, bigEpoch := newStream(t, st, nil)
	small, smallEpoch := newStream(t, st, nil)
	opts := store.CommitOptions{MaxBacklogBytes: 350}
	check := func(s pushproxy.Stream, wantFirst, wantN int64, wantBytes int64) {
		t.Helper()
		got, err := st.EventsAfter(ctx, s.ID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var bytes int64
		if err := st.Pool().QueryRow(ctx, `SELECT backlog_bytes FROM streams WHERE id = $1`, s.ID).Scan(&bytes); err != nil {
			t.Fatal(err)
		}
		if int64(len(got)) != wantN || (wantN > 0 && got[0].Seq != wantFirst) || bytes != wantBytes {
			t.Fatalf("stream: %d events from %v, %d bytes; want %d from %d, %d bytes", len(got), got, bytes, wantN, wantFirst, wantBytes)
		}
	}
	_, err := st.Commit(ctx, owner, []store.Append{
		{StreamID: big.ID, Epoch: bigEpoch, Events: sized(1, 10, 100), HeadSeq: 10, ResumeID: "e10", RetryMS: -1},
		{StreamID: small.ID, Epoch: smallEpoch, Events: sized(1, 2, 100), HeadSeq: 2, ResumeID: "e2", RetryMS: -1},
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	check(big, 8, 3, 300)
	check(small, 1, 2, 200)
	// One more event: the oldest queued one goes.
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: big.ID, Epoch: bigEpoch, Events: sized(11, 11, 100), HeadSeq: 11, ResumeID: "e11", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	check(big, 9, 3, 300)
	cur, err := st.Resume(ctx, big.ID, "e7", true)
	if err != nil {
		t.Fatal(err)
	}
	if !cur.Gap {
		t.Fatalf("a reader behind the trimmed events: cursor %+v, want a gap", cur)
	}
	// An event larger than the bound by itself is kept, alone.
	if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: big.ID, Epoch: bigEpoch, Events: sized(12, 12, 500), HeadSeq: 12, ResumeID: "e12", RetryMS: -1}}, opts); err != nil {
		t.Fatal(err)
	}
	check(big, 12, 1, 500)
}
