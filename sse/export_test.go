package sse

// Internals exposed to the sse_test package.

// DecodeUTF8 decodes b as the parser decodes field values.
func DecodeUTF8(b []byte) string { return string(appendUTF8(nil, b)) }

// BufSize is the size of the parser's read buffer.
const BufSize = bufSize

// Held returns the capacity of the parser's growable buffers: the memory it
// holds besides its fixed read buffer.
func (p *Parser) Held() int { return cap(p.line) + cap(p.data) + cap(p.typ) + cap(p.id) }
