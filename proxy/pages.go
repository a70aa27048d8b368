package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// pageReader serves readers' page reads in batches, as a group commit does: a read starts
// at once if fewer than maxInFlight reads run, else it waits and goes with every read queued
// meanwhile, in one statement (store.EventsAfterMany). When an event reaches the streams of
// 500 open readers at once, they are served by a few queries instead of 500 one after
// another through the pool.
type pageReader struct {
	st          *store.Store
	maxInFlight int
	maxBatch    int

	mu       sync.Mutex
	pending  []*pageRead
	inFlight int

	// testFetch, when set (by tests), is called with each batch's size before it is read.
	testFetch func(n int)
}

type pageRead struct {
	req  store.PageRequest
	done chan struct{}
	evs  []pushproxy.Event
	err  error
}

func newPageReader(st *store.Store) *pageReader {
	return &pageReader{st: st, maxInFlight: 2, maxBatch: 1000}
}

// read returns up to limit events of streamID after after (store.EventsAfter).
func (p *pageReader) read(ctx context.Context, streamID string, after int64, limit int) ([]pushproxy.Event, error) {
	r := &pageRead{req: store.PageRequest{StreamID: streamID, After: after, Limit: limit}, done: make(chan struct{})}
	p.mu.Lock()
	p.pending = append(p.pending, r)
	p.startLocked()
	p.mu.Unlock()
	select {
	case <-r.done:
		return r.evs, r.err
	case <-ctx.Done():
		return nil, ctx.Err() // the batch's answer, if any, is dropped
	}
}

func (p *pageReader) startLocked() {
	for p.inFlight < p.maxInFlight && len(p.pending) > 0 {
		n := min(len(p.pending), p.maxBatch)
		batch := p.pending[:n:n]
		p.pending = append([]*pageRead(nil), p.pending[n:]...)
		p.inFlight++
		go p.fetch(batch)
	}
}

func (p *pageReader) fetch(batch []*pageRead) {
	if p.testFetch != nil {
		p.testFetch(len(batch))
	}
	reqs := make([]store.PageRequest, len(batch))
	for i, r := range batch {
		reqs[i] = r.req
	}
	// Not any one reader's context: the batch serves them all.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	res, err := p.st.EventsAfterMany(ctx, reqs)
	cancel()
	for i, r := range batch {
		if err != nil {
			r.err = err
		} else {
			r.evs = res[i]
		}
		close(r.done)
	}
	p.mu.Lock()
	p.inFlight--
	p.startLocked()
	p.mu.Unlock()
}
