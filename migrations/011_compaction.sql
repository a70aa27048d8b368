---- tern: disable-tx ----
-- pushproxy:compatible-with 8
--
-- Compaction by key (RFC 8030's Topic): a queued event is replaced by a newer one with the
-- same key. Only expands the schema: older code writes events without a key (never
-- compacted) and streams without a setting. Outside a transaction so that the index is built
-- CONCURRENTLY; every statement may run again.

-- The stream's setting: '' (none), 'type', or 'json:' and a JSON pointer.
ALTER TABLE streams ADD COLUMN IF NOT EXISTS compact_by text NOT NULL DEFAULT '';

-- The event's key, computed once by the holder; NULL: never compacted.
ALTER TABLE events ADD COLUMN IF NOT EXISTS compact_key bytea;

-- The commit finds a stream's older events with the same key by this index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_compact_key ON events (stream_id, compact_key)
    WHERE compact_key IS NOT NULL;

---- create above / drop below ----

DROP INDEX events_compact_key;
ALTER TABLE events DROP COLUMN compact_key;
ALTER TABLE streams DROP COLUMN compact_by;
