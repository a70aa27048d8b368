package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/browsertest"
	"github.com/pushproxy/pushproxy/internal/openapicheck"
)

type browserEvent struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data string `json:"data"`
}

// TestBrowserEventSourceReadsBacklog has a real Chromium open an EventSource on events_url
// and checks that it reports exactly the ids, types and data the origin sent.
func TestBrowserEventSourceReadsBacklog(t *testing.T) {
	t.Parallel()
	bin := browsertest.Chromium(t)
	_, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	// Tricky but legal events, each with what a browser connected to the origin reports.
	blocks := []string{
		"id: 1\ndata: plain\n\n",
		"id: 2\nevent: update\ndata: {\"price\": 1.5}\n\n",
		"id: 3\ndata: line one\ndata: line two\ndata:\ndata:  two leading spaces\n\n",
		"id: 4\nevent: add\r\ndata: crlf\r\n\r\n",
		"id: 5\ndata: unicode π 😀 and a NUL \x00 here\n\n",
		"data: no id field: inherits 5\n\n",
		"id: six with spaces\nevent: update\ndata:\n\n",
		"id\ndata: empty id resets\n\n",
		"id: 9\n: a comment\nretry: 1000\ndata: last\n\n",
	}
	want := []browserEvent{
		{"message", "1", "plain"},
		{"update", "2", `{"price": 1.5}`},
		{"message", "3", "line one\nline two\n\n two leading spaces"},
		{"add", "4", "crlf"},
		{"message", "5", "unicode π 😀 and a NUL \x00 here"},
		{"message", "5", "no id field: inherits 5"},
		{"update", "six with spaces", ""},
		{"message", "pushproxy-seq-8", "empty id resets"},
		{"message", "9", "last"},
	}
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})
	o.Publish(blocks...)
	eventually(t, 20*time.Second, "the backlog", func() bool { return getStream(t, b, h).Backlog == int64(len(blocks)) })

	results := make(chan []browserEvent, 1)
	mux := http.NewServeMux()
	mux.Handle("/", openapicheck.MustLoad(t).Middleware(t, b.HTTP.Handler()))
	mux.HandleFunc("/test/page.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><meta charset="utf-8"><script>
const got = [];
const es = new EventSource(%q);
function rec(e) {
  got.push({type: e.type, id: e.lastEventId, data: e.data});
  if (got.length === %d) {
    es.close();
    fetch("/test/result", {method: "POST", body: JSON.stringify(got)});
  }
}
es.onmessage = rec;
es.addEventListener("update", rec);
es.addEventListener("add", rec);
</script>`, h.EventsURL, len(want))
	})
	mux.HandleFunc("/test/result", func(w http.ResponseWriter, r *http.Request) {
		var got []browserEvent
		if err := json.NewDecoder(r.Body).Decode(&got); err == nil {
			select {
			case results <- got:
			default:
			}
		}
	})
	page := newOrigin(t, mux)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--remote-debugging-port=0",
		page.URL+"/test/page.html")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	var got []browserEvent
	select {
	case got = <-results:
	case <-ctx.Done():
		t.Fatalf("the browser reported nothing within 60s; its stderr:\n%s", stderr.String())
	}
	if len(got) != len(want) {
		t.Fatalf("browser got %d events, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d: browser saw %+q, want %+q", i, got[i], want[i])
		}
	}
}
