-- Checkpoints of backfills (jobs::backfill). A batch's row changes and the checkpoint advance
-- commit in one transaction, so a crash redoes at most the uncommitted batch: every row is
-- done once per run.
CREATE TABLE backfills (
    name        text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 100),
    -- last row id done in this run (rows are walked in id order); NULL: not started
    cursor      uuid,
    done_rows   bigint NOT NULL DEFAULT 0 CHECK (done_rows >= 0),
    -- rows in the table when the run started (progress denominator)
    total_rows  bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
