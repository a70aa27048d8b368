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
-- Only adds a function, which code of versions 12 to 14 does not call.
CREATE FUNCTION pushproxy_key_slot(k bytea, bound int, mine smallint) RETURNS smallint
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s smallint;
BEGIN
    UPDATE api_key_streams SET held = held + 1
    WHERE key_hash = k AND slot = mine
        AND (bound <= 0 OR (held < bound / 16 + (slot < bound % 16)::int
            AND EXISTS (SELECT 1 FROM api_key_bounds b WHERE b.key_hash = k AND b.bound = pushproxy_key_slot.bound)))
    RETURNING slot INTO s;
    IF FOUND THEN
        RETURN s;
    END IF;
    s := pushproxy_take_key_slot(k, bound);
    IF s IS NULL THEN
        RAISE EXCEPTION 'the API key already holds % streams', bound USING ERRCODE = 'PPK01';
    END IF;
    RETURN s;
END $$;

---- create above / drop below ----

DROP FUNCTION pushproxy_key_slot(bytea, int, smallint);
