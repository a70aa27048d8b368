// Package metrics exposes what the proxy and the wake-up scheduler measure as Prometheus
// metrics, registered on a registry the caller passes in (no global state). No label ever
// carries a token, a URL or a device id.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/maintenance"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

// Metrics implements proxy.Metrics, api.Metrics and wakeup.Metrics.
type Metrics struct {
	reconnects      *prometheus.CounterVec
	eventsCommitted prometheus.Counter
	bytesCommitted  prometheus.Counter
	commits         prometheus.Counter
	commitSeconds   prometheus.Histogram
	wakeups         *prometheus.CounterVec
	pushSeconds     *prometheus.HistogramVec
	requests        *prometheus.CounterVec
	requestSeconds  *prometheus.HistogramVec
	retention       *prometheus.CounterVec
	leader          prometheus.Gauge
}

var (
	_ proxy.Metrics       = (*Metrics)(nil)
	_ api.Metrics         = (*Metrics)(nil)
	_ wakeup.Metrics      = (*Metrics)(nil)
	_ maintenance.Metrics = (*Metrics)(nil)
)

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pushproxy_upstream_reconnects_total",
			Help: "Upstream reconnects, by why the previous connection ended (connect, status, eof, read, idle).",
		}, []string{"reason"}),
		eventsCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pushproxy_events_committed_total",
			Help: "Upstream events committed to Postgres.",
		}),
		bytesCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pushproxy_event_bytes_committed_total",
			Help: "Stored bytes (effective id + type + data) of the upstream events committed to Postgres.",
		}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pushproxy_commits_total",
			Help: "Batch commits of upstream events and stream state.",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pushproxy_commit_duration_seconds",
			Help:    "Time one batch commit took.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		wakeups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pushproxy_wakeups_total",
			Help: "Wake-ups handled, by platform and outcome (sent, token-gone, throttled, retry, credentials, invalid, awake, nothing-pending, dead, no-sender, budget).",
		}, []string{"platform", "outcome"}),
		pushSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pushproxy_push_latency_seconds",
			Help:    "Time from a wake-up being due to the platform's answer, for pushes sent.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"platform"}),
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pushproxy_http_requests_total",
		Help: "API requests, by route pattern, method and status.",
	}, []string{"route", "method", "status"})
	m.requestSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pushproxy_http_request_duration_seconds",
		Help:    "API request duration by route pattern (event streams last as long as the reader stays).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, []string{"route"})
	m.retention = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pushproxy_retention_rows_total",
		Help: "Rows deleted or closed by this instance's maintenance (while it led), by rule (closed_streams, closed_events, idle_streams, backlog_age, dead_streams, dead_devices, orphan_devices, wakeup_history, gone_instances).",
	}, []string{"rule"})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pushproxy_maintenance_leader",
		Help: "1 while this instance is the maintenance leader (runs retention and computes the database-wide gauges), else 0.",
	})
	for _, c := range []prometheus.Collector{m.reconnects, m.eventsCommitted, m.bytesCommitted, m.commits, m.commitSeconds, m.wakeups, m.pushSeconds, m.requests, m.requestSeconds, m.retention, m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Reconnect counts an upstream reconnect.
func (m *Metrics) Reconnect(kind string) { m.reconnects.WithLabelValues(kind).Inc() }

// Committed records one batch commit.
func (m *Metrics) Committed(res store.CommitResult, _ int, took time.Duration) {
	m.eventsCommitted.Add(float64(res.Events))
	m.bytesCommitted.Add(float64(res.Bytes))
	m.commits.Inc()
	m.commitSeconds.Observe(took.Seconds())
}

// Request counts an API request.
func (m *Metrics) Request(route, method string, status int, took time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.requestSeconds.WithLabelValues(route).Observe(took.Seconds())
}

// Wakeup counts a wake-up's outcome, and the push latency of those the platform answered.
func (m *Metrics) Wakeup(platform, outcome string, latency time.Duration) {
	m.wakeups.WithLabelValues(platform, outcome).Inc()
	if latency > 0 {
		m.pushSeconds.WithLabelValues(platform).Observe(latency.Seconds())
	}
}

// Retention counts rows deleted or closed by a maintenance rule.
func (m *Metrics) Retention(rule string, n int64) { m.retention.WithLabelValues(rule).Add(float64(n)) }

// Leading records whether this instance leads maintenance.
func (m *Metrics) Leading(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.leader.Set(v)
}
