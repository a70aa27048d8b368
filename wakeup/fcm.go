package wakeup

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"
)

// fcmScope is the OAuth scope the FCM sender asks for.
const fcmScope = "https://www.googleapis.com/auth/firebase.messaging"

// FCMOptions configure the FCM sender.
type FCMOptions struct {
	// CredentialsFile is the service account key file (JSON) of the Firebase project.
	CredentialsFile string
	// ProjectID is the Firebase project; the project_id of the credentials when "".
	ProjectID string
	// URL replaces https://fcm.googleapis.com (for tests, the fake FCM), e.g.
	// http://127.0.0.1:8080. The OAuth token endpoint is the token_uri of the credentials.
	URL string
	// Timeout bounds a send, fetching an access token included; 30 seconds when 0.
	Timeout time.Duration
}

// FCM sends wake-ups through Firebase Cloud Messaging (HTTP v1 API), with the Firebase Admin
// SDK.
//
// A push is a data-only message: data {"pushproxy": "<the pushproxy object as JSON>"} (see
// the wake-up payload in payload.go), android priority "normal" ("high" when urgent),
// collapse_key Push.CollapseID and ttl Push.TTL; and, since the platform of a token is not
// known, an apns block for iOS apps that use FCM: a background push (apns-push-type
// background, apns-priority 5, aps content-available 1) or, urgent with an alert text, an
// alert push like the APNs sender's, with apns-collapse-id and apns-expiration.
//
// Errors map to SendError kinds: UNREGISTERED and an INVALID_ARGUMENT about the registration
// token are KindTokenGone; QUOTA_EXCEEDED (429) KindThrottled with Retry-After;
// UNAVAILABLE, INTERNAL, other 5xx and network errors KindRetry; 401, 403 (with
// SENDER_ID_MISMATCH and THIRD_PARTY_AUTH_ERROR) and access token refusals by the token
// endpoint KindCredentials; other refusals KindInvalid.
//
// The Firebase client retries 503s and network errors itself, up to four times over several
// seconds; the sender stops it after the first attempt, because the scheduler owns retries
// and backoff.
type FCM struct {
	client  *messaging.Client
	base    *http.Transport
	timeout time.Duration
}

// NewFCM reads and checks the credentials and returns a sender. It does not connect: the
// first send fetches an access token. ctx is used only during the call.
func NewFCM(ctx context.Context, opts FCMOptions) (*FCM, error) {
	if opts.CredentialsFile == "" {
		return nil, errors.New("fcm: CredentialsFile (a service account key file) is required")
	}
	if opts.Timeout < 0 {
		return nil, errors.New("fcm: Timeout is negative")
	}
	data, err := os.ReadFile(opts.CredentialsFile)
	if err != nil {
		return nil, fmt.Errorf("fcm: credentials: %w", err)
	}
	projectID, err := checkServiceAccount(data)
	if err != nil {
		return nil, fmt.Errorf("fcm: credentials %s: %w", opts.CredentialsFile, err)
	}
	projectID = cmp.Or(opts.ProjectID, projectID)
	if projectID == "" {
		return nil, fmt.Errorf("fcm: credentials %s name no project_id: set ProjectID", opts.CredentialsFile)
	}
	jwtConf, err := google.JWTConfigFromJSON(data, fcmScope)
	if err != nil {
		return nil, fmt.Errorf("fcm: credentials %s: %w", opts.CredentialsFile, err)
	}
	appOpts := []option.ClientOption{}
	if opts.URL != "" {
		u, err := url.Parse(opts.URL)
		if err != nil {
			return nil, fmt.Errorf("fcm: URL: %w", err)
		}
		if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.RawQuery != "" {
			return nil, fmt.Errorf("fcm: URL %q is not of the form http[s]://host[:port]", opts.URL)
		}
		appOpts = append(appOpts, option.WithEndpoint(strings.TrimSuffix(opts.URL, "/")+"/v1"))
	}

	f := &FCM{timeout: cmp.Or(opts.Timeout, 30*time.Second)}
	f.base = http.DefaultTransport.(*http.Transport).Clone()
	f.base.MaxIdleConnsPerHost = 100
	tokens := &fcmTokens{}
	// The token source keeps the context it is made with for every later fetch: it gets one
	// that is never cancelled, carrying the HTTP client of the token endpoint.
	tokenCtx := context.WithValue(context.WithoutCancel(ctx), oauth2.HTTPClient, &http.Client{
		Transport: &fcmTokenTransport{next: f.base, tokens: tokens},
		Timeout:   f.timeout,
	})
	tokens.src = jwtConf.TokenSource(tokenCtx)
	hc := &http.Client{Transport: &fcmTransport{next: &oauth2.Transport{Source: tokens, Base: f.base}}}
	appOpts = append(appOpts, option.WithHTTPClient(hc))

	if f.client, err = newMessagingClient(ctx, projectID, appOpts); err != nil {
		return nil, fmt.Errorf("fcm: firebase messaging: %w", err)
	}
	return f, nil
}

// firebaseVersion is the Firebase Admin SDK version the client reports (firebase.Version).
const firebaseVersion = "4.19.0"

// newMessagingClient makes the Firebase messaging client as firebase.App.Messaging does:
// messaging.NewClient(ctx, &internal.MessagingConfig{ProjectID, Opts, Version}).
//
// It does not go through firebase.NewApp because the firebase package imports every Firebase
// service (Firestore, Cloud Storage...): some 25 more modules and about 30 MB more binary
// for a sender that uses messaging only. The config type is in an internal package of the
// SDK, so it is built by reflection; a future SDK whose NewClient takes another shape makes
// NewFCM fail with an error (the tests catch it), not panic. To go through the App instead:
//
//	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: projectID}, opts...)
//	client, err := app.Messaging(ctx)
func newMessagingClient(ctx context.Context, projectID string, opts []option.ClientOption) (*messaging.Client, error) {
	fn := reflect.ValueOf(messaging.NewClient)
	ft := fn.Type()
	if ft.NumIn() != 2 || ft.In(1).Kind() != reflect.Pointer || ft.In(1).Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("unexpected messaging.NewClient %s", ft)
	}
	conf := reflect.New(ft.In(1).Elem())
	for name, v := range map[string]any{"ProjectID": projectID, "Opts": opts, "Version": firebaseVersion} {
		f := conf.Elem().FieldByName(name)
		if !f.IsValid() || !f.CanSet() || f.Type() != reflect.TypeOf(v) {
			return nil, fmt.Errorf("unexpected messaging config %s: field %s", ft.In(1).Elem(), name)
		}
		f.Set(reflect.ValueOf(v))
	}
	out := fn.Call([]reflect.Value{reflect.ValueOf(ctx), conf})
	if err, _ := out[1].Interface().(error); err != nil {
		return nil, err
	}
	return out[0].Interface().(*messaging.Client), nil
}

// checkServiceAccount checks that data is a usable service account key and returns its
// project id.
func checkServiceAccount(data []byte) (string, error) {
	var sa struct {
		Type        string `json:"type"`
		ProjectID   string `json:"project_id"`
		PrivateKey  string `json:"private_key"`
		ClientEmail string `json:"client_email"`
	}
	if err := json.Unmarshal(data, &sa); err != nil {
		return "", fmt.Errorf("not JSON: %w", err)
	}
	if sa.Type != "service_account" {
		return "", fmt.Errorf("type %q, want a service account key (\"service_account\")", sa.Type)
	}
	if sa.ClientEmail == "" {
		return "", errors.New("no client_email")
	}
	block, _ := pem.Decode([]byte(sa.PrivateKey))
	if block == nil {
		return "", errors.New("private_key is not a PEM private key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if err != nil {
		return "", fmt.Errorf("private_key: %w", err)
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return "", fmt.Errorf("private_key is a %T, want an RSA key", key)
	}
	return sa.ProjectID, nil
}

// Close closes the idle connections. Sends in flight are not interrupted.
func (f *FCM) Close() { f.base.CloseIdleConnections() }

// Send sends p and returns the FCM message name, or a *SendError.
func (f *FCM) Send(ctx context.Context, p Push) (string, error) {
	if p.Token == "" {
		return "", &SendError{Kind: KindTokenGone, Reason: "MissingToken", Err: errors.New("fcm: no registration token")}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	call := &fcmCall{}
	ctx, call.cancel = context.WithCancel(ctx)
	defer call.cancel()
	name, err := f.client.Send(context.WithValue(ctx, fcmCallKey{}, call), fcmMessage(p, time.Now()))
	if err == nil {
		return name, nil
	}
	return "", classifyFCM(err, call)
}

// fcmMessage is the FCM message of p.
func fcmMessage(p Push, now time.Time) *messaging.Message {
	ttl := max(p.TTL, 0)
	android := &messaging.AndroidConfig{Priority: "normal", CollapseKey: p.CollapseID, TTL: &ttl}
	headers := map[string]string{
		"apns-push-type":  "background",
		"apns-priority":   "5",
		"apns-expiration": strconv.FormatInt(apnsExpiration(now, ttl), 10),
	}
	aps := &messaging.Aps{ContentAvailable: true}
	if p.Urgent {
		android.Priority = "high"
	}
	if apnsAlert(p) {
		headers["apns-push-type"], headers["apns-priority"] = "alert", "10"
		aps.AlertString = string(truncatedText(p.AlertText, apnsMaxAlert))
		aps.MutableContent = true
	}
	if p.CollapseID != "" {
		headers["apns-collapse-id"] = collapseID(p.CollapseID)
	}
	return &messaging.Message{
		Token:   p.Token,
		Data:    map[string]string{"pushproxy": string(streamsObject(p.Pending, fcmStreamsBudget, true))},
		Android: android,
		APNS: &messaging.APNSConfig{
			Headers: headers,
			Payload: &messaging.APNSPayload{Aps: aps},
		},
	}
}

// truncatedText is s cut like truncatedJSONString cuts its encoding.
func truncatedText(s string, limit int) string {
	var t string
	_ = json.Unmarshal(truncatedJSONString(s, limit), &t)
	return t
}

// classifyFCM turns the error of a send into a *SendError.
func classifyFCM(err error, call *fcmCall) *SendError {
	e := &SendError{Status: call.status, Err: err}
	var te *fcmTokenError
	if errors.As(call.err, &te) {
		e.Err = te
		var re *oauth2.RetrieveError
		switch {
		case errors.As(te.err, &re) && re.Response != nil:
			e.Status, e.Reason = re.Response.StatusCode, re.ErrorCode
			if e.Reason == "" { // the JWT flow leaves the OAuth error in the body
				var body struct {
					Error string `json:"error"`
				}
				if json.Unmarshal(re.Body, &body) == nil {
					e.Reason = body.Error
				}
			}
			e.Kind = KindCredentials
			if re.Response.StatusCode >= 500 || re.Response.StatusCode == http.StatusTooManyRequests {
				e.Kind = KindRetry
			}
		case te.network != nil:
			e.Kind = KindRetry
		default:
			e.Kind = KindCredentials
		}
		return e
	}
	if call.err != nil { // a network error: the request got no response
		e.Kind, e.Err = KindRetry, fmt.Errorf("fcm: %w", call.err)
		return e
	}
	if call.status == 0 {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			e.Kind = KindRetry
			return e
		}
		// The Firebase client refused the message before sending it.
		e.Kind = KindInvalid
		return e
	}
	e.Reason = cmp.Or(call.fcmCode, call.googleStatus)
	e.RetryAfter = parseRetryAfter(call.retryAfter, time.Now())
	switch {
	case messaging.IsUnregistered(err):
		e.Kind = KindTokenGone
	case messaging.IsInvalidArgument(err) && strings.Contains(strings.ToLower(call.message), "registration token"):
		e.Kind = KindTokenGone
	case messaging.IsQuotaExceeded(err), call.status == http.StatusTooManyRequests:
		e.Kind = KindThrottled
	case messaging.IsSenderIDMismatch(err), messaging.IsThirdPartyAuthError(err),
		errorutils.IsUnauthenticated(err), errorutils.IsPermissionDenied(err),
		call.status == http.StatusUnauthorized, call.status == http.StatusForbidden:
		e.Kind = KindCredentials
	case messaging.IsUnavailable(err), messaging.IsInternal(err), call.status >= 500:
		e.Kind = KindRetry
	case call.status < 300: // an answer the client could not read: the push may have gone
		e.Kind = KindRetry
	default:
		e.Kind = KindInvalid
	}
	return e
}

// fcmCall carries what the transport saw of one send back to Send.
type fcmCall struct {
	cancel       context.CancelFunc // stops the Firebase client's retries
	err          error              // the transport error, when there was no response
	status       int
	retryAfter   string
	googleStatus string // error.status of an error response
	fcmCode      string // the errorCode of its FcmError detail
	message      string // error.message
}

type fcmCallKey struct{}

// fcmTransport sits between the Firebase client and the OAuth transport. It records the
// outcome of a request in the fcmCall of its context and, after a network error or a 503,
// cancels that context so that the Firebase client returns instead of retrying.
type fcmTransport struct {
	next http.RoundTripper
}

func (t *fcmTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	call, _ := req.Context().Value(fcmCallKey{}).(*fcmCall)
	resp, err := t.next.RoundTrip(req)
	if call == nil {
		return resp, err
	}
	if err != nil {
		call.err = err
		call.cancel()
		return nil, err
	}
	call.status = resp.StatusCode
	if resp.StatusCode < 300 {
		return resp, nil
	}
	call.retryAfter = resp.Header.Get("Retry-After")
	// Read the error body now: the context is cancelled before the Firebase client reads it.
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if rerr != nil {
		call.err = rerr
		call.cancel()
		return nil, rerr
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var ge struct {
		Error struct {
			Message string `json:"message"`
			Status  string `json:"status"`
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			} `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &ge) == nil {
		call.googleStatus, call.message = ge.Error.Status, ge.Error.Message
		for _, d := range ge.Error.Details {
			if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
				call.fcmCode = d.ErrorCode
			}
		}
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		call.cancel()
	}
	return resp, nil
}

// fcmTokens is the access token source. It tells a failure to fetch a token (an
// fcmTokenError) from other transport errors, and a network failure of the token endpoint
// from a refusal.
type fcmTokens struct {
	mu      sync.Mutex
	src     oauth2.TokenSource
	network error // set by fcmTokenTransport during a fetch, under mu
}

func (t *fcmTokens) Token() (*oauth2.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.network = nil
	tok, err := t.src.Token()
	if err != nil {
		return nil, &fcmTokenError{err: err, network: t.network}
	}
	return tok, nil
}

// fcmTokenTransport is the transport of the token endpoint's client.
type fcmTokenTransport struct {
	next   http.RoundTripper
	tokens *fcmTokens
}

func (t *fcmTokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		// The fetch runs in the goroutine that holds tokens.mu, in fcmTokens.Token.
		t.tokens.network = err
	}
	return resp, err
}

// fcmTokenError is a failure to get an access token.
type fcmTokenError struct {
	err     error
	network error // the transport error, when the token endpoint could not be reached
}

func (e *fcmTokenError) Error() string { return "fcm: fetching an access token: " + e.err.Error() }
func (e *fcmTokenError) Unwrap() error { return e.err }

var _ Sender = (*FCM)(nil)
