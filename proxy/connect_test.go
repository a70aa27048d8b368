package proxy_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
	"github.com/pushproxy/pushproxy/internal/upstream"
	"github.com/pushproxy/pushproxy/proxy"
	"github.com/pushproxy/pushproxy/store"
)

// rawOrigin accepts connections on 127.0.0.1 and hands each to serve (which may keep it as
// long as it likes: the test's end closes it). It returns the origin's URL.
func rawOrigin(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				go func() { <-done; c.Close() }()
				serve(c)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestConnectErrorsAreRecorded: every kind of failed connect (refused, DNS, TLS
// verification, no head, a head too large) is recorded on the stream with its time, shown by
// GET /v1/streams/{id}, and the origin is listed by /v1/admin/origins.
func TestConnectErrorsAreRecorded(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret"
	allow, _ := upstream.ParseAllowList([]string{"127.0.0.0/8", "nonexistent.invalid"})
	_, b := proxytest.Start(t, &proxy.Options{Upstream: allow, UpstreamIdleTimeout: 300 * time.Millisecond, ClaimInterval: 100 * time.Millisecond}, &api.Options{AdminToken: admin})

	// A port nothing listens on: bound, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/events"
	ln.Close()
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request reached an origin whose certificate is not trusted")
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	silent := rawOrigin(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		io.Copy(io.Discard, c) // never a word back
	})
	bigHead := rawOrigin(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Big: "+strings.Repeat("a", 70<<10)+"\r\n\r\ndata: x\n\n")
	})

	cases := []struct {
		name, url, want string
	}{
		{"refused", refused, "connection refused"},
		{"tls", tlsSrv.URL + "/events", "certificate"},
		{"no head", silent + "/events", "no response head from the origin within 300ms"},
		{"head too large", bigHead + "/events", "the response head is too large"},
	}
	start := time.Now()
	ids := map[string]handoffResult{}
	for _, c := range cases {
		ids[c.name] = handoff(t, b, map[string]any{"url": c.url})
	}
	// A name that does not resolve is refused at handoff: this one stopped resolving after.
	ctx := context.Background()
	dns, _, err := b.Store.CreateStream(ctx, store.NewStream{URL: "http://nonexistent.invalid/events", TokenHash: []byte("not a token")})
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, struct{ name, url, want string }{"dns", dns.URL, "nonexistent.invalid"})

	for _, c := range cases {
		id := ids[c.name].ID
		if c.name == "dns" {
			id = dns.ID
		}
		var last string
		eventually(t, 20*time.Second, c.name+": the error recorded", func() bool {
			st, err := b.Store.GetStream(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			last = st.LastError
			return strings.Contains(st.LastError, c.want)
		})
		st, err := b.Store.GetStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != "held" || st.Connected || st.Connects != 0 || st.LastErrorAt.Before(start.Add(-time.Second)) || st.LastErrorAt.After(time.Now().Add(time.Second)) {
			t.Errorf("%s: stream %s connected %v connects %d, last error %q at %v (test started %v)", c.name, st.State, st.Connected, st.Connects, last, st.LastErrorAt, start)
		}
		if c.name != "dns" {
			if si := getStream(t, b, ids[c.name]); !strings.Contains(si.Upstream.LastError, c.want) || si.Upstream.Connected {
				t.Errorf("%s: GET /v1/streams/{id} upstream %+v", c.name, si.Upstream)
			}
		}
	}

	var origins struct {
		Origins []struct {
			Host         string
			Held         int64
			Disconnected int64
			LastError    string `json:"last_error"`
		} `json:"origins"`
	}
	if code := adminGet(t, b, "/v1/admin/origins", admin, &origins); code != http.StatusOK {
		t.Fatalf("origins: %d", code)
	}
	hosts := map[string]int64{}
	for _, o := range origins.Origins {
		if o.LastError == "" {
			t.Errorf("origin %+v without its last error", o)
		}
		hosts[o.Host] = o.Disconnected
	}
	if hosts["127.0.0.1"] != 4 || hosts["nonexistent.invalid"] != 1 {
		t.Fatalf("failing origins %+v", origins.Origins)
	}
}

// TestStopRecordsNoError: streams stopped on purpose (the service stops) keep the last error
// they had: none for healthy ones, the origin's own for one that had failed before.
func TestStopRecordsNoError(t *testing.T) {
	t.Parallel()
	svc, b := setup(t, nil)
	o := newScriptOrigin(t, 0)
	o.PublishN(1)
	var refused atomic.Bool
	flaky := newOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refused.CompareAndSwap(false, true) {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		o.ServeHTTP(w, r)
	}))
	var hs []handoffResult
	for range 8 {
		hs = append(hs, handoff(t, b, map[string]any{"url": o.Srv.URL + "/events"}))
	}
	hs = append(hs, handoff(t, b, map[string]any{"url": flaky.URL + "/events"}))
	for _, h := range hs {
		eventually(t, 20*time.Second, "every stream connected", func() bool {
			si := getStream(t, b, h)
			return si.Upstream.Connected && si.Backlog == 1
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := svc.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for i, h := range hs {
		st, err := b.Store.GetStream(ctx, h.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := ""
		if i == len(hs)-1 {
			want = "origin answered 503 Service Unavailable"
		}
		if st.LastError != want || st.State != "held" || st.Connected {
			t.Errorf("stream %d after a graceful stop: %s, connected %v, last error %q, want %q", i, st.State, st.Connected, st.LastError, want)
		}
	}
}

// TestNoHeadOverHTTP2IsRecorded: an HTTP/2 origin that never sends a head is given up on
// after the connect and idle timeouts, and the reason is recorded; it is then tried again.
func TestNoHeadOverHTTP2IsRecorded(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := newH2COrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		<-r.Context().Done() // no head, ever
	}), nil)
	_, b := setup(t, &proxy.Options{UpstreamH2C: true, UpstreamConnectTimeout: 100 * time.Millisecond, UpstreamIdleTimeout: 200 * time.Millisecond})
	h := handoff(t, b, map[string]any{"url": srv.URL + "/events"})
	eventually(t, 20*time.Second, "the missing head to be recorded", func() bool {
		return strings.Contains(getStream(t, b, h).Upstream.LastError, "no response head from the origin within 200ms")
	})
	eventually(t, 20*time.Second, "another attempt", func() bool { return requests.Load() >= 2 })
	if si := getStream(t, b, h); si.State != "held" || si.Upstream.Connected || si.Upstream.Connects != 0 {
		t.Fatalf("stream %+v", si)
	}
}
