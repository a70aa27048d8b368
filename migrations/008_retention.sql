---- tern: disable-tx ----
-- pushproxy:compatible-with 4
--
-- Years, not days: retention, one maintenance leader, cached gauges, and tables whose churn
-- stays flat. Only expands the schema: older code runs on it unchanged (the trigger below
-- erases what older code no longer reads once a stream has ended). It runs outside a
-- transaction so that its indexes are built CONCURRENTLY, statement by statement; every
-- statement may run again (a start-up that died half-way migrates again from the top; an
-- index left INVALID by a failed build must be dropped first).

-- When a device last read the stream (opened a reader or fetched a page), for
-- --stream-idle-ttl. Existing streams start their idle clock at the migration.
ALTER TABLE streams ADD COLUMN IF NOT EXISTS read_at timestamptz NOT NULL DEFAULT now();

-- A stream's forwarded credentials are erased the moment it stops being held (closed by the
-- device or an operator, ended by the origin, failed, its device dead or forgotten, idle):
-- its forwarded headers and whatever its URL carried beside the origin and path (userinfo,
-- query string, fragment). One function for every path, present and future: a column that
-- holds credentials (sealed headers) is erased here too.
CREATE OR REPLACE FUNCTION pushproxy_erase_stream_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.headers := '{}';
    NEW.credentials_sealed := NULL;
    NEW.url := regexp_replace(regexp_replace(NEW.url, '[?#].*$', ''), '^([^:/?#]+://)[^@/?#]*@', '\1');
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER streams_erase_credentials BEFORE UPDATE OF state ON streams
    FOR EACH ROW WHEN (OLD.state = 'held' AND NEW.state <> 'held')
    EXECUTE FUNCTION pushproxy_erase_stream_credentials();

-- Streams that ended before this migration lose theirs now.
UPDATE streams SET headers = '{}',
    url = regexp_replace(regexp_replace(url, '[?#].*$', ''), '^([^:/?#]+://)[^@/?#]*@', '\1')
WHERE state <> 'held' AND (headers <> '{}' OR url ~ '[?#@]');

-- The retention passes find their rows by index (no scan of streams or events).
CREATE INDEX CONCURRENTLY IF NOT EXISTS streams_ended ON streams (closed_at) WHERE state <> 'held';
CREATE INDEX CONCURRENTLY IF NOT EXISTS streams_held_read ON streams (read_at) WHERE state = 'held';
CREATE INDEX CONCURRENTLY IF NOT EXISTS devices_dead ON devices (dead_at) WHERE dead_at IS NOT NULL;
-- Deleting a device cascades to its wake-ups: by this index, not by a scan of them all (it
-- serves a device's history, newest first, too).
CREATE INDEX CONCURRENTLY IF NOT EXISTS wakeups_device ON wakeups (device_id, created_at);

-- The maintenance leader: one instance at a time runs retention, dead-device failing,
-- wake-up history trimming and the database-wide gauges. The lease is a row with an expiry
-- (a frozen leader loses it by the clock, which a session advisory lock would not); epoch is
-- the fencing token every maintenance statement names.
CREATE TABLE IF NOT EXISTS maintenance_leader (
    name        text PRIMARY KEY,
    leader_id   text NOT NULL,
    epoch       bigint NOT NULL,
    elected_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The database-wide gauges, computed by the leader every few seconds: every instance's
-- /metrics reads this one row.
CREATE TABLE IF NOT EXISTS gauges (
    name         text PRIMARY KEY,
    computed_at  timestamptz NOT NULL,
    leader_id    text NOT NULL,
    value        jsonb NOT NULL
);

-- Churn that stays flat (OPERATIONS.md, "Storage that stays flat"). fillfactor leaves room on
-- each page for the new version of a row, so updates that change no indexed column stay HOT
-- (no index entries, pruned without VACUUM): streams are updated by every commit and every
-- read, devices by every push. It applies to pages written from now on.
ALTER TABLE streams SET (fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE devices SET (fillfactor = 80);
ALTER TABLE instances SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
ALTER TABLE maintenance_leader SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
ALTER TABLE gauges SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
-- Insert-then-delete queues: vacuum after a small share of the table is dead, not the
-- default 20 %, so the space freed by reads and trims is reused before the table grows.
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1);
ALTER TABLE wakeups SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE readers SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);

---- create above / drop below ----

ALTER TABLE readers RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE wakeups RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor);
ALTER TABLE events RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay);
ALTER TABLE instances RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE devices RESET (fillfactor);
ALTER TABLE streams RESET (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);
DROP TABLE gauges;
DROP TABLE maintenance_leader;
DROP INDEX wakeups_device;
DROP INDEX devices_dead;
DROP INDEX streams_held_read;
DROP INDEX streams_ended;
DROP TRIGGER streams_erase_credentials ON streams;
DROP FUNCTION pushproxy_erase_stream_credentials();
ALTER TABLE streams DROP COLUMN read_at;
