package store_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/store"
)

// BenchmarkHandoffKeyed measures the store's side of a handoff as the API makes it with an
// API key and a push address (a new device, the device quota, the key's stream quota, the
// stream), from parallel clients, against the same without the key's quota:
//
//	go test ./store -run '^$' -bench HandoffKeyed -count 5
func BenchmarkHandoffKeyed(b *testing.B) {
	for _, mode := range []string{"unkeyed", "keyed"} {
		b.Run(mode, func(b *testing.B) {
			st := open(b, migratedDatabase(b), &store.Options{MaxConns: 8})
			benchHandoffs(b, st, func(i int64) store.NewStream {
				ns := store.NewStream{URL: "https://origin.example/events", TokenHash: []byte("h"), LeaseOwner: owner,
					Push:             &pushproxy.PushAddress{Platform: "apns", Token: fmt.Sprintf("%064x", i)},
					MaxPerDevice:     10,
					DeviceSecretHash: []byte(fmt.Sprint("secret", i))}
				if mode == "keyed" {
					ns.APIKeyHash, ns.MaxPerKey = []byte("bench-key-hash"), 100000000
				}
				return ns
			})
		})
	}
}

// benchHandoffs runs handoffs (the i-th made by handoff(i), from 1) from 4 × GOMAXPROCS
// parallel clients, as the API serves them, and reports them per second.
func benchHandoffs(b *testing.B, st *store.Store, handoff func(i int64) store.NewStream) {
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := st.CreateStream(ctx, handoff(n.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handoffs/s")
}
