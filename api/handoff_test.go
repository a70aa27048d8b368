package api

import (
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/wakeup"
)

// FuzzParseHandoff: any body either parses into a handoff that is safe to act on, or is
// refused with a client error; never a panic, never an internal error.
func FuzzParseHandoff(f *testing.F) {
	const fcmSeedToken = "cXz1AbCdEfGhIjKlMnOpQr:APA91bH" + "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789-_"
	seeds := []string{
		`{"url":"https://example.com/events"}`,
		`{"url":"http://127.0.0.1:9000/events?x=1#frag","last_event_id":"42","headers":{"Authorization":"Bearer x"},"push":{"platform":"fcm","token":"` + fcmSeedToken + `"}}`,
		`{"url":"https://h/","push":{"platform":"fcm","token":"` + fcmSeedToken + `","device_secret":"` + newDeviceSecret() + `"}}`,
		`{"url":"https://h/","push":{"platform":"apns","token":"` + strings.Repeat("0f", 32) + `","topic":"com.example.app","environment":"development"}}`,
		`{"url":"http://[::1]:80/","headers":{"x-a":"1","X-A":"2"}}`,
		`{"url":"http://h/","headers":{"Bad Name":"x"}}`,
		`{"url":"http://h/","headers":{"X":"a\r\nb"}}`,
		`{"url":"https://h/","compact":{"by":"type"}}`,
		`{"url":"https://h/","compact":{"by":"json:/sym"}}`,
		`{"url":"https://h/","compact":{"by":"json:/a~1b/~0/0"}}`,
		`{"url":"https://h/","compact":{"by":"json:/a~2"}}`,
		`{"url":"https://h/","compact":{"by":""}}`,
		`{"url":"https://h/","compact":{"by":"json:sym"}}`,
		`{"url":"https://h/","compact":{"by":"type","x":1}}`,
		`{"url":"https://h/","compact":null}`,
		`{"url":"ftp://h/"}`, `{"url":""}`, `{}`, `[]`, `null`, `{"url":"http://h/"} x`, ``,
		`{"url":"https://h/","push":{"platform":"webpush","subscription":{"endpoint":"https://fcm.googleapis.com/fcm/send/x","expirationTime":null,"keys":{"p256dh":"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}}}`,
		`{"url":"https://h/","push":{"platform":"webpush","subscription":{"endpoint":"http://[::1","keys":{"p256dh":"BA==","auth":""}}}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		h, err := parseHandoff(strings.NewReader(string(body)))
		if err != nil {
			if code := pushproxy.ErrorCode(err); code != pushproxy.EINVALID && code != pushproxy.ETOOLARGE {
				t.Fatalf("error of kind %q: %v", code, err)
			}
			return
		}
		if h.URL == nil || (h.URL.Scheme != "http" && h.URL.Scheme != "https") || h.URL.Hostname() == "" || h.URL.User != nil {
			t.Fatalf("accepted url %v", h.URL)
		}
		if _, err := url.Parse(h.URL.String()); err != nil {
			t.Fatalf("accepted url does not reparse: %v", err)
		}
		if strings.ContainsAny(h.LastEventID, "\r\n\x00") {
			t.Fatalf("accepted last event id %q", h.LastEventID)
		}
		for k, v := range h.Headers {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) || managedHeaders[k] {
				t.Fatalf("accepted header %q: %q", k, v)
			}
		}
		if h.CompactBy != "" {
			if c, err := pushproxy.ParseCompaction(h.CompactBy); err != nil || !c.Enabled() || c.String() != h.CompactBy {
				t.Fatalf("accepted compact.by %q: %v", h.CompactBy, err)
			}
		}
		if h.Push != nil && h.Push.Platform != pushproxy.PlatformAPNs && h.Push.Platform != pushproxy.PlatformFCM && h.Push.Platform != pushproxy.PlatformWebPush {
			t.Fatalf("accepted platform %q", h.Push.Platform)
		}
		if h.Push != nil && h.Push.Platform == pushproxy.PlatformWebPush {
			keys := wakeup.WebPushKeys{P256dh: h.Push.WebPushP256dh, Auth: h.Push.WebPushAuth}
			if err := wakeup.CheckWebPushSubscription(h.Push.Token, keys); err != nil || h.Push.Topic != "" || h.Push.Environment != "" {
				t.Fatalf("accepted subscription %+v: %v", h.Push, err)
			}
		}
	})
}
