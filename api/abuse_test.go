package api_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushproxy/pushproxy/api"
	"github.com/pushproxy/pushproxy/internal/proxytest"
)

// rawReq is one request as bytes go on the wire.
type rawReq struct {
	method, target string
	headers        []string // "Name: value" lines
	body           string
}

func (r rawReq) bytes() string {
	var b strings.Builder
	b.WriteString(r.method + " " + r.target + " HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n")
	hasLength := false
	for _, h := range r.headers {
		b.WriteString(h + "\r\n")
		if strings.HasPrefix(strings.ToLower(h), "content-length:") || strings.HasPrefix(strings.ToLower(h), "transfer-encoding:") {
			hasLength = true
		}
	}
	if !hasLength && (r.body != "" || r.method == "POST") {
		b.WriteString("Content-Length: " + strconv.Itoa(len(r.body)) + "\r\n")
	}
	b.WriteString("\r\n" + r.body)
	return b.String()
}

// abuseAnswer is what the server answered: status, content type and the start of the body.
type abuseAnswer struct {
	status int
	ctype  string
	body   string
}

// sendRaw sends one raw request on its own connection. An event stream's answer is not read
// past its head (it would not end).
func sendRaw(addr string, raw string) (abuseAnswer, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return abuseAnswer{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() { _, err := io.WriteString(c, raw); werr <- err }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return abuseAnswer{}, fmt.Errorf("no HTTP answer: %w", err)
	}
	// (No resp.Body.Close: it would read an event stream to its end; closing c ends it.)
	a := abuseAnswer{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type")}
	if a.ctype != "text/event-stream" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		a.body = string(b)
	}
	return a, nil
}

// TestAbusiveRequests sends hundreds of malformed and abusive requests, over raw TCP, to
// every route with and without credentials: none may get a 5xx (but a documented 503), every
// error the API answers is a problem document, nothing is logged as an error, and the server
// still answers afterwards. Requests so malformed that net/http refuses them itself (a NUL
// in a header, a broken chunk) never reach the API: those get net/http's plain 400, and only
// those may.
func TestAbusiveRequests(t *testing.T) {
	t.Parallel()
	logs := &logCapture{}
	_, b := setup(t, &api.Options{AdminToken: "adm1n", Logger: slog.New(logs)})
	h := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/"})
	dev := handoff(t, b, map[string]any{"url": "http://127.0.0.1:1/", "push": map[string]string{"platform": "fcm", "token": proxytest.FCMToken("abuse-device")}})
	_ = dev

	type route struct {
		method, path string
		headers      []string
		body         string
		dashboard    bool // browser pages: errors are HTML
	}
	good := `{"url":"http://127.0.0.1:1/","last_event_id":"1","headers":{"X-A":"b"}}`
	tok, adm := "Authorization: Bearer "+h.Token, "Authorization: Bearer adm1n"
	id := h.ID
	unknown := "6f1c1a57-0000-4000-8000-000000000000"
	routes := []route{
		{method: "POST", path: "/v1/streams", headers: []string{"Content-Type: application/json"}, body: good},
		{method: "POST", path: "/v1/streams", body: good, headers: []string{"Authorization: Bearer nope"}},
		{method: "GET", path: "/v1/streams/" + id, headers: []string{tok}},
		{method: "GET", path: "/v1/streams/" + id},
		{method: "GET", path: "/v1/streams/" + unknown + "?token=x"},
		{method: "DELETE", path: "/v1/streams/" + unknown, headers: []string{tok, "Last-Event-ID: 1"}},
		{method: "GET", path: "/v1/streams/" + id + "/events?token=" + h.Token, headers: []string{"Accept: application/json"}},
		{method: "GET", path: "/v1/streams/" + id + "/events?token=" + h.Token, headers: []string{"Accept: text/event-stream", "Last-Event-ID: 0"}},
		{method: "GET", path: "/v1/streams/" + id + "/events", headers: []string{"Accept: text/event-stream"}},
		{method: "GET", path: "/v1/admin/streams?state=held&limit=5", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/streams?host=127.0.0.1:1"},
		{method: "GET", path: "/v1/admin/streams/" + id, headers: []string{adm}},
		{method: "POST", path: "/v1/admin/streams/" + unknown + "/close", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/totals", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/origins?limit=3", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/devices?state=dead", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/wakeups", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/overview", headers: []string{adm}},
		{method: "GET", path: "/v1/admin/devices/" + unknown, headers: []string{adm}},
		{method: "POST", path: "/v1/admin/devices/" + unknown + "/wake", headers: []string{adm}},
		{method: "DELETE", path: "/v1/admin/devices/" + unknown, headers: []string{adm}},
		{method: "GET", path: "/readyz"},
		{method: "POST", path: "/admin/login", headers: []string{"Content-Type: application/x-www-form-urlencoded"}, body: "token=nope", dashboard: true},
		{method: "GET", path: "/admin/", dashboard: true},
	}

	type mutation struct {
		name     string
		apply    func(r route) rawReq
		protocol bool // net/http itself refuses it
		// refuse tells the routes where the mutation must never be answered 2xx or 3xx
		// (nil: none).
		refuse func(r route) bool
	}
	base := func(r route) rawReq {
		return rawReq{method: r.method, target: r.path, headers: r.headers, body: r.body}
	}
	always := func(route) bool { return true }
	isHandoff := func(r route) bool { return r.method == "POST" && r.path == "/v1/streams" }
	hasID := func(r route) bool { return strings.Contains(r.path, id) }
	readsLastEventID := func(r route) bool {
		return strings.HasPrefix(r.path, "/v1/streams/") && (strings.Contains(r.path, "/events") || r.method == "DELETE")
	}
	withLastEventID := func(v string) func(route) rawReq {
		return func(r route) rawReq {
			q := base(r)
			q.headers = nil
			for _, h := range r.headers {
				if !strings.HasPrefix(h, "Last-Event-ID:") {
					q.headers = append(q.headers, h)
				}
			}
			q.headers = append(q.headers, "Last-Event-ID: "+v)
			return q
		}
	}
	withBody := func(body string, ctype string) func(route) rawReq {
		return func(r route) rawReq {
			q := base(r)
			q.body = body
			if ctype != "" {
				q.headers = append(append([]string{}, q.headers...), "Content-Type: "+ctype)
			}
			return q
		}
	}
	withHeader := func(hs ...string) func(route) rawReq {
		return func(r route) rawReq {
			q := base(r)
			q.headers = append(append([]string{}, q.headers...), hs...)
			return q
		}
	}
	withQuery := func(query string) func(route) rawReq {
		return func(r route) rawReq {
			q := base(r)
			if strings.Contains(q.target, "?") {
				q.target += "&" + query
			} else {
				q.target += "?" + query
			}
			return q
		}
	}
	withPath := func(f func(string) string) func(route) rawReq {
		return func(r route) rawReq {
			q := base(r)
			p, query, _ := strings.Cut(q.target, "?")
			q.target = f(p)
			if query != "" {
				q.target += "?" + query
			}
			return q
		}
	}
	withMethod := func(m string) func(route) rawReq {
		return func(r route) rawReq { q := base(r); q.method = m; return q }
	}
	manyHeaders := make([]string, 10000)
	for i := range manyHeaders {
		manyHeaders[i] = "X-H" + strconv.Itoa(i) + ": v"
	}
	mutations := []mutation{
		{name: "as is", apply: base},
		{name: "truncated JSON", apply: withBody(`{"url":`, "application/json")},
		{name: "JSON syntax", apply: withBody(`{"url" "x"}`, "")},
		{name: "JSON not an object", apply: withBody(`[1,"a",null]`, "")},
		{name: "JSON wrong types", apply: withBody(`{"url":{"a":1},"headers":[1],"push":"x","wake":7}`, "")},
		{name: "JSON huge number", apply: withBody(`{"url":"http://127.0.0.1:1/","last_event_id":1e999999}`, "")},
		{name: "invalid UTF-8 body", refuse: isHandoff, apply: withBody("{\"url\":\"http://127.0.0.1:1/\",\"headers\":{\"X-A\":\"\xff\xfe\xfd\"}}", "")},
		{name: "lone surrogate", refuse: isHandoff, apply: withBody(`{"url":"http://127.0.0.1:1/","last_event_id":"\udfff"}`, "")},
		{name: "NUL bytes in body", refuse: isHandoff, apply: withBody("{\"url\":\"http://127.0.0.1:1/\x00\"}\x00", "")},
		{name: "escaped NUL", refuse: isHandoff, apply: withBody(`{"url":"http://127.0.0.1:1/","last_event_id":"\u0000","headers":{"X-\u0000":"\u0000"}}`, "")},
		{name: "huge body", refuse: isHandoff, apply: withBody(`{"url":"http://127.0.0.1:1/","last_event_id":"`+strings.Repeat("a", 1<<20)+`"}`, "application/json")},
		{name: "deep nesting", refuse: isHandoff, apply: withBody(`{"url":`+strings.Repeat("[", 30000)+strings.Repeat("]", 30000)+`}`, "")},
		{name: "deep objects", apply: withBody(strings.Repeat(`{"a":`, 12000)+"1"+strings.Repeat("}", 12000), "")},
		{name: "10,000 headers", apply: withHeader(manyHeaders...)},
		{name: "huge id", apply: withPath(func(p string) string { return strings.Replace(p, id, strings.Repeat("9", 64<<10), 1) + "/x" })},
		{name: "id with NUL", refuse: hasID, apply: withPath(func(p string) string { return strings.Replace(p, id, "%00"+id, 1) })},
		{name: "id not UTF-8", refuse: hasID, apply: withPath(func(p string) string { return strings.Replace(p, id, "%ff%fe", 1) })},
		{name: "path with raw high bytes", apply: withPath(func(p string) string { return p + "\xff" })},
		{name: "PROPFIND", apply: withMethod("PROPFIND")},
		{name: "TRACE", apply: withMethod("TRACE")},
		{name: "CONNECT", apply: func(r route) rawReq { q := base(r); q.method, q.target = "CONNECT", "127.0.0.1:5432"; return q }},
		{name: "made-up method", apply: withMethod("BREW")},
		{name: "HEAD", apply: withMethod("HEAD")},
		{name: "OPTIONS", apply: withMethod("OPTIONS")},
		{name: "dot-dot segment", refuse: always, apply: withPath(func(p string) string { return p + "/../" + strings.TrimPrefix(p, "/") })},
		{name: "dot segment", refuse: always, apply: withPath(func(p string) string { return "/." + p })},
		{name: "double slash", refuse: always, apply: withPath(func(p string) string { return strings.Replace(p, "/", "//", 1) })},
		{name: "encoded dot-dot", refuse: always, apply: withPath(func(p string) string { return p + "/%2e%2e/healthz" })},
		{name: "absolute-form target", apply: withPath(func(p string) string { return "http://elsewhere.example" + p })},
		{name: "bad percent-encoding", refuse: always, apply: withQuery("a=%zz&token=%")},
		{name: "semicolon query", apply: withQuery("a=1;b=2")},
		{name: "host NUL", refuse: always, apply: withQuery("host=%00")},
		{name: "host not UTF-8", refuse: always, apply: withQuery("host=%ff")},
		{name: "NUL in query", refuse: always, apply: withQuery("host=%00&state=%00&last_event_id=%00&limit=%00&cursor=%00")},
		{name: "query not UTF-8", refuse: always, apply: withQuery("host=%ff&sort=%c3&token=%ff")},
		{name: "huge query", apply: withQuery("host=" + strings.Repeat("h", 20000))},
		{name: "bad limit and cursor", apply: withQuery("limit=-1&cursor=!!!&state=gone&sort=worst")},
		{name: "bad Last-Event-ID", refuse: readsLastEventID, apply: withLastEventID("\xff\xfe")},
		{name: "huge Last-Event-ID", refuse: readsLastEventID, apply: withLastEventID(strings.Repeat("9", 5000))},
		{name: "many Last-Event-IDs", apply: withHeader("Last-Event-ID: 1", "Last-Event-ID: 2", "Last-Event-ID: ")},
		{name: "odd Authorization", apply: withHeader("Authorization: Bearer \xff" + strings.Repeat("x", 9000))},
		{name: "odd Content-Type", apply: withHeader("Content-Type: application/json; charset=\"\xff")},
		{name: "odd Accept", apply: withHeader("Accept: application/json;q=\xff, text/event-stream;;;," + strings.Repeat("*/*,", 2000))},
		{name: "Origin", apply: withHeader("Origin: https://evil.example", "Access-Control-Request-Method: DELETE")},
		{name: "NUL in a header value", apply: withHeader("X-A: a\x00b"), protocol: true},
		{name: "bad chunked body", apply: func(r route) rawReq {
			q := withHeader("Transfer-Encoding: chunked")(r)
			q.body = "zz\r\nnot a chunk\r\n"
			return q
		}, protocol: true},
		{name: "bad Content-Length", apply: withHeader("Content-Length: -5"), protocol: true},
	}

	type job struct {
		r   route
		m   mutation
		raw string
	}
	var jobs []job
	for _, r := range routes {
		for _, m := range mutations {
			jobs = append(jobs, job{r, m, m.apply(r).bytes()})
		}
	}
	if len(jobs) < 500 {
		t.Fatalf("only %d requests", len(jobs))
	}
	var (
		mu       sync.Mutex
		failures []string
		statuses = map[int]int{}
	)
	fail := func(j job, format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf("%s %s [%s]: ", j.r.method, j.r.path, j.m.name)+fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	work := make(chan job)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				a, err := sendRaw(addrOf(b), j.raw)
				if err != nil {
					fail(j, "%v", err)
					continue
				}
				mu.Lock()
				statuses[a.status]++
				mu.Unlock()
				netHTTP := strings.HasPrefix(a.ctype, "text/plain") && strings.HasPrefix(a.body, strconv.Itoa(a.status)+" ")
				switch {
				case a.status >= 500 && !(a.status == 503 && strings.Contains(a.body, `"code":"unavailable"`)):
					fail(j, "%d %s %.200s", a.status, a.ctype, a.body)
				case a.status < 400 && j.m.refuse != nil && j.m.refuse(j.r):
					fail(j, "accepted: %d %.200s", a.status, a.body)
				case a.status < 400:
				case netHTTP && j.m.protocol:
				case j.r.dashboard && strings.HasPrefix(a.ctype, "text/html"):
				case a.ctype != "application/problem+json":
					fail(j, "%d answered as %q: %.200s", a.status, a.ctype, a.body)
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	codes := make([]string, 0, len(statuses))
	for s, n := range statuses {
		codes = append(codes, fmt.Sprintf("%d×%d", s, n))
	}
	sort.Strings(codes)
	t.Logf("%d requests; statuses %s", len(jobs), strings.Join(codes, " "))
	for i, f := range failures {
		if i == 20 {
			t.Errorf("... and %d more", len(failures)-20)
			break
		}
		t.Error(f)
	}
	if e := logs.errorsLogged(); len(e) > 0 {
		t.Errorf("errors logged: %q", e)
	}
	// Still serving, and the stream unharmed.
	resp, out := do(t, "GET", b.API.URL+"/healthz", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("healthz after the abuse: %d %s", resp.StatusCode, out)
	}
	getStream(t, b, dev)
}
