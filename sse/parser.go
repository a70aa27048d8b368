package sse

import (
	"bytes"
	"errors"
	"io"
	"math"
	"strings"
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

// ErrPending may be returned by a Parser's reader, with no data, when it has nothing now but
// may have more later. Next then returns ErrPending too, without making it sticky: call Next
// again once the reader has data. It lets one goroutine serve many parsers (each fed from a
// buffer) instead of blocking a goroutine per stream in Read.
var ErrPending = errors.New("sse: no data yet")

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

// The read buffer adapts to the stream: it starts at minBufSize, doubles up
// to maxBufSize when a Read fills it (the reader had more to give, or a line
// needs the room), and shrinks again when shrinkReads reads in a row have
// used at most a quarter of it. A parser of a quiet stream, which the proxy
// may hold by the ten thousand, so keeps a small buffer.
const (
	minBufSize  = 512
	maxBufSize  = 32 << 10
	shrinkReads = 16
)

// Event strings are cut from slabs: while more input is buffered after an
// event (a burst), its data is built right in the free part of the current
// slab, of at most slabSize bytes, and its new last event ID is put after
// it, so a burst of small events costs one allocation per slab rather than
// one or two per event. Bytes handed out are never written again; the next
// event goes after them. Data longer than slabLimit, and the event after
// which nothing more is buffered (the parser will wait for the stream),
// get allocations of their own, and the parser lets go of the slab before
// it waits, so that a quiet stream's parser holds no slab.
const (
	slabSize  = 8 << 10
	slabLimit = 1 << 10
)

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
	// so a run of lines ending in LF does not rescan the buffer for CR (nor
	// the other way round).
	lf, cr int
	// scan is where the search for a line ending resumes after a read:
	// buf[r:scan] is the start of a line, known to hold no CR or LF.
	scan int
	// buf[r:valid] is known to be valid UTF-8, so the values of the lines
	// in it need no checking one by one; buf[:checked] was checked.
	valid, checked int

	reads int // reads since buf was last resized or considered for it
	peak  int // the most bytes buf held after one of those reads

	rerr error // error from the reader, reported once buf is drained
	err  error // sticky error returned by Next

	max  int
	line []byte // start of a line too long for buf, when lineSpill

	// The event's buffers. The data buffer is built in the free part of
	// the slab, slab[used:used+dlen], when dataInSlab, so that its Data
	// needs no copying; else it is own.bytes(). The buffers are written
	// without storing pointers into the Parser (see buffer), which would
	// cost a GC write barrier during a collection.
	dlen int
	own  buffer // a data buffer, holding nothing handed out
	typ  buffer // event type buffer
	id   buffer // last event ID buffer

	// slab holds event strings; slab[:used] has been handed out and is
	// never written again. len(slab) == cap(slab).
	slab []byte
	used int

	// The last event ID string: the id buffer at the last blank line. It is
	// slab[lidOff:lidOff+lidLen] when lidInSlab, else lastID, which is in an
	// earlier slab when lidPinned.
	lastID         string
	lidOff, lidLen int

	types [4]string // recently dispatched event types, to reuse their strings

	retry int64

	hasRetry   bool
	dataInSlab bool
	lidInSlab  bool
	lidPinned  bool
	grow       bool // the last Read filled buf: make it larger
	bomDone    bool // the leading byte order mark was checked for
	afterCR    bool // the last line ended in a CR at the end of buf: skip one '\n'
	skipping   bool // discarding the rest of a line that is to be ignored
	lineSpill  bool // line holds the start of the current line
}

// NewParser returns a Parser reading from r. A nil opts means the defaults.
func NewParser(r io.Reader, opts *ParserOptions) *Parser {
	limit := DefaultMaxEventSize
	if opts != nil && opts.MaxEventSize > 0 {
		limit = opts.MaxEventSize
	}
	return &Parser{rd: r, max: limit, lf: -2, cr: -2}
}

// LastEventID returns the last event ID string: the value a client sends as
// Last-Event-ID when it reconnects. The spec sets it from the last event ID
// buffer at every blank line, including one that ends a block with no data
// (so an id field is honoured even when no event is dispatched). When Next
// has just returned an event it equals that event's LastEventID. An id field
// of a block that was never ended by a blank line (cut off by the end of the
// stream or an error) is not reflected, as in a browser.
func (p *Parser) LastEventID() string {
	if p.lidInSlab {
		return str(p.slab[p.lidOff : p.lidOff+p.lidLen])
	}
	return p.lastID
}

// SetLastEventID sets the last event ID buffer and string, as a client that
// resumes a stream with a Last-Event-ID header should do before the first
// call to Next: events of the new stream without an id field then carry id,
// as they do in a browser.
func (p *Parser) SetLastEventID(id string) {
	p.setLastID(id)
	p.id.set([]byte(id), true)
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

		if p.lineSpill {
			// The line started before the bytes in buf.
			if i := p.nextEOL(); i >= 0 {
				p.line = append(p.line, p.buf[p.r:i]...)
				p.consumeEOL(i)
				err := p.processField(p.line, false)
				p.line, p.lineSpill = nil, false // do not keep a huge line buffer
				if err != nil {
					return Event{}, p.fail(err)
				}
				continue
			}
		} else {
			data, typ, ok, err := p.lines()
			if err != nil {
				return Event{}, p.fail(err)
			}
			if ok {
				return Event{LastEventID: p.LastEventID(), Type: typ, Data: data}, nil
			}
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
			p.line = nil
			p.r = p.w
			continue
		case lineField:
			if len(p.line)+p.w-p.r+p.retained() > p.max {
				return Event{}, p.fail(ErrEventTooLarge)
			}
		}
		if err := p.fill(); err != nil {
			return Event{}, p.fail(err)
		}
	}
}

const bom = "\uFEFF"

// fail records err as the sticky error and returns it; ErrPending is not sticky.
func (p *Parser) fail(err error) error {
	if err != ErrPending {
		p.err = err
	}
	return err
}

// retained is the number of bytes held in the event's buffers.
func (p *Parser) retained() int { return p.dlen + p.typ.n + p.id.n }

// Suspended is what a parser that is between events keeps of its stream (see Suspend).
type Suspended struct {
	lastID   string
	afterCR  bool
	bomDone  bool
	retry    int64
	hasRetry bool
}

// Suspend reports whether the parser is between events, with nothing of the stream
// buffered (as when Next has just returned ErrPending after a complete event), and if so
// what it must remember of the stream. A caller holding many idle streams can then drop
// the parser and later continue with Resume, which parses the rest of the stream exactly as
// this parser would have. A parser that has failed, or holds part of an event or a line,
// cannot be suspended.
func (p *Parser) Suspend() (Suspended, bool) {
	if p.err != nil || p.rerr != nil || p.r != p.w || p.lineSpill || p.skipping || p.dlen != 0 || p.typ.n != 0 {
		return Suspended{}, false
	}
	lastID := p.LastEventID()
	if string(p.id.bytes()) != lastID {
		return Suspended{}, false // an id field of the event in progress
	}
	return Suspended{lastID: strings.Clone(lastID), afterCR: p.afterCR, bomDone: p.bomDone,
		retry: p.retry, hasRetry: p.hasRetry}, true
}

// LastEventID is the suspended parser's last event ID string (a copy of its own).
func (s Suspended) LastEventID() string { return s.lastID }

// Resume returns a parser that continues a stream where a suspended parser left it, reading
// the rest from r.
func Resume(r io.Reader, opts *ParserOptions, s Suspended) *Parser {
	p := NewParser(r, opts)
	p.SetLastEventID(s.lastID)
	p.afterCR, p.bomDone, p.retry, p.hasRetry = s.afterCR, s.bomDone, s.retry, s.hasRetry
	return p
}

// Release lets go of the read buffer if it holds nothing unconsumed (and of the slab of event
// strings unless an event is being built in it), as when Next has just
// returned ErrPending between events: a parser waiting for data then holds no buffer. The
// next read allocates a small one again.
func (p *Parser) Release() {
	if p.r != p.w || p.lineSpill || p.buf == nil {
		return
	}
	p.buf, p.r, p.w = nil, 0, 0
	p.lf, p.cr, p.scan, p.valid, p.checked = -2, -2, 0, 0, 0
	p.reads, p.peak, p.grow = 0, 0, false
	if !p.dataInSlab {
		p.dropSlab()
	}
}

// fill reads more data into buf, keeping buf[r:w] (at most a partial line).
// It returns the reader's error once everything before it was consumed.
func (p *Parser) fill() error {
	if p.rerr != nil {
		return p.rerr
	}
	// The Read may block for long: hold on to as little as possible.
	if !p.grow && !p.dataInSlab {
		// Unless the last Read filled buf, so that this one will not
		// wait, drop the slab: strings handed out keep it alive as
		// long as they need it.
		p.dropSlab()
	}
	if p.dlen == 0 && len(p.own.b) > slabLimit {
		p.own = buffer{}
	}
	if p.r > 0 {
		p.w = copy(p.buf, p.buf[p.r:p.w])
		p.valid = max(p.valid-p.r, 0)
		p.checked = max(p.checked-p.r, 0)
		p.r = 0
	}
	size := len(p.buf)
	switch {
	case size == 0:
		size = minBufSize
	case (p.grow || p.w == size) && size < maxBufSize:
		size = min(2*size, maxBufSize)
	case p.reads >= shrinkReads:
		if size > minBufSize && 4*p.peak <= size {
			size = max(minBufSize, 2*p.peak)
		}
		p.reads, p.peak = 0, 0
	}
	p.grow = false
	if size != len(p.buf) {
		b := make([]byte, size)
		copy(b, p.buf[:p.w])
		p.buf = b
		p.reads, p.peak = 0, 0
	}
	if p.w == len(p.buf) {
		// A line longer than the largest buf: move its start aside (Next
		// bounds it).
		p.line = append(p.line, p.buf[:p.w]...)
		p.lineSpill = true
		p.w, p.valid, p.checked = 0, 0, 0
	}
	// Callers read more only when buf[r:w] holds no line ending.
	p.lf, p.cr, p.scan = -2, -2, p.w
	for range maxEmptyReads {
		n, err := p.rd.Read(p.buf[p.w:])
		if n < 0 || n > len(p.buf)-p.w {
			return errors.New("sse: reader returned an invalid count")
		}
		if err == ErrPending {
			if n == 0 {
				return err
			}
			err = nil
		}
		p.w += n
		if err != nil {
			p.rerr = err
		}
		if n > 0 || err != nil {
			p.reads++
			p.peak = max(p.peak, p.w)
			// A full buffer means the reader may have had more; lines
			// skipped as they stream by do not need a larger buffer.
			p.grow = p.w == len(p.buf) && !p.skipping
			return nil
		}
	}
	return io.ErrNoProgress
}

// lines processes the lines complete in buf until one dispatches an event,
// whose Data and Type it returns with true. It is Next's inner loop, for
// lines that start in buf. (Returning an Event struct from here and from
// dispatch would cost store-forwarding stalls as it is copied.)
func (p *Parser) lines() (data, typ string, ok bool, err error) {
	buf := p.buf[:p.w]
	r, lf, cr := p.r, p.lf, p.cr
	for {
		// Find the line ending, searching again for a CR or LF only once
		// r has passed the one found before. A blank line needs no search.
		i := r
		if r == len(buf) || buf[r] != '\n' && buf[r] != '\r' {
			i = lf
			if i < r && i != -1 {
				i = index(buf, max(r, p.scan), len(buf), '\n')
				lf = i
			}
			if cr != -1 {
				if cr < r {
					cr = index(buf, max(r, p.scan), len(buf), '\r')
				}
				if cr >= 0 && (i < 0 || cr < i) {
					i = cr
				}
			}
			if i < 0 {
				break
			}
		}
		start := r
		r = i + 1
		if buf[i] == '\r' {
			switch {
			case r == len(buf):
				p.afterCR = true // the LF of a CRLF may come with the next read
			case buf[r] == '\n':
				r++
			}
		}
		if i == start {
			// A blank line.
			p.r = r
			if data, typ, ok := p.dispatch(); ok {
				p.lf, p.cr = lf, cr
				return data, typ, true, nil
			}
			continue
		}
		if i > p.checked {
			p.r = start
			p.validate()
		}
		p.r = r
		if err := p.processField(buf[start:i], i <= p.valid); err != nil {
			return "", "", false, err
		}
	}
	p.r, p.lf, p.cr = r, lf, cr
	return "", "", false, nil
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
	lf := p.lf
	if lf < p.r && lf != -1 {
		lf = index(p.buf, max(p.r, p.scan), p.w, '\n')
		p.lf = lf
	}
	cr := p.cr
	if cr < p.r && cr != -1 {
		cr = index(p.buf, max(p.r, p.scan), p.w, '\r')
		p.cr = cr
	}
	if cr >= 0 && (lf < 0 || cr < lf) {
		return cr
	}
	return lf
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

// Fields the parser processes.
const (
	fieldData = iota
	fieldEvent
	fieldID
	fieldRetry
)

// processField processes one complete line that is not blank, without its
// line ending. valid tells whether the line is known to be valid UTF-8.
func (p *Parser) processField(line []byte, valid bool) error {
	// The field name ends at the first colon, or is the whole line. Tell
	// the four known names apart by their first byte, then check the rest.
	var field int
	var value []byte
	switch line[0] {
	case 'd':
		if len(line) < 4 || string(line[1:4]) != "ata" {
			return nil
		}
		field, value = fieldData, line[4:]
	case 'e':
		if len(line) < 5 || string(line[1:5]) != "vent" {
			return nil
		}
		field, value = fieldEvent, line[5:]
	case 'i':
		if len(line) < 2 || line[1] != 'd' {
			return nil
		}
		field, value = fieldID, line[2:]
	case 'r':
		if len(line) < 5 || string(line[1:5]) != "etry" {
			return nil
		}
		field, value = fieldRetry, line[5:]
	default:
		return nil // a comment, or a name no field has
	}
	if len(value) > 0 {
		if value[0] != ':' {
			return nil // a longer name
		}
		value = value[1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	if len(line)+p.retained() > p.max {
		return ErrEventTooLarge
	}
	switch field {
	case fieldData:
		p.addData(value, valid)
	case fieldEvent:
		p.typ.set(value, valid)
	case fieldID:
		if hasNUL(value) {
			return nil // ignored
		}
		p.id.set(value, valid)
	case fieldRetry:
		if ms, ok := parseRetry(value); ok {
			p.retry, p.hasRetry = ms, true
		}
		return nil
	}
	// Replacing bad UTF-8 can make a value up to three times longer.
	if !valid && p.retained() > p.max {
		return ErrEventTooLarge
	}
	return nil
}

// hasNUL tells whether v contains a U+0000. IDs are short: a loop beats
// calling bytes.IndexByte.
func hasNUL(v []byte) bool {
	if len(v) > 32 {
		return bytes.IndexByte(v, 0) >= 0
	}
	for _, c := range v {
		if c == 0 {
			return true
		}
	}
	return false
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

// dispatch runs the spec's "dispatch the event" steps for a blank line. It
// returns the event's Data and Type and true if one is dispatched; its
// LastEventID is then p.LastEventID().
func (p *Parser) dispatch() (data, typ string, ok bool) {
	id := p.id.bytes()
	newID := string(id) != p.LastEventID()
	if p.dlen == 0 {
		if newID {
			p.setLastID(string(id))
		}
		p.typ.n = 0
		return "", "", false
	}
	// The data buffer is not empty, so it ends with the '\n' of its last
	// data line, which is dropped.
	n := p.dlen - 1
	switch {
	case p.dataInSlab:
		data = str(p.slab[p.used : p.used+n])
		p.used += n
	case n <= slabLimit && p.r < p.w && (n <= len(p.slab)-p.used || p.newSlab(n+len(id))):
		copy(p.slab[p.used:], p.own.b[:n])
		data = str(p.slab[p.used : p.used+n])
		p.used += n
	case newID && n <= slabLimit:
		// One allocation for the data and the new last event ID.
		b := make([]byte, n+len(id))
		copy(b, p.own.b[:n])
		copy(b[n:], id)
		data = str(b[:n])
		p.setLastID(str(b[n:]))
		newID = false
	default:
		// Do not let a long-lived last event ID pin a large event's data.
		data = string(p.own.b[:n])
	}
	if newID {
		if len(id) > 0 && len(id) <= len(p.slab)-p.used {
			copy(p.slab[p.used:], id)
			p.lidOff, p.lidLen, p.lidInSlab = p.used, len(id), true
			p.used += len(id)
		} else {
			p.setLastID(string(id))
		}
	}
	if !p.dataInSlab && len(p.own.b) > maxBufSize {
		p.own = buffer{} // do not keep a huge event's buffer alive
	}
	p.dlen, p.dataInSlab, p.own.n = 0, false, 0
	if p.typ.n > 0 {
		typ = p.typeString()
		p.typ.n = 0
	}
	return data, typ, true
}

// setLastID sets the last event ID string.
func (p *Parser) setLastID(id string) {
	p.lastID, p.lidInSlab, p.lidPinned = id, false, false
}

// addData appends value and a LF to the data buffer, in the slab if it fits.
func (p *Parser) addData(value []byte, valid bool) {
	need := len(value) + 1
	if p.dlen == 0 {
		p.own.n = 0
		p.dataInSlab = need <= len(p.slab)-p.used || p.newSlab(need+p.id.n)
	}
	if p.dataInSlab {
		end := p.used + p.dlen
		if valid && need <= len(p.slab)-end {
			copy(p.slab[end:], value)
			p.slab[end+len(value)] = '\n'
			p.dlen += need
			return
		}
		// The data outgrows the slab (or needs decoding): move it.
		p.own.set(p.slab[p.used:end], true)
		p.dataInSlab = false
	}
	p.own.add(value, valid)
	p.own.add(lf, true)
	p.dlen = p.own.n
}

var lf = []byte{'\n'}

// newSlab starts a new slab with room for need bytes if need is small and
// more input is buffered (so more events are likely to follow at once), and
// reports whether it did.
func (p *Parser) newSlab(need int) bool {
	if need > slabLimit || p.r >= p.w {
		return false
	}
	if p.lidInSlab {
		// The next event will likely bring a new ID: until then, the
		// last one may keep the old slab.
		p.lastID, p.lidInSlab, p.lidPinned = p.LastEventID(), false, true
	}
	// What is still buffered is about what the next events need.
	p.slab, p.used = make([]byte, min(slabSize, max(need, p.w-p.r+need))), 0
	return true
}

// dropSlab lets go of the slab. A last event ID in it is copied out, so
// that it does not pin the slab for as long as the stream sends no new ID.
func (p *Parser) dropSlab() {
	if p.lidInSlab || p.lidPinned {
		p.setLastID(strings.Clone(p.LastEventID()))
	}
	p.slab, p.used = nil, 0
}

// buffer is a byte buffer that stores no pointer when it is written within
// its capacity: b has its whole capacity as its length, and b[:n] is used.
type buffer struct {
	b []byte
	n int
}

func (b *buffer) bytes() []byte { return b.b[:b.n] }

// set sets the buffer to v, decoded as UTF-8 unless valid says it is.
func (b *buffer) set(v []byte, valid bool) {
	b.n = 0
	b.add(v, valid)
}

// add appends v, decoded as UTF-8 unless valid says it is.
func (b *buffer) add(v []byte, valid bool) {
	if valid && len(v) <= len(b.b)-b.n {
		b.n += copy(b.b[b.n:], v)
		return
	}
	var s []byte
	if valid {
		s = append(b.b[:b.n], v...)
	} else {
		s = appendUTF8(b.b[:b.n], v)
	}
	b.b, b.n = s[:cap(s)], len(s)
}

// str returns b as a string without copying it. The bytes of b must never
// be written again.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// typeString returns the type buffer as a string, reusing the string of a
// recent event of the same type: streams tend to use a few types. The
// cache is two-way set-associative, so a lookup costs one or two compares.
func (p *Parser) typeString() string {
	b := p.typ.bytes()
	h := (uint(b[0]) + 7*uint(b[len(b)-1]) + uint(len(b))) % uint(len(p.types))
	if t := p.types[h]; t == string(b) {
		return t
	}
	if t := p.types[h^1]; t == string(b) {
		return t
	}
	t := string(b)
	if p.types[h] != "" {
		p.types[h^1] = p.types[h] // the older entry of the set goes
	}
	p.types[h] = t
	return t
}
