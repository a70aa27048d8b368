package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/store"
)

type adminPage struct {
	Streams []struct {
		ID       string `json:"id"`
		Host     string `json:"host"`
		State    string `json:"state"`
		Backlog  int64  `json:"backlog"`
		Upstream struct {
			Status    int    `json:"status"`
			LastError string `json:"last_error"`
		} `json:"upstream"`
	} `json:"streams"`
	NextCursor string `json:"next_cursor"`
}

func TestAdminAPIListsSortsAndPages(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret"
	_, b := setup(t, &api.Options{AdminToken: admin})
	o := newScriptOrigin(t, 0)
	bad := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusNotFound) }))

	// Three streams on the scripted origin: backlogs 5, 5, 5 once published; the reader of
	// one acknowledges 3, of another 1. And a failed stream on the other origin.
	hs := []handoffResult{
		handoff(t, b, map[string]any{"url": o.Srv.URL + "/a"}),
		handoff(t, b, map[string]any{"url": o.Srv.URL + "/b"}),
		handoff(t, b, map[string]any{"url": o.Srv.URL + "/c"}),
	}
	failed := handoff(t, b, map[string]any{"url": bad.URL + "/x?secret=1"})
	o.PublishN(5)
	for _, h := range hs {
		eventually(t, 20*time.Second, "the backlog", func() bool { return getStream(t, b, h).Backlog == 5 })
	}
	fetchJSON(t, b, hs[0], "&last_event_id=3")
	fetchJSON(t, b, hs[1], "&last_event_id=1")
	eventually(t, 20*time.Second, "the failure", func() bool { return getStream(t, b, failed).State == "failed" })

	// Refused without the right token.
	if code := adminGet(t, b, "/v1/admin/streams", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code := adminGet(t, b, "/v1/admin/totals", "wrong", nil); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}

	// By backlog, one per page: 5 (c), 4 (b), 2 (a), 0 (failed).
	var got []int64
	var ids []string
	cursor := ""
	for i := 0; i < 10; i++ {
		var p adminPage
		path := "/v1/admin/streams?sort=backlog&limit=1"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if code := adminGet(t, b, path, admin, &p); code != http.StatusOK {
			t.Fatalf("page %d: %d", i, code)
		}
		for _, s := range p.Streams {
			got = append(got, s.Backlog)
			ids = append(ids, s.ID)
			if strings.Contains(s.Host, "secret") || strings.Contains(s.Host, "/") {
				t.Fatalf("host %q shows more than the host", s.Host)
			}
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	if len(got) != 4 || got[0] != 5 || got[1] != 4 || got[2] != 2 || got[3] != 0 || ids[0] != hs[2].ID || ids[1] != hs[1].ID || ids[2] != hs[0].ID {
		t.Fatalf("by backlog: %v %v", got, ids)
	}

	// Filters and the error sort.
	var p adminPage
	adminGet(t, b, "/v1/admin/streams?state=failed", admin, &p)
	if len(p.Streams) != 1 || p.Streams[0].ID != failed.ID || p.Streams[0].Upstream.Status != 404 {
		t.Fatalf("failed streams: %+v", p.Streams)
	}
	host, _ := url.Parse(bad.URL)
	p = adminPage{}
	adminGet(t, b, "/v1/admin/streams?host="+host.Hostname(), admin, &p)
	if len(p.Streams) != 4 { // every origin here is on 127.0.0.1
		t.Fatalf("host filter: %d streams", len(p.Streams))
	}
	p = adminPage{}
	adminGet(t, b, "/v1/admin/streams?sort=errors&limit=1", admin, &p)
	if len(p.Streams) != 1 || p.Streams[0].ID != failed.ID || p.Streams[0].Upstream.LastError == "" {
		t.Fatalf("by errors: %+v", p.Streams)
	}
	var byAge struct {
		Streams []struct {
			ID     string     `json:"id"`
			Oldest *time.Time `json:"oldest_event_at"`
		} `json:"streams"`
	}
	adminGet(t, b, "/v1/admin/streams?sort=age", admin, &byAge)
	if len(byAge.Streams) != 4 || byAge.Streams[3].Oldest != nil {
		t.Fatalf("by age: %+v (the stream with no backlog last)", byAge.Streams)
	}
	for i := 1; i < 3; i++ {
		if byAge.Streams[i].Oldest.Before(*byAge.Streams[i-1].Oldest) {
			t.Fatalf("by age: %+v is not oldest first", byAge.Streams)
		}
	}

	// The failing origins: one host here, with three held streams (connected) and a failure.
	var origins struct {
		Origins []struct {
			Host                       string
			Held, Disconnected, Failed int64
			LastError                  string `json:"last_error"`
		} `json:"origins"`
	}
	if code := adminGet(t, b, "/v1/admin/origins", admin, &origins); code != http.StatusOK {
		t.Fatalf("origins: %d", code)
	}
	if len(origins.Origins) != 1 || origins.Origins[0].Host != "127.0.0.1" || origins.Origins[0].Held != 3 ||
		origins.Origins[0].Disconnected != 0 || origins.Origins[0].Failed != 1 || origins.Origins[0].LastError == "" {
		t.Fatalf("origins: %+v", origins.Origins)
	}
	for _, bad := range []string{"/v1/admin/origins?limit=x", "/v1/admin/devices", "/v1/admin/devices?state=alive", "/v1/admin/wakeups?limit=1000"} {
		if code := adminGet(t, b, bad, admin, nil); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
	for _, bad := range []string{"sort=size", "state=open", "limit=0", "limit=501", "cursor=bm9wZQ", "cursor=eyJ2IjoxLCJpZCI6Im5vIn0"} {
		if code := adminGet(t, b, "/v1/admin/streams?"+bad, admin, nil); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}

	type totalsDoc struct {
		ComputedAt    *time.Time       `json:"computed_at"`
		Streams       map[string]int64 `json:"streams"`
		BacklogEvents int64            `json:"backlog_events"`
		OldestEventAt *time.Time       `json:"oldest_event_at"`
	}
	// The totals are the maintenance leader's gauges: none yet, then as it computed them.
	var totals totalsDoc
	if code := adminGet(t, b, "/v1/admin/totals", admin, &totals); code != http.StatusOK {
		t.Fatalf("totals: %d", code)
	}
	if totals.ComputedAt != nil || totals.Streams["held"] != 0 || totals.BacklogEvents != 0 {
		t.Fatalf("totals before the gauges were computed: %+v", totals)
	}
	before := time.Now()
	if err := b.Store.RefreshGauges(context.Background(), store.Fence{}); err != nil {
		t.Fatal(err)
	}
	totals = totalsDoc{}
	if code := adminGet(t, b, "/v1/admin/totals", admin, &totals); code != http.StatusOK {
		t.Fatalf("totals: %d", code)
	}
	if totals.Streams["held"] != 3 || totals.Streams["failed"] != 1 || totals.BacklogEvents != 11 || totals.OldestEventAt == nil ||
		totals.ComputedAt == nil || totals.ComputedAt.Before(before.Add(-time.Second)) || totals.OldestEventAt.After(*totals.ComputedAt) {
		t.Fatalf("totals %+v", totals)
	}
}

func TestAdminAPIIsOffWithoutAToken(t *testing.T) {
	t.Parallel()
	_, b := setup(t, nil)
	if code := adminGet(t, b, "/v1/admin/totals", "anything", nil); code != http.StatusForbidden {
		t.Fatalf("admin API without a configured token: %d, want 403", code)
	}
}

func TestAdminDeviceViewAndActions(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret"
	_, b := setup(t, &api.Options{AdminToken: admin})
	o := newScriptOrigin(t, 0)
	push := map[string]any{"platform": "apns", "token": strings.Repeat("ab", 32)}
	h1 := handoff(t, b, map[string]any{"url": o.Srv.URL + "/1", "push": push})
	push["device_secret"] = h1.DeviceSecret // the device's later handoffs present its secret
	h2 := handoff(t, b, map[string]any{"url": o.Srv.URL + "/2", "push": push})
	o.PublishN(2)
	eventually(t, 20*time.Second, "the backlog", func() bool { return getStream(t, b, h1).Backlog == 2 })

	var list struct {
		Streams []struct {
			ID       string `json:"id"`
			DeviceID string `json:"device_id"`
		} `json:"streams"`
	}
	adminGet(t, b, "/v1/admin/streams", admin, &list)
	dev := ""
	for _, s := range list.Streams {
		if s.ID == h1.ID {
			dev = s.DeviceID
		}
	}
	if dev == "" {
		t.Fatal("the listing does not name the stream's device")
	}
	post := func(method, path string) (int, []byte) {
		resp, body := do(t, method, b.API.URL+path, "", http.Header{"Authorization": {"Bearer " + admin}})
		return resp.StatusCode, body
	}
	if code, body := post("POST", "/v1/admin/devices/"+dev+"/wake"); code != http.StatusAccepted || !strings.Contains(string(body), `"wakeup_due":true`) {
		t.Fatalf("wake: %d %s", code, body)
	}
	var d struct {
		Platform string   `json:"platform"`
		Streams  []string `json:"streams"`
		Wakeups  []struct {
			State string `json:"state"`
		} `json:"wakeups"`
	}
	if code := adminGet(t, b, "/v1/admin/devices/"+dev, admin, &d); code != http.StatusOK {
		t.Fatalf("device: %d", code)
	}
	raw, _ := json.Marshal(d)
	if d.Platform != "apns" || len(d.Streams) != 2 || len(d.Wakeups) != 1 || d.Wakeups[0].State != "pending" || strings.Contains(string(raw), "abab") {
		t.Fatalf("device view %s", raw)
	}
	// A live device is not forgotten; a dead one is, and its held streams fail.
	if code, _ := post("DELETE", "/v1/admin/devices/"+dev); code != http.StatusConflict {
		t.Fatalf("forget a live device: %d, want 409", code)
	}
	if _, err := b.Store.Pool().Exec(context.Background(), `UPDATE devices SET dead_at = now(), dead_reason = 'Unregistered' WHERE id = $1`, dev); err != nil {
		t.Fatal(err)
	}
	if code, body := post("DELETE", "/v1/admin/devices/"+dev); code != http.StatusNoContent {
		t.Fatalf("forget a dead device: %d %s", code, body)
	}
	eventually(t, 20*time.Second, "the streams to fail", func() bool { return getStream(t, b, h2).State == "failed" })
	if code := adminGet(t, b, "/v1/admin/devices/"+dev, admin, nil); code != http.StatusNotFound {
		t.Fatalf("a forgotten device: %d", code)
	}

	// Closing a stream.
	h3 := handoff(t, b, map[string]any{"url": o.Srv.URL + "/3"})
	if code, body := post("POST", "/v1/admin/streams/"+h3.ID+"/close"); code != http.StatusOK || !strings.Contains(string(body), `"state":"closed"`) {
		t.Fatalf("close: %d %s", code, body)
	}
	if code, _ := post("POST", "/v1/admin/streams/00000000-0000-0000-0000-000000000000/close"); code != http.StatusNotFound {
		t.Fatalf("close an unknown stream: %d", code)
	}
}
