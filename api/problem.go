package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/pushproxy/pushproxy"
)

// problem is an RFC 9457 problem document. Type is a stable URN per error code; clients
// branch on it (or on Code, the same thing without the prefix).
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Code   string `json:"code"`
}

// ProblemTypePrefix starts the "type" of every problem document the API sends.
const ProblemTypePrefix = "urn:pushproxy:problem:"

var statusOf = map[string]int{
	pushproxy.EINVALID:      http.StatusBadRequest,
	pushproxy.EUNAUTHORIZED: http.StatusUnauthorized,
	pushproxy.EFORBIDDEN:    http.StatusForbidden,
	pushproxy.ENOTFOUND:     http.StatusNotFound,
	pushproxy.ECONFLICT:     http.StatusConflict,
	pushproxy.ELIMIT:        http.StatusConflict,
	pushproxy.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	pushproxy.EUNAVAILABLE:  http.StatusServiceUnavailable,
	pushproxy.EINTERNAL:     http.StatusInternalServerError,

	pushproxy.EDEVICESECRETREQUIRED: http.StatusUnauthorized,
	pushproxy.EDEVICESECRETMISMATCH: http.StatusForbidden,
	pushproxy.ERATELIMITED:          http.StatusTooManyRequests,
	pushproxy.EKEYLIMIT:             http.StatusConflict,
	pushproxy.EREADERLIMIT:          http.StatusConflict,
	"unsupported-media-type":        http.StatusUnsupportedMediaType,
	"method-not-allowed":            http.StatusMethodNotAllowed,
	"not-acceptable":                http.StatusNotAcceptable,
}

// writeError maps err to its status and writes it as a problem document. Internal errors are
// logged with their detail and shown without it. A database outage is 503 with Retry-After.
// A client that went away is told nothing and logged at debug: not the server's error.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if clientGone(r) {
		s.log.DebugContext(r.Context(), "client went away", slog.String("method", r.Method), slog.String("route", routePattern(r)), slog.String("error", err.Error()))
		w.WriteHeader(statusClientClosed)
		return
	}
	code, msg := pushproxy.ErrorCode(err), pushproxy.ErrorMessage(err)
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	switch {
	case status == http.StatusInternalServerError:
		s.log.ErrorContext(r.Context(), "request failed", slog.String("method", r.Method), slog.String("route", routePattern(r)), slog.String("error", err.Error()))
	case status == http.StatusServiceUnavailable:
		s.log.WarnContext(r.Context(), "request failed: unavailable", slog.String("method", r.Method), slog.String("route", routePattern(r)), slog.String("error", err.Error()))
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	case status == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="pushproxy"`)
	}
	if rl := (*rateLimited)(nil); errors.As(err, &rl) {
		w.Header().Set("Retry-After", retryAfter(rl.retry))
	}
	writeProblem(w, status, code, msg)
}

func writeProblem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{
		Type:   ProblemTypePrefix + code,
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
		Code:   code,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
