package fakeapns

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// GenerateAuthKey creates a P-256 key like an APNs auth key, writes it to path as a .p8 file
// (PKCS #8, PEM, mode 0600) and returns its public key for Options.Keys.
func GenerateAuthKey(path string) (*ecdsa.PublicKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("fakeapns: generate auth key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("fakeapns: marshal auth key: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("fakeapns: write auth key: %w", err)
	}
	return &key.PublicKey, nil
}

// providerToken is what a verified provider token says.
type providerToken struct {
	keyID    string
	issuedAt int64 // unix seconds
}

var errBadToken = errors.New("malformed or unverifiable provider token")

// verifyJWT checks an APNs provider token: an ES256 JWT whose header names a known key (kid)
// and whose claims hold the team id (iss) and the issue time (iat).
func verifyJWT(token string, keys map[string]*ecdsa.PublicKey, teamID string) (providerToken, error) {
	h, rest, ok := strings.Cut(token, ".")
	if !ok {
		return providerToken{}, errBadToken
	}
	c, s, ok := strings.Cut(rest, ".")
	if !ok {
		return providerToken{}, errBadToken
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodeSegment(h, &header); err != nil {
		return providerToken{}, err
	}
	if header.Alg != "ES256" {
		return providerToken{}, fmt.Errorf("alg %q, want ES256", header.Alg)
	}
	pub := keys[header.Kid]
	if pub == nil {
		return providerToken{}, fmt.Errorf("unknown key id %q", header.Kid)
	}
	var claims struct {
		Iss string      `json:"iss"`
		Iat json.Number `json:"iat"`
	}
	if err := decodeSegment(c, &claims); err != nil {
		return providerToken{}, err
	}
	if teamID != "" && claims.Iss != teamID {
		return providerToken{}, fmt.Errorf("issuer %q is not team %q", claims.Iss, teamID)
	}
	iat, err := claims.Iat.Int64()
	if err != nil {
		return providerToken{}, fmt.Errorf("iat %q is not an integer", claims.Iat)
	}
	sig, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(sig) != 64 {
		return providerToken{}, errors.New("signature is not a 64-byte ES256 signature")
	}
	digest := sha256.Sum256([]byte(token[:len(h)+1+len(c)]))
	r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, ss) {
		return providerToken{}, fmt.Errorf("signature does not verify with key %q", header.Kid)
	}
	return providerToken{keyID: header.Kid, issuedAt: iat}, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return errBadToken
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return errBadToken
	}
	return nil
}
