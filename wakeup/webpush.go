package wakeup

import (
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/SherClockHolmes/webpush-go"
)

// WebPushKeys are the keys of a Web Push subscription (PushSubscription.getKey), base64url:
// P256dh the user agent's P-256 public key (65 bytes, uncompressed), Auth its 16-byte
// authentication secret. A Push to a Web Push subscription has its endpoint URL as Token.
type WebPushKeys struct {
	P256dh string `json:"p256dh"`
	Auth   string `json:"auth"`
}

// WebPushOptions configure the Web Push sender.
type WebPushOptions struct {
	// VAPIDPublicKey and VAPIDPrivateKey are the application server's P-256 key pair
	// (RFC 8292), base64url: the public key uncompressed (65 bytes), the private key's
	// scalar (32 bytes), as webpush.GenerateVAPIDKeys makes them. The web app subscribes
	// with the public key as its applicationServerKey.
	VAPIDPublicKey, VAPIDPrivateKey string
	// Subscriber is the contact in the VAPID token's "sub" claim: a mailto: URL, an
	// e-mail address ("mailto:" is added) or an https: URL.
	Subscriber string
	// Client dials the push services. Endpoints come from clients: give a client whose
	// dialer refuses private addresses and hosts outside the allowed push services. nil: a
	// client of its own, with no such limits (tests and the fakes).
	Client *http.Client
	// Timeout bounds a send; 30 seconds when 0.
	Timeout time.Duration
}

// WebPush sends wake-ups to Web Push subscriptions (RFC 8030), with VAPID (RFC 8292) and the
// aes128gcm payload encryption of RFC 8291, by github.com/SherClockHolmes/webpush-go.
//
// The message is the pushproxy object of the other platforms, as the "pushproxy" key of a
// JSON object (see payload.go):
//
//	{"pushproxy":{"streams":{"s1":3},"total":3}}
//
// encrypted in one record without padding. The headers: TTL (Push.TTL in seconds, rounded
// up), Urgency ("high" for urgent wake-ups, else "normal") and Topic (Push.CollapseID, or
// its hash when it is not a valid topic), so that a push service holding an undelivered
// wake-up for the subscription replaces it rather than stacking a second one.
//
// Answers map to SendError kinds: 404 and 410 are KindTokenGone (the subscription expired or
// was unsubscribed); 429 KindThrottled with Retry-After; 401 and 403 (the VAPID token
// refused) KindCredentials; 5xx and network errors KindRetry, with Retry-After; other
// refusals (400, 413...) KindInvalid. A subscription whose keys are not valid is
// KindTokenGone without a request. No error text holds the endpoint URL.
type WebPush struct {
	opts   WebPushOptions
	client *http.Client
	own    *http.Transport // the transport of a client of its own, else nil
}

// webpushMaxPlaintext is the most a push message can carry: push services take 4096 bytes
// of body (RFC 8291 section 4), of which the aes128gcm header takes 86 (salt 16, record
// size 4, key id length 1, the sender's public key 65), the AEAD tag 16 and the padding
// delimiter 1.
const webpushMaxPlaintext = 4096 - 86 - 16 - 1

// NewWebPush checks the VAPID keys and returns a sender.
func NewWebPush(opts WebPushOptions) (*WebPush, error) {
	if opts.Timeout < 0 {
		return nil, errors.New("webpush: Timeout is negative")
	}
	if opts.Subscriber == "" {
		return nil, errors.New("webpush: Subscriber (a mailto: address or https: URL for the VAPID token) is required")
	}
	priv, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(opts.VAPIDPrivateKey, "="))
	if err != nil {
		return nil, fmt.Errorf("webpush: VAPIDPrivateKey is not base64url: %w", err)
	}
	key, err := ecdh.P256().NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("webpush: VAPIDPrivateKey: %w", err)
	}
	pub, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(opts.VAPIDPublicKey, "="))
	if err != nil {
		return nil, fmt.Errorf("webpush: VAPIDPublicKey is not base64url: %w", err)
	}
	if string(pub) != string(key.PublicKey().Bytes()) {
		return nil, errors.New("webpush: VAPIDPublicKey is not the public key of VAPIDPrivateKey")
	}
	w := &WebPush{opts: opts, client: opts.Client}
	// The library prefixes everything but an https: URL with "mailto:".
	w.opts.Subscriber = strings.TrimPrefix(opts.Subscriber, "mailto:")
	w.opts.Timeout = cmp.Or(opts.Timeout, 30*time.Second)
	if w.client == nil {
		w.own = http.DefaultTransport.(*http.Transport).Clone()
		w.own.MaxIdleConnsPerHost = 100
		w.client = &http.Client{Transport: w.own}
	}
	return w, nil
}

// Close closes the idle connections of a client of its own.
func (w *WebPush) Close() {
	if w.own != nil {
		w.own.CloseIdleConnections()
	}
}

// CheckWebPushSubscription checks a subscription as a handoff gives it: an absolute http(s)
// endpoint URL with a host, a P-256 public key and a 16-byte authentication secret.
func CheckWebPushSubscription(endpoint string, keys WebPushKeys) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return errors.New("the endpoint is not an http(s) URL")
	}
	p256dh, err := decodeKey(keys.P256dh)
	if err != nil {
		return errors.New("keys.p256dh is not base64url")
	}
	if _, err := ecdh.P256().NewPublicKey(p256dh); err != nil {
		return errors.New("keys.p256dh is not an uncompressed P-256 public key")
	}
	auth, err := decodeKey(keys.Auth)
	if err != nil || len(auth) != 16 {
		return errors.New("keys.auth is not 16 bytes of base64url")
	}
	return nil
}

// decodeKey decodes base64url with or without padding (browsers give it without).
func decodeKey(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// Send sends p to the subscription whose endpoint is p.Token and whose keys are
// p.WebPushKeys, and returns the URL of the push message resource the push service made
// (its Location), or a *SendError.
func (w *WebPush) Send(ctx context.Context, p Push) (string, error) {
	if p.WebPushKeys == nil {
		return "", &SendError{Kind: KindTokenGone, Reason: "MissingKeys", Err: errors.New("webpush: the subscription has no keys")}
	}
	if err := CheckWebPushSubscription(p.Token, *p.WebPushKeys); err != nil {
		return "", &SendError{Kind: KindTokenGone, Reason: "BadSubscription", Err: errors.New("webpush: " + err.Error())}
	}
	return w.send(ctx, p, webpushMessage(p))
}

// send encrypts msg for p's subscription and posts it with p's headers.
func (w *WebPush) send(ctx context.Context, p Push, msg []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	resp, err := webpush.SendNotificationWithContext(ctx, msg,
		&webpush.Subscription{Endpoint: p.Token, Keys: webpush.Keys{P256dh: p.WebPushKeys.P256dh, Auth: p.WebPushKeys.Auth}},
		&webpush.Options{
			HTTPClient: w.client,
			// One record holding the message and its delimiter, no padding: the
			// library pads the plaintext to RecordSize less the header and the tag.
			RecordSize:      uint32(86 + len(msg) + 1 + 16),
			Subscriber:      w.opts.Subscriber,
			Topic:           webpushTopic(p.CollapseID),
			TTL:             int((max(p.TTL, 0) + time.Second - 1) / time.Second),
			Urgency:         webpushUrgency(p.Urgent),
			VAPIDPublicKey:  w.opts.VAPIDPublicKey,
			VAPIDPrivateKey: w.opts.VAPIDPrivateKey,
		})
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return "", &SendError{Kind: KindRetry, Err: networkError("webpush: ", err, p.Token)}
		}
		// Not sent: the library refused to build the request.
		return "", &SendError{Kind: KindInvalid, Err: scrubToken(fmt.Errorf("webpush: %w", err), p.Token)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.Header.Get("Location"), nil
	}
	e := &SendError{Status: resp.StatusCode, Reason: strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "")}
	if text := strings.TrimSpace(strings.ToValidUTF8(string(body), "")); text != "" {
		if len(text) > 200 {
			text = text[:200]
		}
		e.Err = scrubToken(errors.New("webpush: "+text), p.Token)
	}
	switch s := resp.StatusCode; {
	case s == http.StatusNotFound, s == http.StatusGone:
		e.Kind = KindTokenGone
	case s == http.StatusTooManyRequests:
		e.Kind = KindThrottled
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case s == http.StatusUnauthorized, s == http.StatusForbidden:
		e.Kind = KindCredentials
	case s >= 500:
		e.Kind = KindRetry
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	default:
		e.Kind = KindInvalid
	}
	return "", e
}

// webpushMessage is the plaintext of the push message of p.
func webpushMessage(p Push) []byte {
	const head = `{"pushproxy":`
	b := append([]byte(head), streamsObject(p.Pending, webpushMaxPlaintext-len(head)-1, false)...)
	return append(b, '}')
}

// webpushTopic is the Topic header for a collapse id: the id when it is a valid topic (at
// most 32 characters of the base64url alphabet, RFC 8030 section 5.4), else the first 32
// characters of the base64url SHA-256 of it, so that equal ids still replace each other.
func webpushTopic(id string) string {
	if id == "" {
		return ""
	}
	valid := len(id) <= 32
	for i := 0; valid && i < len(id); i++ {
		c := id[i]
		valid = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
	}
	if valid {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return base64.RawURLEncoding.EncodeToString(sum[:])[:32]
}

func webpushUrgency(urgent bool) webpush.Urgency {
	if urgent {
		return webpush.UrgencyHigh
	}
	return webpush.UrgencyNormal
}

var _ Sender = (*WebPush)(nil)
