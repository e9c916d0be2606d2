-- A saved card Stripe detached from its customer (`payment_method.detached`, issue 19): the
-- card can no longer be charged, so the campaigns that would charge it need their user now,
-- not when a fare is found (jobs/src/kinds/card_detached.rs, jobs/src/campaign_health.rs).
ALTER TABLE payment_methods ADD COLUMN detached_at timestamptz;
