package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
)

// databaseGauges returns the lines of the database-wide gauges in a /metrics text, and the
// time they were computed.
func databaseGauges(m string) (lines []string, computed string) {
	for _, l := range strings.Split(m, "\n") {
		for _, name := range []string{"pushproxy_streams{", "pushproxy_upstreams_connected ", "pushproxy_backlog_",
			"pushproxy_oldest_unread_event_age_seconds ", "pushproxy_stream_oldest_unread_event_age_seconds",
			"pushproxy_gauges_computed_timestamp_seconds "} {
			if strings.HasPrefix(l, name) {
				lines = append(lines, l)
			}
		}
		if strings.HasPrefix(l, "pushproxy_gauges_computed_timestamp_seconds ") {
			computed = l
		}
	}
	return lines, computed
}

var leaderGauge = regexp.MustCompile(`\npushproxy_maintenance_leader (\d)\n`)

func leads(t *testing.T, px *process) bool {
	t.Helper()
	m := leaderGauge.FindStringSubmatch(metricsText(t, px))
	return m != nil && m[1] == "1"
}

// TestTwoServicesOneMaintenanceLeader: two `pushproxy serve` on one database: exactly one
// leads maintenance; both serve the same database-wide gauges (the leader's one row); the
// leader is killed (SIGKILL: its lease is not given up) and the other takes over within a
// lease and keeps the gauges current.
func TestTwoServicesOneMaintenanceLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	db := pgtest.NewDatabase(t)
	originURL, _ := startOrigin(t, "--rate", "50", "--retry", "10ms")
	lease := 2 * time.Second
	args := func(id string) []string {
		return []string{"--instance-id", id, "--lease-ttl", lease.String(), "--claim-interval", "100ms"}
	}
	apiA, pa := startProxy(t, db, args("maint-a")...)
	_, pb := startProxy(t, db, args("maint-b")...)
	for range 3 {
		handoffURL(t, apiA, originURL+"/events")
	}
	waitFor(t, "a maintenance leader", func() bool { return leads(t, pa) || leads(t, pb) })
	leader, follower := pa, pb
	if leads(t, pb) {
		leader, follower = pb, pa
	}
	if leads(t, follower) {
		t.Fatal("both instances lead maintenance")
	}
	// The same gauges on both: scraped as of the same computation, every line is equal.
	waitFor(t, "both instances to serve one computation of the gauges", func() bool {
		la, ca := databaseGauges(metricsText(t, leader))
		lb, cb := databaseGauges(metricsText(t, follower))
		if ca == "" || ca != cb {
			return false // the leader recomputed between the two scrapes
		}
		if strings.Join(la, "\n") != strings.Join(lb, "\n") {
			t.Fatalf("the instances' gauges differ:\n%s\n--\n%s", strings.Join(la, "\n"), strings.Join(lb, "\n"))
		}
		return strings.Contains(strings.Join(la, "\n"), `pushproxy_streams{state="held"} 3`)
	})

	leader.kill()
	killed := time.Now()
	waitFor(t, "the other instance to lead", func() bool { return leads(t, follower) })
	if took := time.Since(killed); took > 2*lease {
		t.Errorf("the takeover took %s with a %s lease", took, lease)
	}
	_, before := databaseGauges(metricsText(t, follower))
	waitFor(t, "gauges from the new leader", func() bool {
		_, now := databaseGauges(metricsText(t, follower))
		return now != before
	})
}
