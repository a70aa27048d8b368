package wakeup

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/fakeapns"

	"github.com/pushproxy/pushproxy"
)

const (
	apnsTestKeyID  = "KEY1234567"
	apnsTestTeamID = "TEAM123456"
	apnsTestTopic  = "com.example.app"
	apnsTestPushID = "123e4567-e89b-12d3-a456-426614174000"
)

type apnsFixture struct {
	fake    *fakeapns.Server
	sender  *APNs
	clock   *testClock
	keyFile string
}

// newAPNsFixture starts a fake APNs that knows one auth key and a sender with that key. The
// options given change the defaults; change changes the sender's options.
func newAPNsFixture(t testing.TB, fo fakeapns.Options, change func(*APNsOptions)) *apnsFixture {
	t.Helper()
	f := &apnsFixture{clock: &testClock{}, keyFile: filepath.Join(t.TempDir(), "AuthKey_"+apnsTestKeyID+".p8")}
	pub, err := fakeapns.GenerateAuthKey(f.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fo.Keys == nil && fo.ClientCAs == nil {
		fo.Keys = map[string]*ecdsa.PublicKey{apnsTestKeyID: pub}
		fo.TeamID = apnsTestTeamID
	}
	if fo.Topics == nil {
		fo.Topics = []string{apnsTestTopic, "com.example.other"}
	}
	fo.CA, fo.Clock = testCA, f.clock.Now
	f.fake = fakeapns.New(fo)
	if err := f.fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.fake.Close)
	opts := APNsOptions{KeyFile: f.keyFile, KeyID: apnsTestKeyID, TeamID: apnsTestTeamID, Topic: apnsTestTopic, URL: f.fake.URL()}
	if change != nil {
		change(&opts)
	}
	f.sender, err = NewAPNs(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.sender.Close)
	return f
}

// only returns the one push the fake received.
func (f *apnsFixture) only(t *testing.T) fakeapns.Push {
	t.Helper()
	pushes := f.fake.Pushes()
	if len(pushes) != 1 {
		t.Fatalf("the fake received %d pushes, want 1", len(pushes))
	}
	return pushes[0]
}

func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("payload %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("payload\n%s\nwant\n%s", got, want)
	}
}

func TestAPNsSendsABackgroundPush(t *testing.T) {
	f := newAPNsFixture(t, fakeapns.Options{}, nil)
	before := time.Now()
	id, err := f.sender.Send(context.Background(), Push{
		ID: apnsTestPushID, Platform: "apns", Token: hexToken(1), Environment: "production",
		CollapseID: "device-1", TTL: time.Hour, Pending: map[string]int64{"s1": 3, "s2": 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if id != apnsTestPushID {
		t.Errorf("id %q, want the push's", id)
	}
	p := f.only(t)
	if p.Status != 200 || p.Token != hexToken(1) || p.Topic != apnsTestTopic || p.PushType != "background" ||
		p.Priority != "5" || p.CollapseID != "device-1" || p.ID != apnsTestPushID || p.KeyID != apnsTestKeyID {
		t.Errorf("the fake received %+v", p)
	}
	exp, err := strconv.ParseInt(p.Expiration, 10, 64)
	if err != nil || exp < before.Add(time.Hour).Unix() || exp > time.Now().Add(time.Hour).Unix() {
		t.Errorf("apns-expiration %q, want now+1h", p.Expiration)
	}
	jsonEqual(t, p.Payload, `{"aps":{"content-available":1},"pushproxy":{"streams":{"s1":3,"s2":1},"total":4}}`)
}

func TestAPNsPushOptions(t *testing.T) {
	f := newAPNsFixture(t, fakeapns.Options{}, nil)
	long := strings.Repeat("c", 100)
	for _, tc := range []struct {
		name  string
		push  Push
		check func(t *testing.T, id string, p fakeapns.Push)
	}{
		{"TTL 0 asks to try once", Push{TTL: 0}, func(t *testing.T, _ string, p fakeapns.Push) {
			if p.Expiration != "0" {
				t.Errorf("apns-expiration %q, want 0", p.Expiration)
			}
		}},
		{"an id that is not a UUID is not sent", Push{ID: "wake-42"}, func(t *testing.T, id string, p fakeapns.Push) {
			if p.ID == "wake-42" || !pushproxy.IsUUID(id) || id != p.ID {
				t.Errorf("Send returned %q, the fake answered apns-id %q", id, p.ID)
			}
		}},
		{"the push's topic", Push{Topic: "com.example.other"}, func(t *testing.T, _ string, p fakeapns.Push) {
			if p.Topic != "com.example.other" {
				t.Errorf("topic %q", p.Topic)
			}
		}},
		{"development environment", Push{Environment: "development"}, func(t *testing.T, _ string, p fakeapns.Push) {}},
		{"urgent with an alert text", Push{Urgent: true, AlertText: "New messages"}, func(t *testing.T, _ string, p fakeapns.Push) {
			if p.PushType != "alert" || p.Priority != "10" {
				t.Errorf("push type %q priority %q, want alert 10", p.PushType, p.Priority)
			}
			jsonEqual(t, p.Payload, `{"aps":{"alert":"New messages","mutable-content":1,"content-available":1},"pushproxy":{"streams":{"s":1},"total":1}}`)
		}},
		{"urgent without an alert text", Push{Urgent: true}, func(t *testing.T, _ string, p fakeapns.Push) {
			if p.PushType != "background" || p.Priority != "5" {
				t.Errorf("push type %q priority %q, want background 5", p.PushType, p.Priority)
			}
		}},
		{"a long collapse id is hashed", Push{CollapseID: long}, func(t *testing.T, _ string, p fakeapns.Push) {
			if len(p.CollapseID) != 64 || p.CollapseID != collapseID(long) {
				t.Errorf("collapse id %q", p.CollapseID)
			}
		}},
		{"many streams fit the payload", Push{Pending: manyStreams(500)}, func(t *testing.T, _ string, p fakeapns.Push) {
			if len(p.Payload) > 4096 {
				t.Errorf("payload of %d bytes", len(p.Payload))
			}
			var doc struct {
				Pushproxy struct {
					Streams map[string]int64 `json:"streams"`
					Total   int64            `json:"total"`
					Omitted int              `json:"omitted"`
				} `json:"pushproxy"`
			}
			if err := json.Unmarshal(p.Payload, &doc); err != nil {
				t.Fatal(err)
			}
			pp := doc.Pushproxy
			if pp.Omitted == 0 || len(pp.Streams)+pp.Omitted != 500 || pp.Total != 500*501/2 {
				t.Errorf("%d streams, %d omitted, total %d", len(pp.Streams), pp.Omitted, pp.Total)
			}
			if pp.Streams["stream-with-a-rather-long-identifier-500"] != 500 {
				t.Errorf("the largest count is not in the payload")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.fake.Reset()
			p := tc.push
			p.Token = hexToken(2)
			if p.Pending == nil {
				p.Pending = map[string]int64{"s": 1}
			}
			id, err := f.sender.Send(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			got := f.only(t)
			if got.Status != 200 {
				t.Fatalf("the fake answered %d %s: %s", got.Status, got.Reason, got.Detail)
			}
			tc.check(t, id, got)
		})
	}
}

func manyStreams(n int) map[string]int64 {
	m := make(map[string]int64, n)
	for i := 1; i <= n; i++ {
		m[fmt.Sprintf("stream-with-a-rather-long-identifier-%d", i)] = int64(i)
	}
	return m
}

func TestAPNsErrors(t *testing.T) {
	f := newAPNsFixture(t, fakeapns.Options{}, nil)
	for i, tc := range []struct {
		name       string
		inject     func(token string)
		kind       string
		status     int
		reason     string
		retryAfter time.Duration
	}{
		{"410 Unregistered", func(tok string) { f.fake.Unregister(tok) }, KindTokenGone, 410, "Unregistered", 0},
		{"400 BadDeviceToken", func(tok string) { f.fake.FailToken(tok, 400, "BadDeviceToken", 0) }, KindTokenGone, 400, "BadDeviceToken", 0},
		{"400 DeviceTokenNotForTopic", func(tok string) { f.fake.FailToken(tok, 400, "DeviceTokenNotForTopic", 0) }, KindTokenGone, 400, "DeviceTokenNotForTopic", 0},
		{"429 with Retry-After", func(string) { f.fake.FailNext(1, 429, "TooManyRequests", 30*time.Second) }, KindThrottled, 429, "TooManyRequests", 30 * time.Second},
		{"429 without Retry-After", func(string) { f.fake.FailNext(1, 429, "TooManyRequests", 0) }, KindThrottled, 429, "TooManyRequests", 0},
		{"503 ServiceUnavailable", func(string) { f.fake.FailNext(1, 503, "ServiceUnavailable", 0) }, KindRetry, 503, "ServiceUnavailable", 0},
		{"503 Shutdown", func(string) { f.fake.FailNext(1, 503, "Shutdown", 0) }, KindRetry, 503, "Shutdown", 0},
		{"500 InternalServerError", func(string) { f.fake.FailNext(1, 500, "InternalServerError", 0) }, KindRetry, 500, "InternalServerError", 0},
		{"403 BadCertificate", func(string) { f.fake.FailNext(1, 403, "BadCertificate", 0) }, KindCredentials, 403, "BadCertificate", 0},
		{"413 PayloadTooLarge", func(string) { f.fake.FailNext(1, 413, "PayloadTooLarge", 0) }, KindInvalid, 413, "PayloadTooLarge", 0},
		{"400 BadTopic", func(string) { f.fake.FailNext(1, 400, "BadTopic", 0) }, KindInvalid, 400, "BadTopic", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := hexToken(100 + i)
			tc.inject(tok)
			_, err := f.sender.Send(context.Background(), Push{Token: tok, Pending: map[string]int64{"s": 1}})
			se := sendErr(t, err, tc.kind)
			if se.Status != tc.status || se.Reason != tc.reason || se.RetryAfter != tc.retryAfter {
				t.Errorf("got %+v, want status %d reason %q retry after %v", se, tc.status, tc.reason, tc.retryAfter)
			}
		})
	}
	t.Run("a token that is not hex", func(t *testing.T) {
		_, err := f.sender.Send(context.Background(), Push{Token: "not/hex", Pending: map[string]int64{"s": 1}})
		sendErr(t, err, KindTokenGone)
	})
	t.Run("an unknown environment", func(t *testing.T) {
		_, err := f.sender.Send(context.Background(), Push{Token: hexToken(1), Environment: "staging"})
		sendErr(t, err, KindInvalid)
	})
}

func TestAPNsRefusedCredentials(t *testing.T) {
	t.Run("unknown key id", func(t *testing.T) {
		f := newAPNsFixture(t, fakeapns.Options{}, func(o *APNsOptions) { o.KeyID = "NOSUCHKEY0" })
		_, err := f.sender.Send(context.Background(), Push{Token: hexToken(1)})
		if se := sendErr(t, err, KindCredentials); se.Reason != "InvalidProviderToken" || se.Status != 403 {
			t.Errorf("%+v", se)
		}
	})
	t.Run("key of another team", func(t *testing.T) {
		f := newAPNsFixture(t, fakeapns.Options{}, func(o *APNsOptions) { o.TeamID = "OTHERTEAM0" })
		_, err := f.sender.Send(context.Background(), Push{Token: hexToken(1)})
		if se := sendErr(t, err, KindCredentials); se.Reason != "InvalidProviderToken" {
			t.Errorf("%+v", se)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		f := newAPNsFixture(t, fakeapns.Options{}, nil)
		if _, err := f.sender.Send(context.Background(), Push{Token: hexToken(1)}); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(2 * time.Hour)
		_, err := f.sender.Send(context.Background(), Push{Token: hexToken(1)})
		if se := sendErr(t, err, KindCredentials); se.Reason != "ExpiredProviderToken" {
			t.Errorf("%+v", se)
		}
	})
}

func TestAPNsNetworkErrorIsRetry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f := newAPNsFixture(t, fakeapns.Options{}, func(o *APNsOptions) { o.URL = "https://" + addr })
	_, err = f.sender.Send(context.Background(), Push{Token: hexToken(1)})
	if se := sendErr(t, err, KindRetry); se.Status != 0 || se.Err == nil {
		t.Errorf("%+v", se)
	}
}

func TestAPNsCertificateAuth(t *testing.T) {
	certFile := filepath.Join(t.TempDir(), "push.pem")
	pemBytes, err := testCA.ClientCertificatePEM(apnsTestTopic)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	f := newAPNsFixture(t, fakeapns.Options{ClientCAs: testCA.Pool()}, func(o *APNsOptions) {
		*o = APNsOptions{CertFile: certFile, URL: o.URL} // the topic comes from the certificate
	})
	if _, err := f.sender.Send(context.Background(), Push{Token: hexToken(1), Pending: map[string]int64{"s": 1}}); err != nil {
		t.Fatal(err)
	}
	if p := f.only(t); p.CertTopic != apnsTestTopic || p.Topic != apnsTestTopic || p.KeyID != "" {
		t.Errorf("the fake received %+v", p)
	}
}

// TestAPNsHonoursTheStreamLimit sends more pushes at once than the fake allows streams: none
// may be refused, and the fake must never see more requests at once than its limit.
func TestAPNsHonoursTheStreamLimit(t *testing.T) {
	for _, tc := range []struct {
		name          string
		streams       uint32
		maxConcurrent int
		want          int
	}{
		{"server limit", 8, 0, 8},
		{"MaxConcurrent below it", 8, 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAPNsFixture(t, fakeapns.Options{MaxConcurrentStreams: tc.streams, Latency: 5 * time.Millisecond},
				func(o *APNsOptions) { o.MaxConcurrent = tc.maxConcurrent })
			const pushes = 120
			var wg sync.WaitGroup
			var failed atomic.Int64
			for i := range pushes {
				wg.Go(func() {
					if _, err := f.sender.Send(context.Background(), Push{Token: hexToken(i), Pending: map[string]int64{"s": 1}}); err != nil {
						failed.Add(1)
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if n := len(f.fake.Pushes()); n != pushes || failed.Load() != 0 {
				t.Fatalf("%d pushes received, %d sends failed", n, failed.Load())
			}
			if peak := f.fake.PeakInFlight(); peak > tc.want || peak < 2 {
				t.Errorf("peak in flight %d, want at most %d (and some concurrency)", peak, tc.want)
			}
			if n := f.fake.RefusedStreams(); n != 0 {
				t.Errorf("the fake refused %d streams: the sender opened more than it allows", n)
			}
		})
	}
}

func TestNewAPNsErrors(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.p8")
	if _, err := fakeapns.GenerateAuthKey(keyFile); err != nil {
		t.Fatal(err)
	}
	write := func(name string, blocks ...*pem.Block) string {
		var b []byte
		for _, bl := range blocks {
			b = append(b, pem.EncodeToMemory(bl)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaFile := write("rsa.p8", &pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})
	notPEM := filepath.Join(dir, "garbage.p8")
	os.WriteFile(notPEM, []byte("not a key"), 0o600)

	// An expired push certificate, and one without a topic.
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	selfSigned := func(name string, subject pkix.Name, notAfter time.Time) string {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: subject, NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ecKey.PublicKey, ecKey)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, &pem.Block{Type: "CERTIFICATE", Bytes: der}, &pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	}
	expired := selfSigned("expired.pem", pkix.Name{CommonName: "old"}, time.Now().Add(-24*time.Hour))
	noTopic := selfSigned("notopic.pem", pkix.Name{CommonName: "no uid"}, time.Now().Add(24*time.Hour))
	certOnly := write("certonly.pem", &pem.Block{Type: "CERTIFICATE", Bytes: mustDER(t, noTopic)})

	token := func(change func(*APNsOptions)) APNsOptions {
		o := APNsOptions{KeyFile: keyFile, KeyID: apnsTestKeyID, TeamID: apnsTestTeamID, Topic: apnsTestTopic}
		change(&o)
		return o
	}
	for _, tc := range []struct {
		name string
		opts APNsOptions
		want string
	}{
		{"no credentials", APNsOptions{Topic: "t"}, "no credentials"},
		{"key and certificate", token(func(o *APNsOptions) { o.CertFile = expired }), "not both"},
		{"no key id", token(func(o *APNsOptions) { o.KeyID = "" }), "KeyID"},
		{"no team id", token(func(o *APNsOptions) { o.TeamID = "" }), "TeamID"},
		{"no topic", token(func(o *APNsOptions) { o.Topic = "" }), "Topic"},
		{"missing key file", token(func(o *APNsOptions) { o.KeyFile = filepath.Join(dir, "nope.p8") }), "no such file"},
		{"key not PEM", token(func(o *APNsOptions) { o.KeyFile = notPEM }), "PEM"},
		{"RSA key", token(func(o *APNsOptions) { o.KeyFile = rsaFile }), "ecdsa"},
		{"URL not https", token(func(o *APNsOptions) { o.URL = "http://127.0.0.1:1" }), "https://host"},
		{"URL with a path", token(func(o *APNsOptions) { o.URL = "https://127.0.0.1:1/3/device" }), "https://host"},
		{"negative timeout", token(func(o *APNsOptions) { o.Timeout = -time.Second }), "Timeout"},
		{"missing certificate", APNsOptions{CertFile: filepath.Join(dir, "nope.p12")}, "no such file"},
		{"certificate expired", APNsOptions{CertFile: expired, Topic: "t"}, "expired on"},
		{"certificate without topic", APNsOptions{CertFile: noTopic}, "set Topic"},
		{"certificate without key", APNsOptions{CertFile: certOnly}, "no private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewAPNs(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "apns: ") {
				t.Errorf("NewAPNs: %v, want an error about %q", err, tc.want)
			}
		})
	}
	if s, err := NewAPNs(APNsOptions{CertFile: noTopic, Topic: "com.example.app"}); err != nil {
		t.Errorf("certificate with a Topic: %v", err)
	} else {
		s.Close()
	}
}

func mustDER(t *testing.T, pemFile string) []byte {
	b, err := os.ReadFile(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	return block.Bytes
}

// BenchmarkAPNsSend sends pushes from 2000 goroutines through the real apns2 client to the
// fake APNs over HTTP/2 and TLS, the fake allowing 1000 streams like Apple. It reports
// pushes/s and fails if the fake ever handled more requests at once than it advertised.
func BenchmarkAPNsSend(b *testing.B) {
	f := newAPNsFixture(b, fakeapns.Options{}, nil)
	const workers = 2000
	pending := map[string]int64{"stream-1": 3, "stream-2": 1}
	ctx := context.Background()
	// One push to connect, so that the dial is not measured.
	if _, err := f.sender.Send(ctx, Push{Token: hexToken(0), Pending: pending}); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if _, err := f.sender.Send(ctx, Push{Token: hexToken(int(i)), CollapseID: "c", TTL: time.Hour, Pending: pending}); err != nil {
					if failed.Add(1) == 1 {
						b.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pushes/s")
	peak, limit := f.fake.PeakInFlight(), f.fake.MaxConcurrentStreams()
	b.Logf("%d pushes in %v: %.0f pushes/s; peak in flight %d (limit %d)", b.N, elapsed.Round(time.Millisecond), float64(b.N)/elapsed.Seconds(), peak, limit)
	if peak > limit || f.fake.RefusedStreams() > 0 {
		b.Fatalf("peak in flight %d, %d streams refused: the sender exceeded the advertised %d streams", peak, f.fake.RefusedStreams(), limit)
	}
	if failed.Load() > 0 {
		b.Fatalf("%d sends failed", failed.Load())
	}
}
