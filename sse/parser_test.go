package sse_test

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pushproxy/pushproxy/sse"
)

type parseCase struct {
	name      string
	in        string
	initialID string // SetLastEventID before parsing
	max       int    // MaxEventSize, 0 for the default
	want      []sse.Event
	err       error // nil means io.EOF
	lastID    string
	retry     int64 // -1 for none
}

var parseCases = []parseCase{
	// The examples of the HTML Standard, 9.2.6.
	{
		name: "spec example: test stream",
		in:   ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
		want: []sse.Event{ev("1", "", "first event"), ev("", "", "second event")}, retry: -1,
	},
	{
		name: "spec example: empty data",
		in:   "data\n\ndata\ndata\n\ndata:",
		want: []sse.Event{ev("", "", ""), ev("", "", "\n")}, retry: -1,
	},
	{
		name: "spec example: optional space",
		in:   "data:test\n\ndata: test\n\n",
		want: []sse.Event{ev("", "", "test"), ev("", "", "test")}, retry: -1,
	},
	{
		name: "spec example: stock ticker",
		in:   "data: YHOO\ndata: +2\ndata: 10\n\n",
		want: []sse.Event{ev("", "", "YHOO\n+2\n10")}, retry: -1,
	},
	{
		name: "spec example: event types",
		in:   "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
		want: []sse.Event{ev("", "add", "73857293"), ev("", "remove", "2153"), ev("", "add", "113411")}, retry: -1,
	},

	// Line endings.
	{name: "empty stream", in: "", retry: -1},
	{name: "only CRs", in: "data: a\r\rdata: b\r\r", want: []sse.Event{ev("", "", "a"), ev("", "", "b")}, retry: -1},
	{name: "CRLFs", in: "data: a\r\ndata: b\r\n\r\n", want: []sse.Event{ev("", "", "a\nb")}, retry: -1},
	{name: "CR CR LF", in: "data: a\r\r\ndata: b\n\n", want: []sse.Event{ev("", "", "a"), ev("", "", "b")}, retry: -1},
	{name: "LF CR", in: "data: a\n\rdata: b\n\n", want: []sse.Event{ev("", "", "a"), ev("", "", "b")}, retry: -1},
	{name: "final CR ends the line", in: "data: a\n\r", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "unterminated final line", in: "data: a\n\ndata: b", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "unterminated final block", in: "data: a\n\ndata: b\n", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "blank lines only", in: "\n\r\n\r\n\n", retry: -1},

	// Fields.
	{name: "colon in value", in: "data: a:b: c\n\n", want: []sse.Event{ev("", "", "a:b: c")}, retry: -1},
	{name: "only one space removed", in: "data:   a \n\n", want: []sse.Event{ev("", "", "  a ")}, retry: -1},
	{name: "tab not removed", in: "data:\ta\n\n", want: []sse.Event{ev("", "", "\ta")}, retry: -1},
	{name: "space in field name", in: "data : a\ndata:b\n\n", want: []sse.Event{ev("", "", "b")}, retry: -1},
	{name: "field names are case-sensitive", in: "DATA:a\nEvent:x\nID:1\nRetry:5\ndata:b\n\n", want: []sse.Event{ev("", "", "b")}, retry: -1},
	{name: "comment with colon only", in: ":\n:data: x\ndata: y\n\n", want: []sse.Event{ev("", "", "y")}, retry: -1},
	{name: "type reset by a blank line without data", in: "event: a\n\ndata: x\n\n", want: []sse.Event{ev("", "", "x")}, retry: -1},
	{name: "last event type wins", in: "event: a\nevent: b\ndata: x\n\n", want: []sse.Event{ev("", "b", "x")}, retry: -1},
	{name: "event type message", in: "event: message\ndata: x\n\n", want: []sse.Event{ev("", "message", "x")}, retry: -1},
	{name: "type with colon", in: "event: a:b\ndata: x\n\n", want: []sse.Event{ev("", "a:b", "x")}, retry: -1},
	{name: "id set by a block without data", in: "id: 5\n\ndata: x\n\n", want: []sse.Event{ev("5", "", "x")}, lastID: "5", retry: -1},
	{name: "id of a block without data, then EOF", in: "id: 5\n\n", lastID: "5", retry: -1},
	{name: "id of a cut-off block is not the last event ID", in: "id: 5\ndata: x\n", lastID: "", retry: -1},
	{name: "id after data in a block", in: "data: x\nid: 7\n\n", want: []sse.Event{ev("7", "", "x")}, lastID: "7", retry: -1},
	{name: "id reset by an empty value", in: "id: 1\n\nid\ndata: x\n\n", want: []sse.Event{ev("", "", "x")}, retry: -1},
	{name: "id with NUL keeps the old id", in: "id: 1\n\nid: 2\x00\ndata: x\n\n", want: []sse.Event{ev("1", "", "x")}, lastID: "1", retry: -1},
	{name: "id with spaces", in: "id:  a b \ndata: x\n\n", want: []sse.Event{ev(" a b ", "", "x")}, lastID: " a b ", retry: -1},
	{name: "initial id", in: "data: x\n\nid: 2\ndata: y\n\n", initialID: "1", want: []sse.Event{ev("1", "", "x"), ev("2", "", "y")}, lastID: "2", retry: -1},
	{name: "initial id kept without events", in: ": hi\n", initialID: "1", lastID: "1", retry: -1},
	{name: "NUL in type and data", in: "event: a\x00b\ndata: \x00\n\n", want: []sse.Event{ev("", "a\x00b", "\x00")}, retry: -1},

	// Retry.
	{name: "retry zero", in: "retry: 0\n", retry: 0},
	{name: "retry without a blank line", in: "retry: 10\ndata: x", retry: 10},
	{name: "retry leading zeros", in: "retry: 0000000000000000000000000000012\n", retry: 12},
	{name: "retry max int64", in: "retry: 9223372036854775807\n", retry: 9223372036854775807},
	{name: "retry overflow ignored", in: "retry: 5\nretry: 9223372036854775808\nretry: 99999999999999999999999\n", retry: 5},
	{name: "retry bogus values ignored", in: "retry: 5\nretry:  6\nretry: -1\nretry: +1\nretry: 1.5\nretry: 1e3\nretry: ٣\nretry: 7 \nretry\nretry:\n", retry: 5},
	{name: "retry last valid wins", in: "retry: 5\nretry: 6\n\n", retry: 6},

	// The byte order mark.
	{name: "BOM only", in: "\uFEFF", retry: -1},
	{name: "BOM stripped", in: "\uFEFFdata: a\n\n", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "BOM in data kept", in: "data: \uFEFFa\n\n", want: []sse.Event{ev("", "", "\uFEFFa")}, retry: -1},
	{name: "partial BOM is bad UTF-8", in: "\xEF\xBBdata: a\n\ndata: b\n\n", want: []sse.Event{ev("", "", "b")}, retry: -1},
	{name: "partial BOM at EOF", in: "\xEF\xBB", retry: -1},
	{name: "BOM after a blank line kept", in: "\n\uFEFFdata: a\n\ndata: b\n\n", want: []sse.Event{ev("", "", "b")}, retry: -1},

	// UTF-8.
	{name: "utf-8", in: "id: é\nevent: ü\ndata: 😀 ok…\n\n", want: []sse.Event{ev("é", "ü", "😀 ok…")}, lastID: "é", retry: -1},
	{name: "truncated 4-byte sequence", in: "data: \xF0\x9F\x98\n\n", want: []sse.Event{ev("", "", "\uFFFD")}, retry: -1},
	{name: "bad continuation", in: "data: \xE2\x28\xA1\n\n", want: []sse.Event{ev("", "", "\uFFFD(\uFFFD")}, retry: -1},
	{name: "truncated sequence before a line end", in: "data: a\xE2\x82\ndata: b\xE2\x82\r\n\n", want: []sse.Event{ev("", "", "a\uFFFD\nb\uFFFD")}, retry: -1},
	{name: "surrogate", in: "data: \xED\xA0\x80\n\n", want: []sse.Event{ev("", "", "\uFFFD\uFFFD\uFFFD")}, retry: -1},
	{name: "bad utf-8 in id and type", in: "id: \xFF\nevent: \xC3\ndata: x\n\n", want: []sse.Event{ev("\uFFFD", "\uFFFD", "x")}, lastID: "\uFFFD", retry: -1},
	{name: "bad utf-8 in field name", in: "dat\xE1:x\ndata\xFF:y\ndata: z\n\n", want: []sse.Event{ev("", "", "z")}, retry: -1},
	{name: "bad utf-8 in retry", in: "retry: 1\xFF\n", retry: -1},

	// Size limit: a line of a processed field plus the buffers may not
	// exceed MaxEventSize; skipped lines are not limited.
	{name: "limit: data line at the limit", max: 20, in: "data: " + strings.Repeat("x", 14) + "\n\n", want: []sse.Event{ev("", "", strings.Repeat("x", 14))}, retry: -1},
	{name: "limit: data line over the limit", max: 20, in: "data: " + strings.Repeat("x", 15) + "\n\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: unterminated line over the limit", max: 20, in: "data: " + strings.Repeat("x", 15), err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: unterminated line at the limit", max: 20, in: "data: " + strings.Repeat("x", 14), retry: -1},
	{name: "limit: accumulated data", max: 20, in: "data: 1234567\ndata: 1234567\n\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: accumulated data fits", max: 20, in: "data: 123456\ndata: 12\n\n", want: []sse.Event{ev("", "", "123456\n12")}, retry: -1},
	{name: "limit: events before the error", max: 20, in: "data: a\n\ndata: " + strings.Repeat("x", 30) + "\n\ndata: b\n\n", want: []sse.Event{ev("", "", "a")}, err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: buffers reset per event", max: 20, in: strings.Repeat("data: 12345678901234\n\n", 5), want: []sse.Event{ev("", "", "12345678901234"), ev("", "", "12345678901234"), ev("", "", "12345678901234"), ev("", "", "12345678901234"), ev("", "", "12345678901234")}, retry: -1},
	{name: "limit: type counts", max: 20, in: "event: 1234567890\ndata: 12345678\n\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: id counts", max: 20, in: "id: 1234567890\n\ndata: 12345678\n\n", err: sse.ErrEventTooLarge, lastID: "1234567890", retry: -1},
	{name: "limit: id line", max: 20, in: "id: " + strings.Repeat("x", 20) + "\n\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: retry line", max: 20, in: "retry: " + strings.Repeat("0", 20) + "1\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: replacement characters count", max: 20, in: "data: \xFF\xFF\xFF\xFF\xFF\xFF\xFF\n\n", err: sse.ErrEventTooLarge, retry: -1},
	{name: "limit: long comment skipped", max: 20, in: ":" + strings.Repeat("x", 100) + "\ndata: a\n\n", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "limit: long unknown field skipped", max: 20, in: "foo:" + strings.Repeat("x", 100) + "\rdata: a\r\r", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "limit: long field name skipped", max: 20, in: strings.Repeat("data", 100) + "\r\ndata: a\r\n\r\n", want: []sse.Event{ev("", "", "a")}, retry: -1},
	{name: "limit: long bad-case field skipped", max: 20, in: "Data: " + strings.Repeat("x", 100) + "\ndata: a\n\n", want: []sse.Event{ev("", "", "a")}, retry: -1},
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := result{Events: tc.want, Err: tc.err, LastID: tc.lastID}
			if want.Err == nil {
				want.Err = io.EOF
			}
			if tc.retry >= 0 {
				want.Retry, want.HasRetry = tc.retry, true
			}
			checkAllReaders(t, tc.in, tc.initialID, &sse.ParserOptions{MaxEventSize: tc.max}, want)
		})
	}
}

// TestCRLFSplitAcrossReads checks that a CR at the end of one read and an LF
// at the start of the next are one line ending, not two.
func TestCRLFSplitAcrossReads(t *testing.T) {
	for _, in := range [][]string{
		{"data: a\r", "\ndata: b\r\n\r\n"},
		{"data: a\r", "\n", "data: b\r", "\n\r", "\n"},
		{"data: a\r", "", "\ndata: b\n\n"}, // an empty read in between
	} {
		r := &chunkReader{}
		for _, c := range in {
			r.chunks = append(r.chunks, []byte(c))
		}
		got := parseAll(r, "", nil)
		want := result{Events: []sse.Event{ev("", "", "a\nb")}, Err: io.EOF}
		if !equalResults(got, want) {
			t.Errorf("%q:\n got %v\nwant %v", in, got, want)
		}
	}
}

// stepReader returns one chunk per Read, then err.
type stepReader struct {
	chunks []string
	err    error
	reads  int
}

func (s *stepReader) Read(p []byte) (int, error) {
	s.reads++
	if len(s.chunks) == 0 {
		return 0, s.err
	}
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	if s.chunks[0] == "" {
		s.chunks = s.chunks[1:]
	}
	return n, nil
}

// TestDispatchWithoutReadingAhead checks that an event is returned as soon as
// its blank line is read, also when the line ends in a CR that could be
// followed by an LF: a live stream must not stall.
func TestDispatchWithoutReadingAhead(t *testing.T) {
	blocked := errors.New("would block")
	for _, in := range []string{"data: a\n\n", "data: a\r\r", "data: a\r\n\r", "data: a\r\n\r\n"} {
		r := &stepReader{chunks: []string{in}, err: blocked}
		p := sse.NewParser(r, nil)
		e, err := p.Next()
		if err != nil || e.Data != "a" || r.reads != 1 {
			t.Errorf("%q: Next = %v, %v after %d reads; want event a after 1 read", in, e, err, r.reads)
		}
		if _, err := p.Next(); err != blocked {
			t.Errorf("%q: second Next = %v, want %v", in, err, blocked)
		}
	}
}

func TestReadErrorPassedThrough(t *testing.T) {
	boom := errors.New("boom")
	r := &stepReader{chunks: []string{"data: a\n\nid: 1\n\n", "data: b"}, err: boom}
	got := parseAll(r, "", nil)
	want := result{Events: []sse.Event{ev("", "", "a")}, Err: boom, LastID: "1"}
	if !equalResults(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

func TestNoProgress(t *testing.T) {
	if _, err := sse.NewParser(emptyReader{}, nil).Next(); err != io.ErrNoProgress {
		t.Errorf("Next = %v, want io.ErrNoProgress", err)
	}
}

func TestTypeIsReusedAcrossEvents(t *testing.T) {
	in := strings.Repeat("event: update\ndata: x\n\n", 100)
	p := sse.NewParser(strings.NewReader(in), nil)
	allocs := testing.AllocsPerRun(1, func() {
		for {
			if _, err := p.Next(); err != nil {
				break
			}
		}
	})
	// One string per event for Data ("x" is a single byte, which Go does
	// not allocate) and one for the type.
	if allocs > 5 {
		t.Errorf("%v allocations for 100 events of one type", allocs)
	}
}

// TestBufferBoundaries checks lines and characters that straddle the
// parser's read buffer boundary, and lines longer than the buffer, against
// the reference parser.
func TestBufferBoundaries(t *testing.T) {
	var inputs []string
	for shift := range 8 {
		pad := strings.Repeat("a", shift)
		// Multi-byte characters (and bad sequences) across the boundary.
		for _, ch := range []string{"é", "€", "😀", "\xF0\x9F\x98", "\xFF"} {
			inputs = append(inputs, "data: "+pad+strings.Repeat(ch, 2*sse.BufSize/len(ch))+"\n\n")
			inputs = append(inputs, strings.Repeat("data: "+pad+strings.Repeat(ch, 50)+"\n\n", 2*sse.BufSize/50))
		}
		// Line endings at the boundary.
		for _, eol := range []string{"\n", "\r", "\r\n"} {
			line := "data: " + strings.Repeat("x", sse.BufSize-8+shift)
			inputs = append(inputs, line+eol+eol+"id: 1"+eol+"data: y"+eol+eol)
			inputs = append(inputs, ": "+strings.Repeat("c", sse.BufSize-4+shift)+eol+"data: z"+eol+eol)
			inputs = append(inputs, "\uFEFF"+strings.Repeat("data: "+pad+"1234567"+eol, 3*sse.BufSize/20)+eol)
		}
		// A line several buffers long.
		inputs = append(inputs, "data: "+strings.Repeat("0123456789", sse.BufSize/2+shift)+"\r\n\r\n")
	}
	for i, in := range inputs {
		want := referenceParse([]byte(in))
		if len(want.Events) == 0 {
			t.Fatalf("input %d: no events in the reference", i)
		}
		readers := map[string]io.Reader{
			"whole": strings.NewReader(in),
			"split": chunks(in, len(in)/3, len(in)/3+sse.BufSize/2+1),
		}
		if i%7 == 0 {
			readers["onebyte"] = iotest.OneByteReader(strings.NewReader(in))
		}
		for name, r := range readers {
			if got := parseAll(r, "", nil); !equalResults(got, want) {
				t.Errorf("input %d (%d bytes), %s: got %d events %v, want %d", i, len(in), name, len(got.Events), got.Err, len(want.Events))
			}
		}
	}
}
