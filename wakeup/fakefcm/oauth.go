package fakefcm

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/internal/fakeutil"
)

// JWTBearerGrant is the grant type of the service-account flow.
const JWTBearerGrant = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Scopes that allow sending with FCM.
const (
	ScopeMessaging     = "https://www.googleapis.com/auth/firebase.messaging"
	ScopeCloudPlatform = "https://www.googleapis.com/auth/cloud-platform"
)

// tokenLifetime is how long an access token is valid.
const tokenLifetime = time.Hour

type oauthError struct {
	code        string
	description string
}

// serveToken is the OAuth 2.0 token endpoint: the JWT-bearer grant of service accounts.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "invalid_request", "error_description": "use POST"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "bad form: " + err.Error()})
		return
	}
	if e := s.checkAssertion(r.PostForm.Get("grant_type"), r.PostForm.Get("assertion")); e != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": e.code, "error_description": e.description})
		return
	}
	tok := "ya29.fake-" + fakeutil.RandomHex(24)
	s.mu.Lock()
	s.tokens[tok] = s.clock().Add(tokenLifetime)
	s.issued++
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(tokenLifetime / time.Second),
	})
}

// checkAssertion verifies a JWT-bearer grant the way Google's token endpoint does.
func (s *Server) checkAssertion(grantType, assertion string) *oauthError {
	if grantType != JWTBearerGrant {
		return &oauthError{"unsupported_grant_type", fmt.Sprintf("Invalid grant_type: %s", grantType)}
	}
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return &oauthError{"invalid_grant", "Invalid JWT: not a signed JWT."}
	}
	var header struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}
	if err := decodeSegment(parts[0], &header); err != nil || header.Alg != "RS256" {
		return &oauthError{"invalid_grant", "Invalid JWT: the header is not that of an RS256 JWT."}
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return &oauthError{"invalid_grant", "Invalid JWT Signature."}
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if header.Kid != "" && header.Kid != s.keyID || rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		return &oauthError{"invalid_grant", "Invalid JWT Signature."}
	}
	var claims struct {
		Iss   string `json:"iss"`
		Scope string `json:"scope"`
		Aud   string `json:"aud"`
		Iat   int64  `json:"iat"`
		Exp   int64  `json:"exp"`
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return &oauthError{"invalid_grant", "Invalid JWT: the claims are not a JSON object."}
	}
	if claims.Iss != s.opts.ClientEmail {
		return &oauthError{"invalid_grant", "Invalid grant: account not found"}
	}
	if claims.Aud != s.TokenURL() {
		return &oauthError{"invalid_grant", fmt.Sprintf("Invalid JWT: audience %q is not the token URL.", claims.Aud)}
	}
	now := s.clock().Unix()
	if claims.Iat > now+300 || claims.Exp <= now || claims.Exp-claims.Iat > 3600 {
		return &oauthError{"invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."}
	}
	scopes := strings.Fields(claims.Scope)
	if !slices.Contains(scopes, ScopeMessaging) && !slices.Contains(scopes, ScopeCloudPlatform) {
		return &oauthError{"invalid_scope", fmt.Sprintf("Scope %q does not allow sending with FCM.", claims.Scope)}
	}
	return nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
