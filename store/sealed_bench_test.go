package store_test

import (
	"context"
	"testing"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/store"
)

// BenchmarkHandoffSealing measures the store's side of a handoff (device upsert, stream
// insert) with three forwarded headers and a query, sealed and in clear, from parallel
// clients as the API serves them:
//
//	go test ./store -run '^$' -bench HandoffSealing -count 5
func BenchmarkHandoffSealing(b *testing.B) {
	for _, mode := range []string{"clear", "sealed"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			url := pgtest.NewDatabase(b)
			if err := store.Migrate(ctx, url, nil); err != nil {
				b.Fatal(err)
			}
			o := &store.Options{MaxConns: 8}
			if mode == "sealed" {
				k, err := seal.Generate()
				if err != nil {
					b.Fatal(err)
				}
				o.Sealer = k
			}
			st, err := store.Open(ctx, url, o)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			b.SetParallelism(4) // 4 × GOMAXPROCS concurrent handoffs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _, err := st.CreateStream(ctx, store.NewStream{URL: sealedURL, Headers: sealedHeaders, TokenHash: []byte("h")})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handoffs/s")
		})
	}
}
