package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/store"
)

// tick is one event the origin sends, as a reader should get it back.
type tick struct{ id, typ, data, key string }

func (e tick) block() string {
	b := "id: " + e.id + "\n"
	if e.typ != "" {
		b += "event: " + e.typ + "\n"
	}
	return b + "data: " + e.data + "\n\n"
}

// survivors are the events a compacted backlog keeps: the newest of each key, and every event
// without one, in their original order.
func survivors(evs []tick) []tick {
	newest := map[string]int{}
	for i, e := range evs {
		if e.key != "" {
			newest[e.key] = i
		}
	}
	var out []tick
	for i, e := range evs {
		if e.key == "" || newest[e.key] == i {
			out = append(out, e)
		}
	}
	return out
}

// compactedTicker publishes n ticks over 20 symbols, with a non-JSON event and one lacking
// the pointer among them, to a stream handed off with compaction by by, while its device is
// asleep, and waits until all are queued. key computes an event's key under by.
func compactedTicker(t *testing.T, by string, key func(typ string, sym int) string) (*testBundle, handoffResult, []tick) {
	t.Helper()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL, "compact": map[string]string{"by": by},
		"push": map[string]string{"platform": "fcm", "token": fcmToken("ticker")}})
	var evs []tick
	for i := 1; i <= 1000; i++ {
		sym, typ := i%20, []string{"tick", "quote", ""}[i%3]
		evs = append(evs, tick{id: fmt.Sprintf("t%d", i), typ: typ, data: fmt.Sprintf(`{"sym":"S%02d","p":%d}`, sym, i), key: key(typ, sym)})
		switch i {
		case 500:
			evs = append(evs, tick{id: "halt", typ: "tick", data: "trading halted", key: key("tick", -1)})
		case 700:
			evs = append(evs, tick{id: "note", typ: "tick", data: `{"note":"no symbol"}`, key: key("tick", -1)})
		}
	}
	blocks := make([]string, len(evs))
	for i, e := range evs {
		blocks[i] = e.block()
	}
	o.Publish(blocks...)
	eventually(t, 30*time.Second, "every tick queued", func() bool {
		si := getStream(t, b, h)
		return si.NewestID != nil && *si.NewestID == "t1000"
	})
	return b, h, evs
}

// checkEvents compares what a reader got with what it should have.
func checkEvents(t *testing.T, what string, got, want []tick) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, want %d: %v", what, len(got), len(want), got)
	}
	for i := range want {
		w, g := want[i], got[i]
		w.key = ""
		if w.typ == "" {
			w.typ = "message" // as a JSON page names it; the SSE replay omits it
		}
		if g.typ == "" {
			g.typ = "message"
		}
		if g != w {
			t.Fatalf("%s: event %d = %+v, want %+v", what, i, got[i], w)
		}
	}
}

func pageTicks(t *testing.T, b *testBundle, h handoffResult, query string) ([]tick, bool) {
	t.Helper()
	p := fetchJSON(t, b, h, "&limit=1000"+query)
	var out []tick
	for _, e := range p.Events {
		out = append(out, tick{id: e.ID, typ: e.Event, data: e.Data})
	}
	return out, p.Gap
}

func testCompaction(t *testing.T, by string, key func(typ string, sym int) string, wantN int) {
	b, h, evs := compactedTicker(t, by, key)
	want := survivors(evs)
	if len(want) != wantN {
		t.Fatalf("the test's own survivors: %d, want %d", len(want), wantN)
	}

	// GET /v1/streams/{id} shows the setting.
	_, out := do(t, "GET", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer " + h.Token}})
	var si struct {
		Compact *struct {
			By string `json:"by"`
		} `json:"compact"`
	}
	if err := json.Unmarshal(out, &si); err != nil || si.Compact == nil || si.Compact.By != by {
		t.Fatalf("stream shows compact %s (%v)", out, err)
	}

	// The backlog the device is told of counts the survivors, not the seqs; so do the
	// operators' listing, the totals and the gauges.
	if bl := getStream(t, b, h).Backlog; bl != int64(len(want)) {
		t.Fatalf("backlog %d, want %d", bl, len(want))
	}
	ctx := context.Background()
	if err := b.Store.RefreshGauges(ctx, store.Fence{}); err != nil {
		t.Fatal(err)
	}
	if tt, err := b.Store.GetTotals(ctx); err != nil || tt.BacklogEvents != int64(len(want)) || !slices.Equal(tt.LargestBacklogs, []string{h.ID}) ||
		!slices.Equal(tt.OldestBacklogs, []string{h.ID}) || tt.OldestEventAt.IsZero() {
		t.Fatalf("totals: backlog %d, largest %v, oldest %v (at %v), want %d and this stream (%v)",
			tt.BacklogEvents, tt.LargestBacklogs, tt.OldestBacklogs, tt.OldestEventAt, len(want), err)
	}
	if l, err := b.Store.ListStreams(ctx, store.StreamFilter{}); err != nil || len(l) != 1 || l[0].Backlog != int64(len(want)) {
		t.Fatalf("operators' listing: %+v (%v), want a backlog of %d", l, err, len(want))
	}

	// A JSON page: the survivors, in order, with their own ids.
	got, gap := pageTicks(t, b, h, "")
	if gap {
		t.Fatal("page: gap signalled")
	}
	checkEvents(t, "page", got, want)

	// SSE replay: the same.
	r := openSSE(t, b, h, nil)
	var sseGot []tick
	for range want {
		ev := r.next(t)
		typ := ev.Type
		sseGot = append(sseGot, tick{id: ev.LastEventID, typ: typ, data: ev.Data})
	}
	r.close()
	checkEvents(t, "sse", sseGot, want)

	// Acknowledging a survivor and resuming after it: the rest, without a gap.
	mid := want[len(want)/2].id
	got, gap = pageTicks(t, b, h, "&last_event_id="+mid)
	if gap {
		t.Fatal("resume after a survivor: gap signalled")
	}
	checkEvents(t, "after "+mid, got, want[len(want)/2+1:])
	if bl := getStream(t, b, h).Backlog; bl != int64(len(want)-len(want)/2-1) {
		t.Fatalf("backlog after acknowledging %s: %d, want %d", mid, bl, len(want)-len(want)/2-1)
	}
	r = openSSE(t, b, h, &mid)
	for _, w := range want[len(want)/2+1:] {
		if ev := r.next(t); ev.LastEventID != w.id || ev.Data != w.data {
			t.Fatalf("sse after %s: %+v, want %+v", mid, ev, w)
		}
	}
	r.close()

	// An id compacted away is no longer queued: the reader gets what is queued after the
	// acknowledged position, with the gap signal.
	got, gap = pageTicks(t, b, h, "&last_event_id=t1")
	if !gap {
		t.Fatal("resume at a compacted-away id: no gap signal")
	}
	checkEvents(t, "after t1", got, want[len(want)/2+1:])
}

// TestCompactionByJSONPointer: 1,000 ticks over 20 symbols while the device sleeps; the
// reader gets 20 ticks, the newest of each symbol, plus the event that is not JSON and the
// one lacking the pointer.
func TestCompactionByJSONPointer(t *testing.T) {
	t.Parallel()
	testCompaction(t, "json:/sym", func(_ string, sym int) string {
		if sym < 0 {
			return ""
		}
		return fmt.Sprintf("S%02d", sym)
	}, 22)
}

// TestCompactionByType: the same ticks compacted by event type: the newest "tick", "quote"
// and untyped ("message") events.
func TestCompactionByType(t *testing.T) {
	t.Parallel()
	testCompaction(t, "type", func(typ string, _ int) string {
		if typ == "" {
			return "message"
		}
		return typ
	}, 3)
}

func TestHandoffRefusesBadCompaction(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	for _, c := range []struct {
		compact any
		detail  string
	}{
		{map[string]string{"by": "json:sym"}, "compact.by"},
		{map[string]string{"by": "json:/a~2"}, "compact.by"},
		{map[string]string{"by": ""}, "compact.by"},
		{map[string]string{"by": "TYPE"}, "compact.by"},
		{map[string]string{"by": "json:/" + strings.Repeat("a", 300)}, "compact.by"},
		{map[string]any{"by": "type", "other": 1}, "other"},
		{"type", "compact"},
	} {
		body, _ := json.Marshal(map[string]any{"url": o.Srv.URL, "compact": c.compact})
		resp, out := do(t, "POST", b.API.URL+"/v1/streams", string(body), http.Header{"Content-Type": {"application/json"}})
		checkProblem(t, resp, out, 400, "invalid", c.detail)
	}
}
