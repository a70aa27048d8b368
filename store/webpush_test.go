package store_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/store"
)

// A Web Push subscription's keys, of the RFC 8291 example.
const (
	wpP256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	wpAuth   = "BTBZMqHH6r4Tts7J_aSIgg"
	// The auth secret of a device written without a key.
	wpClearAuth = "clearAuthSecret0123456"
)

func webpushAddress(endpoint, auth string) *pushproxy.PushAddress {
	return &pushproxy.PushAddress{Platform: pushproxy.PlatformWebPush, Token: endpoint, WebPushP256dh: wpP256dh, WebPushAuth: auth}
}

// claimDevice queues a wake-up for the device of stream s, due at once, and claims it with st.
func claimDevice(t *testing.T, st *store.Store, s pushproxy.Stream) pushproxy.Wakeup {
	t.Helper()
	ctx := context.Background()
	for _, q := range []string{`DELETE FROM wakeups WHERE device_id = $1`,
		`INSERT INTO wakeups (device_id, urgent, created_at, due_at) VALUES ($1, false, now(), now() - interval '1 second')`} {
		if _, err := st.Pool().Exec(ctx, q, s.DeviceID); err != nil {
			t.Fatal(err)
		}
	}
	ws, err := st.ClaimWakeups(ctx, owner, time.Now().Add(time.Second), time.Minute, 100, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.DeviceID == s.DeviceID {
			return w
		}
	}
	t.Fatalf("no wake-up claimed for device %s", s.DeviceID)
	return pushproxy.Wakeup{}
}

// A Web Push device keeps its subscription's keys: the public key in clear, the auth secret
// sealed under the store's key (absent from a pg_dump), both given back to the scheduler
// when it claims the device's wake-up. A store without the key gets no auth secret (and no
// error), so the wake-up is skipped rather than the subscription declared dead.
func TestWebPushKeysStoredAndAuthSealed(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	sealed := openStore(t, b.url, k)
	clear := openStore(t, b.url, nil)
	const endpoint = "https://push.example/push/sealed-device"
	s, _, err := sealed.CreateStream(ctx, store.NewStream{URL: "http://origin.test/a", TokenHash: []byte("a"),
		Push: webpushAddress(endpoint, wpAuth), DeviceSecretHash: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	legacy, _, err := clear.CreateStream(ctx, store.NewStream{URL: "http://origin.test/b", TokenHash: []byte("b"),
		Push: webpushAddress("https://push.example/push/clear-device", wpClearAuth), DeviceSecretHash: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}

	dump := pgtest.DumpData(t, b.url)
	assertNoSecrets(t, "pg_dump --data-only", dump, wpAuth)
	if !bytes.Contains(dump, []byte(wpClearAuth)) || !bytes.Contains(dump, []byte(wpP256dh)) {
		t.Fatal("the device written in clear is not in the dump: the dump proves nothing")
	}

	w := claimDevice(t, sealed, s)
	if w.Push.Platform != pushproxy.PlatformWebPush || w.Push.Token != endpoint || w.Push.WebPushP256dh != wpP256dh || w.Push.WebPushAuth != wpAuth {
		t.Fatalf("claimed push address %+v", w.Push)
	}
	if w := claimDevice(t, sealed, legacy); w.Push.WebPushAuth != wpClearAuth {
		t.Fatalf("the clear device's auth: %q", w.Push.WebPushAuth)
	}

	// A store with another key claims the wake-up without the secret.
	other, _ := seal.Generate()
	if w := claimDevice(t, openStore(t, b.url, other), s); w.Push.WebPushAuth != "" || w.Push.WebPushP256dh != wpP256dh {
		t.Fatalf("a store with another key claimed %+v", w.Push)
	}

	// The sealed value is bound to its endpoint: copied to another device, it does not open.
	if _, err := sealed.Pool().Exec(ctx, `UPDATE devices SET webpush_auth = NULL, webpush_auth_sealed = (SELECT webpush_auth_sealed FROM devices WHERE token = $1) WHERE token <> $1`, endpoint); err != nil {
		t.Fatal(err)
	}
	if w := claimDevice(t, sealed, legacy); w.Push.WebPushAuth != "" {
		t.Fatalf("a sealed auth copied to another device opened: %q", w.Push.WebPushAuth)
	}
}

// A handoff with the device secret replaces the subscription's keys; without it, a handoff
// naming the endpoint with other keys is refused and the keys stay.
func TestWebPushKeysChangeOnlyWithTheSecret(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	st := openStore(t, b.url, nil)
	const endpoint = "https://push.example/push/keys"
	first := webpushAddress(endpoint, wpAuth)
	s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/a", TokenHash: []byte("a"), Push: first, DeviceSecretHash: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	changed := webpushAddress(endpoint, "otherAuthSecret0000000")
	changed.WebPushP256dh = "BOther"
	_, _, err = st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/b", TokenHash: []byte("b"), Push: changed,
		DeviceSecretHash: []byte("wrong"), DeviceSecretGiven: true})
	if pushproxy.ErrorCode(err) != pushproxy.EDEVICESECRETMISMATCH {
		t.Fatalf("a handoff with another secret: %v", err)
	}
	if w := claimDevice(t, st, s); w.Push.WebPushP256dh != wpP256dh || w.Push.WebPushAuth != wpAuth {
		t.Fatalf("keys changed without the secret: %+v", w.Push)
	}
	if _, _, err = st.CreateStream(ctx, store.NewStream{URL: "http://origin.test/c", TokenHash: []byte("c"), Push: changed,
		DeviceSecretHash: []byte("secret"), DeviceSecretGiven: true}); err != nil {
		t.Fatal(err)
	}
	if w := claimDevice(t, st, s); w.Push.WebPushP256dh != "BOther" || w.Push.WebPushAuth != "otherAuthSecret0000000" {
		t.Fatalf("keys not changed with the secret: %+v", w.Push)
	}
}

// A key rotation re-seals the Web Push devices' auth secrets under the new key (and seals
// those stored in clear), so that removing the old key (`keys rotate`) loses none.
func TestWebPushAuthResealed(t *testing.T) {
	ctx := context.Background()
	_, b := setup(t)
	k1, _ := seal.Generate()
	sealedOld, _, err := openStore(t, b.url, k1).CreateStream(ctx, store.NewStream{URL: "http://origin.test/a", TokenHash: []byte("a"),
		Push: webpushAddress("https://push.example/push/old-key", wpAuth), DeviceSecretHash: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	inClear, _, err := openStore(t, b.url, nil).CreateStream(ctx, store.NewStream{URL: "http://origin.test/b", TokenHash: []byte("b"),
		Push: webpushAddress("https://push.example/push/in-clear", wpClearAuth), DeviceSecretHash: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := k1.WithNewPrimary()
	if err != nil {
		t.Fatal(err)
	}
	res, err := openStore(t, b.url, k2).Reseal(ctx, store.ResealOptions{Batch: 1})
	if err != nil || res.Resealed < 1 || res.Sealed < 1 || res.Failed != 0 {
		t.Fatalf("Reseal: %+v, %v", res, err)
	}
	assertNoSecrets(t, "pg_dump --data-only", pgtest.DumpData(t, b.url), wpAuth, wpClearAuth)
	onlyNew, err := k2.PrimaryOnly()
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t, b.url, onlyNew)
	for s, want := range map[*pushproxy.Stream]string{&sealedOld: wpAuth, &inClear: wpClearAuth} {
		if w := claimDevice(t, st, *s); w.Push.WebPushAuth != want {
			t.Errorf("after the rotation, device of %s: auth %q, want %q", s.URL, w.Push.WebPushAuth, want)
		}
	}
}
