---- tern: disable-tx ----
-- pushproxy:compatible-with 12
--
-- streams_api_key_held served the per-key stream quota's count of a key's held streams
-- (code before migration 12); the quota is counted in api_key_streams since, and nothing
-- reads by this index: every handoff under a key only paid for inserting into it (all of a
-- key's rows share one value, the costliest kind of btree insert). Contracts what code of
-- version 12 and later no longer uses.
DROP INDEX CONCURRENTLY IF EXISTS streams_api_key_held;

---- create above / drop below ----

CREATE INDEX IF NOT EXISTS streams_api_key_held ON streams (api_key_hash) WHERE state = 'held' AND api_key_hash IS NOT NULL;
