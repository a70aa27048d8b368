-- pushproxy:compatible-with 4
--
-- Web Push devices (platform 'webpush'): the subscription's endpoint URL is the device's
-- token; its keys are kept beside it.
--
-- devices.webpush_p256dh: the subscription's P-256 public key (base64url), in clear.
-- devices.webpush_auth_sealed: its authentication secret, AES-256-GCM under the operator's
-- key (--secret-key-file) with "webpush\0" and the endpoint as associated data, so a value
-- copied to another device does not open; devices.webpush_auth holds it in clear only when
-- the proxy runs without a key. Neither is shown by any API or admin document.
--
-- Older code does not read the new columns and never creates webpush devices; a webpush
-- device's wake-ups, claimed by an older instance, are recorded as no-sender.
ALTER TABLE devices DROP CONSTRAINT devices_platform_check;
ALTER TABLE devices ADD CONSTRAINT devices_platform_check CHECK (platform IN ('apns', 'fcm', 'webpush'));
ALTER TABLE devices ADD COLUMN webpush_p256dh text;
ALTER TABLE devices ADD COLUMN webpush_auth text;
ALTER TABLE devices ADD COLUMN webpush_auth_sealed bytea;

---- create above / drop below ----

DELETE FROM devices WHERE platform = 'webpush';
ALTER TABLE devices DROP COLUMN webpush_auth_sealed;
ALTER TABLE devices DROP COLUMN webpush_auth;
ALTER TABLE devices DROP COLUMN webpush_p256dh;
ALTER TABLE devices DROP CONSTRAINT devices_platform_check;
ALTER TABLE devices ADD CONSTRAINT devices_platform_check CHECK (platform IN ('apns', 'fcm'));
