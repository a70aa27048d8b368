package wakeup

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/SherClockHolmes/webpush-go"

	"github.com/pushproxy/pushproxy/wakeup/fakewebpush"
)

type webpushFixture struct {
	fake    *fakewebpush.Server
	sender  *WebPush
	public  string
	sub     fakewebpush.Subscription
	private string
}

func newWebPushFixture(t *testing.T) *webpushFixture {
	t.Helper()
	f := &webpushFixture{fake: fakewebpush.New(fakewebpush.Options{})}
	if err := f.fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.fake.Close)
	var err error
	if f.private, f.public, err = webpush.GenerateVAPIDKeys(); err != nil {
		t.Fatal(err)
	}
	if f.sender, err = NewWebPush(WebPushOptions{VAPIDPublicKey: f.public, VAPIDPrivateKey: f.private, Subscriber: "ops@example.com"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.sender.Close)
	if f.sub, err = f.fake.Subscribe(f.public); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *webpushFixture) push(sub fakewebpush.Subscription, p Push) Push {
	p.Platform, p.Token = "webpush", sub.Endpoint
	p.WebPushKeys = &WebPushKeys{P256dh: sub.Keys.P256dh, Auth: sub.Keys.Auth}
	if p.Pending == nil {
		p.Pending = map[string]int64{"s": 1}
	}
	return p
}

func (f *webpushFixture) last(t *testing.T) fakewebpush.Message {
	t.Helper()
	ms := f.fake.Messages()
	if len(ms) == 0 {
		t.Fatal("the fake received nothing")
	}
	return ms[len(ms)-1]
}

func TestWebPushSendsAnEncryptedWakeup(t *testing.T) {
	f := newWebPushFixture(t)
	loc, err := f.sender.Send(context.Background(), f.push(f.sub, Push{
		CollapseID: "pushproxy-wakeup", TTL: time.Hour, Pending: map[string]int64{"s1": 3, "s2": 1},
	}))
	if err != nil {
		t.Fatal(err)
	}
	m := f.last(t)
	if m.Status != 201 || loc != m.Location || loc == "" {
		t.Fatalf("Send returned %q; the fake answered %d %q %s", loc, m.Status, m.Location, m.Error)
	}
	jsonEqual(t, m.Payload, `{"pushproxy":{"streams":{"s1":3,"s2":1},"total":4}}`)
	if m.TTL != 3600 || m.Urgency != "normal" || m.Topic != "pushproxy-wakeup" ||
		m.VAPID.Subject != "mailto:ops@example.com" || m.VAPID.Key != f.public {
		t.Errorf("the fake received %+v", m)
	}
	// One record, no padding: the header, the message and its delimiter, the tag.
	if want := 86 + len(m.Payload) + 1 + 16; len(m.Body) != want {
		t.Errorf("a body of %d bytes, want %d", len(m.Body), want)
	}

	for _, tc := range []struct {
		p                Push
		ttl              int
		urgency, topic   string
		pendingAfterward int
	}{
		{Push{Urgent: true, TTL: 1500 * time.Millisecond, CollapseID: "pushproxy-wakeup"}, 2, "high", "pushproxy-wakeup", 1},
		{Push{TTL: 0, CollapseID: "a collapse id that is not a topic, and is long"}, 0, "normal", webpushTopic("a collapse id that is not a topic, and is long"), 2},
		{Push{TTL: -time.Second}, 0, "normal", "", 3},
	} {
		if _, err := f.sender.Send(context.Background(), f.push(f.sub, tc.p)); err != nil {
			t.Fatal(err)
		}
		m := f.last(t)
		if m.Status != 201 || m.TTL != tc.ttl || m.Urgency != tc.urgency || m.Topic != tc.topic {
			t.Errorf("%+v: the fake received TTL %d, Urgency %q, Topic %q (%d %s)", tc.p, m.TTL, m.Urgency, m.Topic, m.Status, m.Error)
		}
		// A wake-up with the same Topic replaced the one held before.
		if n := len(f.fake.Pending(f.sub.Endpoint)); n != tc.pendingAfterward {
			t.Errorf("%+v: %d messages held, want %d", tc.p, n, tc.pendingAfterward)
		}
	}
	if topic := webpushTopic("a collapse id that is not a topic, and is long"); len(topic) != 32 || strings.Trim(topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
		t.Errorf("hashed topic %q", topic)
	}
}

func TestWebPushManyStreamsFit(t *testing.T) {
	f := newWebPushFixture(t)
	if _, err := f.sender.Send(context.Background(), f.push(f.sub, Push{Pending: manyStreams(500)})); err != nil {
		t.Fatal(err)
	}
	m := f.last(t)
	if m.Status != 201 || len(m.Body) > fakewebpush.MaxBody || !bytes.Contains(m.Payload, []byte(`"omitted":`)) {
		t.Errorf("%d (%s): %d bytes of body, payload %.80s", m.Status, m.Error, len(m.Body), m.Payload)
	}
}

func TestWebPushErrors(t *testing.T) {
	f := newWebPushFixture(t)
	gone, _ := f.fake.Subscribe(f.public)
	f.fake.Unsubscribe(gone.Endpoint)
	otherKey, _ := f.fake.Subscribe(base64.RawURLEncoding.EncodeToString(make([]byte, 65)))
	unknown := f.sub
	unknown.Endpoint = f.fake.URL() + "/push/unknown"
	for _, tc := range []struct {
		name       string
		sub        fakewebpush.Subscription
		inject     func()
		kind       string
		status     int
		retryAfter time.Duration
	}{
		{"unsubscribed", gone, func() {}, KindTokenGone, 410, 0},
		{"unknown", unknown, func() {}, KindTokenGone, 404, 0},
		{"429", f.sub, func() { f.fake.FailNext(1, 429, 30*time.Second) }, KindThrottled, 429, 30 * time.Second},
		{"503 with Retry-After", f.sub, func() { f.fake.FailNext(1, 503, 10*time.Second) }, KindRetry, 503, 10 * time.Second},
		{"500", f.sub, func() { f.fake.FailNext(1, 500, 0) }, KindRetry, 500, 0},
		{"another applicationServerKey", otherKey, func() {}, KindCredentials, 403, 0},
		{"413", f.sub, func() { f.fake.FailNext(1, 413, 0) }, KindInvalid, 413, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.fake.Reset()
			tc.inject()
			_, err := f.sender.Send(context.Background(), f.push(tc.sub, Push{}))
			se := sendErr(t, err, tc.kind)
			if se.Status != tc.status || se.RetryAfter != tc.retryAfter {
				t.Errorf("got %+v, want status %d retry after %v", se, tc.status, tc.retryAfter)
			}
			if n := len(f.fake.Messages()); n != 1 {
				t.Errorf("the fake received %d requests, want 1", n)
			}
		})
	}
	f.fake.Reset()
	for name, p := range map[string]Push{
		"no keys":          {Token: f.sub.Endpoint, Pending: map[string]int64{"s": 1}},
		"p256dh not a key": f.push(fakewebpush.Subscription{Endpoint: f.sub.Endpoint, Keys: fakewebpush.Keys{P256dh: "AAAA", Auth: f.sub.Keys.Auth}}, Push{}),
		"auth too short":   f.push(fakewebpush.Subscription{Endpoint: f.sub.Endpoint, Keys: fakewebpush.Keys{P256dh: f.sub.Keys.P256dh, Auth: "AAAA"}}, Push{}),
		"endpoint not URL": f.push(fakewebpush.Subscription{Endpoint: "mailto:x@y", Keys: f.sub.Keys}, Push{}),
	} {
		_, err := f.sender.Send(context.Background(), p)
		sendErr(t, err, KindTokenGone)
		if n := len(f.fake.Messages()); n != 0 {
			t.Errorf("%s: %d requests sent", name, n)
		}
	}
}

func TestWebPushErrorsHoldNoEndpoint(t *testing.T) {
	f := newWebPushFixture(t)
	const path = "/push/SECRET-subscription-id_0123456789"
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		http.Error(w, "no subscription at "+strings.ToUpper("http://"+r.Host+r.URL.Path), http.StatusNotFound)
	}))
	defer echo.Close()
	for _, tc := range []struct {
		name, base, kind string
	}{
		{"404 quoting the endpoint", echo.URL, KindTokenGone},
		{"refused", "http://" + closedAddr(t), KindRetry},
		{"hung up", "http://" + hangUpAddr(t), KindRetry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := tc.base + path
			_, err := f.sender.Send(context.Background(), f.push(fakewebpush.Subscription{Endpoint: endpoint, Keys: f.sub.Keys}, Push{}))
			se := sendErr(t, err, tc.kind)
			if chainHolds(err, endpoint) || chainHolds(err, "SECRET-subscription") {
				t.Fatalf("the error holds the endpoint: %v", err)
			}
			if tc.kind == KindRetry && !strings.Contains(se.Error(), "webpush: Post "+tc.base+": ") {
				t.Errorf("error %q does not say what failed", se)
			}
		})
	}
}

func TestNewWebPushErrors(t *testing.T) {
	priv, pub, _ := webpush.GenerateVAPIDKeys()
	_, otherPub, _ := webpush.GenerateVAPIDKeys()
	for _, tc := range []struct {
		name string
		opts WebPushOptions
		want string
	}{
		{"no subscriber", WebPushOptions{VAPIDPrivateKey: priv, VAPIDPublicKey: pub}, "Subscriber"},
		{"no private key", WebPushOptions{VAPIDPublicKey: pub, Subscriber: "a@b"}, "VAPIDPrivateKey"},
		{"private key not base64", WebPushOptions{VAPIDPrivateKey: "!!", VAPIDPublicKey: pub, Subscriber: "a@b"}, "VAPIDPrivateKey"},
		{"mismatched keys", WebPushOptions{VAPIDPrivateKey: priv, VAPIDPublicKey: otherPub, Subscriber: "a@b"}, "VAPIDPublicKey"},
		{"negative timeout", WebPushOptions{VAPIDPrivateKey: priv, VAPIDPublicKey: pub, Subscriber: "a@b", Timeout: -1}, "Timeout"},
	} {
		if _, err := NewWebPush(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "webpush: ") {
			t.Errorf("%s: NewWebPush: %v, want an error about %s", tc.name, err, tc.want)
		}
	}
}

// fixedRandom yields the given bytes, then the bytes of next.
type fixedRandom struct {
	b    []byte
	next io.Reader
}

func (r *fixedRandom) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return r.next.Read(p)
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// The example of RFC 8291 appendix A through the sender's encryption. The library takes its
// salt and its one-time key pair from crypto/rand.Reader (io.ReadFull(rand.Reader, salt),
// then elliptic.GenerateKey(P256, rand.Reader), which reads the 32-byte scalar and flips
// byte 1 with 0x42); the test makes that reader yield the vector's salt and key for one
// send. The vector's header has a record size of 4096; the sender's has the size of its one
// record (144 bytes here): the rest of the body, the ciphertext and tag, must be the
// vector's byte for byte. Not parallel: it replaces a global.
func TestWebPushRFC8291VectorThroughTheSender(t *testing.T) {
	const (
		plaintext = "When I grow up, I want to be a watermelon"
		uaPrivate = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
		asPrivate = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
		asPublic  = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
		salt      = "DGv6ra1nlYgDCS1FRnbzlw"
		auth      = "BTBZMqHH6r4Tts7J_aSIgg"
		body      = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
			"mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
			"pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
	)
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f := newWebPushFixture(t)
	ua, err := ecdh.P256().NewPrivateKey(dec(uaPrivate))
	if err != nil {
		t.Fatal(err)
	}
	sub := f.fake.Add("rfc8291", ua, dec(auth), f.public)

	scalar := dec(asPrivate)
	scalar[1] ^= 0x42 // undone by elliptic.GenerateKey
	prev := rand.Reader
	rand.Reader = &fixedRandom{b: append(dec(salt), scalar...), next: prev}
	_, err = f.sender.send(context.Background(), f.push(sub, Push{}), []byte(plaintext))
	rand.Reader = prev
	if err != nil {
		t.Fatal(err)
	}
	m := f.last(t)
	if m.Status != 201 || string(m.Payload) != plaintext {
		t.Fatalf("the fake answered %d %s; decrypted %q", m.Status, m.Error, m.Payload)
	}
	want, got := dec(body), m.Body
	if len(got) != len(want) {
		t.Fatalf("body of %d bytes, want %d", len(got), len(want))
	}
	if rs := binary.BigEndian.Uint32(got[16:20]); rs != uint32(len(want)) {
		t.Errorf("record size %d, want %d", rs, len(want))
	}
	if !bytes.Equal(got[:16], want[:16]) || !bytes.Equal(got[20:86], want[20:86]) || got[20] != 65 ||
		base64.RawURLEncoding.EncodeToString(got[21:86]) != asPublic {
		t.Errorf("header %x, want %x (but the record size)", got[:86], want[:86])
	}
	if !bytes.Equal(got[86:], want[86:]) {
		t.Errorf("ciphertext\n%x, want\n%x", got[86:], want[86:])
	}
}

// A round trip through the library with its own random salt and key, many times over:
// every message decrypts to what was sent.
func TestWebPushRoundTrips(t *testing.T) {
	f := newWebPushFixture(t)
	for i := range 50 {
		msg := []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("x", i*37)))
		if _, err := f.sender.send(context.Background(), f.push(f.sub, Push{}), msg); err != nil {
			t.Fatal(err)
		}
		if m := f.last(t); m.Status != 201 || !bytes.Equal(m.Payload, msg) {
			t.Fatalf("message %d: %d %s, decrypted %q", i, m.Status, m.Error, m.Payload)
		}
	}
}

func FuzzCheckWebPushSubscription(f *testing.F) {
	f.Add("https://push.example/x", "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4", "BTBZMqHH6r4Tts7J_aSIgg")
	f.Add("http://[::1", "", "==")
	f.Fuzz(func(t *testing.T, endpoint, p256dh, auth string) {
		if CheckWebPushSubscription(endpoint, WebPushKeys{P256dh: p256dh, Auth: auth}) != nil {
			return
		}
		if k, _ := decodeKey(p256dh); len(k) != 65 {
			t.Fatalf("accepted a %d-byte p256dh", len(k))
		}
	})
}

// BenchmarkWebPushSend sends wake-ups to the fake push service from parallel goroutines:
// each one is encrypted (an ECDH, three HKDFs, AES-GCM), signed (ES256) and decrypted by the
// fake. Report sends/s.
func BenchmarkWebPushSend(b *testing.B) {
	f := &webpushFixture{fake: fakewebpush.New(fakewebpush.Options{})}
	if err := f.fake.Start(); err != nil {
		b.Fatal(err)
	}
	defer f.fake.Close()
	var err error
	f.private, f.public, _ = webpush.GenerateVAPIDKeys()
	if f.sender, err = NewWebPush(WebPushOptions{VAPIDPublicKey: f.public, VAPIDPrivateKey: f.private, Subscriber: "ops@example.com"}); err != nil {
		b.Fatal(err)
	}
	defer f.sender.Close()
	if f.sub, err = f.fake.Subscribe(f.public); err != nil {
		b.Fatal(err)
	}
	p := f.push(f.sub, Push{CollapseID: "pushproxy-wakeup", TTL: time.Hour, Pending: map[string]int64{"s1": 3, "s2": 1}})
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.sender.Send(context.Background(), p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
}

// The VAPID subject may be given as "mailto:ops@example.com" (as RFC 8292 writes it, and as
// --vapid-subject documents it), as a bare address, or as an https: URL: the token's sub is
// a mailto: or https: URL each time, never "mailto:mailto:…".
func TestWebPushSubjectForms(t *testing.T) {
	f := newWebPushFixture(t)
	for give, want := range map[string]string{
		"mailto:ops@example.com":      "mailto:ops@example.com",
		"ops@example.com":             "mailto:ops@example.com",
		"https://example.com/contact": "https://example.com/contact",
	} {
		s, err := NewWebPush(WebPushOptions{VAPIDPublicKey: f.public, VAPIDPrivateKey: f.private, Subscriber: give})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Send(context.Background(), f.push(f.sub, Push{})); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if got := f.last(t).VAPID.Subject; got != want {
			t.Errorf("Subscriber %q: sub %q, want %q", give, got, want)
		}
	}
}

// BenchmarkWebPushSendRemote is BenchmarkWebPushSend against a fake push service in
// another process, so that the fake's decryption does not share the sender's CPU time
// accounting: run `pushproxy fakes` and set PUSHPROXY_BENCH_WEBPUSH_URL to the URL it
// prints for the fake Web Push service. Skipped without it.
func BenchmarkWebPushSendRemote(b *testing.B) {
	base := os.Getenv("PUSHPROXY_BENCH_WEBPUSH_URL")
	if base == "" {
		b.Skip("PUSHPROXY_BENCH_WEBPUSH_URL is not set (the fake of `pushproxy fakes`)")
	}
	priv, pub, _ := webpush.GenerateVAPIDKeys()
	sender, err := NewWebPush(WebPushOptions{VAPIDPublicKey: pub, VAPIDPrivateKey: priv, Subscriber: "ops@example.com"})
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	defer http.DefaultClient.CloseIdleConnections()
	resp, err := http.Post(base+"/subscriptions", "application/json", strings.NewReader(`{"application_server_key":"`+pub+`"}`))
	if err != nil {
		b.Fatal(err)
	}
	var sub fakewebpush.Subscription
	err = json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	p := Push{Platform: "webpush", Token: sub.Endpoint, WebPushKeys: &WebPushKeys{P256dh: sub.Keys.P256dh, Auth: sub.Keys.Auth},
		CollapseID: "pushproxy-wakeup", TTL: time.Hour, Pending: map[string]int64{"s1": 3, "s2": 1}}
	b.SetParallelism(8)
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := sender.Send(context.Background(), p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
	// On a shared machine the rate depends on the neighbours; the CPU time the sender's
	// process spent per send does not, much: 1e6 / cpu-µs/send is a core's capacity.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/send")
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
