package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pushproxy/pushproxy"
)

// FuzzCheckJSONText: a body checkJSONText lets through decodes without U+FFFD appearing
// from nowhere (bytes that are not UTF-8, or half a surrogate pair); one it refuses holds
// such a thing.
func FuzzCheckJSONText(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `"\ud83d\ude00"`, `"\ud800"`, `"\udc00"`, `"\\ud800"`, "\"\xff\"", `"\ud83d\u0041"`,
		`{"a":["\u00e9","\ufffd"]}`, "\"\xed\xa0\x80\"", `"\ud83d\ude0`, `"\`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := checkJSONText(b)
		if err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
				t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
			}
			return
		}
		if !utf8.Valid(b) {
			t.Fatal("let bytes that are not UTF-8 through")
		}
		var v any
		if json.Unmarshal(b, &v) != nil {
			return
		}
		lit := strings.Contains(string(b), "\ufffd") || strings.Contains(strings.ToLower(string(b)), `\ufffd`)
		if !lit && strings.Contains(flatten(v), "\ufffd") {
			t.Fatalf("%q decodes with U+FFFD", b)
		}
	})
}

// flatten joins every string (and object key) of a decoded JSON value.
func flatten(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []any:
		var b strings.Builder
		for _, e := range x {
			b.WriteString(flatten(e))
		}
		return b.String()
	case map[string]any:
		var b strings.Builder
		for k, e := range x {
			b.WriteString(k + flatten(e))
		}
		return b.String()
	}
	return ""
}

// FuzzRequestText: what checkRequest lets through is text Postgres and the handlers can
// take, whatever the path, query and Last-Event-ID.
func FuzzRequestText(f *testing.F) {
	f.Add("/v1/streams/x/events", "token=abc&last_event_id=3&limit=10", "3")
	f.Add("/v1/admin/streams", "host=%00&state=%ff", "\xff")
	f.Add("/v1/streams/../x", "a=%zz;b", "a\nb")
	f.Add("//x/./y/", "last_event_id=%E2%82%AC", "€")
	f.Fuzz(func(t *testing.T, path, rawQuery, lastID string) {
		if p := strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/"); cleanPath(path) && p != "" {
			for _, seg := range strings.Split(p, "/") {
				if seg == "" || seg == "." || seg == ".." {
					t.Fatalf("clean path %q has segment %q", path, seg)
				}
			}
		}
		if err := checkQuery(rawQuery); err == nil {
			q, perr := url.ParseQuery(rawQuery)
			if perr != nil {
				t.Fatalf("accepted %q: %v", rawQuery, perr)
			}
			for k, vs := range q {
				for _, v := range append(vs, k) {
					if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
						t.Fatalf("accepted %q with value %q", rawQuery, v)
					}
				}
			}
		} else if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
			t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
		}
		r := &http.Request{URL: &url.URL{Path: path, RawQuery: rawQuery}, Header: http.Header{}}
		if lastID != "" {
			r.Header["Last-Event-Id"] = []string{lastID}
		}
		id, provided, err := lastEventID(r)
		if err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
				t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
			}
			return
		}
		if provided && (!utf8.ValidString(id) || strings.ContainsAny(id, "\r\n\x00") || len(id) > maxLastEventIDLength) {
			t.Fatalf("accepted Last-Event-ID %q", id)
		}
		if limit, err := parseLimit(r.URL.Query().Get("limit"), defaultPageLimit, maxPageLimit); err == nil && (limit < 1 || limit > maxPageLimit) {
			t.Fatalf("limit %d", limit)
		}
	})
}

// FuzzParseStreamsQuery: the admin streams listing's query either gives a filter the store
// can run, or a client error.
func FuzzParseStreamsQuery(f *testing.F) {
	f.Add("state=held&sort=age&host=origin.example:443&limit=20")
	f.Add("host=%00")
	f.Add("host=%ff&cursor=eyJ2IjoxLCJpZCI6IngifQ")
	f.Add("cursor=eyJ2IjoxLCJpZCI6IjZmMWMxYTU3LTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMCJ9&limit=500")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		fl, err := parseStreamsQuery(q)
		if err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID {
				t.Fatalf("error of kind %q", pushproxy.ErrorCode(err))
			}
			return
		}
		if !cleanText(fl.Host) || fl.Limit < 1 || fl.Limit > maxAdminPage || (fl.After != nil && !pushproxy.IsUUID(fl.After.ID)) {
			t.Fatalf("accepted %q as %+v", raw, fl)
		}
		switch fl.State {
		case "", pushproxy.StateHeld, pushproxy.StateClosed, pushproxy.StateFailed:
		default:
			t.Fatalf("state %q", fl.State)
		}
	})
}
