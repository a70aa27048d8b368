package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/SherClockHolmes/webpush-go"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/wakeup/fakewebpush"
)

// webpushFake is a fake Web Push service and the proxy flags that make it a push service
// the proxy sends to, with a VAPID key of the test's.
type webpushFake struct {
	fake      *fakewebpush.Server
	publicKey string
	flags     []string
}

func startWebPushFake(t *testing.T) *webpushFake {
	t.Helper()
	fake := fakewebpush.New(fakewebpush.Options{})
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	priv, pub, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "vapid")
	if err := os.WriteFile(keyFile, []byte(priv+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &webpushFake{fake: fake, publicKey: pub, flags: []string{
		// The fake is plain http on loopback: listed as an address, with http://.
		"--webpush-endpoints", "fcm.googleapis.com," + fake.URL(),
		"--vapid-private-key-file", keyFile, "--vapid-subject", "mailto:ops@example.com",
		"--wake-jitter", "1ms", "--wake-retry", "100ms",
	}}
}

// handoffWebPush hands off a stream for a Web Push subscription; it returns the status and
// the answer.
func handoffWebPush(t *testing.T, api, upstream string, sub fakewebpush.Subscription) (int, e2eStream, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"url": upstream, "last_event_id": "0",
		"push": map[string]any{"platform": "webpush", "subscription": map[string]any{"endpoint": sub.Endpoint, "expirationTime": nil, "keys": sub.Keys}}})
	resp, err := http.Post(api+"/v1/streams", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var s struct {
		ID        string `json:"id"`
		Token     string `json:"token"`
		EventsURL string `json:"events_url"`
	}
	_ = json.Unmarshal(b, &s)
	return resp.StatusCode, e2eStream{ID: s.ID, Token: s.Token, EventsURL: api + s.EventsURL}, string(b)
}

// TestEndToEndWebPush: `pushproxy serve` wakes a sleeping Web Push device through the fake
// push service, which checks the VAPID token and decrypts the message with the
// subscription's keys: it names the stream and its pending events, with the TTL, Urgency
// and Topic headers. A subscription the push service reports gone (410) marks its device
// dead. An endpoint on a push service not listed is refused at handoff.
func TestEndToEndWebPush(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	wp := startWebPushFake(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	api, px := startProxy(t, pgtest.NewDatabase(t), append(wp.flags, "--wake-debounce", "200ms")...)

	resp, err := http.Get(api + "/v1/webpush/vapid-public-key")
	if err != nil {
		t.Fatal(err)
	}
	var key struct {
		Key string `json:"vapid_public_key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&key); err != nil || key.Key != wp.publicKey {
		t.Fatalf("vapid-public-key: %q %v, want %q", key.Key, err, wp.publicKey)
	}
	resp.Body.Close()

	// Subscriptions bound to the proxy's key, as a browser makes them with applicationServerKey.
	live, err := wp.fake.Subscribe(key.Key)
	if err != nil {
		t.Fatal(err)
	}
	gone, _ := wp.fake.Subscribe(key.Key)
	status, s, body := handoffWebPush(t, api, originURL+"/events", live)
	if status != http.StatusCreated {
		t.Fatalf("handoff: %d %s", status, body)
	}
	status, sGone, body := handoffWebPush(t, api, originURL+"/events", gone)
	if status != http.StatusCreated {
		t.Fatalf("handoff: %d %s", status, body)
	}
	elsewhere := live
	elsewhere.Endpoint = strings.Replace(live.Endpoint, "127.0.0.1", "localhost", 1)
	if status, _, body := handoffWebPush(t, api, originURL+"/events", elsewhere); status != http.StatusForbidden || strings.Contains(body, "/push/") {
		t.Fatalf("handoff to an unlisted push service: %d %s", status, body)
	}
	wp.fake.Unsubscribe(gone.Endpoint)
	waitForConnected(t, api, s, sGone)
	emit(t, originURL, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got fakewebpush.Message
	waitFor(t, "the wake-up to reach the push service", func() bool {
		for _, m := range wp.fake.Messages() {
			if m.Endpoint == live.Endpoint {
				got = m
				return true
			}
		}
		return ctx.Err() != nil
	})
	if got.Status != http.StatusCreated {
		t.Fatalf("the push service refused the wake-up: %d %s", got.Status, got.Error)
	}
	var payload struct {
		PushProxy struct {
			Streams map[string]int64 `json:"streams"`
			Total   int64            `json:"total"`
		} `json:"pushproxy"`
	}
	if err := json.Unmarshal(got.Payload, &payload); err != nil {
		t.Fatalf("payload %q: %v", got.Payload, err)
	}
	if payload.PushProxy.Streams[s.ID] != 3 || payload.PushProxy.Total != 3 || len(payload.PushProxy.Streams) != 1 {
		t.Fatalf("payload %s, want stream %s with 3 events", got.Payload, s.ID)
	}
	if got.VAPID.Subject != "mailto:ops@example.com" || got.VAPID.Key != key.Key || got.Urgency != "normal" ||
		got.Topic != "pushproxy-wakeup" || got.TTL != 3600 {
		t.Fatalf("message headers: vapid %+v urgency %q topic %q ttl %d", got.VAPID, got.Urgency, got.Topic, got.TTL)
	}
	waitFor(t, "the wake-up to be recorded as sent", func() bool { return streamInfo(t, api, s).Wake.LastOutcome == "sent" })

	waitFor(t, "the gone subscription to be recorded", func() bool { return streamInfo(t, api, sGone).Wake.DeadAt != nil })
	if si := streamInfo(t, api, sGone); si.Wake.LastOutcome != "token-gone" || !strings.Contains(si.Wake.DeadReason, "Gone") ||
		strings.Contains(si.Wake.DeadReason, "/push/") {
		t.Fatalf("gone subscription: wake %+v", si.Wake)
	}
	if n := fetchAll(t, s); n != 3 {
		t.Fatalf("the woken device fetched %d events, want 3", n)
	}
	m := metricsText(t, px)
	for _, want := range []string{
		`pushproxy_wakeups_total{outcome="sent",platform="webpush"} 1`,
		`pushproxy_wakeups_total{outcome="token-gone",platform="webpush"} 1`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The subscription's auth secret is in no log line.
	if out := px.output(); strings.Contains(out, live.Keys.Auth) || strings.Contains(out, live.Endpoint) {
		t.Errorf("the proxy's log holds the subscription's auth secret or endpoint")
	}
}

var fakeWebPushListening = regexp.MustCompile(`fake Web Push: (http://\S+)`)

// TestEndToEndWebPushThroughPushproxyFakes: the integrators' path, every part a process of
// its own: `pushproxy fakes` runs the fake push service; a subscription is made through its
// control API; `pushproxy serve`, pointed at it as the PUSHPROXY_WEBPUSH_ENDPOINTS it
// printed says, wakes the device; GET /messages shows the decrypted wake-up.
func TestEndToEndWebPushThroughPushproxyFakes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	bin, _ := binaries(t)
	fakes := startProcess(t, "pushproxy fakes", bin, "fakes", "--dir", t.TempDir(),
		"--apns-listen", "127.0.0.1:0", "--fcm-listen", "127.0.0.1:0", "--webpush-listen", "127.0.0.1:0")
	fakeURL := fakes.waitLine(fakeWebPushListening)[1]
	if !strings.Contains(fakes.waitLine(regexp.MustCompile(`PUSHPROXY_WEBPUSH_ENDPOINTS=(\S+)`))[1], fakeURL) {
		t.Fatalf("pushproxy fakes does not print the endpoints to allow:\n%s", fakes.output())
	}
	wp := startWebPushFake(t) // for its VAPID key file and flags; its own fake is not used
	flags := append([]string{}, wp.flags...)
	flags[1] = fakeURL // --webpush-endpoints
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	api, _ := startProxy(t, pgtest.NewDatabase(t), append(flags, "--wake-debounce", "100ms")...)

	resp, err := http.Post(fakeURL+"/subscriptions", "application/json", strings.NewReader(`{"application_server_key":"`+wp.publicKey+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub fakewebpush.Subscription
	err = json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("subscribe: %d %v", resp.StatusCode, err)
	}
	status, s, body := handoffWebPush(t, api, originURL+"/events", sub)
	if status != http.StatusCreated {
		t.Fatalf("handoff: %d %s", status, body)
	}
	waitForConnected(t, api, s)
	emit(t, originURL, 2)
	var got []fakewebpush.ControlMessage
	waitFor(t, "the fake to receive the wake-up", func() bool {
		resp, err := http.Get(fakeURL + "/messages")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&got) == nil && len(got) > 0
	})
	if m := got[0]; m.Status != http.StatusCreated || m.Endpoint != sub.Endpoint || !strings.Contains(m.Payload, `"`+s.ID+`":2`) {
		t.Fatalf("the fake received %+v", m)
	}
}
