-- Forwarded credentials sealed at rest. A stream's header values and its URL's query string
-- are kept in credentials_sealed, AES-256-GCM under the operator's key (--secret-key-file),
-- with the stream id as associated data: a value copied to another row does not open. The
-- first 5 bytes name the key (0x01 and its 4-byte id), so a rotation finds the rows not yet
-- under the primary key. url then holds the URL without its query, and headers stays '{}'.
--
-- Rows written before (or by an instance run with --insecure-plaintext-credentials) have no
-- sealed value and keep the old form: headers in clear, the query in url. They keep working;
-- `pushproxy keys rotate` seals them.
ALTER TABLE streams ADD COLUMN credentials_sealed bytea;

-- A stream that ends loses its forwarded credentials at once, whichever statement ends it.
CREATE FUNCTION pushproxy_drop_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.credentials_sealed := NULL;
    NEW.headers := '{}';
    NEW.url := split_part(NEW.url, '?', 1);
    RETURN NEW;
END
$$;

CREATE TRIGGER streams_drop_credentials BEFORE UPDATE OF state ON streams
    FOR EACH ROW WHEN (NEW.state <> 'held') EXECUTE FUNCTION pushproxy_drop_credentials();

---- create above / drop below ----

DROP TRIGGER streams_drop_credentials ON streams;
DROP FUNCTION pushproxy_drop_credentials();
-- Sealed values cannot be turned back into clear ones in SQL: the streams that had them fail.
UPDATE streams SET state = 'failed', state_reason = 'forwarded credentials dropped by a schema downgrade',
    lease_owner = NULL, connected = false, closed_at = now(), updated_at = now()
WHERE credentials_sealed IS NOT NULL AND state = 'held';
ALTER TABLE streams DROP COLUMN credentials_sealed;
