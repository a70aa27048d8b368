package sse

import "unsafe"

// Internals exposed to the sse_test package.

// DecodeUTF8 decodes b as the parser decodes field values.
func DecodeUTF8(b []byte) string { return string(appendUTF8(nil, b)) }

// BufSize is the largest size of the parser's read buffer.
const BufSize = maxBufSize

// Held returns the capacity of the parser's growable buffers: the memory it
// holds besides its read buffer and slab.
func (p *Parser) Held() int { return cap(p.line) + cap(p.own.b) + cap(p.typ.b) + cap(p.id.b) }

// MinBufSize is the size the parser's read buffer starts at.
const MinBufSize = minBufSize

// Footprint returns the memory the parser holds: the Parser itself, its
// read buffer, its slab, its other buffers and its last event ID string (or
// at most a slab it keeps alive).
func (p *Parser) Footprint() int {
	n := int(unsafe.Sizeof(*p)) + cap(p.buf) + cap(p.slab) + p.Held()
	switch {
	case p.lidPinned:
		n += slabSize // the last event ID keeps an earlier slab alive
	case !p.lidInSlab:
		n += len(p.lastID)
	}
	return n
}

// BufCap returns the size of the parser's read buffer.
func (p *Parser) BufCap() int { return cap(p.buf) }
