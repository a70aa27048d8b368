package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/metrics"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

// serveConfig is everything `pushproxy serve` is told.
type serveConfig struct {
	Listen          string
	DebugListen     string
	DatabaseURL     string
	DataDir         string
	Migrate         bool
	ShutdownTimeout time.Duration
	DBMaxConns      int
	DB              store.Options // the session timeouts
	Log             logConfig

	Allow   listFlag
	APIKeys secretListFlag
	Proxy   proxy.Options
	API     api.Options
	Wake    wakeConfig
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	d, da := proxy.DefaultOptions, api.DefaultOptions
	fs.StringVar(&c.Listen, "listen", ":8080", "address the HTTP API listens on")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "Postgres URL (DATABASE_URL is read too); empty: run a local Postgres in --data-dir")
	fs.StringVar(&c.DataDir, "data-dir", "pushproxy-data", "where the local Postgres keeps its data when no database URL is given")
	fs.BoolVar(&c.Migrate, "migrate", true, "apply pending database migrations at start-up")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "how long a graceful shutdown may take")
	fs.IntVar(&c.DBMaxConns, "db-max-conns", 20, "size of the Postgres connection pool")
	fs.DurationVar(&c.DB.StatementTimeout, "db-statement-timeout", 0, "longest a database statement may run; below --lease-ttl (0: a third of --lease-ttl)")
	fs.DurationVar(&c.DB.IdleInTransactionTimeout, "db-idle-in-transaction-timeout", 0, "a database session idle this long inside a transaction (a frozen instance) is ended and its locks released; below --lease-ttl (0: a third of --lease-ttl)")
	fs.DurationVar(&c.DB.LockTimeout, "db-lock-timeout", 2*time.Second, "longest a request waits for a stream's lock (acknowledging read, close) before answering 503")
	fs.StringVar(&c.DebugListen, "debug-listen", "", "address of the Go profiler (/debug/pprof/); keep it private (empty: off)")
	c.Log.flags(fs, "info")

	fs.Var(&c.Allow, "upstream-allow", "upstreams the proxy may dial: comma-separated hosts, host:port, CIDRs, or * for any public host (empty: any public host; loopback and private addresses only when listed)")
	fs.StringVar(&c.API.AdminToken, "admin-token", "", "bearer token of the admin API (/v1/admin/...) and the dashboard (/admin/); empty: both are off")
	fs.Var(&c.APIKeys, "api-keys", "comma-separated API keys; when set, handing off a stream requires Authorization: Bearer <key>")
	c.Wake.flags(fs)
	p := &c.Proxy
	fs.StringVar(&p.InstanceID, "instance-id", "", "name of this instance in leases; unique per running instance, kept across restarts so a restarted instance takes its streams back at once (empty: with a local Postgres, an id kept in its data directory; otherwise host-pid-random)")
	fs.DurationVar(&p.LeaseTTL, "lease-ttl", d.LeaseTTL, "how long a stream lease lasts unrenewed; a dead instance's streams move after this")
	fs.DurationVar(&p.ClaimInterval, "claim-interval", d.ClaimInterval, "how often to look for streams no instance holds")
	fs.IntVar(&p.ClaimBatch, "claim-batch", d.ClaimBatch, "most streams taken by one claim")
	fs.IntVar(&p.MaxHeldStreams, "max-held-streams", 0, "most streams this instance holds (0: no bound)")
	fs.DurationVar(&p.RebalanceInterval, "rebalance-interval", d.RebalanceInterval, "how often to compare the streams held with a fair share (held streams / live instances) and hand the excess over to other instances (negative: no balancing)")
	fs.IntVar(&p.RebalanceRate, "rebalance-rate", d.RebalanceRate, "most streams handed over per second while above the fair share")
	fs.IntVar(&p.TakeoverRate, "takeover-rate", d.TakeoverRate, "most first connects per second of streams taken over from other instances, spread with jitter (negative: no bound); handoffs connect at once")
	fs.IntVar(&p.MaxEventSize, "max-event-size", d.MaxEventSize, "largest upstream event or line, in bytes; a larger one fails the stream")
	fs.Int64Var(&p.MaxBacklog, "max-backlog", d.MaxBacklog, "most events queued per stream; the oldest are dropped beyond it (readers get a gap signal)")
	fs.IntVar(&p.MaxStreamsPerDevice, "max-streams-per-device", d.MaxStreamsPerDevice, "most streams held for one device")
	fs.Int64Var(&c.API.MaxBodyBytes, "max-body-bytes", da.MaxBodyBytes, "largest API request body, in bytes")
	fs.IntVar(&p.CommitBatch, "commit-batch", d.CommitBatch, "most events committed in one transaction")
	fs.IntVar(&p.CommitQueue, "commit-queue", d.CommitQueue, "most events waiting to be committed; upstream reads pause beyond it")
	fs.BoolVar(&p.UpstreamH2C, "upstream-h2c", false, "HTTP/2 without TLS (prior knowledge) to http:// origins (https:// origins get HTTP/2 whenever they offer it by ALPN, with or without this)")
	fs.DurationVar(&p.UpstreamRetry, "upstream-retry", d.UpstreamRetry, "reconnect delay when the origin sent no retry: field")
	fs.DurationVar(&p.UpstreamBackoffMax, "upstream-backoff-max", d.UpstreamBackoffMax, "cap of the reconnect backoff")
	fs.IntVar(&p.UpstreamMaxRedirects, "upstream-max-redirects", d.UpstreamMaxRedirects, "most redirects followed per connect")
	fs.DurationVar(&p.UpstreamConnectTimeout, "upstream-connect-timeout", d.UpstreamConnectTimeout, "longest wait to connect to an origin and send the request (the wait for its response head is the idle timeout's)")
	fs.DurationVar(&p.UpstreamIdleTimeout, "upstream-idle-timeout", d.UpstreamIdleTimeout, "reconnect an upstream silent for this long, or that sent no response head this long after the request (0: never)")
	fs.DurationVar(&c.API.Heartbeat, "heartbeat", da.Heartbeat, "interval of comment heartbeats to event readers")
	fs.DurationVar(&c.API.DashboardRefresh, "dashboard-refresh", da.DashboardRefresh, "how often the dashboard's numbers are recomputed while a dashboard is open")
	fs.DurationVar(&p.ReaderTTL, "reader-ttl", d.ReaderTTL, "how long a reader counts as open after its instance stops refreshing it")
}

// logConfig is the logging flags shared by subcommands.
type logConfig struct {
	Level  *choiceFlag
	Format *choiceFlag
}

// flags declares --log-level (defaulting to level) and --log-format.
func (c *logConfig) flags(fs *flag.FlagSet, level string) {
	c.Level, c.Format = choice(level, "debug", "info", "warn", "error"), choice("text", "text", "json")
	fs.Var(c.Level, "log-level", "debug, info, warn or error")
	fs.Var(c.Format, "log-format", "text or json")
}

func (c *logConfig) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.Level.value)) // one of the four names
	o := &slog.HandlerOptions{Level: lvl}
	if c.Format.value == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// Server is a running `pushproxy serve`: the HTTP API, the proxy service, the store, and
// the local Postgres when it manages one. End-to-end tests start it on 127.0.0.1:0.
type Server struct {
	cfg   serveConfig
	log   *slog.Logger
	pg    *pglocal.Cluster
	st    *store.Store
	svc   *proxy.Service
	api   *api.Server
	wake  *wakeup.Scheduler
	http  *http.Server
	debug *http.Server
	ln    net.Listener
	done  chan error
}

// Addr is the address the API listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// openServer starts everything; on error it undoes what it started.
func openServer(ctx context.Context, cfg serveConfig, log *slog.Logger, getenv func(string) string) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.close(context.WithoutCancel(ctx))
		}
	}()
	allow, err := upstream.ParseAllowList(cfg.Allow)
	if err != nil {
		return nil, err
	}
	url := databaseURL(cfg.DatabaseURL, getenv)
	if url == "" {
		dir, err := filepath.Abs(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		log.InfoContext(ctx, "no database URL given: running a local Postgres", slog.String("data_dir", dir))
		s.pg, err = pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(dir, "postgres"), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("local postgres: %w", err)
		}
		if err := s.pg.CreateDatabase(ctx, "pushproxy"); err != nil {
			return nil, fmt.Errorf("local postgres: %w", err)
		}
		url = s.pg.URL("pushproxy")
		if cfg.Proxy.InstanceID == "" {
			if cfg.Proxy.InstanceID, err = s.pg.InstanceID(); err != nil {
				return nil, fmt.Errorf("local postgres: %w", err)
			}
		}
	}
	if cfg.Migrate {
		if err := store.Migrate(ctx, url, log); err != nil {
			return nil, err
		}
	} else if err := store.CheckSchema(ctx, url); err != nil {
		return nil, err
	}
	dbo := cfg.DB
	dbo.MaxConns, dbo.Logger, dbo.LeaseTTL = int32(cfg.DBMaxConns), log, cfg.Proxy.LeaseTTL
	s.st, err = store.Open(ctx, url, &dbo)
	if err != nil {
		return nil, err
	}
	po := cfg.Proxy
	po.Upstream, po.Logger = allow, log
	ao := cfg.API
	ao.APIKeys, ao.Logger = cfg.APIKeys.listFlag, log
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	if err := reg.Register(metrics.NewBacklogCollector(s.st, log)); err != nil {
		return nil, err
	}
	po.Metrics, ao.Metrics = m, m
	senders, err := cfg.Wake.senders(ctx, log)
	if err != nil {
		return nil, err
	}
	so := cfg.Wake.Sched
	so.InstanceID, so.Logger, so.Metrics = po.InstanceID, log, m
	po.Wake = cfg.Wake.policy()
	s.svc = proxy.New(s.st, url, &po)
	so.InstanceID = s.svc.InstanceID()
	so.Rearm = func(ctx context.Context, devices []string) error { return s.st.RearmWakeups(ctx, devices, po.Wake) }
	s.wake = wakeup.New(s.st, senders, &so)
	s.svc.SetWaker(s.wake)
	if err := s.svc.Start(ctx); err != nil {
		return nil, err
	}
	s.wake.Start(ctx)
	s.api = api.New(s.svc, s.st, &ao)
	s.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s.http = &http.Server{
		Handler:           withMetrics(s.api.Handler(), reg),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.http.Serve(s.ln) }()
	if cfg.DebugListen != "" {
		dln, err := net.Listen("tcp", cfg.DebugListen)
		if err != nil {
			return nil, fmt.Errorf("--debug-listen: %w", err)
		}
		s.debug = &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 10 * time.Second}
		go s.debug.Serve(dln)
		log.InfoContext(ctx, "profiler listening", slog.String("addr", dln.Addr().String()))
	}
	log.InfoContext(ctx, "pushproxy serving", slog.String("addr", s.Addr()), slog.String("instance", s.svc.InstanceID()))
	return s, nil
}

// withMetrics serves the Prometheus metrics of reg at /metrics, and everything else with h.
func withMetrics(h http.Handler, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("/", h)
	return mux
}

// debugHandler serves the Go profiler.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// close shuts down in order: stop taking requests (open streams end), stop holders and
// commit what they had, release leases, close the database, stop the local Postgres.
func (s *Server) close(ctx context.Context) error {
	var errs []error
	// Event streams and the dashboard's live feeds never finish on their own: stopping the
	// service and the API's feed ends them, so they run alongside the HTTP shutdown.
	stopped := make(chan error, 1)
	if s.svc != nil {
		go func() { stopped <- s.svc.Stop(ctx) }()
	} else {
		stopped <- nil
	}
	if s.api != nil {
		s.api.Close()
	}
	if s.http != nil {
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if err := <-stopped; err != nil {
		errs = append(errs, err)
	}
	if s.wake != nil {
		s.wake.Stop()
	}
	if s.debug != nil {
		s.debug.Close()
	}
	if s.st != nil {
		s.st.Close()
	}
	if s.pg != nil {
		if err := s.pg.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func serveCommand() command {
	return command{
		name:    "serve",
		summary: "run the push proxy: the HTTP API and the holders of upstream streams",
		about: `Runs the push proxy: the HTTP API and the holders of upstream streams. With no database
URL it runs a local Postgres in --data-dir (initialised on first start, kept across restarts).`,
		setup: func(fs *flag.FlagSet) runFunc {
			var cfg serveConfig
			cfg.flags(fs)
			return func(ctx context.Context, _ []string, _, stderr io.Writer, getenv func(string) string) int {
				return runServe(ctx, cfg, stderr, getenv)
			}
		},
	}
}

func runServe(ctx context.Context, cfg serveConfig, stderr io.Writer, getenv func(string) string) int {
	log := cfg.Log.logger(stderr)
	srv, err := openServer(ctx, cfg, log, getenv)
	if err != nil {
		log.Error("start-up failed", slog.String("error", err.Error()))
		return 1
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-srv.done:
		log.Error("http server stopped", slog.String("error", err.Error()))
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.close(sctx); err != nil {
		log.Error("shutdown", slog.String("error", err.Error()))
		return 1
	}
	log.Info("stopped")
	return 0
}
