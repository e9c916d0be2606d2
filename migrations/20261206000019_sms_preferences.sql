-- Text messages and each traveler's channels (issue 20): a user may give a mobile number and
-- choose, per message type, email and/or SMS (`notification_preferences`, read by
-- jobs/src/notify.rs: `{"default": ["email"], "airline-change": ["email", "sms"], …}`).
-- The outbox keeps one row per message and channel. Owned by jobs/src/notify.rs.

-- The account holder's mobile, E.164; personal data like users.email (erased with the user).
ALTER TABLE users ADD COLUMN phone text CHECK (phone ~ '^\+[1-9][0-9]{1,14}$');
ALTER TABLE users ADD COLUMN notification_preferences jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(notification_preferences) = 'object');

ALTER TABLE notifications
    ADD COLUMN channel text NOT NULL DEFAULT 'email' CHECK (channel IN ('email', 'sms')),
    -- Set before an SMS is handed to Twilio, which has no idempotency key: a row attempted
    -- and not sent is looked up at Twilio before it is sent again.
    ADD COLUMN attempted_at timestamptz,
    -- The provider refused this message for good (an invalid or unsubscribed number, no
    -- number): it is never retried; other messages go on.
    ADD COLUMN failed_at timestamptz,
    ADD COLUMN failure_code text CHECK (failure_code ~ '^[a-z0-9_]{1,64}$'),
    ADD CONSTRAINT notifications_sent_or_failed CHECK (sent_at IS NULL OR failed_at IS NULL),
    ADD CONSTRAINT notifications_failed_has_code CHECK ((failed_at IS NULL) = (failure_code IS NULL));
