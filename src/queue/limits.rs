//! Fleet-wide limits in the claim (docs/limits.md): the serialized per-kind claim of limited
//! kinds, the rate budgets (`fleet_budgets`, token buckets), and the reads that show what
//! waits on a limit.
//!
//! **Why a limit is never exceeded.** A kind with a fleet-wide or per-key concurrency limit
//! is claimed only by [`job_fetch_limited`], which first takes a transaction-level advisory
//! lock on the kind and only then, in a *new statement* (so with a snapshot taken after the
//! lock), counts the kind's running rows under a live lease and claims at most what is left.
//! Both statements run inside one call of a `VOLATILE` PL/pgSQL function
//! (`fleet_job_fetch_limited`, whose statements each take a fresh snapshot under `READ
//! COMMITTED`), so the claim is one round trip. The lock is released at commit, after the
//! claimed rows are visible, so the next claimer of that kind counts them. Everything else
//! only lowers the count (outcomes, rescues, cancels). Two workers racing for the last slot
//! therefore queue on the lock, and the second one sees the first one's claim.
//!
//! **Budgets.** A budget's row is locked `FOR UPDATE` by every claim that spends it (in name
//! order, so two claims never wait on each other's rows in a cycle), refilled from the elapsed
//! time, and debited by the number of jobs claimed, in the claim's own transaction: a job is
//! claimed only with a token in hand, never claimed to snooze. A provider's 429 empties the
//! row until the provider's reset ([`budget_block`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, Row};

use super::{
    job::{begin_pinned, claimed_from_row},
    ClaimedJob, Now,
};
use crate::registry::BudgetSpec;

/// The advisory lock class (first key) of the per-kind claim lock; the second key is
/// `hashtext(kind)`. A hash collision between two kinds only serializes their claims.
const KIND_LOCK_CLASS: i32 = 0x666c_6d74; // "flmt"

/// Parameters of [`job_fetch_limited`].
#[derive(Debug, Clone)]
pub struct LimitedFetch<'a> {
    /// The one kind claimed.
    pub kind: &'a str,
    /// Queues to serve; `None` = all.
    pub queues: Option<&'a [String]>,
    /// Most running jobs of the kind fleet-wide.
    pub global_concurrency: Option<i64>,
    /// Most running jobs per `limit_key` value fleet-wide.
    pub key_concurrency: Option<i64>,
    /// Budgets every claimed job spends a token of, sorted by name.
    pub budgets: &'a [BudgetSpec],
    /// Most jobs to claim (the worker's free slots for the kind).
    pub limit: i64,
    /// Lease owner (worker id).
    pub owner: &'a str,
    /// Lease length.
    pub lease: Duration,
    /// The claim's clock; `None` = the database's.
    pub now: Now,
}

/// JobFetchLimited: claims up to `limit` ready jobs of one kind such that, fleet-wide, the
/// kind's running jobs stay within `global_concurrency`, each key's within
/// `key_concurrency`, and every budget in `budgets` has a token per claimed job (debited
/// here). Jobs are taken in (priority, fair_rank, run_at, id) order: rank 1 of every key
/// before rank 2 of any, so keys take turns. Paused kinds and drain cutoffs apply as in
/// [`super::job_fetch_available`]. See the module docs for why no limit can be exceeded.
///
/// Cost: one round trip (one autocommit statement; inside an open transaction, one statement
/// of it, and the lock is then held to that transaction's commit). A kind with no ready row
/// costs one probe of its ready index, and takes no lock. The advisory lock
/// serializes the claims of one kind (not of other kinds), and a budget's row serializes the
/// claims of the kinds that spend it. The plan is pinned to the ready indexes the same way as
/// the plain claim (the function's own settings).
pub async fn job_fetch_limited(
    conn: &mut PgConnection,
    p: &LimitedFetch<'_>,
) -> Result<LimitedClaim, sqlx::Error> {
    if p.limit <= 0 {
        return Ok(LimitedClaim {
            jobs: Vec::new(),
            budget_wait: None,
        });
    }
    let names: Vec<&str> = p.budgets.iter().map(|b| b.name.as_str()).collect();
    let rates: Vec<f64> = p.budgets.iter().map(|b| b.per_second).collect();
    let bursts: Vec<f64> = p.budgets.iter().map(|b| b.burst).collect();
    // Keyed kinds look a little past `limit` so that a key at its limit does not hide the
    // next key's jobs; the fair order keeps a key's jobs spread out, so this stays small.
    let window = if p.key_concurrency.is_some() {
        p.limit * 4 + 64
    } else {
        p.limit
    };
    // One statement: the function takes the lock, then claims in a statement of its own whose
    // snapshot follows the lock (migrations/20261207000024_fetch_limited_function.sql; the
    // probe that returns at once when nothing is ready, migration 25). As
    // an autocommit statement it commits, and so releases the lock, before it answers.
    let rows = sqlx::query(
        "SELECT * FROM fleet_job_fetch_limited($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(p.kind)
    .bind(p.global_concurrency)
    .bind(p.key_concurrency)
    .bind(p.limit)
    .bind(p.queues)
    .bind(&names)
    .bind(&rates)
    .bind(&bursts)
    .bind(p.now)
    .bind(window)
    .bind(p.owner)
    .bind(p.lease.as_millis() as i64)
    .bind(KIND_LOCK_CLASS)
    .fetch_all(&mut *conn)
    .await?;
    let wait_ms: Option<f64> = rows.first().and_then(|r| r.get("budget_wait_ms"));
    Ok(LimitedClaim {
        jobs: rows
            .iter()
            .filter(|r| r.get::<Option<i64>, _>(0).is_some())
            .map(claimed_from_row)
            .collect(),
        budget_wait: wait_ms
            .filter(|ms| *ms > 0.0 && ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    })
}

/// KindLockHold: takes `kind`'s claim lock for the rest of `conn`'s open transaction, as a
/// limited claim of the kind holds it while it counts and claims: for tests that hold another
/// claimer mid-claim.
#[cfg(any(test, feature = "testkit"))]
pub async fn kind_lock_hold(conn: &mut PgConnection, kind: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(KIND_LOCK_CLASS)
        .bind(kind)
        .execute(conn)
        .await
        .map(|_| ())
}

/// What [`job_fetch_limited`] claimed, and when its budgets next have room.
#[derive(Debug)]
pub struct LimitedClaim {
    /// The claimed jobs.
    pub jobs: Vec<ClaimedJob>,
    /// After this claim's debit, how long until every budget the kind spends holds a whole
    /// token again (`None`: one is there now, or the kind spends none). Until then a claim of
    /// the kind can only come back empty, so the caller need not try: a kind throttled by its
    /// budget costs nothing between refills.
    pub budget_wait: Option<Duration>,
}

/// KindListReady: of `kinds`, those with at least one ready job filed as limited on `queues`
/// (one probe of
/// `fleet_jobs_fetch_limited_idx` each): the worker runs [`job_fetch_limited`] only for these.
/// Pinned to the index like the claims (on a never-analyzed table the planner would otherwise
/// build a bitmap of every ready job of the kind).
pub async fn kind_list_ready(
    conn: &mut PgConnection,
    kinds: &[String],
    queues: Option<&[String]>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = begin_pinned(conn).await?;
    let ready = sqlx::query_scalar(
        r#"
        SELECT k FROM unnest($1::text[]) AS k
        WHERE EXISTS (
            SELECT 1 FROM fleet_jobs j
            WHERE j.kind = k AND j.state = 'available' AND j.limited
              AND ($2::text[] IS NULL OR j.queue = ANY($2)))
        "#,
    )
    .bind(kinds)
    .bind(queues)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ready)
}

/// BudgetBlock: a provider refused for its rate limit: budget `name` is empty for the whole
/// fleet until `after` from now (a later block already recorded is kept), and refills from
/// zero after that. `reason` is the provider error's text (no PII). Returns the time the
/// budget is blocked until.
pub async fn budget_block(
    conn: impl PgExecutor<'_>,
    name: &str,
    after: Duration,
    reason: &str,
    now: Now,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        r#"
        INSERT INTO fleet_budgets AS b (name, tokens, refilled_at, blocked_until, blocked_reason, blocks)
        VALUES ($1, 0, coalesce($4, now()),
                coalesce($4, now()) + $2 * interval '1 millisecond', $3, 1)
        ON CONFLICT (name) DO UPDATE SET
            tokens = 0,
            refilled_at = greatest(b.refilled_at, excluded.refilled_at),
            blocked_until = greatest(b.blocked_until, excluded.blocked_until),
            blocked_reason = excluded.blocked_reason,
            blocks = b.blocks + 1
        RETURNING b.blocked_until
        "#,
    )
    .bind(name)
    .bind(after.as_millis().min(i64::MAX as u128) as i64)
    .bind(reason)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// A budget as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetState {
    /// Its name.
    pub name: String,
    /// Tokens per second (this process's settings).
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
    /// Tokens available now (0 while blocked).
    pub level: f64,
    /// A provider's 429 emptied it until then (only while in the future).
    pub blocked_until: Option<DateTime<Utc>>,
    /// The provider's refusal (operation, status, code).
    pub blocked_reason: Option<String>,
    /// How many times a provider's 429 emptied it.
    pub blocks: i64,
}

/// BudgetList: the budgets in `specs` as they stand at `now` (a budget never spent is full).
pub async fn budget_list(
    conn: impl PgExecutor<'_>,
    specs: &[BudgetSpec],
    now: Now,
) -> Result<Vec<BudgetState>, sqlx::Error> {
    let names: Vec<&str> = specs.iter().map(|b| b.name.as_str()).collect();
    let rates: Vec<f64> = specs.iter().map(|b| b.per_second).collect();
    let bursts: Vec<f64> = specs.iter().map(|b| b.burst).collect();
    let rows = sqlx::query(
        r#"
        WITH clock AS (SELECT coalesce($4::timestamptz, now()) AS now)
        SELECT c.name, c.rate, c.burst,
               CASE WHEN b.name IS NULL THEN c.burst
                    WHEN b.blocked_until > clock.now THEN 0::float8
                    ELSE least(c.burst, b.tokens + c.rate * greatest(0::float8,
                         extract(epoch FROM clock.now
                                 - greatest(b.refilled_at, coalesce(b.blocked_until, b.refilled_at)))::float8))
               END,
               CASE WHEN b.blocked_until > clock.now THEN b.blocked_until END,
               CASE WHEN b.blocked_until > clock.now THEN b.blocked_reason END,
               coalesce(b.blocks, 0)
        FROM unnest($1::text[], $2::float8[], $3::float8[]) AS c(name, rate, burst)
        CROSS JOIN clock
        LEFT JOIN fleet_budgets b ON b.name = c.name
        ORDER BY c.name
        "#,
    )
    .bind(&names)
    .bind(&rates)
    .bind(&bursts)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BudgetState {
            name: r.get(0),
            per_second: r.get(1),
            burst: r.get(2),
            level: r.get(3),
            blocked_until: r.get(4),
            blocked_reason: r.get(5),
            blocks: r.get(6),
        })
        .collect())
}

/// A limited kind's limits, as [`kind_limit_counts`] takes them.
#[derive(Debug, Clone)]
pub struct KindLimitSpec {
    /// The kind.
    pub kind: String,
    /// Fleet-wide running limit.
    pub global_concurrency: Option<i64>,
    /// Per-key running limit.
    pub key_concurrency: Option<i64>,
}

/// What [`kind_limit_counts`] found for one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindLimitCounts {
    /// The kind.
    pub kind: String,
    /// Running under a live lease (what the limits count).
    pub running: i64,
    /// Ready jobs filed as limited (a row enqueued before the kind got its limit counts once
    /// the plain claim has re-filed it).
    pub ready: i64,
    /// Ready jobs whose key is at its per-key limit.
    pub ready_key_at_limit: i64,
}

/// KindLimitCounts: per limited kind, its running jobs under a live lease, its ready jobs,
/// and the ready ones whose key is at its per-key limit. Reads only unfinished rows.
pub async fn kind_limit_counts(
    conn: impl PgExecutor<'_>,
    specs: &[KindLimitSpec],
    now: Now,
) -> Result<Vec<KindLimitCounts>, sqlx::Error> {
    let kinds: Vec<&str> = specs.iter().map(|s| s.kind.as_str()).collect();
    let keys: Vec<Option<i64>> = specs.iter().map(|s| s.key_concurrency).collect();
    let rows = sqlx::query(
        r#"
        WITH clock AS (SELECT coalesce($3::timestamptz, now()) AS now)
        SELECT k.kind,
               (SELECT count(*) FROM fleet_jobs j
                WHERE j.kind = k.kind AND j.state = 'running' AND j.lease_expires_at > clock.now),
               (SELECT count(*) FROM fleet_jobs j
                WHERE j.kind = k.kind AND j.state = 'available' AND j.limited),
               CASE WHEN k.key_limit IS NULL THEN 0 ELSE (
                   SELECT count(*) FROM fleet_jobs j
                   WHERE j.kind = k.kind AND j.state = 'available' AND j.limited
                     AND j.limit_key IS NOT NULL
                     AND (SELECT count(*) FROM fleet_jobs r
                          WHERE r.kind = j.kind AND r.limit_key = j.limit_key
                            AND r.state = 'running' AND r.lease_expires_at > clock.now) >= k.key_limit)
               END
        FROM unnest($1::text[], $2::bigint[]) AS k(kind, key_limit)
        CROSS JOIN clock
        ORDER BY k.kind
        "#,
    )
    .bind(&kinds)
    .bind(&keys)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KindLimitCounts {
            kind: r.get(0),
            running: r.get(1),
            ready: r.get(2),
            ready_key_at_limit: r.get(3),
        })
        .collect())
}
