package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// lockedBuffer collects stderr from run's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// started is a run in progress.
type started struct {
	urls   []string
	cancel context.CancelFunc
	done   chan int
	stderr *lockedBuffer
}

// start runs the command in-process and reads the n addresses it prints.
func start(t *testing.T, args []string, environ map[string]string, n int) *started {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	s := &started{cancel: cancel, done: make(chan int, 1), stderr: &lockedBuffer{}}
	go func() {
		s.done <- run(ctx, args, env(environ), pw, s.stderr)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	br := bufio.NewReader(pr)
	for range n {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the address: %v; stderr:\n%s", err, s.stderr)
		}
		u, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok {
			t.Fatalf("unexpected line %q", line)
		}
		s.urls = append(s.urls, u)
	}
	go io.Copy(io.Discard, pr) // ends when run returns and pw is closed
	return s
}

func (s *started) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	if code := <-s.done; code != 0 {
		t.Fatalf("run returned %d; stderr:\n%s", code, s.stderr)
	}
	s.done <- 0 // for the cleanup
}

func readLine(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestRunServesOneOriginOnSeveralAddresses(t *testing.T) {
	s := start(t, []string{"--listen", "127.0.0.1:0, 127.0.0.1:0", "--rate", "0", "--symbols", "4"},
		map[string]string{"ORIGIN_RETRY": "250ms", "ORIGIN_ALLOW_EMIT": "true", "ORIGIN_RATE": "1000"}, 2)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, u := range s.urls {
		if !strings.HasPrefix(u, "http://127.0.0.1:") {
			t.Fatalf("url %q", u)
		}
		resp, err := client.Get(u + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Fatalf("healthz %q", b)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.urls[0]+"/events", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// retry from the environment; --rate 0 beats ORIGIN_RATE, so nothing was published yet.
	for _, want := range []string{"retry: 250", "", "id: 0", "event: snapshot"} {
		if got := readLine(t, br); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	data := readLine(t, br)
	if n := strings.Count(data, `"symbol":`); !strings.HasPrefix(data, `data: {"id":"0"`) || n < 1 || n > 4 {
		t.Fatalf("snapshot data %q", data)
	}
	readLine(t, br)

	// An event published through the second address reaches the stream on the first.
	pr, err := client.Post(s.urls[1]+"/emit?type=hello&data=world", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pr.Body.Close()
	for _, want := range []string{"id: 1", "event: hello", "data: world", ""} {
		if got := readLine(t, br); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}

	// Shutdown ends the open stream.
	s.stop(t)
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("stream after shutdown: %v", err)
	}
}

func TestRunTLS(t *testing.T) {
	certFile, keyFile := selfSigned(t)
	s := start(t, []string{"--listen", "127.0.0.1:0", "--tls-cert", certFile}, map[string]string{"ORIGIN_TLS_KEY": keyFile}, 1)
	if !strings.HasPrefix(s.urls[0], "https://") {
		t.Fatalf("url %q", s.urls[0])
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.urls[0]+"/events", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s %v", resp.Proto, resp.Header)
	}
	if got := readLine(t, bufio.NewReader(resp.Body)); got != "retry: 3000" {
		t.Fatalf("first line %q", got)
	}
	s.stop(t)
}

func TestParseConfig(t *testing.T) {
	c, err := parseConfig([]string{"--rate", "7", "--heartbeat", "0"},
		env(map[string]string{"ORIGIN_RATE": "9", "ORIGIN_SYMBOLS": "3", "ORIGIN_DROP_EVERY": "5", "ORIGIN_LISTEN": "127.0.0.2:9090,127.0.0.3:9090"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.Rate != 7 || c.opts.Symbols != 3 || c.opts.DropEvery != 5 || c.opts.Heartbeat != -1 ||
		c.opts.History != 10000 || c.opts.Retry != 3*time.Second || len(c.listen) != 2 || c.listen[1] != "127.0.0.3:9090" {
		t.Fatalf("config %+v", c)
	}
	for _, args := range [][]string{{"--nope"}, {"extra"}, {"--tls-cert", "x"}, {"--symbols", "0"}} {
		if _, err := parseConfig(args, env(nil), io.Discard); err == nil {
			t.Fatalf("%v: no error", args)
		}
	}
	if _, err := parseConfig(nil, env(map[string]string{"ORIGIN_RATE": "fast"}), io.Discard); err == nil || !strings.Contains(err.Error(), "ORIGIN_RATE") {
		t.Fatalf("bad env: %v", err)
	}
}

func TestHelpAndBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, env(nil), io.Discard, &stderr); code != 0 {
		t.Fatalf("--help: %d", code)
	}
	for _, want := range []string{"--listen", "ORIGIN_LISTEN", "--drop-every", "ORIGIN_DROP_EVERY", "ORIGIN_TLS_CERT", "default 127.0.0.1:9090"} {
		if !strings.Contains(stderr.String(), want) {
			t.Fatalf("help lacks %q:\n%s", want, stderr.String())
		}
	}
	if code := run(context.Background(), []string{"--log-level", "loud"}, env(nil), io.Discard, io.Discard); code != 2 {
		t.Fatalf("bad log level: %d", code)
	}
	// An address in use fails at start.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if code := run(context.Background(), []string{"--listen", ln.Addr().String()}, env(nil), io.Discard, io.Discard); code != 1 {
		t.Fatalf("address in use: %d", code)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns their paths.
func selfSigned(t *testing.T) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "origin test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
