package fakewebpush

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The example of RFC 8291 appendix A (published test data).
const (
	rfcPlaintext = "When I grow up, I want to be a watermelon"
	rfcUAPrivate = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
	rfcUAPublic  = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	rfcAuth      = "BTBZMqHH6r4Tts7J_aSIgg"
	rfcBody      = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
		"mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
		"pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rfcKey(t testing.TB) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.P256().NewPrivateKey(b64(t, rfcUAPrivate))
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes()); got != rfcUAPublic {
		t.Fatalf("the vector's public key is %s, computed %s", rfcUAPublic, got)
	}
	return k
}

func TestDecryptRFC8291Vector(t *testing.T) {
	key, auth, body := rfcKey(t), b64(t, rfcAuth), b64(t, rfcBody)
	plain, err := Decrypt(body, key, auth)
	if err != nil || string(plain) != rfcPlaintext {
		t.Fatalf("Decrypt = %q, %v", plain, err)
	}
	for name, change := range map[string]func(b []byte) []byte{
		"tampered tag":      func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b },
		"tampered salt":     func(b []byte) []byte { b[0] ^= 1; return b },
		"truncated":         func(b []byte) []byte { return b[:90] },
		"header only":       func(b []byte) []byte { return b[:86] },
		"short key id":      func(b []byte) []byte { b[20] = 64; return b },
		"record size 17":    func(b []byte) []byte { copy(b[16:20], []byte{0, 0, 0, 17}); return b },
		"two records (rs)":  func(b []byte) []byte { copy(b[16:20], []byte{0, 0, 0, 40}); return b },
		"empty":             func([]byte) []byte { return nil },
		"other auth secret": func(b []byte) []byte { auth = make([]byte, 16); return b },
	} {
		auth = b64(t, rfcAuth)
		b := change(bytes.Clone(body))
		if p, err := Decrypt(b, key, auth); err == nil {
			t.Errorf("%s: decrypted to %q", name, p)
		}
	}
}

func FuzzDecrypt(f *testing.F) {
	key, auth := rfcKey(f), b64(f, rfcAuth)
	f.Add(b64(f, rfcBody))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		if p, err := Decrypt(body, key, auth); err == nil && len(p) >= len(body) {
			t.Fatalf("a %d-byte plaintext out of %d bytes", len(p), len(body))
		}
	})
}

// vapidHeader signs claims with key as the VAPID header of RFC 8292.
func vapidHeader(t testing.TB, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	c, _ := json.Marshal(claims)
	signing := enc([]byte(`{"typ":"JWT","alg":"ES256"}`)) + "." + enc(c)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	pub, _ := key.PublicKey.Bytes()
	return "vapid t=" + signing + "." + enc(sig) + ", k=" + enc(pub)
}

func TestVerifyVAPID(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	const aud = "https://push.example.net"
	claims := func(change func(map[string]any)) map[string]any {
		c := map[string]any{"aud": aud, "exp": now.Add(12 * time.Hour).Unix(), "sub": "mailto:ops@example.com"}
		if change != nil {
			change(c)
		}
		return c
	}
	good := vapidHeader(t, key, claims(nil))
	v, err := VerifyVAPID(good, aud, now)
	if pub, _ := key.PublicKey.Bytes(); err != nil || v.Subject != "mailto:ops@example.com" ||
		v.Key != base64.RawURLEncoding.EncodeToString(pub) || !v.Expires.Equal(now.Add(12*time.Hour)) {
		t.Fatalf("VerifyVAPID = %+v, %v", v, err)
	}
	signedByOther := vapidHeader(t, other, claims(nil))
	for name, h := range map[string]string{
		"another audience":   vapidHeader(t, key, claims(func(c map[string]any) { c["aud"] = "https://evil.example" })),
		"expired":            vapidHeader(t, key, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Second).Unix() })),
		"more than 24 hours": vapidHeader(t, key, claims(func(c map[string]any) { c["exp"] = now.Add(25 * time.Hour).Unix() })),
		"no exp":             vapidHeader(t, key, claims(func(c map[string]any) { delete(c, "exp") })),
		"sub not a URL":      vapidHeader(t, key, claims(func(c map[string]any) { c["sub"] = "ops@example.com" })),
		"signed by another":  signedByOther[:strings.Index(signedByOther, ", k=")] + good[strings.Index(good, ", k="):],
		"bearer":             "Bearer " + strings.TrimPrefix(good, "vapid "),
		"no k":               good[:strings.Index(good, ", k=")],
		"empty":              "",
		"garbage":            "vapid t=a.b.c, k=zz",
	} {
		if v, err := VerifyVAPID(h, aud, now); err == nil {
			t.Errorf("%s: accepted %+v", name, v)
		}
	}
}

func FuzzVerifyVAPID(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	f.Add(vapidHeader(f, key, map[string]any{"aud": "https://a", "exp": now.Add(time.Hour).Unix(), "sub": "mailto:a@b"}))
	f.Add("vapid t=..., k=")
	f.Fuzz(func(t *testing.T, h string) {
		_, _ = VerifyVAPID(h, "https://a", now)
	})
}
