package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// keyed returns events from..to; event i has key "S<i mod keys>", and none when keys is 0.
func keyed(from, to int64, keys int64) []pushproxy.Event {
	evs := events(from, to, seqID)
	for i := range evs {
		if keys > 0 {
			evs[i].CompactKey = fmt.Sprintf(`"S%02d"`, evs[i].Seq%keys)
		}
	}
	return evs
}

// TestCommitCompactsByKey: a commit replaces the queued events (of earlier commits and of
// its own batch) that have the key of a newer one; events without a key, and other streams'
// events with the same key, stay; backlog_bytes follows; head and floor do not move.
func TestCommitCompactsByKey(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	a, aEpoch := newStream(t, st, nil)
	b, bEpoch := newStream(t, st, nil)
	commit := func(s pushproxy.Stream, epoch int64, evs []pushproxy.Event) {
		t.Helper()
		last := evs[len(evs)-1]
		if _, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: last.Seq, ResumeID: last.LastEventID, RetryMS: -1}}, store.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	commit(a, aEpoch, keyed(1, 500, 20))
	commit(b, bEpoch, keyed(1, 30, 0)) // no keys: nothing compacted
	commit(a, aEpoch, append(keyed(501, 990, 20), keyed(991, 992, 0)...))
	commit(a, aEpoch, keyed(993, 1000, 20))
	got, err := st.EventsAfter(ctx, a.ID, 0, 2000)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []string
	for _, ev := range got {
		seqs = append(seqs, itoa(ev.Seq))
		if ev.LastEventID != seqID(ev.Seq) || ev.Data != "payload" || ev.Type != "update" {
			t.Errorf("survivor changed: %+v", ev)
		}
	}
	// The newest of each key, and the two keyless events, in order.
	// 971, 972: the newest with keys 11 and 12, as 991 and 992 have no key.
	want := "971 972 981 982 983 984 985 986 987 988 989 990 991 992 993 994 995 996 997 998 999 1000"
	if strings.Join(seqs, " ") != want {
		t.Fatalf("survivors %s\nwant      %s", strings.Join(seqs, " "), want)
	}
	// A holder that lost its lease compacts nothing.
	lost, err := st.Commit(ctx, owner, []store.Append{{StreamID: a.ID, Epoch: aEpoch + 1, Events: keyed(1001, 1020, 20), HeadSeq: 1020, ResumeID: seqID(1020), RetryMS: -1}}, store.CommitOptions{})
	if err != nil || len(lost.Lost) != 1 {
		t.Fatalf("a commit under a stale epoch: %+v, %v", lost, err)
	}
	if again, _ := st.EventsAfter(ctx, a.ID, 0, 2000); len(again) != len(got) {
		t.Fatalf("a fenced-out commit compacted: %d events left of %d", len(again), len(got))
	}
	other, _ := st.EventsAfter(ctx, b.ID, 0, 100)
	if len(other) != 30 {
		t.Fatalf("the stream without keys kept %d of 30 events", len(other))
	}
	var bytes, stored, head, floor int64
	err = st.Pool().QueryRow(ctx, `SELECT backlog_bytes, head_seq, floor_seq,
		(SELECT sum(octet_length(last_event_id) + octet_length(type) + octet_length(data)) FROM events WHERE stream_id = $1)
		FROM streams WHERE id = $1`, a.ID).Scan(&bytes, &head, &floor, &stored)
	if err != nil {
		t.Fatal(err)
	}
	if bytes != stored || head != 1000 || floor != 0 {
		t.Fatalf("backlog_bytes %d (stored %d), head %d, floor %d", bytes, stored, head, floor)
	}
	// Resuming after a survivor acknowledges up to it; a compacted-away id is not queued: the
	// reader gets every survivor, with the gap signal.
	cur, err := st.Resume(ctx, a.ID, seqID(985), true)
	if err != nil || cur.After != 985 || cur.Gap {
		t.Fatalf("resume after a survivor: %+v, %v", cur, err)
	}
	cur, err = st.Resume(ctx, a.ID, seqID(500), true)
	if err != nil || cur.After != 985 || !cur.Gap {
		t.Fatalf("resume at a compacted-away id: %+v, %v", cur, err)
	}
}

// TestCompactionUsesItsIndex: the compaction delete finds a stream's older events with the
// same key by the partial index, with many streams and events queued.
func TestCompactionUsesItsIndex(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, _ := newStream(t, st, nil)
	if _, err := st.Pool().Exec(ctx, `
		INSERT INTO streams (url, token_hash) SELECT 'http://origin.test/', '\x00' FROM generate_series(1, 20000);
		INSERT INTO events (stream_id, seq, last_event_id, type, data, compact_key)
		SELECT id, g, '', 't', 'd', CASE WHEN g % 3 = 0 THEN NULL ELSE convert_to('S' || (g % 20), 'UTF8') END
		FROM (SELECT id FROM streams LIMIT 200) s, generate_series(1, 1000) g;
		ANALYZE streams; ANALYZE events`); err != nil {
		t.Fatal(err)
	}
	var plan []string
	err := pgx.BeginFunc(ctx, st.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_custom_plan`); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, "EXPLAIN "+store.CompactSQL, []string{s.ID}, [][]byte{[]byte("S1")}, []int64{1000})
		var err error
		plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p := strings.Join(plan, "\n")
	if !strings.Contains(p, "events_compact_key") || strings.Contains(p, "Seq Scan on events") || strings.Contains(p, "Seq Scan on streams") {
		t.Fatalf("compaction plan:\n%s", p)
	}
	t.Logf("compaction plan:\n%s", p)
}

// TestCompactionKeepsWakeups: events that replace queued ones wake the device as any
// events do: a compacted commit queues the same wake-up as an uncompacted one.
func TestCompactionKeepsWakeups(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	for i, keys := range []int64{0, 1} {
		s, epoch := newStream(t, st, &pushproxy.PushAddress{Platform: pushproxy.PlatformFCM, Token: "wake-" + itoa(int64(i))})
		for from := int64(1); from <= 10; from += 5 {
			res, err := st.Commit(ctx, owner, []store.Append{{StreamID: s.ID, Epoch: epoch, Events: keyed(from, from+4, keys), HeadSeq: from + 4, ResumeID: seqID(from + 4), RetryMS: -1}},
				store.CommitOptions{Wake: &store.WakePolicy{}})
			if err != nil {
				t.Fatal(err)
			}
			if from == 1 && res.Wakeups != 1 {
				t.Fatalf("keys %d: %d wake-ups queued, want 1", keys, res.Wakeups)
			}
		}
		var pending int64
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM wakeups WHERE device_id = $1 AND state = 'pending'`, s.DeviceID).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending != 1 {
			t.Fatalf("keys %d: %d pending wake-ups, want 1", keys, pending)
		}
	}
}

// TestClaimCarriesCompaction: an instance that claims a stream (after a restart, or from
// another instance) gets its compaction setting, for its holder to compute keys.
func TestClaimCarriesCompaction(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/events", TokenHash: []byte("hash"), CompactBy: "json:/sym"})
	if err != nil {
		t.Fatal(err)
	}
	if s.CompactBy != "json:/sym" {
		t.Fatalf("created with %q", s.CompactBy)
	}
	claims, err := st.ClaimStreams(ctx, owner, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != 1 || claims[0].Stream.ID != s.ID || claims[0].Stream.CompactBy != "json:/sym" {
		t.Fatalf("claims %+v", claims)
	}
}
