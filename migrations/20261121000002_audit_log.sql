-- Every operator action, every sensitive read/write, every charge and refund (BRIEF §2).
-- metadata carries ids, counts and filters, never PII.
CREATE TABLE audit_log (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor         text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action        text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    resource_type text NOT NULL,
    resource_id   text,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);

-- Channel `fleet_cancel` (payload: comma-separated job ids) tells workers to stop the
-- handlers of jobs an operator cancelled; see src/queue.rs.
