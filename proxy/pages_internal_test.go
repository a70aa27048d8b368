package proxy

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/store"
)

// TestReadersWokenTogetherShareOneQuery: while a page read runs, the reads of 200 readers
// that arrive queue up and are answered by one statement, each with its own stream's events
// after its own position.
func TestReadersWokenTogetherShareOneQuery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	if err := store.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const owner, readers = "instance-a", 200
	if err := st.RenewInstance(ctx, owner, time.Minute); err != nil {
		t.Fatal(err)
	}
	var (
		ids []string
		as  []store.Append
	)
	for i := range readers {
		s, epoch, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/" + strconv.Itoa(i), TokenHash: []byte("h"), LeaseOwner: owner})
		if err != nil {
			t.Fatal(err)
		}
		var evs []pushproxy.Event
		for seq := int64(1); seq <= 5; seq++ {
			evs = append(evs, pushproxy.Event{Seq: seq, LastEventID: strconv.Itoa(i) + "-" + strconv.FormatInt(seq, 10), Data: "d"})
		}
		ids, as = append(ids, s.ID), append(as, store.Append{StreamID: s.ID, Epoch: epoch, Events: evs, HeadSeq: 5, RetryMS: -1})
	}
	if _, err := st.Commit(ctx, owner, as, store.CommitOptions{}); err != nil {
		t.Fatal(err)
	}

	p := newPageReader(st)
	p.maxInFlight = 1
	release := make(chan struct{})
	var (
		mu      sync.Mutex
		batches []int
	)
	p.testFetch = func(n int) {
		mu.Lock()
		batches = append(batches, n)
		first := len(batches) == 1
		mu.Unlock()
		if first {
			<-release // hold the first read while the others arrive
		}
	}
	type result struct {
		evs []pushproxy.Event
		err error
	}
	results := make([]result, readers)
	var wg sync.WaitGroup
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs, err := p.read(ctx, ids[i], int64(i%5), 3) // reader i is at seq i%5
			results[i] = result{evs, err}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.mu.Lock()
		queued := len(p.pending)
		p.mu.Unlock()
		if queued == readers-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads queued, want %d", queued, readers-1)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if len(batches) != 2 || batches[0] != 1 || batches[1] != readers-1 {
		t.Fatalf("batches %v, want [1 %d]", batches, readers-1)
	}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("reader %d: %v", i, r.err)
		}
		after := int64(i % 5)
		want := min(3, 5-int(after))
		if len(r.evs) != want {
			t.Fatalf("reader %d after %d: %d events, want %d", i, after, len(r.evs), want)
		}
		for k, ev := range r.evs {
			if id := strconv.Itoa(i) + "-" + strconv.FormatInt(after+int64(k)+1, 10); ev.LastEventID != id || ev.Seq != after+int64(k)+1 {
				t.Fatalf("reader %d event %d: %+v, want id %s", i, k, ev, id)
			}
		}
	}
}

// TestPollRingsOnlyReadersBehind: the slow poll rings the readers of a stream with events
// past what they read, or whose state changed; not those that have everything.
func TestPollRingsOnlyReadersBehind(t *testing.T) {
	t.Parallel()
	h := newHub()
	a, b := h.subscribe("a"), h.subscribe("b")
	rung := func(sub *subscription) bool {
		select {
		case <-sub.c:
			return true
		default:
			return false
		}
	}
	h.readTo("a", 7)
	h.readTo("b", 3)
	h.poll(map[string]store.StreamMark{"a": {Head: 7, State: "held"}, "b": {Head: 4, State: "held"}})
	if rung(a) || !rung(b) {
		t.Fatal("want only b (behind its head) rung")
	}
	h.readTo("b", 4)
	h.poll(map[string]store.StreamMark{"a": {Head: 7, State: "held"}, "b": {Head: 4, State: "held"}})
	if rung(a) || rung(b) {
		t.Fatal("a poll with nothing new rang a reader")
	}
	h.poll(map[string]store.StreamMark{"a": {Head: 7, State: "closed"}}) // a closed, b deleted
	if !rung(a) || !rung(b) {
		t.Fatal("want a (closed) and b (gone) rung")
	}
	// A batched notification names several streams.
	h.notify("b,a")
	if !rung(a) || !rung(b) {
		t.Fatal("a notification of two streams did not ring both")
	}
}

// TestOwnCommitsNotificationRingsNoOneTwice: a commit of this instance rings its readers
// (ringCommitted); its notification, coming back from Postgres, rings them again only if
// the instance no longer holds the stream (its holder went: forgetCommitted) or if the
// commit ended the stream.
func TestOwnCommitsNotificationRingsNoOneTwice(t *testing.T) {
	t.Parallel()
	h := newHub()
	a := h.subscribe("a")
	rung := func() bool {
		select {
		case <-a.c:
			return true
		default:
			return false
		}
	}
	own := func(b []store.Append) map[string]bool { return map[string]bool{b[0].StreamID: true} }
	notOwn := func([]store.Append) map[string]bool { return nil }
	h.ringCommitted([]store.Append{{StreamID: "a", Events: []pushproxy.Event{{Seq: 5}}, HeadSeq: 5}}, own)
	if !rung() {
		t.Fatal("the commit did not ring its reader")
	}
	// The notification comes back while the reader still reads (it took the ring; its read
	// began after the commit), and after it has read.
	h.notify("a")
	if rung() {
		t.Fatal("the notification of this instance's own commit, coming back while its reader reads, rang the reader again")
	}
	h.readTo("a", 5)
	h.notify("a")
	if rung() {
		t.Fatal("the notification of this instance's own commit, read already, rang the reader again")
	}
	h.forgetCommitted("a")
	h.notify("a")
	if !rung() {
		t.Fatal("a notification for a stream no longer held here (another instance's commit) rang no one")
	}
	// A commit of a stream no longer held here under that lease (its hand-over forgot it
	// first, or the fence refused it): its readers are rung, and so are they by the
	// notifications of the instance that holds it now.
	h.ringCommitted([]store.Append{{StreamID: "a", Events: []pushproxy.Event{{Seq: 6}}, HeadSeq: 6}}, notOwn)
	if !rung() {
		t.Fatal("the commit did not ring its reader")
	}
	h.notify("a")
	if !rung() {
		t.Fatal("a notification for a stream this instance committed to but no longer holds rang no one")
	}
	h.ringCommitted([]store.Append{{StreamID: "a", Events: []pushproxy.Event{{Seq: 6}}, HeadSeq: 6}}, own)
	rung()
	h.readTo("a", 6)
	h.ringCommitted([]store.Append{{StreamID: "a", HeadSeq: 6, State: "closed"}}, own)
	rung()
	h.notify("a")
	if !rung() {
		t.Fatal("the notification of an end rang no one")
	}
}
