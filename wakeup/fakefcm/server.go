package fakefcm

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/internal/fakeutil"
)

// FCM error codes (the errorCode of the FcmError detail).
const (
	Unregistered        = "UNREGISTERED"
	InvalidArgument     = "INVALID_ARGUMENT"
	SenderIDMismatch    = "SENDER_ID_MISMATCH"
	QuotaExceeded       = "QUOTA_EXCEEDED"
	Unavailable         = "UNAVAILABLE"
	Internal            = "INTERNAL"
	ThirdPartyAuthError = "THIRD_PARTY_AUTH_ERROR"
)

// fcmErrors are the HTTP status, the Google status and the message FCM answers with each
// error code.
var fcmErrors = map[string]struct {
	code    int
	status  string
	message string
}{
	Unregistered:        {404, "NOT_FOUND", "Requested entity was not found."},
	InvalidArgument:     {400, "INVALID_ARGUMENT", "Request contains an invalid argument."},
	SenderIDMismatch:    {403, "PERMISSION_DENIED", "SenderId mismatch"},
	QuotaExceeded:       {429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' of service 'fcm.googleapis.com'."},
	Unavailable:         {503, "UNAVAILABLE", "The service is currently unavailable."},
	Internal:            {500, "INTERNAL", "Internal error encountered."},
	ThirdPartyAuthError: {401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"},
}

// Options configure a Server.
type Options struct {
	// ProjectID is the Firebase project of the service account; "pushproxy-fake" when "".
	ProjectID string
	// ClientEmail is the service account's email; one in the project when "".
	ClientEmail string
	// Latency is added to every answer of the send endpoint (SetLatency changes it).
	Latency time.Duration
	// Clock tells the time used to check assertions and access tokens and to stamp records;
	// time.Now when nil.
	Clock func() time.Time
	// Addr is the address to listen on; "127.0.0.1:0" when empty.
	Addr string
	// ErrorLog receives the HTTP server's errors; discarded when nil. Messages and tokens are
	// never logged.
	ErrorLog *log.Logger
}

// Message is a send request the fake received and how it answered.
type Message struct {
	Time         time.Time // by Options.Clock
	Project      string    // from the path
	ValidateOnly bool
	Token        string
	Topic        string
	Condition    string
	Data         map[string]string
	Android      AndroidConfig
	APNSHeaders  map[string]string
	APNSPayload  json.RawMessage
	Body         []byte // the request body as received
	Status       int    // the HTTP status answered
	ErrorStatus  string // the Google status of an error, e.g. "NOT_FOUND"
	ErrorCode    string // the FCM error code of an error, e.g. "UNREGISTERED"
	ErrorMessage string
	Name         string // the message name answered on success
}

// AndroidConfig is the android block of a message, as received.
type AndroidConfig struct {
	CollapseKey string
	Priority    string
	TTL         string
}

// Server is a fake FCM. Create it with New, then Start it.
type Server struct {
	opts    Options
	clock   func() time.Time
	latency atomic.Int64

	key   *rsa.PrivateKey
	keyID string

	srv *fakeutil.HTTPServer
	url string

	inFlight fakeutil.InFlight
	messages fakeutil.Log[Message]
	faults   fakeutil.Faults[rule]

	mu     sync.Mutex
	tokens map[string]time.Time // access token -> expiry
	issued int
	gone   map[string]bool
}

// rule is an injected failure.
type rule struct {
	code       string
	retryAfter time.Duration
}

// New returns a Server that is not started yet.
func New(opts Options) *Server {
	if opts.ProjectID == "" {
		opts.ProjectID = "pushproxy-fake"
	}
	if opts.ClientEmail == "" {
		opts.ClientEmail = "pushproxy@" + opts.ProjectID + ".iam.gserviceaccount.com"
	}
	s := &Server{
		opts:   opts,
		clock:  opts.Clock,
		tokens: make(map[string]time.Time),
		gone:   make(map[string]bool),
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	s.latency.Store(int64(opts.Latency))
	return s
}

// Start generates the service account's key, listens and serves.
func (s *Server) Start() error {
	if s.srv != nil {
		return errors.New("fakefcm: already started")
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("fakefcm: generate service account key: %w", err)
	}
	s.key, s.keyID = key, fakeutil.RandomHex(20)
	srv, err := fakeutil.StartHTTP("fakefcm", s.opts.Addr, s, s.opts.ErrorLog)
	if err != nil {
		return err
	}
	s.srv, s.url = srv, srv.URL()
	return nil
}

// URL is the server's base URL, e.g. http://127.0.0.1:41234: the FCM sender's
// FCMOptions.URL. The send endpoint is URL()+"/v1/projects/{project}/messages:send".
func (s *Server) URL() string { return s.url }

// TokenURL is the OAuth 2.0 token endpoint, the token_uri of the credentials.
func (s *Server) TokenURL() string { return s.url + "/token" }

// ProjectID is the project of the service account.
func (s *Server) ProjectID() string { return s.opts.ProjectID }

// Close stops the server, closing its connections, and waits for its handlers to return.
func (s *Server) Close() {
	if s.srv == nil {
		return
	}
	s.srv.Close()
	s.inFlight.Wait()
}

// CredentialsJSON is a service account key file for the fake (after Start): type
// service_account, the project, a private key the fake knows, and token_uri = TokenURL.
func (s *Server) CredentialsJSON() []byte {
	return s.credentials(s.key, s.keyID)
}

// CredentialsJSONWithUnknownKey is like CredentialsJSON but with a private key the fake does
// not know, as when a key was deleted: its assertions fail with invalid_grant.
func (s *Server) CredentialsJSONWithUnknownKey() ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("fakefcm: generate key: %w", err)
	}
	return s.credentials(key, fakeutil.RandomHex(20)), nil
}

// WriteCredentials writes CredentialsJSON to path (mode 0600).
func (s *Server) WriteCredentials(path string) error {
	if err := os.WriteFile(path, s.CredentialsJSON(), 0o600); err != nil {
		return fmt.Errorf("fakefcm: write credentials: %w", err)
	}
	return nil
}

func (s *Server) credentials(key *rsa.PrivateKey, keyID string) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // an RSA key always marshals
	}
	b, _ := json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  s.opts.ProjectID,
		"private_key_id":              keyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                s.opts.ClientEmail,
		"client_id":                   "100000000000000000001",
		"auth_uri":                    s.url + "/auth",
		"token_uri":                   s.TokenURL(),
		"auth_provider_x509_cert_url": s.url + "/certs",
		"universe_domain":             "googleapis.com",
	}, "", "  ")
	return b
}

// SetLatency sets the time added to every answer of the send endpoint from now on.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// Unregister makes token unregistered: its messages get 404 UNREGISTERED.
func (s *Server) Unregister(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone[token] = true
}

// FailToken makes the messages to token fail with an FCM error code (UNREGISTERED,
// QUOTA_EXCEEDED...), the next times messages, or every message when times <= 0.
func (s *Server) FailToken(token, code string, times int) {
	s.faults.SetToken(token, rule{code: code}, times)
}

// ClearToken forgets the failures set for token.
func (s *Server) ClearToken(token string) {
	s.mu.Lock()
	delete(s.gone, token)
	s.mu.Unlock()
	s.faults.ClearToken(token)
}

// FailNext makes the next n valid messages, whatever their token, fail with an FCM error
// code, with a Retry-After header when retryAfter > 0 (rounded up to whole seconds).
func (s *Server) FailNext(n int, code string, retryAfter time.Duration) {
	s.faults.AddNext(n, rule{code: code, retryAfter: retryAfter})
}

// RevokeTokens invalidates every access token issued so far: requests bearing them get 401
// UNAUTHENTICATED.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// TokensIssued is the number of access tokens the token endpoint issued.
func (s *Server) TokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Messages returns the send requests received so far, in order.
func (s *Server) Messages() []Message { return s.messages.All() }

// WaitFor waits until n send requests have been received in all and returns them all.
func (s *Server) WaitFor(ctx context.Context, n int) ([]Message, error) {
	ms, err := s.messages.WaitFor(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("fakefcm: waiting for %d messages: %w", n, err)
	}
	return ms, nil
}

// Reset forgets the messages received and the failures set (not the access tokens).
func (s *Server) Reset() {
	s.messages.Reset()
	s.faults.Reset()
	s.mu.Lock()
	s.gone = make(map[string]bool)
	s.mu.Unlock()
}

// ServeHTTP routes the token endpoint and the send endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.inFlight.Enter()
	defer s.inFlight.Leave()
	switch {
	case r.URL.Path == "/token":
		s.serveToken(w, r)
	case strings.HasPrefix(r.URL.Path, "/v1/projects/") && strings.HasSuffix(r.URL.Path, "/messages:send"):
		s.serveSend(w, r)
	default:
		writeError(w, &apiError{code: 404, status: "NOT_FOUND", message: fmt.Sprintf("The requested URL %s was not found on this server.", r.URL.Path)})
	}
}

// apiError is an error answer of the send endpoint.
type apiError struct {
	code       int
	status     string
	message    string
	fcmCode    string // the errorCode of the FcmError detail; "" for none
	retryAfter time.Duration
}

func fcmError(code, message string) *apiError {
	e, ok := fcmErrors[code]
	if !ok {
		e = fcmErrors[Internal]
	}
	if message == "" {
		message = e.message
	}
	return &apiError{code: e.code, status: e.status, message: message, fcmCode: code}
}

func invalid(format string, args ...any) *apiError {
	return fcmError(InvalidArgument, fmt.Sprintf(format, args...))
}

func writeError(w http.ResponseWriter, e *apiError) {
	type detail struct {
		Type      string `json:"@type"`
		ErrorCode string `json:"errorCode"`
	}
	var body struct {
		Error struct {
			Code    int      `json:"code"`
			Message string   `json:"message"`
			Status  string   `json:"status"`
			Details []detail `json:"details,omitempty"`
		} `json:"error"`
	}
	body.Error.Code, body.Error.Message, body.Error.Status = e.code, e.message, e.status
	if e.fcmCode != "" {
		body.Error.Details = []detail{{"type.googleapis.com/google.firebase.fcm.v1.FcmError", e.fcmCode}}
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=UTF-8")
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((e.retryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(e.code)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) serveSend(w http.ResponseWriter, r *http.Request) {
	m := Message{Time: s.clock()}
	m.Project = strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/projects/"), "/messages:send")
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	m.Body = body
	e := s.checkSend(r, &m, body, err)
	if e == nil && !m.ValidateOnly {
		e = s.injected(m.Token)
	}
	if d := time.Duration(s.latency.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if e != nil {
		m.Status, m.ErrorStatus, m.ErrorCode, m.ErrorMessage = e.code, e.status, e.fcmCode, e.message
		s.messages.Add(m)
		writeError(w, e)
		return
	}
	m.Status = http.StatusOK
	m.Name = "projects/" + m.Project + "/messages/" + fakeutil.RandomHex(8)
	if m.ValidateOnly {
		m.Name = "projects/" + m.Project + "/messages/fake_message_id"
	}
	s.messages.Add(m)
	writeJSON(w, http.StatusOK, map[string]string{"name": m.Name})
}

func (s *Server) checkSend(r *http.Request, m *Message, body []byte, readErr error) *apiError {
	if r.Method != http.MethodPost {
		return &apiError{code: 405, status: "METHOD_NOT_ALLOWED", message: "Method " + r.Method + " not allowed; use POST."}
	}
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "bearer") || tok == "" {
		return &apiError{code: 401, status: "UNAUTHENTICATED", message: "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential."}
	}
	s.mu.Lock()
	exp, ok := s.tokens[tok]
	s.mu.Unlock()
	if !ok || !s.clock().Before(exp) {
		return &apiError{code: 401, status: "UNAUTHENTICATED", message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."}
	}
	if m.Project != s.opts.ProjectID {
		return &apiError{code: 403, status: "PERMISSION_DENIED", message: fmt.Sprintf("Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/%s' (or it may not exist).", m.Project)}
	}
	if readErr != nil {
		return invalid("Reading the request: %v", readErr)
	}
	return validate(m, body)
}

// injected is the failure set for this message, if any.
func (s *Server) injected(token string) *apiError {
	s.mu.Lock()
	gone := s.gone[token]
	s.mu.Unlock()
	if gone {
		return fcmError(Unregistered, "")
	}
	r, _, ok := s.faults.Take(token)
	if !ok {
		return nil
	}
	e := fcmError(r.code, "")
	e.retryAfter = r.retryAfter
	return e
}
