-- Fleet-wide limits (docs/limits.md). Additive: a binary without limits ignores all of it.

-- The value a kind's per-key limit and fairness count by (the kind's `limit_key` args field,
-- resolved at enqueue); NULL for kinds without one.
ALTER TABLE fleet_jobs ADD COLUMN limit_key text CHECK (length(limit_key) <= 512);
-- The job's turn within its key at enqueue: 1 + the key's unfinished jobs of the kind then.
-- Keyed claims take rank 1 of every key before rank 2 of any (round-robin by key); 0 for
-- jobs without a key, which leaves their order (priority, run_at, id) as it was.
ALTER TABLE fleet_jobs ADD COLUMN fair_rank integer NOT NULL DEFAULT 0;

-- JobFetchLimited: one kind's ready jobs in its fair order.
CREATE INDEX fleet_jobs_fetch_limited_idx
    ON fleet_jobs (kind, priority, fair_rank, run_at, id) WHERE state = 'available';

-- The fair rank at enqueue (a key's unfinished jobs) and the per-key running count of a claim.
CREATE INDEX fleet_jobs_limit_key_idx
    ON fleet_jobs (kind, limit_key)
    WHERE limit_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');

-- Rate budgets: one token bucket per named resource (a provider's API), shared by the fleet.
-- Rate and burst come from the claiming worker's settings; the row keeps only the state.
-- Tokens are spent by claims (JobFetchLimited) and emptied by a provider's 429 (BudgetBlock).
CREATE TABLE fleet_budgets (
    name          text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    -- tokens left at refilled_at (fractional: refill is continuous)
    tokens        double precision NOT NULL CHECK (tokens >= 0),
    refilled_at   timestamptz NOT NULL DEFAULT now(),
    -- a provider said "no more until": nothing is claimed before, and refill starts from it
    blocked_until timestamptz,
    -- why (a provider error text: operation, status, code; never PII)
    blocked_reason text,
    -- how many times a provider's 429 emptied the budget
    blocks        bigint NOT NULL DEFAULT 0
);
