package api

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

// Device secrets.
//
// A device (a push address) gets a secret at its first handoff: 32 random bytes,
// base64url without padding (43 characters), shown once in the 201 answer as
// "device_secret" and stored as its SHA-256, as stream tokens are. Every later handoff that
// names the same push token presents it as push.device_secret; the store compares the hashes.

// deviceSecretLen is the length of a device secret's text: 32 bytes in base64url.
const deviceSecretLen = 43

// newDeviceSecret returns a fresh device secret.
func newDeviceSecret() string { return newToken() }

// parseDeviceSecret checks the shape of a presented device secret (it is untrusted input)
// and returns it; a secret of another shape can never match, and is refused as invalid
// rather than compared.
func parseDeviceSecret(s string) (string, error) {
	if len(s) != deviceSecretLen || !utf8.ValidString(s) {
		return "", invalid("push.device_secret: not a device secret (the %d characters answered as device_secret by the device's first handoff)", deviceSecretLen)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != 32 {
		return "", invalid("push.device_secret: not a device secret (base64url, %d characters)", deviceSecretLen)
	}
	return s, nil
}

// Shapes of push tokens, so that made-up tokens cannot multiply devices (and so the
// per-device quota) at will.
const (
	// An APNs device token is hex: 32 bytes today; Apple says it may grow, so any even
	// length from 64 to maxAPNsTokenLen.
	minAPNsTokenLen = 64
	maxAPNsTokenLen = 200
	// FCM registration tokens are base64url with a colon (an installation id, ":", then the
	// token proper): about 140 to 165 characters in practice, documented as opaque and at
	// most 4 KiB. Bounded generously on both sides.
	minFCMTokenLen = 100
	maxFCMTokenLen = 4096
)

// checkAPNsToken checks an APNs device token's shape.
func checkAPNsToken(tok string) error {
	if len(tok) < minAPNsTokenLen || len(tok) > maxAPNsTokenLen || len(tok)%2 != 0 || !isHex(tok) {
		return invalid("push.token: an APNs device token is hex, an even number from %d to %d characters", minAPNsTokenLen, maxAPNsTokenLen)
	}
	return nil
}

// checkFCMToken checks an FCM registration token's shape.
func checkFCMToken(tok string) error {
	if len(tok) < minFCMTokenLen || len(tok) > maxFCMTokenLen {
		return invalid("push.token: an FCM registration token has %d to %d characters", minFCMTokenLen, maxFCMTokenLen)
	}
	if strings.ContainsFunc(tok, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == ':')
	}) {
		return invalid("push.token: an FCM registration token holds only letters, digits and _-:")
	}
	return nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// keyHash is what the store keeps of the API key of a handoff: its SHA-256, nil for none.
func keyHash(key string) []byte {
	if key == "" {
		return nil
	}
	return hashToken(key)
}
