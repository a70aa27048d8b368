package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/origin"
)

// TestOperatorCommands runs the operator commands against an instance started in process.
func TestOperatorCommands(t *testing.T) {
	ctx := context.Background()
	o := origin.New(&origin.Options{History: 1000, Retry: 10 * time.Millisecond})
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = o.HTTPServer()
	ts.Start()
	t.Cleanup(ts.Close)
	t.Cleanup(o.Close)

	var cfg serveConfig
	cfg.flags(flag.NewFlagSet("", flag.ContinueOnError))
	cfg.Listen, cfg.AdminListen, cfg.DatabaseURL = "127.0.0.1:0", "127.0.0.1:0", pgtest.NewDatabase(t)
	cfg.Allow = listFlag{"127.0.0.0/8"}
	cfg.API.AdminToken = "op-secret"
	cfg.Maint.GaugeInterval = 100 * time.Millisecond // the totals are the leader's gauges
	cfg.Keys.File = filepath.Join(t.TempDir(), "keys.json")
	if _, _, err := seal.LoadOrCreate(cfg.Keys.File); err != nil {
		t.Fatal(err)
	}
	srv, err := openServer(ctx, cfg, slog.New(slog.DiscardHandler), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := srv.close(sctx); err != nil {
			t.Error(err)
		}
	})
	api := "http://" + srv.Addr()
	st := handoffPush(t, api, ts.URL+"/events", nil)
	for i := 0; i < 3; i++ {
		o.Emit("update", "x")
	}
	waitFor(t, "the backlog", func() bool { return streamInfo(t, api, st).Backlog == 3 })

	cli := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		env := map[string]string{"PUSHPROXY_ADMIN_TOKEN": "op-secret"}
		code := run(ctx, append(args, "--server", api), &out, &errOut, func(k string) string { return env[k] })
		return code, out.String(), errOut.String()
	}
	code, out, errOut := cli("backlog", "top")
	if code != 0 || !strings.Contains(out, "STREAM") || !strings.Contains(out, st.ID+"  held   3") {
		t.Fatalf("backlog top: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = cli("streams", "list", "--json", "--sort", "age")
	var page struct {
		Streams []struct {
			ID      string `json:"id"`
			Backlog int64  `json:"backlog"`
		} `json:"streams"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &page) != nil || len(page.Streams) != 1 || page.Streams[0].Backlog != 3 {
		t.Fatalf("streams list --json: %d %s", code, out)
	}
	code, out, _ = cli("streams", "show", st.ID)
	if code != 0 || !regexpMatch(`(?m)^backlog\s+3$`, out) || !regexpMatch(`(?m)^upstream\.connected\s+true$`, out) {
		t.Fatalf("streams show: %d\n%s", code, out)
	}
	// The totals are the maintenance leader's gauges: they may not count the events yet.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last backlog totals: %d\n%s", code, out)
		}
	})
	totals := func() bool {
		code, out, _ = cli("backlog", "totals")
		return code == 0 && regexpMatch(`(?m)^backlog_events\s+3$`, out) && regexpMatch(`(?m)^streams\.held\s+1$`, out) &&
			regexpMatch(`(?m)^computed_at\s+\d{4}-`, out)
	}
	waitFor(t, "backlog totals counting the 3 events", totals)
	bad := handoffPush(t, api, ts.URL+"/no-such-path", nil)
	waitFor(t, "the failure", func() bool { return streamInfo(t, api, bad).State == "failed" })
	code, out, _ = cli("origins", "failing")
	if code != 0 || !regexpMatch(`(?m)^HOST\s+HELD\s+DISCONNECTED\s+FAILED`, out) || !regexpMatch(`(?m)^127\.0\.0\.1\s+1\s+0\s+1\s+\S+\s+origin answered 404`, out) {
		t.Fatalf("origins failing: %d\n%s", code, out)
	}
	for _, cmd := range [][]string{{"devices", "dead"}, {"wakeups", "recent"}} {
		if code, out, errOut := cli(cmd...); code != 0 || strings.Count(out, "\n") != 1 {
			t.Fatalf("%v with none to show: %d\n%s%s", cmd, code, out, errOut)
		}
	}
	code, out, _ = cli("streams", "close", st.ID)
	if code != 0 || !strings.Contains(out, "closed "+st.ID) || !strings.Contains(out, "3 queued events discarded") {
		t.Fatalf("streams close: %d %s", code, out)
	}
	// Errors are clear and exit non-zero.
	if code, _, errOut := cli("devices", "show", "00000000-0000-0000-0000-000000000000"); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("unknown device: %d %s", code, errOut)
	}
	var out2, errOut2 bytes.Buffer
	if code := run(ctx, []string{"backlog", "top", "--server", api}, &out2, &errOut2, func(string) string { return "" }); code != 1 || !strings.Contains(errOut2.String(), "admin token is required") {
		t.Fatalf("no token: %d %s", code, errOut2.String())
	}
	if code, _, _ := cli("streams", "show"); code != 2 {
		t.Fatalf("show without an id: %d", code)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
