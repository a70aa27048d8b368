// Package pushproxy holds the domain types and error kinds of the push proxy: what a stream,
// a device and a queued event are, independent of Postgres and HTTP. The packages that do the
// work (store, proxy, wakeup, sse) import it; it imports none of them.
package pushproxy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Stream states.
const (
	StateHeld   = "held"   // the proxy holds the upstream connection
	StateClosed = "closed" // the origin ended the stream (204) or the device took it back
	StateFailed = "failed" // the origin answered in a way that rules out reconnecting
)

// Push platforms.
const (
	PlatformAPNs    = "apns"
	PlatformFCM     = "fcm"
	PlatformWebPush = "webpush"
)

// PushAddress is where a device is woken: an APNs device token and topic, an FCM
// registration token, or a Web Push subscription (its endpoint URL as Token, its keys in
// WebPushP256dh and WebPushAuth). The token is a secret: it never reaches a log line.
type PushAddress struct {
	Platform    string
	Token       string
	Topic       string
	Environment string // APNs: "production" or "development"
	// WebPushP256dh is the subscription's P-256 public key, base64url (Web Push only).
	WebPushP256dh string
	// WebPushAuth is the subscription's authentication secret, base64url (Web Push only).
	// A secret: sealed at rest, never shown in a document or a log line.
	WebPushAuth string
}

// Stream is one upstream EventSource held on a device's behalf.
type Stream struct {
	ID       string
	DeviceID string // "" when the stream was handed off without a push address
	URL      string
	Headers  map[string]string

	State       string
	StateReason string

	// ResumeID is the upstream resume point: the Last-Event-ID sent on reconnect.
	ResumeID string
	// RetryMS is the origin's last retry: value in milliseconds, or -1 if it sent none.
	RetryMS int64

	HeadSeq  int64  // sequence number of the newest queued event (0: none yet)
	FloorSeq int64  // events with seq <= FloorSeq are gone (acknowledged or trimmed)
	AckedSeq int64  // the reader acknowledged everything up to this seq...
	AckedID  string // ...by presenting this Last-Event-ID
	NewestID string // replay id of the newest queued event, "" if the backlog is empty

	UpstreamStatus int
	Connected      bool
	Connects       int64
	LastError      string
	LastErrorAt    time.Time

	CreatedAt time.Time
	UpdatedAt time.Time
	ClosedAt  time.Time

	TokenHash []byte

	// UrgentEvents lists the event types that wake the device at once, on the platform's
	// high-priority path where it has one.
	UrgentEvents []string
	// CompactBy is the stream's compaction setting (see ParseCompaction; "": none).
	CompactBy string
	// Queued is the number of events queued, as the store counted it when it read the
	// stream (nil: not counted; see Backlog).
	Queued *int64
}

// Backlog is the number of events queued and not yet acknowledged: the seqs between floor
// and head, or, for a compacted stream whose queued events were counted (Queued), that
// count (compaction leaves holes in the seqs).
func (s *Stream) Backlog() int64 {
	if s.Queued != nil {
		return *s.Queued
	}
	return s.HeadSeq - s.FloorSeq
}

// Event is one queued event, byte-exact as the origin sent it.
type Event struct {
	Seq int64
	// LastEventID is the effective last event ID after this event: what a browser connected
	// to the origin reports as MessageEvent.lastEventId.
	LastEventID string
	Type        string
	Data        string
	// CompactKey is the event's compaction key ("": none, never compacted), computed once
	// by the holder from the stream's Compaction. It is stored, not replayed.
	CompactKey string
}

// Error codes. They are stable: API clients branch on them (they form the "type" of problem
// documents) and operators grep for them.
const (
	ECONFLICT     = "conflict"
	EINTERNAL     = "internal"
	EINVALID      = "invalid"
	ENOTFOUND     = "not-found"
	ETOOLARGE     = "too-large"
	EUNAUTHORIZED = "unauthorized"
	EFORBIDDEN    = "forbidden"
	ELIMIT        = "limit-exceeded"
	EUNAVAILABLE  = "unavailable"

	// EDEVICESECRETREQUIRED: the handoff names a push token whose device has a secret, and
	// presents none.
	EDEVICESECRETREQUIRED = "device-secret-required"
	// EDEVICESECRETMISMATCH: the handoff presents a device secret that is not the device's.
	EDEVICESECRETMISMATCH = "device-secret-mismatch"
	// ERATELIMITED: too many requests from one client address or API key; retry later.
	ERATELIMITED = "rate-limited"
	// EKEYLIMIT: the API key holds as many streams as it may (--max-streams-per-key).
	EKEYLIMIT = "key-stream-limit"
	// EREADERLIMIT: the stream has as many open readers as it may (--max-readers-per-stream).
	EREADERLIMIT = "reader-limit"
)

// Error is an error a client can act on: a code from the list above and a message that says
// what is wrong, safe to show to the caller.
type Error struct {
	Code    string
	Message string
	// Err is the underlying cause, if any (a database error behind EUNAVAILABLE): part of
	// Error() for logs, never of Message, so never shown to the caller.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("pushproxy: %s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("pushproxy: %s: %s", e.Code, e.Message)
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for any other
// non-nil error, and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	default:
		return EINTERNAL
	}
}

// ErrorMessage returns the message of the first *Error in err's chain, or a generic message
// for any other error (internal details are logged, not shown).
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ProxyIDPrefix starts the ids the proxy assigns to events that have no last event ID of
// their own (an origin that sends no ids at all), so that a reader can still resume: such an
// event is replayed with id ProxyIDPrefix + its sequence number.
const ProxyIDPrefix = "pushproxy-seq-"

// ReplayID is the id an event is replayed with: the origin's own effective last event ID, or
// a proxy-assigned one when that is empty.
func ReplayID(seq int64, lastEventID string) string {
	if lastEventID != "" {
		return lastEventID
	}
	return ProxyIDPrefix + strconv.FormatInt(seq, 10)
}

// ParseProxyID returns the sequence number of a proxy-assigned id.
func ParseProxyID(id string) (int64, bool) {
	rest, ok := strings.CutPrefix(id, ProxyIDPrefix)
	if !ok || rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// Wake-up outcomes, as recorded in a device's wake-up history.
const (
	OutcomeSent           = "sent"            // the platform accepted the push
	OutcomeTokenGone      = "token-gone"      // the token is dead; the device too
	OutcomeThrottled      = "throttled"       // the platform asked us to slow down; retried later
	OutcomeRetry          = "retry"           // a server or network error; retried with backoff
	OutcomeCredentials    = "credentials"     // our credentials were refused; retried with backoff
	OutcomeInvalid        = "invalid"         // the platform refused the push for good
	OutcomeAwake          = "awake"           // not sent: the device had a reader open
	OutcomeNothingPending = "nothing-pending" // not sent: everything was read meanwhile
	OutcomeDead           = "dead"            // not sent: the device's token was reported dead
	OutcomeNoSender       = "no-sender"       // not sent: no credentials for the platform
)

// Wakeup is one wake-up claimed for sending: the device, and what it has pending.
type Wakeup struct {
	ID        string
	DeviceID  string
	Push      PushAddress
	Urgent    bool
	Attempts  int // including this one
	CreatedAt time.Time
	DueAt     time.Time

	Awake bool // the device has a reader open
	Dead  bool // the device's token was reported dead
	// Pending counts the events not yet delivered, per stream id.
	Pending map[string]int64
	// RecentSends are the times of the pushes sent to the device within the budget window.
	RecentSends []time.Time
}

// WakeupResult is what became of a claimed wake-up.
type WakeupResult struct {
	ID       string
	DeviceID string
	Outcome  string // one of the Outcome constants
	Error    string
	PushID   string // the platform's id of the push (apns-id, FCM message name)
	Pending  int64  // events the push announced
	// RetryAt, when not zero, puts the wake-up back in the queue, due then (throttled,
	// retry, credentials, or a spent budget).
	RetryAt time.Time
	// ThrottledUntil, when not zero, holds every wake-up of the device until then.
	ThrottledUntil time.Time
}

// WakeState is a device's wake-up state, for the API and operators.
type WakeState struct {
	LastPushAt    time.Time
	LastOutcome   string
	LastError     string
	NextPushAt    time.Time // when the outstanding wake-up is due; zero if none
	Awaiting      bool      // a push was sent and the device has not read since
	ThrottledTill time.Time
	DeadAt        time.Time
	DeadReason    string
}

// IsUUID reports whether s has the textual 8-4-4-4-12 form of a UUID (stream, device and
// wake-up ids; the APNs apns-id header).
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
