// Package fakeapns is a fake Apple Push Notification service: an HTTP/2 server over TLS that
// speaks the APNs provider API (POST /3/device/{token}) and checks pushes the way Apple does,
// answering Apple's statuses and {"reason": "..."} bodies.
//
// It is part of the product: the wakeup tests send through the real APNs client to it,
// `pushproxy demo` runs one, and app developers can point a pushproxy at one to see the
// pushes their devices would get.
//
// What it checks (a push that breaks a rule gets the status and reason Apple would send,
// with a human explanation in the x-fakeapns-detail response header):
//
//   - POST to /3/device/{token} with a hex device token (404 BadPath, 405 MethodNotAllowed,
//     400 MissingDeviceToken, 400 BadDeviceToken);
//   - provider authentication: with token auth an "authorization: bearer <JWT>" header holding
//     an ES256 JWT signed by one of Options.Keys (kid), issued by Options.TeamID, whose iat is
//     less than an hour old by Options.Clock (403 MissingProviderToken, InvalidProviderToken,
//     ExpiredProviderToken); with certificate auth (Options.ClientCAs) a client certificate
//     issued by that pool, whose UID is the default topic;
//   - apns-topic present with token auth and, when Options.Topics is set, one of them (400
//     MissingTopic, TopicDisallowed);
//   - apns-push-type one of Apple's types, apns-priority 1, 5 or 10 and not 10 for background
//     pushes (400 InvalidPushType, BadPriority); apns-expiration an integer (400
//     BadExpirationDate); apns-collapse-id at most 64 bytes (400 BadCollapseId); apns-id a
//     UUID (400 BadMessageId), echoed in the response, generated when absent; no repeated
//     headers (400 DuplicateHeaders);
//   - the payload: not empty (400 PayloadEmpty), at most 4096 bytes (5120 for VoIP; 413
//     PayloadTooLarge), a JSON object with an "aps" dictionary, and for background pushes
//     aps.content-available = 1 and no alert, sound or badge. Apple does not reject these
//     last payload mistakes at the gateway (the device drops the push); the fake answers
//     400 BadPayload so that they are caught in tests.
//
// Failures can be injected per device token (FailToken, Unregister: 410 with a timestamp) or
// for the next N pushes whatever their token (FailNext, with an optional Retry-After), and a
// latency can be added to every answer. The server advertises SETTINGS_MAX_CONCURRENT_STREAMS
// (Options.MaxConcurrentStreams, 1000 by default like Apple) and enforces it: streams past the
// limit are refused. PeakInFlight reports the most requests it ever handled at once and
// RefusedStreams the streams it refused, so a test can check that a client honoured the limit.
//
// Every push is recorded (Pushes, WaitFor) with the headers that matter, the payload and the
// answer.
//
// The server's certificate is issued by a CA of its own (Options.CA, or a fresh one). A client
// trusts it through its system roots by setting SSL_CERT_FILE to a file holding CACertPEM
// before the process first loads them (crypto/x509 reads them once per process), or by adding
// CACertPEM to the RootCAs of its TLS configuration.
package fakeapns
