package api

import (
	"context"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/sse"
)

// GapEventType is the type of the event a reader gets first when events it has not seen may
// be gone (its Last-Event-ID is no longer queued, or the backlog overflowed). Its id is the
// reader's own Last-Event-ID, so it does not move the reader's position; its data is a JSON
// object with a "reason". Code listening with onmessage never sees it.
const GapEventType = "pushproxy-gap"

// gapReason is the data of the gap event.
const gapReason = `{"reason":"events after the given Last-Event-ID may be missing: it is no longer queued, or the backlog overflowed"}`

const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
	ssePage          = 500
)

// eventJSON is one event of the JSON form.
type eventJSON struct {
	ID    string `json:"id"`
	Event string `json:"event"`
	Data  string `json:"data"`
}

type eventsPage struct {
	Events      []eventJSON `json:"events"`
	LastEventID string      `json:"last_event_id"`
	More        bool        `json:"more"`
	Gap         bool        `json:"gap"`
}

// wantsJSON reports whether the client asked for the JSON form: Accept names
// application/json and not text/event-stream (the default).
func wantsJSON(r *http.Request) bool {
	json := false
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "text/event-stream":
			return false
		case "application/json":
			json = true
		}
	}
	return json
}

// startEventStream answers 200 with an event stream's headers and a first comment line,
// not flushed yet: intermediaries (nginx over HTTP/2, among others) hold the response
// headers back until the body has a byte, and an idle stream may have none for a long time.
// EventSource ignores comments.
func startEventStream(w http.ResponseWriter) (*sse.Writer, *http.ResponseController, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives any server write timeout
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer
	w.WriteHeader(http.StatusOK)
	sw := sse.NewWriter(w)
	return sw, rc, sw.WriteComment("ok")
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	st, err := s.authorizedStream(r)
	if err != nil {
		s.readerError(w, r, err)
		return
	}
	id, provided, err := lastEventID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if wantsJSON(r) {
		s.serveJSON(w, r, st, id, provided)
		return
	}
	s.serveSSE(w, r, st, id, provided)
}

func (s *Server) serveJSON(w http.ResponseWriter, r *http.Request, st pushproxy.Stream, id string, provided bool) {
	limit, err := parseLimit(r.URL.Query().Get("limit"), defaultPageLimit, maxPageLimit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cur, err := s.store.ResumeRead(r.Context(), st.ID, &st, id, provided)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// A fetch answers the wake-up the device was sent.
	if err := s.svc.MarkRead(r.Context(), st.DeviceID); err != nil {
		s.writeError(w, r, err)
		return
	}
	evs, err := s.store.EventsAfter(r.Context(), st.ID, cur.After, limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	page := eventsPage{Events: []eventJSON{}, More: len(evs) > limit, Gap: cur.Gap, LastEventID: id}
	if !provided {
		page.LastEventID = st.AckedID
	}
	evs = evs[:min(len(evs), limit)]
	for _, ev := range evs {
		typ := ev.Type
		if typ == "" {
			typ = "message"
		}
		page.Events = append(page.Events, eventJSON{ID: pushproxy.ReplayID(ev.Seq, ev.LastEventID), Event: typ, Data: ev.Data})
	}
	if n := len(page.Events); n > 0 {
		page.LastEventID = page.Events[n-1].ID
	}
	writeJSON(w, http.StatusOK, page)
}

// trimmedSince reports whether events after seq after were trimmed, when the next queued
// event is not the one after it. Without compaction that says it already; a compacted
// stream's survivors have holes in their seqs, and only a floor past after is a gap.
func (s *Server) trimmedSince(ctx context.Context, st pushproxy.Stream, after int64) bool {
	if st.CompactBy == "" {
		return true
	}
	cur, err := s.store.GetStream(ctx, st.ID)
	return err != nil || cur.FloorSeq > after
}

func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request, st pushproxy.Stream, id string, provided bool) {
	ctx := r.Context()
	// Subscribe before reading, so that nothing committed in between is missed.
	news, unsubscribe := s.svc.Subscribe(st.ID)
	defer unsubscribe()
	cur, err := s.store.ResumeRead(ctx, st.ID, &st, id, provided)
	if err != nil {
		s.readerError(w, r, err)
		return
	}
	if st.State != pushproxy.StateHeld && cur.After >= st.HeadSeq {
		// Nothing more will come: 204 tells an EventSource to stop reconnecting.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	readerID, err := s.svc.OpenReader(ctx, st)
	if err != nil {
		s.readerError(w, r, err)
		return
	}
	after := cur.After
	delivered := after // the newest event flushed to the reader
	defer func() {
		// Events written to this reader need no wake-up; if the device is left asleep with
		// others undelivered, a wake-up is queued.
		if err := s.svc.CloseReader(context.WithoutCancel(ctx), readerID, st.ID, delivered); err != nil {
			s.log.WarnContext(ctx, "closing reader failed", slog.String("error", err.Error()))
		}
	}()
	if err := s.svc.MarkRead(ctx, st.DeviceID); err != nil {
		s.readerError(w, r, err)
		return
	}

	if cur.Gap {
		w.Header().Set("Pushproxy-Gap", "1")
	}
	sw, rc, err := startEventStream(w)
	if err != nil {
		return
	}
	lastSent := id // the reader's position, as an id
	if !provided {
		lastSent = st.AckedID
	}
	if cur.Gap {
		if err := sw.WriteEvent(sse.Event{LastEventID: id, Type: GapEventType, Data: gapReason}); err != nil {
			return
		}
	}
	if err := rc.Flush(); err != nil {
		return
	}

	heartbeat := time.NewTicker(s.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		// A ring that came while the last page was read is answered by this read.
		select {
		case <-news:
		default:
		}
		evs, err := s.svc.ReadEvents(ctx, st.ID, after, ssePage)
		if err != nil {
			s.endReader(ctx, sw, rc, st.ID, err)
			return
		}
		if len(evs) > 0 && evs[0].Seq > after+1 && s.trimmedSince(ctx, st, after) {
			// Events this reader had not been sent were trimmed (the backlog overflowed)
			// while it was connected: tell it, as at connect.
			if err := sw.WriteEvent(sse.Event{LastEventID: lastSent, Type: GapEventType, Data: gapReason}); err != nil {
				return
			}
		}
		for _, ev := range evs {
			lastSent = pushproxy.ReplayID(ev.Seq, ev.LastEventID)
			if err := sw.WriteEvent(sse.Event{LastEventID: lastSent, Type: ev.Type, Data: ev.Data}); err != nil {
				return
			}
			after = ev.Seq
		}
		if len(evs) > 0 {
			if err := rc.Flush(); err != nil {
				return
			}
			delivered = after
		}
		if len(evs) == ssePage {
			continue
		}
		if len(evs) == 0 {
			// Woken with nothing new: the stream may have ended.
			cur, err := s.store.GetStream(ctx, st.ID)
			if err != nil {
				s.endReader(ctx, sw, rc, st.ID, err)
				return
			}
			// (Events may have been dropped unread, by a close: the floor counts as read.)
			if cur.State != pushproxy.StateHeld && max(after, cur.FloorSeq) >= cur.HeadSeq {
				return
			}
		}
	wait:
		for {
			select {
			case _, ok := <-news:
				if !ok {
					return // shutting down
				}
				break wait
			case <-heartbeat.C:
				if sw.WriteComment("") != nil || rc.Flush() != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}

// An EventSource treats any answer but 200 (and 204, "stop") as final: it stops reconnecting.
// So while the database is out, an event reader is never answered 503: it is answered 200 with
// an event stream that holds only a retry: field and ends at once, and an open reader whose
// reads fail ends the same way. The EventSource reconnects by itself after the retry delay,
// with its Last-Event-ID, until the database is back. JSON pages get the 503 problem with
// Retry-After like every other request.

// readerError answers an event reader's request that failed before its stream started.
func (s *Server) readerError(w http.ResponseWriter, r *http.Request, err error) {
	if wantsJSON(r) || !unavailable(err) || clientGone(r) {
		s.writeError(w, r, err)
		return
	}
	s.log.WarnContext(r.Context(), "event reader told to reconnect: database unavailable", slog.String("error", err.Error()))
	sw, rc, werr := startEventStream(w)
	if werr == nil && sw.WriteRetry(readerRetryMS) == nil {
		_ = rc.Flush()
	}
}

// endReader ends an open event stream whose reads failed: with a retry: hint when the
// database is out (the reader comes back with its Last-Event-ID), silently when the reader
// is gone.
func (s *Server) endReader(ctx context.Context, sw *sse.Writer, rc *http.ResponseController, streamID string, err error) {
	switch {
	case ctx.Err() != nil:
	case unavailable(err):
		s.log.WarnContext(ctx, "event reader ended: database unavailable", slog.String("stream", streamID), slog.String("error", err.Error()))
		if sw.WriteRetry(readerRetryMS) == nil {
			_ = rc.Flush()
		}
	default:
		s.log.ErrorContext(ctx, "reading events failed", slog.String("stream", streamID), slog.String("error", err.Error()))
	}
}
