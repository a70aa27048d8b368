package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushproxy/pushproxy/store"
)

// BacklogCollector reports the database-wide backlog gauges. The maintenance leader computes
// them every few seconds into one row (store.RefreshGauges); a scrape reads that row, so it
// costs the same at ten streams or ten million, and every instance reports the same values:
// aggregate them across instances with max(), not sum().
type BacklogCollector struct {
	st      *store.Store
	log     *slog.Logger
	timeout time.Duration

	streams, connected, events, bytes, oldest *prometheus.Desc
	ages, computed                            *prometheus.Desc
}

// NewBacklogCollector returns a collector over st; register it on the same registry.
func NewBacklogCollector(st *store.Store, log *slog.Logger) *BacklogCollector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BacklogCollector{
		st: st, log: log, timeout: 5 * time.Second,
		streams:   prometheus.NewDesc("pushproxy_streams", "Streams by state (database-wide).", []string{"state"}, nil),
		connected: prometheus.NewDesc("pushproxy_upstreams_connected", "Held streams whose upstream is connected (database-wide).", nil, nil),
		events:    prometheus.NewDesc("pushproxy_backlog_events", "Events queued and not yet read, in total (database-wide).", nil, nil),
		bytes:     prometheus.NewDesc("pushproxy_backlog_bytes", "Stored bytes (effective id + type + data) of the events queued and not yet read, in total (database-wide).", nil, nil),
		oldest:    prometheus.NewDesc("pushproxy_oldest_unread_event_age_seconds", "Age of the oldest unread event of any stream (database-wide; 0 when none).", nil, nil),
		ages:      prometheus.NewDesc("pushproxy_stream_oldest_unread_event_age_seconds", "Over streams with a backlog: the age of each one's oldest unread event (database-wide).", nil, nil),
		computed:  prometheus.NewDesc("pushproxy_gauges_computed_timestamp_seconds", "When the maintenance leader last computed the database-wide gauges (Unix time): they are as of then.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *BacklogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.streams, c.connected, c.events, c.bytes, c.oldest, c.ages, c.computed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *BacklogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	g, ok, err := c.st.GetGauges(ctx)
	if err != nil {
		c.log.Warn("backlog metrics unavailable", slog.String("error", err.Error()))
		ch <- prometheus.NewInvalidMetric(c.events, err)
		return
	}
	if !ok {
		return // no leader has computed them yet
	}
	for state, n := range g.Streams {
		ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(g.Connected))
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(g.Events))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(g.Bytes))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, g.OldestAge)
	counts := make(map[float64]uint64, len(store.GaugeAgeBuckets))
	for i, ub := range store.GaugeAgeBuckets {
		if i < len(g.AgeCounts) {
			counts[ub] = g.AgeCounts[i]
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.ages, g.AgeCount, g.AgeSum, counts)
	ch <- prometheus.MustNewConstMetric(c.computed, prometheus.GaugeValue, float64(g.ComputedAt.UnixNano())/1e9)
}
