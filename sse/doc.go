// Package sse reads and writes the Server-Sent Events wire format
// (text/event-stream).
//
// # Parsing
//
// Parser follows the WHATWG HTML Standard, section 9.2.6 "Interpreting an
// event stream", exactly, and passes every eventsource/format-* case of the
// web-platform-tests (see wpt_test.go):
//
//   - The stream is decoded as UTF-8 whatever the Content-Type charset says,
//     with the Encoding Standard's decoder: each maximal subpart of an
//     ill-formed sequence becomes one U+FFFD (not one per byte, nor one per
//     run). One leading byte order mark is dropped; a second one is kept.
//   - Lines end with CRLF, LF or CR, also when a CRLF is split across reads.
//   - A blank line dispatches the block's event unless its data buffer is
//     empty. A line starting with ':' is a comment. Otherwise the field name
//     is the text before the first ':' (or the whole line), the value the
//     text after it less one leading space. "data" appends value+LF to the
//     data buffer, "event" sets the event type, "id" sets the last event ID
//     unless the value contains U+0000, "retry" sets the reconnection time if
//     the value is all ASCII digits. Other fields are ignored.
//   - At the end of the stream a block not ended by a blank line is
//     discarded, as is a final line without a line ending.
//
// Choices where the spec leaves room or the API needs one:
//
//   - Event.Type is "" when the block had no event field or an empty one;
//     such an event is a "message" event, but the parser does not substitute
//     that name.
//   - Parser.LastEventID is the spec's "last event ID string", the value to
//     reconnect with: it is updated at each blank line (also one that
//     dispatches nothing), so an id field of a block cut off by the end of the
//     stream is not reflected (WPT format-data-before-final-empty-line).
//     Parser.SetLastEventID seeds it for a resumed connection, as browsers
//     carry it across reconnections.
//   - A retry value too large for an int64 is ignored, like any other invalid
//     value. Parser.Retry reports a retry field as soon as its line is read.
//   - Memory is bounded by ParserOptions.MaxEventSize: a line of a field the
//     parser processes, plus the data, event type and last event ID buffers,
//     may not exceed it, else Next returns ErrEventTooLarge (and keeps
//     returning it). Comments and lines of ignored fields are skipped as they
//     stream by and never retained, so they have no size limit. The bound is
//     checked on the raw line, and again after replacement characters (which
//     may be longer than the bytes they replace) are added, so every Event
//     has len(Data)+len(Type)+len(LastEventID) < MaxEventSize.
//   - The read buffer starts at 512 bytes, doubles up to 32 KiB when a Read
//     fills it, and shrinks back after a run of small reads, so a parser
//     waiting on a quiet stream holds about 1 KiB (its read buffer, small
//     field buffers and itself), not a 32 KiB buffer.
//   - Strings share memory. The strings of events that arrive together (a
//     burst: more input was already buffered when the event ended) are cut
//     from one slab of at most 8 KiB instead of being allocated one by one,
//     which is much cheaper. The catch is retention: keeping any string of
//     such an event keeps its whole slab alive, so a caller that keeps one
//     small event out of a burst keeps at most 8 KiB alive for it (copy it
//     with strings.Clone if that matters). Data of more than 1 KiB, and the
//     event after which nothing more was buffered (the usual case on a
//     quiet stream), get allocations of their own, and a parser waiting for
//     more input holds no slab. Bytes handed out are never written again,
//     so events may be used from any goroutine while parsing goes on.
//
// # Writing
//
// Writer emits events that a spec parser reads back with the same
// LastEventID, Type and Data, for every event a parser can produce. Other
// values are normalized or refused:
//
//   - CR and CRLF in Data are written as line breaks, so they read back as LF
//     (a parser can never produce CR in Data).
//   - Invalid UTF-8 in any value is replaced as the parser would replace it.
//   - Type or LastEventID with CR or LF, and LastEventID with U+0000, are
//     refused with an error wrapping ErrInvalidEvent.
//   - The id field is written only when LastEventID changes (see
//     Writer.SetLastEventID); the event field only when Type is not "".
//   - Fields are written as "name: value" so a value's own leading space
//     survives the parser's removal of one space.
//
// IsEventStream checks a Content-Type header value for text/event-stream.
package sse
