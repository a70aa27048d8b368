// Package origin is the reference origin server for pushproxy: a plain Server-Sent Events
// stock ticker, the one of the original article — "an initial snapshot, then add/remove/update
// events as JSON, every event with an id".
//
// An [Origin] owns a universe of stock symbols, a deterministic (seeded) ticker that changes
// them, and a bounded history of the events it published. Its [Origin.Handler] serves:
//
//	GET  /events, /stocks  the SSE stream (see below)
//	GET  /healthz          200 "ok"
//	POST /emit             publish ?type=&data= (or the body as data); only with Options.AllowEmit
//
// # The stream
//
// On connect the origin sends "retry: <ms>" (when Options.Retry is set). A client that sends a
// Last-Event-ID header (or ?last_event_id= / ?lastEventId=) naming an event still in the
// history gets every event after it, then the live events. Any other client (no id, an unknown
// id, an id evicted from the history) first gets one "snapshot" event:
//
//	id: 42
//	event: snapshot
//	data: {"id":"42","time":1700000000000,"symbols":[{"symbol":"ABC","price":12.34},...]}
//
// The snapshot's id is the id of the newest published event (0 before the first), so a
// client that reconnects with it resumes exactly after the snapshot. Note that this id is
// shared with that published event: a reader that counts ids must treat the snapshot apart.
// Live events are
//
//	event: add     data: {"symbol":"ABC","price":12.34,"time":...}
//	event: remove  data: {"symbol":"ABC","time":...}
//	event: update  data: {"symbol":"ABC","price":12.40,"change":0.06,"time":...}
//
// plus whatever [Origin.Emit] publishes. Every published event has an id: consecutive decimal
// integers from "1". A comment ": heartbeat" is written every Options.Heartbeat to a stream that
// had nothing else to send. ?symbols=ABC,DEF restricts the stream (and the snapshot) to those
// symbols; events without a symbol (Emit) always pass.
//
// # Connections
//
// A stream holds no queue of its own: it reads the shared history by cursor, woken by a
// broadcast when the head advances (or a heartbeat is due), so a stream costs its handler
// goroutine and nothing else while idle, and every stream sees every event exactly once, in
// order. A stream whose cursor falls out of the history (a client too slow to keep up) is
// ended; the client reconnects and gets a snapshot. Options.DropEvery ends each stream after
// that many events, to exercise reconnects. [Origin.Disconnect] ends all open streams now.
//
// # Using it in tests
//
//	o := origin.New(&origin.Options{History: 100000}) // Rate 0: only Tick/Emit publish
//	ts := httptest.NewUnstartedServer(nil)
//	ts.Config = o.HTTPServer() // HTTP/1.1 and h2c on one listener
//	ts.Start()
//	t.Cleanup(ts.Close)
//	t.Cleanup(o.Close) // runs first: ends the streams, so ts.Close does not wait on them
//	o.Start(ctx)       // only needed for the automatic ticker and heartbeats
//
// [Origin.Published] returns the events still in the history, oldest first (all of them while
// fewer than Options.History were published), to compare with what a reader received.
package origin
