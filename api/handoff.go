package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/wakeup"
)

// handoffRequest is the body of POST /v1/streams.
type handoffRequest struct {
	URL         string            `json:"url"`
	LastEventID *string           `json:"last_event_id"`
	Headers     map[string]string `json:"headers"`
	Push        *pushRequest      `json:"push"`
	Wake        *wakeRequest      `json:"wake"`
	Compact     *compactRequest   `json:"compact"`
}

// compactRequest asks for compaction by key: "type" or "json:" and a JSON pointer.
type compactRequest struct {
	By string `json:"by"`
}

type wakeRequest struct {
	UrgentEvents []string `json:"urgent_events"`
}

type pushRequest struct {
	Platform string `json:"platform"`
	Token    string `json:"token"`
	// Subscription is a Web Push subscription (PushSubscription.toJSON()), for platform
	// "webpush" instead of a token.
	Subscription *subscriptionRequest `json:"subscription"`
	Topic        string               `json:"topic"`
	Environment  string               `json:"environment"`
	// DeviceSecret is the device's credential, answered by its first handoff.
	DeviceSecret string `json:"device_secret"`
}

// subscriptionRequest is a Web Push subscription as PushSubscription.toJSON() gives it.
type subscriptionRequest struct {
	Endpoint string `json:"endpoint"`
	// ExpirationTime is what browsers give (usually null); it is not used.
	ExpirationTime *float64           `json:"expirationTime"`
	Keys           wakeup.WebPushKeys `json:"keys"`
}

// Limits on a handoff's parts.
const (
	maxURLLength         = 4096
	maxLastEventIDLength = 1024
	maxHeaders           = 32
	maxUrgentEvents      = 32
	maxEventTypeLength   = 128
	maxHeaderBytes       = 8 << 10
	maxPushTokenLength   = 4096
	maxTopicLength       = 255
)

// managedHeaders are set by the proxy itself or belong to one hop: a client may not forward
// them.
var managedHeaders = map[string]bool{
	"Accept": true, "Accept-Encoding": true, "Cache-Control": true, "Connection": true,
	"Content-Length": true, "Content-Type": true, "Expect": true, "Host": true,
	"Keep-Alive": true, "Last-Event-Id": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Upgrade": true, "Http2-Settings": true,
}

// handoff is a validated handoff.
type handoff struct {
	URL         *url.URL
	LastEventID string
	Headers     map[string]string // canonical names
	Push        *pushproxy.PushAddress
	// DeviceSecret is the device secret the handoff presented ("": none).
	DeviceSecret string
	// UrgentEvents are the event types that wake the device at once.
	UrgentEvents []string
	// CompactBy is the compaction setting ("": none; see pushproxy.ParseCompaction).
	CompactBy string
}

// parseHandoff reads and validates a handoff body. Every problem is an *pushproxy.Error
// that says what is wrong.
func parseHandoff(body io.Reader) (handoff, error) {
	var req handoffRequest
	if err := decodeJSON(body, &req); err != nil {
		return handoff{}, err
	}
	var h handoff
	u, err := validateUpstreamURL(req.URL)
	if err != nil {
		return h, err
	}
	h.URL = u
	if req.LastEventID != nil {
		id := *req.LastEventID
		switch {
		case len(id) > maxLastEventIDLength:
			return h, invalid("last_event_id: longer than %d bytes", maxLastEventIDLength)
		case strings.ContainsAny(id, "\r\n\x00"):
			return h, invalid("last_event_id: must not contain CR, LF or NUL (an event stream cannot carry such an id)")
		}
		h.LastEventID = id
	}
	if h.Headers, err = validateHeaders(req.Headers); err != nil {
		return h, err
	}
	if req.Push != nil {
		if h.Push, err = validatePush(req.Push); err != nil {
			return h, err
		}
		if req.Push.DeviceSecret != "" {
			if h.DeviceSecret, err = parseDeviceSecret(req.Push.DeviceSecret); err != nil {
				return h, err
			}
		}
	}
	if req.Wake != nil {
		if h.UrgentEvents, err = validateUrgentEvents(req.Wake.UrgentEvents); err != nil {
			return h, err
		}
		if len(h.UrgentEvents) > 0 && h.Push == nil {
			return h, invalid("wake.urgent_events: needs a push address to wake")
		}
	}
	if req.Compact != nil {
		c, err := pushproxy.ParseCompaction(req.Compact.By)
		if err != nil {
			return h, invalid("compact.by: %s", err.Error())
		}
		if !c.Enabled() {
			return h, invalid(`compact.by: required ("type" or "json:" and a JSON pointer); leave compact out for no compaction`)
		}
		h.CompactBy = c.String()
	}
	return h, nil
}

func invalid(format string, args ...any) error {
	return pushproxy.Errorf(pushproxy.EINVALID, format, args...)
}

// decodeJSON decodes exactly one JSON object into v, refusing unknown fields and text that
// would not arrive unaltered (see checkJSONText), and turns decoder errors into messages a
// client can act on.
func decodeJSON(body io.Reader, v any) error {
	raw, err := io.ReadAll(body)
	if err != nil {
		return jsonError(err)
	}
	if err := checkJSONText(raw); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil {
			return jsonError(err)
		}
		return invalid("body: unexpected data after the JSON object")
	}
	return nil
}

func jsonError(err error) error {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
		tooBig *http.MaxBytesError
	)
	switch {
	case errors.As(err, &tooBig):
		return pushproxy.Errorf(pushproxy.ETOOLARGE, "body: larger than %d bytes", tooBig.Limit)
	case errors.Is(err, io.EOF):
		return invalid("body: empty; expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body: truncated JSON")
	case errors.As(err, &syntax):
		return invalid("body: malformed JSON at byte %d: %s", syntax.Offset, syntax.Error())
	case errors.As(err, &typ):
		if typ.Field != "" {
			return invalid("%s: expected %s, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return invalid("body: expected a JSON object, got JSON %s", typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return invalid("body: unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	default:
		return invalid("body: %s", err.Error())
	}
}

func validateUpstreamURL(raw string) (*url.URL, error) {
	switch {
	case raw == "":
		return nil, invalid("url: required")
	case len(raw) > maxURLLength:
		return nil, invalid("url: longer than %d bytes", maxURLLength)
	case !utf8.ValidString(raw) || strings.ContainsAny(raw, "\x00\r\n\t "):
		return nil, invalid("url: must not contain spaces or control characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, invalid("url: not a valid URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, invalid("url: scheme must be http or https")
	case u.Host == "" || u.Hostname() == "":
		return nil, invalid("url: host required")
	case u.User != nil:
		return nil, invalid("url: must not carry credentials; forward an Authorization header instead")
	case u.Opaque != "":
		return nil, invalid("url: not a valid http(s) URL")
	}
	if p := u.Port(); p != "" {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 1 || n > 65535 {
			return nil, invalid("url: port out of range")
		}
	}
	u.Fragment, u.RawFragment = "", "" // an EventSource never sends it
	return u, nil
}

func validateHeaders(in map[string]string) (map[string]string, error) {
	if len(in) > maxHeaders {
		return nil, invalid("headers: more than %d", maxHeaders)
	}
	out := make(map[string]string, len(in))
	size := 0
	for name, value := range in {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, invalid("headers: %q is not a valid header name (RFC 9110 token)", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") || !httpguts.ValidHeaderFieldValue(value) {
			return nil, invalid("headers: the value of %s must not contain CR, LF or other control characters", name)
		}
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if managedHeaders[canon] || strings.HasPrefix(canon, "Sec-") || strings.HasPrefix(canon, "Proxy-") {
			return nil, invalid("headers: %s is set by the proxy and cannot be forwarded", canon)
		}
		if _, dup := out[canon]; dup {
			return nil, invalid("headers: %s given twice", canon)
		}
		size += len(name) + len(value)
		if size > maxHeaderBytes {
			return nil, invalid("headers: more than %d bytes in all", maxHeaderBytes)
		}
		out[canon] = strings.TrimSpace(value)
	}
	return out, nil
}

// validateUrgentEvents checks event types as an event stream can carry them: non-empty
// ("message" is the type of events without one), no CR, LF or NUL.
func validateUrgentEvents(types []string) ([]string, error) {
	if len(types) > maxUrgentEvents {
		return nil, invalid("wake.urgent_events: more than %d", maxUrgentEvents)
	}
	seen := map[string]bool{}
	var out []string
	for _, t := range types {
		switch {
		case t == "":
			return nil, invalid(`wake.urgent_events: an event type cannot be empty (events without a type are "message")`)
		case len(t) > maxEventTypeLength:
			return nil, invalid("wake.urgent_events: %.20q... is longer than %d bytes", t, maxEventTypeLength)
		case strings.ContainsAny(t, "\r\n\x00") || !utf8.ValidString(t):
			return nil, invalid("wake.urgent_events: %q cannot be an event type (CR, LF, NUL or invalid UTF-8)", t)
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, nil
}

func validatePush(p *pushRequest) (*pushproxy.PushAddress, error) {
	if p.Platform == pushproxy.PlatformWebPush {
		return validateSubscription(p)
	}
	if p.Subscription != nil {
		return nil, invalid(`push.subscription: applies to webpush only`)
	}
	a := &pushproxy.PushAddress{Platform: p.Platform, Token: p.Token, Topic: p.Topic, Environment: p.Environment}
	switch {
	case p.Token == "":
		return nil, invalid("push.token: required")
	case len(p.Token) > maxPushTokenLength:
		return nil, invalid("push.token: longer than %d bytes", maxPushTokenLength)
	case len(p.Topic) > maxTopicLength:
		return nil, invalid("push.topic: longer than %d bytes", maxTopicLength)
	case strings.ContainsFunc(p.Topic, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return nil, invalid("push.topic: must not contain spaces or control characters")
	}
	switch p.Platform {
	case pushproxy.PlatformAPNs:
		if err := checkAPNsToken(p.Token); err != nil {
			return nil, err
		}
		a.Token = strings.ToLower(p.Token)
		switch p.Environment {
		case "":
			a.Environment = "production"
		case "production", "development":
		default:
			return nil, invalid(`push.environment: must be "production" or "development"`)
		}
	case pushproxy.PlatformFCM:
		if err := checkFCMToken(p.Token); err != nil {
			return nil, err
		}
		if p.Environment != "" {
			return nil, invalid("push.environment: applies to apns only")
		}
	case "":
		return nil, invalid(`push.platform: required ("apns", "fcm" or "webpush")`)
	default:
		return nil, invalid(`push.platform: must be "apns", "fcm" or "webpush"`)
	}
	return a, nil
}

// validateSubscription validates the push address of a Web Push device: its subscription,
// whose endpoint is the device's token. Whether the proxy may send to the endpoint's host
// is checked by the handler (--webpush-endpoints).
func validateSubscription(p *pushRequest) (*pushproxy.PushAddress, error) {
	sub := p.Subscription
	switch {
	case sub == nil:
		return nil, invalid(`push.subscription: required for webpush (PushSubscription.toJSON(): {"endpoint", "keys": {"p256dh", "auth"}})`)
	case p.Token != "":
		return nil, invalid("push.token: not for webpush (the subscription's endpoint names the device)")
	case p.Topic != "" || p.Environment != "":
		return nil, invalid("push.topic, push.environment: not for webpush")
	case sub.Endpoint == "":
		return nil, invalid("push.subscription.endpoint: required")
	case len(sub.Endpoint) > maxPushTokenLength:
		return nil, invalid("push.subscription.endpoint: longer than %d bytes", maxPushTokenLength)
	}
	if err := wakeup.CheckWebPushSubscription(sub.Endpoint, sub.Keys); err != nil {
		return nil, invalid("push.subscription: %s", err.Error())
	}
	return &pushproxy.PushAddress{
		Platform: pushproxy.PlatformWebPush, Token: sub.Endpoint,
		// Stored as browsers give them, without padding.
		WebPushP256dh: strings.TrimRight(sub.Keys.P256dh, "="), WebPushAuth: strings.TrimRight(sub.Keys.Auth, "="),
	}, nil
}
