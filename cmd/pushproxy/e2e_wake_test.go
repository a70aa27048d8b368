package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
)

const (
	e2eKeyID  = "KEY1234567"
	e2eTeamID = "TEAM123456"
	e2eTopic  = "com.example.ticker"
)

// pushFakes are a fake APNs and a fake FCM, and the proxy flags that point at them.
type pushFakes struct {
	apns  *fakeapns.Server
	fcm   *fakefcm.Server
	flags []string
	env   []string
}

func startPushFakes(t *testing.T) *pushFakes {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "AuthKey.p8")
	pub, err := fakeapns.GenerateAuthKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	apns := fakeapns.New(fakeapns.Options{Keys: map[string]*ecdsa.PublicKey{e2eKeyID: pub}, TeamID: e2eTeamID, Topics: []string{e2eTopic}})
	if err := apns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(apns.Close)
	caFile := filepath.Join(dir, "ca.pem")
	if err := apns.CA().WriteCertFile(caFile); err != nil {
		t.Fatal(err)
	}
	fcm := fakefcm.New(fakefcm.Options{})
	if err := fcm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fcm.Close)
	credFile := filepath.Join(dir, "fcm.json")
	if err := fcm.WriteCredentials(credFile); err != nil {
		t.Fatal(err)
	}
	return &pushFakes{
		apns: apns, fcm: fcm,
		flags: []string{"--apns-key-file", keyFile, "--apns-key-id", e2eKeyID, "--apns-team-id", e2eTeamID,
			"--apns-topic", e2eTopic, "--apns-url", apns.URL(),
			"--fcm-credentials-file", credFile, "--fcm-url", fcm.URL(),
			"--wake-jitter", "1ms", "--wake-retry", "100ms"},
		// The proxy trusts the fake APNs through the system roots, as it would a gateway.
		env: []string{"SSL_CERT_FILE=" + caFile},
	}
}

type e2eStream struct {
	ID, Token, EventsURL string
	DeviceSecret         string // answered by the handoff that created the device
}

func handoffPush(t *testing.T, api, upstream string, push map[string]string) e2eStream {
	t.Helper()
	// last_event_id "0": the origin replays from its first event instead of sending a
	// snapshot, so the only events queued are the ones a test emits.
	body, _ := json.Marshal(map[string]any{"url": upstream, "last_event_id": "0", "push": push})
	resp, err := http.Post(api+"/v1/streams", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("handoff: %s: %s", resp.Status, b)
	}
	var s struct {
		ID        string `json:"id"`
		Token     string `json:"token"`
		EventsURL string `json:"events_url"`
		Secret    string `json:"device_secret"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return e2eStream{s.ID, s.Token, api + s.EventsURL, s.Secret}
}

type e2eStreamInfo struct {
	State   string `json:"state"`
	Backlog int64  `json:"backlog"`
	Wake    struct {
		LastOutcome string     `json:"last_outcome"`
		NextPushAt  *time.Time `json:"next_push_at"`
		DeadAt      *time.Time `json:"dead_at"`
		DeadReason  string     `json:"dead_reason"`
	} `json:"wake"`
}

func streamInfo(t *testing.T, api string, s e2eStream) e2eStreamInfo {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, api+"/v1/streams/"+s.ID, nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var si e2eStreamInfo
	if err := json.NewDecoder(resp.Body).Decode(&si); err != nil {
		t.Fatal(err)
	}
	return si
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// fetchAll reads a stream's whole backlog as JSON pages, as a woken device does; it returns
// how many events it read.
func fetchAll(t *testing.T, s e2eStream) int {
	t.Helper()
	n, last := 0, ""
	for {
		u := s.EventsURL + "&limit=1000"
		if last != "" {
			u += "&last_event_id=" + url.QueryEscape(last)
		}
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Events      []json.RawMessage `json:"events"`
			LastEventID string            `json:"last_event_id"`
			More        bool              `json:"more"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Events)
		last = page.LastEventID
		if !page.More {
			// Acknowledge the last page too.
			if len(page.Events) > 0 {
				continue
			}
			return n
		}
	}
}

func emit(t *testing.T, originURL string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		resp, err := http.Post(originURL+"/emit?type=update&data="+url.QueryEscape(fmt.Sprintf(`{"n":%d}`, i)), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("emit: %s", resp.Status)
		}
	}
}

const apnsTokenA = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"

// TestEndToEndWakeups: a device with two streams gets one push for a burst on both, and one
// more for an event after it read; pushes go through the real apns2 client to the fake APNs,
// which checks every header and the payload.
func TestEndToEndWakeups(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	fakes := startPushFakes(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	api, px := startProxyEnv(t, pgtest.NewDatabase(t), fakes.env, append(fakes.flags, "--wake-debounce", "1s")...)
	push := map[string]string{"platform": "apns", "token": apnsTokenA}
	s1 := handoffPush(t, api, originURL+"/events?symbols=A", push)
	push["device_secret"] = s1.DeviceSecret // the device's later handoffs present its secret
	s2 := handoffPush(t, api, originURL+"/events?symbols=B", push)
	waitFor(t, "both upstreams connected", func() bool { return streamInfo(t, api, s1).State == "held" && streamInfo(t, api, s2).State == "held" })
	waitForConnected(t, api, s1, s2)

	emit(t, originURL, 10) // every stream gets emitted events
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pushes, err := fakes.apns.WaitFor(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	p := pushes[0]
	if p.Status != http.StatusOK || p.PushType != "background" || p.Priority != "5" || p.Topic != e2eTopic || p.Token != apnsTokenA || p.KeyID != e2eKeyID {
		t.Fatalf("push %+v", p)
	}
	var payload struct {
		APS       map[string]any `json:"aps"`
		PushProxy struct {
			Streams map[string]int64 `json:"streams"`
		} `json:"pushproxy"`
	}
	if err := json.Unmarshal(p.Payload, &payload); err != nil {
		t.Fatal(err)
	}
	if payload.APS["content-available"] != float64(1) || payload.PushProxy.Streams[s1.ID]+payload.PushProxy.Streams[s2.ID] == 0 {
		t.Fatalf("payload %s", p.Payload)
	}
	if strings.Contains(string(p.Payload), "update") || strings.Contains(string(p.Payload), originURL) {
		t.Fatalf("the payload leaks event data or URLs: %s", p.Payload)
	}

	// The device reads both streams (once all 20 events are queued: the push may come before
	// the last of them when the machine is slow); then one event brings exactly one more push.
	waitFor(t, "the burst to be queued", func() bool {
		return streamInfo(t, api, s1).Backlog == 10 && streamInfo(t, api, s2).Backlog == 10
	})
	if fetchAll(t, s1)+fetchAll(t, s2) != 20 {
		t.Fatal("the device did not read the 20 queued events")
	}
	if n := len(fakes.apns.Pushes()); n != 1 {
		t.Fatalf("%d pushes for one burst", n)
	}
	emit(t, originURL, 1)
	if _, err := fakes.apns.WaitFor(ctx, 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the wake-up to be recorded", func() bool {
		si := streamInfo(t, api, s1)
		return si.Wake.LastOutcome == "sent" && si.Wake.NextPushAt == nil
	})
	if n := len(fakes.apns.Pushes()); n != 2 {
		t.Fatalf("%d pushes, want 2", n)
	}
	// While a reader is open the device is awake: events flow live and no push is sent.
	fetchAll(t, s1)
	fetchAll(t, s2)
	rctx, rcancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, s1.EventsURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	p1 := sse.NewParser(resp.Body, nil)
	emit(t, originURL, 3)
	for i := 0; i < 3; i++ {
		if _, err := p1.Next(); err != nil {
			t.Fatalf("live event %d: %v", i, err)
		}
	}
	// Wait until stream 2 has the events too (committed while the device was awake).
	waitFor(t, "stream 2 to queue the events", func() bool { return streamInfo(t, api, s2).Backlog == 3 })
	if n := len(fakes.apns.Pushes()); n != 2 {
		t.Fatalf("%d pushes while a reader was open, want still 2", n)
	}
	// The reader closes with stream 2's events undelivered: the device is asleep again and
	// gets one push for them.
	rcancel()
	resp.Body.Close()
	if _, err := fakes.apns.WaitFor(ctx, 3); err != nil {
		t.Fatal(err)
	}
	var last struct {
		PushProxy struct {
			Streams map[string]int64 `json:"streams"`
		} `json:"pushproxy"`
	}
	if err := json.Unmarshal(fakes.apns.Pushes()[2].Payload, &last); err != nil {
		t.Fatal(err)
	}
	if last.PushProxy.Streams[s2.ID] != 3 || last.PushProxy.Streams[s1.ID] != 0 {
		t.Fatalf("the push after the reader closed announces %v: want only stream 2's 3 events", last.PushProxy.Streams)
	}
	waitFor(t, "the third wake-up to be recorded", func() bool {
		si := streamInfo(t, api, s1)
		return si.Wake.LastOutcome == "sent" && si.Wake.NextPushAt == nil
	})

	// The same story in the proxy's metrics.
	waitFor(t, "the metrics", func() bool {
		m := metricsText(t, px)
		return strings.Contains(m, `pushproxy_wakeups_total{outcome="sent",platform="apns"} 3`+"\n") &&
			strings.Contains(m, "pushproxy_events_committed_total 28\n") &&
			strings.Contains(m, `pushproxy_http_requests_total{method="POST",route="/v1/streams",status="201"} 2`+"\n") &&
			strings.Contains(m, `pushproxy_streams{state="held"} 2`+"\n") &&
			strings.Contains(m, "pushproxy_upstreams_connected 2\n") &&
			strings.Contains(m, "pushproxy_stream_oldest_unread_event_age_seconds_count")
	})
	// Every request is logged with its request id; no token or query ever is.
	out := px.output()
	if !regexp.MustCompile(`msg=request request_id=\S+ method=GET route=/v1/streams/\{id\}/events status=200`).MatchString(out) {
		t.Error("no request line with its request id for the events reader")
	}
	for _, secret := range []string{s1.Token, s2.Token, "token=", apnsTokenA, s1.DeviceSecret} {
		if strings.Contains(out, secret) {
			t.Errorf("the proxy's log holds a secret (%.12s...)", secret)
		}
	}
}

// metricsText is what a proxy's operators' listener serves at /metrics.
func metricsText(t *testing.T, px *process) string {
	t.Helper()
	resp, err := http.Get(px.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitForConnected(t *testing.T, api string, ss ...e2eStream) {
	t.Helper()
	for _, s := range ss {
		waitFor(t, "the upstream to connect", func() bool {
			req, _ := http.NewRequest(http.MethodGet, api+"/v1/streams/"+s.ID, nil)
			req.Header.Set("Authorization", "Bearer "+s.Token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var si struct {
				Upstream struct {
					Connected bool `json:"connected"`
				} `json:"upstream"`
			}
			return json.NewDecoder(resp.Body).Decode(&si) == nil && si.Upstream.Connected
		})
	}
}

// TestEndToEndDeadTokensAndRetries: APNs 410 and FCM UNREGISTERED mark devices dead; APNs 429
// and FCM 503 are retried until they succeed.
func TestEndToEndDeadTokensAndRetries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	fakes := startPushFakes(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	api, px := startProxyEnv(t, pgtest.NewDatabase(t), fakes.env, append(fakes.flags, "--wake-debounce", "100ms")...)

	goneAPNs := strings.Repeat("ab", 32)
	goneFCM := proxytest.FCMToken("fcm-token-gone")
	throttledAPNs := strings.Repeat("cd", 32)
	flakyFCM := proxytest.FCMToken("fcm-token-flaky")
	fakes.apns.Unregister(goneAPNs)
	fakes.fcm.Unregister(goneFCM)
	fakes.apns.FailToken(throttledAPNs, http.StatusTooManyRequests, "TooManyRequests", 1)
	fakes.fcm.FailToken(flakyFCM, "UNAVAILABLE", 1)

	streams := []e2eStream{
		handoffPush(t, api, originURL+"/events", map[string]string{"platform": "apns", "token": goneAPNs}),
		handoffPush(t, api, originURL+"/events", map[string]string{"platform": "fcm", "token": goneFCM}),
		handoffPush(t, api, originURL+"/events", map[string]string{"platform": "apns", "token": throttledAPNs}),
		handoffPush(t, api, originURL+"/events", map[string]string{"platform": "fcm", "token": flakyFCM}),
	}
	waitForConnected(t, api, streams...)
	emit(t, originURL, 3)

	for i, want := range []string{"Unregistered", "UNREGISTERED"} {
		waitFor(t, "the dead token to be recorded", func() bool { return streamInfo(t, api, streams[i]).Wake.DeadAt != nil })
		if si := streamInfo(t, api, streams[i]); si.Wake.LastOutcome != "token-gone" || !strings.Contains(si.Wake.DeadReason, want) {
			t.Fatalf("stream %d: wake %+v, want a dead token with %q", i, si.Wake, want)
		}
	}
	for i := 2; i < 4; i++ {
		waitFor(t, "the retried push to go through", func() bool { return streamInfo(t, api, streams[i]).Wake.LastOutcome == "sent" })
	}
	var throttled []fakeapns.Push
	for _, p := range fakes.apns.Pushes() {
		if p.Token == throttledAPNs {
			throttled = append(throttled, p)
		}
	}
	if len(throttled) != 2 || throttled[0].Status != http.StatusTooManyRequests || throttled[1].Status != http.StatusOK {
		t.Fatalf("throttled token saw %+v", throttled)
	}
	var flaky []fakefcm.Message
	for _, m := range fakes.fcm.Messages() {
		if m.Token == flakyFCM {
			flaky = append(flaky, m)
		}
	}
	if len(flaky) != 2 {
		t.Fatalf("flaky FCM token saw %d messages, want the failure and the retry", len(flaky))
	}
	m := metricsText(t, px)
	for _, want := range []string{
		`pushproxy_wakeups_total{outcome="token-gone",platform="apns"} 1`,
		`pushproxy_wakeups_total{outcome="token-gone",platform="fcm"} 1`,
		`pushproxy_wakeups_total{outcome="throttled",platform="apns"} 1`,
		`pushproxy_wakeups_total{outcome="retry",platform="fcm"} 1`,
		`pushproxy_wakeups_total{outcome="sent",platform="apns"} 1`,
		`pushproxy_wakeups_total{outcome="sent",platform="fcm"} 1`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestEndToEndWakeupSurvivesSIGKILL: the proxy is killed after the events were committed and
// before the wake-up was sent; the restarted proxy sends it, once.
func TestEndToEndWakeupSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	fakes := startPushFakes(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	db := pgtest.NewDatabase(t)
	args := append(fakes.flags, "--wake-debounce", "3s", "--instance-id", "wake-a")
	api, px := startProxyEnv(t, db, fakes.env, args...)
	s := handoffPush(t, api, originURL+"/events", map[string]string{"platform": "apns", "token": apnsTokenA})
	waitForConnected(t, api, s)
	emit(t, originURL, 5)
	waitFor(t, "the events and their wake-up to be committed", func() bool {
		si := streamInfo(t, api, s)
		return si.Backlog == 5 && si.Wake.NextPushAt != nil
	})
	px.kill()
	if n := len(fakes.apns.Pushes()); n != 0 {
		t.Fatalf("%d pushes before the kill: the debounce is too short for this test", n)
	}

	api, _ = startProxyEnv(t, db, fakes.env, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := fakes.apns.WaitFor(ctx, 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the wake-up to be recorded as sent", func() bool {
		si := streamInfo(t, api, s)
		return si.Wake.LastOutcome == "sent" && si.Wake.NextPushAt == nil
	})
	if n := len(fakes.apns.Pushes()); n != 1 {
		t.Fatalf("%d pushes, want exactly 1", n)
	}
}
