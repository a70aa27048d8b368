package api_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
)

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// signIn signs in to the dashboard at base and returns the session cookie.
func signIn(t *testing.T, base, token string) *http.Cookie {
	t.Helper()
	resp, err := noRedirects.PostForm(base+"/admin/login", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	for _, ck := range resp.Cookies() {
		if ck.Name == "pushproxy_admin" && ck.Value != "" {
			return ck
		}
	}
	t.Fatalf("sign-in: %d, no session cookie", resp.StatusCode)
	return nil
}

// dashboardStatus is the status of the dashboard page at base with cookie.
func dashboardStatus(t *testing.T, base string, cookie *http.Cookie) int {
	t.Helper()
	resp, _ := do(t, "GET", base+"/admin/", "", http.Header{"Cookie": {cookie.Name + "=" + cookie.Value}})
	return resp.StatusCode
}

// TestDashboardSessionExpires signs in with a short session TTL: the cookie says how long it
// lasts, the session opens the dashboard, and once the TTL has passed it does not.
func TestDashboardSessionExpires(t *testing.T) {
	t.Parallel()
	const admin, ttl = "dash-secret", 2 * time.Second
	_, b := setup(t, &api.Options{AdminToken: admin, SessionTTL: ttl})
	signedIn := time.Now()
	ck := signIn(t, b.API.URL, admin)
	if ck.MaxAge != int(ttl/time.Second) || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookie: %+v", ck)
	}
	if got := dashboardStatus(t, b.API.URL, ck); got != http.StatusOK {
		t.Fatalf("with a fresh session: %d", got)
	}
	eventually(t, 30*time.Second, "the session to expire", func() bool {
		return dashboardStatus(t, b.API.URL, ck) == http.StatusUnauthorized
	})
	if lasted := time.Since(signedIn); lasted < ttl {
		t.Fatalf("the session ended after %s, before its TTL %s", lasted, ttl)
	}
}

// TestDashboardSignOutEndsTheSessionEverywhere runs two API servers on one database (two
// instances): a session opened on one works on the other, signing out on the other ends it on
// both, another browser's session stays open, and an instance with another admin token
// accepts none of them.
func TestDashboardSignOutEndsTheSessionEverywhere(t *testing.T) {
	t.Parallel()
	const admin = "dash-secret"
	svc, b := setup(t, &api.Options{AdminToken: admin, Heartbeat: 50 * time.Millisecond})
	other := httptest.NewServer(api.New(svc, b.Store, &api.Options{AdminToken: admin}).Handler())
	t.Cleanup(other.Close)
	rotated := httptest.NewServer(api.New(svc, b.Store, &api.Options{AdminToken: "new-secret"}).Handler())
	t.Cleanup(rotated.Close)

	first, second := signIn(t, b.API.URL, admin), signIn(t, b.API.URL, admin)
	if first.Value == second.Value {
		t.Fatal("two sign-ins got the same session id")
	}
	for _, base := range []string{b.API.URL, other.URL} {
		if got := dashboardStatus(t, base, first); got != http.StatusOK {
			t.Fatalf("session on %s: %d", base, got)
		}
	}
	if got := dashboardStatus(t, rotated.URL, first); got != http.StatusUnauthorized {
		t.Fatalf("session on an instance with another admin token: %d", got)
	}

	// Sign out on the other instance, replaying the cookie as the browser would.
	req, _ := http.NewRequest("POST", other.URL+"/admin/logout", nil)
	req.AddCookie(first)
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %d", resp.StatusCode)
	}
	for _, base := range []string{b.API.URL, other.URL} {
		if got := dashboardStatus(t, base, first); got != http.StatusUnauthorized {
			t.Fatalf("signed-out session on %s: %d", base, got)
		}
		if got := dashboardStatus(t, base, second); got != http.StatusOK {
			t.Fatalf("the other browser's session on %s: %d", base, got)
		}
	}
	// The live feed of a session ends once it is signed out, at its next heartbeat.
	third := signIn(t, b.API.URL, admin)
	lreq, _ := http.NewRequest("GET", b.API.URL+"/admin/live", nil)
	lreq.AddCookie(third)
	live, err := http.DefaultClient.Do(lreq)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Body.Close()
	if live.StatusCode != http.StatusOK {
		t.Fatalf("live feed: %d", live.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, live.Body); ended <- err }()
	req, _ = http.NewRequest("POST", b.API.URL+"/admin/logout", nil)
	req.AddCookie(third)
	if resp, err = noRedirects.Do(req); err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("live feed: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the live feed of a signed-out session goes on")
	}

	// The old fixed cookie (an HMAC of the token) means nothing now; neither does a guess.
	for _, v := range []string{"", "x", strconv.Itoa(12345), first.Value + "x"} {
		if got := dashboardStatus(t, b.API.URL, &http.Cookie{Name: "pushproxy_admin", Value: v}); got != http.StatusUnauthorized {
			t.Fatalf("cookie %q: %d", v, got)
		}
	}
}
