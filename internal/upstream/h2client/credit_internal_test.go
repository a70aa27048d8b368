package h2client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// TestCloseGivesUnreadBytesBackToTheConnection: a stream closed with data it never read
// returns that data's share of the connection's window (else error pages and redirect
// bodies, dropped unread, would use the window up over time).
func TestCloseGivesUnreadBytesBackToTheConnection(t *testing.T) {
	body := make([]byte, 5000)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write(body)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Start()
	defer srv.Close()
	defer srv.CloseClientConnections()
	p := NewPool(Options{H2C: true})
	defer p.Close()
	u, _ := url.Parse(srv.URL)
	s, _, err := p.Open(context.Background(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		buffered := len(s.buf) - s.off
		s.mu.Unlock()
		if buffered == len(body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("buffered %d of %d bytes", buffered, len(body))
		}
		time.Sleep(time.Millisecond)
	}
	c := s.c
	s.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connUnack != uint32(len(body)) {
		t.Fatalf("the connection has %d bytes to give back, want %d", c.connUnack, len(body))
	}
}
