package wakeup

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
)

// How the sender tests trust the fake APNs.
//
// The APNs sender checks the server's certificate against the system roots, like it does for
// Apple. crypto/x509 loads the system roots once per process, on first use, from the file
// named by SSL_CERT_FILE when it is set (Linux and the other Unix systems but macOS).
// testCA, which issues the certificate of every fake APNs in this test binary, is therefore
// made at package initialisation, before TestMain and before anything verifies a
// certificate: its certificate is written to a temporary file, SSL_CERT_FILE names the file
// while x509.SystemCertPool loads the roots, then the variable is restored and the file
// removed. The check that follows fails loudly if something loaded the roots earlier.
//
// The fake FCM speaks plain HTTP, so the FCM tests need no trust.
var testCA = trustTestCA()

func trustTestCA() *fakeapns.CA {
	ca, err := fakeapns.NewCA()
	if err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "pushproxy-wakeup-ca")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCertFile(file); err != nil {
		panic(err)
	}
	prev, had := os.LookupEnv("SSL_CERT_FILE")
	os.Setenv("SSL_CERT_FILE", file)
	roots, err := x509.SystemCertPool()
	if had {
		os.Setenv("SSL_CERT_FILE", prev)
	} else {
		os.Unsetenv("SSL_CERT_FILE")
	}
	if err != nil {
		panic(fmt.Sprintf("loading the system roots: %v", err))
	}
	block, _ := pem.Decode(ca.CertPEM())
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		panic(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		panic("the system roots were loaded before the test CA could be added to them: " + err.Error())
	}
	return ca
}

// testClock is a clock for the fakes that a test moves forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// sendErr checks that err is a *SendError of kind and returns it.
func sendErr(t *testing.T, err error, kind string) *SendError {
	t.Helper()
	var se *SendError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T), want a *SendError", err, err)
	}
	if se.Kind != kind {
		t.Fatalf("error %v: kind %q, want %q", err, se.Kind, kind)
	}
	return se
}

// hexToken is a well-formed APNs device token made from n.
func hexToken(n int) string { return fmt.Sprintf("%064x", n+1) }
