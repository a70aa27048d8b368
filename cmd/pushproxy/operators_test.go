package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pushproxy/pushproxy/internal/browsertest"
	"github.com/pushproxy/pushproxy/internal/pgtest"
)

const operatorToken = "operator-secret"

// adminJSON GETs an admin API path with the admin token and decodes the answer into out.
func adminJSON(t *testing.T, api, path string, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, api+path, nil)
	req.Header.Set("Authorization", "Bearer "+operatorToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
}

type readEvent struct {
	ID    string `json:"id"`
	Event string `json:"event"`
	Data  string `json:"data"`
}

// readAndAcknowledge reads a stream's backlog as JSON, as a woken device does, and
// acknowledges it; it returns the events.
func readAndAcknowledge(t *testing.T, s e2eStream) []readEvent {
	t.Helper()
	get := func(query string) (evs []readEvent, last string) {
		req, _ := http.NewRequest(http.MethodGet, s.EventsURL+"&limit=1000"+query, nil)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page struct {
			Events      []readEvent `json:"events"`
			LastEventID string      `json:"last_event_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Fatal(err)
		}
		return page.Events, page.LastEventID
	}
	evs, last := get("")
	if rest, _ := get("&last_event_id=" + url.QueryEscape(last)); len(rest) != 0 {
		t.Fatalf("after acknowledging %q, %d events remain", last, len(rest))
	}
	return evs
}

type overviewDoc struct {
	Totals struct {
		Streams         map[string]int64 `json:"streams"`
		Connected       int64            `json:"upstreams_connected"`
		BacklogEvents   int64            `json:"backlog_events"`
		BacklogBytes    int64            `json:"backlog_bytes"`
		Devices         int64            `json:"devices"`
		DeadDevices     int64            `json:"dead_devices"`
		PendingWakeups  int64            `json:"pending_wakeups"`
		WakeupsLastHour map[string]int64 `json:"wakeups_last_hour"`
		InstancesAlive  int64            `json:"instances_alive"`
	} `json:"totals"`
	LargestBacklogs []adminStreamDoc `json:"largest_backlogs"`
	OldestBacklogs  []adminStreamDoc `json:"oldest_backlogs"`
	FailingOrigins  []struct {
		Host                       string
		Held, Disconnected, Failed int64
		LastError                  string `json:"last_error"`
	} `json:"failing_origins"`
	DeadDevices []struct {
		ID         string `json:"id"`
		Platform   string `json:"platform"`
		DeadReason string `json:"dead_reason"`
	} `json:"dead_devices"`
	RecentWakeups []struct {
		DeviceID string `json:"device_id"`
		Platform string `json:"platform"`
		State    string `json:"state"`
		Outcome  string `json:"outcome"`
		Pending  int64  `json:"pending_events"`
	} `json:"recent_wakeups"`
}

type adminStreamDoc struct {
	ID           string `json:"id"`
	DeviceID     string `json:"device_id"`
	Host         string `json:"host"`
	State        string `json:"state"`
	Backlog      int64  `json:"backlog"`
	BacklogBytes int64  `json:"backlog_bytes"`
}

// failingOrigin serves 404 to everything on 127.0.0.2, so that it is a host of its own.
func failingOrigin(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestOperatorsSeeTheScriptedFlow runs a scripted flow through real processes (handoffs,
// events, a wake-up, a read, a dead token, a failing origin), then checks that /metrics
// reports the exact expected values, that the admin API lists and sorts the same numbers, and
// that the dashboard shows them in a real browser and follows new events live.
func TestOperatorsSeeTheScriptedFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	start := time.Now()
	fakes := startPushFakes(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	bad := failingOrigin(t)
	api, proxyProc := startProxyEnv(t, pgtest.NewDatabase(t), fakes.env, append(fakes.flags,
		"--wake-debounce", "100ms", "--admin-token", operatorToken, "--dashboard-refresh", "100ms")...)

	goneToken := strings.Repeat("ef", 32)
	fakes.apns.Unregister(goneToken)
	awake := handoffPush(t, api, originURL+"/events", map[string]string{"platform": "apns", "token": apnsTokenA})
	dead := handoffPush(t, api, originURL+"/events", map[string]string{"platform": "apns", "token": goneToken})
	silent := handoffPush(t, api, originURL+"/events", nil)
	failed := handoffPush(t, api, bad+"/events?key=secret", nil)
	waitForConnected(t, api, awake, dead, silent)
	waitFor(t, "the failing origin's stream to fail", func() bool { return streamInfo(t, api, failed).State == "failed" })

	emit(t, originURL, 5)
	waitFor(t, "the wake-up", func() bool { return streamInfo(t, api, awake).Wake.LastOutcome == "sent" })
	waitFor(t, "the dead token", func() bool { return streamInfo(t, api, dead).Wake.DeadAt != nil })
	for _, s := range []e2eStream{awake, dead, silent} {
		waitFor(t, "the backlog", func() bool { return streamInfo(t, api, s).Backlog == 5 })
	}
	// The woken device reads its backlog.
	evs := readAndAcknowledge(t, awake)
	if len(evs) != 5 {
		t.Fatalf("the woken device read %d events, want 5", len(evs))
	}
	var size int64 // the stored size of the five events: effective id, type and data
	for _, ev := range evs {
		size += int64(len(ev.ID) + len(ev.Event) + len(ev.Data))
	}
	var totals struct {
		Pending int64 `json:"pending_wakeups"`
	}
	waitFor(t, "no wake-up outstanding", func() bool {
		adminJSON(t, api, "/v1/admin/totals", &totals)
		return totals.Pending == 0
	})

	// Only on the admin listener: the public listener does not serve them.
	for _, p := range []string{"/metrics", "/debug/pprof/"} {
		if resp, err := http.Get(api + p); err != nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s on the public listener: %v %v", p, resp.Status, err)
		} else {
			resp.Body.Close()
		}
	}
	// /metrics, exactly, once the maintenance leader's gauges (recomputed every 100ms) are as
	// of now.
	wants := []string{
		`pushproxy_streams{state="held"} 3`,
		`pushproxy_streams{state="failed"} 1`,
		`pushproxy_streams{state="closed"} 0`,
		`pushproxy_upstreams_connected 3`,
		`pushproxy_backlog_events 10`,
		fmt.Sprintf(`pushproxy_backlog_bytes %d`, 2*size),
		`pushproxy_events_committed_total 15`,
		fmt.Sprintf(`pushproxy_event_bytes_committed_total %d`, 3*size),
		`pushproxy_wakeups_total{outcome="sent",platform="apns"} 1`,
		`pushproxy_wakeups_total{outcome="token-gone",platform="apns"} 1`,
		`pushproxy_push_latency_seconds_count{platform="apns"} 2`,
		`pushproxy_stream_oldest_unread_event_age_seconds_count 2`,
		`pushproxy_http_requests_total{method="POST",route="/v1/streams",status="201"} 4`,
	}
	var m string
	missing := func() []string {
		m = metricsText(t, proxyProc)
		var out []string
		for _, want := range wants {
			if !strings.Contains(m, "\n"+want+"\n") {
				out = append(out, want)
			}
		}
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range missing() {
		t.Errorf("/metrics lacks %s", want)
	}
	if regexp.MustCompile(`pushproxy_wakeups_total\{outcome="(sent|token-gone)",platform="fcm"\}`).MatchString(m) {
		t.Errorf("/metrics counts FCM wake-ups that never happened")
	}
	age := regexp.MustCompile(`\npushproxy_oldest_unread_event_age_seconds (\S+)\n`).FindStringSubmatch(m)
	if age == nil {
		t.Fatal("/metrics lacks pushproxy_oldest_unread_event_age_seconds")
	}
	if v, _ := strconv.ParseFloat(age[1], 64); v <= 0 || v > time.Since(start).Seconds() {
		t.Errorf("oldest unread event is %s s old; the test began %s ago", age[1], time.Since(start))
	}
	for _, secret := range []string{awake.Token, "secret", apnsTokenA, goneToken, awake.ID} {
		if strings.Contains(m, secret) {
			t.Errorf("/metrics shows a token, query or id (%.12s...)", secret)
		}
	}

	// The admin API: the same numbers, sorted.
	// The totals are the leader's gauges, computed every 100 ms here: they may trail the
	// /metrics checked above by one computation.
	var ov overviewDoc
	totalsRight := func() bool {
		ov = overviewDoc{}
		adminJSON(t, api, "/v1/admin/overview", &ov)
		tt := ov.Totals
		return tt.Streams["held"] == 3 && tt.Streams["failed"] == 1 && tt.Connected == 3 && tt.BacklogEvents == 10 &&
			tt.BacklogBytes == 2*size && tt.Devices == 2 && tt.DeadDevices == 1 && tt.InstancesAlive == 1 &&
			tt.WakeupsLastHour["sent"] == 1 && tt.WakeupsLastHour["token-gone"] == 1 && len(ov.LargestBacklogs) == 2
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last overview: totals %+v, largest backlogs %+v", ov.Totals, ov.LargestBacklogs)
		}
	})
	waitFor(t, "the overview's totals", totalsRight)
	var byBacklog struct {
		Streams []adminStreamDoc `json:"streams"`
	}
	adminJSON(t, api, "/v1/admin/streams?sort=backlog", &byBacklog)
	var backlogs []int64
	for _, s := range byBacklog.Streams {
		backlogs = append(backlogs, s.Backlog)
		if s.Backlog > 0 && s.BacklogBytes != size {
			t.Errorf("stream %s: backlog_bytes %d, want %d", s.ID, s.BacklogBytes, size)
		}
	}
	if !slices.Equal(backlogs, []int64{5, 5, 0, 0}) {
		t.Fatalf("by backlog: %v", backlogs)
	}
	top := []string{byBacklog.Streams[0].ID, byBacklog.Streams[1].ID}
	slices.Sort(top)
	want := []string{dead.ID, silent.ID}
	slices.Sort(want)
	if !slices.Equal(top, want) {
		t.Fatalf("largest backlogs are %v, want the dead device's and the silent stream %v", top, want)
	}
	if len(ov.LargestBacklogs) != 2 || ov.LargestBacklogs[0].ID != byBacklog.Streams[0].ID {
		t.Fatalf("overview largest backlogs: %+v", ov.LargestBacklogs)
	}
	var byErrors struct {
		Streams []adminStreamDoc `json:"streams"`
	}
	adminJSON(t, api, "/v1/admin/streams?sort=errors&limit=1", &byErrors)
	if len(byErrors.Streams) != 1 || byErrors.Streams[0].ID != failed.ID || byErrors.Streams[0].State != "failed" {
		t.Fatalf("by errors: %+v", byErrors.Streams)
	}
	if len(ov.FailingOrigins) != 1 || ov.FailingOrigins[0].Host != "127.0.0.2" || ov.FailingOrigins[0].Failed != 1 ||
		!strings.Contains(ov.FailingOrigins[0].LastError, "404") {
		t.Fatalf("failing origins: %+v", ov.FailingOrigins)
	}
	deadDevice := byBacklogDevice(byBacklog.Streams, dead.ID)
	if len(ov.DeadDevices) != 1 || ov.DeadDevices[0].ID != deadDevice || !strings.Contains(ov.DeadDevices[0].DeadReason, "Unregistered") {
		t.Fatalf("dead devices: %+v (want %s)", ov.DeadDevices, deadDevice)
	}
	var outcomes []string
	for _, w := range ov.RecentWakeups {
		outcomes = append(outcomes, w.Outcome)
	}
	slices.Sort(outcomes)
	if !slices.Equal(outcomes, []string{"sent", "token-gone"}) {
		t.Fatalf("recent wake-ups: %+v", ov.RecentWakeups)
	}

	// The dashboard, in a real browser: the same numbers, then live updates.
	b := newDashboardBrowser(t, api)
	page := b.waitFor("the dashboard's first numbers", func(p dashboardPage) bool { return p.Renders > 0 })
	checkDashboard(t, page, ov, size)

	emit(t, originURL, 2) // every held stream gets 2 more: 2 + 7 + 7 queued
	page = b.waitFor("the dashboard to show the new events", func(p dashboardPage) bool {
		return p.Totals["backlog_events"].Text == "16"
	})
	if page.Status != "live" {
		t.Errorf("status %q after the update, want live", page.Status)
	}
	if got := page.Tables["largest"]; len(got) != 3 || got[0]["backlog"] != "7" || got[1]["backlog"] != "7" || got[2]["backlog"] != "2" {
		t.Errorf("largest backlogs after the update: %+v", got)
	}
	if out := proxyProc.output(); strings.Contains(out, operatorToken) {
		t.Error("the proxy's log holds the admin token")
	}
}

func byBacklogDevice(ss []adminStreamDoc, streamID string) string {
	for _, s := range ss {
		if s.ID == streamID {
			return s.DeviceID
		}
	}
	return ""
}

// dashboardPage is what the dashboard shows, read from its DOM.
type dashboardPage struct {
	Status  string
	Renders int
	Totals  map[string]struct {
		Text  string
		Value string
	}
	Tables map[string][]map[string]string // by table id: rows of cells by column, plus "row" (the row's id)
}

const readDashboard = `(() => {
  const totals = {};
  for (const el of document.querySelectorAll("[data-total]")) totals[el.dataset.total] = {Text: el.textContent, Value: el.dataset.value || ""};
  const tables = {};
  for (const table of document.querySelectorAll("table[id]")) {
    tables[table.id] = [...table.tBodies[0].rows].map((tr) => {
      const r = {row: tr.dataset.id || ""};
      for (const td of tr.cells) if (td.dataset.col) r[td.dataset.col] = td.textContent;
      return r;
    });
  }
  const status = document.getElementById("status");
  return {Status: status ? status.dataset.state : "", Renders: Number(document.body.dataset.renders || 0), Totals: totals, Tables: tables};
})()`

type dashboardBrowser struct {
	t   *testing.T
	ctx context.Context
}

// newDashboardBrowser starts headless Chromium, opens the dashboard, is refused, and signs in
// with the admin token through the form.
func newDashboardBrowser(t *testing.T, api string) *dashboardBrowser {
	t.Helper()
	bin := browsertest.Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })

	// The first Run starts the browser, which lives as long as ctx: no timeout on it.
	if err := chromedp.Do(ctx, chromedp.Navigate(api+"/admin/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	step, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(step, chromedp.WaitVisible(chromedp.CSS("#token"))); err != nil {
		t.Fatalf("waiting for the sign-in form: %v", err)
	}
	shown, err := chromedp.Run(step, chromedp.Evaluate[bool](`document.getElementById("totals") !== null`))
	if err != nil {
		t.Fatal(err)
	}
	if shown {
		t.Fatal("the dashboard showed before signing in")
	}
	err = chromedp.Do(step,
		chromedp.SendKeys(chromedp.CSS("#token"), operatorToken),
		chromedp.Submit(chromedp.CSS("#token")),
		chromedp.WaitVisible(chromedp.CSS("#totals")),
	)
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	return &dashboardBrowser{t: t, ctx: ctx}
}

func (b *dashboardBrowser) read() dashboardPage {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	p, err := chromedp.Run(ctx, chromedp.Evaluate[dashboardPage](readDashboard))
	if err != nil {
		b.t.Fatalf("reading the dashboard: %v", err)
	}
	return p
}

func (b *dashboardBrowser) waitFor(what string, cond func(dashboardPage) bool) dashboardPage {
	b.t.Helper()
	var p dashboardPage
	waitFor(b.t, what, func() bool {
		p = b.read()
		return cond(p)
	})
	return p
}

// checkDashboard compares what the page shows with the admin API's overview.
func checkDashboard(t *testing.T, p dashboardPage, ov overviewDoc, size int64) {
	t.Helper()
	if p.Status != "live" {
		t.Errorf("status %q, want live", p.Status)
	}
	tt := ov.Totals
	for key, want := range map[string]int64{
		"streams.held": tt.Streams["held"], "streams.failed": tt.Streams["failed"], "streams.closed": tt.Streams["closed"],
		"upstreams_connected": tt.Connected, "backlog_events": tt.BacklogEvents, "devices": tt.Devices,
		"dead_devices": tt.DeadDevices, "pending_wakeups": tt.PendingWakeups, "instances_alive": tt.InstancesAlive,
	} {
		if got := p.Totals[key]; got.Text != strconv.FormatInt(want, 10) || got.Value != strconv.FormatInt(want, 10) {
			t.Errorf("dashboard %s shows %+v, the admin API %d", key, got, want)
		}
	}
	if got := p.Totals["backlog_bytes"]; got.Value != strconv.FormatInt(2*size, 10) || !strings.HasSuffix(got.Text, "B") {
		t.Errorf("dashboard backlog bytes %+v, want %d", got, 2*size)
	}
	if got := p.Totals["wakeups_last_hour"].Text; got != "sent 1 · token-gone 1" {
		t.Errorf("dashboard wake-ups last hour %q", got)
	}
	if got := p.Totals["oldest_event_at"].Text; !regexp.MustCompile(`^\d+s$`).MatchString(got) {
		t.Errorf("dashboard oldest unread %q, want an age in seconds", got)
	}
	rowsOf := func(table string) []string {
		var ids []string
		for _, r := range p.Tables[table] {
			ids = append(ids, r["row"])
		}
		return ids
	}
	var want []string
	for _, s := range ov.LargestBacklogs {
		want = append(want, s.ID)
	}
	if got := rowsOf("largest"); !slices.Equal(got, want) {
		t.Errorf("dashboard largest backlogs %v, the admin API %v", got, want)
	}
	for _, r := range p.Tables["largest"] {
		if r["backlog"] != "5" || r["host"] == "" || r["state"] != "held" {
			t.Errorf("dashboard largest backlog row %+v", r)
		}
	}
	if got := p.Tables["origins"]; len(got) != 1 || got[0]["host"] != "127.0.0.2" || got[0]["failed"] != "1" || !strings.Contains(got[0]["last_error"], "404") {
		t.Errorf("dashboard failing origins %+v", got)
	}
	if got := rowsOf("dead"); len(got) != 1 || got[0] != ov.DeadDevices[0].ID {
		t.Errorf("dashboard dead devices %v, the admin API %+v", got, ov.DeadDevices)
	}
	var outcomes []string
	for _, r := range p.Tables["wakeups"] {
		outcomes = append(outcomes, r["outcome"])
	}
	slices.Sort(outcomes)
	if !slices.Equal(outcomes, []string{"sent", "token-gone"}) {
		t.Errorf("dashboard recent wake-ups %+v", p.Tables["wakeups"])
	}
}
