package pushproxy_test

import (
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy"
)

func TestParseJSONPointer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"/sym", []string{"sym"}, true},
		{"/a/0/b", []string{"a", "0", "b"}, true},
		{"/a~1b/m~0n", []string{"a/b", "m~n"}, true},
		{"/~01", []string{"~1"}, true}, // RFC 6901: ~01 is "~1", not "/"
		{"/", []string{""}, true},
		{"//", []string{"", ""}, true},
		{"", nil, false},
		{"sym", nil, false},
		{"/a~2", nil, false},
		{"/a~", nil, false},
		{"/\xff", nil, false},
		{"/" + strings.Repeat("a", 300), nil, false},
		{strings.Repeat("/a", 33), nil, false},
	} {
		got, err := pushproxy.ParseJSONPointer(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseJSONPointer(%q): err %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && strings.Join(got, "\x00") != strings.Join(tc.want, "\x00") {
			t.Errorf("ParseJSONPointer(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCompactionKey(t *testing.T) {
	t.Parallel()
	must := func(by string) pushproxy.Compaction {
		c, err := pushproxy.ParseCompaction(by)
		if err != nil {
			t.Fatalf("ParseCompaction(%q): %v", by, err)
		}
		return c
	}
	long := `{"sym":"` + strings.Repeat("x", 200) + `"}`
	for _, tc := range []struct {
		by, typ, data string
		key           string
		ok            bool
	}{
		{"", "tick", `{"sym":"A"}`, "", false},
		{"type", "tick", "x", "tick", true},
		{"type", "", "x", "message", true},
		{"json:/sym", "tick", `{"sym":"AAPL","p":1}`, `"AAPL"`, true},
		{"json:/sym", "tick", ` { "p" : 2 , "sym" : "AAPL" } `, `"AAPL"`, true},
		{"json:/sym", "tick", `{"sym":{"b":1,"a":[1, 2]}}`, `{"a":[1,2],"b":1}`, true},
		{"json:/sym", "tick", `{"sym":1.50}`, `1.50`, true},
		{"json:/sym", "tick", `{"sym":"<&>"}`, `"<&>"`, true},
		{"json:/sym", "tick", `{"p":1}`, "", false},        // lacks the pointer
		{"json:/sym", "tick", `AAPL 187.2`, "", false},     // not JSON
		{"json:/sym", "tick", `{"sym":"A"} {}`, "", false}, // two values
		{"json:/sym", "tick", `["sym"]`, "", false},
		{"json:/a/1", "tick", `{"a":["x","y"]}`, `"y"`, true},
		{"json:/a/01", "tick", `{"a":["x","y"]}`, "", false},
		{"json:/a/2", "tick", `{"a":["x","y"]}`, "", false},
		{"json:/a~1b", "tick", `{"a/b":true}`, `true`, true},
		{"json:/sym", "tick", long, "", true}, // a digest, checked below
	} {
		key, ok := must(tc.by).Key(tc.typ, tc.data)
		if ok != tc.ok || (tc.key != "" && key != tc.key) {
			t.Errorf("%q.Key(%q, %q) = %q, %v; want %q, %v", tc.by, tc.typ, tc.data, key, ok, tc.key, tc.ok)
		}
		if ok && (key == "" || len(key) > 128) {
			t.Errorf("%q.Key(%q, %q) = %q: empty or too long", tc.by, tc.typ, tc.data, key)
		}
	}
	if a, _ := must("json:/sym").Key("", long); !strings.HasPrefix(a, "sha256:") {
		t.Errorf("long key %q: want a digest", a)
	}
	for _, bad := range []string{"TYPE", "json:", "json:sym", "jsonpath:/a", "json:/a~", "json:/" + strings.Repeat("a", 300)} {
		if _, err := pushproxy.ParseCompaction(bad); err == nil {
			t.Errorf("ParseCompaction(%q): accepted", bad)
		}
	}
}

func FuzzParseCompaction(f *testing.F) {
	for _, s := range []string{"", "type", "json:/sym", "json:/a~1b/~0/0", "json:", "json:/~", "json://", "json:/a/" + strings.Repeat("/x", 40)} {
		f.Add(s, `{"sym":"AAPL","a":[1,{"b":null}]}`)
	}
	f.Add("json:/a/1/b", `{"a":[1,{"b":"\u0000"}]}`)
	f.Fuzz(func(t *testing.T, by, data string) {
		c, err := pushproxy.ParseCompaction(by)
		if err != nil {
			return
		}
		if c.String() != by || len(by) > pushproxy.MaxCompactByLength && by != "type" {
			t.Fatalf("parsed %q as %q", by, c.String())
		}
		key, ok := c.Key("tick", data)
		if ok != (key != "") || len(key) > 128 {
			t.Fatalf("%q.Key(%q) = %q, %v", by, data, key, ok)
		}
		if !c.Enabled() && ok {
			t.Fatalf("no compaction gave key %q", key)
		}
		if again, ok2 := c.Key("tick", data); again != key || ok2 != ok {
			t.Fatalf("Key not deterministic: %q then %q", key, again)
		}
	})
}

// FuzzParseJSONPointer checks that every accepted pointer escapes back to itself (RFC 6901
// section 3 and 4 are inverses).
func FuzzParseJSONPointer(f *testing.F) {
	for _, s := range []string{"/sym", "/a~1b/m~0n", "/~01", "/", "//", "", "sym", "/a~2", "/a~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		tokens, err := pushproxy.ParseJSONPointer(p)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, tok := range tokens {
			b.WriteString("/" + strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1"))
		}
		if b.String() != p {
			t.Fatalf("%q parsed to %q, which escapes to %q", p, tokens, b.String())
		}
	})
}
