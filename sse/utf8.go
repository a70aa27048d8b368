package sse

import "unicode/utf8"

// replacement is U+FFFD REPLACEMENT CHARACTER encoded as UTF-8.
const replacement = "\uFFFD"

// appendUTF8 appends src to dst, decoding it as the WHATWG Encoding Standard's
// UTF-8 decoder does: every maximal subpart of an ill-formed sequence becomes
// one U+FFFD. Go's own tools differ: utf8.DecodeRune (and so a range loop)
// yields one U+FFFD per bad byte, strings.ToValidUTF8 one per run of bad bytes.
//
// The decoder never takes an ASCII byte into a bad sequence (it emits U+FFFD
// and then the ASCII byte), so decoding a stream line by line, or field value
// by field value, gives the same text as decoding it whole. That is why the
// parser can split lines and fields on raw bytes and decode only the values.
func appendUTF8(dst, src []byte) []byte {
	// Fast path: almost every stream is valid UTF-8, usually plain ASCII.
	if utf8.Valid(src) {
		return append(dst, src...)
	}
	return appendReplacing(dst, src)
}

// appendUTF8String is appendUTF8 for a string.
func appendUTF8String(dst []byte, src string) []byte {
	if utf8.ValidString(src) {
		return append(dst, src...)
	}
	return appendReplacing(dst, src)
}

// appendReplacing is the slow path of appendUTF8.
func appendReplacing[S ~string | ~[]byte](dst []byte, src S) []byte {
	for i := 0; i < len(src); {
		if src[i] < utf8.RuneSelf {
			dst = append(dst, src[i])
			i++
			continue
		}
		n, ok := sequence(src[i:])
		if ok {
			dst = append(dst, src[i:i+n]...)
		} else {
			dst = append(dst, replacement...)
		}
		i += n
	}
	return dst
}

// sequence looks at the multi-byte sequence that starts at s[0] (a byte of
// 0x80 or more). If it is well-formed it returns its length and true.
// Otherwise it returns the length of its maximal subpart and false: 1 for a
// byte that cannot start a sequence, else the lead byte plus the continuation
// bytes that were still acceptable when the sequence broke off or the input
// ended (Unicode Table 3-7; the WHATWG decoder's lower and upper boundaries).
func sequence[S ~string | ~[]byte](s S) (int, bool) {
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
		return 1, false
	}
	n := 1
	for ; n <= need; n++ {
		if n >= len(s) || s[n] < lo || s[n] > hi {
			return n, false
		}
		lo, hi = 0x80, 0xBF
	}
	return n, true
}
