-- The fleet's job queue. Every statement that reads or writes these tables lives in
-- src/queue.rs; docs/architecture.md draws the state machine.

-- scheduled: waiting for run_at (first attempt); available: ready now; running: claimed under a
-- lease; retryable: failed, waiting for its backoff; completed / cancelled / dead: final.
CREATE TYPE fleet_job_state AS ENUM (
    'scheduled', 'available', 'running', 'retryable', 'completed', 'cancelled', 'dead'
);

CREATE TABLE fleet_jobs (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (length(kind) BETWEEN 1 AND 128),
    queue            text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
    -- ids, never PII (DEVELOPERS.md)
    args             jsonb NOT NULL,
    state            fleet_job_state NOT NULL,
    priority         smallint NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- attempts charged so far; the running attempt's number while running
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    -- bumped by every claim, never lowered: (id, claim_seq) is the fencing token every
    -- post-claim write must match
    claim_seq        integer NOT NULL DEFAULT 0,
    idempotency_key  text CHECK (length(idempotency_key) <= 512),
    -- whether the key is taken: true while unfinished, and after completion until key_held_until
    key_held         boolean NOT NULL DEFAULT false,
    key_held_until   timestamptz,
    -- one object per failed attempt: {at, attempt, class, message}
    errors           jsonb NOT NULL DEFAULT '[]'::jsonb,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz,
    finished_at      timestamptz,
    CONSTRAINT fleet_jobs_finished_iff_final
        CHECK ((state IN ('completed', 'cancelled', 'dead')) = (finished_at IS NOT NULL)),
    CONSTRAINT fleet_jobs_lease_iff_running
        CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT fleet_jobs_key_held_needs_key
        CHECK (NOT key_held OR idempotency_key IS NOT NULL),
    CONSTRAINT fleet_jobs_errors_is_array
        CHECK (jsonb_typeof(errors) = 'array')
);

-- JobFetchAvailable: only ready rows are indexed, so finished history never enters the scan.
CREATE INDEX fleet_jobs_fetch_available_idx
    ON fleet_jobs (priority, run_at, id) WHERE state = 'available';

-- JobPromoteDue: scheduled and retryable rows coming due.
CREATE INDEX fleet_jobs_promote_due_idx
    ON fleet_jobs (run_at) WHERE state IN ('scheduled', 'retryable');

-- JobRescueExpired: running rows whose lease ran out.
CREATE INDEX fleet_jobs_rescue_expired_idx
    ON fleet_jobs (lease_expires_at) WHERE state = 'running';

-- Idempotency: one holder per kind+key, race-free under concurrent enqueuers.
CREATE UNIQUE INDEX fleet_jobs_idempotency_key_held_idx
    ON fleet_jobs (kind, idempotency_key) WHERE key_held;

-- The kill switch: workers never claim a job whose kind is listed here.
CREATE TABLE fleet_paused_kinds (
    kind      text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL,
    reason    text NOT NULL DEFAULT ''
);
