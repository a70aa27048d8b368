package main

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/pushproxy/pushproxy/internal/pgtest"
	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// TestEndToEndTLSOrigin holds streams of an HTTPS origin through real processes: the proxy
// trusts the origin's CA through the system roots (SSL_CERT_FILE), speaks HTTP/2 to it (ALPN,
// the default path for production origins), and every event arrives.
func TestEndToEndTLSOrigin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	ca, err := fakeapns.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, ca, dir)
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCertFile(caFile); err != nil {
		t.Fatal(err)
	}
	_, originBin := binaries(t)
	org := startProcess(t, "origin", originBin, "--listen", "127.0.0.1:0", "--rate", "0", "--allow-emit", "--retry", "10ms",
		"--tls-cert", certFile, "--tls-key", keyFile)
	originURL := org.waitLine(regexp.MustCompile(`listening on (https://\S+)`))[1]
	api, proxyProc := startProxyEnv(t, pgtest.NewDatabase(t), []string{"SSL_CERT_FILE=" + caFile})

	var streams []e2eStream
	for range 3 {
		streams = append(streams, handoffPush(t, api, originURL+"/events", nil))
	}
	waitForConnected(t, api, streams...)
	for _, s := range streams {
		re := regexp.MustCompile(`msg="upstream connected" stream=` + s.ID + ` proto=h2\n`)
		waitFor(t, "the proxy to log the stream's HTTP/2 connection", func() bool { return re.MatchString(proxyProc.output()) })
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}}
	for i := range 4 {
		resp, err := client.Post(originURL+"/emit?type=update&data="+url.QueryEscape(string(rune('a'+i))), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("emit: %s", resp.Status)
		}
	}
	for _, s := range streams {
		waitFor(t, "every event", func() bool { return streamInfo(t, api, s).Backlog == 4 })
		evs := readAndAcknowledge(t, s)
		for i, ev := range evs {
			if ev.Event != "update" || ev.Data != string(rune('a'+i)) {
				t.Fatalf("event %d: %+v", i, ev)
			}
		}
	}
}
