package sse_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/sse"
)

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

func TestWriteEvent(t *testing.T) {
	var out countingWriter
	w := sse.NewWriter(&out)
	steps := []struct {
		ev   sse.Event
		wire string
	}{
		{ev("", "", "hello"), "data: hello\n\n"},
		{ev("1", "", "a\nb"), "id: 1\ndata: a\ndata: b\n\n"},
		{ev("1", "add", ""), "event: add\ndata:\n\n"},
		{ev("1", "", "a\r\nb\rc\n"), "data: a\ndata: b\ndata: c\ndata:\n\n"},
		{ev("1", " t", " lead\n\n  "), "event:  t\ndata:  lead\ndata:\ndata:   \n\n"},
		{ev("", "", "x"), "id:\ndata: x\n\n"},
		{ev(" 2", "", "\x00"), "id:  2\ndata: \x00\n\n"},
		{ev("\xFF", "\xE2\x28\xA1", "\xF0\x9F\x98"), "id: \uFFFD\nevent: \uFFFD(\uFFFD\ndata: \uFFFD\n\n"},
		{ev("\uFFFD", "", "same id after replacement"), "data: same id after replacement\n\n"},
		{ev("é", "message", "ok…"), "id: é\nevent: message\ndata: ok…\n\n"},
	}
	for i, s := range steps {
		out.Reset()
		out.writes = 0
		if err := w.WriteEvent(s.ev); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := out.String(); got != s.wire {
			t.Errorf("step %d: wrote %q, want %q", i, got, s.wire)
		}
		if out.writes != 1 {
			t.Errorf("step %d: %d writes, want 1", i, out.writes)
		}
	}
}

func TestWriteEventInvalid(t *testing.T) {
	for _, e := range []sse.Event{
		ev("", "a\nb", "x"),
		ev("", "a\r", "x"),
		ev("a\nb", "", "x"),
		ev("\r", "", "x"),
		ev("a\x00", "", "x"),
	} {
		var out bytes.Buffer
		err := sse.NewWriter(&out).WriteEvent(e)
		if !errors.Is(err, sse.ErrInvalidEvent) {
			t.Errorf("WriteEvent(%q) = %v, want ErrInvalidEvent", e, err)
		}
		if out.Len() != 0 {
			t.Errorf("WriteEvent(%q) wrote %q", e, out.String())
		}
	}
}

func TestWriterSetLastEventID(t *testing.T) {
	var out bytes.Buffer
	w := sse.NewWriter(&out)
	w.SetLastEventID("7")
	for _, e := range []sse.Event{ev("7", "", "a"), ev("", "", "b")} {
		if err := w.WriteEvent(e); err != nil {
			t.Fatal(err)
		}
	}
	if want := "data: a\n\nid:\ndata: b\n\n"; out.String() != want {
		t.Errorf("wrote %q, want %q", out.String(), want)
	}
	got := parseAll(&out, "7", nil)
	want := result{Events: []sse.Event{ev("7", "", "a"), ev("", "", "b")}, Err: io.EOF}
	if !equalResults(got, want) {
		t.Errorf("read back %v, want %v", got, want)
	}
}

func TestWriteComment(t *testing.T) {
	for text, wire := range map[string]string{
		"":           ":\n",
		"hi":         ": hi\n",
		" hi":        ":  hi\n",
		"a\r\nb\n":   ": a\n: b\n:\n",
		"a\rb\n\rc":  ": a\n: b\n:\n: c\n",
		"data: evil": ": data: evil\n",
	} {
		var out countingWriter
		if err := sse.NewWriter(&out).WriteComment(text); err != nil {
			t.Fatal(err)
		}
		if out.String() != wire || out.writes != 1 {
			t.Errorf("WriteComment(%q) wrote %q in %d writes, want %q", text, out.String(), out.writes, wire)
		}
		if got := parseAll(strings.NewReader(out.String()+"data: x\n\n"), "", nil); len(got.Events) != 1 || got.Events[0].Data != "x" {
			t.Errorf("WriteComment(%q) disturbs the stream: %v", text, got)
		}
	}
}

func TestWriteRetry(t *testing.T) {
	var out bytes.Buffer
	w := sse.NewWriter(&out)
	if err := w.WriteRetry(1500); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvent(ev("1", "", "x")); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteRetry(0); err != nil {
		t.Fatal(err)
	}
	if want := "retry: 1500\nid: 1\ndata: x\n\nretry: 0\n"; out.String() != want {
		t.Errorf("wrote %q, want %q", out.String(), want)
	}
	got := parseAll(&out, "", nil)
	want := result{Events: []sse.Event{ev("1", "", "x")}, Err: io.EOF, LastID: "1", Retry: 0, HasRetry: true}
	if !equalResults(got, want) {
		t.Errorf("read back %v, want %v", got, want)
	}
	if err := w.WriteRetry(-1); !errors.Is(err, sse.ErrInvalidEvent) {
		t.Errorf("WriteRetry(-1) = %v, want ErrInvalidEvent", err)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestWriteError(t *testing.T) {
	boom := errors.New("boom")
	w := sse.NewWriter(failWriter{boom})
	if err := w.WriteEvent(ev("1", "", "x")); err != boom {
		t.Errorf("WriteEvent = %v, want %v", err, boom)
	}
	if err := w.WriteComment(""); err != boom {
		t.Errorf("WriteComment = %v, want %v", err, boom)
	}
	if err := w.WriteRetry(1); err != boom {
		t.Errorf("WriteRetry = %v, want %v", err, boom)
	}
}

// TestParsedEventsRoundTrip writes back every event the WPT and parser cases
// produce and checks a parser reads the same events.
func TestParsedEventsRoundTrip(t *testing.T) {
	var all []sse.Event
	for _, tc := range wptCases {
		for _, c := range tc.conns {
			all = append(all, c.want...)
		}
	}
	for _, tc := range parseCases {
		all = append(all, tc.want...)
	}
	var out bytes.Buffer
	w := sse.NewWriter(&out)
	for _, e := range all {
		if err := w.WriteEvent(e); err != nil {
			t.Fatalf("WriteEvent(%q): %v", e, err)
		}
	}
	got := parseAll(&out, "", nil)
	if got.Err != io.EOF || len(got.Events) != len(all) {
		t.Fatalf("read back %d events, %v; want %d", len(got.Events), got.Err, len(all))
	}
	for i := range all {
		if got.Events[i] != all[i] {
			t.Errorf("event %d: read back %q, want %q", i, got.Events[i], all[i])
		}
	}
}
