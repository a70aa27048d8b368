-- pushproxy:compatible-with 5
-- Acknowledgement moves a stream's floor and nothing else: the acknowledged events' rows
-- stay until a background reclaimer deletes them in batches, so that no request or commit
-- waits on a row lock held while thousands of rows are deleted. events_reclaim is that
-- reclaimer's queue: events of stream_id with seq <= upto_seq are garbage (readers never read
-- at or below a stream's floor_seq).
CREATE TABLE events_reclaim (
    stream_id  uuid PRIMARY KEY,
    upto_seq   bigint NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT now()
);
-- The floor a commit found before it trimmed (written by every commit, read back by it).
ALTER TABLE streams ADD COLUMN trim_from bigint NOT NULL DEFAULT 0;

-- Notifications go to the instances that have a reader open on the stream, each on its own
-- channel (readers.channel; '' for readers opened by an older release, which listens on
-- pushproxy_events and wants one stream id per notification).
ALTER TABLE readers ADD COLUMN channel text NOT NULL DEFAULT '';
-- readers_stream_id (stream_id, expires_at), made by migration 7, serves the lookups by stream.

-- pushproxy_notify_readers tells the instances with an open reader of any of ids that those
-- streams have news: at most one notification per instance per 200 streams. It returns the
-- number of ids (0 for NULL), so that a statement notifying for the rows it changed can
-- count them. It notifies
-- nobody while the notification queue is over half full (a listener stalled): readers then
-- catch up by their instance's slow poll, and commits never fail on a full queue.
-- (plpgsql: PERFORM runs the query to its last row; a void SQL function could stop at its
-- first. No text sorting: it costs milliseconds for hundreds of ids.)
CREATE FUNCTION pushproxy_notify_readers(ids text[]) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    IF pg_notification_queue_usage() >= 0.5 THEN
        RETURN coalesce(cardinality(ids), 0);
    END IF;
    PERFORM pg_notify(ch, string_agg(id::text, ','))
    FROM (
        SELECT ch, id, CASE WHEN ch = 'pushproxy_events' THEN rn ELSE rn / 200 END AS chunk
        FROM (
            SELECT ch, id, row_number() OVER (PARTITION BY ch) - 1 AS rn
            FROM (
                SELECT DISTINCT CASE WHEN r.channel = '' THEN 'pushproxy_events' ELSE r.channel END AS ch, r.stream_id AS id
                FROM readers r
                WHERE r.stream_id = ANY (ids::uuid[])
            ) d
        ) n
    ) c
    GROUP BY ch, chunk;
    RETURN coalesce(cardinality(ids), 0);
END
$$;
---- create above / drop below ----
DROP FUNCTION pushproxy_notify_readers(text[]);
ALTER TABLE readers DROP COLUMN channel;
ALTER TABLE streams DROP COLUMN trim_from;
DROP TABLE events_reclaim;
