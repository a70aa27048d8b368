package fakeapns

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/wakeup/internal/fakeutil"
)

// Limits Apple applies.
const (
	// MaxPayload is the largest payload of a push, except VoIP pushes.
	MaxPayload = 4096
	// MaxVoIPPayload is the largest payload of a VoIP push.
	MaxVoIPPayload = 5120
	// MaxCollapseID is the longest apns-collapse-id, in bytes.
	MaxCollapseID = 64
	// TokenLifetime is how long a provider token is accepted after its iat.
	TokenLifetime = time.Hour
	// DefaultMaxConcurrentStreams is what the fake advertises unless told otherwise: the value
	// APNs advertises.
	DefaultMaxConcurrentStreams = 1000
)

// DetailHeader is the response header in which the fake explains, in English, why it
// refused a push. Apple sends no such header.
const DetailHeader = "x-fakeapns-detail"

// Options configure a Server.
type Options struct {
	// Keys are the APNs auth keys accepted for token auth, by key id. When Keys is empty and
	// ClientCAs is nil, pushes are not authenticated at all.
	Keys map[string]*ecdsa.PublicKey
	// TeamID is the team the keys belong to: a provider token's iss. "" accepts any.
	TeamID string
	// ClientCAs turns on certificate auth: every connection must present a client certificate
	// issued by one of these (see CA.ClientCertificatePEM); its subject's UID is its topic.
	ClientCAs *x509.CertPool
	// Topics, when set, are the only topics accepted (400 TopicDisallowed otherwise).
	Topics []string
	// MaxConcurrentStreams is advertised in the HTTP/2 SETTINGS and enforced;
	// DefaultMaxConcurrentStreams when 0.
	MaxConcurrentStreams uint32
	// Latency is added to every answer (SetLatency changes it).
	Latency time.Duration
	// Clock tells the time used to check provider tokens and to stamp records; time.Now when
	// nil. A test moves it to expire tokens.
	Clock func() time.Time
	// CA issues the server's certificate; a new CA when nil.
	CA *CA
	// Addr is the address to listen on; "127.0.0.1:0" when empty.
	Addr string
	// ErrorLog receives the HTTP server's errors (TLS handshake failures...); discarded when
	// nil. Pushes are never logged.
	ErrorLog *log.Logger
}

// Push is a push the fake received and how it answered.
type Push struct {
	Time       time.Time // by Options.Clock
	Token      string    // the device token from the path
	Topic      string    // apns-topic ("" when absent)
	PushType   string    // apns-push-type ("" when absent)
	Priority   string    // apns-priority ("" when absent)
	Expiration string    // apns-expiration ("" when absent)
	CollapseID string    // apns-collapse-id ("" when absent)
	ID         string    // the apns-id answered: the request's, or one generated
	KeyID      string    // the kid of a verified provider token
	CertTopic  string    // the topic of the client certificate, with certificate auth
	Payload    []byte
	Status     int    // the HTTP status answered
	Reason     string // Apple's reason, "" on success
	Detail     string // the fake's explanation of a refusal
}

// Server is a fake APNs. Create it with New, then Start it.
type Server struct {
	opts    Options
	topics  map[string]bool
	streams uint32
	clock   func() time.Time

	srv    *http.Server
	ln     net.Listener
	url    string
	served chan struct{}

	latency atomic.Int64
	refused atomic.Int64

	inFlight fakeutil.InFlight

	jwtMu    sync.Mutex
	verified map[string]providerToken

	pushes fakeutil.Log[Push]
	faults fakeutil.Faults[rule]

	mu   sync.Mutex
	gone map[string]time.Time
}

// rule is an injected failure.
type rule struct {
	status     int
	reason     string
	retryAfter time.Duration
}

// New returns a Server that is not started yet.
func New(opts Options) *Server {
	s := &Server{
		opts:     opts,
		streams:  opts.MaxConcurrentStreams,
		clock:    opts.Clock,
		verified: make(map[string]providerToken),
		gone:     make(map[string]time.Time),
	}
	if s.streams == 0 {
		s.streams = DefaultMaxConcurrentStreams
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if len(opts.Topics) > 0 {
		s.topics = make(map[string]bool, len(opts.Topics))
		for _, t := range opts.Topics {
			s.topics[t] = true
		}
	}
	s.latency.Store(int64(opts.Latency))
	return s
}

// Start listens and serves. It fails when the address cannot be listened on.
func (s *Server) Start() error {
	if s.srv != nil {
		return errors.New("fakeapns: already started")
	}
	if s.opts.CA == nil {
		ca, err := NewCA()
		if err != nil {
			return err
		}
		s.opts.CA = ca
	}
	addr := s.opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("fakeapns: listen: %w", err)
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if h, _, _ := net.SplitHostPort(addr); h != "" && h != "0.0.0.0" && h != "::" {
		hosts = append(hosts, h)
	}
	cert, err := s.opts.CA.ServerCertificate(hosts...)
	if err != nil {
		ln.Close()
		return err
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
	}
	if s.opts.ClientCAs != nil {
		tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
		tlsConf.ClientCAs = s.opts.ClientCAs
	}
	errLog := s.opts.ErrorLog
	if errLog == nil {
		errLog = log.New(io.Discard, "", 0)
	}
	var protos http.Protocols
	protos.SetHTTP2(true)
	s.srv = &http.Server{
		Handler:   s,
		TLSConfig: tlsConf,
		Protocols: &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: int(s.streams),
			CountError: func(errType string) {
				if strings.HasSuffix(errType, "_over_max_streams") || strings.HasSuffix(errType, "_over_max_streams_race") {
					s.refused.Add(1)
				}
			},
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}
	s.ln = ln
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	s.url = "https://" + net.JoinHostPort(host, port)
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		_ = s.srv.ServeTLS(ln, "", "")
	}()
	return nil
}

// URL is the server's base URL, e.g. https://127.0.0.1:41234: the APNs sender's
// APNsOptions.URL.
func (s *Server) URL() string { return s.url }

// CA is the CA that issued the server's certificate (after Start).
func (s *Server) CA() *CA { return s.opts.CA }

// CACertPEM is the certificate a client must trust, PEM encoded (after Start).
func (s *Server) CACertPEM() []byte { return s.opts.CA.CertPEM() }

// WriteCACert writes CACertPEM to path, e.g. for SSL_CERT_FILE.
func (s *Server) WriteCACert(path string) error { return s.opts.CA.WriteCertFile(path) }

// MaxConcurrentStreams is the limit the server advertises and enforces.
func (s *Server) MaxConcurrentStreams() int { return int(s.streams) }

// Close stops the server, closing its connections, and waits for its handlers to return.
func (s *Server) Close() {
	if s.srv == nil {
		return
	}
	s.srv.Close()
	<-s.served
	s.inFlight.Wait()
}

// SetLatency sets the time added to every answer from now on.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// PeakInFlight is the largest number of requests the server was handling at once.
func (s *Server) PeakInFlight() int { return s.inFlight.Peak() }

// RefusedStreams is the number of streams the server refused because the client opened more
// than MaxConcurrentStreams at once.
func (s *Server) RefusedStreams() int { return int(s.refused.Load()) }

// FailToken makes the pushes to token fail with status and Apple's reason, the next times
// pushes, or every push from now on when times <= 0.
func (s *Server) FailToken(token string, status int, reason string, times int) {
	s.faults.SetToken(token, rule{status: status, reason: reason}, times)
}

// Unregister makes token unregistered, as when the app was removed: its pushes get 410
// Unregistered with the current time as the timestamp.
func (s *Server) Unregister(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone[token] = s.clock()
}

// ClearToken forgets the failures set for token by FailToken and Unregister.
func (s *Server) ClearToken(token string) {
	s.mu.Lock()
	delete(s.gone, token)
	s.mu.Unlock()
	s.faults.ClearToken(token)
}

// FailNext makes the next n valid pushes, whatever their token, fail with status and reason,
// with a Retry-After header when retryAfter > 0 (rounded up to whole seconds). Calls queue:
// the failures of a second call come after those of the first.
func (s *Server) FailNext(n int, status int, reason string, retryAfter time.Duration) {
	s.faults.AddNext(n, rule{status: status, reason: reason, retryAfter: retryAfter})
}

// Pushes returns the pushes received so far, in order.
func (s *Server) Pushes() []Push { return s.pushes.All() }

// WaitFor waits until n pushes have been received in all and returns them all.
func (s *Server) WaitFor(ctx context.Context, n int) ([]Push, error) {
	ps, err := s.pushes.WaitFor(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("fakeapns: waiting for %d pushes: %w", n, err)
	}
	return ps, nil
}

// Reset forgets the pushes received, the failures set and the peak of requests in flight.
func (s *Server) Reset() {
	s.pushes.Reset()
	s.faults.Reset()
	s.mu.Lock()
	s.gone = make(map[string]time.Time)
	s.mu.Unlock()
	s.inFlight.ResetPeak()
}

// answer is the server's reply to one push.
type answer struct {
	status     int
	reason     string
	detail     string
	retryAfter time.Duration
	timestamp  time.Time // of a 410
}

func refuse(status int, reason, detail string, args ...any) *answer {
	return &answer{status: status, reason: reason, detail: fmt.Sprintf(detail, args...)}
}

// ServeHTTP answers one request of the APNs provider API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.inFlight.Enter()
	defer s.inFlight.Leave()

	p := Push{
		Time:       s.clock(),
		Topic:      r.Header.Get("apns-topic"),
		PushType:   r.Header.Get("apns-push-type"),
		Priority:   r.Header.Get("apns-priority"),
		Expiration: r.Header.Get("apns-expiration"),
		CollapseID: r.Header.Get("apns-collapse-id"),
	}
	body, readErr := io.ReadAll(io.LimitReader(r.Body, MaxVoIPPayload+1))
	p.Payload = body

	a := s.check(r, &p, readErr)
	if a == nil {
		a = s.injected(p.Token)
	}
	if d := time.Duration(s.latency.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if p.ID == "" {
		p.ID = newUUID()
	}
	w.Header().Set("apns-id", p.ID)
	if a == nil {
		p.Status = http.StatusOK
		s.pushes.Add(p)
		w.WriteHeader(http.StatusOK)
		return
	}
	p.Status, p.Reason, p.Detail = a.status, a.reason, a.detail
	s.pushes.Add(p)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if a.detail != "" {
		h.Set(DetailHeader, a.detail)
	}
	if a.retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((a.retryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(a.status)
	resp := struct {
		Reason    string `json:"reason"`
		Timestamp int64  `json:"timestamp,omitempty"`
	}{Reason: a.reason}
	if !a.timestamp.IsZero() {
		resp.Timestamp = a.timestamp.UnixMilli()
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// check applies Apple's rules to a request. It fills p.Token, p.ID, p.KeyID and p.CertTopic
// as it goes, and returns nil when the push is acceptable.
func (s *Server) check(r *http.Request, p *Push, readErr error) *answer {
	if id := r.Header.Get("apns-id"); id != "" {
		if !pushproxy.IsUUID(id) {
			return refuse(400, "BadMessageId", "apns-id %q is not a UUID (8-4-4-4-12 hex digits)", id)
		}
		p.ID = id
	}
	if r.Method != http.MethodPost {
		return refuse(405, "MethodNotAllowed", "method %s; pushes are POSTed", r.Method)
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok || strings.Contains(token, "/") {
		return refuse(404, "BadPath", "path %q; pushes go to /3/device/{device token}", r.URL.Path)
	}
	p.Token = token
	if token == "" {
		return refuse(400, "MissingDeviceToken", "no device token in the path")
	}
	if !isDeviceToken(token) {
		return refuse(400, "BadDeviceToken", "device token %q is not 64 to 200 hex digits", token)
	}
	if a := s.authenticate(r, p); a != nil {
		return a
	}
	for _, h := range []string{"apns-id", "apns-topic", "apns-push-type", "apns-priority", "apns-expiration", "apns-collapse-id", "Authorization"} {
		if len(r.Header.Values(h)) > 1 {
			return refuse(400, "DuplicateHeaders", "header %s is repeated", strings.ToLower(h))
		}
	}
	if a := s.checkTopic(p); a != nil {
		return a
	}
	pushType := p.PushType
	switch pushType {
	case "":
		pushType = "alert" // Apple's default
	case "alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets", "controls":
	default:
		return refuse(400, "InvalidPushType", "apns-push-type %q is not one of Apple's push types", p.PushType)
	}
	switch p.Priority {
	case "", "1", "5", "10":
	default:
		return refuse(400, "BadPriority", "apns-priority %q is not 1, 5 or 10", p.Priority)
	}
	if pushType == "background" && p.Priority != "5" && p.Priority != "1" {
		prio := p.Priority
		if prio == "" {
			prio = "absent, which means 10"
		}
		return refuse(400, "BadPriority", "background pushes must have apns-priority 5 (or 1); it is %s", prio)
	}
	if p.Expiration != "" {
		if _, err := strconv.ParseInt(p.Expiration, 10, 64); err != nil {
			return refuse(400, "BadExpirationDate", "apns-expiration %q is not a UNIX time in seconds", p.Expiration)
		}
	}
	if len(p.CollapseID) > MaxCollapseID {
		return refuse(400, "BadCollapseId", "apns-collapse-id is %d bytes, more than %d", len(p.CollapseID), MaxCollapseID)
	}
	return checkPayload(p.Payload, pushType, readErr)
}

func (s *Server) authenticate(r *http.Request, p *Push) *answer {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		p.CertTopic = topicOf(r.TLS.PeerCertificates[0])
		return nil
	}
	if len(s.opts.Keys) == 0 && s.opts.ClientCAs == nil {
		return nil // authentication is off
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return refuse(403, "MissingProviderToken", "no client certificate and no authorization header")
	}
	scheme, jwt, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return refuse(403, "InvalidProviderToken", "authorization is not \"bearer <provider token>\"")
	}
	s.jwtMu.Lock()
	tok, ok := s.verified[jwt]
	s.jwtMu.Unlock()
	if !ok {
		var err error
		tok, err = verifyJWT(jwt, s.opts.Keys, s.opts.TeamID)
		if err != nil {
			return refuse(403, "InvalidProviderToken", "provider token: %v", err)
		}
		s.jwtMu.Lock()
		if len(s.verified) > 10000 {
			clear(s.verified)
		}
		s.verified[jwt] = tok
		s.jwtMu.Unlock()
	}
	p.KeyID = tok.keyID
	if age := s.clock().Sub(time.Unix(tok.issuedAt, 0)); age > TokenLifetime {
		return refuse(403, "ExpiredProviderToken", "provider token issued %s ago, more than %s", age.Round(time.Second), TokenLifetime)
	}
	return nil
}

func (s *Server) checkTopic(p *Push) *answer {
	topic := p.Topic
	if p.CertTopic != "" {
		if topic == "" {
			topic = p.CertTopic
		} else if topic != p.CertTopic && !strings.HasPrefix(topic, p.CertTopic+".") {
			return refuse(400, "TopicDisallowed", "apns-topic %q is not the certificate's topic %q", topic, p.CertTopic)
		}
	} else if topic == "" && len(s.opts.Keys) > 0 {
		return refuse(400, "MissingTopic", "apns-topic is required with token auth")
	}
	if s.topics != nil && topic != "" && !s.topics[topic] {
		return refuse(400, "TopicDisallowed", "topic %q is not one of the accepted topics", topic)
	}
	return nil
}

func checkPayload(body []byte, pushType string, readErr error) *answer {
	if readErr != nil {
		return refuse(400, "BadPayload", "reading the payload: %v", readErr)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return refuse(400, "PayloadEmpty", "the payload is empty")
	}
	limit := MaxPayload
	if pushType == "voip" {
		limit = MaxVoIPPayload
	}
	if len(body) > limit {
		return refuse(413, "PayloadTooLarge", "the payload is more than %d bytes", limit)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return refuse(400, "BadPayload", "the payload is not a JSON object: %v", err)
	}
	rawAps, ok := doc["aps"]
	if !ok {
		return refuse(400, "BadPayload", "the payload has no \"aps\" dictionary")
	}
	var aps map[string]json.RawMessage
	if err := json.Unmarshal(rawAps, &aps); err != nil || aps == nil {
		return refuse(400, "BadPayload", "\"aps\" is not a dictionary")
	}
	if pushType == "background" {
		if string(aps["content-available"]) != "1" {
			return refuse(400, "BadPayload", "a background push needs aps.content-available = 1")
		}
		for _, k := range []string{"alert", "sound", "badge"} {
			if _, ok := aps[k]; ok {
				return refuse(400, "BadPayload", "a background push must not have aps.%s", k)
			}
		}
	}
	return nil
}

// injected is the failure set for this push, if any.
func (s *Server) injected(token string) *answer {
	s.mu.Lock()
	at, gone := s.gone[token]
	s.mu.Unlock()
	if gone {
		return &answer{status: 410, reason: "Unregistered", timestamp: at, detail: "the device token is unregistered"}
	}
	r, forToken, ok := s.faults.Take(token)
	if !ok {
		return nil
	}
	detail := "failure injected for the next pushes"
	if forToken {
		detail = "failure injected for this token"
	}
	return &answer{status: r.status, reason: r.reason, retryAfter: r.retryAfter, detail: detail}
}

func isDeviceToken(t string) bool {
	if len(t) < 64 || len(t) > 200 || len(t)%2 != 0 {
		return false
	}
	_, err := hex.DecodeString(t)
	return err == nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
