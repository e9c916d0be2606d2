-- fleet_job_fetch_limited (migration 24) returns at once when its kind has no ready row.
--
-- At the steady state (docs/benchmarks.md, "The steady state's claim rounds") a worker runs
-- about 700 claim rounds a second, and each calls this function for its limited kind, whose
-- few jobs are mostly claimed already: 1.4 rows a call, 0.26 ms of execution, more than the
-- plain claim's 0.19 ms for 7 rows. A call with nothing ready took the kind's advisory lock
-- (waiting behind any other worker's claim of the kind) and counted its running jobs to
-- claim nothing. Now a probe of fleet_jobs_fetch_limited_idx comes first; the rest of the
-- function is migration 24's, unchanged.

CREATE OR REPLACE FUNCTION fleet_job_fetch_limited(
    text, bigint, bigint, bigint, text[], text[], float8[], float8[], timestamptz, bigint,
    text, bigint, integer)
RETURNS TABLE (id bigint, kind text, args jsonb, attempt integer, max_attempts integer,
               claim_seq integer, trace_context jsonb, budget_wait_ms float8)
LANGUAGE plpgsql VOLATILE
-- The same plan pin as the plain claim (decisions 23 and 39): the ordered walk of the ready
-- indexes even on a table never analyzed.
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    -- Nothing ready of the kind: nothing to claim, so neither the kind's lock nor the count
    -- of its running jobs. (A row that becomes ready after this probe is the next round's,
    -- as it would be after the claim's own snapshot.)
    IF NOT EXISTS (
        SELECT 1 FROM fleet_jobs j
        WHERE j.state = 'available' AND j.limited AND j.kind = $1
          AND ($5 IS NULL OR j.queue = ANY($5))
    ) THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::jsonb, NULL::integer,
                            NULL::integer, NULL::integer, NULL::jsonb, NULL::float8;
        RETURN;
    END IF;
    -- A new budget starts full.
    IF cardinality($6) > 0 THEN
        INSERT INTO fleet_budgets (name, tokens, refilled_at)
        SELECT n, b, coalesce($9, now()) FROM unnest($6, $8) AS t(n, b)
        ON CONFLICT (name) DO NOTHING;
    END IF;
    IF $2 IS NOT NULL OR $3 IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock($13, hashtext($1));
    END IF;
    -- A new statement: its snapshot follows the lock.
    RETURN QUERY
    WITH clock AS MATERIALIZED (
        SELECT coalesce($9, now()) AS now
    ), running AS MATERIALIZED (
        SELECT j.limit_key FROM fleet_jobs j, clock
        WHERE j.state = 'running' AND j.kind = $1 AND j.lease_expires_at > clock.now
          AND ($2 IS NOT NULL OR $3 IS NOT NULL)
    ), budget AS MATERIALIZED (
        SELECT b.name, b.blocked_until, c.rate,
               CASE WHEN b.blocked_until > clock.now THEN 0::float8
                    ELSE least(c.burst, b.tokens + c.rate * greatest(0::float8,
                         extract(epoch FROM clock.now
                                 - greatest(b.refilled_at, coalesce(b.blocked_until, b.refilled_at)))::float8))
               END AS level
        FROM fleet_budgets b
        JOIN unnest($6, $7, $8) AS c(name, rate, burst) ON c.name = b.name
        CROSS JOIN clock
        ORDER BY b.name
        FOR UPDATE OF b
    ), room AS MATERIALIZED (
        SELECT CASE WHEN (SELECT count(*) FROM budget) < cardinality($6) THEN 0
                    ELSE greatest(0, least(
                        $4,
                        coalesce($2 - (SELECT count(*) FROM running), $4),
                        coalesce((SELECT floor(min(level))::bigint FROM budget), $4)))
               END AS n
    ), candidates AS MATERIALIZED (
        SELECT j.id, j.limit_key, j.priority, j.fair_rank, j.run_at
        FROM fleet_jobs j
        WHERE j.state = 'available' AND j.limited AND j.kind = $1
          AND ($5 IS NULL OR j.queue = ANY($5))
          AND (SELECT n FROM room) > 0
          AND NOT EXISTS (
              SELECT 1 FROM fleet_paused_kinds p
              WHERE p.kind = j.kind AND (p.drain_through_id IS NULL OR j.id > p.drain_through_id))
        ORDER BY j.priority, j.fair_rank, j.run_at, j.id
        LIMIT $10
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        SELECT c.id FROM (
            SELECT c.*, row_number() OVER (
                PARTITION BY c.limit_key ORDER BY c.priority, c.fair_rank, c.run_at, c.id) AS nth
            FROM candidates c
        ) c
        WHERE $3 IS NULL OR c.limit_key IS NULL
           OR c.nth + (SELECT count(*) FROM running r WHERE r.limit_key = c.limit_key) <= $3
        ORDER BY c.priority, c.fair_rank, c.run_at, c.id
        LIMIT (SELECT n FROM room)
    ), claimed AS (
        UPDATE fleet_jobs j
        SET state = 'running', attempt = j.attempt + 1, claim_seq = j.claim_seq + 1,
            lease_owner = $11,
            lease_expires_at = clock.now + $12 * interval '1 millisecond',
            attempted_at = clock.now
        FROM picked, clock WHERE j.id = picked.id
        RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.claim_seq,
                  j.trace_context
    ), spent AS (
        UPDATE fleet_budgets b
        SET tokens = greatest(0::float8, budget.level - (SELECT count(*) FROM claimed)),
            -- never backwards: a claim whose transaction began before the previous
            -- holder's (it waited for the row) must not refill that interval twice
            refilled_at = greatest(b.refilled_at, clock.now)
        FROM budget, clock WHERE b.name = budget.name
        RETURNING b.name
    ), wait AS (
        -- How long until every budget holds a whole token again, after this claim's
        -- debit: the caller need not try the kind before then. A blocked budget
        -- refills from zero at blocked_until.
        SELECT max(CASE
                   WHEN b.blocked_until > clock.now THEN
                        extract(epoch FROM b.blocked_until - clock.now)::float8 * 1000
                        + 1000 / nullif(b.rate, 0)
                   WHEN b.level - k.n >= 1 THEN 0::float8
                   ELSE (1 - (b.level - k.n)) * 1000 / nullif(b.rate, 0)
               END) AS ms
        FROM budget b, clock, (SELECT count(*) AS n FROM claimed) k
    )
    -- `spent` runs though nothing reads it: a data-modifying WITH runs once, to completion.
    SELECT claimed.id, claimed.kind, claimed.args, claimed.attempt, claimed.max_attempts,
           claimed.claim_seq, claimed.trace_context, w.ms
    FROM wait w LEFT JOIN claimed ON true;
END
$$;
