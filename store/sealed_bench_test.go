package store_test

import (
	"testing"

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
			o := &store.Options{MaxConns: 8}
			if mode == "sealed" {
				k, err := seal.Generate()
				if err != nil {
					b.Fatal(err)
				}
				o.Sealer = k
			}
			st := open(b, migratedDatabase(b), o)
			benchHandoffs(b, st, func(int64) store.NewStream {
				return store.NewStream{URL: sealedURL, Headers: sealedHeaders, TokenHash: []byte("h")}
			})
		})
	}
}
