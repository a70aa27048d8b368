package sse

import "unicode/utf8"

// replacement is U+FFFD REPLACEMENT CHARACTER encoded as UTF-8.
const replacement = "\uFFFD"

// appendUTF8 appends src to dst, decoding it as the WHATWG Encoding Standard's
// UTF-8 decoder does: every maximal subpart of an ill-formed sequence becomes
// one U+FFFD. Go's own decoders differ: utf8.DecodeRune (and so a range loop)
// yields one U+FFFD per byte, and strings.ToValidUTF8 one per run of bad bytes.
//
// The decoder never consumes an ASCII byte as part of a bad sequence, so
// decoding a stream line by line (or value by value) gives the same text as
// decoding it whole: that is why the parser can split lines on raw bytes.
func appendUTF8[S ~string | ~[]byte](dst []byte, src S) []byte {
	// Fast path: almost every stream is valid UTF-8 (usually ASCII).
	if isValidUTF8(src) {
		return append(dst, src...)
	}
	for i := 0; i < len(src); {
		c := src[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		var size int
		switch s := src[i:]; any(s).(type) {
		case string:
			_, size = utf8.DecodeRuneInString(any(s).(string))
		default:
			_, size = utf8.DecodeRune(any(s).([]byte))
		}
		if size > 1 {
			dst = append(dst, src[i:i+size]...)
			i += size
			continue
		}
		dst = append(dst, replacement...)
		i += maximalSubpart(src[i:])
	}
	return dst
}

func isValidUTF8[S ~string | ~[]byte](s S) bool {
	switch v := any(s).(type) {
	case string:
		return utf8.ValidString(v)
	case []byte:
		return utf8.Valid(v)
	}
	return utf8.ValidString(string(s))
}

// maximalSubpart returns the length of the maximal subpart of an ill-formed
// sequence at the start of s, which must not start with a well-formed
// sequence: 1 for a byte that cannot start a sequence, otherwise the lead byte
// plus the continuation bytes that were still acceptable (Unicode Table 3-7;
// the WHATWG UTF-8 decoder's lower and upper boundaries).
func maximalSubpart[S ~string | ~[]byte](s S) int {
	need, lo, hi := 0, byte(0x80), byte(0xBF)
	switch c := s[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	n := 1
	for n <= need && n < len(s) {
		b := s[n]
		if n > 1 {
			lo, hi = 0x80, 0xBF
		}
		if b < lo || b > hi {
			break
		}
		n++
	}
	// n == need+1 would be a well-formed sequence, which the caller excluded.
	return n
}
