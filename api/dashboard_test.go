package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/store"
)

// TestDashboardRefusesWithoutTheAdminToken checks every dashboard path and the admin API
// without the token, with a wrong one, and with a forged session cookie.
func TestDashboardRefusesWithoutTheAdminToken(t *testing.T) {
	t.Parallel()
	const admin = "dash-secret"
	_, b := setup(t, &api.Options{AdminToken: admin})
	paths := []string{"/admin/", "/admin/live", "/admin/assets/dashboard.js", "/admin/assets/dashboard.css",
		"/v1/admin/overview", "/v1/admin/origins", "/v1/admin/wakeups", "/v1/admin/devices?state=dead"}
	for _, p := range paths {
		for name, h := range map[string]http.Header{
			"none":          {},
			"wrong bearer":  {"Authorization": {"Bearer nope"}},
			"forged cookie": {"Cookie": {"pushproxy_admin=" + strings.Repeat("0", 64)}},
			"raw token":     {"Cookie": {"pushproxy_admin=" + admin}},
		} {
			resp, body := do(t, "GET", b.API.URL+p, "", h)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s with %s: %d, want 401", p, name, resp.StatusCode)
			}
			if strings.Contains(string(body), "dashboard.js") || strings.Contains(string(body), "backlog") {
				t.Errorf("%s with %s leaks the page: %s", p, name, body)
			}
		}
	}
	// The refusal of a page is the sign-in form.
	resp, body := do(t, "GET", b.API.URL+"/admin/", "", nil)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(string(body), `name="token"`) {
		t.Fatalf("refusal: %s %s", ct, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("CSP = %q", csp)
	}

	// A wrong token at sign-in sets no cookie.
	resp, body = do(t, "POST", b.API.URL+"/admin/login", "token=nope", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 || !strings.Contains(string(body), "not the admin token") {
		t.Fatalf("wrong sign-in: %d %v %s", resp.StatusCode, resp.Cookies(), body)
	}

	// The right one: a session cookie that opens the page, the assets and the feed.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.PostForm(b.API.URL+"/admin/login", url.Values{"token": {admin}})
	if err != nil {
		t.Fatal(err)
	}
	body = readAll(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "assets/dashboard.js") {
		t.Fatalf("after sign-in: %d %s", resp.StatusCode, body)
	}
	u, _ := url.Parse(b.API.URL + "/admin/")
	cookies := jar.Cookies(u)
	if len(cookies) != 1 || cookies[0].Name != "pushproxy_admin" || cookies[0].Value == admin {
		t.Fatalf("cookies: %v", cookies)
	}
	for _, p := range []string{"/admin/assets/dashboard.js", "/admin/assets/dashboard.css"} {
		resp, err := c.Get(b.API.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s with the session: %d", p, resp.StatusCode)
		}
	}
	// The cookie is for the dashboard only, not the admin API.
	resp, err = c.Get(b.API.URL + "/v1/admin/totals")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("admin API with the dashboard cookie: %d", resp.StatusCode)
	}
	// Signing out forgets the session.
	resp, err = c.PostForm(b.API.URL+"/admin/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != http.StatusUnauthorized || len(jar.Cookies(u)) != 0 {
		t.Fatalf("after sign-out: %d %v", resp.StatusCode, jar.Cookies(u))
	}
}

func TestDashboardIsOffWithoutAToken(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	for _, p := range []string{"/admin/", "/admin/live"} {
		resp, body := do(t, "GET", b.API.URL+p, "", http.Header{"Authorization": {"Bearer "}})
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "--admin-token") {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
	resp, _ := do(t, "POST", b.API.URL+"/admin/login", "token=", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("sign-in with the dashboard off: %d %v", resp.StatusCode, resp.Cookies())
	}
}

func TestDashboardSignInIsRateLimited(t *testing.T) {
	t.Parallel()
	_, b := setup(t, &api.Options{AdminToken: "secret"})
	limited := 0
	for i := 0; i < 30; i++ {
		resp, _ := do(t, "POST", b.API.URL+"/admin/login", "token=guess", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if resp.StatusCode == http.StatusTooManyRequests {
			limited++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		}
	}
	// A burst of 10, then one a second: 30 quick guesses cannot all be tried.
	if limited < 15 {
		t.Fatalf("only %d of 30 guesses were refused", limited)
	}
}

// TestDashboardLiveFeedFollowsTheBacklog reads the dashboard's feed as a client would and
// checks that it reports new events as they queue.
func TestDashboardLiveFeedFollowsTheBacklog(t *testing.T) {
	t.Parallel()
	const admin = "dash-secret"
	_, b := setup(t, &api.Options{AdminToken: admin, DashboardRefresh: 20 * time.Millisecond})
	o := newScriptOrigin(t, 0)
	h := handoff(t, b, map[string]any{"url": o.Srv.URL})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.API.URL+"/admin/live", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	p := sse.NewParser(resp.Body, nil)
	next := func() map[string]any {
		t.Helper()
		ev, err := p.Next()
		if err != nil {
			t.Fatalf("live feed: %v", err)
		}
		if ev.Type != api.OverviewEventType {
			t.Fatalf("event type %q", ev.Type)
		}
		var o map[string]any
		if err := json.Unmarshal([]byte(ev.Data), &o); err != nil {
			t.Fatal(err)
		}
		return o
	}
	backlog := func(o map[string]any) float64 { return o["totals"].(map[string]any)["backlog_events"].(float64) }
	if got := next(); backlog(got) != 0 {
		t.Fatalf("first snapshot: backlog %v", backlog(got))
	}
	o.PublishN(3)
	// The totals and the largest backlogs are the maintenance leader's gauges (none runs
	// here): computed once the events are queued.
	proxytest.Eventually(t, 10*time.Second, "the events committed", func() bool {
		st, err := b.Store.GetStream(ctx, h.ID)
		return err == nil && st.HeadSeq == 3
	})
	if err := b.Store.RefreshGauges(ctx, store.Fence{}); err != nil {
		t.Fatal(err)
	}
	for {
		got := next()
		if backlog(got) == 3 {
			largest := got["largest_backlogs"].([]any)
			if len(largest) != 1 || largest[0].(map[string]any)["id"] != h.ID {
				t.Fatalf("largest backlogs: %v", largest)
			}
			break
		}
	}
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
