-- pushproxy:compatible-with 8
--
-- The streams held per API key, counted in a row per key (api_key_streams), so that
-- --max-streams-per-key no longer counts a key's streams under a lock held through each
-- handoff's commit. A handoff reserves its place in its own short transaction
-- (held = held + 1 while below the bound) and inserts its stream with quota_reserved set;
-- if the handoff fails, it gives the place back.
--
-- The triggers keep the count in the database, whichever code writes the streams:
--   - a held stream with a key inserted WITHOUT quota_reserved (older code, which knows
--     nothing of the table) is counted as it is inserted;
--   - a held stream with a key that stops being held (closed, failed, idle, dead device,
--     whatever path) or is deleted while held is uncounted.
-- Only expands the schema: a new table, a new column with a default, triggers that older
-- code does not notice.
--
-- The triggers are created before the counts are filled in: CREATE TRIGGER locks streams
-- against writes until this migration commits, so no held stream is counted twice or
-- missed.

CREATE TABLE api_key_streams (
    key_hash bytea PRIMARY KEY,
    held     int NOT NULL DEFAULT 0
);

ALTER TABLE streams ADD COLUMN quota_reserved boolean NOT NULL DEFAULT false;

CREATE FUNCTION pushproxy_key_streams_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_streams AS k (key_hash, held) VALUES (NEW.api_key_hash, 1)
    ON CONFLICT (key_hash) DO UPDATE SET held = k.held + 1;
    RETURN NULL;
END $$;

CREATE FUNCTION pushproxy_key_streams_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_key_streams SET held = greatest(held - 1, 0) WHERE key_hash = OLD.api_key_hash;
    RETURN NULL;
END $$;

CREATE TRIGGER streams_key_count_insert AFTER INSERT ON streams
    FOR EACH ROW WHEN (NEW.state = 'held' AND NEW.api_key_hash IS NOT NULL AND NOT NEW.quota_reserved)
    EXECUTE FUNCTION pushproxy_key_streams_insert();
CREATE TRIGGER streams_key_count_update AFTER UPDATE OF state ON streams
    FOR EACH ROW WHEN (OLD.state = 'held' AND NEW.state <> 'held' AND OLD.api_key_hash IS NOT NULL)
    EXECUTE FUNCTION pushproxy_key_streams_release();
CREATE TRIGGER streams_key_count_delete AFTER DELETE ON streams
    FOR EACH ROW WHEN (OLD.state = 'held' AND OLD.api_key_hash IS NOT NULL)
    EXECUTE FUNCTION pushproxy_key_streams_release();

INSERT INTO api_key_streams (key_hash, held)
SELECT api_key_hash, count(*) FROM streams
WHERE state = 'held' AND api_key_hash IS NOT NULL
GROUP BY api_key_hash;

---- create above / drop below ----

DROP TRIGGER streams_key_count_delete ON streams;
DROP TRIGGER streams_key_count_update ON streams;
DROP TRIGGER streams_key_count_insert ON streams;
DROP FUNCTION pushproxy_key_streams_release();
DROP FUNCTION pushproxy_key_streams_insert();
ALTER TABLE streams DROP COLUMN quota_reserved;
DROP TABLE api_key_streams;
