package fakewebpush

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Decrypt opens the body of a push message encrypted for the subscription whose private key
// is ua and authentication secret auth: the aes128gcm content coding of RFC 8188 with the
// key derivation of RFC 8291 section 3.4. The body is the header (salt, record size, the
// sender's public key as key id) and one record; the plaintext is returned without its
// padding.
func Decrypt(body []byte, ua *ecdh.PrivateKey, auth []byte) ([]byte, error) {
	const header = 16 + 4 + 1
	if len(body) < header {
		return nil, errors.New("body shorter than the aes128gcm header")
	}
	salt, rs, idlen := body[:16], binary.BigEndian.Uint32(body[16:20]), int(body[20])
	if rs < 18 {
		return nil, fmt.Errorf("record size %d is below 18", rs)
	}
	if idlen != 65 || len(body) < header+idlen {
		return nil, fmt.Errorf("key id of %d bytes, want the sender's 65-byte public key", idlen)
	}
	asKey, err := ecdh.P256().NewPublicKey(body[header : header+idlen])
	if err != nil {
		return nil, fmt.Errorf("key id: %w", err)
	}
	record := body[header+idlen:]
	if len(record) > int(rs) {
		return nil, fmt.Errorf("%d bytes of records with a record size of %d: a push message is one record", len(record), rs)
	}
	if len(record) < 17 {
		return nil, errors.New("record shorter than its tag and delimiter")
	}
	shared, err := ua.ECDH(asKey)
	if err != nil {
		return nil, fmt.Errorf("ecdh: %w", err)
	}
	// IKM = HKDF(auth, ecdh, "WebPush: info" || 0 || ua_public || as_public, 32)
	info := append([]byte("WebPush: info\x00"), ua.PublicKey().Bytes()...)
	info = append(info, asKey.Bytes()...)
	ikm, err := hkdf.Key(sha256.New, shared, auth, string(info), 32)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Key(sha256.New, ikm, salt, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Key(sha256.New, ikm, salt, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	plain, err := gcm.Open(nil, nonce, record, nil)
	if err != nil {
		return nil, errors.New("the record does not decrypt with the subscription's keys")
	}
	// The last record's padding: a 2 delimiter, then zeros.
	end := bytes.LastIndexFunc(plain, func(r rune) bool { return r != 0 })
	if end < 0 || plain[end] != 2 {
		return nil, errors.New("the record has no last-record padding delimiter (2)")
	}
	return plain[:end], nil
}

// VAPID is what a valid VAPID Authorization header (RFC 8292) says.
type VAPID struct {
	Key     string // k: the application server's public key, base64url
	Subject string // sub: the contact, mailto: or https:
	Expires time.Time
}

// VerifyVAPID checks an Authorization header of the form "vapid t=<JWT>, k=<public key>":
// the JWT is signed with ES256 by the key k, its aud is audience (the push resource's
// origin), its exp is in the future and at most 24 hours away, and its sub is a mailto: or
// https: URL.
func VerifyVAPID(header, audience string, now time.Time) (VAPID, error) {
	var v VAPID
	scheme, params, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "vapid") {
		return v, errors.New(`authorization scheme is not "vapid"`)
	}
	var token string
	for _, p := range strings.Split(params, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch strings.ToLower(name) {
		case "t":
			token = value
		case "k":
			v.Key = value
		}
	}
	if token == "" || v.Key == "" {
		return v, errors.New("vapid needs both t and k")
	}
	rawKey, err := base64.RawURLEncoding.DecodeString(v.Key)
	if err != nil {
		return v, errors.New("k is not base64url")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), rawKey)
	if err != nil {
		return v, fmt.Errorf("k: %w", err)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return v, errors.New("t is not a JWS compact serialisation")
	}
	var head struct {
		Alg string `json:"alg"`
	}
	if err := decodeJSON(parts[0], &head); err != nil || head.Alg != "ES256" {
		return v, errors.New(`the JWT header is not {"alg":"ES256"}`)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return v, errors.New("the JWT signature is not 64 bytes of base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return v, errors.New("the JWT signature does not verify with k")
	}
	var claims struct {
		Aud string      `json:"aud"`
		Exp json.Number `json:"exp"`
		Sub string      `json:"sub"`
	}
	if err := decodeJSON(parts[1], &claims); err != nil {
		return v, errors.New("the JWT claims are not a JSON object")
	}
	if claims.Aud != audience {
		return v, fmt.Errorf("aud %q, want %q", claims.Aud, audience)
	}
	exp, err := claims.Exp.Int64()
	if err != nil {
		return v, errors.New("exp is not a number of seconds")
	}
	v.Expires = time.Unix(exp, 0)
	if !v.Expires.After(now) {
		return v, errors.New("the JWT expired")
	}
	if v.Expires.After(now.Add(24 * time.Hour)) {
		return v, errors.New("exp is more than 24 hours away")
	}
	if !strings.HasPrefix(claims.Sub, "mailto:") && !strings.HasPrefix(claims.Sub, "https:") {
		return v, errors.New("sub is not a mailto: or https: URL")
	}
	v.Subject = claims.Sub
	return v, nil
}

func decodeJSON(part string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}
