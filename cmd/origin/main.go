// Command origin runs the reference origin server of pushproxy: a Server-Sent Events stock
// ticker (snapshot, then add/remove/update events with ids, Last-Event-ID replay). See package
// github.com/pushproxy/pushproxy/origin.
//
//	origin --listen 127.0.0.1:9090 --rate 5
//
// Every flag can also be set with its environment variable, ORIGIN_ and the flag name in upper
// snake case (--drop-every is ORIGIN_DROP_EVERY); the command line wins. On start it prints one
// line per listening address, "listening on http://127.0.0.1:9090", so that --listen
// 127.0.0.1:0 can be used by scripts. HTTP/1.1 and HTTP/2 without TLS (prior knowledge) share
// each address; with --tls-cert and --tls-key it serves HTTPS, HTTP/2 by ALPN.
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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pushproxy/pushproxy/internal/envflag"
	"github.com/pushproxy/pushproxy/origin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// config is the parsed command line.
type config struct {
	listen          envflag.List
	opts            origin.Options
	tlsCert, tlsKey string
	logLevel        string
	shutdownTimeout time.Duration
}

const envPrefix = "ORIGIN_"

// parseConfig parses args, taking each flag not given on the command line from its
// environment twin. flag.ErrHelp means --help was asked for (the usage went to stderr).
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	d := origin.DefaultOptions()
	c := &config{listen: envflag.List{"127.0.0.1:9090"}}
	fs := flag.NewFlagSet("origin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&c.listen, "listen", "comma-separated addresses to listen on, all serving the same origin (port 0: any free port)")
	fs.IntVar(&c.opts.Symbols, "symbols", d.Symbols, "number of symbols in the universe")
	fs.Float64Var(&c.opts.Rate, "rate", d.Rate, "ticker events per second, in total (0: none)")
	fs.DurationVar(&c.opts.TickInterval, "tick-interval", 0, "how often the ticker generates its batch of events (0: 1/rate, at least 10ms)")
	fs.IntVar(&c.opts.History, "history", d.History, "events kept for Last-Event-ID replay")
	fs.DurationVar(&c.opts.Retry, "retry", d.Retry, "retry: value sent on connect (0: none)")
	fs.DurationVar(&c.opts.Heartbeat, "heartbeat", d.Heartbeat, "interval of the heartbeat comment on quiet streams (0: none)")
	fs.IntVar(&c.opts.DropEvery, "drop-every", 0, "end each stream after this many events (0: never), to exercise reconnects")
	fs.DurationVar(&c.opts.WriteTimeout, "write-timeout", d.WriteTimeout, "disconnect a client that takes longer than this to accept a write (0: never)")
	fs.Int64Var(&c.opts.Seed, "seed", 0, "seed of the ticker: the same seed gives the same events")
	fs.BoolVar(&c.opts.AllowEmit, "allow-emit", false, "enable POST /emit?type=&data= to publish events by hand")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate file (PEM); with --tls-key: serve HTTPS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 5*time.Second, "longest graceful shutdown on SIGINT/SIGTERM")
	fs.Usage = envflag.Usage(fs, envPrefix, stderr, "Usage: origin [flags]\n\nThe reference Server-Sent Events origin of pushproxy: a stock ticker on GET /events.")
	err := envflag.Parse(fs, envPrefix, args, getenv)
	if err != nil {
		return nil, err
	}
	if len(c.listen) == 0 {
		return nil, errors.New("--listen: no address")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if c.opts.Symbols <= 0 || c.opts.History <= 0 || c.opts.Rate < 0 || c.opts.DropEvery < 0 {
		return nil, errors.New("--symbols and --history must be positive, --rate and --drop-every not negative")
	}
	// On the command line 0 means "none"; in origin.Options it means the default.
	if c.opts.Heartbeat <= 0 {
		c.opts.Heartbeat = -1
	}
	if c.opts.WriteTimeout <= 0 {
		c.opts.WriteTimeout = -1
	}
	return c, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "origin:", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		fmt.Fprintln(stderr, "origin: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	c.opts.Logger = log

	o := origin.New(&c.opts)
	defer o.Close()
	srv := o.HTTPServer()
	scheme := "http"
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			fmt.Fprintln(stderr, "origin:", err)
			return 1
		}
		srv.TLSConfig.Certificates = []tls.Certificate{cert}
		scheme = "https"
	}

	var lns []net.Listener
	for _, addr := range c.listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			fmt.Fprintln(stderr, "origin:", err)
			return 1
		}
		lns = append(lns, ln)
	}

	o.Start(ctx)
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		fmt.Fprintf(stdout, "listening on %s://%s\n", scheme, ln.Addr())
		go func() {
			if scheme == "https" {
				errc <- srv.ServeTLS(ln, "", "")
			} else {
				errc <- srv.Serve(ln)
			}
		}()
	}
	log.Info("origin started", "listen", c.listen.String(), "rate", c.opts.Rate, "symbols", c.opts.Symbols,
		"history", c.opts.History, "drop_every", c.opts.DropEvery, "tls", scheme == "https")

	code, pending := 0, len(lns)
	select {
	case <-ctx.Done():
	case err := <-errc:
		pending--
		fmt.Fprintln(stderr, "origin: serve:", err)
		code = 1
	}

	// The streams never end on their own: Close ends them, then Shutdown finds idle
	// connections only.
	o.Close()
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete: closing the connections", "err", err)
		srv.Close()
	}
	for ; pending > 0; pending-- {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(stderr, "origin: serve:", err)
			code = 1
		}
	}
	log.Info("origin stopped")
	return code
}
