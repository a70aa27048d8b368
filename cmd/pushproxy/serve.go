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
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/pglocal"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/maintenance"
	"github.com/pushproxy/pushproxy/metrics"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

// serveConfig is everything `pushproxy serve` is told.
type serveConfig struct {
	Listen          string
	OpenHandoff     bool
	AdminListen     string
	TLS             tlsConfig
	Timeouts        timeouts
	DatabaseURL     string
	DataDir         string
	Migrate         bool
	ShutdownTimeout time.Duration
	DBMaxConns      int
	DB              store.Options // the session timeouts
	Log             logConfig

	Allow          listFlag
	CORSOrigins    listFlag
	APIKeys        secretListFlag
	TrustedProxies listFlag
	Keys           keyConfig
	Proxy          proxy.Options
	API            api.Options
	Wake           wakeConfig
	Maint          maintenance.Options
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	d, da := proxy.DefaultOptions, api.DefaultOptions
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "address the HTTP API listens on; on an address other than loopback, handoff needs --api-keys or --open-handoff")
	fs.BoolVar(&c.OpenHandoff, "open-handoff", false, "let anyone who reaches --listen hand off streams without an API key, on a non-loopback address too (without it, serve refuses to start open on such an address)")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:9091", "address of the operators' listener: Prometheus /metrics and the Go profiler /debug/pprof/; keep it private (empty: off)")
	c.TLS.flags(fs)
	c.Timeouts.flags(fs)
	fs.StringVar(&c.DatabaseURL, "database-url", "", "Postgres URL (DATABASE_URL is read too); empty: run a local Postgres in --data-dir")
	fs.StringVar(&c.DataDir, "data-dir", "pushproxy-data", "where the local Postgres keeps its data when no database URL is given")
	fs.BoolVar(&c.Migrate, "migrate", true, "apply pending database migrations at start-up")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "how long a graceful shutdown may take")
	fs.IntVar(&c.DBMaxConns, "db-max-conns", 20, "size of the Postgres connection pool")
	fs.DurationVar(&c.DB.StatementTimeout, "db-statement-timeout", 0, "longest a database statement may run; below --lease-ttl (0: a third of --lease-ttl)")
	fs.DurationVar(&c.DB.IdleInTransactionTimeout, "db-idle-in-transaction-timeout", 0, "a database session idle this long inside a transaction (a frozen instance) is ended and its locks released; below --lease-ttl (0: a third of --lease-ttl)")
	fs.DurationVar(&c.DB.LockTimeout, "db-lock-timeout", 2*time.Second, "longest a request waits for a stream's lock (acknowledging read, close) before answering 503")
	c.Log.flags(fs, "info")

	fs.Var(&c.Allow, "upstream-allow", "upstreams the proxy may dial: comma-separated hosts, host:port, CIDRs, or * for any public host (empty: any public host; loopback and private addresses only when listed)")
	fs.StringVar(&c.API.AdminToken, "admin-token", "", "bearer token of the admin API (/v1/admin/...) and the dashboard (/admin/); empty: both are off")
	fs.Var(&c.CORSOrigins, "cors-origins", "comma-separated web origins (https://app.example.com) whose pages may call the device routes /v1/streams...; * for any (no credentials are ever allowed); empty: no CORS")
	fs.DurationVar(&c.API.SessionTTL, "admin-session-ttl", api.DefaultOptions.SessionTTL, "how long a dashboard sign-in lasts; signing out ends it on every instance")
	fs.Var(&c.APIKeys, "api-keys", "comma-separated API keys; when set, handing off a stream requires Authorization: Bearer <key>")
	c.Wake.flags(fs)
	c.Keys.flags(fs)
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
	c.limitFlags(fs)
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
	m, dm := &c.Maint, maintenance.DefaultOptions
	fs.DurationVar(&m.MaxBacklogAge, "max-backlog-age", 0, "queued events older than this are dropped (readers get a gap signal; 0: no bound)")
	fs.DurationVar(&m.ClosedRetention, "closed-retention", dm.ClosedRetention, "a closed or failed stream's row and events are deleted this long after it ended (its forwarded headers and URL query are erased at once)")
	fs.DurationVar(&m.StreamIdleTTL, "stream-idle-ttl", dm.StreamIdleTTL, "a held stream its device has not read for this long (and with no reader open) is closed and its upstream released")
	fs.DurationVar(&m.Interval, "maintenance-interval", dm.Interval, "how often the maintenance leader runs the retention rules")
	fs.DurationVar(&m.GaugeInterval, "gauges-interval", dm.GaugeInterval, "how often the maintenance leader recomputes the database-wide gauges every instance's /metrics serves")
	fs.IntVar(&m.BatchSize, "maintenance-batch", dm.BatchSize, "most rows one retention statement deletes or closes")
	fs.DurationVar(&m.BatchPause, "maintenance-pause", dm.BatchPause, "pause between two retention batches")
}

// limitFlags declares the quotas and rate limits of clients.
func (c *serveConfig) limitFlags(fs *flag.FlagSet) {
	p, da := &c.Proxy, api.DefaultOptions
	fs.Float64Var(&c.API.HandoffRatePerAddress, "handoff-rate-per-address", 10, "most handoffs per second from one client address (an IPv6 /64), in bursts of --handoff-burst; beyond it 429 rate-limited (0: no limit)")
	fs.Float64Var(&c.API.HandoffRatePerKey, "handoff-rate-per-key", 0, "most handoffs per second under one API key, in bursts of --handoff-burst; beyond it 429 rate-limited (0: no limit)")
	fs.IntVar(&c.API.HandoffBurst, "handoff-burst", da.HandoffBurst, "handoffs a client address or API key may make at once before its rate applies (at least one second's worth)")
	fs.Var(&c.TrustedProxies, "trusted-proxies", "comma-separated addresses and CIDRs of reverse proxies whose X-Forwarded-For names the client, for the limits per address (empty: the connection's peer is the client)")
	fs.IntVar(&p.MaxStreamsPerKey, "max-streams-per-key", 0, "most streams held under one API key; beyond it 409 key-stream-limit (0: no bound)")
	fs.Int64Var(&p.MaxBacklogBytes, "max-backlog-bytes", 64<<20, "most stored bytes (ids, types and data) queued per stream; the oldest events are dropped beyond it, the newest always kept (readers get a gap signal) (0: no bound)")
	fs.IntVar(&p.MaxReadersPerStream, "max-readers-per-stream", 8, "most events readers open at once on one stream, over all instances; beyond it 409 reader-limit (0: no bound)")
	fs.Float64Var(&c.API.LoginRatePerAddress, "admin-login-rate", da.LoginRatePerAddress, "most dashboard sign-in attempts per second from one client address, in bursts of 10; beyond it 429")
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
	maint *maintenance.Runner
	http  *http.Server
	admin *http.Server
	ln    net.Listener
	aln   net.Listener
	cert  *certificate // nil without --tls-cert
	done  chan error
}

// Addr is the address the API listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// AdminAddr is the address of the operators' listener ("" when it is off).
func (s *Server) AdminAddr() string {
	if s.aln == nil {
		return ""
	}
	return s.aln.Addr().String()
}

// ReloadTLS reads the certificate and key files again (what SIGHUP does); on an error the
// certificate in use stays. Without TLS it does nothing.
func (s *Server) ReloadTLS(ctx context.Context) {
	if s.cert != nil {
		s.cert.reloadLogged(ctx)
	}
}

// openServer starts everything; on error it undoes what it started.
func openServer(ctx context.Context, cfg serveConfig, log *slog.Logger, getenv func(string) string) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.close(context.WithoutCancel(ctx))
		}
	}()
	if err := checkOpenHandoff(cfg.Listen, cfg.APIKeys.listFlag, cfg.OpenHandoff); err != nil {
		return nil, err
	}
	allow, err := upstream.ParseAllowList(cfg.Allow)
	if err != nil {
		return nil, err
	}
	if err := api.CheckCORSOrigins(cfg.CORSOrigins); err != nil {
		return nil, fmt.Errorf("--cors-origins: %w", err)
	}
	if cfg.TLS.on() {
		if s.cert, err = loadCertificate(cfg.TLS, log); err != nil {
			return nil, err
		}
	}
	url := databaseURL(cfg.DatabaseURL, getenv)
	keys, err := cfg.Keys.keys(ctx, url == "", cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
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
	if cfg.Proxy.InstanceID == "" {
		cfg.Proxy.InstanceID = proxy.NewInstanceID()
	}
	dbo := cfg.DB
	dbo.MaxConns, dbo.Logger, dbo.LeaseTTL = int32(cfg.DBMaxConns), log, cfg.Proxy.LeaseTTL
	// The pool's sessions carry the instance's name, for the maintenance leader to end
	// those an instance frozen in a transaction left once its lease lapsed.
	dbo.InstanceID = cfg.Proxy.InstanceID
	if keys != nil {
		dbo.Sealer = keys
	}
	s.st, err = store.Open(ctx, url, &dbo)
	if err != nil {
		return nil, err
	}
	warnUnopenable(ctx, s.st, log)
	po := cfg.Proxy
	po.Upstream, po.Logger = allow, log
	ao := cfg.API
	ao.APIKeys, ao.Logger, ao.CORSOrigins = cfg.APIKeys.listFlag, log, cfg.CORSOrigins
	if ao.TrustedProxies, err = api.ParseTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("--trusted-proxies: %w", err)
	}
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
	senders, wp, err := cfg.Wake.senders(ctx, log, s.pg != nil, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ao.WebPushEndpoints, ao.VAPIDPublicKey = wp.Endpoints, wp.PublicKey
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
	mo := cfg.Maint
	mo.DeadGrace, mo.WakeupHistory = cfg.Wake.DeadGrace, cfg.Wake.History
	mo.InstanceID, mo.LeaseTTL, mo.InstanceGone = s.svc.InstanceID(), po.LeaseTTL, po.LeaseTTL
	mo.Logger, mo.Metrics = log, m
	s.maint = maintenance.New(s.st, &mo)
	s.maint.Start(ctx)
	s.api = api.New(s.svc, s.st, &ao)
	s.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s.http = &http.Server{
		Handler:           bodyDeadline(cfg.Timeouts.ReadBody, s.api.Handler()),
		ReadHeaderTimeout: cfg.Timeouts.ReadHeader,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if s.cert != nil {
		s.http.TLSConfig, scheme = s.cert.config(), "https"
	}
	if cfg.AdminListen != "" {
		if s.aln, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("--admin-listen %s (/metrics, /debug/pprof/): %w; with several instances on one host give each its own, or \"\" to turn it off", cfg.AdminListen, err)
		}
		s.admin = &http.Server{Handler: adminHandler(reg), ReadHeaderTimeout: cfg.Timeouts.ReadHeader,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go s.admin.Serve(s.aln)
	}
	s.done = make(chan error, 1)
	go func() {
		if s.cert != nil {
			s.done <- s.http.ServeTLS(s.ln, "", "")
		} else {
			s.done <- s.http.Serve(s.ln)
		}
	}()
	log.InfoContext(ctx, "pushproxy serving", slog.String("addr", s.Addr()), slog.String("scheme", scheme),
		slog.String("admin", s.AdminAddr()), slog.String("instance", s.svc.InstanceID()))
	return s, nil
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
	if s.maint != nil {
		s.maint.Stop()
	}
	if s.admin != nil {
		s.admin.Close()
	} else if s.aln != nil {
		s.aln.Close()
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case <-hup:
			srv.ReloadTLS(ctx)
		case <-ctx.Done():
			log.Info("shutting down")
			break wait
		case err := <-srv.done:
			log.Error("http server stopped", slog.String("error", err.Error()))
			break wait
		}
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
