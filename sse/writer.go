package sse

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrInvalidEvent is returned (wrapped, with the reason) by Writer methods
// for values that no event stream can carry.
var ErrInvalidEvent = errors.New("sse: invalid event")

// Writer writes a text/event-stream. Each call makes exactly one Write to the
// underlying writer (so a caller can flush after it) and emits only complete
// lines, so calls can be interleaved freely.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	w      io.Writer
	buf    []byte
	lastID string // the last event ID a reader of the stream has
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// SetLastEventID tells the Writer the last event ID the reader already has,
// such as the Last-Event-ID a resuming client sent. WriteEvent omits the id
// field of an event whose LastEventID equals it. A new Writer assumes "".
func (w *Writer) SetLastEventID(id string) { w.lastID = id }

// WriteEvent writes ev so that a spec-conforming parser reads back an event
// with the same LastEventID, Type and Data, with these normalizations (which
// match what a parser can produce, so every event a Parser returns is written
// back exactly):
//
//   - CR and CRLF in Data are line breaks like LF, so they read back as LF;
//   - invalid UTF-8 in any field is replaced with U+FFFD, one per maximal
//     subpart, as the parser would replace it.
//
// It returns an error wrapping ErrInvalidEvent, and writes nothing, if Type
// or LastEventID contains CR or LF (they would start new lines) or
// LastEventID contains U+0000 (a parser ignores such an id field).
//
// The id field is written only when LastEventID differs from the last one
// written (or set with SetLastEventID); an empty LastEventID after a
// non-empty one is written as "id:" and resets the reader's last event ID.
// The event field is omitted when Type is "". An empty Data is written as a
// single empty data line, so the event is still dispatched.
func (w *Writer) WriteEvent(ev Event) error {
	switch {
	case hasLineBreak(ev.Type):
		return fmt.Errorf("%w: event type contains a line break", ErrInvalidEvent)
	case hasLineBreak(ev.LastEventID):
		return fmt.Errorf("%w: event id contains a line break", ErrInvalidEvent)
	case strings.IndexByte(ev.LastEventID, 0) >= 0:
		return fmt.Errorf("%w: event id contains U+0000", ErrInvalidEvent)
	}
	b := w.buf[:0]
	id := ev.LastEventID
	if !utf8.ValidString(id) {
		id = string(appendUTF8String(nil, id))
	}
	if id != w.lastID {
		b = appendField(b, "id", id)
	}
	if ev.Type != "" {
		b = appendField(b, "event", ev.Type)
	}
	for lines := newLines(ev.Data); ; {
		line, more := lines.next()
		b = appendField(b, "data", line)
		if !more {
			break
		}
	}
	b = append(b, '\n')
	if err := w.write(b); err != nil {
		return err
	}
	w.lastID = id
	return nil
}

func hasLineBreak(s string) bool {
	return strings.IndexByte(s, '\n') >= 0 || strings.IndexByte(s, '\r') >= 0
}

// appendField appends "name: value\n", or "name:\n" for an empty value. The
// space after the colon is always written when there is a value, because a
// parser removes one leading space: a value that starts with a space keeps it.
func appendField(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ':')
	if value != "" {
		b = append(b, ' ')
		b = appendUTF8String(b, value)
	}
	return append(b, '\n')
}

// WriteComment writes text as comment lines, which a parser ignores (they
// are useful as keep-alives). Each line of text (split at CR, LF and CRLF)
// becomes one ": line" comment; empty text writes a single ":" line.
func (w *Writer) WriteComment(text string) error {
	b := w.buf[:0]
	for lines := newLines(text); ; {
		line, more := lines.next()
		b = append(b, ':')
		if line != "" {
			b = append(b, ' ')
			b = append(b, line...)
		}
		b = append(b, '\n')
		if !more {
			break
		}
	}
	return w.write(b)
}

// lines splits a string at CR, LF and CRLF, as a parser splits lines.
type lines struct {
	s      string
	pos    int
	lf, cr int // next '\n' and '\r' at or after pos, -1 for none, -2 unknown
}

func newLines(s string) lines { return lines{s: s, lf: -2, cr: -2} }

// next returns the next line and whether another line follows it. A string
// has one more line than line endings: "a\n" is "a" and "".
func (l *lines) next() (string, bool) {
	if l.lf < l.pos && l.lf != -1 {
		l.lf = indexFrom(l.s, l.pos, '\n')
	}
	if l.cr < l.pos && l.cr != -1 {
		l.cr = indexFrom(l.s, l.pos, '\r')
	}
	end, next := l.lf, l.lf+1
	if l.cr >= 0 && (l.lf < 0 || l.cr < l.lf) {
		end, next = l.cr, l.cr+1
		if next == l.lf {
			next++ // CRLF
		}
	}
	if end < 0 {
		line := l.s[l.pos:]
		l.pos = len(l.s)
		return line, false
	}
	line := l.s[l.pos:end]
	l.pos = next
	return line, true
}

func indexFrom(s string, from int, c byte) int {
	if i := strings.IndexByte(s[from:], c); i >= 0 {
		return from + i
	}
	return -1
}

// WriteRetry writes a retry field setting the reader's reconnection time to
// ms milliseconds. It writes the single line "retry: ms" and no blank line: a
// parser applies a retry field as soon as it reads the line, whether or not
// an event follows. ms must not be negative.
func (w *Writer) WriteRetry(ms int64) error {
	if ms < 0 {
		return fmt.Errorf("%w: negative retry %d", ErrInvalidEvent, ms)
	}
	b := append(w.buf[:0], "retry: "...)
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, '\n')
	return w.write(b)
}

func (w *Writer) write(b []byte) error {
	if cap(b) <= 64<<10 {
		w.buf = b[:0] // reuse, unless one huge event made it big
	}
	_, err := w.w.Write(b)
	return err
}
