package proxy

import "sync"

// hub wakes the event readers of this instance when their stream has news. Commits on any
// instance NOTIFY store.EventsChannel with the stream id; the instance's one listener
// connection hands each payload to notify. A reader then reads what is new from Postgres, so
// a wake-up carries no data and a missed or doubled one costs nothing but a query.
type hub struct {
	mu     sync.Mutex
	subs   map[string]map[*subscription]struct{}
	closed bool
}

// subscription is one reader's doorbell: c holds at most one pending ring.
type subscription struct {
	c      chan struct{}
	stream string
}

func newHub() *hub { return &hub{subs: map[string]map[*subscription]struct{}{}} }

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
		}
	}
}

func ring(sub *subscription) {
	select {
	case sub.c <- struct{}{}:
	default:
	}
}

// notify rings the readers of one stream.
func (h *hub) notify(streamID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs[streamID] {
		ring(sub)
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
