package origin

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Handler serves the routes: GET /events and /stocks (the stream), GET /healthz, and POST
// /emit when Options.AllowEmit is set.
func (o *Origin) Handler() http.Handler { return o.handler }

func (o *Origin) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /events", o.serveEvents)
	mux.HandleFunc("GET /stocks", o.serveEvents)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	if o.opts.AllowEmit {
		mux.HandleFunc("POST /emit", o.serveEmit)
	}
	return mux
}

// HTTPServer returns an http.Server for Handler that speaks HTTP/1.1 and unencrypted HTTP/2
// (prior knowledge) on the same listener, and HTTP/2 over TLS (ALPN, TLSConfig is set up for
// it: add the certificate) when served with ServeTLS. Its HTTP/2 settings allow a million
// concurrent streams per connection with small receive windows, and HTTP/2 is served by
// golang.org/x/net/http2 with its random write scheduler, whose cost per frame does not grow
// with the number of idle streams (the round-robin default of net/http visits every open
// stream for each frame), so that one connection can hold tens of thousands of idle streams.
func (o *Origin) HTTPServer() *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           o.handler,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelWarn),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          1 << 20,
			MaxReceiveBufferPerStream:     16 << 10,
			MaxReceiveBufferPerConnection: 1 << 20,
		},
	}
	err := http2.ConfigureServer(srv, &http2.Server{
		NewWriteScheduler: func() http2.WriteScheduler { return http2.NewRandomWriteScheduler() },
	})
	if err != nil { // only for a TLSConfig without HTTP/2's cipher suites; there is none
		o.log.Error("configuring HTTP/2", "err", err)
	}
	return srv
}

// ServeLoopback serves the origin (HTTPServer) on a free port of 127.0.0.1, for programs
// that run it in process. It returns the base URL ("http://127.0.0.1:port") and a function
// that stops serving.
func (o *Origin) ServeLoopback() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := o.HTTPServer()
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

func (o *Origin) serveEmit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data, ok := q["data"]
	var d string
	if ok {
		d = data[0]
	} else {
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d = string(b)
	}
	e := o.Emit(q.Get("type"), d)
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"id":"`+e.ID+`"}`+"\n")
}

// streamScratch is what a stream needs while it writes; pooled, so idle streams hold none.
type streamScratch struct {
	buf  []byte
	refs []ref
}

type ref struct {
	sym  string
	wire string
}

var scratchPool = sync.Pool{New: func() any { return new(streamScratch) }}

func putScratch(sc *streamScratch) {
	clear(sc.refs)
	sc.refs = sc.refs[:0]
	if cap(sc.buf) > 256<<10 {
		sc.buf = nil
	}
	sc.buf = sc.buf[:0]
	scratchPool.Put(sc)
}

// heartbeatComment is written, never appended to.
var heartbeatComment = []byte(": heartbeat\n\n")

func (o *Origin) serveEvents(w http.ResponseWriter, r *http.Request) {
	lastID := r.Header.Get("Last-Event-ID")
	var filter map[string]bool
	if r.URL.RawQuery != "" {
		q := r.URL.Query()
		if lastID == "" {
			lastID = q.Get("last_event_id")
		}
		if lastID == "" {
			lastID = q.Get("lastEventId")
		}
		if s := q.Get("symbols"); s != "" {
			filter = map[string]bool{}
			for name := range strings.SplitSeq(s, ",") {
				if name = strings.ToUpper(strings.TrimSpace(name)); name != "" {
					filter[name] = true
				}
			}
		}
	}

	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		http.Error(w, "origin closed", http.StatusServiceUnavailable)
		return
	}
	kick := o.kickGen
	hbSeen := o.hbGen
	cursor, resumed := uint64(0), false
	if lastID != "" {
		cursor, resumed = o.lookupLocked(lastID)
	}
	var snap string
	if resumed {
		o.stats.Resumed++
	} else {
		cursor = o.head
		snap = o.snapshotLocked(filter)
		o.stats.Snapshots++
	}
	o.stats.Open++
	o.stats.Connects++
	o.statsChangedLocked()
	o.mu.Unlock()

	ctx := r.Context()
	log := o.log
	if log.Enabled(ctx, slog.LevelDebug) {
		log = log.With("remote", r.RemoteAddr, "proto", r.Proto)
		log.Debug("stream open", "last_event_id", lastID, "resumed", resumed, "cursor", cursor)
	}
	reason := "client gone"
	defer func() {
		o.mu.Lock()
		o.stats.Open--
		switch reason {
		case "evicted":
			o.stats.Evicted++
		case "drop-every":
			o.stats.Dropped++
		}
		o.statsChangedLocked()
		o.mu.Unlock()
		log.Debug("stream closed", "reason", reason, "cursor", cursor)
	}()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		reason = "head"
		return
	}
	rc := http.NewResponseController(w)
	sc := scratchPool.Get().(*streamScratch)
	if o.opts.Retry > 0 {
		sc.buf = append(sc.buf, "retry: "...)
		sc.buf = strconv.AppendInt(sc.buf, o.opts.Retry.Milliseconds(), 10)
		sc.buf = append(sc.buf, "\n\n"...)
	}
	sc.buf = append(sc.buf, snap...)
	err := o.write(w, rc, sc.buf)
	putScratch(sc)
	if err != nil {
		reason = "write: " + err.Error()
		return
	}

	drop := o.opts.DropEvery
	sent := 0
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			reason = "origin closed"
			return
		}
		if o.kickGen != kick {
			o.mu.Unlock()
			reason = "disconnected"
			return
		}
		if cursor+1 < o.oldestLocked() {
			o.mu.Unlock()
			reason = "evicted"
			log.Info("stream fell out of the history: closing it", "cursor", cursor)
			return
		}
		avail := o.head - cursor
		n := min(avail, maxBatch)
		if drop > 0 {
			n = min(n, uint64(drop-sent))
		}
		var sc *streamScratch
		if n > 0 {
			sc = scratchPool.Get().(*streamScratch)
			for s := cursor + 1; s <= cursor+n; s++ {
				e := o.at(s)
				sc.refs = append(sc.refs, ref{e.sym, e.wire})
			}
		}
		hb := o.hbGen
		var wake chan struct{}
		if n == avail {
			wake = o.waitChLocked()
		}
		o.mu.Unlock()

		cursor += n
		var buf []byte
		if sc != nil {
			buf = sc.buf[:0]
			k := 0
			for _, e := range sc.refs {
				if filter != nil && e.sym != "" && !filter[e.sym] {
					continue
				}
				buf = append(buf, e.wire...)
				k++
			}
			sent += k
			o.sent.Add(uint64(k))
		}
		out := buf
		if len(out) == 0 && hb != hbSeen {
			out = heartbeatComment
		}
		hbSeen = hb
		if len(out) > 0 {
			if o.testHookBeforeWrite != nil {
				o.testHookBeforeWrite()
			}
			err = o.write(w, rc, out)
		}
		if sc != nil {
			sc.buf = buf
			putScratch(sc)
		}
		if err != nil {
			reason = "write: " + err.Error()
			return
		}
		if drop > 0 && sent >= drop {
			reason = "drop-every"
			return
		}
		if wake == nil {
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return
		}
	}
}

// write writes b and flushes it, within the write timeout.
func (o *Origin) write(w http.ResponseWriter, rc *http.ResponseController, b []byte) error {
	timed := false
	if o.opts.WriteTimeout > 0 {
		timed = rc.SetWriteDeadline(time.Now().Add(o.opts.WriteTimeout)) == nil
	}
	var err error
	if len(b) > 0 {
		_, err = w.Write(b)
	}
	if err == nil {
		err = rc.Flush()
	}
	if timed && err == nil {
		err = rc.SetWriteDeadline(time.Time{})
	}
	if errors.Is(err, http.ErrNotSupported) {
		err = nil
	}
	return err
}
