package wakeup

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pushproxy/pushproxy"
)

type streamsDoc struct {
	Streams map[string]int64 `json:"streams"`
	Total   int64            `json:"total"`
	Omitted int              `json:"omitted"`
}

// checkStreamsObject checks that obj is a valid pushproxy object for pending within limit:
// the largest counts, as many as fit, the total, and the number left out.
func checkStreamsObject(t *testing.T, pending map[string]int64, obj []byte, limit int, escaped bool) {
	t.Helper()
	size := len(obj)
	if escaped {
		size = len(jsonString(string(obj))) - 2
	}
	var doc streamsDoc
	if err := json.Unmarshal(obj, &doc); err != nil {
		t.Fatalf("%s: %v", obj, err)
	}
	var sum int64
	for _, n := range pending {
		sum += n
	}
	if doc.Total != sum || len(doc.Streams)+doc.Omitted != len(pending) {
		t.Fatalf("total %d (want %d), %d streams + %d omitted (want %d)", doc.Total, sum, len(doc.Streams), doc.Omitted, len(pending))
	}
	for id, n := range doc.Streams {
		if pending[id] != n {
			t.Fatalf("stream %q: %d, want %d", id, n, pending[id])
		}
	}
	if doc.Omitted == 0 {
		if size > limit && len(pending) > 0 {
			t.Fatalf("%d bytes, limit %d", size, limit)
		}
		return
	}
	if size > limit {
		t.Fatalf("%d bytes, limit %d", size, limit)
	}
	// The streams kept are the largest, and one more would not fit.
	ids := slices.Sorted(maps.Keys(pending))
	slices.SortStableFunc(ids, func(a, b string) int { return int(pending[b] - pending[a]) })
	for i, id := range ids {
		if _, ok := doc.Streams[id]; ok != (i < len(doc.Streams)) {
			t.Fatalf("stream %q (rank %d) kept=%v with %d streams kept", id, i, ok, len(doc.Streams))
		}
	}
	next := ids[len(doc.Streams)]
	grown := maps.Clone(doc.Streams)
	grown[next] = pending[next]
	more, _ := json.Marshal(map[string]any{"streams": grown, "total": sum, "omitted": doc.Omitted - 1})
	if escaped {
		if len(jsonString(string(more)))-2 <= limit {
			t.Fatalf("stream %q would have fit", next)
		}
	} else if len(more) <= limit {
		t.Fatalf("stream %q would have fit (%d bytes)", next, len(more))
	}
}

func TestStreamsObject(t *testing.T) {
	if got := string(streamsObject(nil, 100, false)); got != `{"streams":{},"total":0}` {
		t.Errorf("no streams: %s", got)
	}
	if got := string(streamsObject(map[string]int64{"b": 1, "a": 1, "c": 7}, 4096, false)); got != `{"streams":{"c":7,"a":1,"b":1},"total":9}` {
		t.Errorf("three streams: %s", got)
	}
	if got := string(streamsObject(map[string]int64{"a": 1, "b": 2}, 10, false)); got != `{"streams":{},"total":3,"omitted":2}` {
		t.Errorf("nothing fits: %s", got)
	}
	odd := map[string]int64{}
	for i := range 300 {
		odd[fmt.Sprintf(`s<%d>"&\u2028é`, i)] = int64(i * 7 % 101)
	}
	for _, limit := range []int{60, 200, 1000, 3584, 4096} {
		for _, escaped := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d escaped=%v", limit, escaped), func(t *testing.T) {
				checkStreamsObject(t, odd, streamsObject(odd, limit, escaped), limit, escaped)
			})
		}
	}
}

func FuzzStreamsObject(f *testing.F) {
	f.Add("a,b,c", int64(3), 60, false)
	f.Add(`"q",<x>,é,`, int64(1000), 45, true)
	f.Fuzz(func(t *testing.T, ids string, n int64, limit int, escaped bool) {
		if limit < 0 || limit > 8192 || n < 0 || n > 1<<40 {
			t.Skip()
		}
		pending := map[string]int64{}
		for i, id := range strings.Split(ids, ",") {
			if !utf8.ValidString(id) {
				t.Skip()
			}
			pending[id] = n + int64(i)
		}
		if limit < len(streamsObject(nil, 0, false))+30 {
			return // too small even for the totals
		}
		checkStreamsObject(t, pending, streamsObject(pending, limit, escaped), limit, escaped)
	})
}

func TestAPNsPayloadStaysUnder4096Bytes(t *testing.T) {
	huge := strings.Repeat("Ünïcödé \x01 alert ", 500)
	for _, p := range []Push{
		{Pending: manyStreams(2000)},
		{Urgent: true, AlertText: huge, Pending: manyStreams(2000)},
		{Urgent: true, AlertText: "short", Pending: manyStreams(3)},
	} {
		b := apnsPayload(p)
		if len(b) > apnsMaxPayload {
			t.Errorf("payload of %d bytes", len(b))
		}
		var doc struct {
			Aps       map[string]any `json:"aps"`
			Pushproxy streamsDoc     `json:"pushproxy"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if doc.Aps["content-available"] != float64(1) || len(doc.Pushproxy.Streams) == 0 {
			t.Errorf("payload %.200s", b)
		}
		if alert, _ := doc.Aps["alert"].(string); p.AlertText != "" && (alert == "" || !utf8.ValidString(alert) || !strings.HasPrefix(p.AlertText, strings.TrimSuffix(alert, "…"))) {
			t.Errorf("alert %.80q", alert)
		}
	}
}

func TestTruncatedJSONString(t *testing.T) {
	for _, s := range []string{"", "short", strings.Repeat("é", 3000), strings.Repeat("\x01", 3000), strings.Repeat("a<", 2000)} {
		b := truncatedJSONString(s, 100)
		var got string
		if err := json.Unmarshal(b, &got); err != nil || len(b) > 100 || !utf8.ValidString(got) {
			t.Errorf("%.20q: %s (%d bytes), %v", s, b, len(b), err)
		}
		if len(jsonString(s)) <= 100 && got != s {
			t.Errorf("%q was cut to %q", s, got)
		}
	}
}

func TestCollapseIDAndExpiration(t *testing.T) {
	if got := collapseID("short"); got != "short" {
		t.Errorf("collapseID(short) = %q", got)
	}
	long := strings.Repeat("x", 65)
	if got := collapseID(long); len(got) != 64 || got != collapseID(long) || got == collapseID(long+"y") {
		t.Errorf("collapseID(65 bytes) = %q", got)
	}
	now := time.Unix(1_000_000, 0)
	if got := apnsExpiration(now, 0); got != 0 {
		t.Errorf("TTL 0: %d", got)
	}
	if got := apnsExpiration(now, time.Minute); got != 1_000_060 {
		t.Errorf("TTL 1m: %d", got)
	}
	for s, want := range map[string]bool{
		"123e4567-e89b-12d3-a456-426614174000": true,
		"123E4567-E89B-12D3-A456-426614174000": true,
		"123e4567e89b12d3a456426614174000":     false,
		"123e4567-e89b-12d3-a456-42661417400g": false,
		"":                                     false,
	} {
		if pushproxy.IsUUID(s) != want {
			t.Errorf("pushproxy.IsUUID(%q) = %v", s, !want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for h, want := range map[string]time.Duration{
		"":                              0,
		"30":                            30 * time.Second,
		"0":                             0,
		"-5":                            0,
		"soon":                          0,
		"Fri, 02 Jan 2026 03:05:05 GMT": time.Minute,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0,
	} {
		if got := parseRetryAfter(h, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", h, got, want)
		}
	}
}
