package store_test

import (
	"context"
	"testing"

	"github.com/pushproxy/pushproxy/internal/pgfill"
	"github.com/pushproxy/pushproxy/store"
)

// BenchmarkDashboard measures what the admin totals and the dashboard's overview cost at
// 100,000 streams (90,000 held) and a million queued events, the plans test's database:
// what a refresh reads now (totals: the gauges row; the largest and oldest backlogs: the
// rows of the streams the gauges name), what it computed before (the same lists sorted over
// every stream with a backlog, and the failing origins), and what the maintenance leader
// pays every --gauges-interval to compute the gauges:
//
//	go test ./store -run '^$' -bench Dashboard -benchtime 20x
func BenchmarkDashboard(b *testing.B) {
	ctx := context.Background()
	st := open(b, migratedDatabase(b), nil)
	if err := pgfill.Fill(ctx, st.Pool(), pgfill.Sizes{Streams: 100000, StreamsPerDevice: 2, Ended: 10,
		EventsPerStream: 11, WakeupsPerDevice: 2, PendingEvery: 2, ReadersEvery: 20}); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `VACUUM ANALYZE`); err != nil {
		b.Fatal(err)
	}
	if err := st.RefreshGauges(ctx, store.Fence{}); err != nil {
		b.Fatal(err)
	}
	run := func(name string, f func() error) {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if err := f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("refresh/totals and top lists", func() error {
		t, err := st.GetTotals(ctx)
		if err != nil {
			return err
		}
		for sort, ids := range map[string][]string{store.SortBacklog: t.LargestBacklogs, store.SortAge: t.OldestBacklogs} {
			if _, err := st.ListStreams(ctx, store.StreamFilter{Sort: sort, Limit: 10, WithBacklog: true, IDs: ids}); err != nil {
				return err
			}
		}
		return nil
	})
	run("refresh/dead devices and recent wake-ups", func() error {
		if _, err := st.DeadDevices(ctx, 10); err != nil {
			return err
		}
		_, err := st.RecentWakeups(ctx, 10)
		return err
	})
	run("before/top lists over every stream", func() error {
		for _, sort := range []string{store.SortBacklog, store.SortAge} {
			if _, err := st.ListStreams(ctx, store.StreamFilter{Sort: sort, Limit: 10, WithBacklog: true}); err != nil {
				return err
			}
		}
		return nil
	})
	run("before/failing origins", func() error { _, err := st.FailingOrigins(ctx, 10); return err })
	run("leader/compute the gauges", func() error { return st.RefreshGauges(ctx, store.Fence{}) })
}
