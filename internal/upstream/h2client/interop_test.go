package h2client_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/nginxtest"
	streamio "github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/internal/upstream/h2client"
)

// Interop tests: the client against HTTP/2 servers nobody here wrote. Each is skipped when
// its server is not installed, unless CI asks for it (PUSHPROXY_REQUIRE_NGINX=1,
// PUSHPROXY_REQUIRE_NODE=1).

// external returns the path of an external program, or skips the test (fails it when env
// is set).
func external(t *testing.T, env, install string, paths ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs an external server")
	}
	for _, p := range paths {
		if full, err := exec.LookPath(p); err == nil {
			return full
		}
	}
	if os.Getenv(env) != "" {
		t.Fatalf("%s not found and %s is set: %s", paths[0], env, install)
	}
	t.Skipf("%s not found: %s to run this test", paths[0], install)
	return ""
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key into dir, and
// returns their paths and a TLS configuration that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, cfg *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, &tls.Config{RootCAs: roots}
}

// countingDial dials with net.Dialer and counts the connections.
func countingDial(n *atomic.Int32) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
}

// sseStream is one stream opened by an interop test, read to its end on its own goroutine.
type sseStream struct {
	path string
	s    *h2client.Stream
	done chan struct{}
	got  []byte
	err  error
}

// openStreams opens n streams on base+"/s<i>" at once, and reads each to its end.
func openStreams(t *testing.T, p *h2client.Pool, base string, from, n int) []*sseStream {
	t.Helper()
	var urls []string
	for i := range n {
		urls = append(urls, fmt.Sprintf("%s/s%d", base, from+i))
	}
	streams, heads := openAll(t, p, urls)
	out := make([]*sseStream, n)
	for i, s := range streams {
		if heads[i].Status != 200 || heads[i].Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%s: head %d %v", urls[i], heads[i].Status, heads[i].Header)
		}
		st := &sseStream{path: fmt.Sprintf("/s%d", from+i), s: s, done: make(chan struct{})}
		go func() {
			defer close(st.done)
			st.got, st.err = io.ReadAll(streamio.Blocking(s))
		}()
		out[i] = st
	}
	t.Cleanup(func() {
		for _, st := range out {
			st.s.Close()
			<-st.done
		}
	})
	return out
}

// event is the bytes of the event numbered k on path: multi-byte characters, a CR LF line
// end, and a data line longer than a frame and than the client's stream window.
func event(path string, k int) string {
	return fmt.Sprintf("id: %d\r\nevent: tick\ndata: héllo ✓ %s\ndata: %s\n\n", k, path, strings.Repeat(fmt.Sprint(k%10), 20000+k))
}

// checkStreams waits for every stream to end and compares what it read with want(path).
func checkStreams(t *testing.T, streams []*sseStream, want func(path string) string) {
	t.Helper()
	for _, st := range streams {
		select {
		case <-st.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not end", st.path)
		}
		if st.err != nil {
			t.Fatalf("%s: %v after %d bytes", st.path, st.err, len(st.got))
		}
		if w := want(st.path); string(st.got) != w {
			t.Fatalf("%s: read %d bytes, want %d identical", st.path, len(st.got), len(w))
		}
	}
}

// nodeServer is a server of Node's http2 module, serving event streams; the test drives it
// through its standard input.
const nodeServer = `
const http2 = require('http2');
const fs = require('fs');
const readline = require('readline');
const [certFile, keyFile, maxStreams] = process.argv.slice(2);
const settings = {maxConcurrentStreams: Number(maxStreams)};
const server = certFile === '-'
  ? http2.createServer({settings})
  : http2.createSecureServer({cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), settings});
const sessions = new Set();
const streams = new Map();
const event = (k, path) => 'id: ' + k + '\r\nevent: tick\ndata: héllo ✓ ' + path + '\ndata: ' + String(k % 10).repeat(20000 + k) + '\n\n';
server.on('session', (s) => { sessions.add(s); s.on('close', () => sessions.delete(s)); });
server.on('stream', (stream, headers) => {
  const path = headers[':path'];
  stream.respond({':status': 200, 'content-type': 'text/event-stream'});
  stream.write(event(0, path));
  streams.set(stream, path);
  stream.on('close', () => streams.delete(stream));
  stream.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
readline.createInterface({input: process.stdin}).on('line', (line) => {
  const [cmd, arg] = line.split(' ');
  if (cmd === 'emit') for (const [s, path] of streams) s.write(event(Number(arg), path));
  if (cmd === 'goaway') for (const s of sessions) s.goaway();
  if (cmd === 'end') for (const [s] of streams) s.end();
  console.log('done ' + line + ': ' + streams.size + ' streams, ' + sessions.size + ' sessions');
});
`

// node runs nodeServer and returns its port and a function that sends it a command and
// waits for it to be done.
func startNode(t *testing.T, bin, certFile, keyFile string, maxStreams int) (port string, do func(cmd string)) {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "server.js")
	os.WriteFile(script, []byte(nodeServer), 0o600)
	cmd := exec.Command(bin, script, certFile, keyFile, fmt.Sprint(maxStreams))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := bufio.NewScanner(stdout)
	next := func() string {
		ch := make(chan string, 1)
		go func() {
			if lines.Scan() {
				ch <- lines.Text()
			}
			close(ch)
		}()
		select {
		case l := <-ch:
			return l
		case <-time.After(30 * time.Second):
			t.Fatal("node said nothing for 30 s")
			return ""
		}
	}
	l := next()
	if !strings.HasPrefix(l, "listening ") {
		t.Fatalf("node: %q", l)
	}
	return strings.TrimPrefix(l, "listening "), func(c string) {
		fmt.Fprintln(stdin, c)
		if l := next(); !strings.HasPrefix(l, "done "+c) {
			t.Fatalf("node after %q: %q", c, l)
		}
	}
}

// TestInteropNode reads event streams from Node's http2 module, over TLS and over h2c, with
// a stream limit of 10 per connection: 35 streams need four connections; a GOAWAY from
// every session lets its streams finish while new ones go to new connections.
func TestInteropNode(t *testing.T) {
	bin := external(t, "PUSHPROXY_REQUIRE_NODE", "install Node.js", "node", "nodejs")
	for _, tlsOn := range []bool{true, false} {
		t.Run(map[bool]string{true: "tls", false: "h2c"}[tlsOn], func(t *testing.T) {
			certFile, keyFile, cfg := "-", "-", (*tls.Config)(nil)
			scheme := "http"
			if tlsOn {
				certFile, keyFile, cfg = selfSigned(t, t.TempDir())
				scheme = "https"
			}
			port, do := startNode(t, bin, certFile, keyFile, 10)
			var dials atomic.Int32
			p := newPool(t, h2client.Options{H2C: !tlsOn, TLSConfig: cfg, Dial: countingDial(&dials), StreamWindow: 16 << 10})
			base := scheme + "://127.0.0.1:" + port

			old := openStreams(t, p, base, 0, 35)
			if d := dials.Load(); d != 4 {
				t.Fatalf("%d connections for 35 streams at 10 per connection, want 4", d)
			}
			do("emit 1")
			do("goaway")
			fresh := openStreams(t, p, base, 35, 5)
			if d := dials.Load(); d != 5 {
				t.Fatalf("%d connections after the GOAWAY, want 5 (one new one for 5 streams)", d)
			}
			do("emit 2")
			do("end")
			checkStreams(t, old, func(path string) string { return event(path, 0) + event(path, 1) + event(path, 2) })
			checkStreams(t, fresh, func(path string) string { return event(path, 0) + event(path, 2) })
		})
	}
}

// hub is an HTTP/1.1 event-stream backend: each request gets event 0, then every event
// emitted while it is open, until end.
type hub struct {
	mu      sync.Mutex
	streams map[chan string]string // to each handler, its path
	open    sync.WaitGroup
}

func (h *hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ch := make(chan string, 16)
	h.mu.Lock() // before the head: a client that has it gets every event emitted after
	h.streams[ch] = r.URL.Path
	h.open.Add(1)
	h.mu.Unlock()
	defer h.open.Done()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, event(r.URL.Path, 0))
	w.(http.Flusher).Flush()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			h.mu.Lock()
			delete(h.streams, ch)
			h.mu.Unlock()
			return
		}
	}
}

// emit sends event k to every open stream; end ends them all.
func (h *hub) emit(k int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch, path := range h.streams {
		ch <- event(path, k)
	}
}

func (h *hub) end() {
	h.mu.Lock()
	for ch := range h.streams {
		close(ch)
	}
	h.streams = map[chan string]string{}
	h.mu.Unlock()
	h.open.Wait()
}

// startNginx runs nginx with HTTP/2 over TLS in front of backend, its settings
// (http2_max_concurrent_streams and the like) at their defaults but for extra lines in the
// server block, and returns its https URL.
func startNginx(t *testing.T, backend, certFile, keyFile, extra string) string {
	t.Helper()
	addr := nginxtest.FreeAddr(t)
	nginxtest.Start(t, t.TempDir(), addr, fmt.Sprintf(`
    server {
        listen %s ssl http2;
        ssl_certificate %s;
        ssl_certificate_key %s;
        %s
        location / {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
    }
`, addr, certFile, keyFile, extra, backend))
	return "https://" + addr
}

// TestInteropNginx reads event streams proxied by nginx over HTTP/2 with TLS: 300 streams
// at nginx's default of 128 per connection need three connections; then a connection that
// reached keepalive_requests gets nginx's GOAWAY, and its streams finish while new ones go
// to new connections.
func TestInteropNginx(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nginx")
	}
	nginxtest.Binary(t)
	h := &hub{streams: map[chan string]string{}}
	backend := httptest.NewServer(h)
	defer backend.Close()
	defer h.end()
	certFile, keyFile, cfg := selfSigned(t, t.TempDir())

	t.Run("limit", func(t *testing.T) {
		base := startNginx(t, strings.TrimPrefix(backend.URL, "http://"), certFile, keyFile, "")
		var dials atomic.Int32
		p := newPool(t, h2client.Options{TLSConfig: cfg, Dial: countingDial(&dials), StreamWindow: 16 << 10})
		streams := openStreams(t, p, base, 0, 300)
		if d := dials.Load(); d != 3 {
			t.Fatalf("%d connections for 300 streams at nginx's 128 per connection, want 3", d)
		}
		h.emit(1)
		h.end()
		checkStreams(t, streams, func(path string) string { return event(path, 0) + event(path, 1) })
	})

	t.Run("goaway", func(t *testing.T) {
		base := startNginx(t, strings.TrimPrefix(backend.URL, "http://"), certFile, keyFile, "keepalive_requests 10;")
		var dials atomic.Int32
		p := newPool(t, h2client.Options{TLSConfig: cfg, Dial: countingDial(&dials), StreamWindow: 16 << 10})
		first := openStreams(t, p, base, 0, 10) // the tenth request makes nginx send GOAWAY
		h.emit(1)
		more := openStreams(t, p, base, 10, 25)
		if d := dials.Load(); d < 4 {
			t.Fatalf("%d connections for 35 streams at 10 requests per connection, want 4 or more", d)
		}
		h.emit(2)
		h.end()
		checkStreams(t, first, func(path string) string { return event(path, 0) + event(path, 1) + event(path, 2) })
		checkStreams(t, more, func(path string) string { return event(path, 0) + event(path, 2) })
	})
}
