-- One row per cron tick that was enqueued, written in the same transaction as the job: any
-- number of `fleet scheduler` processes produce exactly one job per (schedule, tick).
CREATE TABLE fleet_cron_ticks (
    schedule    text NOT NULL CHECK (length(schedule) BETWEEN 1 AND 128),
    tick_at     timestamptz NOT NULL,
    job_id      bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick_at)
);
