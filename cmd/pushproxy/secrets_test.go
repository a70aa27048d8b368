package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/proxytest"
)

// TestNoSecretInLogsOrAdminDocuments runs a scripted flow with known secrets through a real
// proxy process logging JSON at debug level (API key, admin token, forwarded Authorization,
// Cookie and custom header values, URL query values, APNs and FCM push tokens, stream
// tokens, a dashboard session, failing and unreachable origins, a dead token, wrong keys and
// tokens), then reads every admin API document and /metrics, and checks that no secret
// appears in any of them or in any log line the proxy wrote.
func TestNoSecretInLogsOrAdminDocuments(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	const (
		apiKey       = "apikey-5ecret-0001"
		wrongAPIKey  = "apikey-wrong-0002"
		admin        = "admin-5ecret-0003"
		originAuth   = "Bearer origin-5ecret-0004"
		originCookie = "sid=cookie-5ecret-0005"
		originCustom = "custom-5ecret-0006"
		querySecret  = "query-5ecret-0007"
		failingQuery = "query-5ecret-0008"
		refusedQuery = "query-5ecret-0009"
		wrongToken   = "streamtoken-wrong-0010"
	)
	// A made-up FCM registration token of the real shape, marked so a leak is recognised.
	fcmToken := "fcm5ecret0011" + proxytest.FCMToken("secrets")[13:]
	apnsToken, deadAPNsToken := "5ec1"+apnsTokenA[4:], "dead"+apnsTokenA[4:]
	secrets := map[string]string{
		"API key": apiKey, "wrong API key": wrongAPIKey, "admin token": admin,
		"forwarded Authorization": "origin-5ecret-0004", "forwarded Cookie": "cookie-5ecret-0005",
		"forwarded custom header": originCustom, "URL query": querySecret, "failing origin's query": failingQuery,
		"unreachable origin's query": refusedQuery, "wrong stream token": wrongToken,
		"APNs token": apnsToken, "dead APNs token": deadAPNsToken, "FCM token": fcmToken,
	}

	fakes := startPushFakes(t)
	fakes.apns.Unregister(deadAPNsToken)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	bad := failingOrigin(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port nobody listens on
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	bin, _ := binaries(t)
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--database-url", pgtest.NewDatabase(t), "--upstream-allow", "127.0.0.0/8", "--upstream-backoff-max", "200ms", "--secret-key-file", e2eKeyFile(t),
		"--log-level", "debug", "--log-format", "json", "--api-keys", apiKey, "--admin-token", admin,
		"--wake-debounce", "100ms", "--dashboard-refresh", "100ms"}, fakes.flags...)
	px := startProcessEnv(t, "pushproxy", bin, fakes.env, args...)
	m := px.waitLine(regexp.MustCompile(`"msg":"pushproxy serving","addr":"([^"]+)","scheme":"http","admin":"([^"]+)"`))
	api := "http://" + m[1]
	px.admin = "http://" + m[2]

	send := func(method, path, body string, h map[string]string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if c := resp.Header.Get("Set-Cookie"); c != "" {
			b = append(b, "\nSet-Cookie: "+c...)
		}
		return resp.StatusCode, b
	}
	forwarded := map[string]string{"Authorization": originAuth, "Cookie": originCookie, "X-Api-Key": originCustom}
	handoff := func(upstream string, push map[string]string) e2eStream {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"url": upstream, "last_event_id": "0", "headers": forwarded, "push": push})
		code, b := send("POST", "/v1/streams", string(body), map[string]string{"Authorization": "Bearer " + apiKey, "Content-Type": "application/json"})
		if code != http.StatusCreated {
			t.Fatalf("handoff of %s: %d %s", upstream, code, b)
		}
		var r struct {
			ID           string `json:"id"`
			Token        string `json:"token"`
			EventsURL    string `json:"events_url"`
			DeviceSecret string `json:"device_secret"`
		}
		if err := json.Unmarshal(b, &r); err != nil || r.Token == "" {
			t.Fatalf("handoff answer: %v %s", err, b)
		}
		return e2eStream{r.ID, r.Token, api + r.EventsURL, r.DeviceSecret}
	}

	// Handoffs: a wrong key, then streams of an APNs device, an FCM device, a dead token, a
	// failing origin and an unreachable one, each with credentials to forward.
	if code, _ := send("POST", "/v1/streams", `{"url": "`+originURL+`/events"}`, map[string]string{"Authorization": "Bearer " + wrongAPIKey}); code != http.StatusUnauthorized {
		t.Fatalf("handoff with a wrong key: %d", code)
	}
	apns := handoff(originURL+"/events?key="+querySecret, map[string]string{"platform": "apns", "token": apnsToken})
	fcm := handoff(originURL+"/events?key="+querySecret, map[string]string{"platform": "fcm", "token": fcmToken})
	dead := handoff(originURL+"/events", map[string]string{"platform": "apns", "token": deadAPNsToken})
	failed := handoff(bad+"/events?key="+failingQuery, nil)
	unreachable := handoff(refused+"/events?key="+refusedQuery, nil)
	streams := []e2eStream{apns, fcm, dead, failed, unreachable}
	for _, s := range streams {
		secrets["stream token of "+s.ID] = s.Token
		if s.DeviceSecret != "" {
			secrets["device secret of "+s.ID] = s.DeviceSecret
		}
	}
	waitForConnected(t, api, apns, fcm, dead)
	waitFor(t, "the failing origin's stream to fail", func() bool { return streamInfo(t, api, failed).State == "failed" })

	// Events, wake-ups (one sent per platform, one dead token), a read, a wrong token.
	emit(t, originURL, 3)
	waitFor(t, "the APNs wake-up", func() bool { return streamInfo(t, api, apns).Wake.LastOutcome == "sent" })
	waitFor(t, "the FCM wake-up", func() bool { return streamInfo(t, api, fcm).Wake.LastOutcome == "sent" })
	waitFor(t, "the dead token", func() bool { return streamInfo(t, api, dead).Wake.DeadAt != nil })
	if n := fetchAll(t, apns); n != 3 {
		t.Fatalf("read %d events, want 3", n)
	}
	if code, _ := send("GET", "/v1/streams/"+apns.ID+"/events?token="+wrongToken, "", nil); code != http.StatusUnauthorized {
		t.Fatalf("events with a wrong token: %d", code)
	}
	if code, _ := send("GET", "/v1/streams/"+apns.ID, "", map[string]string{"Authorization": "Bearer " + wrongToken}); code != http.StatusUnauthorized {
		t.Fatalf("stream with a wrong token: %d", code)
	}

	// The dashboard: a wrong sign-in, a right one, the page, sign-out.
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	send("POST", "/admin/login", "token="+url.QueryEscape(wrongAPIKey), form)
	code, b := send("POST", "/admin/login", "token="+url.QueryEscape(admin), form)
	session := regexp.MustCompile(`pushproxy_admin=([^;]+)`).FindSubmatch(b)
	if code != http.StatusSeeOther || session == nil {
		t.Fatalf("sign-in: %d %s", code, b)
	}
	secrets["dashboard session"] = string(session[1])
	cookie := map[string]string{"Cookie": "pushproxy_admin=" + string(session[1])}
	if code, _ := send("GET", "/admin/", "", cookie); code != http.StatusOK {
		t.Fatalf("dashboard: %d", code)
	}

	// Every admin document, in every listing order and filter, and each stream and device.
	docs := map[string][]byte{}
	bearer := map[string]string{"Authorization": "Bearer " + admin}
	get := func(path string) []byte {
		t.Helper()
		code, b := send("GET", path, "", bearer)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, b)
		}
		docs[path] = b
		return b
	}
	for _, p := range []string{"/v1/admin/overview", "/v1/admin/totals", "/v1/admin/origins", "/v1/admin/wakeups",
		"/v1/admin/devices?state=dead", "/v1/admin/streams", "/v1/admin/streams?sort=age",
		"/v1/admin/streams?sort=backlog", "/v1/admin/streams?sort=errors", "/v1/admin/streams?state=failed",
		"/v1/admin/streams?host=127.0.0.1"} {
		get(p)
	}
	devices := map[string]bool{}
	var list struct {
		Streams []struct {
			DeviceID string `json:"device_id"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(docs["/v1/admin/streams"], &list); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Streams {
		if s.DeviceID != "" {
			devices[s.DeviceID] = true
		}
	}
	for _, s := range streams {
		get("/v1/admin/streams/" + s.ID)
		// The device's own view of its stream shows no forwarded value either.
		_, docs["/v1/streams/"+s.ID] = send("GET", "/v1/streams/"+s.ID, "", map[string]string{"Authorization": "Bearer " + s.Token})
	}
	if len(devices) != 3 {
		t.Fatalf("the admin documents name %d devices, want 3", len(devices))
	}
	for d := range devices {
		get("/v1/admin/devices/" + d)
	}
	docs["/metrics"] = []byte(metricsText(t, px))

	// Sign out, then stop the proxy so that its shutdown is logged too.
	send("POST", "/admin/logout", "", cookie)
	px.signal(syscall.SIGTERM)
	<-px.done

	logged := px.output()
	lines := strings.Split(strings.TrimSpace(logged), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("a log line is not JSON: %s", l)
		}
	}
	if len(lines) < 20 {
		t.Fatalf("only %d log lines: the flow was not logged at debug level?\n%s", len(lines), logged)
	}
	names := make([]string, 0, len(secrets))
	for name := range secrets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		secret := secrets[name]
		for _, l := range lines {
			if strings.Contains(l, secret) {
				t.Errorf("the %s appears in a log line: %s", name, l)
			}
		}
		for path, doc := range docs {
			if bytes.Contains(doc, []byte(secret)) {
				t.Errorf("the %s appears in %s: %s", name, path, doc)
			}
		}
	}
	t.Logf("checked %d secrets against %d log lines and %d documents", len(secrets), len(lines), len(docs))
}
