package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushproxy/pushproxy/store"
)

// BacklogCollector reads the database-wide backlog gauges from Postgres at each scrape. Every
// instance reports the same values: aggregate them across instances with max(), not sum().
type BacklogCollector struct {
	st      *store.Store
	log     *slog.Logger
	timeout time.Duration

	streams, connected, events, bytes, oldest *prometheus.Desc
	ages                                      *prometheus.Desc
}

var ageBuckets = []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600}

// NewBacklogCollector returns a collector over st; register it on the same registry.
func NewBacklogCollector(st *store.Store, log *slog.Logger) *BacklogCollector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BacklogCollector{
		st: st, log: log, timeout: 10 * time.Second,
		streams:   prometheus.NewDesc("pushproxy_streams", "Streams by state (database-wide).", []string{"state"}, nil),
		connected: prometheus.NewDesc("pushproxy_upstreams_connected", "Held streams whose upstream is connected (database-wide).", nil, nil),
		events:    prometheus.NewDesc("pushproxy_backlog_events", "Events queued and not yet read, in total (database-wide).", nil, nil),
		bytes:     prometheus.NewDesc("pushproxy_backlog_bytes", "Stored bytes (effective id + type + data) of the events queued and not yet read, in total (database-wide).", nil, nil),
		oldest:    prometheus.NewDesc("pushproxy_oldest_unread_event_age_seconds", "Age of the oldest unread event of any stream (database-wide; 0 when none).", nil, nil),
		ages:      prometheus.NewDesc("pushproxy_stream_oldest_unread_event_age_seconds", "Over streams with a backlog: the age of each one's oldest unread event (database-wide).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *BacklogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.streams, c.connected, c.events, c.bytes, c.oldest, c.ages} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *BacklogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	b, err := c.st.GetBacklogStats(ctx)
	if err != nil {
		c.log.Warn("backlog metrics unavailable", slog.String("error", err.Error()))
		ch <- prometheus.NewInvalidMetric(c.events, err)
		return
	}
	for state, n := range b.Streams {
		ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(b.Connected))
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(b.Events))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(b.Bytes))
	var oldest, sum float64
	counts := make(map[float64]uint64, len(ageBuckets))
	for _, a := range b.OldestAges {
		s := a.Seconds()
		oldest = max(oldest, s)
		sum += s
		for _, ub := range ageBuckets {
			if s <= ub {
				counts[ub]++
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest)
	ch <- prometheus.MustNewConstHistogram(c.ages, uint64(len(b.OldestAges)), sum, counts)
}
