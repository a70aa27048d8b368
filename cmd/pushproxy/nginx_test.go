package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// nginxBinary returns Debian's nginx, or skips. CI sets PUSHPROXY_REQUIRE_NGINX=1 so that a
// missing nginx fails instead.
func nginxBinary(t *testing.T) string {
	for _, p := range []string{"/usr/sbin/nginx", "/usr/bin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("PUSHPROXY_REQUIRE_NGINX") != "" {
		t.Fatal("no nginx and PUSHPROXY_REQUIRE_NGINX is set: apt-get install nginx-light")
	}
	t.Skip("no nginx: apt-get install nginx-light to run this test")
	return ""
}

// startNginx runs deploy/nginx/pushproxy.conf, with only its marked lines rewritten, in front
// of upstreams, and returns its https URL.
func startNginx(t *testing.T, upstreams []string, ca *fakeapns.CA) string {
	t.Helper()
	bin := nginxBinary(t)
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, ca, dir)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	src, err := os.ReadFile("../../deploy/nginx/pushproxy.conf")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	servers := 0
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasSuffix(line, "# upstream-server"):
			if servers == 0 {
				for _, u := range upstreams {
					out = append(out, fmt.Sprintf("    server %s max_fails=0;", u))
				}
			}
			servers++
			continue
		case strings.HasSuffix(line, "# listen"):
			line = regexp.MustCompile(`listen \d+`).ReplaceAllString(line, "listen "+addr)
		case strings.HasSuffix(line, "# certificate"):
			line = regexp.MustCompile(`/\S+;`).ReplaceAllString(line, certFile+";")
		case strings.HasSuffix(line, "# certificate-key"):
			line = regexp.MustCompile(`/\S+;`).ReplaceAllString(line, keyFile+";")
		}
		out = append(out, line)
	}
	if servers == 0 {
		t.Fatal("deploy/nginx/pushproxy.conf has no marked upstream servers")
	}
	site := filepath.Join(dir, "pushproxy.conf")
	os.WriteFile(site, []byte(strings.Join(out, "\n")), 0o600)
	temp := filepath.Join(dir, "temp")
	os.Mkdir(temp, 0o700)
	main := fmt.Sprintf(`
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
%[3]s
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[1]s/pushproxy.conf;
}
`, dir, temp, map[bool]string{true: "user root;", false: ""}[os.Geteuid() == 0])
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(main), 0o600)

	cmd := exec.Command(bin, "-p", dir, "-c", conf)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})
	waitFor(t, "nginx to listen", func() bool {
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited:\n%s", b)
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "https://" + addr
}

// writeServerCert writes a certificate for 127.0.0.1 and localhost, issued by ca, and its
// key into dir, and returns their paths.
func writeServerCert(t *testing.T, ca *fakeapns.CA, dir string) (certFile, keyFile string) {
	t.Helper()
	cert, err := ca.ServerCertificate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// nginxTestCA skips a short run, checks that nginx is there, and returns a CA for its
// certificate.
func nginxTestCA(t *testing.T) *fakeapns.CA {
	t.Helper()
	if testing.Short() {
		t.Skip("runs processes")
	}
	nginxBinary(t)
	ca, err := fakeapns.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestNginxHTTP2Unbuffered runs the repo's nginx configuration in front of two real proxy
// instances and reads several event streams over one HTTP/2 connection: an event leaves the
// origin and reaches the client through nginx and the proxy without waiting for more data.
func TestNginxHTTP2Unbuffered(t *testing.T) {
	ca := nginxTestCA(t)
	db := pgtest.NewDatabase(t)
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	apiA, _ := startProxy(t, db, "--instance-id", "nginx-a")
	apiB, _ := startProxy(t, db, "--instance-id", "nginx-b", "--migrate=false")
	edge := startNginx(t, []string{strings.TrimPrefix(apiA, "http://"), strings.TrimPrefix(apiB, "http://")}, ca)

	var dials atomic.Int32
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.Pool()},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	const n = 3
	var streams []e2eStream
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"url": %q, "last_event_id": "0"}`, originURL+"/events")
		resp, err := client.Post(edge+"/v1/streams", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || resp.ProtoMajor != 2 {
			t.Fatalf("handoff through nginx: %s %s: %s", resp.Proto, resp.Status, b)
		}
		var s struct {
			ID        string `json:"id"`
			Token     string `json:"token"`
			EventsURL string `json:"events_url"`
		}
		json.Unmarshal(b, &s)
		streams = append(streams, e2eStream{ID: s.ID, Token: s.Token, EventsURL: edge + s.EventsURL})
	}
	waitForConnected(t, apiA, streams...)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parsers := make([]*sse.Parser, n)
	for i, s := range streams {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.EventsURL, nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || !sse.IsEventStream(resp.Header.Get("Content-Type")) {
			t.Fatalf("events through nginx: %s %s %s", resp.Proto, resp.Status, resp.Header.Get("Content-Type"))
		}
		parsers[i] = sse.NewParser(resp.Body, nil)
	}
	if d := dials.Load(); d != 1 {
		t.Fatalf("%d connections to nginx, want every stream on one", d)
	}

	// One small event, and nothing after it: it must arrive on every stream as it is.
	emit(t, originURL, 1)
	got := make(chan error, n)
	for _, p := range parsers {
		go func() {
			ev, err := p.Next()
			if err == nil && (ev.LastEventID != "1" || ev.Type != "update") {
				err = fmt.Errorf("got %+v", ev)
			}
			got <- err
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("stream read: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("the event did not arrive through nginx: something buffers")
		}
	}
}

// TestNginxConfigDoesNotBuffer puts the repo's nginx configuration in front of a bare SSE
// server that, unlike the proxy, sends no X-Accel-Buffering header: the configuration alone
// must pass one small event through at once.
func TestNginxConfigDoesNotBuffer(t *testing.T) {
	ca := nginxTestCA(t)
	release := make(chan struct{})
	defer close(release)
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, "id: 1\ndata: one\n\n")
		w.(http.Flusher).Flush()
		select { // nothing more until the test is over
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer bare.Close()
	defer bare.CloseClientConnections()
	edge := startNginx(t, []string{strings.TrimPrefix(bare.URL, "http://")}, ca)

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, edge+"/events", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("no response headers through nginx: %v", err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("nginx answered over %s, want HTTP/2", resp.Proto)
	}
	ev, err := sse.NewParser(resp.Body, nil).Next()
	if err != nil {
		t.Fatalf("the event did not come through nginx (it buffers): %v", err)
	}
	if ev.LastEventID != "1" || ev.Data != "one" {
		t.Fatalf("got %+v", ev)
	}
}
