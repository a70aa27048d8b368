package proxy

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/store"
)

// TestClaimsStayInTheLeaseLoopAndStopWaitsForEveryLoop claims many streams one at a time, so
// that every claim takes a full batch and is followed by another soon: no two claims ever
// run at once (the follow-up runs in the loop, not beside it), and once Stop returns every
// background loop (lease loop, committer, listener) has returned.
func TestClaimsStayInTheLeaseLoopAndStopWaitsForEveryLoop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, st := internalStore(t)
	origin := quietOrigin(t)
	// Streams nobody holds: every claim of one is a full batch.
	const streams = 40
	for i := range streams {
		if _, _, err := st.CreateStream(ctx, store.NewStream{URL: origin.URL + "/" + strconv.Itoa(i), TokenHash: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	allow, _ := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	s := New(st, url, &Options{Upstream: allow, ClaimBatch: 1, ClaimInterval: time.Millisecond})
	var inFlight, overlaps, claims atomic.Int32
	s.testClaim = func(begin bool) {
		if !begin {
			inFlight.Add(-1)
			return
		}
		claims.Add(1)
		if inFlight.Add(1) > 1 {
			overlaps.Add(1)
		}
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.Held() < streams {
		if time.Now().After(deadline) {
			t.Fatalf("holding %d of %d streams after 30s", s.Held(), streams)
		}
		<-tick.C
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	for name, stopped := range map[string]<-chan struct{}{
		"lease loop": s.leases.Stopped(), "committer": s.committing.Stopped(), "listener": s.listener.Stopped(),
	} {
		select {
		case <-stopped:
		default:
			t.Errorf("the %s still runs after Stop returned", name)
		}
	}
	if n := overlaps.Load(); n > 0 {
		t.Fatalf("%d of %d claims ran beside another", n, claims.Load())
	}
}

// TestCommitRingsThisInstancesReaders: a commit rings this instance's readers of the streams
// it committed as soon as it returns, without waiting for its notification to come back
// from Postgres (here there is no listener at all).
func TestCommitRingsThisInstancesReaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, st := internalStore(t)
	s := New(st, url, &Options{InstanceID: "ringer"})
	var subs []*subscription
	var appends []commitItem
	for i := range 2 {
		created, epoch, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/" + strconv.Itoa(i), TokenHash: []byte{byte(i)}, LeaseOwner: "ringer"})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s.hub.subscribe(created.ID))
		a := store.Append{StreamID: created.ID, Epoch: epoch, RetryMS: -1}
		if i == 0 { // the second stream's append carries no news
			a.Events = []pushproxy.Event{{Seq: 1, LastEventID: "1", Data: "x"}}
			a.HeadSeq, a.ResumeID = 1, "1"
		}
		appends = append(appends, commitItem{Append: a})
	}
	if !s.com.commit(ctx, appends) {
		t.Fatal("commit gave up")
	}
	if evs, err := st.EventsAfter(ctx, appends[0].StreamID, 0, 10); err != nil || len(evs) != 1 {
		t.Fatalf("the commit stored %d events (%v), want 1: it did not take", len(evs), err)
	}
	select {
	case <-subs[0].c:
	default:
		t.Fatal("the reader of a stream with a committed event was not rung")
	}
	select {
	case <-subs[1].c:
		t.Fatal("the reader of a stream whose commit carried no news was rung")
	default:
	}
}
