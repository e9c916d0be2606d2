-- Live workers. Each `fleet worker` registers at start, renews `last_seen_at` with its
-- heartbeat and removes its row on a clean stop; a row whose heartbeat stopped (SIGKILL, OOM,
-- a lost host) is deleted by any worker's maintenance once `worker.forget_after` has passed.
-- Read by `fleet workers`, `fleet queue drain` (does anyone serve these kinds?) and the
-- console. Additive: a binary that predates it never reads it (safe to roll back over).
CREATE TABLE fleet_workers (
    -- The lease owner id written on the jobs it claims: host:pid:random.
    id           text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    host         text NOT NULL,
    pid          integer NOT NULL,
    -- The binary's version (Cargo package version and git commit when known).
    version      text NOT NULL,
    -- Queues it claims from; empty = every queue.
    queues       text[] NOT NULL,
    -- Kinds it runs.
    kinds        text[] NOT NULL,
    concurrency  integer NOT NULL CHECK (concurrency >= 1),
    -- Claims it holds now, and jobs it completed since start (for rates).
    held         integer NOT NULL DEFAULT 0,
    completed    bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX fleet_workers_last_seen_idx ON fleet_workers (last_seen_at);

-- Which claim wrote a job's latest outcome. A worker whose outcome write committed but whose
-- connection dropped before the acknowledgement retries the write; the fence refuses it, and
-- this column tells "my own outcome is already there" from "someone else took the job".
-- Additive and nullable: older binaries never set it (safe to roll back over).
ALTER TABLE fleet_jobs ADD COLUMN outcome_claim_seq integer;
