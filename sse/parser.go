package sse

import (
	"bytes"
	"errors"
	"io"
	"math"
	"unicode/utf8"
	"unsafe"
)

// Event is one dispatched event.
type Event struct {
	// LastEventID is the value of the last event ID buffer when the event was
	// dispatched. It persists across events: an event without an id field
	// carries the id of an earlier one (or the value given to
	// Parser.SetLastEventID).
	LastEventID string
	// Type is the event type. The parser returns "" when the event had no
	// event field or an empty one; a browser dispatches such an event as
	// "message". The parser does not substitute "message" itself, so a stream
	// that says "event: message" can be told apart from one that says nothing.
	Type string
	// Data is the event's data: its data field values joined with "\n".
	Data string
}

// ErrEventTooLarge is returned by Parser.Next when a line plus the event's
// accumulated buffers would exceed ParserOptions.MaxEventSize.
var ErrEventTooLarge = errors.New("sse: event or line too large")

// DefaultMaxEventSize is the MaxEventSize used when none is given.
const DefaultMaxEventSize = 1 << 20

// ParserOptions configures a Parser.
type ParserOptions struct {
	// MaxEventSize bounds the bytes the parser retains: the current line
	// plus the data, event type and last event ID buffers. Zero or less means
	// DefaultMaxEventSize. Comments and lines of unknown fields are skipped
	// without being retained, so they are never too large.
	MaxEventSize int
}

// bufSize is the size of the parser's read buffer, reused for every read.
const bufSize = 32 << 10

// maxEmptyReads is how many times in a row a reader may return no data and no
// error before Next gives up with io.ErrNoProgress (as bufio does).
const maxEmptyReads = 100

// Parser reads events from a text/event-stream, as specified in the WHATWG
// HTML Standard, section 9.2.6 "Interpreting an event stream".
//
// A Parser is not safe for concurrent use.
type Parser struct {
	rd   io.Reader
	buf  []byte // read buffer; buf[r:w] is not yet consumed
	r, w int
	// lf and cr are the indexes in buf of the next '\n' and '\r' at or
	// after r, -1 if there is none before w, or -2 if not searched for yet.
	// They are searched for again only once r passes them or buf changes,
	// so a run of lines ending in CR does not rescan the buffer for LF (nor
	// the other way round).
	lf, cr int
	// scan is where the search for a line ending resumes after a read:
	// buf[r:scan] is the start of a line, known to hold no CR or LF.
	scan int
	// buf[r:valid] is known to be valid UTF-8, so the values of the lines
	// in it need no checking one by one; buf[:checked] was checked.
	valid, checked int

	rerr error // error from the reader, reported once buf is drained
	err  error // sticky error returned by Next

	max       int
	bomDone   bool   // the leading byte order mark was checked for
	afterCR   bool   // the last line ended in a CR at the end of buf: skip one '\n'
	skipping  bool   // discarding the rest of a line that is to be ignored
	line      []byte // start of a line too long for buf
	lineSpill bool   // line holds the start of the current line

	data []byte // data buffer
	typ  []byte // event type buffer
	id   []byte // last event ID buffer
	slab []byte

	lastID string    // the last event ID string: the id buffer at the last blank line
	types  [4]string // recently dispatched event types, to reuse their strings
	next   int       // the entry of types to replace next

	retry    int64
	hasRetry bool
}

// NewParser returns a Parser reading from r. A nil opts means the defaults.
func NewParser(r io.Reader, opts *ParserOptions) *Parser {
	limit := DefaultMaxEventSize
	if opts != nil && opts.MaxEventSize > 0 {
		limit = opts.MaxEventSize
	}
	return &Parser{rd: r, buf: make([]byte, bufSize), max: limit, lf: -2, cr: -2}
}

// LastEventID returns the last event ID string: the value a client sends as
// Last-Event-ID when it reconnects. The spec sets it from the last event ID
// buffer at every blank line, including one that ends a block with no data
// (so an id field is honoured even when no event is dispatched). When Next
// has just returned an event it equals that event's LastEventID. An id field
// of a block that was never ended by a blank line (cut off by the end of the
// stream or an error) is not reflected, as in a browser.
func (p *Parser) LastEventID() string { return p.lastID }

// SetLastEventID sets the last event ID buffer and string, as a client that
// resumes a stream with a Last-Event-ID header should do before the first
// call to Next: events of the new stream without an id field then carry id,
// as they do in a browser.
func (p *Parser) SetLastEventID(id string) {
	p.lastID = id
	p.id = append(p.id[:0], id...)
}

// Retry returns the most recent valid reconnection time of the stream in
// milliseconds, and whether the stream has set one. A retry field takes
// effect as soon as its line is read, even if its block is never dispatched.
// Values that are empty, contain anything but the digits 0-9, or do not fit
// in an int64 are ignored.
func (p *Parser) Retry() (int64, bool) { return p.retry, p.hasRetry }

// Next returns the next dispatched event. At the end of the stream it returns
// io.EOF, discarding a block that was not ended by a blank line; other read
// errors are returned as they are. Once Next has returned an error it
// returns the same error again.
func (p *Parser) Next() (Event, error) {
	if p.err != nil {
		return Event{}, p.err
	}
	for {
		if !p.bomDone {
			// The UTF-8 decoder drops one leading byte order mark; a
			// partial one at the end of the stream is just bad UTF-8.
			avail := p.buf[p.r:p.w]
			if len(avail) < 3 && bytes.HasPrefix([]byte(bom), avail) && p.rerr == nil {
				if err := p.fill(); err != nil {
					return Event{}, p.fail(err)
				}
				continue
			}
			if bytes.HasPrefix(avail, []byte(bom)) {
				p.r += len(bom)
			}
			p.bomDone = true
		}
		if p.afterCR && p.r < p.w {
			p.afterCR = false
			if p.buf[p.r] == '\n' {
				p.r++
			}
		}
		if p.skipping {
			i := indexEOL(p.buf[p.r:p.w])
			if i < 0 {
				p.r = p.w
				if err := p.fill(); err != nil {
					return Event{}, p.fail(err)
				}
				continue
			}
			p.skipping = false
			p.consumeEOL(p.r + i)
			continue
		}

		if i := p.nextEOL(); i >= 0 {
			if i == p.r && !p.lineSpill {
				p.consumeEOL(i) // a blank line
				if ev, ok := p.dispatch(); ok {
					return ev, nil
				}
				continue
			}
			line := p.buf[p.r:i]
			if i > p.checked {
				p.validate()
			}
			valid := i <= p.valid
			if p.lineSpill {
				p.line = append(p.line, line...)
				line, valid = p.line, false
			}
			p.consumeEOL(i)
			err := p.processField(line, valid)
			if p.lineSpill {
				p.lineSpill = false
				if cap(p.line) > 4*bufSize {
					p.line = nil // do not keep a huge line buffer alive
				} else {
					p.line = p.line[:0]
				}
			}
			if err != nil {
				return Event{}, p.fail(err)
			}
			continue
		}

		// No complete line is buffered. Decide what the partial line needs
		// before reading more.
		head := p.buf[p.r:p.w]
		if p.lineSpill {
			head = p.line
		}
		switch classify(head) {
		case lineIgnored:
			p.skipping = true
			p.lineSpill = false
			p.line = p.line[:0]
			p.r = p.w
			continue
		case lineField:
			n := p.w - p.r
			if p.lineSpill {
				n += len(p.line)
			}
			if n+p.retained() > p.max {
				return Event{}, p.fail(ErrEventTooLarge)
			}
		}
		if err := p.fill(); err != nil {
			return Event{}, p.fail(err)
		}
	}
}

const bom = "\uFEFF"

// fail records err as the sticky error and returns it.
func (p *Parser) fail(err error) error {
	p.err = err
	return err
}

// retained is the number of bytes held in the event's buffers.
func (p *Parser) retained() int { return len(p.data) + len(p.typ) + len(p.id) }

// fill reads more data into buf, keeping buf[r:w] (at most a partial line).
// It returns the reader's error once everything before it was consumed.
func (p *Parser) fill() error {
	if p.rerr != nil {
		return p.rerr
	}
	if p.r > 0 {
		p.w = copy(p.buf, p.buf[p.r:p.w])
		p.valid = max(p.valid-p.r, 0)
		p.checked = max(p.checked-p.r, 0)
		p.r = 0
	}
	if p.w == len(p.buf) {
		// A line longer than buf: move its start aside (Next bounds it).
		p.line = append(p.line, p.buf[:p.w]...)
		p.lineSpill = true
		p.w, p.valid, p.checked = 0, 0, 0
	}
	p.slab = nil
	// Callers read more only when buf[r:w] holds no line ending.
	p.lf, p.cr, p.scan = -2, -2, p.w
	for range maxEmptyReads {
		n, err := p.rd.Read(p.buf[p.w:])
		if n < 0 || n > len(p.buf)-p.w {
			return errors.New("sse: reader returned an invalid count")
		}
		p.w += n
		if err != nil {
			p.rerr = err
		}
		if n > 0 || err != nil {
			return nil
		}
	}
	return io.ErrNoProgress
}

// validate checks the buffered data for valid UTF-8 all at once, which is
// much faster than checking value by value. It checks buf[r:w] but for a
// character that may be cut off by the end of the data. Next calls it only
// for a line that ends past what was checked, so a byte is checked again
// only if it belonged to a partial line, and never once per read.
func (p *Parser) validate() {
	end := p.w
	for i := p.w - 1; i >= p.r && i >= p.w-3; i-- {
		if c := p.buf[i]; c < utf8.RuneSelf {
			break
		} else if c >= 0xC0 {
			end = i // a lead byte: its sequence may be incomplete
			break
		}
	}
	if utf8.Valid(p.buf[p.r:end]) {
		p.valid = end
	}
	p.checked = end
}

// nextEOL returns the index in buf of the CR or LF that ends the line
// starting at r, or -1 if the line is not complete yet.
func (p *Parser) nextEOL() int {
	if p.lf < p.r && p.lf != -1 {
		p.lf = index(p.buf, max(p.r, p.scan), p.w, '\n')
	}
	if p.cr < p.r && p.cr != -1 {
		p.cr = index(p.buf, max(p.r, p.scan), p.w, '\r')
	}
	if p.cr >= 0 && (p.lf < 0 || p.cr < p.lf) {
		return p.cr
	}
	return p.lf
}

// index returns the index in b of the first c in b[from:to], or -1.
func index(b []byte, from, to int, c byte) int {
	if i := bytes.IndexByte(b[from:to], c); i >= 0 {
		return from + i
	}
	return -1
}

// indexEOL returns the index of the first CR or LF in b, or -1.
func indexEOL(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if j := bytes.IndexByte(b[:i], '\r'); j >= 0 {
		return j
	}
	return i
}

// consumeEOL consumes the line up to and including the CR, LF or CRLF at i.
func (p *Parser) consumeEOL(i int) {
	p.r = i + 1
	if p.buf[i] == '\r' {
		switch {
		case p.r == p.w:
			p.afterCR = true // the LF of a CRLF may come with the next read
		case p.buf[p.r] == '\n':
			p.r++
		}
	}
}

// Line classes of a partial line, judged from its first bytes.
const (
	lineUnknown = iota // too short to tell
	lineIgnored        // a comment or a field the parser ignores
	lineField          // a field the parser processes
)

// classify tells from the start of a line (without its line ending) whether
// the line will be ignored: a comment, or a field other than data, event, id
// and retry. Such a line can be skipped without retaining it.
func classify(head []byte) int {
	if len(head) == 0 {
		return lineUnknown
	}
	if head[0] == ':' {
		return lineIgnored
	}
	const longest = len("retry") // the longest field name the parser knows
	k := min(len(head), longest+1)
	c := bytes.IndexByte(head[:k], ':')
	if c < 0 {
		if len(head) > longest {
			return lineIgnored // the field name is longer than any known one
		}
		return lineUnknown
	}
	switch string(head[:c]) {
	case "data", "event", "id", "retry":
		return lineField
	}
	return lineIgnored
}

// processField processes one complete line that is not blank, without its
// line ending. valid tells whether the line is known to be valid UTF-8.
func (p *Parser) processField(line []byte, valid bool) error {
	// The field name ends at the first colon. A known name is at most
	// five bytes long, so a line without a colon in its first six bytes
	// is ignored (so is a comment, which has its colon first).
	c := -1
	for i := 0; i < len(line) && i <= 5; i++ {
		if line[i] == ':' {
			c = i
			break
		}
	}
	var name, value []byte
	switch {
	case c > 0:
		name, value = line[:c], line[c+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	case c < 0 && len(line) <= 5:
		name = line // the whole line is the field name; the value is empty
	default:
		return nil // a comment, or a name no field has
	}
	switch string(name) {
	case "data":
		if len(line)+p.retained() > p.max {
			return ErrEventTooLarge
		}
		if valid {
			p.data = append(p.data, value...)
		} else {
			p.data = appendUTF8(p.data, value)
		}
		p.data = append(p.data, '\n')
	case "event":
		if len(line)+p.retained() > p.max {
			return ErrEventTooLarge
		}
		if valid {
			p.typ = append(p.typ[:0], value...)
		} else {
			p.typ = appendUTF8(p.typ[:0], value)
		}
	case "id":
		if len(line)+p.retained() > p.max {
			return ErrEventTooLarge
		}
		if bytes.IndexByte(value, 0) >= 0 {
			break // ignored
		}
		if valid {
			p.id = append(p.id[:0], value...)
		} else {
			p.id = appendUTF8(p.id[:0], value)
		}
	case "retry":
		if len(line)+p.retained() > p.max {
			return ErrEventTooLarge
		}
		if ms, ok := parseRetry(value); ok {
			p.retry, p.hasRetry = ms, true
		}
	default:
		return nil // an unknown field is ignored
	}
	// Replacing bad UTF-8 can make a value up to three times longer.
	if !valid && p.retained() > p.max {
		return ErrEventTooLarge
	}
	return nil
}

// parseRetry parses a retry field value: ASCII digits only, base ten.
func parseRetry(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false // does not fit: ignored like any bad value
		}
		n = n*10 + d
	}
	return n, true
}

// shareLimit is the largest data whose string an event's new last event ID
// shares: one allocation instead of two for the common event, without
// letting a long-lived ID pin a large event's data.
const shareLimit = 1024

const (
	slabSize  = 8 << 10
	slabLimit = 1 << 10
)

// str returns the bytes of b, which are never modified again, as a string.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// dispatch runs the spec's "dispatch the event" steps for a blank line. It
// returns the event and true if one is dispatched.
func (p *Parser) dispatch() (Event, bool) {
	newID := string(p.id) != p.lastID
	if len(p.data) == 0 {
		if newID {
			p.lastID = string(p.id)
		}
		p.typ = p.typ[:0]
		return Event{}, false
	}
	// The data buffer is not empty, so it ends with the '\n' of its last
	// data line, which is dropped.
	n := len(p.data) - 1
	var ev Event
	need := n
	if newID {
		need += len(p.id)
	}
	if need <= slabLimit && p.r < p.w {
		if cap(p.slab)-len(p.slab) < need {
			p.slab = make([]byte, 0, min(slabSize, p.w-p.r+need))
		}
		start := len(p.slab)
		p.slab = append(p.slab, p.data[:n]...)
		if newID {
			p.slab = append(p.slab, p.id...)
		}
		b := p.slab[start:]
		ev.Data = str(b[:n])
		if newID {
			p.lastID = str(b[n:])
		}
	} else if newID && n <= shareLimit {
		p.data = append(p.data[:n], p.id...)
		s := string(p.data)
		ev.Data, p.lastID = s[:n], s[n:]
	} else {
		if newID {
			p.lastID = string(p.id)
		}
		ev.Data = string(p.data[:n])
	}
	ev.LastEventID = p.lastID
	if len(p.typ) > 0 {
		ev.Type = p.typeString()
	}
	if cap(p.data) > 4*bufSize {
		p.data = nil // do not keep a huge event's buffer alive
	} else {
		p.data = p.data[:0]
	}
	p.typ = p.typ[:0]
	return ev, true
}

// typeString returns the type buffer as a string, reusing the string of a
// recent event of the same type: streams tend to use a few types.
func (p *Parser) typeString() string {
	for _, t := range p.types {
		if t == string(p.typ) {
			return t
		}
	}
	t := string(p.typ)
	p.types[p.next] = t
	p.next = (p.next + 1) % len(p.types)
	return t
}
