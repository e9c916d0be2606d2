-- A refund's life after it is created (issue 20): Stripe moves a refund from `pending` to
-- `succeeded`, or to `failed` days later (the card was closed); `refund_reconcile` records what
-- Stripe says. Owned by jobs/src/kinds/refund_compensation.rs.

-- Stripe's failure_reason code (lost_or_stolen_card, expired_or_canceled_card, unknown, …):
-- a code, never free text.
ALTER TABLE refunds ADD COLUMN failure_reason text CHECK (failure_reason ~ '^[a-z_]{1,64}$');

-- RefundListUnsettled: the sweep's refunds still pending, oldest update first.
CREATE INDEX refunds_unsettled_idx ON refunds (updated_at)
    WHERE status IN ('pending', 'requires_action');
