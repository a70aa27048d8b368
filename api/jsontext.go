package api

import (
	"unicode/utf8"
)

// checkJSONText checks that a JSON body is text the API can store and forward unaltered:
// encoding/json replaces bytes that are not UTF-8, and \u escapes of half a surrogate pair,
// with U+FFFD without a word, so a header value or an id would reach the origin changed.
// It returns nil, or an EINVALID error naming the byte offset. Malformed JSON is left to the
// decoder.
func checkJSONText(b []byte) error {
	if i := invalidUTF8At(b); i >= 0 {
		return invalid("body: not valid UTF-8 at byte %d", i)
	}
	if i := loneSurrogateAt(b); i >= 0 {
		return invalid("body: the \\u escape at byte %d is half a surrogate pair, not a character", i)
	}
	return nil
}

// invalidUTF8At returns the offset of the first byte of b that is not UTF-8, or -1.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

// loneSurrogateAt returns the offset of the first \u escape inside a JSON string of b that
// is a surrogate not paired as UTF-16 pairs them (a high one followed at once by a low one),
// or -1.
func loneSurrogateAt(b []byte) int {
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 < len(b) && b[i+1] != 'u' {
				i++ // \" \\ \n ...: skip the escaped byte
				continue
			}
			r, ok := hex4(b, i+2)
			switch {
			case !ok:
				return -1 // malformed: the decoder says where
			case r >= 0xDC00 && r <= 0xDFFF:
				return i
			case r >= 0xD800 && r <= 0xDBFF:
				if i+7 >= len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
					return i
				}
				if lo, ok := hex4(b, i+8); !ok || lo < 0xDC00 || lo > 0xDFFF {
					return i
				}
				i += 11
			default:
				i += 5
			}
		}
	}
	return -1
}

// hex4 reads 4 hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
