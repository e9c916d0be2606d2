-- Operator console sessions (src/console/auth.rs owns this table). A login inserts a row; the
-- cookie carries the random token, the table only its SHA-256, so a read of the database
-- yields no usable session. The user's role is not stored: it is read from the configuration
-- at every request, so removing a user or changing a role takes effect at once. Rows past
-- expires_at are refused and deleted at the next login. Additive: a binary that predates it
-- never reads it (safe to roll back over; sessions are lost, users sign in again).
CREATE TABLE fleet_console_sessions (
    token_sha256 bytea PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    username     text NOT NULL CHECK (length(username) BETWEEN 1 AND 64),
    -- The synchronizer token every state-changing request of this session must carry.
    csrf_token   text NOT NULL CHECK (length(csrf_token) = 64),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CONSTRAINT fleet_console_sessions_expiry_after_creation CHECK (expires_at > created_at)
);

CREATE INDEX fleet_console_sessions_expires_idx ON fleet_console_sessions (expires_at);
