-- The engine's own operator audit (issue 18, decision 45): what operators did to the queue
-- (pause, resume, drain, replay, cancel, prune, enqueue) and to the schema (migrate). Written by
-- src/queue/audit.rs only, in the transaction of the change it records. The domain keeps
-- audit_log for its own changes (bookings, refunds, backfills, purges, seeds); `fleet audit` and
-- the console's audit page show both, merged by time.
--
-- Same shape as audit_log, so one entry type reads both. metadata carries ids, counts and
-- filters, never PII. No retention: a few rows per operator action.
CREATE TABLE fleet_audit (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor         text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action        text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    resource_type text NOT NULL,
    resource_id   text,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- AuditList: newest first, keyset on (created_at, id).
CREATE INDEX fleet_audit_created_at_idx ON fleet_audit (created_at, id);

-- The engine's rows written before this migration move over, so each table holds one owner's.
-- (A binary rolled back over this migration writes them to audit_log again and does not read
-- this table: its audit views miss what newer binaries recorded until it is rolled forward.)
WITH moved AS (
    DELETE FROM audit_log
    WHERE action IN ('kind.pause', 'kind.resume', 'kind.drain', 'job.replay', 'job.cancel',
                     'job.prune', 'job.enqueue', 'schema.migrate')
    RETURNING id, actor, action, resource_type, resource_id, metadata, created_at
)
INSERT INTO fleet_audit (id, actor, action, resource_type, resource_id, metadata, created_at)
SELECT id, actor, action, resource_type, resource_id, metadata, created_at FROM moved;
