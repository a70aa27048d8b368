package store_test

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

func secretHash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// TestFirstHandoffOfADeviceWinsOnce: handoffs racing to create one device (each bringing a
// secret of its own, none presenting one) make one device with one secret; every other is
// refused as needing that secret, and the device's attributes are the winner's.
func TestFirstHandoffOfADeviceWinsOnce(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	const n = 8
	var (
		wg      sync.WaitGroup
		errs    = make([]error, n)
		streams = make([]pushproxy.Stream, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			push := &pushproxy.PushAddress{Platform: "apns", Token: "ab12", Topic: "topic-" + itoa(int64(i)), Environment: "production"}
			streams[i], _, errs[i] = st.CreateStream(ctx, store.NewStream{
				URL: "http://o.test/", TokenHash: []byte("h"), Push: push, DeviceSecretHash: secretHash("secret-" + itoa(int64(i))),
			})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch code := pushproxy.ErrorCode(err); code {
		case "":
			if winner >= 0 {
				t.Fatalf("handoffs %d and %d both created the device", winner, i)
			}
			winner = i
		case pushproxy.EDEVICESECRETREQUIRED:
		default:
			t.Fatalf("handoff %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no handoff created the device")
	}
	var topic string
	var hash []byte
	if err := st.Pool().QueryRow(ctx, `SELECT topic, secret_hash FROM devices WHERE token = 'ab12'`).Scan(&topic, &hash); err != nil {
		t.Fatal(err)
	}
	if topic != "topic-"+itoa(int64(winner)) || string(hash) != string(secretHash("secret-"+itoa(int64(winner)))) {
		t.Fatalf("device topic %q, not the winner's (%d)", topic, winner)
	}
	// The winner's secret opens it; a loser's does not.
	push := &pushproxy.PushAddress{Platform: "apns", Token: "ab12", Topic: topic, Environment: "production"}
	_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push,
		DeviceSecretHash: secretHash("secret-" + itoa(int64((winner+1)%n))), DeviceSecretGiven: true})
	if pushproxy.ErrorCode(err) != pushproxy.EDEVICESECRETMISMATCH {
		t.Fatalf("a loser's secret: %v", err)
	}
	s, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), Push: push,
		DeviceSecretHash: secretHash("secret-" + itoa(int64(winner))), DeviceSecretGiven: true})
	if err != nil || s.DeviceID != streams[winner].DeviceID {
		t.Fatalf("the winner's secret: %v (device %s, want %s)", err, s.DeviceID, streams[winner].DeviceID)
	}
}

// TestStreamsPerKeyAreBounded: concurrent handoffs under one API key never hold more than
// the bound; another key and keyless handoffs are not counted.
func TestStreamsPerKeyAreBounded(t *testing.T) {
	t.Parallel()
	st, _ := setup(t)
	ctx := context.Background()
	key, other := secretHash("key-1"), secretHash("key-2")
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: key, MaxPerKey: 3})
			switch pushproxy.ErrorCode(err) {
			case "":
				mu.Lock()
				ok++
				mu.Unlock()
			case pushproxy.EKEYLIMIT:
			default:
				t.Errorf("handoff: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != 3 {
		t.Fatalf("%d streams held under a key bounded to 3", ok)
	}
	for _, k := range [][]byte{other, nil} {
		if _, _, err := st.CreateStream(ctx, store.NewStream{URL: "http://o.test/", TokenHash: []byte("h"), APIKeyHash: k, MaxPerKey: 3}); err != nil {
			t.Fatalf("another key's handoff: %v", err)
		}
	}
}
