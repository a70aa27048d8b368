package api_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/sse"
)

// sseReader is an events reader on the proxy.
type sseReader struct {
	resp   *http.Response
	p      *sse.Parser
	cancel context.CancelFunc
}

func openSSE(t *testing.T, b *testBundle, h handoffResult, lastEventID *string) *sseReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", b.API.URL+h.EventsURL, nil)
	if lastEventID != nil {
		req.Header.Set("Last-Event-ID", *lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &sseReader{resp: resp, p: sse.NewParser(resp.Body, nil), cancel: cancel}
	t.Cleanup(r.close)
	return r
}

func (r *sseReader) close() { r.cancel(); r.resp.Body.Close() }

// next reads one event, failing the test if none comes within 20 s.
func (r *sseReader) next(t *testing.T) sse.Event {
	t.Helper()
	type res struct {
		ev  sse.Event
		err error
	}
	c := make(chan res, 1)
	go func() { ev, err := r.p.Next(); c <- res{ev, err} }()
	select {
	case x := <-c:
		if x.err != nil {
			t.Fatalf("reading events: %v", x.err)
		}
		return x.ev
	case <-time.After(20 * time.Second):
		r.close()
		t.Fatal("no event within 20s")
	}
	return sse.Event{}
}

func TestReaderGetsBacklogThenLiveEvents(t *testing.T) {
	t.Parallel()
	svc, b := setup(t, nil)
	_ = svc
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL, "push": map[string]string{"platform": "fcm", "token": fcmToken("device-1")}})
	o.PublishN(3)
	eventually(t, 20*time.Second, "3 events queued", func() bool { return getStream(t, b, h).Backlog == 3 })

	r := openSSE(t, b, h, nil)
	if ct := r.resp.Header.Get("Content-Type"); r.resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("reader: %d %s", r.resp.StatusCode, ct)
	}
	for i := 1; i <= 3; i++ {
		ev := r.next(t)
		if ev.LastEventID != strconv.Itoa(i) || ev.Type != "update" || ev.Data != `{"n":`+strconv.Itoa(i)+`}` {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	// The device is awake while the reader is open.
	st, err := b.Store.GetStream(context.Background(), h.ID)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "device awake", func() bool {
		a, err := b.Store.DeviceAwake(context.Background(), st.DeviceID)
		return err == nil && a
	})
	// Live: an event published now arrives on the open reader.
	o.PublishN(1)
	if ev := r.next(t); ev.LastEventID != "4" {
		t.Fatalf("live event = %+v", ev)
	}
	r.close()
	eventually(t, 5*time.Second, "device asleep after the reader closed", func() bool {
		a, err := b.Store.DeviceAwake(context.Background(), st.DeviceID)
		return err == nil && !a
	})
	// Reconnecting with Last-Event-ID acknowledges: nothing is replayed twice.
	id := "3"
	r = openSSE(t, b, h, &id)
	if ev := r.next(t); ev.LastEventID != "4" {
		t.Fatalf("after reconnect = %+v", ev)
	}
	eventually(t, 5*time.Second, "backlog acknowledged", func() bool { return getStream(t, b, h).Backlog == 1 })
}

func TestReaderGetsGapSignalForUnknownID(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	o.PublishN(2)
	eventually(t, 20*time.Second, "2 events queued", func() bool { return getStream(t, b, h).Backlog == 2 })
	id := "999"
	r := openSSE(t, b, h, &id)
	if r.resp.Header.Get("Pushproxy-Gap") != "1" {
		t.Fatal("no Pushproxy-Gap header")
	}
	ev := r.next(t)
	if ev.Type != api.GapEventType || ev.LastEventID != "999" {
		t.Fatalf("first event = %+v, want the gap signal keeping id 999", ev)
	}
	if ev := r.next(t); ev.LastEventID != "1" {
		t.Fatalf("after the gap = %+v", ev)
	}
	p := fetchJSON(t, b, h, "&last_event_id=nope")
	if !p.Gap || len(p.Events) != 2 {
		t.Fatalf("JSON page with unknown id: %+v", p)
	}
}

func TestJSONPagesAcknowledgeAsTheyGo(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	o.PublishN(5)
	eventually(t, 20*time.Second, "5 events queued", func() bool { return getStream(t, b, h).Backlog == 5 })
	p := fetchJSON(t, b, h, "&limit=2")
	if len(p.Events) != 2 || !p.More || p.LastEventID != "2" || p.Gap {
		t.Fatalf("page 1: %+v", p)
	}
	p = fetchJSON(t, b, h, "&limit=2&last_event_id="+p.LastEventID)
	if len(p.Events) != 2 || p.Events[0].ID != "3" || !p.More {
		t.Fatalf("page 2: %+v", p)
	}
	if bl := getStream(t, b, h).Backlog; bl != 3 {
		t.Fatalf("backlog after acknowledging 2: %d", bl)
	}
	p = fetchJSON(t, b, h, "&limit=2&last_event_id=4")
	if len(p.Events) != 1 || p.More || p.LastEventID != "5" {
		t.Fatalf("page 3: %+v", p)
	}
	for _, q := range []string{"&limit=0", "&limit=1001", "&limit=x"} {
		resp, out := do(t, "GET", b.API.URL+h.EventsURL+q, "", http.Header{"Accept": {"application/json"}})
		checkProblem(t, resp, out, 400, "invalid", "limit")
	}
}

func TestOriginWithoutIDsGetsProxyIDs(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	o.Publish("data: a\n\n", "data: b\n\n", "data: c\n\n")
	eventually(t, 20*time.Second, "3 events queued", func() bool { return getStream(t, b, h).Backlog == 3 })
	r := openSSE(t, b, h, nil)
	ev := r.next(t)
	if ev.LastEventID != pushproxy.ProxyIDPrefix+"1" || ev.Data != "a" || ev.Type != "" {
		t.Fatalf("first = %+v", ev)
	}
	r.close()
	id := ev.LastEventID
	r = openSSE(t, b, h, &id)
	if ev := r.next(t); ev.Data != "b" {
		t.Fatalf("resumed at %+v", ev)
	}
}

func TestCloseTellsTheIDToResumeAtTheOrigin(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL, "last_event_id": "0"})
	o.PublishN(4)
	eventually(t, 20*time.Second, "4 events queued", func() bool { return getStream(t, b, h).Backlog == 4 })
	resp, out := do(t, "DELETE", b.API.URL+"/v1/streams/"+h.ID, "", http.Header{"Authorization": {"Bearer " + h.Token}, "Last-Event-ID": {"2"}})
	if resp.StatusCode != 200 {
		t.Fatalf("delete: %d %s", resp.StatusCode, out)
	}
	want := `{"id":"` + h.ID + `","state":"closed","last_event_id":"2","upstream_last_event_id":"4","discarded":2}` + "\n"
	if string(out) != want {
		t.Fatalf("delete answered %s, want %s", out, want)
	}
	if si := getStream(t, b, h); si.State != "closed" || si.Backlog != 0 {
		t.Fatalf("after delete: %+v", si)
	}
	// A reader of a closed, drained stream is told to stop (204).
	resp, _ = do(t, "GET", b.API.URL+h.EventsURL, "", nil)
	if resp.StatusCode != 204 {
		t.Fatalf("reader of a closed stream: %d", resp.StatusCode)
	}
}
