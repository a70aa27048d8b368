-- Wake-ups: the durable outbox of silent pushes.
--
-- A wake-up row is written in the same transaction as the events that call for it, so a crash
-- between "events committed" and "push sent" still sends the push after restart. At most one
-- wake-up per device is outstanding (pending or sending); sent, skipped and failed rows stay
-- as the device's wake-up history (trimmed by age).

-- The highest seq written to a live reader: events up to it need no wake-up even when they
-- were not acknowledged yet.
ALTER TABLE streams ADD COLUMN delivered_seq bigint NOT NULL DEFAULT 0;
-- Event types that skip the debounce and take the platform's high-priority path.
ALTER TABLE streams ADD COLUMN urgent_events text[] NOT NULL DEFAULT '{}';

ALTER TABLE devices ADD COLUMN last_push_at timestamptz;
ALTER TABLE devices ADD COLUMN last_push_outcome text NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN last_push_error text NOT NULL DEFAULT '';
-- Set when a push was accepted; cleared when the device reads. While set, no other push is
-- sent until the re-wake interval has passed.
ALTER TABLE devices ADD COLUMN awaiting_since timestamptz;
-- The platform asked us to slow down for this device until then.
ALTER TABLE devices ADD COLUMN throttled_until timestamptz;

CREATE TABLE wakeups (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id         uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'sending', 'sent', 'skipped', 'failed')),
    urgent            boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL,
    due_at            timestamptz NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    sent_at           timestamptz,
    finished_at       timestamptz,
    -- sent, token-gone, throttled, retry, credentials, invalid, awake, nothing-pending, dead
    outcome           text NOT NULL DEFAULT '',
    error             text NOT NULL DEFAULT '',
    push_id           text NOT NULL DEFAULT '',
    pending_events    bigint NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX wakeups_one_outstanding ON wakeups (device_id) WHERE state IN ('pending', 'sending');
CREATE INDEX wakeups_due ON wakeups (due_at) WHERE state = 'pending';
CREATE INDEX wakeups_sending ON wakeups (lease_expires_at) WHERE state = 'sending';
CREATE INDEX wakeups_device_sent ON wakeups (device_id, sent_at) WHERE state = 'sent';
CREATE INDEX wakeups_finished ON wakeups (finished_at);

---- create above / drop below ----

DROP TABLE wakeups;
ALTER TABLE devices DROP COLUMN throttled_until;
ALTER TABLE devices DROP COLUMN awaiting_since;
ALTER TABLE devices DROP COLUMN last_push_error;
ALTER TABLE devices DROP COLUMN last_push_outcome;
ALTER TABLE devices DROP COLUMN last_push_at;
ALTER TABLE streams DROP COLUMN urgent_events;
ALTER TABLE streams DROP COLUMN delivered_seq;
