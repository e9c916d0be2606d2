-- Limited kinds' ready jobs filed apart from the others (docs/limits.md, decision 38).
--
-- Migration 20261202000011 indexed every ready row twice: in the plain claim's index and in
-- the limited claim's (kind, priority, fair_rank, run_at, id) index, limited kind or not. That
-- cost every enqueue and every claim an index entry (enqueue -16 to -31 %, work -5 to -18 %
-- in docs/benchmarks.md), and the plain claim still walked past a throttled backlog of
-- limited jobs (`kind <> ALL(...)`) on every claim (-29 to -38 % with 5,000 throttled jobs).
--
-- `limited` says which claim a row belongs to: true for a kind with a fleet-wide limit,
-- budget or fairness key when it was enqueued. A kind whose settings changed since is
-- re-filed by the claims themselves (queue::job_fetch_available, queue::job_refile_unlimited),
-- so no row waits on a claim that will never look at it.
ALTER TABLE fleet_jobs ADD COLUMN limited boolean NOT NULL DEFAULT false;

-- JobFetchAvailable: `limited` leads, so the plain claim's `NOT limited` walk never touches a
-- limited row. Limited rows stay in this index (one more entry each) so that an older binary,
-- rolled back over this migration, still finds its claim on an index: it scans the ready rows
-- and sorts them, instead of reading the whole table with its history.
DROP INDEX fleet_jobs_fetch_available_idx;
CREATE INDEX fleet_jobs_fetch_available_idx
    ON fleet_jobs (limited, priority, run_at, id) WHERE state = 'available';

-- JobFetchLimited and KindListReady: limited rows only. Unlimited kinds' rows no longer pay
-- for an entry here.
DROP INDEX fleet_jobs_fetch_limited_idx;
CREATE INDEX fleet_jobs_fetch_limited_idx
    ON fleet_jobs (kind, priority, fair_rank, run_at, id) WHERE state = 'available' AND limited;

-- Existing ready rows of limited kinds (enqueued before this migration) keep `limited =
-- false` here: the migration cannot know the binary's kinds. The first plain claim that
-- reaches one re-files it.
