-- Pausing a cron schedule (issue 21): a paused schedule's ticks are claimed as usual, so
-- exactly one scheduler decides each, but recorded as skipped instead of enqueued; a resume
-- does not replay them (a scan or a purge only needs its next run). Owned by src/queue/cron.rs.
CREATE TABLE fleet_paused_schedules (
    schedule  text PRIMARY KEY CHECK (length(schedule) BETWEEN 1 AND 128),
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL CHECK (length(paused_by) BETWEEN 1 AND 200),
    reason    text NOT NULL DEFAULT '' CHECK (length(reason) <= 500)
);

-- Why a claimed tick enqueued no job ('paused'); NULL for a tick that enqueued one.
ALTER TABLE fleet_cron_ticks ADD COLUMN skipped text CHECK (skipped IN ('paused'));
