package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/internal/secretscan"
	"github.com/pushproxy/pushproxy/sse"
)

func TestMain(m *testing.M) {
	// Every log the tests' servers write, and every admin document they fetch, is scanned
	// for every secret the tests created or sent (internal/secretscan).
	code := secretscan.Main(m, pgtest.Main)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds pushproxy and origin once per test binary and returns their paths.
func binaries(t *testing.T) (pushproxyBin, originBin string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "pushproxy-e2e-")
		if buildErr != nil {
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		cmd := exec.Command(gobin, "build", "-o", binDir+"/", "github.com/pushproxy/pushproxy/cmd/pushproxy", "github.com/pushproxy/pushproxy/cmd/origin")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "pushproxy"), filepath.Join(binDir, "origin")
}

// process is a child process whose output lines a test can wait on.
type process struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	out   bytes.Buffer
	admin string // a proxy's operators' listener (/metrics), as http://host:port
}

func startProcess(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	return startProcessEnv(t, name, bin, nil, args...)
}

func startProcessEnv(t *testing.T, name, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{t: t, name: name, lines: make(chan string, 1024), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	secretscan.RegisterFlags(args, env)
	log := secretscan.Writer(t.Name() + " " + name)
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			log.Write([]byte(sc.Text() + "\n"))
			select {
			case p.lines <- sc.Text():
			default: // nobody waits on lines now; the output is kept in out
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, p.output())
		}
	})
	return p
}

func (p *process) signal(sig os.Signal) {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(sig)
	}
}

// kill ends the process with SIGKILL and waits for it.
func (p *process) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLine waits for an output line matching re and returns its submatches.
func (p *process) waitLine(re *regexp.Regexp) []string {
	p.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l := <-p.lines:
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-p.done:
			p.t.Fatalf("%s exited before printing %q:\n%s", p.name, re, p.output())
		case <-timeout:
			p.t.Fatalf("%s did not print %q within 60s:\n%s", p.name, re, p.output())
		}
	}
}

var (
	originListening = regexp.MustCompile(`listening on (http://\S+)`)
	proxyServing    = regexp.MustCompile(`msg="pushproxy serving" addr=(\S+) scheme=(\S+) admin=(\S+)`)
)

func startOrigin(t *testing.T, args ...string) (string, *process) {
	_, bin := binaries(t)
	p := startProcess(t, "origin", bin, append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	return p.waitLine(originListening)[1], p
}

func startProxy(t *testing.T, dbURL string, args ...string) (string, *process) {
	return startProxyEnv(t, dbURL, nil, args...)
}

func startProxyEnv(t *testing.T, dbURL string, env []string, args ...string) (string, *process) {
	bin, _ := binaries(t)
	base := []string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--database-url", dbURL,
		"--upstream-allow", "127.0.0.0/8", "--upstream-backoff-max", "200ms", "--log-level", "debug", "--secret-key-file", e2eKeyFile(t),
		"--gauges-interval", "100ms"}
	p := startProcessEnv(t, "pushproxy", bin, env, append(base, args...)...)
	m := p.waitLine(proxyServing)
	p.admin = "http://" + m[3]
	return m[2] + "://" + m[1], p
}

func handoffURL(t *testing.T, api, upstream string) (id, eventsURL string) {
	t.Helper()
	body := fmt.Sprintf(`{"url": %q}`, upstream)
	resp, err := http.Post(api+"/v1/streams", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ID        string `json:"id"`
		EventsURL string `json:"events_url"`
	}
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("handoff: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.ID, api + out.EventsURL
}

// readEvents reads n events from an event stream URL, resuming with Last-Event-ID whenever
// the connection ends, as a browser would.
func readEvents(t *testing.T, url, lastID string, n int) []sse.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var got []sse.Event
	for len(got) < n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Accept", "text/event-stream")
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("read events: got %d of %d: %v", len(got), n, err)
			}
			continue // the proxy is restarting
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Fatalf("events: %s: %s", resp.Status, b)
		}
		p := sse.NewParser(resp.Body, nil)
		p.SetLastEventID(lastID)
		for len(got) < n {
			ev, err := p.Next()
			if err != nil {
				break
			}
			got = append(got, ev)
			lastID = ev.LastEventID
		}
		resp.Body.Close()
	}
	return got
}

// checkExactlyOnce checks that got holds consecutive origin events, each once, in order, and
// that they are byte for byte what the origin replays for the same range.
func checkExactlyOnce(t *testing.T, originURL string, got []sse.Event) {
	t.Helper()
	if len(got) < 2 {
		t.Fatalf("only %d events", len(got))
	}
	first, err := strconv.Atoi(got[0].LastEventID)
	if err != nil {
		t.Fatalf("first event id %q: %v", got[0].LastEventID, err)
	}
	for i, ev := range got {
		if want := strconv.Itoa(first + i); ev.LastEventID != want {
			t.Fatalf("event %d has id %q, want %q (a loss or a duplicate)", i, ev.LastEventID, want)
		}
	}
	// The origin replays from its history what a client resuming after the first event gets.
	want := readEvents(t, originURL+"/events", got[0].LastEventID, len(got)-1)
	for i, w := range want {
		if g := got[i+1]; g != w {
			t.Fatalf("event %d: proxy gave %#v, origin %#v", i+1, g, w)
		}
	}
}

// TestEndToEndOriginDrops: the origin closes every connection after a few events; the reader
// still gets every event exactly once, in order.
func TestEndToEndOriginDrops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	db := pgtest.NewDatabase(t)
	originURL, _ := startOrigin(t, "--drop-every", "7", "--rate", "300", "--retry", "10ms", "--history", "100000")
	api, _ := startProxy(t, db)
	_, events := handoffURL(t, api, originURL+"/events")
	got := readEvents(t, events, "", 400)
	checkExactlyOnce(t, originURL, got)
}

// TestEndToEndProxyKilled: the proxy is killed with SIGKILL mid-stream and started again; the
// reader, reconnecting with Last-Event-ID, gets every event exactly once, in order.
func TestEndToEndProxyKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	db := pgtest.NewDatabase(t)
	originURL, _ := startOrigin(t, "--rate", "300", "--retry", "10ms", "--history", "100000", "--drop-every", "50")
	args := []string{"--instance-id", "e2e-a", "--lease-ttl", "2s", "--claim-interval", "100ms"}
	api, px := startProxy(t, db, args...)
	_, events := handoffURL(t, api, originURL+"/events")
	got := readEvents(t, events, "", 150)

	px.kill()
	// Events the origin sends while no proxy runs are read by the next one from the origin's
	// history; the restarted instance listens on a new port.
	api2, px2 := startProxy(t, db, args...)
	events2 := strings.Replace(events, api, api2, 1)
	got = append(got, readEvents(t, events2, got[len(got)-1].LastEventID, 300)...)

	// And a second kill, this time of an instance under a new name: its streams move once
	// the lease expires.
	px2.kill()
	api3, _ := startProxy(t, db, "--instance-id", "e2e-b", "--lease-ttl", "2s", "--claim-interval", "100ms")
	events3 := strings.Replace(events, api, api3, 1)
	got = append(got, readEvents(t, events3, got[len(got)-1].LastEventID, 150)...)
	checkExactlyOnce(t, originURL, got)
}

// TestDemo runs `pushproxy demo` as a user would (short sleep) and checks its timeline. It
// is configured through its own variables, PUSHPROXY_DEMO_*, on a machine where serve's are
// set to garbage: it reads none of those.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo")
	}
	env := map[string]string{
		"PUSHPROXY_DEMO_DATABASE_URL": pgtest.NewDatabase(t),
		"PUSHPROXY_DEMO_RATE":         "20",
		"PUSHPROXY_DATABASE_URL":      "postgres://garbage@nowhere.invalid/x",
		"DATABASE_URL":                "postgres://garbage@nowhere.invalid/y",
		"PUSHPROXY_LISTEN":            "garbage",
		"PUSHPROXY_LOG_LEVEL":         "garbage",
	}
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"demo", "--sleep", "1500ms"}, &out, &errOut, func(k string) string {
		if !strings.HasPrefix(k, "PUSHPROXY_DEMO_") {
			t.Errorf("the demo read %s", k)
		}
		return env[k]
	})
	if code != 0 {
		t.Fatalf("demo exited %d:\n%s\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"hands off its stream", "queued", "silent push to the device", "nothing lost, nothing doubled", "live via proxy", "from origin again", "done"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo timeline lacks %q:\n%s", want, out.String())
		}
	}
}
