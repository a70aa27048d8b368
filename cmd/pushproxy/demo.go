package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/seal"
	"github.com/pushproxy/pushproxy/origin"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/wakeup"
	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
)

// demoConfig is what `pushproxy demo` is told.
type demoConfig struct {
	Sleep       time.Duration
	Rate        float64
	DatabaseURL string
	Log         logConfig
}

// timeline prints what happens, with the time since the demo started.
type timeline struct {
	w     io.Writer
	start time.Time
}

func (t *timeline) say(who, format string, args ...any) {
	fmt.Fprintf(t.w, "%6.2fs  %-8s %s\n", time.Since(t.start).Seconds(), who, fmt.Sprintf(format, args...))
}

// demoPrefix is the environment prefix of the demo's flags: the demo reads none of serve's
// variables (PUSHPROXY_DATABASE_URL, PUSHPROXY_LOG_LEVEL...), so that trying it on a machine
// configured for serve cannot touch serve's database.
const demoPrefix = "PUSHPROXY_DEMO_"

func demoCommand() command {
	return command{
		name:    "demo",
		summary: "run origin, proxy, Postgres and a sleeping device here; print the timeline",
		about: `Runs the reference origin, the proxy on a throwaway Postgres, a fake FCM, and a device
that hands off its stream, sleeps until its silent push arrives, fetches its backlog, reads
live, and takes the stream back; prints the timeline. Its flags' variables are its own,
PUSHPROXY_DEMO_*: it reads none of serve's.`,
		prefix: demoPrefix,
		setup: func(fs *flag.FlagSet) runFunc {
			var cfg demoConfig
			cfg.flags(fs)
			return func(ctx context.Context, _ []string, stdout, stderr io.Writer, _ func(string) string) int {
				if err := demo(ctx, cfg, cfg.Log.logger(stderr), stdout); err != nil {
					fmt.Fprintln(stderr, "pushproxy demo:", err)
					return 1
				}
				return 0
			}
		},
	}
}

func (c *demoConfig) flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Sleep, "sleep", 5*time.Second, "how long the device sleeps: the proxy waits this long after the first event (the wake-up debounce) before it wakes the device")
	fs.Float64Var(&c.Rate, "rate", 4, "events per second the reference origin publishes")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "Postgres database to run on (empty: a throwaway local cluster)")
	c.Log.flags(fs, "error") // the proxy's own log, on stderr; the timeline goes to stdout
}

func demo(ctx context.Context, cfg demoConfig, log *slog.Logger, stdout io.Writer) error {
	tl := &timeline{w: stdout, start: time.Now()}

	url := cfg.DatabaseURL
	if url == "" {
		tl.say("postgres", "starting a throwaway cluster from the installed server binaries")
		pg, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Logger: log})
		if err != nil {
			return err
		}
		defer pg.Stop()
		if err := pg.CreateDatabase(ctx, "pushproxy"); err != nil {
			return err
		}
		url = pg.URL("pushproxy")
		tl.say("postgres", "running on a Unix socket in %s", pg.SocketDir())
	}

	org := origin.New(&origin.Options{Rate: cfg.Rate, Retry: time.Second, History: 10000, Heartbeat: 15 * time.Second, Symbols: 8, Seed: 1})
	org.Start(ctx)
	defer org.Close()
	base, stopOrigin, err := org.ServeLoopback()
	if err != nil {
		return err
	}
	defer stopOrigin()
	originURL := base + "/events"
	tl.say("origin", "stock ticker serving plain SSE at %s, %.0f events/s", originURL, cfg.Rate)

	// A fake FCM stands in for Google: it checks every push as FCM does and records it.
	fcm := fakefcm.New(fakefcm.Options{ProjectID: "pushproxy-demo"})
	if err := fcm.Start(); err != nil {
		return err
	}
	defer fcm.Close()
	dir, err := os.MkdirTemp("", "pushproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	credFile := filepath.Join(dir, "fcm.json")
	if err := fcm.WriteCredentials(credFile); err != nil {
		return err
	}
	tl.say("fcm", "fake Firebase Cloud Messaging at %s", fcm.URL())
	keyFile := filepath.Join(dir, "secret-keys.json")
	if _, _, err := seal.LoadOrCreate(keyFile); err != nil {
		return err
	}

	var sc serveConfig
	sc.flags(flag.NewFlagSet("", flag.ContinueOnError)) // the defaults
	sc.Listen, sc.AdminListen, sc.DatabaseURL = "127.0.0.1:0", "", url
	sc.Allow = listFlag{"127.0.0.0/8"}
	sc.Keys.File = keyFile
	sc.API.Heartbeat = 15 * time.Second
	sc.Wake.Debounce, sc.Wake.Sched.Jitter = cfg.Sleep, time.Millisecond
	sc.Wake.FCM = wakeup.FCMOptions{CredentialsFile: credFile, URL: fcm.URL()}
	srv, err := openServer(ctx, sc, log, func(string) string { return "" })
	if err != nil {
		return err
	}
	defer srv.close(context.WithoutCancel(ctx))
	api := "http://" + srv.Addr()
	tl.say("proxy", "pushproxy API at %s (instance %s)", api, srv.svc.InstanceID())

	// 1. The device is awake and reads the origin directly, as any EventSource would.
	first, err := readSSE(ctx, originURL, "", 3)
	if err != nil {
		return err
	}
	for _, ev := range first {
		tl.say("device", "from origin: id=%s event=%s data=%s", ev.LastEventID, typeName(ev.Type), abbreviate(ev.Data))
	}
	lastID := first[len(first)-1].LastEventID

	// 2. It is going to sleep: hand the stream off.
	// A made-up FCM registration token of the real shape (an installation id, ":", then
	// base64url): the proxy refuses tokens of other shapes.
	deviceToken := "dEmOdEvIcE0001InstallId:APA91b" + strings.Repeat("DemoRegistrationToken_-", 6)
	body := fmt.Sprintf(`{"url": %q, "last_event_id": %q, "push": {"platform": "fcm", "token": %q}}`, originURL, lastID, deviceToken)
	var ho struct {
		ID        string `json:"id"`
		Token     string `json:"token"`
		EventsURL string `json:"events_url"`
		State     string `json:"state"`
	}
	if err := doJSON(ctx, http.MethodPost, api+"/v1/streams", "", body, http.StatusCreated, &ho); err != nil {
		return err
	}
	ho.EventsURL = api + ho.EventsURL // carries ?token=
	tl.say("device", "hands off its stream (Last-Event-ID %s) and sleeps: stream %s, state %s", lastID, ho.ID, ho.State)

	// 3. While it sleeps, the proxy holds the upstream and queues.
	var st struct {
		Backlog       int64   `json:"backlog"`
		NewestEventID *string `json:"newest_event_id"`
		Upstream      struct {
			Connected bool `json:"connected"`
			Status    int  `json:"status"`
		} `json:"upstream"`
	}
	pushed := make(chan fakefcm.Message, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, cfg.Sleep+time.Minute)
		defer cancel()
		if ms, err := fcm.WaitFor(wctx, 1); err == nil {
			pushed <- ms[0]
		}
		close(pushed)
	}()
	var push fakefcm.Message
	for asleep := true; asleep; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m, ok := <-pushed:
			if !ok {
				return fmt.Errorf("no wake-up push arrived")
			}
			push, asleep = m, false
			continue
		case <-time.After(time.Second):
		}
		if err := doJSON(ctx, http.MethodGet, api+"/v1/streams/"+ho.ID, ho.Token, "", http.StatusOK, &st); err != nil {
			return err
		}
		newest := "-"
		if st.NewestEventID != nil {
			newest = *st.NewestEventID
		}
		tl.say("proxy", "upstream connected=%v status=%d; queued %d events in Postgres, newest id %s", st.Upstream.Connected, st.Upstream.Status, st.Backlog, newest)
	}

	// 4. The proxy wakes it with one silent push, and it fetches the backlog as JSON pages.
	tl.say("fcm", "silent push to the device: priority %s, data %v (counts only: no event data, no URLs)", push.Android.Priority, push.Data)
	tl.say("device", "wakes and fetches its backlog after id %s", lastID)
	got, after := 0, lastID
	for {
		var page struct {
			Events []struct{ ID, Event, Data string } `json:"events"`
			More   bool                               `json:"more"`
			Gap    bool                               `json:"gap"`
		}
		u := ho.EventsURL + "&limit=100&last_event_id=" + after
		if err := doJSON(ctx, http.MethodGet, u, "", "", http.StatusOK, &page, "Accept", "application/json"); err != nil {
			return err
		}
		for _, ev := range page.Events {
			if got < 3 || !page.More && ev.ID == page.Events[len(page.Events)-1].ID {
				tl.say("device", "from proxy: id=%s event=%s data=%s", ev.ID, ev.Event, abbreviate(ev.Data))
			} else if got == 3 {
				tl.say("device", "...")
			}
			if err := checkNext(after, ev.ID); err != nil {
				return err
			}
			after = ev.ID
			got++
		}
		if !page.More {
			break
		}
	}
	tl.say("device", "read %d queued events, ids consecutive from the origin's: nothing lost, nothing doubled", got)

	// 5. While awake it reads live through the proxy's EventSource endpoint.
	live, err := readSSE(ctx, ho.EventsURL, after, 2)
	if err != nil {
		return err
	}
	for _, ev := range live {
		if err := checkNext(after, ev.LastEventID); err != nil {
			return err
		}
		after = ev.LastEventID
		tl.say("device", "live via proxy: id=%s event=%s data=%s", ev.LastEventID, typeName(ev.Type), abbreviate(ev.Data))
	}

	// 6. It takes the stream back and reconnects to the origin itself.
	var cl struct {
		LastEventID string `json:"last_event_id"`
		Discarded   int64  `json:"discarded"`
	}
	if err := doJSON(ctx, http.MethodDelete, api+"/v1/streams/"+ho.ID+"?last_event_id="+after, ho.Token, "", http.StatusOK, &cl); err != nil {
		return err
	}
	tl.say("device", "takes the stream back: resume the origin at id %s (%d queued events discarded unread)", cl.LastEventID, cl.Discarded)
	back, err := readSSE(ctx, originURL, cl.LastEventID, 1)
	if err != nil {
		return err
	}
	if err := checkNext(cl.LastEventID, back[0].LastEventID); err != nil {
		return err
	}
	tl.say("device", "from origin again: id=%s event=%s data=%s", back[0].LastEventID, typeName(back[0].Type), abbreviate(back[0].Data))
	tl.say("demo", "done")
	return nil
}

// checkNext checks that id follows prev in the origin's numbering.
func checkNext(prev, id string) error {
	p, err1 := strconv.Atoi(prev)
	n, err2 := strconv.Atoi(id)
	if err1 != nil || err2 != nil || n != p+1 {
		return fmt.Errorf("event id %s does not follow %s", id, prev)
	}
	return nil
}

func readSSE(ctx context.Context, url, lastID string, n int) ([]sse.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := sse.NewParser(resp.Body, nil)
	var evs []sse.Event
	for len(evs) < n {
		ev, err := p.Next()
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", url, err)
		}
		if ev.Type == "snapshot" {
			continue // a fresh connect starts with the ticker's snapshot
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

func doJSON(ctx context.Context, method, url, token, body string, want int, out any, header ...string) error {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, out)
}

func typeName(t string) string {
	if t == "" {
		return "message"
	}
	return t
}

func abbreviate(s string) string {
	if len(s) > 70 {
		return s[:67] + "..."
	}
	return s
}
