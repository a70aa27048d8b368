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
	"strconv"
	"strings"
	"time"

	firebase "firebase.google.com/go/v4"
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
// SDK's public API: firebase.NewApp, then App.Messaging. (The firebase package links every
// Firebase service, Firestore and Cloud Storage included: the pushproxy binary is 56 MB
// instead of the 34 MB of a messaging-only build. The price of staying on the public API.)
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
// endpoint KindCredentials; other refusals KindInvalid. No error text holds the
// registration token (see scrubToken).
type FCM struct {
	client  *messaging.Client
	tokens  oauth2.TokenSource
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
	// The token source keeps the context it is made with for every later fetch: it gets one
	// that is never cancelled, carrying the HTTP client of the token endpoint.
	tokenCtx := context.WithValue(context.WithoutCancel(ctx), oauth2.HTTPClient, &http.Client{
		Transport: f.base,
		Timeout:   f.timeout,
	})
	f.tokens = jwtConf.TokenSource(tokenCtx) // cached until shortly before it expires
	hc := &http.Client{Transport: &fcmTransport{next: &oauth2.Transport{Source: f.tokens, Base: f.base}}}
	appOpts = append(appOpts, option.WithHTTPClient(hc))

	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: projectID}, appOpts...)
	if err != nil {
		return nil, fmt.Errorf("fcm: firebase app: %w", err)
	}
	if f.client, err = app.Messaging(ctx); err != nil {
		return nil, fmt.Errorf("fcm: firebase messaging: %w", err)
	}
	return f, nil
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
	// The access token is fetched (or taken from the cache) here rather than inside the
	// Firebase client's transport, where a failure would reach us as an anonymous transport
	// error, retried by the client like a network error.
	if _, err := f.tokens.Token(); err != nil {
		return "", accessTokenError(err)
	}
	call := &fcmCall{}
	ctx, call.cancel = context.WithCancel(ctx)
	defer call.cancel()
	name, err := f.client.Send(context.WithValue(ctx, fcmCallKey{}, call), fcmMessage(p, time.Now()))
	if err == nil {
		return name, nil
	}
	var se *SendError
	switch {
	case call.err != nil:
		se = &SendError{Kind: KindRetry, Err: networkError("fcm: ", call.err, p.Token)}
	case call.resp != nil: // a 503: the Firebase client returned ctx.Err() instead of retrying
		se = classifyFCM(nil, call.resp)
	default:
		se = classifyFCM(err, errorutils.HTTPResponse(err))
	}
	se.Err = scrubToken(se.Err, p.Token)
	return "", se
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

// accessTokenError classifies a failure to get an access token. The token endpoint's
// refusal is a *oauth2.RetrieveError; anything else (the endpoint unreachable, an answer that
// is not a token) is worth retrying.
func accessTokenError(err error) *SendError {
	e := &SendError{Kind: KindRetry, Err: fmt.Errorf("fcm: fetching an access token: %w", err)}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		e.Status, e.Reason = re.Response.StatusCode, re.ErrorCode
		if e.Reason == "" { // the JWT flow leaves the OAuth error in the body
			var body struct {
				Error string `json:"error"`
			}
			if json.Unmarshal(re.Body, &body) == nil {
				e.Reason = body.Error
			}
		}
		if e.Status < 500 && e.Status != http.StatusTooManyRequests {
			e.Kind = KindCredentials
		}
	}
	return e
}

// classifyFCM turns the error of the Firebase client's Send and FCM's answer, if any, into a
// *SendError. An answer of FCM comes with the client's error (errorutils.HTTPResponse, the
// body buffered); without one, a Firebase error of code UNAVAILABLE, DEADLINE_EXCEEDED or
// UNKNOWN is a failure to reach FCM, and any other error the client refusing the message
// before sending it. err is nil for an answer the client did not get to read.
func classifyFCM(err error, resp *http.Response) *SendError {
	e := &SendError{}
	if err != nil {
		e.Err = fmt.Errorf("fcm: %w", err)
	}
	if resp == nil {
		e.Kind = KindInvalid
		if errorutils.IsUnavailable(err) || errorutils.IsDeadlineExceeded(err) || errorutils.IsUnknown(err) ||
			errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			e.Kind = KindRetry
		}
		return e
	}
	e.Status = resp.StatusCode
	e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
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
	if body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10)); rerr == nil && json.Unmarshal(body, &ge) == nil {
		e.Reason = ge.Error.Status
		for _, d := range ge.Error.Details {
			if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" && d.ErrorCode != "" {
				e.Reason = d.ErrorCode
			}
		}
	}
	if e.Err == nil {
		e.Err = errors.New("fcm: " + cmp.Or(ge.Error.Message, http.StatusText(e.Status)))
	}
	switch {
	case messaging.IsUnregistered(err):
		e.Kind = KindTokenGone
	case messaging.IsInvalidArgument(err) && strings.Contains(strings.ToLower(ge.Error.Message), "registration token"):
		e.Kind = KindTokenGone
	case messaging.IsQuotaExceeded(err), e.Status == http.StatusTooManyRequests:
		e.Kind = KindThrottled
	case messaging.IsSenderIDMismatch(err), messaging.IsThirdPartyAuthError(err),
		errorutils.IsUnauthenticated(err), errorutils.IsPermissionDenied(err),
		e.Status == http.StatusUnauthorized, e.Status == http.StatusForbidden:
		e.Kind = KindCredentials
	case messaging.IsUnavailable(err), messaging.IsInternal(err), e.Status >= 500:
		e.Kind = KindRetry
	case e.Status < 300: // an answer the client could not read: the push may have gone
		e.Kind = KindRetry
	default:
		e.Kind = KindInvalid
	}
	return e
}

// fcmCall carries what the transport saw of one send back to Send.
type fcmCall struct {
	cancel context.CancelFunc // stops the Firebase client's retries
	err    error              // the transport error, when there was no response
	resp   *http.Response     // a 503 response, its body buffered
}

type fcmCallKey struct{}

// fcmTransport is the transport of the Firebase client. After a network error or a 503, the
// two outcomes the client retries, it records the outcome in the fcmCall of the request's
// context and cancels that context, so that the client returns after one request.
//
// Why the client's retries are stopped behind its back: the SDK's public API has no way to
// turn them off (messaging.NewClient always uses internal.WithDefaultRetryConfig: up to 4
// retries of 503s and network errors, backing off 0s, 1s, 2s, 4s, waiting for Retry-After up
// to 2 minutes), and the scheduler owns retries: it records each attempt, backs off with
// jitter, keeps to the device's budget and holds a lease bounded by LeaseTTL. Measured with
// the retries left on (v4.19.0, TestFCMErrors and TestFCMNetworkErrorsAreRetry against the
// fake FCM): a 503 was resent at once and the second request's success returned, so the
// scheduler never saw FCM's 503 (2 requests for one send); a 503 with Retry-After: 10
// blocked the send for 10.0 s before resending; with FCM unreachable a send made 5
// connection attempts over 7.1 s before failing; and with a 2-second send timeout, a 503
// with Retry-After: 10 ended after 2.0 s as "context deadline exceeded", FCM's status and
// Retry-After lost to the scheduler.
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
	if resp.StatusCode != http.StatusServiceUnavailable {
		return resp, nil
	}
	// Read the body now: the context is cancelled before the Firebase client reads it.
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if rerr != nil {
		call.err = rerr
		call.cancel()
		return nil, rerr
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	saved := *resp
	saved.Body = io.NopCloser(bytes.NewReader(body))
	call.resp = &saved
	call.cancel()
	return resp, nil
}

var _ Sender = (*FCM)(nil)
