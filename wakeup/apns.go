package wakeup

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/certificate"
	"github.com/sideshow/apns2/token"
	"golang.org/x/net/http2"

	"github.com/pushproxy/pushproxy"
)

// APNsOptions configure the APNs sender. Give either token auth (KeyFile, KeyID and TeamID)
// or certificate auth (CertFile).
type APNsOptions struct {
	// KeyFile is the .p8 auth key file of token auth, KeyID its 10-character key id and
	// TeamID the developer team id.
	KeyFile, KeyID, TeamID string
	// CertFile is the push certificate of certificate auth: a .p12 (.pfx) file, or PEM
	// holding the certificate and its private key; CertPassword decrypts it.
	CertFile, CertPassword string
	// Topic is the default topic (the app's bundle id), used for pushes with no Topic. It is
	// required with token auth; with certificate auth it defaults to the certificate's topic.
	Topic string
	// URL replaces the APNs host (for tests, the fake APNs, or a private gateway), for pushes
	// of both environments. "" sends production pushes to api.push.apple.com and development
	// pushes to api.sandbox.push.apple.com. The server's certificate is checked against the
	// system roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured, see crypto/x509).
	URL string
	// MaxConcurrent caps the requests in flight per connection (one connection per
	// environment). 0 honours the server's SETTINGS_MAX_CONCURRENT_STREAMS, which the sender
	// always does: sends past the limit wait for a stream rather than open more connections.
	MaxConcurrent int
	// Timeout bounds a send, waiting for a stream included; 30 seconds when 0.
	Timeout time.Duration
}

// APNs sends wake-ups through the Apple Push Notification service.
//
// A push is a background push (apns-push-type background, apns-priority 5) whose payload is
// {"aps":{"content-available":1},"pushproxy":{...}} (see the wake-up payload in payload.go).
// An urgent push with an alert text is an alert push (priority 10) whose aps also holds the
// alert, "mutable-content":1 and "content-available":1. apns-collapse-id is Push.CollapseID
// (hashed when longer than 64 bytes), apns-expiration now+TTL (0 for a TTL of 0: try once),
// apns-id Push.ID when it is a UUID, apns-topic Push.Topic or the default topic.
//
// Responses map to SendError kinds: 410 and 400 BadDeviceToken or DeviceTokenNotForTopic are
// KindTokenGone; 429 KindThrottled (with Retry-After when the server sends one); 403
// KindCredentials; 5xx and network errors KindRetry; other statuses KindInvalid. No error
// text holds the device token (see networkError).
type APNs struct {
	topic   string
	timeout time.Duration
	token   *token.Token // nil with certificate auth
	prod    *apnsEndpoint
	dev     *apnsEndpoint // == prod with APNsOptions.URL
}

// apnsEndpoint is a client of one APNs host.
type apnsEndpoint struct {
	client *apns2.Client
	pool   *apnsConnPool
	sem    chan struct{} // nil when APNsOptions.MaxConcurrent is 0
}

// NewAPNs checks the credentials and returns a sender. It does not connect: the first send
// does.
func NewAPNs(opts APNsOptions) (*APNs, error) {
	a := &APNs{topic: opts.Topic, timeout: cmp.Or(opts.Timeout, 30*time.Second)}
	if opts.Timeout < 0 {
		return nil, errors.New("apns: Timeout is negative")
	}
	if opts.MaxConcurrent < 0 {
		return nil, errors.New("apns: MaxConcurrent is negative")
	}
	var newClient func() *apns2.Client
	switch {
	case opts.KeyFile != "" && opts.CertFile != "":
		return nil, errors.New("apns: set KeyFile (token auth) or CertFile (certificate auth), not both")
	case opts.KeyFile != "":
		if opts.KeyID == "" {
			return nil, errors.New("apns: KeyID (the id of the auth key in KeyFile) is required with token auth")
		}
		if opts.TeamID == "" {
			return nil, errors.New("apns: TeamID is required with token auth")
		}
		if opts.Topic == "" {
			return nil, errors.New("apns: Topic (the app's bundle id) is required with token auth")
		}
		key, err := token.AuthKeyFromFile(opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("apns: auth key %s: %w", opts.KeyFile, err)
		}
		a.token = &token.Token{AuthKey: key, KeyID: opts.KeyID, TeamID: opts.TeamID}
		if _, err := a.token.Generate(); err != nil {
			return nil, fmt.Errorf("apns: auth key %s cannot sign a provider token: %w", opts.KeyFile, err)
		}
		newClient = func() *apns2.Client { return apns2.NewTokenClient(a.token) }
	case opts.CertFile != "":
		cert, err := loadAPNsCertificate(opts.CertFile, opts.CertPassword)
		if err != nil {
			return nil, err
		}
		if a.topic == "" {
			a.topic = certificateTopic(cert.Leaf)
		}
		if a.topic == "" {
			return nil, fmt.Errorf("apns: certificate %s names no topic (no UID in its subject): set Topic", opts.CertFile)
		}
		newClient = func() *apns2.Client { return apns2.NewClient(cert) }
	default:
		return nil, errors.New("apns: no credentials: set KeyFile, KeyID and TeamID (token auth) or CertFile (certificate auth)")
	}

	if opts.URL != "" {
		u, err := url.Parse(opts.URL)
		if err != nil {
			return nil, fmt.Errorf("apns: URL: %w", err)
		}
		if u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("apns: URL %q is not of the form https://host[:port]", opts.URL)
		}
		a.prod = newAPNsEndpoint(newClient(), "https://"+u.Host, opts.MaxConcurrent)
		a.dev = a.prod
		return a, nil
	}
	a.prod = newAPNsEndpoint(newClient(), apns2.HostProduction, opts.MaxConcurrent)
	a.dev = newAPNsEndpoint(newClient(), apns2.HostDevelopment, opts.MaxConcurrent)
	return a, nil
}

// newAPNsEndpoint points c at host over a transport that keeps to one connection and to
// that connection's stream limit.
//
// APNs asks providers to keep to the SETTINGS_MAX_CONCURRENT_STREAMS it advertises. Go's
// HTTP/2 transport opens another connection when one has as many streams open as the server
// allows, unless StrictMaxConcurrentStreams is set: then a request waits for a stream. But
// with the transport's own connection pool, strict mode stalls as soon as more requests
// wait than the server allows streams: each waiting request holds a reservation that counts
// against the limit, and the one request allowed to wait for a stream waits for the
// reservations to go (golang/go#70809). So the endpoint's transport has a pool of its own,
// apnsConnPool, that reserves nothing.
func newAPNsEndpoint(c *apns2.Client, host string, maxConcurrent int) *apnsEndpoint {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(c.Certificate.Certificate) > 0 {
		tlsConf.Certificates = []tls.Certificate{c.Certificate}
	}
	pool := &apnsConnPool{tlsConf: tlsConf}
	pool.t = &http2.Transport{
		ConnPool:                   pool,
		StrictMaxConcurrentStreams: true,
		ReadIdleTimeout:            apns2.ReadIdleTimeout,
		PingTimeout:                15 * time.Second,
	}
	c.Host = host
	c.HTTPClient.Transport = &apnsTransport{next: pool.t, pool: pool}
	c.HTTPClient.Timeout = 0 // Send puts the deadline on the context
	ep := &apnsEndpoint{client: c, pool: pool}
	if maxConcurrent > 0 {
		ep.sem = make(chan struct{}, maxConcurrent)
	}
	return ep
}

// Close closes the connections to APNs. Call it once the sends are over: a send still in
// flight fails.
func (a *APNs) Close() {
	a.prod.pool.close()
	if a.dev != a.prod {
		a.dev.pool.close()
	}
}

// Send sends p and returns the apns-id of the push, or a *SendError.
func (a *APNs) Send(ctx context.Context, p Push) (string, error) {
	var ep *apnsEndpoint
	switch p.Environment {
	case "", "production":
		ep = a.prod
	case "development", "sandbox":
		ep = a.dev
	default:
		return "", &SendError{Kind: KindInvalid, Reason: "BadEnvironment", Err: fmt.Errorf("apns: unknown environment %q", p.Environment)}
	}
	if !isAPNsToken(p.Token) {
		// It could not even be put in the request path; APNs would say BadDeviceToken.
		return "", &SendError{Kind: KindTokenGone, Reason: apns2.ReasonBadDeviceToken, Err: errors.New("apns: the device token is not hex")}
	}
	n := &apns2.Notification{
		DeviceToken: p.Token,
		Topic:       cmp.Or(p.Topic, a.topic),
		CollapseID:  collapseID(p.CollapseID),
		Payload:     apnsPayload(p),
		PushType:    apns2.PushTypeBackground,
		Priority:    apns2.PriorityLow,
		// apns2 sends apns-expiration only for times after the epoch, as UNIX seconds: one
		// nanosecond after it is sent as 0, which asks APNs to try once.
		Expiration: time.Unix(0, 1),
	}
	if pushproxy.IsUUID(p.ID) {
		n.ApnsID = p.ID
	}
	if apnsAlert(p) {
		n.PushType, n.Priority = apns2.PushTypeAlert, apns2.PriorityHigh
	}
	if p.TTL > 0 {
		n.Expiration = time.Unix(apnsExpiration(time.Now(), p.TTL), 0)
	}

	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if ep.sem != nil {
		select {
		case ep.sem <- struct{}{}:
			defer func() { <-ep.sem }()
		case <-ctx.Done():
			return "", &SendError{Kind: KindRetry, Err: fmt.Errorf("apns: waiting for a connection slot: %w", ctx.Err())}
		}
	}
	call := &apnsCall{}
	res, err := ep.client.PushWithContext(context.WithValue(ctx, apnsCallKey{}, call), n)
	if err != nil {
		// net/http's error names the request URL, which ends with the device token.
		return "", &SendError{Kind: KindRetry, Err: networkError("apns: ", err, p.Token)}
	}
	if res.StatusCode == http.StatusOK {
		return res.ApnsID, nil
	}
	e := &SendError{Status: res.StatusCode, Reason: res.Reason}
	switch {
	case res.StatusCode == http.StatusGone,
		res.StatusCode == http.StatusBadRequest && (res.Reason == apns2.ReasonBadDeviceToken || res.Reason == apns2.ReasonDeviceTokenNotForTopic):
		e.Kind = KindTokenGone
		if !res.Timestamp.IsZero() {
			e.Err = fmt.Errorf("apns: the token is invalid since %s", res.Timestamp.UTC().Format(time.RFC3339))
		}
	case res.StatusCode == http.StatusTooManyRequests:
		e.Kind = KindThrottled
		e.RetryAfter = parseRetryAfter(call.retryAfter, time.Now())
	case res.StatusCode == http.StatusForbidden:
		e.Kind = KindCredentials
		if res.Reason == apns2.ReasonExpiredProviderToken {
			a.renewToken()
		}
	case res.StatusCode >= 500:
		e.Kind = KindRetry
		e.RetryAfter = parseRetryAfter(call.retryAfter, time.Now())
	default:
		e.Kind = KindInvalid
	}
	return "", e
}

// renewToken signs a new provider token after APNs said ExpiredProviderToken, unless the
// current one is recent: Apple refuses tokens renewed more than once in 20 minutes, and a
// recent token refused as expired means the clocks disagree, which a new token won't fix.
func (a *APNs) renewToken() {
	if a.token == nil {
		return
	}
	a.token.Lock()
	defer a.token.Unlock()
	if time.Since(time.Unix(a.token.IssuedAt, 0)) >= 20*time.Minute {
		_, _ = a.token.Generate() // the key signed at start-up
	}
}

// apnsCall carries what the transport saw of one request back to Send.
type apnsCall struct {
	retryAfter string
}

type apnsCallKey struct{}

// apnsTransport is the HTTP/2 transport of an apns2 client. It reads the Retry-After
// header, which apns2.Response does not expose.
type apnsTransport struct {
	next *http2.Transport
	pool *apnsConnPool
}

func (t *apnsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil && resp.StatusCode != http.StatusOK {
		if c, ok := req.Context().Value(apnsCallKey{}).(*apnsCall); ok {
			c.retryAfter = resp.Header.Get("Retry-After")
		}
	}
	return resp, err
}

// CloseIdleConnections lets apns2.Client.CloseIdleConnections reach the pool.
func (t *apnsTransport) CloseIdleConnections() { t.pool.closeIdle() }

// apnsConnPool is the connection pool of an APNs endpoint: one HTTP/2 connection per host,
// replaced when it breaks or the server sends GOAWAY. Unlike the http2 package's pool it
// makes no reservations (see newAPNsEndpoint). It uses http2.Transport's ConnPool and
// NewClientConn, which are deprecated in favour of net/http's ClientConn: that one does not
// retry a stream the server refused nor move to a new connection after GOAWAY, which the
// http2 transport does around a pool.
type apnsConnPool struct {
	t       *http2.Transport
	tlsConf *tls.Config

	mu      sync.Mutex
	conns   map[string]*http2.ClientConn // by host:port
	dialing map[string]*apnsDial
}

// apnsDial is a dial in progress, which the requests that need the connection wait for.
type apnsDial struct {
	done chan struct{}
	cc   *http2.ClientConn
	err  error
}

// GetClientConn returns the connection to addr, dialing it if there is none that can take
// requests. A request that finds the connection busy waits for a stream in the transport.
func (p *apnsConnPool) GetClientConn(req *http.Request, addr string) (*http2.ClientConn, error) {
	p.mu.Lock()
	if cc := p.conns[addr]; cc != nil {
		if cc.CanTakeNewRequest() {
			p.mu.Unlock()
			return cc, nil
		}
		delete(p.conns, addr) // GOAWAY or broken: in-flight streams finish on it
	}
	if d := p.dialing[addr]; d != nil {
		p.mu.Unlock()
		select {
		case <-d.done:
			return d.cc, d.err
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	d := &apnsDial{done: make(chan struct{})}
	if p.dialing == nil {
		p.dialing = make(map[string]*apnsDial)
		p.conns = make(map[string]*http2.ClientConn)
	}
	p.dialing[addr] = d
	p.mu.Unlock()

	d.cc, d.err = p.dial(req.Context(), addr)
	p.mu.Lock()
	delete(p.dialing, addr)
	if d.err == nil {
		p.conns[addr] = d.cc
	}
	p.mu.Unlock()
	close(d.done)
	return d.cc, d.err
}

func (p *apnsConnPool) dial(ctx context.Context, addr string) (*http2.ClientConn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	conf := p.tlsConf.Clone()
	conf.ServerName, conf.NextProtos = host, []string{http2.NextProtoTLS}
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: apns2.TLSDialTimeout, KeepAlive: apns2.TCPKeepAlive},
		Config:    conf,
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if proto := conn.(*tls.Conn).ConnectionState().NegotiatedProtocol; proto != http2.NextProtoTLS {
		conn.Close()
		return nil, fmt.Errorf("%s does not speak HTTP/2 (ALPN %q)", addr, proto)
	}
	cc, err := p.t.NewClientConn(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	// Until the server's SETTINGS arrive the transport assumes 100 streams are allowed; a
	// burst of sends on a new connection to a server that allows fewer would have streams
	// refused. The server sends its SETTINGS before it answers a PING.
	if err := cc.Ping(ctx); err != nil {
		cc.Close()
		return nil, fmt.Errorf("%s: waiting for the HTTP/2 settings: %w", addr, err)
	}
	return cc, nil
}

// MarkDead forgets a connection the transport found broken.
func (p *apnsConnPool) MarkDead(cc *http2.ClientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		if c == cc {
			delete(p.conns, addr)
		}
	}
}

func (p *apnsConnPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, cc := range p.conns {
		if st := cc.State(); st.StreamsActive == 0 && st.StreamsPending == 0 {
			cc.Close()
			delete(p.conns, addr)
		}
	}
}

func (p *apnsConnPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, cc := range p.conns {
		cc.Close()
		delete(p.conns, addr)
	}
}

// loadAPNsCertificate reads a push certificate: PKCS #12 for .p12 and .pfx files, else PEM.
func loadAPNsCertificate(file, password string) (tls.Certificate, error) {
	var (
		cert tls.Certificate
		err  error
	)
	switch strings.ToLower(filepath.Ext(file)) {
	case ".p12", ".pfx":
		cert, err = certificate.FromP12File(file, password)
	default:
		cert, err = certificate.FromPemFile(file, password)
	}
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("apns: certificate %s: %w", file, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("apns: certificate %s: %w", file, err)
		}
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("apns: certificate %s expired on %s", file, cert.Leaf.NotAfter.UTC().Format(time.DateOnly))
	} else if now.Before(cert.Leaf.NotBefore) {
		return tls.Certificate{}, fmt.Errorf("apns: certificate %s is not valid before %s", file, cert.Leaf.NotBefore.UTC().Format(time.DateOnly))
	}
	return cert, nil
}

// certificateTopic is the topic of an Apple push certificate: the UID of its subject.
func certificateTopic(c *x509.Certificate) string {
	for _, n := range c.Subject.Names {
		if n.Type.Equal([]int{0, 9, 2342, 19200300, 100, 1, 1}) {
			if s, ok := n.Value.(string); ok {
				return s
			}
		}
	}
	return ""
}

func isAPNsToken(t string) bool {
	if t == "" || len(t)%2 != 0 {
		return false
	}
	for i := range len(t) {
		if c := t[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date. 0 when absent or
// unreadable.
func parseRetryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.ParseInt(h, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

var _ Sender = (*APNs)(nil)
