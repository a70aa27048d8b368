package api

import (
	"cmp"
	"log/slog"
	"net/netip"
	"time"

	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

// Options configure a Server. Zero fields take the defaults in DefaultOptions; APIKeys and
// AdminToken have none (no key required, admin API and dashboard off).
type Options struct {
	// APIKeys, when not empty, are required (as Bearer tokens) to hand off streams.
	APIKeys []string
	// AdminToken is required (as a Bearer token) by the admin API; "" turns it off.
	AdminToken string
	// CORSOrigins are the web origins (scheme://host[:port]) whose pages may call the
	// device routes (/v1/streams...); "*" allows any. Empty: no CORS. Check them with
	// CheckCORSOrigins.
	CORSOrigins []string
	// WebPushEndpoints are the push services a Web Push subscription's endpoint may name
	// (--webpush-endpoints); nil: wakeup.DefaultWebPushEndpoints.
	WebPushEndpoints *wakeup.WebPushEndpoints
	// VAPIDPublicKey is the application server key (base64url) web apps subscribe with,
	// served at GET /v1/webpush/vapid-public-key; "": the route answers 404.
	VAPIDPublicKey string
	// MaxBodyBytes bounds API request bodies.
	MaxBodyBytes int64
	// Heartbeat is the interval of comment heartbeats to event readers.
	Heartbeat time.Duration
	// DashboardRefresh is how often the dashboard's numbers are recomputed while someone
	// watches.
	DashboardRefresh time.Duration
	// SessionTTL is how long a dashboard sign-in lasts.
	SessionTTL time.Duration

	// Rate limits (see limits.go). A rate is per second; 0 is no limit, except for
	// LoginRatePerAddress, which has a default. Bursts are HandoffBurst requests (at least
	// one second's worth).
	HandoffRatePerKey     float64
	HandoffRatePerAddress float64
	HandoffBurst          int
	LoginRatePerAddress   float64
	// TrustedProxies are the peers whose X-Forwarded-For names the client (for the limits
	// per address); nobody else's is believed.
	TrustedProxies []netip.Prefix

	Logger  *slog.Logger
	Metrics Metrics
}

// DefaultOptions are the defaults of the options that have one.
var DefaultOptions = Options{
	MaxBodyBytes:     64 << 10,
	Heartbeat:        15 * time.Second,
	DashboardRefresh: 2 * time.Second,
	SessionTTL:       12 * time.Hour,
	HandoffBurst:     20,
	// A few sign-in attempts per second per client address.
	LoginRatePerAddress: 1,
}

func (o *Options) withDefaults() Options {
	r := *o
	d := DefaultOptions
	r.MaxBodyBytes = cmp.Or(r.MaxBodyBytes, d.MaxBodyBytes)
	r.Heartbeat = cmp.Or(r.Heartbeat, d.Heartbeat)
	r.DashboardRefresh = cmp.Or(r.DashboardRefresh, d.DashboardRefresh)
	r.SessionTTL = cmp.Or(r.SessionTTL, d.SessionTTL)
	r.HandoffBurst = cmp.Or(r.HandoffBurst, d.HandoffBurst)
	r.LoginRatePerAddress = cmp.Or(r.LoginRatePerAddress, d.LoginRatePerAddress)
	if r.WebPushEndpoints == nil {
		r.WebPushEndpoints, _ = wakeup.ParseWebPushEndpoints(wakeup.DefaultWebPushEndpoints)
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics = noopMetrics{}
	}
	return r
}

// Metrics receives what the HTTP surface measures. The default does nothing.
type Metrics interface {
	// Request records one API request by route pattern (never the path: it holds ids) and
	// status.
	Request(route, method string, status int, took time.Duration)
}

type noopMetrics struct{}

func (noopMetrics) Request(string, string, int, time.Duration) {}

// Server is the proxy's HTTP surface on top of a proxy.Service: the device API (handoff,
// stream state, events as SSE or JSON pages), the admin API, and the dashboard with its live
// feed.
type Server struct {
	svc        *proxy.Service
	store      *store.Store
	opts       Options
	log        *slog.Logger
	dash       *feed         // the dashboard's overview
	tokenMark  []byte        // the mark of the admin token in dashboard sessions
	loginLimit *keyedLimiter // dashboard sign-ins, per client address
	// handoffs per client address and per API key (nil: no limit)
	addrLimit, keyLimit *keyedLimiter
	proxies             trustedProxies
}

// New returns the HTTP surface of svc, which runs on st.
func New(svc *proxy.Service, st *store.Store, opts *Options) *Server {
	if opts == nil {
		opts = &Options{}
	}
	o := opts.withDefaults()
	s := &Server{svc: svc, store: st, opts: o, log: o.Logger}
	s.dash = newFeed(o.DashboardRefresh, s.computeOverview, s.overviewFailed)
	s.tokenMark = tokenMark(o.AdminToken)
	s.loginLimit = newKeyedLimiter(o.LoginRatePerAddress, loginBurst)
	s.addrLimit = newKeyedLimiter(o.HandoffRatePerAddress, o.HandoffBurst)
	s.keyLimit = newKeyedLimiter(o.HandoffRatePerKey, o.HandoffBurst)
	s.proxies = trustedProxies(o.TrustedProxies)
	return s
}

// Close ends the dashboard's live feeds (their responses end) and returns once the feed's
// loop has stopped. Call it alongside http.Server.Shutdown: a live feed never ends on its
// own. (Event streams end when the service stops.) Close is idempotent.
func (s *Server) Close() { s.dash.shutdown() }
