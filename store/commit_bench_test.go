package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// BenchmarkCommitSmall measures one commit as live delivery sees it: a few streams with an
// event each, devices awake or asleep (a wake-up queued), readers notified, one after the
// other on one connection. Its time is mostly round trips:
//
//	go test ./store -run '^$' -bench CommitSmall -count 5
func BenchmarkCommitSmall(b *testing.B) {
	ctx := context.Background()
	st := open(b, migratedDatabase(b), nil)
	if err := st.RenewInstance(ctx, owner, time.Hour); err != nil {
		b.Fatal(err)
	}
	const streams = 5
	as := make([]store.Append, streams)
	for i := range as {
		s, epoch, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/events", TokenHash: []byte("hash"),
			Push: &pushproxy.PushAddress{Platform: "apns", Token: fmt.Sprintf("%064x", i+1)}, LeaseOwner: owner})
		if err != nil {
			b.Fatal(err)
		}
		as[i] = store.Append{StreamID: s.ID, Epoch: epoch, RetryMS: -1}
	}
	opts := store.CommitOptions{Wake: &store.WakePolicy{Debounce: time.Second, Rewake: time.Minute}}
	var seq int64
	for b.Loop() {
		seq++
		for i := range as {
			as[i].Events = []pushproxy.Event{{Seq: seq, LastEventID: fmt.Sprint(seq), Type: "tick", Data: `{"price":12.35}`}}
			as[i].HeadSeq, as[i].ResumeID = seq, fmt.Sprint(seq)
		}
		res, err := st.Commit(ctx, owner, as, opts)
		if err != nil || len(res.Lost) > 0 || res.Events != streams {
			b.Fatalf("commit: %+v %v", res, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/commit")
}
