package wakeup

import (
	"context"
	"fmt"
	"time"
)

// Push is one silent push to one device: the wake-up for all of its streams.
type Push struct {
	// ID identifies the wake-up. The APNs sender sends it as apns-id (it is a UUID), so a
	// retry of the same wake-up carries the same id.
	ID string
	// Platform is pushproxy.PlatformAPNs ("apns"), pushproxy.PlatformFCM ("fcm") or "webpush".
	Platform string
	// Token is the APNs device token (hex), the FCM registration token, or the endpoint URL
	// of a Web Push subscription.
	Token string
	// WebPushKeys are the keys of a Web Push subscription (Web Push only).
	WebPushKeys *WebPushKeys
	// Topic is the APNs topic (the app's bundle id); "" means the sender's default topic.
	Topic string
	// Environment is "production" or "development" (APNs only).
	Environment string
	// Urgent asks for the platform's high-priority path: FCM priority high; on APNs an alert
	// push with mutable-content when AlertText is set (background pushes cannot be high
	// priority), else a normal background push.
	Urgent bool
	// AlertText is the text of the APNs alert used for urgent wake-ups (operator configured).
	AlertText string
	// CollapseID is sent as apns-collapse-id and as the FCM collapse_key, so that a device
	// that was offline gets one wake-up, not a pile.
	CollapseID string
	// TTL bounds how long the platform keeps an undelivered push (apns-expiration, FCM ttl).
	TTL time.Duration
	// Pending counts the events waiting per stream id. The payload carries these counts and
	// nothing else: never event data or URLs.
	Pending map[string]int64
}

// Kinds of send failure. Senders turn every vendor error into one of these.
const (
	// KindTokenGone: the token will never work again (APNs 410 Unregistered, 400
	// BadDeviceToken; FCM UNREGISTERED, invalid registration). The device is dead.
	KindTokenGone = "token-gone"
	// KindThrottled: the platform asks us to slow down (APNs 429, FCM QUOTA_EXCEEDED);
	// RetryAfter says for how long when the platform said.
	KindThrottled = "throttled"
	// KindRetry: a server error or a network failure: try again with backoff.
	KindRetry = "retry"
	// KindCredentials: our credentials are refused (APNs 403 InvalidProviderToken,
	// ExpiredProviderToken..., FCM 401/403 or an OAuth failure).
	KindCredentials = "credentials"
	// KindInvalid: the platform refused this push for a reason a retry will not fix (a bad
	// topic, payload too large...).
	KindInvalid = "invalid"
)

// SendError is a failed send, classified.
type SendError struct {
	Kind       string
	Reason     string        // the platform's reason: "Unregistered", "UNREGISTERED", ...
	Status     int           // HTTP status, 0 for network errors
	RetryAfter time.Duration // 0 when the platform did not say
	Err        error         // the underlying error, if any
}

func (e *SendError) Error() string {
	s := fmt.Sprintf("push %s", e.Kind)
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *SendError) Unwrap() error { return e.Err }

// Sender sends pushes to one platform. Send returns the platform's id for the push
// (apns-id, FCM message name) or a *SendError.
type Sender interface {
	Send(ctx context.Context, p Push) (string, error)
}
