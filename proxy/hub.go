package proxy

import (
	"strings"
	"sync"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// hub wakes the event readers of this instance when their stream has news. Commits on any
// instance notify this instance's channel (store.ReaderChannel) with the ids of the streams
// it has readers of; the instance's one listener connection hands each payload to notify. A
// reader then reads what is new from Postgres, so a wake-up carries no data and a missed or
// doubled one costs nothing but a query. Notifications can be missed (the listener
// reconnecting, a commit racing a reader's registration, a full notification queue): a slow
// poll of the watched streams' heads (poll) rings whoever's stream moved.
type hub struct {
	mu     sync.Mutex
	subs   map[string]map[*subscription]struct{}
	states map[string]string // streams' states as of the last poll
	read   map[string]int64  // the newest seq a reader of the stream has read up to
	// committed holds the watched streams this instance holds and has committed events to
	// (ringCommitted; forgotten when its holder goes). Their notifications, coming back from
	// Postgres, ring no one: the commit rang the readers already, after it committed, so
	// whatever they read next sees it. Each second ring cost a read that found nothing and
	// a read of the stream's row: with every stream's event committed on the same tick, the
	// notification comes back while the readers still wait for their page, and 500 readers
	// read twice. A change another instance makes to a stream held here (an operator's
	// close, the leader failing a dead device's streams, a commit after this instance lost
	// the lease, until its holder learns so) is rung by the poll instead, within ReaderPoll.
	committed map[string]struct{}
	closed    bool
}

// subscription is one reader's doorbell: c holds at most one pending ring.
type subscription struct {
	c      chan struct{}
	stream string
}

func newHub() *hub {
	return &hub{subs: map[string]map[*subscription]struct{}{}, states: map[string]string{}, read: map[string]int64{},
		committed: map[string]struct{}{}}
}

// subscribe returns a subscription to streamID's news. Its channel is closed when the hub
// shuts down.
func (h *hub) subscribe(streamID string) *subscription {
	sub := &subscription{c: make(chan struct{}, 1), stream: streamID}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(sub.c)
		return sub
	}
	m := h.subs[streamID]
	if m == nil {
		m = map[*subscription]struct{}{}
		h.subs[streamID] = m
	}
	m[sub] = struct{}{}
	return sub
}

func (h *hub) unsubscribe(sub *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.subs[sub.stream]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(h.subs, sub.stream)
			delete(h.states, sub.stream)
			delete(h.read, sub.stream)
			delete(h.committed, sub.stream)
		}
	}
}

func ring(sub *subscription) {
	select {
	case sub.c <- struct{}{}:
	default:
	}
}

// notify rings the readers of the streams in payload: comma-separated stream ids.
func (h *hub) notify(payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for payload != "" {
		id, rest, _ := strings.Cut(payload, ",")
		payload = rest
		if _, ok := h.committed[id]; ok {
			continue // held here: this instance's commits ring its readers themselves
		}
		for sub := range h.subs[id] {
			ring(sub)
		}
	}
}

// forgetCommitted forgets what this instance committed to stream id: it no longer holds
// it, and the stream's notifications ring its readers again.
func (h *hub) forgetCommitted(id string) {
	h.mu.Lock()
	delete(h.committed, id)
	h.mu.Unlock()
}

// ringCommitted rings this instance's readers of the streams of a commit that carried news
// (events, or an end). The streams that own finds this instance's own (still held here,
// under the lease the commit passed the fence with) are marked so, and their notifications
// ring no one again (see committed); not the others: a hand-over forgets its streams before
// their last commit, and a stream whose lease was lost goes to another instance, whose
// commits only the notifications ring here. own is called once, with h.mu held, so that no
// holder is forgotten between its answer and the marks.
func (h *hub) ringCommitted(batch []store.Append, own func([]store.Append) map[string]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
	mine := own(batch)
	for _, a := range batch {
		if len(a.Events) == 0 && a.State == "" {
			continue
		}
		subs, ok := h.subs[a.StreamID]
		if !ok {
			continue
		}
		if a.State == "" && mine[a.StreamID] {
			h.committed[a.StreamID] = struct{}{}
		} else {
			delete(h.committed, a.StreamID) // an end: let its notification ring again
		}
		for sub := range subs {
			ring(sub)
		}
	}
}

// watched returns the streams that have readers.
func (h *hub) watched() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.subs))
	for id := range h.subs {
		ids = append(ids, id)
	}
	return ids
}

// readTo records that a reader of streamID has read everything up to seq: it waits for
// news only once it has read all there was.
func (h *hub) readTo(streamID string, seq int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[streamID]; ok && seq > h.read[streamID] {
		h.read[streamID] = seq
	}
}

// poll rings the readers of every stream with events past what its readers have read
// (their notification was missed), whose state changed since the last poll, or that the
// poll did not find (deleted). A stream whose events were all delivered is left alone, so a
// busy instance's poll does not wake every reader for nothing.
func (h *hub) poll(marks map[string]store.StreamMark) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, m := range h.subs {
		now, ok := marks[id]
		state, seen := h.states[id]
		if !ok || now.Head > h.read[id] || (seen && state != now.State) || (!seen && now.State != pushproxy.StateHeld) {
			for sub := range m {
				ring(sub)
			}
		}
		if ok {
			h.states[id] = now.State
		}
	}
}

// notifyAll rings every reader: after the listener reconnected, notifications may have been
// missed.
func (h *hub) notifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.subs {
		for sub := range m {
			ring(sub)
		}
	}
}

// closeAll ends every subscription (on shutdown): readers see their channel closed.
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for _, m := range h.subs {
		for sub := range m {
			close(sub.c)
		}
	}
	h.subs = nil
}
