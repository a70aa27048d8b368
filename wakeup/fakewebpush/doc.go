// Package fakewebpush is a fake Web Push service (RFC 8030) for tests and integrators.
//
// A Server makes subscriptions as a browser's PushManager.subscribe does (Subscribe: an
// endpoint URL()+"/push/<id>", a P-256 key pair and a 16-byte authentication secret, bound
// to an applicationServerKey) and answers POST on their endpoints as a push service does:
//
//   - the TTL header is required; Urgency, when present, is very-low, low, normal or high;
//     Topic, when present, is at most 32 base64url characters (400 otherwise);
//   - the Authorization header is "vapid t=<JWT>, k=<key>" (RFC 8292): an ES256 JWT signed
//     by k, whose aud is the service's origin, whose exp is in the future and at most 24
//     hours away, whose sub is a mailto: or https: URL (401 otherwise); k is the
//     subscription's applicationServerKey (403 otherwise);
//   - the body is at most 4096 bytes (413), Content-Encoding aes128gcm (415), and decrypts
//     with the subscription's keys as RFC 8291 says (400 otherwise);
//   - an unknown subscription gets 404, an unsubscribed one 410 Gone;
//   - an accepted message gets 201 Created with a Location, and is held for the
//     subscription, replacing a held message with the same Topic (Pending).
//
// Failures can be injected for the next messages (FailNext: 429 with Retry-After, 5xx).
// Every request is recorded with its decrypted payload (Messages, WaitFor).
package fakewebpush
