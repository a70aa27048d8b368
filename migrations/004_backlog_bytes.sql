-- The stored size of each stream's backlog (the bytes of its queued events' ids, types and
-- data), kept up to date by every statement that adds or deletes events, so that operators'
-- gauges cost one sum over streams instead of a scan of the events.
ALTER TABLE streams ADD COLUMN backlog_bytes bigint NOT NULL DEFAULT 0;

UPDATE streams s SET backlog_bytes = b.n
FROM (SELECT stream_id, sum(octet_length(last_event_id) + octet_length(type) + octet_length(data)) AS n
      FROM events GROUP BY stream_id) b
WHERE b.stream_id = s.id;

---- create above / drop below ----

ALTER TABLE streams DROP COLUMN backlog_bytes;
