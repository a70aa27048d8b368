package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The listeners of `pushproxy serve`: the public one (the device API, the admin API, the
// dashboard), over TLS when given a certificate, and the operators' one (/metrics and the
// profiler), which stays on loopback by default.

// checkOpenHandoff is serve's protected mode (after Redis's): handoff without an API key is
// served on loopback only, unless the operator says it is open on purpose.
func checkOpenHandoff(listen string, apiKeys []string, open bool) error {
	if len(apiKeys) > 0 || open || isLoopback(listen) {
		return nil
	}
	return fmt.Errorf("refusing to start: --listen %s is not a loopback address and handing off streams needs no API key, "+
		"so anyone who reaches it could make this proxy dial URLs and wake devices. Either set --api-keys "+
		"(PUSHPROXY_API_KEYS=key1,key2) so that handoffs need Authorization: Bearer <key>, or pass --open-handoff "+
		"(PUSHPROXY_OPEN_HANDOFF=true) if the proxy is meant to be open, or listen on 127.0.0.1", listen)
}

// isLoopback tells whether every address addr can listen on is a loopback one: an IP
// loopback address or "localhost". An empty host (all interfaces) and other names are not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// timeouts bound how long a client may take to send a request.
type timeouts struct {
	ReadHeader time.Duration
	ReadBody   time.Duration
}

func (t *timeouts) flags(fs *flag.FlagSet) {
	fs.DurationVar(&t.ReadHeader, "read-header-timeout", 10*time.Second, "longest a client may take to send a request's head")
	fs.DurationVar(&t.ReadBody, "read-body-timeout", 15*time.Second, "longest a client may take to send a request's body (handoffs); responses, event streams among them, have no time limit")
}

// bodyDeadline gives a request with a body d to send it, after which reading it fails and
// the connection is closed. The deadline is lifted once the body is read, so a handler that
// then waits (on the database) is not cut, and GET and HEAD requests, event streams among
// them, never get one.
func bodyDeadline(d time.Duration, next http.Handler) http.Handler {
	if d <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
				r.Body = &liftOnEOF{ReadCloser: r.Body, rc: rc}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// liftOnEOF lifts the connection's read deadline when the body it reads is exhausted.
type liftOnEOF struct {
	io.ReadCloser
	rc     *http.ResponseController
	lifted bool
}

func (b *liftOnEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.lifted {
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// adminHandler serves the operators' listener: Prometheus metrics and the Go profiler.
func adminHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// tlsConfig is where the public listener's certificate is.
type tlsConfig struct {
	Cert string
	Key  string
}

func (c *tlsConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Cert, "tls-cert", "", "PEM certificate chain: serve HTTPS (and HTTP/2) on --listen; re-read on SIGHUP (empty: plain HTTP, for a TLS proxy in front)")
	fs.StringVar(&c.Key, "tls-key", "", "PEM private key of --tls-cert; re-read on SIGHUP")
}

func (c *tlsConfig) on() bool { return c.Cert != "" || c.Key != "" }

// certificate is the public listener's key pair, replaced as a whole by reload.
type certificate struct {
	cert, key string
	log       *slog.Logger
	cur       atomic.Pointer[tls.Certificate]
}

func loadCertificate(c tlsConfig, log *slog.Logger) (*certificate, error) {
	if c.Cert == "" || c.Key == "" {
		return nil, errors.New("--tls-cert and --tls-key go together: give both, or neither")
	}
	kp := &certificate{cert: c.Cert, key: c.Key, log: log}
	if err := kp.reload(); err != nil {
		return nil, err
	}
	return kp, nil
}

// reload reads the files again. On an error the pair in use stays.
func (kp *certificate) reload() error {
	c, err := tls.LoadX509KeyPair(kp.cert, kp.key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	kp.cur.Store(&c)
	return nil
}

// reloadLogged reloads on a signal, and says what happened.
func (kp *certificate) reloadLogged(ctx context.Context) {
	if err := kp.reload(); err != nil {
		kp.log.ErrorContext(ctx, "certificate reload failed; serving the previous one", slog.String("error", err.Error()))
		return
	}
	kp.log.InfoContext(ctx, "certificate reloaded", slog.String("cert", kp.cert))
}

func (kp *certificate) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.cur.Load(), nil
		},
	}
}
