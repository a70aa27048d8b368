package fakewebpush

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/internal/fakeutil"
)

// MaxBody is the largest push message body the fake accepts (RFC 8291 section 4: push
// services must accept 4096 bytes).
const MaxBody = 4096

// Options configure a Server.
type Options struct {
	// Addr is the listen address; "127.0.0.1:0" when "".
	Addr string
	// Clock is the time for the VAPID token's expiry; time.Now when nil.
	Clock func() time.Time
	// ErrorLog receives the HTTP server's errors; discarded when nil.
	ErrorLog *log.Logger
}

// Subscription is a push subscription as a browser's PushSubscription.toJSON gives it.
type Subscription struct {
	Endpoint string `json:"endpoint"`
	Keys     Keys   `json:"keys"`
}

// Keys are a subscription's keys, base64url without padding.
type Keys struct {
	P256dh string `json:"p256dh"`
	Auth   string `json:"auth"`
}

// Message is a push message request as the fake received it.
type Message struct {
	Endpoint string
	Status   int    // the status answered
	Error    string // why it was refused, when it was
	Location string // the push message resource made, when accepted

	TTL     int    // the TTL header, -1 when absent
	Urgency string // the Urgency header ("" when absent)
	Topic   string // the Topic header
	Payload []byte // the decrypted payload
	VAPID   VAPID  // the verified VAPID token
	Body    []byte // the encrypted body
}

// Server is a fake push service (RFC 8030): it accepts push messages for the subscriptions
// it made, checks their VAPID token (RFC 8292), decrypts them with the subscription's keys
// (RFC 8291), and records them. Undelivered messages are kept per subscription, a message
// with a Topic replacing the one with the same Topic, as a push service holding messages
// for a device that is offline does.
type Server struct {
	opts  Options
	clock func() time.Time

	srv *fakeutil.HTTPServer
	url string

	messages fakeutil.Log[Message]
	faults   fakeutil.Faults[fault]

	mu   sync.Mutex
	subs map[string]*sub // by id, the last path segment of the endpoint
}

type sub struct {
	key     *ecdh.PrivateKey
	auth    []byte
	server  string // the applicationServerKey it was made with; "" for any
	gone    bool
	pending []Message
}

// fault is an injected failure.
type fault struct {
	status     int
	retryAfter time.Duration
}

// New returns a Server that is not started yet.
func New(opts Options) *Server {
	s := &Server{opts: opts, clock: opts.Clock, subs: make(map[string]*sub)}
	if s.clock == nil {
		s.clock = time.Now
	}
	return s
}

// Start listens and serves.
func (s *Server) Start() error {
	if s.srv != nil {
		return errors.New("fakewebpush: already started")
	}
	srv, err := fakeutil.StartHTTP("fakewebpush", s.opts.Addr, s, s.opts.ErrorLog)
	if err != nil {
		return err
	}
	s.srv, s.url = srv, srv.URL()
	return nil
}

// URL is the server's base URL; endpoints are URL()+"/push/<id>".
func (s *Server) URL() string { return s.url }

// Close stops the server, closing its connections, and waits for it.
func (s *Server) Close() {
	if s.srv == nil {
		return
	}
	s.srv.Close()
}

// Subscribe makes a subscription, as a browser does on PushManager.subscribe:
// applicationServerKey is the VAPID public key (base64url) its messages must be signed
// with, or "" to take any.
func (s *Server) Subscribe(applicationServerKey string) (Subscription, error) {
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return Subscription{}, err
	}
	auth := make([]byte, 16)
	rand.Read(auth)
	return s.Add(fakeutil.RandomHex(24), key, auth, applicationServerKey), nil
}

// Add makes a subscription with the given keys (for test vectors) at URL()+"/push/"+id.
func (s *Server) Add(id string, key *ecdh.PrivateKey, auth []byte, applicationServerKey string) Subscription {
	s.mu.Lock()
	s.subs[id] = &sub{key: key, auth: auth, server: applicationServerKey}
	s.mu.Unlock()
	return Subscription{
		Endpoint: s.url + "/push/" + id,
		Keys: Keys{
			P256dh: base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()),
			Auth:   base64.RawURLEncoding.EncodeToString(auth),
		},
	}
}

// Unsubscribe ends the subscription of endpoint: its messages get 410 Gone.
func (s *Server) Unsubscribe(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb := s.subs[s.id(endpoint)]; sb != nil {
		sb.gone = true
	}
}

func (s *Server) id(endpoint string) string {
	return strings.TrimPrefix(endpoint, s.url+"/push/")
}

// FailNext makes the next n push messages, whatever their subscription, fail with status
// (429, 500, 503...), with a Retry-After header when retryAfter > 0 (in whole seconds).
func (s *Server) FailNext(n, status int, retryAfter time.Duration) {
	s.faults.AddNext(n, fault{status: status, retryAfter: retryAfter})
}

// Messages returns the push message requests received so far, in order.
func (s *Server) Messages() []Message { return s.messages.All() }

// WaitFor waits until n requests have been received in all and returns them all.
func (s *Server) WaitFor(ctx context.Context, n int) ([]Message, error) {
	ms, err := s.messages.WaitFor(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("fakewebpush: waiting for %d messages: %w", n, err)
	}
	return ms, nil
}

// Pending returns the messages held for endpoint's subscription, oldest first: every
// accepted message, a message with a Topic having replaced an earlier one with that Topic.
func (s *Server) Pending(endpoint string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb := s.subs[s.id(endpoint)]; sb != nil {
		return append([]Message(nil), sb.pending...)
	}
	return nil
}

// Reset forgets the messages received, held and the failures set (not the subscriptions).
func (s *Server) Reset() {
	s.messages.Reset()
	s.faults.Reset()
	s.mu.Lock()
	for _, sb := range s.subs {
		sb.pending = nil
	}
	s.mu.Unlock()
}

// ServeHTTP answers POST /push/<id>, and the control API (control.go).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.serveControl(w, r) {
		return
	}
	id, ok := strings.CutPrefix(r.URL.Path, "/push/")
	if !ok || r.Method != http.MethodPost {
		http.Error(w, "not a push resource", http.StatusNotFound)
		return
	}
	m := Message{Endpoint: s.url + r.URL.Path, TTL: -1}
	m.Status, m.Error = s.accept(w, r, id, &m)
	if m.Status == http.StatusCreated {
		m.Location = s.url + "/message/" + fakeutil.RandomHex(12)
		w.Header().Set("Location", m.Location)
		w.Header().Set("TTL", strconv.Itoa(m.TTL))
		w.WriteHeader(http.StatusCreated)
	} else {
		http.Error(w, m.Error, m.Status)
	}
	s.messages.Add(m)
}

// accept checks and decrypts a push message request; it returns the status to answer and,
// for a refusal, why.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, id string, m *Message) (int, string) {
	s.mu.Lock()
	sb := s.subs[id]
	s.mu.Unlock()
	switch {
	case sb == nil:
		return http.StatusNotFound, "no such subscription"
	case sb.gone:
		return http.StatusGone, "the subscription was unsubscribed"
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return http.StatusBadRequest, "reading the body: " + err.Error()
	}
	m.Body = body
	if len(body) > MaxBody {
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over %d bytes", MaxBody)
	}
	ttl, err := strconv.Atoi(r.Header.Get("TTL"))
	if err != nil || ttl < 0 {
		return http.StatusBadRequest, "the TTL header is missing or not a number of seconds"
	}
	m.TTL = ttl
	m.Urgency = r.Header.Get("Urgency")
	switch m.Urgency {
	case "", "very-low", "low", "normal", "high":
	default:
		return http.StatusBadRequest, fmt.Sprintf("Urgency %q is not very-low, low, normal or high", m.Urgency)
	}
	m.Topic = r.Header.Get("Topic")
	if !validTopic(m.Topic) {
		return http.StatusBadRequest, "Topic is not at most 32 characters of the base64url alphabet"
	}
	vapid, err := VerifyVAPID(r.Header.Get("Authorization"), s.url, s.clock())
	if err != nil {
		return http.StatusUnauthorized, "VAPID: " + err.Error()
	}
	m.VAPID = vapid
	if sb.server != "" && vapid.Key != sb.server {
		return http.StatusForbidden, "VAPID: k is not the applicationServerKey of the subscription"
	}
	if f, _, ok := s.faults.Take(id); ok {
		if f.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
		}
		return f.status, http.StatusText(f.status)
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "aes128gcm" {
		return http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Encoding %q, want aes128gcm", ce)
	}
	m.Payload, err = Decrypt(body, sb.key, sb.auth)
	if err != nil {
		return http.StatusBadRequest, "decrypting: " + err.Error()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := sb.pending[:0]
	for _, p := range sb.pending {
		if m.Topic == "" || p.Topic != m.Topic {
			kept = append(kept, p)
		}
	}
	held := *m
	held.Status = http.StatusCreated
	sb.pending = append(kept, held)
	return http.StatusCreated, ""
}

func secondsDuration(n int) time.Duration { return time.Duration(max(n, 0)) * time.Second }

// validTopic: at most 32 characters of the URL-safe base64 alphabet (RFC 8030 section 5.4).
func validTopic(t string) bool {
	if len(t) > 32 {
		return false
	}
	for i := range len(t) {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
