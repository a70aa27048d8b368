package sse_test

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/pushproxy/pushproxy/sse"
)

// referenceParse is the spec's event stream interpretation written out as
// plainly as possible on the whole stream at once: decode (dropping one
// leading BOM), split into lines, process each line. It has no size limit.
func referenceParse(in []byte) result {
	in = bytes.TrimPrefix(in, []byte("\uFEFF"))
	text := whatwgDecode(in)
	var res result
	var data, typ, id string
	for {
		i := strings.IndexAny(text, "\r\n")
		if i < 0 {
			break // at the end of the file, pending data is discarded
		}
		line := text[:i]
		if strings.HasPrefix(text[i:], "\r\n") {
			text = text[i+2:]
		} else {
			text = text[i+1:]
		}
		if line == "" {
			res.LastID = id
			if data == "" {
				data, typ = "", ""
				continue
			}
			data = strings.TrimSuffix(data, "\n")
			res.Events = append(res.Events, sse.Event{LastEventID: id, Type: typ, Data: data})
			data, typ = "", ""
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch field {
		case "event":
			typ = value
		case "data":
			data += value + "\n"
		case "id":
			if !strings.Contains(value, "\x00") {
				id = value
			}
		case "retry":
			if value != "" && strings.Trim(value, "0123456789") == "" {
				if n, err := strconv.ParseInt(value, 10, 64); err == nil {
					res.Retry, res.HasRetry = n, true
				}
			}
		}
	}
	res.Err = io.EOF
	return res
}

func fuzzSeeds() []string {
	var seeds []string
	for _, tc := range wptCases {
		for _, c := range tc.conns {
			seeds = append(seeds, c.body)
		}
	}
	for _, tc := range parseCases {
		if len(tc.in) < 1024 {
			seeds = append(seeds, tc.in)
		}
	}
	for _, tc := range utf8Cases {
		seeds = append(seeds, "data: "+tc.in+"\n\n")
	}
	return append(seeds,
		"\uFEFF\uFEFF:\r\n\r\n",
		"\xEF\xBB",
		"data: "+strings.Repeat("x", 300)+"\n\n",
		":"+strings.Repeat("x", 300)+"\ndata: a\n\n",
		"id: 1\n\nid: 2\ndata: x\r\rretry: 12\r\n",
	)
}

const fuzzMax = 256

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s), uint16(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		// Without a binding size limit the parser agrees with the plain
		// reading of the spec.
		ref := referenceParse(in)
		if got := parseAll(bytes.NewReader(in), "", nil); !equalResults(got, ref) {
			t.Fatalf("parser and reference differ on %q:\n parser %v\n    ref %v", in, got, ref)
		}
		if got := parseAll(&pendingReader{r: iotest.HalfReader(bytes.NewReader(in))}, "", nil); !equalResults(got, ref) {
			t.Fatalf("parser fed with pauses and reference differ on %q:\n parser %v\n    ref %v", in, got, ref)
		}

		// With a small limit: the same result however the input is read.
		opts := &sse.ParserOptions{MaxEventSize: fuzzMax}
		whole := parseAll(bytes.NewReader(in), "", opts)
		at := int(split) % (len(in) + 1)
		for name, r := range map[string]io.Reader{
			"onebyte":           iotest.OneByteReader(bytes.NewReader(in)),
			"split@" + itoa(at): chunks(string(in), at),
			"dataerr":           iotest.DataErrReader(bytes.NewReader(in)),
		} {
			if got := parseAll(r, "", opts); !equalResults(got, whole) {
				t.Fatalf("%s differs from one read on %q:\n got %v\nwant %v", name, in, got, whole)
			}
		}
		switch whole.Err {
		case io.EOF:
			if !equalResults(whole, ref) {
				t.Fatalf("limited parser ended cleanly but differs from the reference on %q:\n got %v\nwant %v", in, whole, ref)
			}
		case sse.ErrEventTooLarge:
			if len(whole.Events) > len(ref.Events) {
				t.Fatalf("limited parser returned more events than the reference on %q", in)
			}
			for i, e := range whole.Events {
				if e != ref.Events[i] {
					t.Fatalf("limited parser event %d = %q, reference %q", i, e, ref.Events[i])
				}
			}
		default:
			t.Fatalf("unexpected error %v", whole.Err)
		}
		for _, e := range whole.Events {
			checkEvent(t, e, fuzzMax)
		}

		// Every parsed event is written back exactly.
		var buf bytes.Buffer
		w := sse.NewWriter(&buf)
		for _, e := range ref.Events {
			if err := w.WriteEvent(e); err != nil {
				t.Fatalf("WriteEvent(%q): %v", e, err)
			}
		}
		back := parseAll(&buf, "", nil)
		if back.Err != io.EOF || !eventsEqual(back.Events, ref.Events) {
			t.Fatalf("write and parse again: got %v, want %q", back, ref.Events)
		}
	})
}

func itoa(i int) string { return strconv.Itoa(i) }

func eventsEqual(a, b []sse.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkEvent checks what any parsed event must satisfy.
func checkEvent(t *testing.T, e sse.Event, max int) {
	t.Helper()
	if n := len(e.Data) + len(e.Type) + len(e.LastEventID); n > max {
		t.Fatalf("event %q has %d bytes, more than the limit %d", e, n, max)
	}
	if !utf8.ValidString(e.Data) || !utf8.ValidString(e.Type) || !utf8.ValidString(e.LastEventID) {
		t.Fatalf("event %q is not valid UTF-8", e)
	}
	if strings.Contains(e.Data, "\r") || strings.ContainsAny(e.Type, "\r\n") || strings.ContainsAny(e.LastEventID, "\r\n\x00") {
		t.Fatalf("event %q has a character no parser can produce there", e)
	}
}

// normalized is what a parser reads back for an event a Writer wrote.
func normalized(e sse.Event) sse.Event {
	data := whatwgDecode([]byte(e.Data))
	data = strings.ReplaceAll(data, "\r\n", "\n")
	data = strings.ReplaceAll(data, "\r", "\n")
	return sse.Event{
		LastEventID: whatwgDecode([]byte(e.LastEventID)),
		Type:        whatwgDecode([]byte(e.Type)),
		Data:        data,
	}
}

func FuzzRoundTrip(f *testing.F) {
	f.Add("1", "", "hello", uint8(1), int64(-1))
	f.Add("", "update", `{"a":1}`, uint8(3), int64(1000))
	f.Add("x", "t", "a\nb\r\nc\rd\n", uint8(4), int64(0))
	f.Add(" lead", " type", " data ", uint8(2), int64(5))
	f.Add("\xFF", "\xE2\x28\xA1", "\xF0\x9F\x98\n\xC0", uint8(5), int64(-1))
	f.Add("a\x00", "a\nb", "", uint8(2), int64(7))
	f.Add("\uFEFF", "\uFEFF", "\uFEFF", uint8(2), int64(9223372036854775807))
	f.Add("", "", "", uint8(0), int64(-1))
	f.Add("\r", "\n", ":", uint8(1), int64(1))
	f.Fuzz(func(t *testing.T, id, typ, data string, count uint8, retry int64) {
		var buf bytes.Buffer
		w := sse.NewWriter(&buf)
		var want []sse.Event
		ids := []string{id, id, "", id + "2"}
		for i := range int(count%8) + 1 {
			if i%2 == 1 {
				if err := w.WriteComment(data); err != nil {
					t.Fatal(err)
				}
			}
			e := sse.Event{LastEventID: ids[i%len(ids)], Type: typ, Data: data}
			err := w.WriteEvent(e)
			invalid := strings.ContainsAny(e.Type, "\r\n") || strings.ContainsAny(e.LastEventID, "\r\n\x00")
			if invalid {
				if !errors.Is(err, sse.ErrInvalidEvent) {
					t.Fatalf("WriteEvent(%q) = %v, want ErrInvalidEvent", e, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("WriteEvent(%q): %v", e, err)
			}
			want = append(want, normalized(e))
		}
		if retry >= 0 {
			if err := w.WriteRetry(retry); err != nil {
				t.Fatal(err)
			}
		}
		wire := buf.String()
		got := parseAll(strings.NewReader(wire), "", nil)
		if got.Err != io.EOF || !eventsEqual(got.Events, want) {
			t.Fatalf("wrote %q\nread back %v\nwant %q", wire, got, want)
		}
		if got.HasRetry != (retry >= 0) || (retry >= 0 && got.Retry != retry) {
			t.Fatalf("wrote retry %d, read back %d, %v", retry, got.Retry, got.HasRetry)
		}
		for _, e := range got.Events {
			checkEvent(t, e, sse.DefaultMaxEventSize)
		}
	})
}
