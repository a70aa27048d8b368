package sse_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pushproxy/pushproxy/sse"
)

// whatwgDecode is the UTF-8 decoder of the WHATWG Encoding Standard, written
// out step by step as the standard states it (without BOM handling), as an
// oracle for the parser's decoder.
func whatwgDecode(in []byte) string {
	var out strings.Builder
	var cp rune
	seen, needed := 0, 0
	lower, upper := byte(0x80), byte(0xBF)
	for i := 0; i < len(in); i++ {
		b := in[i]
		if needed == 0 {
			switch {
			case b <= 0x7F:
				out.WriteByte(b)
			case b >= 0xC2 && b <= 0xDF:
				needed, cp = 1, rune(b&0x1F)
			case b >= 0xE0 && b <= 0xEF:
				if b == 0xE0 {
					lower = 0xA0
				}
				if b == 0xED {
					upper = 0x9F
				}
				needed, cp = 2, rune(b&0xF)
			case b >= 0xF0 && b <= 0xF4:
				if b == 0xF0 {
					lower = 0x90
				}
				if b == 0xF4 {
					upper = 0x8F
				}
				needed, cp = 3, rune(b&0x7)
			default:
				out.WriteRune(utf8.RuneError)
			}
			continue
		}
		if b < lower || b > upper {
			cp, needed, seen, lower, upper = 0, 0, 0, 0x80, 0xBF
			out.WriteRune(utf8.RuneError)
			i-- // restore b to the stream
			continue
		}
		lower, upper = 0x80, 0xBF
		cp = cp<<6 | rune(b&0x3F)
		seen++
		if seen == needed {
			out.WriteRune(cp)
			cp, needed, seen = 0, 0, 0
		}
	}
	if needed != 0 {
		out.WriteRune(utf8.RuneError)
	}
	return out.String()
}

const r = "\uFFFD"

var utf8Cases = []struct{ in, want string }{
	{"", ""},
	{"plain ascii\x00\x7F", "plain ascii\x00\x7F"},
	{"é…😀\uFFFF\U0010FFFF\uD7FF\uE000", "é…😀\uFFFF\U0010FFFF\uD7FF\uE000"},
	// One U+FFFD per maximal subpart (Unicode 3.9, "U+FFFD Substitution of
	// Maximal Subparts"; WHATWG Encoding).
	{"\xF0\x9F\x98", r},
	{"\xF0\x9F\x98x", r + "x"},
	{"\xE2\x28\xA1", r + "(" + r},
	{"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a" + r + r + r + "b" + r + "c" + r + r + "d"},
	{"\xC2", r},
	{"\xC2A", r + "A"},
	{"\xE1\x80", r},
	{"\xE1\x80A", r + "A"},
	{"\xF1\x80\x80", r},
	{"\xF1\x80\x80\xF1\x80\x80", r + r},
	// Bytes that can never appear, and sequences that break at their second
	// byte because of the lead byte's narrower range.
	{"\x80", r},
	{"\xBF\x80", r + r},
	{"\xC0\xAF", r + r},         // overlong
	{"\xC1\xBF", r + r},         // overlong
	{"\xE0\x80\xAF", r + r + r}, // overlong
	{"\xE0\x9F\xBF", r + r + r}, // overlong
	{"\xED\xA0\x80", r + r + r}, // surrogate
	{"\xED\xBF\xBF", r + r + r}, // surrogate
	{"\xF0\x80\x80\xAF", r + r + r + r},
	{"\xF4\x90\x80\x80", r + r + r + r}, // above U+10FFFF
	{"\xF5\x80\x80\x80", r + r + r + r},
	{"\xF8\x88\x80\x80\x80", r + r + r + r + r},
	{"\xFE\xFF", r + r},
	{"\xEF\xBB", r}, // half a byte order mark
	{"\xE2\x82\n", r + "\n"},
}

func TestDecodeUTF8(t *testing.T) {
	for _, tc := range utf8Cases {
		if got := sse.DecodeUTF8([]byte(tc.in)); got != tc.want {
			t.Errorf("DecodeUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := whatwgDecode([]byte(tc.in)); got != tc.want {
			t.Errorf("whatwgDecode(%q) = %q, want %q (bad oracle)", tc.in, got, tc.want)
		}
	}
}

// TestDecodeInStream checks decoding inside the parser, with every way of
// splitting the stream into reads (also inside a sequence).
func TestDecodeInStream(t *testing.T) {
	for _, tc := range utf8Cases {
		if strings.ContainsAny(tc.in, "\r\n") {
			continue
		}
		for _, field := range []string{"data", "event", "id"} {
			if field == "id" && strings.Contains(tc.in, "\x00") {
				continue // such an id is ignored
			}
			in := field + ": " + tc.in + "\ndata: x\n\n"
			want := ev("", "", "x")
			switch field {
			case "data":
				want.Data = tc.want + "\nx"
			case "event":
				want.Type = tc.want
			case "id":
				want.LastEventID = tc.want
			}
			res := result{Events: []sse.Event{want}, Err: errEOF, LastID: want.LastEventID}
			checkAllReaders(t, in, "", nil, res)
		}
	}
}

func FuzzDecodeUTF8(f *testing.F) {
	for _, tc := range utf8Cases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got := sse.DecodeUTF8(in)
		if want := whatwgDecode(in); got != want {
			t.Fatalf("DecodeUTF8(%q) = %q, want %q", in, got, want)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("DecodeUTF8(%q) = %q, not valid UTF-8", in, got)
		}
	})
}
