-- pushproxy:compatible-with 12
--
-- pushproxy_key_slot is the handoff's way into the per-key stream quota of migration 012,
-- cheaper than pushproxy_take_key_slot on the path nearly every handoff takes: the handoff
-- names the slot it counts in (mine: the proxy gives each of its handoffs in flight a slot no
-- other of its handoffs holds, so they never wait for each other), and when the key's slots
-- are known to be within their shares of bound (api_key_bounds) it takes the place in that
-- slot with one UPDATE, the statement that also locks the slot's row until the handoff
-- commits. A handoff of another instance counting in the same slot waits for that commit,
-- and the UPDATE then sees the count it left. Otherwise (the slot is full, the bound is
-- unknown or changed) it is pushproxy_take_key_slot's: a free slot or all slots counted.
--
-- It raises SQLSTATE PPK01 when the key holds bound streams already, rather than returning
-- NULL: it is called in the INSERT's VALUES, which Postgres plans as cheaply as an insert of
-- constants (the store's sessions plan every statement they run).
--
-- pushproxy_take_key_slot (migration 012), which it falls back on, is replaced. A row that
-- SELECT ... FOR UPDATE locks and then finds no longer matching (the recheck after a
-- concurrent update) stays locked: its tries without waiting could end holding a full slot,
-- and its wait for the emptiest slot could hold one while waiting for the next, in an order
-- of their counts, which deadlocked with handoffs locking every slot in slot order
-- (TestKeyQuotaIsExactAcrossInstancesAndVersions, about one run in two, once handoffs of
-- two instances and older code raced). Now the tries run in a subtransaction that is rolled
-- back when they find nothing, and a handoff that must wait holds no slot and waits for
-- every slot, in slot order.
--
-- Adds a function, which code of versions 12 to 14 does not call, and replaces one they call
-- with one that answers the same.
CREATE FUNCTION pushproxy_key_slot(k bytea, bound int, mine smallint) RETURNS smallint
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s smallint;
BEGIN
    -- A subtransaction: an UPDATE that waited for the slot's row locks its newest version
    -- before it checks it again, and keeps that lock when the slot was filled meanwhile. A
    -- handoff must hold no slot when it falls back on pushproxy_take_key_slot, which may
    -- wait for every slot (in slot order): rolled back, the try lets go of it.
    BEGIN
        UPDATE api_key_streams SET held = held + 1
        WHERE key_hash = k AND slot = mine
            AND (bound <= 0 OR (held < bound / 16 + (slot < bound % 16)::int
                AND EXISTS (SELECT 1 FROM api_key_bounds b WHERE b.key_hash = k AND b.bound = pushproxy_key_slot.bound)))
        RETURNING slot INTO s;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'PPK02';
        END IF;
    EXCEPTION WHEN SQLSTATE 'PPK02' THEN
        s := NULL;
    END;
    IF s IS NOT NULL THEN
        RETURN s;
    END IF;
    s := pushproxy_take_key_slot(k, bound);
    IF s IS NULL THEN
        RAISE EXCEPTION 'the API key already holds % streams', bound USING ERRCODE = 'PPK01';
    END IF;
    RETURN s;
END $$;

CREATE OR REPLACE FUNCTION pushproxy_take_key_slot(k bytea, bound int) RETURNS smallint
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
        -- A subtransaction: a try that finds no slot lets go of the locks it took (a row
        -- locked, then found full by the recheck after a concurrent update, stays locked).
        BEGIN
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
                RAISE EXCEPTION USING ERRCODE = 'PPK02';
            END IF;
        EXCEPTION WHEN SQLSTATE 'PPK02' THEN
            s := NULL;
        END;
        IF s IS NULL THEN
            INSERT INTO api_key_streams (key_hash, slot) SELECT k, g FROM generate_series(0, 15) g
            ON CONFLICT DO NOTHING;
            -- Holding no slot, wait for every one, in slot order, as every handoff that waits
            -- for a slot while it holds others does: two of them never wait for each other.
            PERFORM 1 FROM api_key_streams WHERE key_hash = k ORDER BY slot FOR UPDATE;
            SELECT slot INTO s FROM api_key_streams
            WHERE key_hash = k AND (bound <= 0 OR held < bound / 16 + (slot < bound % 16)::int)
            ORDER BY held, slot LIMIT 1;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    UPDATE api_key_streams SET held = held + 1 WHERE key_hash = k AND slot = s;
    RETURN s;
END $$;

---- create above / drop below ----

DROP FUNCTION pushproxy_key_slot(bytea, int, smallint);
CREATE OR REPLACE FUNCTION pushproxy_take_key_slot(k bytea, bound int) RETURNS smallint
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
