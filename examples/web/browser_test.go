// The example web app in headless Chromium against the real proxy (cmd/pushproxy, built by
// the test), the reference origin and the fake Web Push service: the page registers its
// service worker and a push subscription, sleeps through the proxy, the proxy sends a Web
// Push that the fake decrypts, the test delivers that payload to the service worker
// (DevTools ServiceWorker.deliverPushMessage), and the page receives every event of the
// backlog exactly once, in order. Then CORS: a page of an origin in --cors-origins reads an
// events_url, a page of another origin cannot.
//
// Needs node (and `npm ci` in this directory, for esbuild) and Chromium; the test skips
// without them unless PUSHPROXY_REQUIRE_BROWSER is set (CI), and then fails.
package web_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/SherClockHolmes/webpush-go"
	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/serviceworker"
	"github.com/chromedp/chromedp"

	"github.com/pushproxy/pushproxy/internal/browsertest"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/origin"
	"github.com/pushproxy/pushproxy/wakeup/fakewebpush"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// need fails the test under PUSHPROXY_REQUIRE_BROWSER (CI), else skips it.
func need(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("PUSHPROXY_REQUIRE_BROWSER") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// buildExample bundles the example (build.mjs, esbuild) into a new directory.
func buildExample(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		need(t, "no node on PATH: the example is built with node and esbuild")
	}
	if _, err := os.Stat("node_modules/esbuild"); err != nil {
		need(t, "examples/web/node_modules/esbuild is missing: run npm ci in examples/web")
	}
	dir := t.TempDir()
	if out, err := exec.Command(node, "build.mjs", "--outdir="+dir).CombinedOutput(); err != nil {
		t.Fatalf("building the example: %v\n%s", err, out)
	}
	return dir
}

// buildProxy builds cmd/pushproxy.
func buildProxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pushproxy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/pushproxy")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/pushproxy: %v\n%s", err, out)
	}
	return bin
}

// lines collects a process's output, and signals when a line matches.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// start runs cmd until the test ends (SIGTERM) and answers the first submatch of re in its
// output, once a line matches.
func start(t *testing.T, what string, cmd *exec.Cmd, re *regexp.Regexp) string {
	t.Helper()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := &lines{}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.mu.Lock()
			out.all = append(out.all, sc.Text())
			out.mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out)
		}
	})
	select {
	case m := <-found:
		return m
	case err := <-exited:
		t.Fatalf("%s exited: %v\n%s", what, err, out)
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not start in 60 s\n%s", what, out)
	}
	return ""
}

// startProxy runs `pushproxy serve` with args on a fresh database and answers its API's base
// URL once it serves.
func startProxy(t *testing.T, bin string, args ...string) string {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "secret-keys.json")
	if out, err := exec.Command(bin, "keys", "generate", "--secret-key-file", keys).CombinedOutput(); err != nil {
		t.Fatalf("keys generate: %v\n%s", err, out)
	}
	args = append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--database-url", pgtest.NewDatabase(t), "--secret-key-file", keys,
		"--upstream-allow", "127.0.0.1", "--shutdown-timeout", "5s"}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // only the flags count
	return "http://" + start(t, "pushproxy", cmd, regexp.MustCompile(`msg="pushproxy serving" addr=(\S+)`))
}

// serveExample runs serve.mjs: the built example in dist, and /events passed through to
// the origin. It answers the app's base URL.
func serveExample(t *testing.T, dist, origin string) string {
	t.Helper()
	cmd := exec.Command("node", "serve.mjs", "--port=0", "--dir="+dist, "--origin="+origin)
	return start(t, "serve.mjs", cmd, regexp.MustCompile(`listening on (http://\S+)`))
}

// serve serves h on l until the test ends.
func serve(t *testing.T, l net.Listener, h http.Handler) string {
	t.Helper()
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "http://" + l.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// newBrowser starts headless Chromium (flags for a machine without network, as root).
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	bin := browsertest.Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	return ctx
}

// eval evaluates expr in the page (awaiting a promise) into T.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	step, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(step, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// poll waits until expr is truthy in the page.
func poll(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	step, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := chromedp.Run(step, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({seen: example.seen.slice(-20), errors: example.errors, sub: example.subscribeError})`))
		t.Fatalf("waiting for %s: %v (page: %s)", what, err, state)
	}
}

type seen struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data string `json:"data"`
}

func TestExampleSleepsAndIsWokenByWebPush(t *testing.T) {
	ctx := newBrowser(t)
	dist := buildExample(t)
	bin := buildProxy(t)

	// The ticker, and the app's own origin (serve.mjs), which serves the page, its service
	// worker and the ticker's /events.
	ticker := origin.New(&origin.Options{Symbols: 5, Rate: 0, History: 10000, Retry: 50 * time.Millisecond, Heartbeat: time.Second})
	ticker.Start(context.Background())
	t.Cleanup(ticker.Close)
	tickerURL, stopTicker, err := ticker.ServeLoopback()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopTicker)
	app := serveExample(t, dist, tickerURL)
	otherL, strangerL := listen(t), listen(t)
	blank := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<!doctype html><title>another origin</title>")
	})
	other := serve(t, otherL, blank)       // in --cors-origins
	stranger := serve(t, strangerL, blank) // not in it

	push := fakewebpush.New(fakewebpush.Options{})
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(push.Close)

	vapidPublic, vapidPrivate := vapidKeys(t)
	vapidKeyFile := filepath.Join(t.TempDir(), "vapid")
	if err := os.WriteFile(vapidKeyFile, []byte(vapidPrivate), 0o600); err != nil {
		t.Fatal(err)
	}
	proxy := startProxy(t, bin,
		"--cors-origins", app+","+other,
		"--wake-debounce", "100ms",
		"--webpush-endpoints", push.URL(),
		"--vapid-private-key-file", vapidKeyFile, "--vapid-subject", "mailto:test@example.com",
	)

	// Notifications are allowed (the service worker shows one for urgent events).
	if _, err := chromedp.CallBrowser(ctx, browser.SetPermission, browser.SetPermissionParams{
		Permission: &browser.PermissionDescriptor{Name: "notifications"}, Setting: browser.PermissionSettingGranted, Origin: app}); err != nil {
		t.Fatal(err)
	}
	// The service worker's registration id, for deliverPushMessage.
	regs := make(chan serviceworker.RegistrationID, 16)
	evctx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	events := chromedp.Events(evctx, serviceworker.WorkerRegistrationUpdated)
	if _, err := chromedp.Call(ctx, serviceworker.Enable, cdp.Empty{}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev, err := range events {
			if err != nil {
				return
			}
			for _, r := range ev.Registrations {
				if !r.IsDeleted && strings.HasPrefix(r.ScopeURL, app+"/") {
					regs <- r.RegistrationID
				}
			}
		}
	}()

	if err := chromedp.Do(ctx, chromedp.Navigate(app+"/?subscribeTimeout=5000&proxy="+proxy)); err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, "a push subscription or the page asking for one", `example.subscription || example.provideSubscription`)
	if why := eval[string](t, ctx, `example.subscribeError`); why != "" {
		// Headless Chromium has no push service to subscribe with: the fake makes the
		// subscription (keys and endpoint, bound to the proxy's VAPID key) and the page takes
		// it as if PushManager.subscribe had answered it.
		t.Logf("PushManager.subscribe failed (%s): the fake push service makes the subscription", why)
		sub, err := push.Subscribe(vapidPublic)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(sub)
		eval[chromedp.Void](t, ctx, fmt.Sprintf(`example.provideSubscription(%s)`, b))
	}
	var reg serviceworker.RegistrationID
	select {
	case reg = <-regs:
	case <-time.After(30 * time.Second):
		t.Fatal("no service worker registration")
	}

	// Awake: the page reads the origin directly.
	poll(t, ctx, "the snapshot", `example.es && example.es.readyState == 1 && example.seen.some((e) => e.type == "snapshot")`)
	var want []seen
	emit := func(typ, label string) {
		ev := ticker.Emit(typ, label)
		want = append(want, seen{Type: typ, ID: ev.ID, Data: label})
	}
	for i := range 3 {
		emit("marker", fmt.Sprintf("awake %d", i))
	}
	poll(t, ctx, "the events while awake", fmt.Sprintf(`example.seen.some((e) => e.id == %q)`, want[len(want)-1].ID))

	// Asleep: handed off with the Web Push subscription.
	eval[chromedp.Void](t, ctx, `example.es.sleep()`)
	if errs := eval[[]string](t, ctx, `example.errors`); len(errs) > 0 {
		t.Fatalf("the handoff failed: %v", errs)
	}
	streamID := eval[string](t, ctx, `example.storage.getItem("pushproxy:" + example.es.url).then((s) => JSON.parse(s).id)`)
	if streamID == "" {
		t.Fatal("the page stored no stream")
	}

	// deliver waits for the fake push service's n-th message, checks it, and delivers its
	// decrypted payload to the service worker as the browser's push service would.
	deliver := func(n int, urgent bool) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		msgs, err := push.WaitFor(wctx, n)
		if err != nil {
			t.Fatalf("waiting for Web Push %d: %v", n, err)
		}
		m := msgs[n-1]
		if m.Status != http.StatusCreated {
			t.Fatalf("the fake push service refused Web Push %d: %d %s", n, m.Status, m.Error)
		}
		var p struct {
			Pushproxy struct {
				Streams map[string]int `json:"streams"`
			} `json:"pushproxy"`
		}
		if err := json.Unmarshal(m.Payload, &p); err != nil || p.Pushproxy.Streams[streamID] == 0 {
			t.Fatalf("Web Push %d: the decrypted payload %s does not name stream %s (%v)", n, m.Payload, streamID, err)
		}
		if wantUrgency := map[bool]string{true: "high", false: "normal"}[urgent]; m.Urgency != wantUrgency {
			t.Errorf("Web Push %d: Urgency %q, want %q", n, m.Urgency, wantUrgency)
		}
		if _, err := chromedp.Call(ctx, serviceworker.DeliverPushMessage, serviceworker.DeliverPushMessageParams{
			Origin: app, RegistrationID: reg, Data: string(m.Payload)}); err != nil {
			t.Fatalf("deliverPushMessage: %v", err)
		}
	}
	markers := func() string {
		b, _ := json.Marshal(want)
		return string(b)
	}

	// Events while asleep: one wake-up; the service worker fetches the backlog, keeps it,
	// and the open page takes it (BroadcastChannel). No notification: nothing urgent.
	for i := range 5 {
		emit("marker", fmt.Sprintf("asleep %d", i))
	}
	deliver(1, false)
	poll(t, ctx, "the backlog through the service worker", fmt.Sprintf(`example.seen.some((e) => e.id == %q)`, want[len(want)-1].ID))
	if eval[bool](t, ctx, `example.es.sleeping`) != true {
		t.Fatal("the page woke: it should take the backlog and stay asleep")
	}
	notifications := `navigator.serviceWorker.ready.then((r) => r.getNotifications()).then((ns) => ns.map((n) => n.title + ": " + n.body))`
	if ns := eval[[]string](t, ctx, notifications); len(ns) != 0 {
		t.Fatalf("notifications for non-urgent events: %v", ns)
	}

	// The open page's own handling of that push (it takes the kept events, then reads on
	// from the proxy) must be over before the alert is emitted: else the page may read the
	// alert itself, and a page that shows it needs no notification. A push naming no stream
	// waits for the page's queue and does nothing.
	eval[chromedp.Void](t, ctx, `example.es.handlePush({streams: {}})`)

	// An urgent event: a high-urgency push, and a notification for it only.
	emit("alert", "ABC crossed 100")
	deliver(2, true)
	poll(t, ctx, "the alert through the service worker", fmt.Sprintf(`example.seen.some((e) => e.id == %q)`, want[len(want)-1].ID))
	// The service worker shows the notification after it has handed the events over: wait
	// for it to appear.
	var ns []string
	for deadline := time.Now().Add(20 * time.Second); ; {
		if ns = eval[[]string](t, ctx, notifications); len(ns) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the condition; the page offers no event for it
	}
	if len(ns) != 1 || ns[0] != "Ticker alert: ABC crossed 100" {
		t.Fatalf("notifications: %v, want the alert's only", ns)
	}

	// More while asleep, then the page wakes by itself (no push): it takes the backlog,
	// takes the stream back and reads the origin again.
	for i := range 3 {
		emit("marker", fmt.Sprintf("before wake %d", i))
	}
	eval[chromedp.Void](t, ctx, `example.es.wake()`)
	emit("marker", "awake again")
	poll(t, ctx, "the live event after the wake", fmt.Sprintf(`example.seen.some((e) => e.id == %q)`, want[len(want)-1].ID))

	got := eval[[]seen](t, ctx, `example.seen.filter((e) => e.type != "snapshot")`)
	if g, _ := json.Marshal(got); string(g) != markers() {
		t.Fatalf("the page saw\n%s\nwant every event exactly once, in order:\n%s", g, markers())
	}
	if errs := eval[[]string](t, ctx, `example.errors`); len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}

	// CORS: a page of another origin in --cors-origins reads an events_url; a page of an
	// origin not in it cannot.
	eventsURL := handoff(t, proxy, app+"/events")
	read := fmt.Sprintf(`fetch(%q, {headers: {Accept: "application/json"}}).then((r) => r.json()).then((j) => "events: " + j.events.length, (e) => "failed: " + e)`, eventsURL)
	for _, c := range []struct {
		page, want string
	}{{other, "events: "}, {stranger, "failed: TypeError"}} {
		tab, cancel := chromedp.NewContext(ctx)
		if err := chromedp.Do(tab, chromedp.Navigate(c.page+"/")); err != nil {
			t.Fatal(err)
		}
		if got := eval[string](t, tab, read); !strings.HasPrefix(got, c.want) {
			t.Errorf("a page of %s reading events_url: %q, want %q…", c.page, got, c.want)
		}
		cancel()
	}
}

// handoff hands off url without a push address and answers the absolute events_url.
func handoff(t *testing.T, proxy, url string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"url": url})
	res, err := http.Post(proxy+"/v1/streams", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var h struct {
		EventsURL string `json:"events_url"`
	}
	if err := json.NewDecoder(res.Body).Decode(&h); err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("handoff: %d %v", res.StatusCode, err)
	}
	return proxy + h.EventsURL
}

// vapidKeys makes the proxy's VAPID key pair (RFC 8292), base64url.
func vapidKeys(t *testing.T) (public, private string) {
	t.Helper()
	private, public, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	return public, private
}
