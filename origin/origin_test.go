package origin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// --- a tiny SSE reader -------------------------------------------------------------------

// item is one thing read off a stream: an event (a dispatched block), a retry-only block, or a
// comment line.
type item struct {
	comment   string
	isComment bool
	hasID     bool
	id        string
	typ       string
	data      string
	retry     string
}

type sseReader struct {
	br   *bufio.Reader
	body io.Closer
}

// next reads the next item; io.EOF when the stream ended.
func (r *sseReader) next() (item, error) {
	var it item
	var data []string
	fields := false
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" {
				return item{}, io.EOF
			}
			return item{}, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if !fields {
				continue
			}
			if data != nil {
				it.data = strings.Join(data, "\n")
			}
			return it, nil
		}
		if strings.HasPrefix(line, ":") {
			return item{isComment: true, comment: line}, nil
		}
		fields = true
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "id":
			it.hasID, it.id = true, value
		case "event":
			it.typ = value
		case "data":
			data = append(data, value)
		case "retry":
			it.retry = value
		}
	}
}

// nextEvent skips comments and retry-only blocks.
func (r *sseReader) nextEvent(t *testing.T) item {
	t.Helper()
	for {
		it, err := r.next()
		if err != nil {
			t.Fatalf("reading stream: %v", err)
		}
		if it.isComment || (it.retry != "" && !it.hasID && it.typ == "" && it.data == "") {
			continue
		}
		return it
	}
}

// --- fixtures ----------------------------------------------------------------------------

type fixture struct {
	o      *Origin
	ts     *httptest.Server
	client *http.Client
	ctx    context.Context
}

func newFixture(t *testing.T, opts *Options) *fixture {
	t.Helper()
	return newFixtureWith(t, New(opts), nil, nil)
}

// newFixtureWith serves o; tr is the client's transport (nil: HTTP/1.1), cfg adjusts the
// server before it starts.
func newFixtureWith(t *testing.T, o *Origin, tr *http.Transport, cfg func(*http.Server)) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = o.HTTPServer()
	if cfg != nil {
		cfg(ts.Config)
	}
	ts.Start()
	if tr == nil {
		tr = &http.Transport{}
	}
	f := &fixture{o: o, ts: ts, client: &http.Client{Transport: tr}, ctx: ctx}
	t.Cleanup(func() {
		cancel()
		o.Close()
		ts.Close()
		tr.CloseIdleConnections()
	})
	return f
}

func (f *fixture) connect(t *testing.T, path string, lastID string) *sseReader {
	t.Helper()
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, v := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != v {
			t.Fatalf("%s = %q, want %q", k, got, v)
		}
	}
	return &sseReader{br: bufio.NewReader(resp.Body), body: resp.Body}
}

type snapshotData struct {
	ID      string `json:"id"`
	Time    int64  `json:"time"`
	Symbols []struct {
		Symbol string  `json:"symbol"`
		Price  float64 `json:"price"`
	} `json:"symbols"`
}

func expectSnapshot(t *testing.T, it item, id string) snapshotData {
	t.Helper()
	if it.typ != TypeSnapshot || !it.hasID || it.id != id {
		t.Fatalf("got %+v, want a snapshot with id %q", it, id)
	}
	var s snapshotData
	if err := json.Unmarshal([]byte(it.data), &s); err != nil {
		t.Fatalf("snapshot data %q: %v", it.data, err)
	}
	if s.ID != id {
		t.Fatalf("snapshot data id %q, want %q", s.ID, id)
	}
	return s
}

func expectEvents(t *testing.T, r *sseReader, want []Event) {
	t.Helper()
	for _, w := range want {
		it := r.nextEvent(t)
		if !it.hasID || it.id != w.ID || it.typ != w.Type || it.data != w.Data {
			t.Fatalf("got %+v, want %+v", it, w)
		}
	}
}

func expectEOF(t *testing.T, r *sseReader) {
	t.Helper()
	for {
		it, err := r.next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("want the end of the stream, got %v", err)
		}
		if !it.isComment {
			t.Fatalf("want the end of the stream, got %+v", it)
		}
	}
}

// --- tests -------------------------------------------------------------------------------

func TestSnapshotThenLive(t *testing.T) {
	fixed := time.UnixMilli(1700000000000)
	f := newFixture(t, &Options{Retry: 3 * time.Second, Seed: 1, Now: func() time.Time { return fixed }})
	f.o.TickN(5)
	r := f.connect(t, "/events", "")
	it, err := r.next()
	if err != nil || it.retry != "3000" {
		t.Fatalf("first block %+v, %v: want retry: 3000", it, err)
	}
	snap := expectSnapshot(t, r.nextEvent(t), "5")
	if snap.Time != fixed.UnixMilli() || len(snap.Symbols) == 0 {
		t.Fatalf("snapshot %+v", snap)
	}
	if !slices.IsSortedFunc(snap.Symbols, func(a, b struct {
		Symbol string  `json:"symbol"`
		Price  float64 `json:"price"`
	}) int {
		return strings.Compare(a.Symbol, b.Symbol)
	}) {
		t.Fatalf("snapshot symbols not sorted: %+v", snap.Symbols)
	}

	evs := f.o.TickN(300)
	expectEvents(t, r, evs)
	types := map[string]int{}
	for i, e := range evs {
		if e.ID != strconv.Itoa(6+i) {
			t.Fatalf("event %d id %q", i, e.ID)
		}
		var d struct {
			Symbol string   `json:"symbol"`
			Price  *float64 `json:"price"`
			Change *float64 `json:"change"`
			Time   int64    `json:"time"`
		}
		if err := json.Unmarshal([]byte(e.Data), &d); err != nil {
			t.Fatalf("event %+v: %v", e, err)
		}
		types[e.Type]++
		ok := d.Symbol != "" && d.Time == fixed.UnixMilli()
		switch e.Type {
		case TypeUpdate:
			ok = ok && d.Price != nil && d.Change != nil
		case TypeAdd:
			ok = ok && d.Price != nil && d.Change == nil
		case TypeRemove:
			ok = ok && d.Price == nil
		default:
			ok = false
		}
		if !ok {
			t.Fatalf("bad event %+v", e)
		}
	}
	if types[TypeUpdate] == 0 || types[TypeAdd] == 0 || types[TypeRemove] == 0 {
		t.Fatalf("event types %v: want all of add, remove, update in 300 ticks", types)
	}

	// The history has them all, and History agrees with what the stream sent.
	got, ok := f.o.History("5")
	if !ok || !slices.Equal(got, evs) {
		t.Fatalf("History(5) = %d events, %v", len(got), ok)
	}
	if all := f.o.Published(); len(all) != 305 || all[0].ID != "1" || f.o.LastID() != "305" {
		t.Fatalf("Published: %d events, last id %s", len(all), f.o.LastID())
	}
}

func TestDeterministic(t *testing.T) {
	now := func() time.Time { return time.UnixMilli(42) }
	a := New(&Options{Seed: 7, Now: now})
	b := New(&Options{Seed: 7, Now: now})
	c := New(&Options{Seed: 8, Now: now})
	defer a.Close()
	defer b.Close()
	defer c.Close()
	ea, eb, ec := a.TickN(100), b.TickN(100), c.TickN(100)
	if !slices.Equal(ea, eb) {
		t.Fatal("same seed, different events")
	}
	if slices.Equal(ea, ec) {
		t.Fatal("different seeds, same events")
	}
	if len(a.Symbols()) != 20 {
		t.Fatalf("symbols %v", a.Symbols())
	}
}

func TestResumeReplaysExactlyTheFollowingEvents(t *testing.T) {
	f := newFixture(t, &Options{Retry: 1500 * time.Millisecond})
	var evs []Event
	for i := range 10 {
		evs = append(evs, f.o.Emit("msg", fmt.Sprint("payload ", i)))
	}
	for _, path := range []string{"/events", "/stocks?last_event_id=4", "/events?lastEventId=4"} {
		lastID := ""
		if path == "/events" {
			lastID = "4"
		}
		r := f.connect(t, path, lastID)
		if it, err := r.next(); err != nil || it.retry != "1500" {
			t.Fatalf("%s: first block %+v, %v", path, it, err)
		}
		expectEvents(t, r, evs[4:])
		// Then live.
		e := f.o.Emit("", "live "+path)
		evs = append(evs, e)
		it := r.nextEvent(t)
		if it.id != e.ID || it.typ != "" || it.data != e.Data {
			t.Fatalf("%s: live event %+v, want %+v", path, it, e)
		}
		// The other streams opened before this one get it too: checked on the next loop by
		// resuming from 4 again, which replays every event so far.
	}
	if s := f.o.Stats(); s.Resumed != 3 || s.Snapshots != 0 || s.Connects != 3 {
		t.Fatalf("stats %+v", s)
	}
	// Resuming from the newest id replays nothing, then goes live.
	r := f.connect(t, "/events", f.o.LastID())
	e := f.o.Emit("x", "y")
	expectEvents(t, r, []Event{e})
}

func TestMultilineData(t *testing.T) {
	f := newFixture(t, &Options{})
	r := f.connect(t, "/events", "")
	expectSnapshot(t, r.nextEvent(t), "0")
	e := f.o.Emit("multi\nline", "a\nb\r\nc\rd\n")
	if e.Type != "multiline" || e.Data != "a\nb\r\nc\rd\n" {
		t.Fatalf("emitted %+v", e)
	}
	it := r.nextEvent(t)
	if it.id != "1" || it.typ != "multiline" || it.data != "a\nb\nc\nd\n" {
		t.Fatalf("got %+v", it)
	}
	f.o.Emit("", "")
	if it := r.nextEvent(t); it.id != "2" || it.data != "" {
		t.Fatalf("got %+v", it)
	}
}

func TestUnknownOrEvictedIDGetsSnapshot(t *testing.T) {
	f := newFixture(t, &Options{History: 5})
	for range 20 {
		f.o.Emit("e", "d")
	}
	// History keeps 16..20: resuming after 15 is still exact, after 14 is not.
	if evs, ok := f.o.History("15"); !ok || len(evs) != 5 || evs[0].ID != "16" {
		t.Fatalf("History(15) = %v, %v", evs, ok)
	}
	if evs, ok := f.o.History("20"); !ok || len(evs) != 0 {
		t.Fatalf("History(20) = %v, %v", evs, ok)
	}
	for _, id := range []string{"14", "3", "21", "abc", "016", "+16", " 16", ""} {
		if _, ok := f.o.History(id); ok {
			t.Fatalf("History(%q) ok", id)
		}
	}
	for _, id := range []string{"3", "016", "999"} {
		r := f.connect(t, "/events", id)
		expectSnapshot(t, r.nextEvent(t), "20")
	}
	r := f.connect(t, "/events", "15")
	if it := r.nextEvent(t); it.id != "16" {
		t.Fatalf("resume after 15: %+v", it)
	}
}

func TestSymbolsFilter(t *testing.T) {
	f := newFixture(t, &Options{Seed: 3})
	syms := f.o.Symbols()
	want := syms[0]
	r := f.connect(t, "/events?symbols="+strings.ToLower(want)+",NOPE", "")
	snap := expectSnapshot(t, r.nextEvent(t), "0")
	if len(snap.Symbols) != 1 || snap.Symbols[0].Symbol != want {
		t.Fatalf("filtered snapshot %+v", snap)
	}
	evs := f.o.TickN(200)
	mark := f.o.Emit("mark", "end") // no symbol: passes every filter
	var exp []Event
	for _, e := range evs {
		if strings.Contains(e.Data, `"symbol":"`+want+`"`) {
			exp = append(exp, e)
		}
	}
	if len(exp) == 0 {
		t.Fatal("no event for the symbol in 200 ticks")
	}
	expectEvents(t, r, append(exp, mark))
}

func TestHeartbeat(t *testing.T) {
	f := newFixture(t, &Options{Heartbeat: 20 * time.Millisecond})
	f.o.Start(f.ctx)
	r := f.connect(t, "/events", "")
	for {
		it, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		if it.isComment {
			if it.comment != ": heartbeat" {
				t.Fatalf("comment %q", it.comment)
			}
			return
		}
	}
}

func TestDropEveryAndResume(t *testing.T) {
	f := newFixture(t, &Options{DropEvery: 3})
	for range 10 {
		f.o.Emit("e", "d")
	}
	var got []string
	lastID := "0"
	for len(got) < 12 {
		r := f.connect(t, "/events", lastID)
		n := 0
		for {
			it, err := r.next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !it.hasID {
				continue
			}
			if it.typ == TypeSnapshot {
				t.Fatalf("unexpected snapshot %+v", it)
			}
			got = append(got, it.id)
			lastID = it.id
			n++
			if len(got) == 10 {
				// Caught up: the rest arrives live on this connection.
				f.o.Emit("e", "d")
				f.o.Emit("e", "d")
			}
		}
		if n != 3 {
			t.Fatalf("connection sent %d events before ending, want 3", n)
		}
	}
	for i, id := range got {
		if id != strconv.Itoa(i+1) {
			t.Fatalf("ids %v: want 1..12 each once in order", got)
		}
	}
	if s := f.o.Stats(); s.Dropped != 4 || s.Resumed != 4 || s.Sent != 12 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSlowClientFallingOutOfHistoryIsDisconnected(t *testing.T) {
	o := New(&Options{History: 4})
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	o.testHookBeforeWrite = func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	f := newFixtureWith(t, o, nil, nil)
	r := f.connect(t, "/events", "")
	expectSnapshot(t, r.nextEvent(t), "0")
	first := f.o.Emit("e", "1")
	<-entered // the stream is busy writing event 1
	for range 10 {
		f.o.Emit("e", "more")
	}
	close(release)
	expectEvents(t, r, []Event{first})
	expectEOF(t, r)
	if err := o.WaitFor(f.ctx, func(s Stats) bool { return s.Open == 0 }); err != nil {
		t.Fatal(err)
	}
	if s := o.Stats(); s.Evicted != 1 {
		t.Fatalf("stats %+v", s)
	}
	// It reconnects with its last id, evicted by now: a snapshot.
	r = f.connect(t, "/events", first.ID)
	expectSnapshot(t, r.nextEvent(t), "11")
}

func TestWriteTimeoutDisconnectsStalledClient(t *testing.T) {
	f := newFixture(t, &Options{WriteTimeout: 50 * time.Millisecond, History: 1000})
	req, _ := http.NewRequestWithContext(f.ctx, http.MethodGet, f.ts.URL+"/events", nil)
	// A raw connection that never reads.
	conn, err := net.Dial("tcp", f.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	if err := f.o.WaitFor(f.ctx, func(s Stats) bool { return s.Open == 1 }); err != nil {
		t.Fatal(err)
	}
	// 25 MB: more than the socket buffers hold, so the stream's writes block, then time out.
	big := strings.Repeat("x", 64<<10)
	for range 400 {
		f.o.Emit("big", big)
	}
	if err := f.o.WaitFor(f.ctx, func(s Stats) bool { return s.Open == 0 }); err != nil {
		t.Fatal(err)
	}
	if s := f.o.Stats(); s.Evicted != 0 || s.Sent == 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDisconnectAndClose(t *testing.T) {
	f := newFixture(t, &Options{})
	r := f.connect(t, "/events", "")
	expectSnapshot(t, r.nextEvent(t), "0")
	f.o.Disconnect()
	expectEOF(t, r)

	r = f.connect(t, "/events", "")
	expectSnapshot(t, r.nextEvent(t), "0")
	f.o.Close()
	expectEOF(t, r)
	f.o.Close() // idempotent
	resp, err := f.client.Get(f.ts.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %d", resp.StatusCode)
	}
	if err := f.o.WaitFor(f.ctx, func(s Stats) bool { return false }); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitFor after Close: %v", err)
	}
}

func TestTickerRate(t *testing.T) {
	f := newFixture(t, &Options{Rate: 2000, History: 100000})
	f.o.Start(f.ctx)
	f.o.Start(f.ctx) // no-op
	r := f.connect(t, "/events", "0")
	for i := 1; i <= 200; i++ {
		it := r.nextEvent(t)
		if it.id != strconv.Itoa(i) {
			t.Fatalf("event %d has id %q", i, it.id)
		}
	}
	if err := f.o.WaitFor(f.ctx, func(s Stats) bool { return s.Published >= 400 }); err != nil {
		t.Fatal(err)
	}
}

func TestRoutes(t *testing.T) {
	f := newFixture(t, &Options{AllowEmit: true})
	resp, err := f.client.Get(f.ts.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, b)
	}
	resp, err = f.client.Post(f.ts.URL+"/emit?type=note&data=hello", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != `{"id":"1"}` {
		t.Fatalf("emit: %d %q", resp.StatusCode, b)
	}
	resp, err = f.client.Post(f.ts.URL+"/emit?type=body", "text/plain", strings.NewReader("from body"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := f.o.Published(); len(got) != 2 || got[0] != (Event{"1", "note", "hello"}) || got[1] != (Event{"2", "body", "from body"}) {
		t.Fatalf("published %+v", got)
	}

	g := newFixture(t, &Options{})
	resp, err = g.client.Post(g.ts.URL+"/emit?data=x", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 || g.o.LastID() != "0" {
		t.Fatalf("emit without AllowEmit: %d", resp.StatusCode)
	}
}

func TestH2CManyStreamsOneConnection(t *testing.T) {
	o := New(&Options{})
	var h2Streams atomic.Int32
	inner := o.Handler()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	var conns atomic.Int32
	// One connection at most from the client: a busy machine's client may otherwise dial more
	// while it is still processing the server's SETTINGS (seen in CI: 84 connections for 200
	// concurrent first requests). The test is that the server serves them all on one.
	f := newFixtureWith(t, o, &http.Transport{Protocols: &protos, MaxConnsPerHost: 1}, func(s *http.Server) {
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 {
				h2Streams.Add(1)
			}
			inner.ServeHTTP(w, r)
		})
		s.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		}
	})

	// One first stream opens the connection; the others share it.
	const n = 200
	readers := []*sseReader{f.connect(t, "/events", "")}
	expectSnapshot(t, readers[0].nextEvent(t), "0")
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n - 1 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(f.ctx, http.MethodGet, f.ts.URL+"/events", nil)
			resp, err := f.client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			t.Cleanup(func() { resp.Body.Close() })
			r := &sseReader{br: bufio.NewReader(resp.Body), body: resp.Body}
			if it, err := r.next(); err != nil || it.typ != TypeSnapshot {
				errs <- fmt.Errorf("first item %+v, %v", it, err)
				return
			}
			mu.Lock()
			readers = append(readers, r)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e := o.Emit("e", "to all")
	for _, r := range readers {
		expectEvents(t, r, []Event{e})
	}
	if got := h2Streams.Load(); got != n {
		t.Fatalf("%d HTTP/2 streams, want %d", got, n)
	}
	if got := conns.Load(); got != 1 {
		t.Fatalf("%d connections, want 1", got)
	}
	if s := o.Stats(); s.Open != n {
		t.Fatalf("stats %+v", s)
	}
}

func TestHTTP1AndH2CShareTheListener(t *testing.T) {
	f := newFixture(t, &Options{})
	r1 := f.connect(t, "/events", "")
	expectSnapshot(t, r1.nextEvent(t), "0")
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(f.ctx, http.MethodGet, f.ts.URL+"/events", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("proto %s", resp.Proto)
	}
	r2 := &sseReader{br: bufio.NewReader(resp.Body), body: resp.Body}
	expectSnapshot(t, r2.nextEvent(t), "0")
	e := f.o.Emit("", "both")
	expectEvents(t, r1, []Event{e})
	expectEvents(t, r2, []Event{e})
}

func TestManyStreamsExactlyOnce(t *testing.T) {
	f := newFixture(t, &Options{History: 100000})
	const streams, events = 20, 5000
	readers := make([]*sseReader, streams)
	for i := range readers {
		readers[i] = f.connect(t, "/events", "")
		expectSnapshot(t, readers[i].nextEvent(t), "0")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range events / 50 {
			f.o.TickN(50)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for _, r := range readers {
		wg.Go(func() {
			for i := 1; i <= events; i++ {
				it, err := r.next()
				if err != nil {
					errs <- err
					return
				}
				if it.isComment {
					i--
					continue
				}
				if it.id != strconv.Itoa(i) {
					errs <- fmt.Errorf("got id %q, want %d", it.id, i)
					return
				}
			}
		})
	}
	wg.Wait()
	<-done
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// BenchmarkFanout publishes b.N events in batches of 300 (what the ticker does every 10ms at
// 30,000 events/s) to 100 streams, which read them all.
func BenchmarkFanout(b *testing.B) {
	b.Run("http1", func(b *testing.B) { benchmarkFanout(b, false) })
	b.Run("h2c", func(b *testing.B) { benchmarkFanout(b, true) })
}

func benchmarkFanout(b *testing.B, h2c bool) {
	o := New(&Options{History: b.N + 1})
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = o.HTTPServer()
	ts.Start()
	defer ts.Close()
	defer o.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 200}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	defer tr.CloseIdleConnections()
	const streams = 100
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(streams)
	total := uint64(b.N)
	for range streams {
		wg.Go(func() {
			resp, err := (&http.Client{Transport: tr}).Get(ts.URL + "/events")
			if err != nil {
				b.Error(err)
				ready.Done()
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReaderSize(resp.Body, 64<<10)
			ready.Done()
			want := "id: " + strconv.FormatUint(total, 10) + "\n"
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					b.Error(err)
					return
				}
				if string(line) == want {
					return
				}
			}
		})
	}
	ready.Wait()
	b.ResetTimer()
	for left := b.N; left > 0; left -= 300 {
		o.TickN(min(left, 300))
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
