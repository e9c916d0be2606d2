-- The console's doors (issue 21): failed sign-ins shared by every `fleet serve` process, and
-- sessions that end when idle. Owned by src/console/auth.rs.

-- One row per failed sign-in, kept for the limiter's window. The name typed is stored only as
-- its SHA-256 (it may be a password typed in the wrong field); `known_user` says whether it
-- was a configured user's, so guessing unknown names from an address can be limited without
-- ever locking out the colleagues who sign in from that address.
CREATE TABLE fleet_console_login_failures (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_sha256 bytea NOT NULL CHECK (octet_length(user_sha256) = 32),
    address     inet NOT NULL,
    known_user  boolean NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fleet_console_login_failures_user_idx
    ON fleet_console_login_failures (user_sha256, failed_at);
CREATE INDEX fleet_console_login_failures_address_idx
    ON fleet_console_login_failures (address, failed_at);

-- A session also ends after console.session_idle without a request.
ALTER TABLE fleet_console_sessions
    ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX fleet_console_sessions_user_idx ON fleet_console_sessions (username, created_at);
