-- Dashboard sessions: a signed-in browser holds a random session id in its cookie; the
-- database keeps only its SHA-256, when it expires, and a mark of the admin token it was
-- opened with (an HMAC under the token), so that changing the token ends every session.
-- Signing out deletes the row: every instance sharing the database stops accepting it.
-- Older code never reads the table.
-- pushproxy:compatible-with 1
CREATE TABLE admin_sessions (
    id_hash    bytea PRIMARY KEY,
    token_mark bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX admin_sessions_expires_at ON admin_sessions (expires_at);

---- create above / drop below ----

DROP TABLE admin_sessions;
