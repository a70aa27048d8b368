// Package openapicheck checks the HTTP API against its OpenAPI description (api/openapi.yaml)
// in tests: Middleware validates every request a test server receives and every response it
// sends (github.com/getkin/kin-openapi's openapi3filter, JSON Schema 2020-12 for OpenAPI 3.1)
// and fails the test on a mismatch, naming the operation, the status and what differs.
package openapicheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/pushproxy/pushproxy/api"
)

// Spec is the loaded description and its router.
type Spec struct {
	Doc    *openapi3.T
	router routers.Router
}

var (
	loadOnce sync.Once
	loaded   *Spec
	loadErr  error
)

// Load loads and validates api/openapi.yaml (as embedded in the api package), once.
func Load() (*Spec, error) {
	loadOnce.Do(func() {
		loaded, loadErr = parse(api.OpenAPI())
	})
	return loaded, loadErr
}

func parse(raw []byte) (*Spec, error) {
	ctx := context.Background()
	l := openapi3.NewLoader()
	doc, err := l.LoadFromData(raw)
	if err != nil {
		return nil, fmt.Errorf("api/openapi.yaml: %w", err)
	}
	if err := doc.Validate(ctx); err != nil {
		return nil, fmt.Errorf("api/openapi.yaml is not a valid OpenAPI document: %w", err)
	}
	// Requests are matched by path alone: the test servers listen on any loopback port.
	routed := *doc
	routed.Servers = nil
	r, err := legacy.NewRouter(&routed)
	if err != nil {
		return nil, fmt.Errorf("api/openapi.yaml: router: %w", err)
	}
	return &Spec{Doc: doc, router: r}, nil
}

// exercised holds "METHOD path status" of every exchange checked; checked counts them all.
var (
	exercised sync.Map
	checked   atomic.Int64
)

// Checked is the number of exchanges checked so far (excluded paths and answers to clients
// that went away are not).
func Checked() int64 { return checked.Load() }

// Unexercised lists the described answers ("METHOD path status") that no exchange checked
// so far has had: what the tests never make the API answer. default answers are left out.
func (s *Spec) Unexercised() []string {
	var out []string
	for path, item := range s.Doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if status == "default" {
					continue
				}
				k := method + " " + path + " " + status
				if _, ok := exercised.Load(k); !ok {
					out = append(out, k)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// MustLoad is Load for tests.
func MustLoad(tb testing.TB) *Spec {
	tb.Helper()
	s, err := Load()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// Excluded tells whether a route pattern the router serves is deliberately left out of the
// description, and why.
func Excluded(pattern string) (reason string, ok bool) {
	if pattern == "/admin" || strings.HasPrefix(pattern, "/admin/") {
		return "the dashboard: HTML pages, a sign-in form and a session cookie for browsers, not an API for generated clients (README: Dashboard)", true
	}
	return "", false
}

// maxRecorded bounds what is kept of a request or response body for validation; a bigger one
// (a test of the body limits) is validated without its body.
const maxRecorded = 4 << 20

// Middleware returns next checked against the description: every request and response that
// passes through it is validated when the handler returns, and a mismatch fails t. Event
// streams are checked by their content type only (their bodies never end). Requests the
// description calls invalid must be refused by the server (4xx): a negative test is expected
// to send them. Paths that Excluded names pass unchecked.
func (s *Spec) Middleware(t testing.TB, next http.Handler) http.Handler {
	var seen sync.Map
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := Excluded(r.URL.Path); ok {
			next.ServeHTTP(w, r)
			return
		}
		body := &bodyRecorder{rc: r.Body}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = body
		} else {
			body.eof = true
		}
		rec := &responseRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if msg := s.check(r, body, rec); msg != "" {
			key, _, _ := strings.Cut(msg, "\n\tbody:")
			if _, dup := seen.LoadOrStore(key, true); !dup { // each mismatch once, with its first body
				t.Errorf("openapi: %s %s → %d: %s", r.Method, redact(r.URL.RequestURI()), rec.status(), msg)
			}
		}
	})
}

// Check validates one exchange made outside a server Middleware wraps (a raw client, say):
// it returns "" when it matches the description, else what is wrong.
func (s *Spec) Check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) string {
	rec := &responseRecorder{header: header.Clone(), code: status, body: *bytes.NewBuffer(respBody)}
	return s.check(req, &bodyRecorder{buf: *bytes.NewBuffer(reqBody), eof: true}, rec)
}

func (s *Spec) check(r *http.Request, body *bodyRecorder, rec *responseRecorder) string {
	status := rec.status()
	if status == 499 { // the client went away: nobody reads the answer
		return ""
	}
	checked.Add(1)
	ctx := context.Background()
	vr := r.Clone(ctx)
	vr.Body = io.NopCloser(bytes.NewReader(body.buf.Bytes()))
	header := rec.header
	if header == nil {
		header = http.Header{}
	}
	route, params, err := s.router.FindRoute(vr)
	if err != nil {
		// Not a described route (unknown path or method): only a problem document may
		// answer, and only 400 (path text), 404 or 405.
		allowed := status == http.StatusNotFound || status == http.StatusMethodNotAllowed || status == http.StatusBadRequest
		if err.Error() == routers.ErrMethodNotAllowed.Error() && strings.HasPrefix(r.URL.Path, "/v1/admin/") {
			// The admin API checks its token before the method.
			allowed = allowed || status == http.StatusUnauthorized || status == http.StatusForbidden
		}
		if !allowed {
			return fmt.Sprintf("no operation in api/openapi.yaml matches (%v), yet the server answered %d: describe the route, or list it in openapicheck.Excluded with a reason", err, status)
		}
		if status == http.StatusMethodNotAllowed && header.Get("Allow") == "" {
			return "a 405 without Allow"
		}
		return s.checkProblem(header, rec.body.Bytes())
	}
	op := route.Method + " " + route.Path
	exercised.Store(fmt.Sprintf("%s %d", op, status), true)
	if rb := route.Operation.RequestBody; rb != nil && vr.Header.Get("Content-Type") == "" && len(rb.Value.Content) == 1 {
		// The server reads a body without Content-Type as the one type it takes.
		for ct := range rb.Value.Content {
			vr.Header.Set("Content-Type", ct)
		}
	}
	in := &openapi3filter.RequestValidationInput{
		Request: vr, PathParams: params, Route: route,
		Options: &openapi3filter.Options{
			MultiError:         true,
			ExcludeRequestBody: !body.eof || body.truncated,
			AuthenticationFunc: credentialPresent,
		},
	}
	in.Options.WithCustomSchemaErrorFunc(schemaError)
	ct := header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	sse := mt == "text/event-stream"
	reqErr := openapi3filter.ValidateRequest(ctx, in)
	// (An event stream ignores the parameters of the JSON form, such as limit.)
	if reqErr != nil && (status < 400 || status > 499) && !sse {
		return fmt.Sprintf("%s: the request is invalid by api/openapi.yaml (%s), yet the server answered %d: the document is stricter than the server", op, oneLine(reqErr), status)
	}

	resp := route.Operation.Responses.Status(status)
	if resp == nil {
		return fmt.Sprintf("%s: status %d is not described (add it to the operation's responses)", op, status)
	}
	if sse {
		if resp.Value.Content.Get(ct) == nil {
			return fmt.Sprintf("%s: an event stream (text/event-stream) is not a described answer for %d", op, status)
		}
	}
	if rec.truncated {
		return ""
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, ExcludeResponseBody: sse},
	}
	out.Options.WithCustomSchemaErrorFunc(schemaError)
	out.SetBodyBytes(rec.body.Bytes())
	if len(resp.Value.Content) > 0 && !sse && rec.body.Len() == 0 && ct == "" {
		return fmt.Sprintf("%s: the described %d has a body (%s), the answer has none", op, status, contentTypes(resp.Value.Content))
	}
	if len(resp.Value.Content) == 0 && rec.body.Len() > 0 {
		return fmt.Sprintf("%s: the described %d has no body, the answer has %d bytes of %s", op, status, rec.body.Len(), ct)
	}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		return fmt.Sprintf("%s: %s\n\tbody: %s", op, oneLine(err), excerpt(rec.body.Bytes()))
	}
	return ""
}

// checkProblem checks a problem document against the Problem schema.
func (s *Spec) checkProblem(header http.Header, body []byte) string {
	if mt, _, _ := mime.ParseMediaType(header.Get("Content-Type")); mt != "application/problem+json" {
		return fmt.Sprintf("an error answered with Content-Type %q, not application/problem+json", header.Get("Content-Type"))
	}
	ref := s.Doc.Components.Schemas["Problem"]
	v, err := decodeJSON(body)
	if err != nil {
		return fmt.Sprintf("a problem document that is not JSON: %v", err)
	}
	if err := ref.Value.VisitJSON(v, openapi3.EnableJSONSchema2020(), openapi3.MultiErrors(), openapi3.VisitAsResponse(),
		openapi3.SetSchemaErrorMessageCustomizer(schemaError)); err != nil {
		return fmt.Sprintf("the problem document does not match #/components/schemas/Problem: %s\n\tbody: %s", oneLine(err), excerpt(body))
	}
	return ""
}

// schemaError says where in the document a value fails and why, without the schema dump.
func schemaError(err *openapi3.SchemaError) string {
	at := "/" + strings.Join(err.JSONPointer(), "/")
	if err.SchemaField != "" {
		return fmt.Sprintf("at %s: %s (%s)", at, err.Reason, err.SchemaField)
	}
	return fmt.Sprintf("at %s: %s", at, err.Reason)
}

// credentialPresent is the AuthenticationFunc of the checks: a request satisfies a security
// scheme when it carries a credential where the scheme says (whether the credential is right
// is the server's business: a wrong one gets a 401, which the description allows).
func credentialPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	r := in.RequestValidationInput.Request
	ss := in.SecurityScheme
	switch {
	case ss.Type == "http" && strings.EqualFold(ss.Scheme, "bearer"):
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if ok && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) != "" {
			return nil
		}
		return errors.New("no Authorization: Bearer")
	case ss.Type == "apiKey" && ss.In == "query":
		if r.URL.Query().Get(ss.Name) != "" {
			return nil
		}
		return fmt.Errorf("no ?%s=", ss.Name)
	case ss.Type == "apiKey" && ss.In == "header":
		if r.Header.Get(ss.Name) != "" {
			return nil
		}
		return fmt.Errorf("no %s header", ss.Name)
	}
	return fmt.Errorf("security scheme %s (%s) is not checked by openapicheck", in.SecuritySchemeName, ss.Type)
}

// redact hides the values of token query parameters in failure messages.
func redact(uri string) string {
	if len(uri) > 200 {
		uri = uri[:200] + "…"
	}
	path, q, ok := strings.Cut(uri, "?")
	if !ok {
		return uri
	}
	parts := strings.Split(q, "&")
	for i, p := range parts {
		if name, _, _ := strings.Cut(p, "="); name == "token" {
			parts[i] = "token=…"
		}
	}
	return path + "?" + strings.Join(parts, "&")
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func excerpt(b []byte) string {
	const most = 600
	if len(b) > most {
		return string(b[:most]) + "…"
	}
	return string(b)
}

// bodyRecorder keeps what the handler reads of a request body.
type bodyRecorder struct {
	rc        io.ReadCloser
	buf       bytes.Buffer
	eof       bool // the handler read it all
	truncated bool // longer than maxRecorded: not kept
}

func (b *bodyRecorder) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if !b.truncated {
		if b.buf.Len()+n > maxRecorded {
			b.truncated = true
			b.buf.Reset()
		} else {
			b.buf.Write(p[:n])
		}
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *bodyRecorder) Close() error { return b.rc.Close() }

// responseRecorder passes a response through and keeps its status, headers and (but for
// event streams) body.
type responseRecorder struct {
	http.ResponseWriter
	header    http.Header // as sent
	code      int
	body      bytes.Buffer
	stream    bool // an event stream: its body is not kept
	truncated bool
}

func (w *responseRecorder) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

func (w *responseRecorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
		w.header = w.ResponseWriter.Header().Clone()
		mt, _, _ := mime.ParseMediaType(w.header.Get("Content-Type"))
		w.stream = mt == "text/event-stream"
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseRecorder) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.stream && !w.truncated {
		if w.body.Len()+len(p) > maxRecorded {
			w.truncated = true
		} else {
			w.body.Write(p)
		}
	}
	return w.ResponseWriter.Write(p)
}

func (w *responseRecorder) Flush() {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *responseRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func decodeJSON(b []byte) (any, error) {
	var v any
	dec := jsonDecoder(b)
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func jsonDecoder(b []byte) *json.Decoder {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec
}

func contentTypes(c openapi3.Content) string {
	var out []string
	for k := range c {
		out = append(out, k)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}
