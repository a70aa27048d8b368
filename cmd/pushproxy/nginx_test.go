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
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/internal/nginxtest"
	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/sse"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// startNginx runs deploy/nginx/pushproxy.conf, with only its marked lines rewritten, in front
// of upstreams, and returns its https URL.
func startNginx(t *testing.T, upstreams []string, ca *fakeapns.CA) string {
	t.Helper()
	edge, _ := startNginxLogged(t, upstreams, ca)
	return edge
}

// startNginxLogged is startNginx, and also returns the path of the access log.
func startNginxLogged(t *testing.T, upstreams []string, ca *fakeapns.CA) (edge, accessLog string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, ca, dir)
	addr := nginxtest.FreeAddr(t)

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
		case strings.HasSuffix(line, "# access-log"):
			accessLog = filepath.Join(dir, "access.log")
			line = regexp.MustCompile(`access_log /[^\s;]+`).ReplaceAllString(line, "access_log "+accessLog)
		}
		out = append(out, line)
	}
	if servers == 0 || accessLog == "" {
		t.Fatal("deploy/nginx/pushproxy.conf has no marked upstream servers or access log")
	}
	site := filepath.Join(dir, "pushproxy.conf")
	os.WriteFile(site, []byte(strings.Join(out, "\n")), 0o600)
	nginxtest.Start(t, dir, addr, "    include "+site+";")
	return "https://" + addr, accessLog
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
	nginxtest.Binary(t)
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
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, edge+"/v1/streams/s/events", nil)
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

// TestNginxHidesOperatorPathsAndLogsNoQuery runs the repo's nginx configuration in front of
// a proxy with an admin token: the admin API, the dashboard, /metrics and the profiler are
// not reachable through it in any spelling (they are, directly), and its access log shows
// the events requests without their ?token= query.
func TestNginxHidesOperatorPathsAndLogsNoQuery(t *testing.T) {
	ca := nginxTestCA(t)
	const admin = "nginx-admin-secret"
	originURL, _ := startOrigin(t, "--rate", "0", "--allow-emit", "--retry", "10ms")
	api, _ := startProxy(t, pgtest.NewDatabase(t), "--admin-token", admin)
	edge, accessLog := startNginxLogged(t, []string{strings.TrimPrefix(api, "http://")}, ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(base, path string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// The same requests straight to the instance succeed: the refusals below are nginx's.
	if got := get(api, "/v1/admin/totals"); got != http.StatusOK {
		t.Fatalf("the admin API on the instance: %d", got)
	}
	for path, want := range map[string]int{
		"/v1/admin/totals":            http.StatusNotFound,
		"/v1/admin":                   http.StatusNotFound,
		"/admin/":                     http.StatusNotFound,
		"/admin":                      http.StatusNotFound,
		"/admin/login":                http.StatusNotFound,
		"/metrics":                    http.StatusNotFound,
		"/debug/pprof/":               http.StatusNotFound,
		"/v1/streams/../admin/totals": http.StatusBadRequest,
		"/v1/admin/../streams/x":      http.StatusBadRequest,
		"/v1//admin/totals":           http.StatusBadRequest,
		"/v1/%61dmin/totals":          http.StatusNotFound,
		"/v1/streams/%2e%2e/admin/x":  http.StatusBadRequest,
		"/v1/streams%2F..%2Fadmin/x":  http.StatusBadRequest,
		"/healthz":                    http.StatusOK,
		"/readyz":                     http.StatusOK,
	} {
		if got := get(edge, path); got != want {
			t.Errorf("GET %s through nginx: %d, want %d", path, got, want)
		}
	}

	// An events request with its token in the query, read and ended, and one with a wrong
	// token: both are logged, neither with its query.
	st := handoffPush(t, api, originURL+"/events", nil)
	u, _ := url.Parse(st.EventsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, edge+u.RequestURI(), nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("events through nginx: %s", resp.Status)
	}
	resp.Body.Close()
	const wrong = "wrong-token-0123456789"
	if got := get(edge, "/v1/streams/"+st.ID+"/events?token="+wrong); got != http.StatusUnauthorized {
		t.Fatalf("events with a wrong token: %d", got)
	}
	var logged string
	waitFor(t, "both events requests in the access log", func() bool {
		b, _ := os.ReadFile(accessLog)
		logged = string(b)
		return strings.Count(logged, "/v1/streams/"+st.ID+"/events") == 2
	})
	for _, secret := range []string{st.Token, wrong, "token=", "?", admin} {
		if strings.Contains(logged, secret) {
			t.Errorf("the access log holds %q:\n%s", secret, logged)
		}
	}
}
