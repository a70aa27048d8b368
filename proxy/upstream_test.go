package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
)

// TestAllowedPortNarrowsAnAddress: --upstream-allow 127.0.0.1:<port> allows that port of
// 127.0.0.1 and no other: a handoff to another port is refused, and so is a redirect from the
// allowed port to another one.
func TestAllowedPortNarrowsAnAddress(t *testing.T) {
	t.Parallel()
	o := newScriptOrigin(t, 0)
	o.publishN(2)
	other := newScriptOrigin(t, 0) // on another port of 127.0.0.1
	other.publishN(2)
	mux := http.NewServeMux()
	mux.Handle("/events", o)
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.srv.URL+"/events", http.StatusTemporaryRedirect)
	})
	srv := newOrigin(t, mux)
	o.srv = srv
	port := mustURL(t, srv.URL).Port()
	allow, err := proxy.ParseAllowList([]string{"127.0.0.1:" + port})
	if err != nil {
		t.Fatal(err)
	}
	_, b := setup(t, &proxy.Options{Upstream: allow})

	h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
	eventually(t, 20*time.Second, "events from the allowed port", func() bool { return getStream(t, b, h).Backlog == 2 })

	raw, _ := json.Marshal(map[string]any{"url": other.srv.URL + "/events"})
	resp, body := do(t, "POST", b.api.URL+"/v1/streams", string(raw), http.Header{"Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "--upstream-allow") {
		t.Fatalf("handoff to another port of an allowed address: %d %s", resp.StatusCode, body)
	}

	h = handoff(t, b, map[string]any{"url": srv.URL + "/moved"})
	var si streamInfo
	eventually(t, 20*time.Second, "the redirect to another port to fail", func() bool { si = getStream(t, b, h); return si.State == "failed" })
	if !strings.Contains(si.StateReason, "--upstream-allow") || si.Backlog != 0 {
		t.Fatalf("stream %+v", si)
	}
	if n := len(other.requests()); n != 0 {
		t.Fatalf("the origin on the other port got %d requests", n)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
