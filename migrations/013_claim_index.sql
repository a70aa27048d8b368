---- tern: disable-tx ----
-- pushproxy:compatible-with 1
--
-- ClaimStreams takes the unowned streams, and those of instances whose lease lapsed, oldest
-- first: by this index each owner's held streams are read in created_at order, a batch at a
-- time. Without it, Postgres walked streams_held_created over every held stream, filtering
-- by owner, to find the few there are to claim (at 100,000 streams, every claim interval).
-- Only adds an index (built CONCURRENTLY, outside a transaction; may run again).
CREATE INDEX CONCURRENTLY IF NOT EXISTS streams_held_owner_created ON streams (lease_owner, created_at)
    WHERE state = 'held';

---- create above / drop below ----

DROP INDEX streams_held_owner_created;
