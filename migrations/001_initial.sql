-- Devices: push addresses. Streams handed off with the same (platform, token) belong to one device.
CREATE TABLE devices (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    platform     text NOT NULL CHECK (platform IN ('apns', 'fcm')),
    token        text NOT NULL,
    topic        text NOT NULL DEFAULT '',
    environment  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    dead_at      timestamptz,
    dead_reason  text,
    UNIQUE (platform, token)
);

-- Streams: one upstream EventSource held on a device's behalf.
--
-- Sequence numbers: every queued event gets seq = head_seq + 1 within its stream. Events with
-- seq <= floor_seq are gone (acknowledged by a reader, or trimmed when the backlog overflowed);
-- the backlog is head_seq - floor_seq events. acked_seq/acked_id record the reader's last
-- acknowledgement (the Last-Event-ID it presented), so a reader that comes back with the same id
-- resumes without a gap signal.
CREATE TABLE streams (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id         uuid REFERENCES devices (id) ON DELETE SET NULL,
    url               text NOT NULL,
    headers           jsonb NOT NULL DEFAULT '{}',
    token_hash        bytea NOT NULL,
    state             text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'closed', 'failed')),
    state_reason      text NOT NULL DEFAULT '',
    -- Upstream resume point: the last event ID string to send as Last-Event-ID on reconnect,
    -- committed in the same transaction as the events it covers.
    resume_id         bytea NOT NULL DEFAULT '',
    retry_ms          bigint,
    head_seq          bigint NOT NULL DEFAULT 0,
    floor_seq         bigint NOT NULL DEFAULT 0,
    acked_seq         bigint NOT NULL DEFAULT 0,
    acked_id          bytea NOT NULL DEFAULT '',
    -- Upstream health, for the API and operators.
    upstream_status   integer NOT NULL DEFAULT 0,
    connected         boolean NOT NULL DEFAULT false,
    connects          bigint NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT '',
    last_error_at     timestamptz,
    -- Leases: which instance holds the upstream. lease_epoch is the fencing token: every write
    -- by a holder names the epoch it claimed with, and a write under an older epoch changes nothing.
    lease_owner       text,
    lease_expires_at  timestamptz,
    lease_epoch       bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz
);

CREATE INDEX streams_device_id ON streams (device_id);
CREATE INDEX streams_held_lease ON streams (lease_expires_at) WHERE state = 'held';
CREATE INDEX streams_lease_owner ON streams (lease_owner) WHERE state = 'held';

-- Queued events, byte-exact (bytea: data may hold U+0000, which text cannot).
-- last_event_id is the effective last event ID after the event: what a browser connected to
-- the origin reports as MessageEvent.lastEventId.
-- No foreign key to streams: it would cost a lookup per inserted row on the ingest path;
-- events are deleted with their stream by the store.
CREATE TABLE events (
    stream_id      uuid NOT NULL,
    seq            bigint NOT NULL,
    last_event_id  bytea NOT NULL,
    type           bytea NOT NULL,
    data           bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, seq)
);

-- Open event readers. A device is awake while it has an unexpired reader on any stream.
-- Instances refresh expires_at for their own readers; a crashed instance's rows expire.
CREATE TABLE readers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    stream_id    uuid NOT NULL,
    device_id    uuid,
    instance_id  text NOT NULL,
    opened_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX readers_device_id ON readers (device_id, expires_at);
CREATE INDEX readers_instance_id ON readers (instance_id);

---- create above / drop below ----

DROP TABLE readers;
DROP TABLE events;
DROP TABLE streams;
DROP TABLE devices;
