-- Instance leases: an instance holds its streams as long as its own row is fresh, so renewing
-- costs one row however many streams it holds (per-stream lease renewals rewrote every held
-- stream every few seconds, and deadlocked with the commits touching the same rows).
-- streams.lease_owner names the instance; streams.lease_epoch stays the fencing token.
CREATE TABLE instances (
    id          text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

DROP INDEX streams_held_lease;
ALTER TABLE streams DROP COLUMN lease_expires_at;
CREATE INDEX streams_held_created ON streams (created_at) WHERE state = 'held';

---- create above / drop below ----

DROP INDEX streams_held_created;
ALTER TABLE streams ADD COLUMN lease_expires_at timestamptz;
CREATE INDEX streams_held_lease ON streams (lease_expires_at) WHERE state = 'held';
DROP TABLE instances;
