package fakefcm

import (
	"bytes"
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// The wire form of a send request: the fields of FCM's v1 Message. Unknown fields are
// refused, like FCM does.
type sendRequest struct {
	ValidateOnly bool         `json:"validate_only"`
	Message      *wireMessage `json:"message"`
}

type wireMessage struct {
	Name         string                     `json:"name"`
	Data         map[string]json.RawMessage `json:"data"`
	Notification json.RawMessage            `json:"notification"`
	Android      *wireAndroid               `json:"android"`
	Webpush      json.RawMessage            `json:"webpush"`
	APNS         *wireAPNS                  `json:"apns"`
	FCMOptions   json.RawMessage            `json:"fcm_options"`
	Token        string                     `json:"token"`
	Topic        string                     `json:"topic"`
	Condition    string                     `json:"condition"`
}

type wireAndroid struct {
	CollapseKey           string                     `json:"collapse_key"`
	Priority              string                     `json:"priority"`
	TTL                   string                     `json:"ttl"`
	RestrictedPackageName string                     `json:"restricted_package_name"`
	Data                  map[string]json.RawMessage `json:"data"`
	Notification          json.RawMessage            `json:"notification"`
	FCMOptions            json.RawMessage            `json:"fcm_options"`
	DirectBootOK          bool                       `json:"direct_boot_ok"`
}

type wireAPNS struct {
	Headers           map[string]json.RawMessage `json:"headers"`
	Payload           json.RawMessage            `json:"payload"`
	FCMOptions        json.RawMessage            `json:"fcm_options"`
	LiveActivityToken string                     `json:"live_activity_token"`
}

const (
	maxDataBytes = 4096
	maxTTL       = 28 * 24 * 3600 // seconds
)

var (
	ttlPattern   = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,9})?s$`)
	tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_:\-]{20,1000}$`)
)

// validate checks the body of a send request like FCM and fills m from it.
func validate(m *Message, body []byte) *apiError {
	var req sendRequest
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(&req); err != nil {
		return invalid("Invalid JSON payload received. %v", err)
	}
	if d.More() {
		return invalid("Invalid JSON payload received. Unexpected data after the request.")
	}
	m.ValidateOnly = req.ValidateOnly
	msg := req.Message
	if msg == nil {
		return invalid("Request contains an invalid argument: no message.")
	}
	m.Token, m.Topic, m.Condition = msg.Token, msg.Topic, msg.Condition
	targets := 0
	for _, t := range []string{msg.Token, msg.Topic, msg.Condition} {
		if t != "" {
			targets++
		}
	}
	if targets != 1 {
		return invalid("Request contains an invalid argument: exactly one of token, topic or condition must be set, %d are.", targets)
	}
	data, size, e := dataMap("message.data", msg.Data)
	if e != nil {
		return e
	}
	m.Data = data
	if a := msg.Android; a != nil {
		m.Android = AndroidConfig{CollapseKey: a.CollapseKey, Priority: a.Priority, TTL: a.TTL}
		switch a.Priority {
		case "", "normal", "high", "NORMAL", "HIGH":
		default:
			return invalid("Invalid value at 'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), %q", a.Priority)
		}
		if a.TTL != "" {
			if !ttlPattern.MatchString(a.TTL) {
				return invalid("Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), Field 'ttl', Illegal duration format %q; duration must be seconds with at most 9 fractional digits, ending in 's'", a.TTL)
			}
			secs, _ := strconv.ParseInt(strings.SplitN(strings.TrimSuffix(a.TTL, "s"), ".", 2)[0], 10, 64)
			if secs > maxTTL {
				return invalid("Invalid value at 'message.android.ttl': %s is more than 28 days", a.TTL)
			}
		}
		adata, asize, e := dataMap("message.android.data", a.Data)
		if e != nil {
			return e
		}
		if a.Data != nil {
			size = asize // android.data replaces data for Android devices
			m.Data = adata
		}
	}
	if size > maxDataBytes {
		return invalid("Message is too big: %d bytes of data, at most %d.", size, maxDataBytes)
	}
	if a := msg.APNS; a != nil {
		if e := validateAPNS(m, a); e != nil {
			return e
		}
	}
	if msg.Token != "" && !tokenPattern.MatchString(msg.Token) {
		return invalid("The registration token is not a valid FCM registration token")
	}
	return nil
}

// dataMap checks a data map: string values, keys that are not reserved. It returns the map
// and its size in bytes (keys and values).
func dataMap(field string, raw map[string]json.RawMessage) (map[string]string, int, *apiError) {
	if raw == nil {
		return nil, 0, nil
	}
	out := make(map[string]string, len(raw))
	size := 0
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var v string
		if err := json.Unmarshal(raw[k], &v); err != nil {
			return nil, 0, invalid("Invalid value at '%s[%s].value' (TYPE_STRING), %s", field, k, raw[k])
		}
		lk := strings.ToLower(k)
		if k == "" || lk == "from" || lk == "notification" || lk == "message_type" || strings.HasPrefix(lk, "google") || strings.HasPrefix(lk, "gcm") {
			return nil, 0, invalid("Invalid data payload key: %q", k)
		}
		out[k] = v
		size += len(k) + len(v)
	}
	return out, size, nil
}

// validateAPNS checks the APNs block as APNs would once FCM forwards it: header values that
// are strings, apns-priority 5 or 10, and background pushes that are background pushes.
func validateAPNS(m *Message, a *wireAPNS) *apiError {
	m.APNSHeaders = make(map[string]string, len(a.Headers))
	for k, raw := range a.Headers {
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return invalid("Invalid value at 'message.apns.headers[%s].value' (TYPE_STRING), %s", k, raw)
		}
		m.APNSHeaders[strings.ToLower(k)] = v
	}
	m.APNSPayload = a.Payload
	prio, pushType := m.APNSHeaders["apns-priority"], m.APNSHeaders["apns-push-type"]
	switch prio {
	case "", "1", "5", "10":
	default:
		return invalid("Invalid APNs header apns-priority %q: it must be 1, 5 or 10", prio)
	}
	if c := m.APNSHeaders["apns-collapse-id"]; len(c) > 64 {
		return invalid("Invalid APNs header apns-collapse-id: %d bytes, at most 64", len(c))
	}
	if exp, ok := m.APNSHeaders["apns-expiration"]; ok {
		if _, err := strconv.ParseInt(exp, 10, 64); err != nil {
			return invalid("Invalid APNs header apns-expiration %q: not a UNIX time in seconds", exp)
		}
	}
	var aps map[string]json.RawMessage
	if len(a.Payload) > 0 {
		var payload map[string]json.RawMessage
		if err := json.Unmarshal(a.Payload, &payload); err != nil {
			return invalid("Invalid value at 'message.apns.payload': not a JSON object")
		}
		if raw, ok := payload["aps"]; ok {
			if err := json.Unmarshal(raw, &aps); err != nil {
				return invalid("Invalid value at 'message.apns.payload.aps': not a JSON object")
			}
		}
	}
	if pushType == "background" {
		if prio != "5" && prio != "1" {
			return invalid("APNs background pushes must have apns-priority 5, not %q", prio)
		}
		if string(aps["content-available"]) != "1" {
			return invalid("APNs background pushes need aps.content-available = 1")
		}
		for _, k := range []string{"alert", "sound", "badge"} {
			if _, ok := aps[k]; ok {
				return invalid("APNs background pushes must not have aps.%s", k)
			}
		}
	}
	return nil
}
