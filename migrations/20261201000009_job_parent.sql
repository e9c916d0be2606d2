-- The job whose handler enqueued this one (NULL for jobs from outside a handler: the
-- scheduler, the ingress, operators). The console shows "enqueued by" and "enqueued". No
-- foreign key: a parent may be pruned before its children. Additive (safe to roll back over).
ALTER TABLE fleet_jobs ADD COLUMN parent_id bigint;

-- JobListChildren: the jobs one job enqueued.
CREATE INDEX fleet_jobs_parent_idx ON fleet_jobs (parent_id) WHERE parent_id IS NOT NULL;
