-- Travelers' data-rights requests (issue 19, GDPR arts. 15, 17 and 20): erasure of an account
-- and export of everything held about it, asked for by an operator (`fleet traveler erase|
-- export`, the console) or by the product (a signed `POST /webhooks/product`). Each request is
-- worked by one job (`account_erasure`, `data_export`) keyed by the request, so asking twice
-- while a request is open returns the open one and its job. Owned by jobs/src/data_rights.rs.
CREATE TABLE data_requests (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('erasure', 'export')),
    -- The traveler. No foreign key: the request is the record that an erasure happened and
    -- outlives the user row. A random id, which names nobody once the user row is gone.
    user_id         uuid NOT NULL,
    source          text NOT NULL CHECK (source IN ('operator', 'product')),
    -- The operator's name, or `product`.
    requested_by    text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    -- The product's own id of the request: its retries of the same request find this row.
    external_id     text UNIQUE CHECK (external_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'completed', 'cancelled')),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    -- The law's deadline: one month (art. 12(3)), counted as 30 days.
    due_at          timestamptz NOT NULL DEFAULT now() + interval '30 days',
    -- Why an open request is not done yet, as a code shown to operators (booking_in_flight,
    -- refund_owed, stripe_unavailable, email_unavailable).
    waiting_on      text CHECK (waiting_on ~ '^[a-z_]{1,64}$'),
    completed_at    timestamptz,
    -- What was done: counts only, never personal data.
    outcome         jsonb CHECK (jsonb_typeof(outcome) = 'object'),
    -- An export's document, sealed (jobs::pii, this row's id as associated data) between its
    -- assembly and its delivery, so a retried delivery sends the same bytes; NULL once sent.
    document_enc    bytea CHECK (octet_length(document_enc) > 12 + 16),
    encryption_key_version integer CHECK (encryption_key_version >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_requests_open_iff_not_completed
        CHECK ((status = 'open') = (completed_at IS NULL)),
    CONSTRAINT data_requests_document_has_key_version
        CHECK (document_enc IS NULL OR encryption_key_version IS NOT NULL),
    CONSTRAINT data_requests_document_only_while_open
        CHECK (document_enc IS NULL OR status = 'open'),
    CONSTRAINT data_requests_document_is_an_export
        CHECK (document_enc IS NULL OR kind = 'export')
);

-- One open request per traveler and kind: a second ask while one is open is the same request.
CREATE UNIQUE INDEX data_requests_one_open_idx ON data_requests (user_id, kind)
    WHERE status = 'open';

-- DataRequestsOpen (console, `fleet traveler requests`): oldest first.
CREATE INDEX data_requests_open_idx ON data_requests (requested_at) WHERE status = 'open';

-- The erasure invariant (`fleet check`): completed erasures, by user.
CREATE INDEX data_requests_erased_idx ON data_requests (user_id)
    WHERE kind = 'erasure' AND status = 'completed';

-- AuditOfResources: the audit trail of given records (a traveler's export lists what was done
-- to their campaigns, bookings, profiles and cards; the booking page its entries).
CREATE INDEX audit_log_resource_idx ON audit_log (resource_type, resource_id, created_at);
