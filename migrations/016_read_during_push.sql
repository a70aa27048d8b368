-- pushproxy:compatible-with 15
--
-- A device that reads while its push is still being sent (the push arrives, the app wakes
-- and fetches before the sender has recorded the push as sent) answered that push: the
-- wake-up's claim time (wakeups.claimed_at) and the device's last read while a push was
-- outstanding or in flight (devices.read_at), both on the database's clock, let the sender
-- see it. Before, recording the push marked the device as awaiting an answer it had given,
-- and its next push waited for the re-wake interval (--wake-rewake) instead of the debounce.
-- Adds two nullable columns, which code of version 15 neither reads nor needs.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS read_at timestamptz;
ALTER TABLE wakeups ADD COLUMN IF NOT EXISTS claimed_at timestamptz;

---- create above / drop below ----

ALTER TABLE wakeups DROP COLUMN claimed_at;
ALTER TABLE devices DROP COLUMN read_at;
