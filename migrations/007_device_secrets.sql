-- pushproxy:compatible-with 4
--
-- Device credentials and quotas.
--
-- devices.secret_hash: the SHA-256 of the device secret handed to the app at the device's
-- first handoff; any later handoff naming the same push token must present the secret.
-- NULL for devices created before this migration: the next handoff that keeps their topic
-- and environment is given one.
--
-- streams.api_key_hash: the SHA-256 of the API key a stream was handed off with (NULL: open
-- handoff), so that the streams held per key can be bounded. Never the key itself.
--
-- readers (stream_id, expires_at): the open readers of one stream are counted when another
-- opens (--max-readers-per-stream).
ALTER TABLE devices ADD COLUMN secret_hash bytea;
ALTER TABLE streams ADD COLUMN api_key_hash bytea;
CREATE INDEX streams_api_key_held ON streams (api_key_hash) WHERE state = 'held' AND api_key_hash IS NOT NULL;
CREATE INDEX readers_stream_id ON readers (stream_id, expires_at);

---- create above / drop below ----

DROP INDEX readers_stream_id;
DROP INDEX streams_api_key_held;
ALTER TABLE streams DROP COLUMN api_key_hash;
ALTER TABLE devices DROP COLUMN secret_hash;
