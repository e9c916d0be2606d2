-- JobReleaseElapsedKeys (queue::job_release_elapsed_keys): the cleaner frees the idempotency
-- keys of completed jobs whose post-completion window has ended. It found them by walking the
-- held-key index (`fleet_jobs_idempotency_key_held_idx`, every unfinished keyed job and every
-- open window) and reading each row's `key_held_until`: at 3,000 keyed jobs/s with 30 s
-- windows, 0.27-2.1 s per 10,000-row statement, up to 60 % of the database's time in
-- `fleet bench steady` (docs/benchmarks.md, "A realistic steady state").
--
-- Only completed jobs inside their window have a `key_held_until` (the outcome write sets it,
-- the release clears it), so this index holds the open windows alone, in the order they end:
-- a release reads exactly the rows it frees.
CREATE INDEX fleet_jobs_key_window_idx
    ON fleet_jobs (key_held_until) WHERE key_held_until IS NOT NULL;
