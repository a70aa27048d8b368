package proxy_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
)

// lateHeadOrigin sends its response head only with its first event, delay after the
// request (as Node's http does after writeHead, and go-sse), then a second event when more
// is closed. It counts its requests.
func lateHeadOrigin(delay time.Duration, requests *atomic.Int32, more chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select {
		case <-time.After(delay): // the origin's pace: what is tested
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("id: 1\ndata: first\n\n"))
		w.(http.Flusher).Flush()
		select {
		case <-more:
		case <-r.Context().Done():
			return
		}
		w.Write([]byte("id: 2\ndata: second\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
}

// TestLateHeadIsNotAConnectFailure: with a connect timeout far shorter than the origin's
// delay before its head, the head and its events are taken on the first connection, over
// HTTP/1.1 and HTTP/2: nothing lost, no failure, no reconnect.
func TestLateHeadIsNotAConnectFailure(t *testing.T) {
	t.Parallel()
	for _, h2c := range []bool{false, true} {
		var requests atomic.Int32
		more := make(chan struct{})
		srv := newOrigin(t, lateHeadOrigin(time.Second, &requests, more))
		if h2c {
			srv = newH2COrigin(t, lateHeadOrigin(time.Second, &requests, more), nil)
		}
		_, b := setup(t, &proxy.Options{UpstreamH2C: h2c, UpstreamConnectTimeout: 200 * time.Millisecond, UpstreamIdleTimeout: 10 * time.Second})
		h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
		eventually(t, 20*time.Second, "the first event", func() bool { return getStream(t, b, h).Backlog == 1 })
		close(more)
		eventually(t, 20*time.Second, "the second event", func() bool { return getStream(t, b, h).Backlog == 2 })
		si := getStream(t, b, h)
		if n := requests.Load(); n != 1 || si.Upstream.Connects != 1 || si.Upstream.LastError != "" || !si.Upstream.Connected {
			t.Fatalf("h2c %v: %d requests, upstream %+v", h2c, n, si.Upstream)
		}
		p := fetchJSON(t, b, h, "")
		if len(p.Events) != 2 || p.Events[0].Data != "first" || p.Events[1].Data != "second" {
			t.Fatalf("h2c %v: events %+v", h2c, p.Events)
		}
	}
}

// TestHeadAfter45sWithTheDefaults: with the default timeouts (a 30 s connect timeout), an
// origin that sends its head 45 s after the request, with its first event, loses nothing and
// counts no failure, over HTTP/1.1 and HTTP/2. It takes 45 s: the delay is what is tested.
func TestHeadAfter45sWithTheDefaults(t *testing.T) {
	t.Parallel()
	for _, h2c := range []bool{false, true} {
		t.Run(map[bool]string{false: "h1", true: "h2c"}[h2c], func(t *testing.T) {
			t.Parallel()
			var requests atomic.Int32
			more := make(chan struct{})
			srv := newOrigin(t, lateHeadOrigin(45*time.Second, &requests, more))
			if h2c {
				srv = newH2COrigin(t, lateHeadOrigin(45*time.Second, &requests, more), nil)
			}
			_, b := setup(t, &proxy.Options{UpstreamH2C: h2c})
			h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
			eventually(t, 90*time.Second, "the first event", func() bool { return getStream(t, b, h).Backlog == 1 })
			close(more)
			eventually(t, 20*time.Second, "the second event", func() bool { return getStream(t, b, h).Backlog == 2 })
			si := getStream(t, b, h)
			if n := requests.Load(); n != 1 || si.Upstream.Connects != 1 || si.Upstream.LastError != "" || !si.Upstream.Connected {
				t.Fatalf("%d requests, upstream %+v", n, si.Upstream)
			}
			p := fetchJSON(t, b, h, "")
			if len(p.Events) != 2 || p.Events[0].Data != "first" || p.Events[1].Data != "second" {
				t.Fatalf("events %+v", p.Events)
			}
		})
	}
}

// nodeOrigin is the usual Node http SSE server: writeHead at once, write when there is
// news. Node sends the head only with the first write.
const nodeOrigin = `
const http = require('http');
let requests = 0;
const srv = http.createServer((req, res) => {
  requests++;
  console.log('request ' + requests + ' ' + (req.headers['last-event-id'] || ''));
  res.writeHead(200, {'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache'});
  const t1 = setTimeout(() => res.write('id: 1\ndata: first\n\n'), 1000);
  const t2 = setTimeout(() => res.write('id: 2\ndata: second\n\n'), 1500);
  req.on('close', () => { clearTimeout(t1); clearTimeout(t2); });
});
srv.listen(0, '127.0.0.1', () => console.log('listening ' + srv.address().port));
`

// TestLateHeadFromNode: the same against a real Node http server. It needs node on PATH;
// without it, it is skipped unless PUSHPROXY_REQUIRE_NODE=1.
func TestLateHeadFromNode(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("PUSHPROXY_REQUIRE_NODE") == "1" {
			t.Fatal("node is required (PUSHPROXY_REQUIRE_NODE=1) but not found")
		}
		t.Skip("node not found")
	}
	script := filepath.Join(t.TempDir(), "origin.js")
	if err := os.WriteFile(script, []byte(nodeOrigin), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, node, script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range lines {
		}
		cmd.Wait()
	})
	var port string
	select {
	case l := <-lines:
		port = strings.TrimPrefix(l, "listening ")
	case <-time.After(20 * time.Second):
		t.Fatal("node did not start")
	}

	_, b := setup(t, &proxy.Options{UpstreamConnectTimeout: 200 * time.Millisecond, UpstreamIdleTimeout: 10 * time.Second})
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:" + port + "/events"})
	eventually(t, 20*time.Second, "both events", func() bool { return getStream(t, b, h).Backlog == 2 })
	si := getStream(t, b, h)
	if si.Upstream.Connects != 1 || si.Upstream.LastError != "" || !si.Upstream.Connected {
		t.Fatalf("upstream %+v", si.Upstream)
	}
	var requests []string
	for len(lines) > 0 {
		requests = append(requests, <-lines)
	}
	if len(requests) != 1 || requests[0] != "request 1 " {
		t.Fatalf("node saw %q", requests)
	}
}
