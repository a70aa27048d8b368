package fakewebpush

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// The control API, for tests and integrators that run the fake in another process
// (`pushproxy fakes`):
//
//   - POST /subscriptions, body {"application_server_key": "<base64url>"} (or empty: any
//     key): makes a subscription as Subscribe does and answers it as
//     PushSubscription.toJSON() gives it: {"endpoint", "expirationTime": null, "keys":
//     {"p256dh", "auth"}}.
//   - DELETE /push/<id>: unsubscribes (its messages get 410 Gone from then on).
//   - GET /messages?since=N: the push message requests received, from the N-th on (0
//     first), as a JSON array of ControlMessage.
//   - POST /fail?n=N&status=S[&retry_after=SECONDS]: FailNext.
//   - POST /reset: Reset.

// ControlMessage is a received push message request as GET /messages answers it.
type ControlMessage struct {
	Endpoint string `json:"endpoint"`
	Status   int    `json:"status"`
	Error    string `json:"error,omitempty"`
	TTL      int    `json:"ttl"`
	Urgency  string `json:"urgency,omitempty"`
	Topic    string `json:"topic,omitempty"`
	// Payload is the decrypted message, as text.
	Payload      string `json:"payload"`
	VAPIDSubject string `json:"vapid_subject,omitempty"`
	VAPIDKey     string `json:"vapid_key,omitempty"`
}

// maxControlBody bounds control request bodies.
const maxControlBody = 4096

// serveControl answers the control API; it reports false for a request that is not one.
func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) bool {
	switch {
	case r.URL.Path == "/subscriptions" && r.Method == http.MethodPost:
		var req struct {
			ApplicationServerKey string `json:"application_server_key"`
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxControlBody))
		if len(strings.TrimSpace(string(body))) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
				return true
			}
		}
		sub, err := s.Subscribe(req.ApplicationServerKey)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return true
		}
		writeControlJSON(w, http.StatusCreated, map[string]any{"endpoint": sub.Endpoint, "expirationTime": nil, "keys": sub.Keys})
	case strings.HasPrefix(r.URL.Path, "/push/") && r.Method == http.MethodDelete:
		s.Unsubscribe(s.url + r.URL.Path)
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/messages" && r.Method == http.MethodGet:
		since, _ := strconv.Atoi(r.URL.Query().Get("since"))
		ms := s.Messages()
		out := []ControlMessage{}
		for _, m := range ms[min(max(since, 0), len(ms)):] {
			out = append(out, ControlMessage{Endpoint: m.Endpoint, Status: m.Status, Error: m.Error, TTL: m.TTL,
				Urgency: m.Urgency, Topic: m.Topic, Payload: string(m.Payload), VAPIDSubject: m.VAPID.Subject, VAPIDKey: m.VAPID.Key})
		}
		writeControlJSON(w, http.StatusOK, out)
	case r.URL.Path == "/fail" && r.Method == http.MethodPost:
		q := r.URL.Query()
		n, err1 := strconv.Atoi(q.Get("n"))
		status, err2 := strconv.Atoi(q.Get("status"))
		retry, _ := strconv.Atoi(q.Get("retry_after"))
		if err1 != nil || err2 != nil || n < 1 || status < 400 || status > 599 {
			http.Error(w, "want n >= 1 and a status 400..599", http.StatusBadRequest)
			return true
		}
		s.FailNext(n, status, secondsDuration(retry))
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/reset" && r.Method == http.MethodPost:
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	default:
		return false
	}
	return true
}

func writeControlJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
