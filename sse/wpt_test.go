package sse_test

import (
	"io"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy/sse"
)

// The eventsource/format-* tests of web-platform-tests
// (https://github.com/web-platform-tests/wpt/tree/master/eventsource), ported
// as byte-exact (response body → events) cases.
//
// The tests load their streams from these wpt resources:
//
//   - resources/message.py?message=M&newline=N&mime=T serves body
//     M + ("\n\n", or "" if N is "none") + "\n" with Content-Type T (default
//     text/event-stream, M defaults to "data: data"). See messagePy.
//   - resources/last-event-id.py?idvalue=V serves "data: " + the request's
//     Last-Event-ID + "\n\n" when the request has one, else
//     "id: " + V + "\nretry: 200\ndata: hello\n\n" (V defaults to "…").
//   - resources/last-event-id2.py?type=N serves one of three fixed streams.
//   - resources/message2.py repeats a fixed block forever.
//
// Tests that reconnect are ported as several connections: each connection
// after the first starts with the previous parser's LastEventID, which is
// the Last-Event-ID the browser sends and the id it keeps for events.
//
// The format-mime-* tests check the Content-Type, ported as IsEventStream
// cases in TestWPTMime.

func messagePy(message string, newlineNone bool) string {
	if newlineNone {
		return message + "\n"
	}
	return message + "\n\n" + "\n"
}

// lastEventIDPy is resources/last-event-id.py.
func lastEventIDPy(lastEventIDHeader, idvalue string) string {
	if lastEventIDHeader != "" {
		return "data: " + lastEventIDHeader + "\n\n"
	}
	return "id: " + idvalue + "\nretry: 200\ndata: hello\n\n"
}

type connection struct {
	body   string
	want   []sse.Event
	lastID string // LastEventID() at the end of the connection
	retry  int64  // Retry() at the end, -1 for none
}

type wptCase struct {
	name   string // wpt file (and sub-test)
	conns  []connection
	header string // Content-Type served, when the test sets one
}

func ev(id, typ, data string) sse.Event { return sse.Event{LastEventID: id, Type: typ, Data: data} }

var longComment = strings.Repeat("x", 2*1024)

var wptCases = []wptCase{
	{
		name: "format-bom.any.js",
		conns: []connection{{
			body: messagePy("\uFEFFdata:1\n\n\uFEFFdata:2\n\ndata:3", false),
			want: []sse.Event{ev("", "", "1"), ev("", "", "3")}, retry: -1,
		}},
	},
	{
		name: "format-bom-2.any.js",
		conns: []connection{{
			body: messagePy("\uFEFF\uFEFFdata:1\n\ndata:2\n\ndata:3", false),
			want: []sse.Event{ev("", "", "2"), ev("", "", "3")}, retry: -1,
		}},
	},
	{
		name: "format-comments.any.js",
		conns: []connection{{
			body: messagePy("data:1\r:\x00\n:\r\ndata:2\n:"+longComment+"\rdata:3\n:data:fail\r:"+longComment+"\ndata:4\n", true),
			want: []sse.Event{ev("", "", "1\n2\n3\n4")}, retry: -1,
		}},
	},
	{
		// The last block has no blank line: it is discarded, and its id is
		// not the Last-Event-ID of the reconnection, which gets the same
		// response again.
		name: "format-data-before-final-empty-line.any.js",
		conns: []connection{
			{
				body: messagePy("retry:1000\ndata:test1\n\nid:test\ndata:test2", true),
				want: []sse.Event{ev("", "", "test1")}, lastID: "", retry: 1000,
			},
			{
				body: messagePy("retry:1000\ndata:test1\n\nid:test\ndata:test2", true),
				want: []sse.Event{ev("", "", "test1")}, lastID: "", retry: 1000,
			},
		},
	},
	{
		name: "format-field-data.any.js",
		conns: []connection{{
			body: messagePy("data:\n\ndata\ndata\n\ndata:test", false),
			want: []sse.Event{ev("", "", ""), ev("", "", "\n"), ev("", "", "test")}, retry: -1,
		}},
	},
	{
		name: "format-field-event.any.js",
		conns: []connection{{
			body: messagePy("event:test\ndata:x\n\ndata:x", false),
			want: []sse.Event{ev("", "test", "x"), ev("", "", "x")}, retry: -1,
		}},
	},
	{
		name: "format-field-event-empty.any.js",
		conns: []connection{{
			body: messagePy("event: \ndata:data", false),
			want: []sse.Event{ev("", "", "data")}, retry: -1,
		}},
	},
	{
		name: "format-field-id.any.js",
		conns: []connection{
			{body: lastEventIDPy("", "…"), want: []sse.Event{ev("…", "", "hello")}, lastID: "…", retry: 200},
			{body: lastEventIDPy("…", ""), want: []sse.Event{ev("…", "", "…")}, lastID: "…", retry: -1},
		},
	},
	{
		name: "format-field-id-2.any.js",
		conns: []connection{
			{body: lastEventIDPy("", "…"), want: []sse.Event{ev("…", "", "hello")}, lastID: "…", retry: 200},
			{body: lastEventIDPy("…", ""), want: []sse.Event{ev("…", "", "…")}, lastID: "…", retry: -1},
			{body: lastEventIDPy("…", ""), want: []sse.Event{ev("…", "", "…")}, lastID: "…", retry: -1},
		},
	},
	// format-field-id-3: resources/last-event-id2.py, type=1, 2 and 3 (the
	// revision that pairs with format-field-id-3.htm).
	{
		name: "format-field-id-3 persists",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\ndata:2\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("1", "", "2")}, lastID: "1", retry: -1,
		}},
	},
	{
		name: "format-field-id-3 changes and persists",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("2", "", "2"), ev("2", "", "3")}, lastID: "2", retry: -1,
		}},
	},
	{
		name: "format-field-id-3 resets",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("", "", "2"), ev("", "", "3")}, lastID: "", retry: -1,
		}},
	},
	// format-field-id-3.window.js: the later revision of last-event-id2.py.
	{
		name: "format-field-id-3.window.js#persists",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\ndata: 2\n\nid: 2\ndata:3\n\ndata:4\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("1", "", "2"), ev("2", "", "3"), ev("2", "", "4")}, lastID: "2", retry: -1,
		}},
	},
	{
		name: "format-field-id-3.window.js#resets-colon",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("", "", "2"), ev("", "", "3")}, lastID: "", retry: -1,
		}},
	},
	{
		name: "format-field-id-3.window.js#resets-no-colon",
		conns: []connection{{
			body: "id: 1\ndata: 1\n\nid\ndata:2\n\ndata:3\n\n",
			want: []sse.Event{ev("1", "", "1"), ev("", "", "2"), ev("", "", "3")}, lastID: "", retry: -1,
		}},
	},
	// format-field-id-null.window.js: an id containing U+0000 is ignored,
	// so the reconnection has no Last-Event-ID and gets "hello" again. (The
	// older format-field-id-null.htm expected lastEventId "\0\0", from
	// before the spec ignored such ids.)
	idNullCase("nul-nul", "\x00\x00"),
	idNullCase("nul-prefix", "\x00x"),
	idNullCase("nul-suffix", "x\x00"),
	idNullCase("nul-surrounded", "x\x00x"),
	idNullCase("space-nul", " \x00"),
	{
		name: "format-field-parsing.any.js",
		conns: []connection{{
			body: messagePy("data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n", true),
			want: []sse.Event{ev("", "", "\x00\n 2\n1\n3\n\n4")}, retry: -1,
		}},
	},
	{
		name: "format-field-retry.any.js",
		conns: []connection{{
			body: messagePy("retry:03000\ndata:x", false),
			want: []sse.Event{ev("", "", "x")}, retry: 3000,
		}},
	},
	{
		name: "format-field-retry.htm",
		conns: []connection{{
			body: messagePy("retry:02000\ndata:x", false),
			want: []sse.Event{ev("", "", "x")}, retry: 2000,
		}},
	},
	{
		name: "format-field-retry-bogus.any.js",
		conns: []connection{{
			body: messagePy("retry:3000\nretry:1000x\ndata:x", false),
			want: []sse.Event{ev("", "", "x")}, retry: 3000,
		}},
	},
	{
		name: "format-field-retry-bogus.htm",
		conns: []connection{{
			body: messagePy("retry:2000\nretry:1000x\ndata:x", false),
			want: []sse.Event{ev("", "", "x")}, retry: 2000,
		}},
	},
	{
		name: "format-field-retry-empty.any.js",
		conns: []connection{{
			body: messagePy("retry\ndata:test", false),
			want: []sse.Event{ev("", "", "test")}, retry: -1,
		}},
	},
	{
		name: "format-field-unknown.any.js",
		conns: []connection{{
			body: messagePy("data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test", false),
			want: []sse.Event{ev("", "", "test\n\ntest")}, retry: -1,
		}},
	},
	{
		name: "format-leading-space.any.js",
		conns: []connection{{
			body: messagePy("data:\ttest\rdata: \ndata:test", false),
			want: []sse.Event{ev("", "", "\ttest\n\ntest")}, retry: -1,
		}},
	},
	{
		name: "format-newlines.any.js",
		conns: []connection{{
			body: messagePy("data:test\r\ndata\ndata:test\r\n\r", true),
			want: []sse.Event{ev("", "", "test\n\ntest")}, retry: -1,
		}},
	},
	{
		name: "format-null-character.any.js",
		conns: []connection{{
			body: messagePy("data:\x00\n\n", false),
			want: []sse.Event{ev("", "", "\x00")}, retry: -1,
		}},
	},
	{
		name:   "format-utf-8.any.js",
		header: "text/event-stream;charset=windows-1252",
		conns: []connection{{
			body: messagePy("data:ok\xE2\x80\xA6", false),
			want: []sse.Event{ev("", "", "ok…")}, retry: -1,
		}},
	},
	{
		name:   "format-mime-trailing-semicolon.any.js",
		header: "text/event-stream;",
		conns: []connection{{
			body: messagePy("data: data", false),
			want: []sse.Event{ev("", "", "data")}, retry: -1,
		}},
	},
	{
		// Not a format-* test, but a parsing one: one iteration of
		// message2.py's endless loop.
		name: "event-data.any.js",
		conns: []connection{{
			body: "data:msg\ndata: msg\n\n:\nfalsefield:msg\n\nfalsefield:msg\nData:data\n\ndata\n\ndata:end\n\n",
			want: []sse.Event{ev("", "", "msg\nmsg"), ev("", "", ""), ev("", "", "end")}, retry: -1,
		}},
	},
}

// idNullCase is one sub-test of format-field-id-null.window.js.
func idNullCase(sub, idvalue string) wptCase {
	c := connection{body: lastEventIDPy("", idvalue), want: []sse.Event{ev("", "", "hello")}, lastID: "", retry: 200}
	return wptCase{name: "format-field-id-null.window.js#" + sub, conns: []connection{c, c}}
}

func TestWPT(t *testing.T) {
	for _, tc := range wptCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.header != "" && !sse.IsEventStream(tc.header) {
				t.Errorf("IsEventStream(%q) = false", tc.header)
			}
			lastID := ""
			for _, c := range tc.conns {
				want := result{Events: c.want, Err: io.EOF, LastID: c.lastID}
				if c.retry >= 0 {
					want.Retry, want.HasRetry = c.retry, true
				}
				checkAllReaders(t, c.body, lastID, nil, want)
				lastID = c.lastID
			}
		})
	}
}

// TestWPTMime ports format-mime-bogus.any.js, format-mime-valid-bogus.any.js
// and format-mime-trailing-semicolon.any.js (and the charset of
// format-utf-8.any.js), plus the defaults of resources/message.py.
func TestWPTMime(t *testing.T) {
	for _, tc := range []struct {
		contentType string
		want        bool
		source      string
	}{
		{"x bogus", false, "format-mime-bogus.any.js"},
		{"text/x-bogus", false, "format-mime-valid-bogus.any.js"},
		{"text/event-stream;", true, "format-mime-trailing-semicolon.any.js"},
		{"text/event-stream;charset=windows-1252", true, "format-utf-8.any.js"},
		{"text/event-stream", true, "resources/message.py default"},
	} {
		if got := sse.IsEventStream(tc.contentType); got != tc.want {
			t.Errorf("%s: IsEventStream(%q) = %v, want %v", tc.source, tc.contentType, got, tc.want)
		}
	}
}
