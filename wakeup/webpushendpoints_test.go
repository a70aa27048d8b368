package wakeup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/wakeup/fakewebpush"
)

func TestWebPushEndpointsCheck(t *testing.T) {
	e, err := ParseWebPushEndpoints(append(DefaultWebPushEndpoints, "push.example.com:8443", "http://127.0.0.1:8790"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		endpoint string
		code     string // "" allowed
	}{
		{"https://fcm.googleapis.com/fcm/send/abc", ""},
		{"https://FCM.googleapis.com./fcm/send/abc", ""},
		{"https://updates.push.services.mozilla.com/wpush/v2/x", ""},
		{"https://wns2-par02p.notify.windows.com/w/?token=x", ""},
		{"https://web.push.apple.com/QGx", ""},
		{"https://push.example.com:8443/x", ""},
		{"http://127.0.0.1:8790/push/x", ""},
		{"https://127.0.0.1:8790/push/x", pushproxy.EFORBIDDEN},     // listed for http
		{"https://fcm.googleapis.com:8443/x", pushproxy.EFORBIDDEN}, // a host alone is port 443
		{"https://fcm.googleapis.com:443/x", ""},
		{"https://a.notify.windows.com:8443/x", pushproxy.EFORBIDDEN},
		{"https://notify.windows.com/x", pushproxy.EFORBIDDEN}, // the wildcard needs a label
		{"https://evil.com/fcm.googleapis.com", pushproxy.EFORBIDDEN},
		{"https://fcm.googleapis.com.evil.com/x", pushproxy.EFORBIDDEN},
		{"https://push.example.com/x", pushproxy.EFORBIDDEN},  // listed on 8443 only
		{"http://fcm.googleapis.com/x", pushproxy.EFORBIDDEN}, // https only unless listed http://
		{"http://127.0.0.1:8791/push/x", pushproxy.EFORBIDDEN},
		{"https://10.0.0.1/x", pushproxy.EFORBIDDEN},
		{"https://169.254.169.254/latest/meta-data", pushproxy.EFORBIDDEN},
		{"https://[::1]/x", pushproxy.EFORBIDDEN},
		{"ftp://fcm.googleapis.com/x", pushproxy.EINVALID},
		{"https://user@fcm.googleapis.com/x", pushproxy.EINVALID},
		{"/relative", pushproxy.EINVALID},
	} {
		err := e.Check(tc.endpoint)
		if got := pushproxy.ErrorCode(err); tc.code == "" && err != nil || tc.code != "" && got != tc.code {
			t.Errorf("Check(%q) = %v, want code %q", tc.endpoint, err, tc.code)
		}
		if err != nil && strings.Contains(err.Error(), "/x") {
			t.Errorf("Check(%q) error %q holds the endpoint's path", tc.endpoint, err)
		}
	}
}

func TestParseWebPushEndpointsRefuses(t *testing.T) {
	for _, bad := range []string{"*", "*.com", "a.*.com", "*.example.com:8443", "http://*.example.com", "host:0", "host:x", "ho st", "a/b", "user@host", "a:b:c"} {
		if _, err := ParseWebPushEndpoints([]string{bad}); err == nil {
			t.Errorf("ParseWebPushEndpoints(%q) accepted", bad)
		}
	}
	e, err := ParseWebPushEndpoints(nil)
	if err != nil || e.Check("https://fcm.googleapis.com/x") == nil {
		t.Errorf("an empty list permits: %v", err)
	}
}

// The client dials only listed hosts, and a listed name only at public addresses: a name
// that resolves to loopback is refused at dial time, an address listed explicitly is not.
func TestWebPushEndpointsClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "http://169.254.169.254/", http.StatusTemporaryRedirect)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	post := func(e *WebPushEndpoints, url string) (int, error) {
		resp, err := e.Client().Post(url, "text/plain", nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	listed, _ := ParseWebPushEndpoints([]string{"http://127.0.0.1:" + port})
	if status, err := post(listed, srv.URL+"/x"); err != nil || status != http.StatusCreated {
		t.Fatalf("listed address: %d %v", status, err)
	}
	if status, err := post(listed, srv.URL+"/redirect"); err != nil || status != http.StatusTemporaryRedirect {
		t.Fatalf("a redirect is answered, not followed: %d %v", status, err)
	}
	byName, _ := ParseWebPushEndpoints([]string{"http://localhost:" + port})
	if _, err := post(byName, "http://localhost:"+port+"/x"); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("a listed name resolving to loopback was dialed: %v", err)
	}
	other, _ := ParseWebPushEndpoints([]string{"http://127.0.0.2:" + port})
	var addrErr interface{ Error() string }
	if _, err := post(other, srv.URL+"/x"); err == nil || !errors.As(err, &addrErr) || !strings.Contains(err.Error(), "not a listed push service") {
		t.Fatalf("an unlisted host was dialed: %v", err)
	}
}

func FuzzWebPushEndpoints(f *testing.F) {
	f.Add("*.notify.windows.com", "https://a.notify.windows.com/w/?token=x")
	f.Add("http://127.0.0.1:8790", "http://127.0.0.1:8790/push/x")
	f.Add("[::1]:443", "https://[::1]/x")
	f.Fuzz(func(t *testing.T, entry, endpoint string) {
		e, err := ParseWebPushEndpoints([]string{entry})
		if err != nil {
			return
		}
		if err := e.Check(endpoint); err != nil {
			if pushproxy.ErrorCode(err) != pushproxy.EINVALID && pushproxy.ErrorCode(err) != pushproxy.EFORBIDDEN {
				t.Fatalf("Check error %v has no code", err)
			}
			return
		}
		if !strings.HasPrefix(strings.ToLower(endpoint), "https://") && !strings.HasPrefix(strings.ToLower(endpoint), "http://") {
			t.Fatalf("entry %q permits %q", entry, endpoint)
		}
	})
}

// The fake's control API, as `pushproxy fakes` serves it to another process: a
// subscription made over HTTP receives the sender's message, readable at /messages; after
// DELETE its messages are 410 Gone, which the sender reports as a dead token.
func TestFakeWebPushControlAPI(t *testing.T) {
	f := newWebPushFixture(t)
	body, _ := json.Marshal(map[string]string{"application_server_key": f.public})
	resp, err := http.Post(f.fake.URL()+"/subscriptions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var sub fakewebpush.Subscription
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("subscribe: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if _, err := f.sender.Send(context.Background(), f.push(sub, Push{Pending: map[string]int64{"s1": 2}})); err != nil {
		t.Fatal(err)
	}
	var ms []fakewebpush.ControlMessage
	resp, err = http.Get(f.fake.URL() + "/messages?since=0")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil || len(ms) != 1 {
		t.Fatalf("messages: %v %v", ms, err)
	}
	resp.Body.Close()
	if m := ms[0]; m.Status != 201 || m.Endpoint != sub.Endpoint || !strings.Contains(m.Payload, `"s1":2`) || m.VAPIDKey != f.public {
		t.Fatalf("message %+v", m)
	}
	req, _ := http.NewRequest(http.MethodDelete, sub.Endpoint, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("unsubscribe: %v", err)
	}
	_, err = f.sender.Send(context.Background(), f.push(sub, Push{}))
	if se := (*SendError)(nil); !errors.As(err, &se) || se.Kind != KindTokenGone || se.Status != http.StatusGone {
		t.Fatalf("after unsubscribe: %v", err)
	}
}
