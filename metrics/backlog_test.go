package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pushproxy/pushproxy/internal/pgfill"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/metrics"
	"github.com/pushproxy/pushproxy/store"
)

// bigStore is a database of 100,000 streams (90,000 held with 11 queued events each, about
// a million events in all).
func bigStore(b *testing.B) *store.Store {
	b.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(b)
	if err := store.Migrate(ctx, url, nil); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(ctx, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	if err := pgfill.Fill(ctx, st.Pool(), pgfill.Sizes{Streams: 100000, StreamsPerDevice: 2, Ended: 10, EventsPerStream: 11}); err != nil {
		b.Fatal(err)
	}
	return st
}

// scrapeHandler is an instance's /metrics: the process's own metrics and the database-wide
// gauges.
func scrapeHandler(b *testing.B, st *store.Store) func() string {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		b.Fatal(err)
	}
	reg.MustRegister(metrics.NewBacklogCollector(st, nil))
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	return func() string {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(w.Result().Body)
		return string(body)
	}
}

// BenchmarkAt100kStreams measures, with 100,000 streams in the database, one instance's
// whole /metrics scrape (scrape: the process's metrics and the database-wide gauges, read
// from their one row whatever the number of streams), and what the leader pays every
// --gauges-interval to recompute the gauges (compute: what every scrape of every instance
// paid before they were cached). Run it with:
//
//	go test ./metrics -run '^$' -bench At100kStreams
func BenchmarkAt100kStreams(b *testing.B) {
	st := bigStore(b)
	ctx := context.Background()
	f, ok, err := st.TakeLeadership(ctx, "bench", time.Hour)
	if err != nil || !ok {
		b.Fatal(ok, err)
	}
	if err := st.RefreshGauges(ctx, f); err != nil {
		b.Fatal(err)
	}
	b.Run("scrape", func(b *testing.B) {
		scrape := scrapeHandler(b, st)
		if body := scrape(); !strings.Contains(body, `pushproxy_streams{state="held"} 90000`) {
			b.Fatalf("scrape:\n%s", body)
		}
		for b.Loop() {
			scrape()
		}
	})
	b.Run("compute", func(b *testing.B) {
		for b.Loop() {
			if err := st.RefreshGauges(ctx, f); err != nil {
				b.Fatal(err)
			}
		}
	})
}
