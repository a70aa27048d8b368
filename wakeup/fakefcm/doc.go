// Package fakefcm is a fake Firebase Cloud Messaging HTTP v1 API with its own OAuth 2.0
// token endpoint, so that the real Firebase Admin SDK authenticates against it and sends to
// it.
//
// It is part of the product: the wakeup tests send through the real Firebase client to it,
// `pushproxy demo` runs one, and app developers can point a pushproxy at one.
//
// Start a Server, write its service account with WriteCredentials (the credentials name the
// fake's token endpoint in token_uri) and give the FCM sender that file and URL as its
// endpoint. The fake then behaves like Google:
//
//   - POST /token takes the service-account JWT-bearer grant
//     (grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer) whose assertion is an RS256
//     JWT signed by the service account's key (kid = private_key_id), issued by its
//     client_email, for the token URL as audience, asking for the firebase.messaging or
//     cloud-platform scope, and not expired; it answers an access token valid for an hour
//     (by Options.Clock), or 400 invalid_grant / invalid_scope / unsupported_grant_type.
//   - POST /v1/projects/{project}/messages:send needs "Authorization: Bearer <access token>"
//     (401 UNAUTHENTICATED otherwise) for the project of the service account (403
//     PERMISSION_DENIED), and a message like FCM's: known fields only, exactly one target,
//     data values that are strings and keys that are not reserved, at most 4096 bytes of
//     data, android.priority "normal" or "high", android.ttl like "3600s" or "0.5s" up to 28
//     days, APNs headers whose apns-priority is 5 or 10 and that do not make a background
//     push urgent or give it an alert, and a well-formed registration token (400
//     INVALID_ARGUMENT, "The registration token is not a valid FCM registration token").
//     It answers {"name": "projects/{project}/messages/{id}"}.
//
// Errors are in FCM's v1 format, with the FcmError detail where FCM sends one:
//
//	{"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
//	  "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}
//
// Failures can be injected per registration token (Unregister, FailToken) or for the next N
// messages (FailNext), with the FCM error codes UNREGISTERED, INVALID_ARGUMENT,
// SENDER_ID_MISMATCH, QUOTA_EXCEEDED (429, with Retry-After), UNAVAILABLE, INTERNAL and
// THIRD_PARTY_AUTH_ERROR; access tokens can be revoked (RevokeTokens) and a latency added.
// Every message is recorded (Messages, WaitFor).
//
// The fake speaks plain HTTP (the Firebase client takes an http:// endpoint and token URL).
package fakefcm
