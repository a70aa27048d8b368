package wakeup

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The wake-up payload.
//
// Every sender carries the same object, the pushproxy object, which holds the pending counts
// per stream and their total:
//
//	{"streams":{"<stream id>":<pending events>,...},"total":<sum of all the counts>}
//
// APNs gets it as the "pushproxy" key of the payload, beside "aps":
//
//	{"aps":{"content-available":1},"pushproxy":{"streams":{"s1":3},"total":3}}
//
// FCM as the string value of the "pushproxy" data key, and Web Push as the "pushproxy" key of
// the (encrypted) message: {"pushproxy":{"streams":{"s1":3},"total":3}}. It never holds event
// data or URLs.
//
// A payload is limited in size (APNs: 4096 bytes in all; FCM: 4096 bytes of data, and FCM
// copies the data into the APNs payload for iOS devices). When the counts of all the streams
// do not fit, the object holds the streams with the largest counts (ties broken by stream
// id), as many as fit, and says how many streams it left out:
//
//	{"streams":{"s7":120,"s2":64},"total":190,"omitted":3}
//
// "total" still counts the events of every stream, so an app knows how much is waiting and
// that it must ask the proxy for the full list.

const (
	// apnsMaxPayload is the largest APNs payload Apple accepts for non-VoIP pushes.
	apnsMaxPayload = 4096
	// fcmStreamsBudget bounds the pushproxy object sent through FCM, measured as it is once
	// escaped as a JSON string (FCM puts the data into the APNs payload of iOS devices). It
	// leaves room within APNs' 4096 bytes for the aps dictionary and FCM's own keys.
	fcmStreamsBudget = 3584
	// apnsMaxAlert bounds the JSON encoding of the alert text of urgent pushes, so that the
	// streams always have room.
	apnsMaxAlert = 2048
	// apnsMaxCollapseID is the longest apns-collapse-id Apple accepts.
	apnsMaxCollapseID = 64
)

// streamsObject encodes the pushproxy object for pending, within limit bytes. When escaped
// is set the size is measured as the object will be once escaped as a JSON string value.
func streamsObject(pending map[string]int64, limit int, escaped bool) []byte {
	size := func(b []byte) int {
		if !escaped {
			return len(b)
		}
		return len(jsonString(string(b))) - 2
	}
	type entry struct {
		id string
		n  int64
	}
	entries := make([]entry, 0, len(pending))
	var sum int64
	for id, n := range pending {
		entries = append(entries, entry{id, n})
		sum += n
	}
	slices.SortFunc(entries, func(a, b entry) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	encoded := make([][]byte, len(entries))
	for i, e := range entries {
		b := jsonString(e.id)
		b = append(b, ':')
		encoded[i] = strconv.AppendInt(b, e.n, 10)
	}

	head := []byte(`{"streams":{`)
	tail := func(omitted int) []byte {
		b := append([]byte(`},"total":`), strconv.FormatInt(sum, 10)...)
		if omitted > 0 {
			b = append(b, `,"omitted":`...)
			b = strconv.AppendInt(b, int64(omitted), 10)
		}
		return append(b, '}')
	}

	// Each stream added makes the object longer (an entry is at least 5 bytes with its
	// comma, while "omitted" loses at most a digit), so the first k that does not fit ends
	// the search.
	k, used := 0, size(head)
	for k < len(encoded) {
		next := used + size(encoded[k])
		if k > 0 {
			next++ // comma
		}
		if next+size(tail(len(encoded)-k-1)) > limit {
			break
		}
		used = next
		k++
	}
	out := head
	for i := range k {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, encoded[i]...)
	}
	return append(out, tail(len(encoded)-k)...)
}

// apnsPayload is the APNs payload of p: a background push, or for an urgent push with an
// alert text an alert push that also carries content-available.
func apnsPayload(p Push) []byte {
	var b []byte
	if apnsAlert(p) {
		b = append(b, `{"aps":{"alert":`...)
		b = append(b, truncatedJSONString(p.AlertText, apnsMaxAlert)...)
		b = append(b, `,"mutable-content":1,"content-available":1},"pushproxy":`...)
	} else {
		b = append(b, `{"aps":{"content-available":1},"pushproxy":`...)
	}
	b = append(b, streamsObject(p.Pending, apnsMaxPayload-len(b)-1, false)...)
	return append(b, '}')
}

// apnsAlert reports whether p goes as an alert push rather than a background push.
func apnsAlert(p Push) bool { return p.Urgent && p.AlertText != "" }

// collapseID is p.CollapseID made to fit APNs' 64 bytes: a longer id is replaced by its
// SHA-256 in hex (64 bytes), so that equal ids still collapse.
func collapseID(id string) string {
	if len(id) <= apnsMaxCollapseID {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// apnsExpiration is the apns-expiration of a push with this TTL, as a UNIX time in seconds;
// 0 for a TTL of 0, which asks APNs to try once and not store the push.
func apnsExpiration(now time.Time, ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return now.Add(ttl).Unix()
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}

// truncatedJSONString is the JSON encoding of s, cut (at a character, with an ellipsis) so
// that the encoding is at most limit bytes.
func truncatedJSONString(s string, limit int) []byte {
	b := jsonString(s)
	if len(b) <= limit {
		return b
	}
	// Cut to limit bytes of text, then shorten while the escapes make it too long (a byte of
	// text takes at most 6 bytes of JSON).
	cut := min(len(s), limit)
	for {
		for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
			cut--
		}
		b = jsonString(s[:cut] + "…")
		if len(b) <= limit || cut == 0 {
			return b
		}
		cut = max(0, cut-max(1, (len(b)-limit+5)/6))
	}
}
