-- pushproxy:compatible-with 8
--
-- The streams held per API key, counted in 16 slots per key (api_key_streams), so that
-- --max-streams-per-key neither counts a key's streams on every handoff nor makes a key's
-- handoffs wait for each other's commits. Each held stream with a key is counted in one slot
-- (streams.key_slot). A handoff takes a place in a slot inside its own transaction, in the
-- statement that inserts the stream (pushproxy_take_key_slot): the slot's row stays locked
-- until the handoff commits, but concurrent handoffs take other slots (FOR UPDATE SKIP
-- LOCKED). With a bound of M, slot s admits while it holds fewer than M/16 (+1 for the first
-- M%16 slots): the slots' shares add up to M, so the bound is exact however many handoffs
-- race, as long as no slot holds more than its share. That is known for a key when
-- api_key_bounds holds M for it: it is written by a handoff that found it true with every
-- slot of the key locked. Until then (the key's first handoff, a bound changed, or slots over
-- their shares after a bound was lowered) a handoff locks all the key's slots and counts
-- them: exact, one handoff of the key at a time.
--
-- The triggers keep the count in the database, whichever code writes the streams:
--   - a held stream with a key inserted with no slot (older code, which knows nothing of
--     the table) is given one and counted as it is inserted;
--   - a held stream with a key that stops being held (closed, failed, idle, dead device,
--     whatever path) or is deleted while held gives its slot's place back.
-- Only expands the schema: a new table, a new nullable column, triggers that older code does
-- not notice.
--
-- The triggers are created before the counts are filled in: CREATE TRIGGER locks streams
-- against writes until this migration commits, so no held stream is counted twice or
-- missed. The streams held already are dealt to the slots in turn, so that each slot stays
-- within its share of any bound the key was kept to.

CREATE TABLE api_key_streams (
    key_hash bytea NOT NULL,
    slot     smallint NOT NULL,
    held     int NOT NULL DEFAULT 0,
    PRIMARY KEY (key_hash, slot)
) WITH (fillfactor = 50); -- every handoff and close updates a row: room for HOT updates

ALTER TABLE streams ADD COLUMN key_slot smallint;

CREATE FUNCTION pushproxy_key_streams_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.key_slot := pg_backend_pid() % 16;
    INSERT INTO api_key_streams AS k (key_hash, slot, held) VALUES (NEW.api_key_hash, NEW.key_slot, 1)
    ON CONFLICT (key_hash, slot) DO UPDATE SET held = k.held + 1;
    -- Counted in whatever slot, maybe over its share: the key's next handoff counts them all.
    DELETE FROM api_key_bounds WHERE key_hash = NEW.api_key_hash;
    RETURN NEW;
END $$;

-- The bound each key's slots were last found within (see above).
CREATE TABLE api_key_bounds (
    key_hash bytea PRIMARY KEY,
    bound    int NOT NULL
);

-- pushproxy_take_key_slot takes a place for one more held stream under key k in one of its
-- slots and returns the slot, or NULL when the key holds bound streams already (bound 0 or
-- less: no bound, but the stream is counted all the same, so that a bound set later is
-- exact). When the key's slots are known to be within their shares of bound, it tries the
-- connection's own slot (its backend's pid modulo 16: one row), then the emptiest free one,
-- skipping the slots locked by handoffs in flight, and only then waits for those. Otherwise
-- it locks and counts them all. Its statements run generic plans, planned once per session
-- (the store's sessions replan every statement otherwise, and planning these cost more than
-- running them).
CREATE FUNCTION pushproxy_take_key_slot(k bytea, bound int) RETURNS smallint
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s     smallint;
    total bigint;
    fits  boolean;
BEGIN
    IF bound > 0 AND NOT EXISTS (SELECT 1 FROM api_key_bounds b WHERE b.key_hash = k AND b.bound = pushproxy_take_key_slot.bound) THEN
        INSERT INTO api_key_streams (key_hash, slot) SELECT k, g FROM generate_series(0, 15) g
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM api_key_streams WHERE key_hash = k ORDER BY slot FOR UPDATE;
        SELECT sum(held), bool_and(held <= bound / 16 + (slot < bound % 16)::int) INTO total, fits
        FROM api_key_streams WHERE key_hash = k;
        IF total >= bound THEN
            RETURN NULL;
        END IF;
        IF fits THEN
            INSERT INTO api_key_bounds AS b (key_hash, bound) VALUES (k, pushproxy_take_key_slot.bound)
            ON CONFLICT (key_hash) DO UPDATE SET bound = excluded.bound;
        END IF;
        -- Below its share if a slot is (else the emptiest: the total is what is exact here).
        SELECT slot INTO s FROM api_key_streams WHERE key_hash = k
        ORDER BY held >= bound / 16 + (slot < bound % 16)::int, held, slot LIMIT 1;
    ELSE
        SELECT slot INTO s FROM api_key_streams
        WHERE key_hash = k AND slot = pg_backend_pid() % 16
            AND (bound <= 0 OR held < bound / 16 + (slot < bound % 16)::int)
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            SELECT slot INTO s FROM api_key_streams
            WHERE key_hash = k AND (bound <= 0 OR held < bound / 16 + (slot < bound % 16)::int)
            ORDER BY held, slot LIMIT 1
            FOR UPDATE SKIP LOCKED;
        END IF;
        IF NOT FOUND THEN
            INSERT INTO api_key_streams (key_hash, slot) SELECT k, g FROM generate_series(0, 15) g
            ON CONFLICT DO NOTHING;
            SELECT slot INTO s FROM api_key_streams
            WHERE key_hash = k AND (bound <= 0 OR held < bound / 16 + (slot < bound % 16)::int)
            ORDER BY held, slot LIMIT 1
            FOR UPDATE;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    UPDATE api_key_streams SET held = held + 1 WHERE key_hash = k AND slot = s;
    RETURN s;
END $$;

CREATE FUNCTION pushproxy_key_streams_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_key_streams SET held = held - 1 WHERE key_hash = OLD.api_key_hash AND slot = OLD.key_slot;
    RETURN NULL;
END $$;

CREATE TRIGGER streams_key_count_insert BEFORE INSERT ON streams
    FOR EACH ROW WHEN (NEW.state = 'held' AND NEW.api_key_hash IS NOT NULL AND NEW.key_slot IS NULL)
    EXECUTE FUNCTION pushproxy_key_streams_insert();
CREATE TRIGGER streams_key_count_update AFTER UPDATE OF state ON streams
    FOR EACH ROW WHEN (OLD.state = 'held' AND NEW.state <> 'held' AND OLD.key_slot IS NOT NULL)
    EXECUTE FUNCTION pushproxy_key_streams_release();
CREATE TRIGGER streams_key_count_delete AFTER DELETE ON streams
    FOR EACH ROW WHEN (OLD.state = 'held' AND OLD.key_slot IS NOT NULL)
    EXECUTE FUNCTION pushproxy_key_streams_release();

UPDATE streams s SET key_slot = n.slot
FROM (SELECT id, (row_number() OVER (PARTITION BY api_key_hash ORDER BY id) - 1) % 16 AS slot
      FROM streams WHERE state = 'held' AND api_key_hash IS NOT NULL) n
WHERE s.id = n.id;

INSERT INTO api_key_streams (key_hash, slot, held)
SELECT api_key_hash, key_slot, count(*) FROM streams
WHERE state = 'held' AND key_slot IS NOT NULL
GROUP BY api_key_hash, key_slot;

---- create above / drop below ----

DROP TRIGGER streams_key_count_delete ON streams;
DROP TRIGGER streams_key_count_update ON streams;
DROP TRIGGER streams_key_count_insert ON streams;
DROP FUNCTION pushproxy_key_streams_release();
DROP FUNCTION pushproxy_key_streams_insert();
DROP FUNCTION pushproxy_take_key_slot(bytea, int);
DROP TABLE api_key_bounds;
ALTER TABLE streams DROP COLUMN key_slot;
DROP TABLE api_key_streams;
