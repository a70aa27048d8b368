package fakeapns_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	keyID  = "KEY1234567"
	teamID = "TEAM123456"
	topic  = "com.example.app"
	token  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// clock is a clock a test moves.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }
func b64(b []byte) string                { return base64.RawURLEncoding.EncodeToString(b) }
func newKey(t *testing.T) *ecdsa.PrivateKey {
	return must[*ecdsa.PrivateKey](t)(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// signJWT makes an APNs provider token.
func signJWT(t *testing.T, key *ecdsa.PrivateKey, kid, iss string, iat time.Time) string {
	t.Helper()
	h := b64([]byte(fmt.Sprintf(`{"alg":"ES256","kid":%q}`, kid)))
	c := b64([]byte(fmt.Sprintf(`{"iss":%q,"iat":%d}`, iss, iat.Unix())))
	d := sha256.Sum256([]byte(h + "." + c))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return h + "." + c + "." + b64(sig)
}

type fixture struct {
	srv    *fakeapns.Server
	key    *ecdsa.PrivateKey
	clock  *clock
	client *http.Client
}

func start(t *testing.T, opts fakeapns.Options) *fixture {
	t.Helper()
	f := &fixture{key: newKey(t), clock: &clock{}}
	if opts.Keys == nil && opts.ClientCAs == nil {
		opts.Keys = map[string]*ecdsa.PublicKey{keyID: &f.key.PublicKey}
		opts.TeamID = teamID
	}
	opts.Clock = f.clock.now
	f.srv = fakeapns.New(opts)
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.srv.CA().Pool()}, ForceAttemptHTTP2: true}
	f.client = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		f.srv.Close()
	})
	return f
}

// request is a push that the fake accepts; a test changes what it checks.
type request struct {
	method  string
	path    string
	headers map[string]string
	body    string
}

func (f *fixture) valid(t *testing.T) *request {
	return &request{
		method: http.MethodPost,
		path:   "/3/device/" + token,
		headers: map[string]string{
			"authorization":    "bearer " + signJWT(t, f.key, keyID, teamID, f.clock.now()),
			"apns-topic":       topic,
			"apns-push-type":   "background",
			"apns-priority":    "5",
			"apns-expiration":  "0",
			"apns-collapse-id": "c1",
			"apns-id":          "123e4567-e89b-12d3-a456-426614174000",
		},
		body: `{"aps":{"content-available":1},"pushproxy":{"streams":{"s":1},"total":1}}`,
	}
}

type reply struct {
	status int
	header http.Header
	reason string
	stamp  int64
}

func (f *fixture) do(t *testing.T, r *request) reply {
	t.Helper()
	req, err := http.NewRequest(r.method, f.srv.URL()+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	var body struct {
		Reason    string `json:"reason"`
		Timestamp int64  `json:"timestamp"`
	}
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatalf("body %q: %v", b, err)
		}
	}
	return reply{resp.StatusCode, resp.Header, body.Reason, body.Timestamp}
}

func TestAcceptsAValidPushAndRecordsIt(t *testing.T) {
	f := start(t, fakeapns.Options{Topics: []string{topic}})
	r := f.valid(t)
	got := f.do(t, r)
	if got.status != 200 || got.reason != "" {
		t.Fatalf("got %d %q (%s), want 200", got.status, got.reason, got.header.Get(fakeapns.DetailHeader))
	}
	if id := got.header.Get("apns-id"); id != r.headers["apns-id"] {
		t.Errorf("apns-id %q, want the request's", id)
	}
	pushes, err := f.srv.WaitFor(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	p := pushes[0]
	if p.Token != token || p.Topic != topic || p.PushType != "background" || p.Priority != "5" ||
		p.Expiration != "0" || p.CollapseID != "c1" || p.KeyID != keyID || p.Status != 200 || string(p.Payload) != r.body {
		t.Errorf("recorded %+v", p)
	}
	if d := time.Since(p.Time); d < 0 || d > time.Minute {
		t.Errorf("time %v", p.Time)
	}

	delete(r.headers, "apns-id")
	got = f.do(t, r)
	if id := got.header.Get("apns-id"); got.status != 200 || len(id) != 36 {
		t.Errorf("without apns-id: %d, apns-id %q; want 200 and a generated UUID", got.status, id)
	}
}

func TestRefusesPushesLikeApple(t *testing.T) {
	f := start(t, fakeapns.Options{Topics: []string{topic}})
	other := newKey(t)
	for _, tc := range []struct {
		name   string
		change func(r *request)
		status int
		reason string
	}{
		{"GET", func(r *request) { r.method = http.MethodGet; r.body = "" }, 405, "MethodNotAllowed"},
		{"bad path", func(r *request) { r.path = "/3/devices/" + token }, 404, "BadPath"},
		{"no token", func(r *request) { r.path = "/3/device/" }, 400, "MissingDeviceToken"},
		{"token not hex", func(r *request) { r.path = "/3/device/" + strings.Repeat("z", 64) }, 400, "BadDeviceToken"},
		{"token too short", func(r *request) { r.path = "/3/device/abcd" }, 400, "BadDeviceToken"},
		{"no authorization", func(r *request) { r.headers["authorization"] = "" }, 403, "MissingProviderToken"},
		{"not bearer", func(r *request) { r.headers["authorization"] = "basic abc" }, 403, "InvalidProviderToken"},
		{"garbage JWT", func(r *request) { r.headers["authorization"] = "bearer a.b.c" }, 403, "InvalidProviderToken"},
		{"other key", func(r *request) {
			r.headers["authorization"] = "bearer " + signJWT(t, other, keyID, teamID, f.clock.now())
		}, 403, "InvalidProviderToken"},
		{"unknown key id", func(r *request) {
			r.headers["authorization"] = "bearer " + signJWT(t, f.key, "NOSUCHKEY0", teamID, f.clock.now())
		}, 403, "InvalidProviderToken"},
		{"other team", func(r *request) {
			r.headers["authorization"] = "bearer " + signJWT(t, f.key, keyID, "OTHERTEAM0", f.clock.now())
		}, 403, "InvalidProviderToken"},
		{"token older than an hour", func(r *request) {
			r.headers["authorization"] = "bearer " + signJWT(t, f.key, keyID, teamID, f.clock.now().Add(-61*time.Minute))
		}, 403, "ExpiredProviderToken"},
		{"no topic", func(r *request) { r.headers["apns-topic"] = "" }, 400, "MissingTopic"},
		{"other topic", func(r *request) { r.headers["apns-topic"] = "com.example.other" }, 400, "TopicDisallowed"},
		{"unknown push type", func(r *request) { r.headers["apns-push-type"] = "silent" }, 400, "InvalidPushType"},
		{"priority 7", func(r *request) { r.headers["apns-priority"] = "7" }, 400, "BadPriority"},
		{"background at priority 10", func(r *request) { r.headers["apns-priority"] = "10" }, 400, "BadPriority"},
		{"background without priority", func(r *request) { r.headers["apns-priority"] = "" }, 400, "BadPriority"},
		{"expiration not a number", func(r *request) { r.headers["apns-expiration"] = "soon" }, 400, "BadExpirationDate"},
		{"collapse id of 65 bytes", func(r *request) { r.headers["apns-collapse-id"] = strings.Repeat("c", 65) }, 400, "BadCollapseId"},
		{"apns-id not a UUID", func(r *request) { r.headers["apns-id"] = "42" }, 400, "BadMessageId"},
		{"empty payload", func(r *request) { r.body = "" }, 400, "PayloadEmpty"},
		{"payload of 4097 bytes", func(r *request) {
			head, tail := `{"aps":{"content-available":1},"x":"`, `"}`
			r.body = head + strings.Repeat("x", 4097-len(head)-len(tail)) + tail
		}, 413, "PayloadTooLarge"},
		{"payload not JSON", func(r *request) { r.body = `{"aps":` }, 400, "BadPayload"},
		{"payload without aps", func(r *request) { r.body = `{"pushproxy":{}}` }, 400, "BadPayload"},
		{"background without content-available", func(r *request) { r.body = `{"aps":{}}` }, 400, "BadPayload"},
		{"background with an alert", func(r *request) { r.body = `{"aps":{"content-available":1,"alert":"hi"}}` }, 400, "BadPayload"},
		{"background with a badge", func(r *request) { r.body = `{"aps":{"content-available":1,"badge":1}}` }, 400, "BadPayload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.valid(t)
			tc.change(r)
			got := f.do(t, r)
			if got.status != tc.status || got.reason != tc.reason {
				t.Errorf("got %d %q, want %d %q", got.status, got.reason, tc.status, tc.reason)
			}
			if got.header.Get(fakeapns.DetailHeader) == "" {
				t.Errorf("no %s header", fakeapns.DetailHeader)
			}
		})
	}
	for _, p := range f.srv.Pushes() {
		if p.Status == 200 {
			t.Errorf("a refused push was recorded as accepted: %d-byte payload, headers %q %q %q", len(p.Payload), p.PushType, p.Priority, p.Topic)
		}
	}
}

func TestAcceptsOtherPushTypes(t *testing.T) {
	f := start(t, fakeapns.Options{})
	r := f.valid(t)
	r.headers["apns-push-type"], r.headers["apns-priority"] = "alert", "10"
	r.body = `{"aps":{"alert":"Hello","mutable-content":1,"content-available":1}}`
	if got := f.do(t, r); got.status != 200 {
		t.Errorf("alert push: %d %q", got.status, got.reason)
	}
	r = f.valid(t)
	r.headers["apns-push-type"] = "voip"
	r.body = `{"aps":{},"x":"` + strings.Repeat("x", 5000) + `"}`
	if got := f.do(t, r); got.status != 200 {
		t.Errorf("VoIP push of 5000 bytes: %d %q", got.status, got.reason)
	}
}

func TestInjectedFailures(t *testing.T) {
	f := start(t, fakeapns.Options{})
	other := strings.Repeat("ab", 32)

	f.srv.Unregister(token)
	got := f.do(t, f.valid(t))
	if got.status != 410 || got.reason != "Unregistered" || got.stamp/1000 != f.clock.now().Unix() && got.stamp/1000 != f.clock.now().Unix()-1 {
		t.Errorf("unregistered: %d %q timestamp %d", got.status, got.reason, got.stamp)
	}
	f.srv.ClearToken(token)

	f.srv.FailToken(token, 400, "DeviceTokenNotForTopic", 2)
	for i, want := range []int{400, 400, 200} {
		if got := f.do(t, f.valid(t)); got.status != want {
			t.Errorf("push %d to the failing token: %d %q, want %d", i, got.status, got.reason, want)
		}
	}

	f.srv.FailNext(1, 429, "TooManyRequests", 1500*time.Millisecond)
	f.srv.FailNext(1, 503, "ServiceUnavailable", 0)
	r := f.valid(t)
	r.path = "/3/device/" + other
	got = f.do(t, r)
	if got.status != 429 || got.reason != "TooManyRequests" || got.header.Get("Retry-After") != "2" {
		t.Errorf("first: %d %q Retry-After %q, want 429 TooManyRequests 2", got.status, got.reason, got.header.Get("Retry-After"))
	}
	if got := f.do(t, r); got.status != 503 || got.reason != "ServiceUnavailable" || got.header.Get("Retry-After") != "" {
		t.Errorf("second: %d %q", got.status, got.reason)
	}
	if got := f.do(t, r); got.status != 200 {
		t.Errorf("third: %d %q", got.status, got.reason)
	}

	// A refusal for a malformed push comes before an injected failure.
	f.srv.FailNext(1, 500, "InternalServerError", 0)
	r.headers["apns-priority"] = "10"
	if got := f.do(t, r); got.reason != "BadPriority" {
		t.Errorf("malformed push with a failure pending: %q", got.reason)
	}
}

func TestTokensExpireByTheClock(t *testing.T) {
	f := start(t, fakeapns.Options{})
	r := f.valid(t)
	if got := f.do(t, r); got.status != 200 {
		t.Fatalf("%d %q", got.status, got.reason)
	}
	f.clock.advance(time.Hour + time.Minute)
	if got := f.do(t, r); got.status != 403 || got.reason != "ExpiredProviderToken" {
		t.Errorf("the same token an hour later: %d %q", got.status, got.reason)
	}
}

func TestCertificateAuth(t *testing.T) {
	ca := must[*fakeapns.CA](t)(fakeapns.NewCA())
	f := start(t, fakeapns.Options{CA: ca, ClientCAs: ca.Pool()})
	certPEM := must[[]byte](t)(ca.ClientCertificatePEM(topic))
	cert := must[tls.Certificate](t)(tls.X509KeyPair(certPEM, certPEM))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	f.client = &http.Client{Transport: tr}

	r := f.valid(t)
	r.headers["authorization"], r.headers["apns-topic"] = "", ""
	if got := f.do(t, r); got.status != 200 {
		t.Fatalf("%d %q", got.status, got.reason)
	}
	if p := f.srv.Pushes()[0]; p.CertTopic != topic {
		t.Errorf("certificate topic %q", p.CertTopic)
	}
	r.headers["apns-topic"] = "com.example.other"
	if got := f.do(t, r); got.status != 400 || got.reason != "TopicDisallowed" {
		t.Errorf("other topic: %d %q", got.status, got.reason)
	}

	noCert := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}
	defer noCert.CloseIdleConnections()
	if _, err := (&http.Client{Transport: noCert}).Post(f.srv.URL()+"/3/device/"+token, "application/json", strings.NewReader("{}")); err == nil {
		t.Error("a connection without a client certificate was accepted")
	}
}

func TestLatencyAndWaitFor(t *testing.T) {
	f := start(t, fakeapns.Options{Latency: 50 * time.Millisecond})
	var wg sync.WaitGroup
	for range 3 {
		r := f.valid(t)
		wg.Go(func() { f.do(t, r) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pushes, err := f.srv.WaitFor(ctx, 3)
	if err != nil || len(pushes) != 3 {
		t.Fatalf("WaitFor: %d pushes, %v", len(pushes), err)
	}
	wg.Wait()
	short, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := f.srv.WaitFor(short, 4); err == nil {
		t.Error("WaitFor(4) returned with 3 pushes")
	}
	if peak := f.srv.PeakInFlight(); peak < 1 || peak > 3 {
		t.Errorf("peak %d", peak)
	}
}

// TestAdvertisesAndEnforcesTheStreamLimit speaks HTTP/2 frames to the fake: it reads the
// limit from the server's SETTINGS and opens one stream too many.
func TestAdvertisesAndEnforcesTheStreamLimit(t *testing.T) {
	f := start(t, fakeapns.Options{MaxConcurrentStreams: 2})
	conn, err := tls.Dial("tcp", strings.TrimPrefix(f.srv.URL(), "https://"), &tls.Config{RootCAs: f.srv.CA().Pool(), NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	limit := uint32(0)
	for limit == 0 {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := frame.(*http2.SettingsFrame); ok && !sf.IsAck() {
			v, ok := sf.Value(http2.SettingMaxConcurrentStreams)
			if !ok {
				t.Fatal("no SETTINGS_MAX_CONCURRENT_STREAMS")
			}
			limit = v
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if limit != 2 {
		t.Fatalf("advertised %d streams, want 2", limit)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	jwt := signJWT(t, f.key, keyID, teamID, f.clock.now())
	for _, id := range []uint32{1, 3, 5} {
		hb.Reset()
		for _, h := range [][2]string{
			{":method", "POST"}, {":scheme", "https"}, {":authority", "fake"}, {":path", "/3/device/" + token},
			{"authorization", "bearer " + jwt}, {"apns-topic", topic},
		} {
			if err := enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]}); err != nil {
				t.Fatal(err)
			}
		}
		// No END_STREAM: the streams stay open, waiting for a body.
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if rst, ok := frame.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != 5 || (rst.ErrCode != http2.ErrCodeRefusedStream && rst.ErrCode != http2.ErrCodeProtocol) {
				t.Fatalf("RST_STREAM %d %v, want stream 5 refused", rst.StreamID, rst.ErrCode)
			}
			break
		}
	}
	// The refusal can come before the handlers of streams 1 and 3 have started (they run on
	// goroutines of their own): both stay open, so both are counted soon after.
	peak := f.srv.PeakInFlight()
	for deadline := time.Now().Add(10 * time.Second); peak < 2 && time.Now().Before(deadline); peak = f.srv.PeakInFlight() {
		time.Sleep(5 * time.Millisecond) // polling the condition: the fake offers no signal for it
	}
	if peak != 2 {
		t.Errorf("peak in flight %d, want 2", peak)
	}
	if n := f.srv.RefusedStreams(); n != 1 {
		t.Errorf("%d refused streams counted, want 1", n)
	}
}

func TestListensOnTheAddressGiven(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f := start(t, fakeapns.Options{Addr: addr})
	if f.srv.URL() != "https://"+addr {
		t.Errorf("URL %s, want https://%s", f.srv.URL(), addr)
	}
	if got := f.do(t, f.valid(t)); got.status != 200 {
		t.Errorf("%d %q", got.status, got.reason)
	}
}
