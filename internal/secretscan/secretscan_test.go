package secretscan

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestScan(t *testing.T) {
	secrets := map[string]string{"apikey-123": "API key", "tok-abcdef": "stream token", "never-logged": "push token"}
	logs := "a: level=INFO msg=ok\nb: level=DEBUG key=apikey-123 x=1\nc: tok-abcdef and apikey-123 again\n"
	hits := Scan([]byte(logs), secrets)
	want := []Hit{
		{Kind: "API key", Line: 2, Masked: "b: level=DEBUG key=[API key] x=1"},
		{Kind: "stream token", Line: 3, Masked: "c: [stream token] and [API key] again"},
	}
	if len(hits) != len(want) {
		t.Fatalf("hits %+v, want %+v", hits, want)
	}
	for i := range want {
		if hits[i] != want[i] {
			t.Errorf("hit %d: %+v, want %+v", i, hits[i], want[i])
		}
	}
	if hits := Scan([]byte("apikey-12 tok-abcde"), secrets); len(hits) != 0 {
		t.Fatalf("prefixes of secrets reported: %+v", hits)
	}
	if hits := Scan([]byte("at the very end apikey-123"), secrets); len(hits) != 1 {
		t.Fatalf("a secret ending the data: %+v", hits)
	}
	// A short value is found as a whole word only.
	short := map[string]string{"secret": "query value", "adm1n": "admin token"}
	if hits := Scan([]byte("name=007_device_secrets.sql flag=--secret-key-file user=adm1nistrator"), short); len(hits) != 0 {
		t.Fatalf("short values inside words reported: %+v", hits)
	}
	if hits := Scan([]byte("url=/events?key=secret\ntoken=\"adm1n\""), short); len(hits) != 2 {
		t.Fatalf("short values as words: %+v", hits)
	}
}

// TestRunFindsWhatTheTestsLeak is a whole run in small: secrets registered from flags, from
// the requests and answers of the default client, a server logging one of them and
// serving another in an admin document; finish reports exactly those two.
func TestRunFindsWhatTheTestsLeak(t *testing.T) {
	if err := start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cur = nil; http.DefaultClient.Transport = nil }()
	RegisterFlags([]string{"serve", "--api-keys", "key-one-1,key-two-2", "--admin-token=admin-tok-3"}, []string{"PUSHPROXY_ADMIN_TOKEN=admin-env-4"})
	log := Writer("TestX pushproxy")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/streams":
			io.WriteString(log, "level=INFO msg=handoff key="+r.Header.Get("Authorization")[len("Bearer "):]+"\nlevel=INFO msg=second line\n")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, `{"id":"s1","token":"stream-token-5","device_secret":"device-secret-6"}`)
		case "/v1/admin/streams":
			io.WriteString(w, `{"streams":[{"id":"s1","push_token":"push-token-7"}]}`)
		}
	}))
	defer srv.Close()
	body := `{"url":"http://o/events?key=query-value-8","headers":{"Authorization":"Bearer fwd-auth-9","Cookie":"sid=fwd-cookie-10; x=1"},"push":{"platform":"apns","token":"push-token-7"}}`
	req, _ := http.NewRequest("POST", srv.URL+"/v1/streams", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer wrong-key-11")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "stream-token-5") {
		t.Fatalf("the test no longer reads the answer: %s", b)
	}
	if resp, err := http.Get(srv.URL + "/v1/admin/streams"); err == nil {
		resp.Body.Close()
	}
	for _, s := range []string{"key-one-1", "key-two-2", "admin-tok-3", "admin-env-4", "stream-token-5", "device-secret-6", "push-token-7",
		"query-value-8", "fwd-auth-9", "Bearer fwd-auth-9", "fwd-cookie-10", "wrong-key-11"} {
		if _, ok := cur.secrets[s]; !ok {
			t.Errorf("%q not registered", s)
		}
	}
	dir := cur.dir
	var out strings.Builder
	found, err := finish(&out)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	if found != 2 || !strings.Contains(out.String(), "a credential sent in Authorization appears in "+dir+"/logs.txt line 1: TestX pushproxy: level=INFO msg=handoff key=[credential sent in Authorization]") ||
		!strings.Contains(out.String(), "a push token appears in "+dir+"/admin-documents.txt line 1") {
		t.Fatalf("found %d:\n%s", found, out.String())
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the files of a run that found secrets were removed: %v", err)
	}
	os.RemoveAll(dir)
}

// A scheme alone, or with a credential too short to scan for, registers nothing: "Bearer "
// is in every 401's detail.
func TestRegisterCredential(t *testing.T) {
	cur = &run{secrets: map[string]string{}}
	defer func() { cur = nil }()
	for _, v := range []string{"Bearer ", "Bearer", "Bearer x", "  Basic  "} {
		registerCredential("c", v)
	}
	if len(cur.secrets) != 0 {
		t.Fatalf("registered %q", cur.secrets)
	}
	registerCredential("c", " Bearer  abcdef ")
	if len(cur.secrets) != 2 || cur.secrets["abcdef"] == "" || cur.secrets["Bearer  abcdef"] == "" {
		t.Fatalf("registered %q", cur.secrets)
	}
}
