//! The queue's storage: every SQL statement that touches `fleet_jobs` or `fleet_paused_kinds`
//! lives in this module, as inline statements (no SQL functions, so every plan is visible
//! and index-driven), named noun-first after what they do to jobs.
//!
//! Invariants the statements keep together (see docs/architecture.md for the state diagram):
//! - a job leaves `running` only through a write fenced on `(id, claim_seq)` and
//!   `state = 'running'`: [`job_set_outcome_many`], [`job_rescue_expired`]. A fenced write that
//!   misses reports [`QueueError::LostLease`], never success;
//! - `claim_seq` only ever grows, one per claim, so a late write from an earlier claim can never
//!   match again;
//! - the fenced batch writes ([`job_set_outcome_many`], [`job_extend_leases`]) test the state as
//!   `state::text = 'running'` on purpose: it keeps the planner from driving the join with the
//!   `running` partial index (statistics say few rows are running) and re-scanning the
//!   `unnest` once per running row — an O(held × batch) plan measured at 4× the cost with a
//!   million finished jobs. The join then goes through the primary key, one lookup per row;
//! - an idempotency key is *held* (`key_held`) by at most one job per kind, enforced by a unique
//!   partial index, so concurrent enqueuers of one key create exactly one job.

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Row};

/// The notification channel that wakes idle workers: payload is the queue name.
pub const JOBS_CHANNEL: &str = "fleet_jobs";

/// Rows per enqueue statement: keeps one statement's parameters and memory bounded.
const ENQUEUE_CHUNK: usize = 5_000;

/// How often a bulk enqueue re-tries the rows whose key holder vanished or expired mid-call.
const ENQUEUE_KEY_ROUNDS: usize = 5;

/// Errors of the queue's storage.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A post-claim write found the job no longer held by that claim: it was rescued,
    /// cancelled or already finished. The write did nothing.
    #[error("job {id} is no longer held by claim {claim_seq}: the write was refused")]
    LostLease {
        /// Job id.
        id: i64,
        /// The claim that tried to write.
        claim_seq: i32,
    },
    /// A job to enqueue is invalid; nothing was written.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Mirror of the database's `fleet_job_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at` before its first attempt.
    Scheduled,
    /// Ready to be claimed now.
    Available,
    /// Claimed by a worker under a lease.
    Running,
    /// Failed; waiting for its backoff to elapse.
    Retryable,
    /// Final: the handler succeeded.
    Completed,
    /// Final: cancelled by a handler or an operator.
    Cancelled,
    /// Final: out of attempts or not runnable; replayable by an operator.
    Dead,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 7] = [
        Self::Scheduled,
        Self::Available,
        Self::Running,
        Self::Retryable,
        Self::Completed,
        Self::Cancelled,
        Self::Dead,
    ];

    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Available => "available",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    /// Whether the state is final (the job will not run again unless replayed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?} (expected one of: {})",
                    Self::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// A job ready to insert: every placement field resolved.
#[derive(Debug, Clone)]
pub struct JobInsert {
    /// Kind name.
    pub kind: String,
    /// Queue name.
    pub queue: String,
    /// Payload.
    pub args: Value,
    /// Lower first.
    pub priority: i16,
    /// Not before; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Per-kind deduplication key.
    pub idempotency_key: Option<String>,
    /// W3C trace context of the enqueuing span.
    pub trace_context: Option<Value>,
}

/// Outcome of inserting one job.
pub use jobs::Enqueued;

/// JobInsertMany: inserts `jobs` in as few statements as possible, on `conn` (which may be in
/// the caller's transaction). Results come back in input order.
///
/// A job whose kind+key is held returns the holder's id with `duplicate = true`; it never fails
/// the rest of the batch. A holder whose post-completion window has elapsed is released and the
/// job inserted. Ready jobs `NOTIFY` [`JOBS_CHANNEL`] (delivered at the caller's commit).
pub async fn job_insert_many(
    conn: &mut PgConnection,
    jobs: &[JobInsert],
) -> Result<Vec<Enqueued>, QueueError> {
    for j in jobs {
        validate_insert(j)?;
    }
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        out.extend(insert_chunk(conn, chunk).await?);
    }
    Ok(out)
}

fn validate_insert(j: &JobInsert) -> Result<(), QueueError> {
    if j.kind.is_empty() || j.kind.len() > 128 {
        return Err(QueueError::InvalidJob(format!(
            "kind must be 1..=128 bytes, got {} bytes",
            j.kind.len()
        )));
    }
    if j.queue.is_empty() || j.queue.len() > 128 {
        return Err(QueueError::InvalidJob(format!(
            "queue of kind {:?} must be 1..=128 bytes",
            j.kind
        )));
    }
    if j.max_attempts < 1 {
        return Err(QueueError::InvalidJob(format!(
            "max_attempts of kind {:?} must be >= 1, got {}",
            j.kind, j.max_attempts
        )));
    }
    if let Some(k) = &j.idempotency_key {
        if k.is_empty() || k.len() > 512 {
            return Err(QueueError::InvalidJob(format!(
                "idempotency key of kind {:?} must be 1..=512 bytes",
                j.kind
            )));
        }
    }
    Ok(())
}

async fn insert_chunk(
    conn: &mut PgConnection,
    chunk: &[JobInsert],
) -> Result<Vec<Enqueued>, QueueError> {
    let mut result: Vec<Option<Enqueued>> = vec![None; chunk.len()];
    // Indices (into `chunk`) still to insert.
    let mut todo: Vec<usize> = (0..chunk.len()).collect();
    for _round in 0..ENQUEUE_KEY_ROUNDS {
        if todo.is_empty() {
            break;
        }
        let rows = insert_rows(conn, chunk, &todo).await?;
        let mut conflicted = Vec::new();
        for (pos, (id, inserted)) in rows.into_iter().enumerate() {
            let idx = todo[pos];
            if inserted {
                result[idx] = Some(Enqueued {
                    id,
                    duplicate: false,
                });
            } else {
                conflicted.push(idx);
            }
        }
        todo.clear();
        if conflicted.is_empty() {
            break;
        }
        // Resolve each conflict to its current holder; release holders past their window.
        let holders = key_holders(conn, chunk, &conflicted).await?;
        let mut expired = Vec::new();
        let mut retry = Vec::new();
        for idx in conflicted {
            match holders.get(&idx) {
                Some(&(id, false)) => {
                    result[idx] = Some(Enqueued {
                        id,
                        duplicate: true,
                    })
                }
                Some(&(id, true)) => {
                    expired.push(id);
                    retry.push(idx);
                }
                // The holder finished and released the key between our statements.
                None => retry.push(idx),
            }
        }
        if !expired.is_empty() {
            job_release_expired_keys(conn, &expired).await?;
        }
        todo = retry;
    }
    if !todo.is_empty() {
        return Err(QueueError::InvalidJob(format!(
            "idempotency key of kind {:?} kept changing hands; giving up after {} rounds",
            chunk[todo[0]].kind, ENQUEUE_KEY_ROUNDS
        )));
    }
    Ok(result.into_iter().map(|r| r.expect("resolved")).collect())
}

/// Inserts `chunk[todo]`; returns (id, inserted) per row in `todo` order.
async fn insert_rows(
    conn: &mut PgConnection,
    chunk: &[JobInsert],
    todo: &[usize],
) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    let n = todo.len();
    let mut traces: Vec<Option<&Value>> = Vec::with_capacity(n);
    let (mut kinds, mut queues, mut args, mut prios, mut run_ats, mut maxes, mut keys) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &i in todo {
        let j = &chunk[i];
        kinds.push(j.kind.as_str());
        queues.push(j.queue.as_str());
        args.push(&j.args);
        prios.push(j.priority);
        run_ats.push(j.run_at);
        maxes.push(j.max_attempts);
        keys.push(j.idempotency_key.as_deref());
        traces.push(j.trace_context.as_ref());
    }
    // Ids are drawn up front so every input row maps to its outcome by ordinality, whether it
    // was inserted or lost to a held key. The `notified` CTE wakes idle workers at commit.
    let rows = sqlx::query(
        r#"
        WITH input AS (
            SELECT nextval('fleet_jobs_id_seq') AS id, t.*
            FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[],
                        $5::timestamptz[], $6::int[], $7::text[], $8::jsonb[])
                 WITH ORDINALITY AS t(kind, queue, args, priority, run_at, max_attempts,
                                      idempotency_key, trace_context, ord)
        ), inserted AS (
            INSERT INTO fleet_jobs (id, kind, queue, args, state, priority, run_at,
                                    max_attempts, idempotency_key, key_held, trace_context)
            SELECT id, kind, queue, args,
                   CASE WHEN run_at IS NULL OR run_at <= now() THEN 'available'
                        ELSE 'scheduled' END::fleet_job_state,
                   priority, COALESCE(run_at, now()), max_attempts, idempotency_key,
                   idempotency_key IS NOT NULL, trace_context
            FROM input ORDER BY ord
            ON CONFLICT (kind, idempotency_key) WHERE key_held DO NOTHING
            RETURNING id, queue, state
        ), notified AS (
            SELECT pg_notify('fleet_jobs', q.queue) FROM (
                SELECT DISTINCT queue FROM inserted WHERE state = 'available'
            ) q
        )
        SELECT input.id, (inserted.id IS NOT NULL) AS inserted,
               (SELECT count(*) FROM notified) AS notified
        FROM input LEFT JOIN inserted ON inserted.id = input.id
        ORDER BY input.ord
        "#,
    )
    .bind(&kinds)
    .bind(&queues)
    .bind(&args)
    .bind(&prios)
    .bind(&run_ats)
    .bind(&maxes)
    .bind(&keys)
    .bind(&traces)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<bool, _>(1)))
        .collect())
}

/// For `chunk[idx]` rows that conflicted: idx → (holder id, holder's window has elapsed).
async fn key_holders(
    conn: &mut PgConnection,
    chunk: &[JobInsert],
    idxs: &[usize],
) -> Result<HashMap<usize, (i64, bool)>, sqlx::Error> {
    let kinds: Vec<&str> = idxs.iter().map(|&i| chunk[i].kind.as_str()).collect();
    let keys: Vec<&str> = idxs
        .iter()
        .map(|&i| chunk[i].idempotency_key.as_deref().unwrap_or(""))
        .collect();
    let rows = sqlx::query(
        r#"
        SELECT t.ord, j.id, COALESCE(j.key_held_until <= now(), false) AS expired
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(kind, key, ord)
        JOIN fleet_jobs j ON j.kind = t.kind AND j.idempotency_key = t.key AND j.key_held
        "#,
    )
    .bind(&kinds)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let ord: i64 = r.get(0);
            (idxs[(ord - 1) as usize], (r.get(1), r.get(2)))
        })
        .collect())
}

/// JobReleaseExpiredKeys: frees keys of completed jobs whose window has elapsed.
async fn job_release_expired_keys(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fleet_jobs SET key_held = false, key_held_until = NULL
         WHERE id = ANY($1) AND key_held AND key_held_until <= now()",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job as a worker claimed it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Kind name.
    pub kind: String,
    /// Payload.
    pub args: Value,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Fencing token of this claim.
    pub claim_seq: i32,
    /// When the job became due (for pickup latency).
    pub run_at: DateTime<Utc>,
    /// W3C trace context of the enqueuing span.
    pub trace_context: Option<Value>,
}

/// Parameters of [`job_fetch_available`].
#[derive(Debug, Clone)]
pub struct FetchParams<'a> {
    /// Queues to serve; `None` = all.
    pub queues: Option<&'a [String]>,
    /// Kinds not to claim now (at their per-kind concurrency limit).
    pub skip_kinds: &'a [String],
    /// Most jobs to claim.
    pub limit: i64,
    /// Lease owner recorded on the rows (worker id).
    pub owner: &'a str,
    /// Lease length.
    pub lease: Duration,
}

/// JobFetchAvailable: claims up to `limit` ready jobs in (priority, run_at, id) order with
/// `FOR UPDATE SKIP LOCKED`, never a paused kind (a draining kind only up to its cutoff id).
/// Each claim charges an attempt, bumps `claim_seq` and starts a lease. The scan is on
/// `fleet_jobs_fetch_available_idx`, which holds only `available` rows, so finished history
/// does not slow it down.
pub async fn job_fetch_available(
    conn: &mut PgConnection,
    p: &FetchParams<'_>,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let rows = sqlx::query(
        r#"
        WITH picked AS (
            SELECT id FROM fleet_jobs j
            WHERE state = 'available'
              AND ($1::text[] IS NULL OR queue = ANY($1))
              AND kind <> ALL($2::text[])
              AND NOT EXISTS (
                  SELECT 1 FROM fleet_paused_kinds p
                  WHERE p.kind = j.kind AND (p.drain_through_id IS NULL OR j.id > p.drain_through_id))
            ORDER BY priority, run_at, id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        UPDATE fleet_jobs j
        SET state = 'running', attempt = j.attempt + 1, claim_seq = j.claim_seq + 1,
            lease_owner = $4, lease_expires_at = now() + $5 * interval '1 millisecond',
            attempted_at = now()
        FROM picked WHERE j.id = picked.id
        RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.claim_seq, j.run_at,
                  j.trace_context
        "#,
    )
    .bind(p.queues)
    .bind(p.skip_kinds)
    .bind(p.limit)
    .bind(p.owner)
    .bind(p.lease.as_millis() as i64)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedJob {
            id: r.get(0),
            kind: r.get(1),
            args: r.get(2),
            attempt: r.get(3),
            max_attempts: r.get(4),
            claim_seq: r.get(5),
            run_at: r.get(6),
            trace_context: r.get(7),
        })
        .collect())
}

/// JobPromoteDue: moves up to `limit` scheduled/retryable jobs whose `run_at` has come to
/// `available`, and wakes workers if any moved. Returns how many moved.
pub async fn job_promote_due(conn: &mut PgConnection, limit: i64) -> Result<u64, sqlx::Error> {
    let promoted: i64 = sqlx::query_scalar(
        r#"
        WITH due AS (
            SELECT id FROM fleet_jobs
            WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), promoted AS (
            UPDATE fleet_jobs j SET state = 'available' FROM due WHERE j.id = due.id
            RETURNING j.queue
        ), notified AS (
            SELECT pg_notify('fleet_jobs', q.queue) FROM (SELECT DISTINCT queue FROM promoted) q
        )
        SELECT (SELECT count(*) FROM promoted) + 0 * (SELECT count(*) FROM notified)
        "#,
    )
    .bind(limit)
    .fetch_one(conn)
    .await?;
    Ok(promoted as u64)
}

/// JobExtendLeases: renews the leases of the given claims; returns the ids still held.
/// A claim missing from the result lost its lease (rescued or cancelled): its handler must stop.
pub async fn job_extend_leases(
    conn: &mut PgConnection,
    claims: &[(i64, i32)],
    lease: Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    let (ids, seqs): (Vec<i64>, Vec<i32>) = claims.iter().copied().unzip();
    sqlx::query_scalar(
        r#"
        UPDATE fleet_jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
        FROM unnest($1::bigint[], $2::int[]) AS h(id, claim_seq)
        WHERE j.id = h.id AND j.claim_seq = h.claim_seq AND j.state::text = 'running'
        RETURNING j.id
        "#,
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(lease.as_millis() as i64)
    .fetch_all(conn)
    .await
}

/// Why an attempt failed, as kept in the job's `errors` history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler discarded the job (fatal error).
    Fatal,
    /// The handler ran past the kind's timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The worker stopped heartbeating (crash, kill) and the rescuer took the job back.
    LeaseExpired,
    /// No handler for the kind in this worker.
    UnknownKind,
    /// The payload did not deserialize into the kind's args.
    BadArgs,
    /// The handler asked to run later without charging an attempt.
    Snoozed,
    /// The handler or an operator cancelled the job.
    Cancelled,
    /// The worker's drain deadline interrupted the handler.
    Interrupted,
}

/// One entry of a job's error history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt that failed.
    pub attempt: i32,
    /// Failure class.
    pub class: ErrorClass,
    /// Reason (never PII).
    pub message: String,
    /// When (database time); absent before the row is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// What a claim's outcome does to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum NextState {
    /// Success; the key stays held for `key_window` (zero: released now).
    Completed {
        /// The kind's idempotency window.
        key_window: Duration,
    },
    /// Failed; run again after `delay` (attempt charged).
    Retry {
        /// Backoff.
        delay: Duration,
        /// What failed.
        error: AttemptError,
    },
    /// Run again after `delay` without charging the attempt.
    Snooze {
        /// Delay.
        delay: Duration,
        /// Why (class `snoozed`).
        error: AttemptError,
    },
    /// Final failure.
    Dead {
        /// Why.
        error: AttemptError,
    },
    /// Final cancellation.
    Cancelled {
        /// Why (class `cancelled`).
        error: AttemptError,
    },
    /// The claim never started its handler: back to `available`, attempt not charged.
    ReturnUnstarted,
}

/// One fenced outcome write.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Job id.
    pub id: i64,
    /// The claim that produced it.
    pub claim_seq: i32,
    /// What to do.
    pub next: NextState,
}

/// JobSetOutcomeMany: writes many claims' outcomes in one statement, each fenced on
/// `(id, claim_seq, state = 'running')`. Returns the ids written; an outcome whose claim no
/// longer holds the job is not written (and so not returned).
pub async fn job_set_outcome_many(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
) -> Result<Vec<i64>, sqlx::Error> {
    let n = outcomes.len();
    let mut ids = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut deltas = Vec::with_capacity(n);
    let mut delays: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut windows = Vec::with_capacity(n);
    for o in outcomes {
        ids.push(o.id);
        seqs.push(o.claim_seq);
        let ms = |d: &Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let err = |e: &AttemptError| serde_json::to_value(e).expect("serializable");
        let (state, delta, delay, error, window) = match &o.next {
            NextState::Completed { key_window } => ("completed", 0, None, None, ms(key_window)),
            NextState::Retry { delay, error } => {
                ("retryable", 0, Some(ms(delay)), Some(err(error)), 0)
            }
            NextState::Snooze { delay, error } => {
                ("retryable", -1, Some(ms(delay)), Some(err(error)), 0)
            }
            NextState::Dead { error } => ("dead", 0, None, Some(err(error)), 0),
            NextState::Cancelled { error } => ("cancelled", 0, None, Some(err(error)), 0),
            NextState::ReturnUnstarted => ("available", -1, None, None, 0),
        };
        states.push(state);
        deltas.push(delta);
        delays.push(delay);
        errors.push(error);
        windows.push(window);
    }
    sqlx::query_scalar(
        r#"
        UPDATE fleet_jobs j SET
            state = o.state::fleet_job_state,
            attempt = j.attempt + o.attempt_delta,
            run_at = CASE WHEN o.delay_ms IS NULL THEN j.run_at
                          ELSE now() + o.delay_ms * interval '1 millisecond' END,
            errors = CASE WHEN o.error IS NULL THEN j.errors
                          ELSE j.errors || jsonb_build_array(o.error || jsonb_build_object('at', now())) END,
            finished_at = CASE WHEN o.state IN ('completed', 'cancelled', 'dead') THEN now() END,
            lease_owner = NULL,
            lease_expires_at = NULL,
            key_held = j.key_held AND o.state NOT IN ('cancelled', 'dead')
                       AND (o.state <> 'completed' OR o.key_window_ms > 0),
            key_held_until = CASE WHEN j.key_held AND o.state = 'completed' AND o.key_window_ms > 0
                                  THEN now() + o.key_window_ms * interval '1 millisecond' END
        FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::bigint[], $6::jsonb[],
                    $7::bigint[])
             AS o(id, claim_seq, state, attempt_delta, delay_ms, error, key_window_ms)
        WHERE j.id = o.id AND j.claim_seq = o.claim_seq AND j.state::text = 'running'
        RETURNING j.id
        "#,
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&states)
    .bind(&deltas)
    .bind(&delays)
    .bind(&errors)
    .bind(&windows)
    .fetch_all(conn)
    .await
}

/// Writes one claim's outcome; [`QueueError::LostLease`] if the claim no longer holds the job.
pub async fn job_set_outcome(conn: &mut PgConnection, outcome: Outcome) -> Result<(), QueueError> {
    let (id, claim_seq) = (outcome.id, outcome.claim_seq);
    let written = job_set_outcome_many(conn, std::slice::from_ref(&outcome)).await?;
    if written.is_empty() {
        return Err(QueueError::LostLease { id, claim_seq });
    }
    Ok(())
}

/// What [`job_rescue_expired`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueCount {
    /// Jobs put back to `retryable`.
    pub retried: u64,
    /// Jobs out of attempts, now `dead`.
    pub dead: u64,
}

/// JobRescueExpired: takes back up to `limit` running jobs whose lease expired (their worker
/// died or stalled) — `retryable` at once, or `dead` when out of attempts — recording a
/// `lease_expired` error. Bumping nothing else is enough: the next claim bumps `claim_seq`,
/// and the dead worker's late writes already miss on `state = 'running'`.
pub async fn job_rescue_expired(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<RescueCount, sqlx::Error> {
    let row = sqlx::query(
        r#"
        WITH expired AS (
            SELECT id FROM fleet_jobs
            WHERE state = 'running' AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), rescued AS (
            UPDATE fleet_jobs j SET
                state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead'
                             ELSE 'retryable' END::fleet_job_state,
                run_at = now(),
                finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'attempt', j.attempt, 'class', 'lease_expired',
                    'message', 'lease expired: worker ' || j.lease_owner || ' stopped heartbeating')),
                key_held = j.key_held AND j.attempt < j.max_attempts,
                lease_owner = NULL,
                lease_expires_at = NULL
            FROM expired WHERE j.id = expired.id
            RETURNING j.state
        )
        SELECT count(*) FILTER (WHERE state = 'retryable'), count(*) FILTER (WHERE state = 'dead')
        FROM rescued
        "#,
    )
    .bind(limit)
    .fetch_one(conn)
    .await?;
    Ok(RescueCount {
        retried: row.get::<i64, _>(0) as u64,
        dead: row.get::<i64, _>(1) as u64,
    })
}

/// KindPause: records `kind` as paused (the kill switch). A drain in progress on `kind` becomes
/// a full pause. Returns false if the kind was already fully paused.
pub async fn kind_pause(
    conn: &mut PgConnection,
    kind: &str,
    actor: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO fleet_paused_kinds (kind, paused_by, reason) VALUES ($1, $2, $3)
         ON CONFLICT (kind) DO UPDATE
            SET drain_through_id = NULL, paused_at = now(),
                paused_by = EXCLUDED.paused_by, reason = EXCLUDED.reason
            WHERE fleet_paused_kinds.drain_through_id IS NOT NULL",
    )
    .bind(kind)
    .bind(actor)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// KindDrainStart: holds `kind`'s new intake while its backlog finishes. Jobs stored now (id at
/// or below the returned cutoff) stay claimable; later ones wait for resume. Returns `None`
/// when the kind is already fully paused: a drain never loosens the kill switch. Draining a
/// draining kind moves its cutoff forward.
pub async fn kind_drain_start(
    conn: &mut PgConnection,
    kind: &str,
    actor: &str,
) -> Result<Option<i64>, sqlx::Error> {
    // Like resume, one statement: idle workers wake (at commit) to take the backlog a pause
    // may have been holding.
    sqlx::query_scalar(
        r#"
        WITH started AS (
            INSERT INTO fleet_paused_kinds (kind, paused_by, reason, drain_through_id)
            VALUES ($1, $2, 'drain', (SELECT coalesce(max(id), 0) FROM fleet_jobs))
            ON CONFLICT (kind) DO UPDATE
               SET drain_through_id = greatest(fleet_paused_kinds.drain_through_id,
                                               EXCLUDED.drain_through_id),
                   paused_by = EXCLUDED.paused_by
               WHERE fleet_paused_kinds.drain_through_id IS NOT NULL
            RETURNING drain_through_id
        ),
        notified AS (SELECT pg_notify('fleet_jobs', '') FROM started)
        SELECT drain_through_id FROM started, (SELECT count(*) FROM notified) n
        "#,
    )
    .bind(kind)
    .bind(actor)
    .fetch_optional(conn)
    .await
}

/// KindDrainEnd: turns the drains of `kinds` into full pauses, so backlog jobs that come due
/// later (retries) wait for resume too. Returns how many drains ended.
pub async fn kind_drain_end(conn: &mut PgConnection, kinds: &[String]) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE fleet_paused_kinds SET drain_through_id = NULL
         WHERE kind = ANY($1) AND drain_through_id IS NOT NULL",
    )
    .bind(kinds)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// KindResume: lifts a pause or drain and wakes workers. Returns false if the kind was not
/// paused.
pub async fn kind_resume(conn: &mut PgConnection, kind: &str) -> Result<bool, sqlx::Error> {
    let resumed: Option<String> = sqlx::query_scalar(
        r#"
        WITH resumed AS (DELETE FROM fleet_paused_kinds WHERE kind = $1 RETURNING kind),
        notified AS (SELECT pg_notify('fleet_jobs', '') FROM resumed)
        SELECT kind FROM resumed, (SELECT count(*) FROM notified) n
        "#,
    )
    .bind(kind)
    .fetch_optional(conn)
    .await?;
    Ok(resumed.is_some())
}

/// A paused or draining kind.
#[derive(Debug, Clone, Serialize)]
pub struct PausedKind {
    /// The kind.
    pub kind: String,
    /// When the pause (or drain) began.
    pub paused_at: DateTime<Utc>,
    /// Who paused it.
    pub paused_by: String,
    /// Why.
    pub reason: String,
    /// While draining: the highest job id still claimable. `None`: fully paused.
    pub draining_through_id: Option<i64>,
}

/// KindListPaused: the paused and draining kinds.
pub async fn kind_list_paused(conn: &mut PgConnection) -> Result<Vec<PausedKind>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, paused_at, paused_by, reason, drain_through_id
         FROM fleet_paused_kinds ORDER BY kind",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PausedKind {
            kind: r.get(0),
            paused_at: r.get(1),
            paused_by: r.get(2),
            reason: r.get(3),
            draining_through_id: r.get(4),
        })
        .collect())
}

/// A job row as stored, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Job id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Payload.
    pub args: Value,
    /// State.
    pub state: JobState,
    /// Priority.
    pub priority: i16,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Attempts charged.
    pub attempt: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Fencing token of the latest claim.
    pub claim_seq: i32,
    /// Dedup key.
    pub idempotency_key: Option<String>,
    /// Whether the key is taken.
    pub key_held: bool,
    /// Error history.
    pub errors: Vec<AttemptError>,
    /// Current lease owner.
    pub lease_owner: Option<String>,
    /// Current lease expiry.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last claimed.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// JobGet: one job by id.
pub async fn job_get(conn: &mut PgConnection, id: i64) -> Result<Option<JobRecord>, sqlx::Error> {
    let row = sqlx::query(
        r#"
        SELECT id, kind, queue, args, state::text, priority, run_at, attempt, max_attempts,
               claim_seq, idempotency_key, key_held, errors, lease_owner, lease_expires_at,
               created_at, attempted_at, finished_at
        FROM fleet_jobs WHERE id = $1
        "#,
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state: String = r.get(4);
    let errors: Value = r.get(12);
    Ok(Some(JobRecord {
        id: r.get(0),
        kind: r.get(1),
        queue: r.get(2),
        args: r.get(3),
        state: state
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        priority: r.get(5),
        run_at: r.get(6),
        attempt: r.get(7),
        max_attempts: r.get(8),
        claim_seq: r.get(9),
        idempotency_key: r.get(10),
        key_held: r.get(11),
        errors: serde_json::from_value(errors).map_err(|e| sqlx::Error::Decode(e.into()))?,
        lease_owner: r.get(13),
        lease_expires_at: r.get(14),
        created_at: r.get(15),
        attempted_at: r.get(16),
        finished_at: r.get(17),
    }))
}

/// JobCountByState: how many jobs are in each state (optionally of one kind).
pub async fn job_count_by_state(
    conn: &mut PgConnection,
    kind: Option<&str>,
) -> Result<HashMap<JobState, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT state::text, count(*) FROM fleet_jobs
         WHERE ($1::text IS NULL OR kind = $1) GROUP BY state",
    )
    .bind(kind)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::new();
    for r in rows {
        let s: String = r.get(0);
        if let Ok(st) = s.parse() {
            out.insert(st, r.get(1));
        }
    }
    Ok(out)
}

/// JobInsertFinishedHistory: inserts `n` completed jobs of `kind` (benchmarks' history), in
/// one statement, then refreshes statistics and checkpoints.
pub async fn job_insert_finished_history(
    conn: &mut PgConnection,
    kind: &str,
    n: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        INSERT INTO fleet_jobs (kind, queue, args, state, attempt, max_attempts, claim_seq,
                                run_at, created_at, attempted_at, finished_at)
        SELECT $1, 'default', jsonb_build_object('history', g), 'completed', 1, 1, 1,
               now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
               now() - interval '1 day'
        FROM generate_series(1, $2) g
        "#,
    )
    .bind(kind)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    sqlx::query("VACUUM ANALYZE fleet_jobs")
        .execute(&mut *conn)
        .await?;
    // Flush the setup's dirty pages now, so the checkpoint it would otherwise trigger does not
    // land inside whatever is measured next.
    sqlx::query("CHECKPOINT").execute(conn).await?;
    Ok(())
}

/// Channel that tells workers to stop the handlers of cancelled jobs (payload: comma-separated ids).
pub const CANCEL_CHANNEL: &str = "fleet_cancel";

/// Which jobs an operator command applies to. Unset fields do not filter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobFilter {
    /// Exact ids.
    pub ids: Option<Vec<i64>>,
    /// One kind.
    pub kind: Option<String>,
    /// Any of these states.
    pub states: Option<Vec<JobState>>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

impl JobFilter {
    /// True when nothing narrows the selection (mutating commands refuse that).
    pub fn is_empty(&self) -> bool {
        self.ids.is_none()
            && self.kind.is_none()
            && self.states.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.idempotency_key.is_none()
    }

    fn state_strings(&self) -> Option<Vec<&'static str>> {
        self.states
            .as_ref()
            .map(|v| v.iter().map(|s| s.as_str()).collect())
    }
}

/// The filter as SQL over parameters $1..$6 (see [`bind_filter`]).
const FILTER_SQL: &str = "($1::bigint[] IS NULL OR id = ANY($1)) \
     AND ($2::text IS NULL OR kind = $2) \
     AND ($3::text[] IS NULL OR state::text = ANY($3)) \
     AND ($4::timestamptz IS NULL OR created_at >= $4) \
     AND ($5::timestamptz IS NULL OR created_at < $5) \
     AND ($6::text IS NULL OR idempotency_key = $6)";

fn bind_filter<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    f: &'q JobFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(f.ids.as_deref())
        .bind(f.kind.as_deref())
        .bind(f.state_strings())
        .bind(f.since)
        .bind(f.until)
        .bind(f.idempotency_key.as_deref())
}

/// One line of `fleet queue list`.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// State.
    pub state: String,
    /// Attempts charged.
    pub attempt: i32,
    /// Budget.
    pub max_attempts: i32,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Dedup key.
    pub idempotency_key: Option<String>,
    /// The latest error's message.
    pub last_error: Option<String>,
}

/// JobList: jobs matching `f`, newest first, `limit` per page, ids below `before_id`.
pub async fn job_list(
    conn: &mut PgConnection,
    f: &JobFilter,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    let sql = format!(
        "SELECT id, kind, queue, state::text, attempt, max_attempts, run_at, created_at,
                finished_at, idempotency_key, errors -> -1 ->> 'message'
         FROM fleet_jobs WHERE {FILTER_SQL} AND ($7::bigint IS NULL OR id < $7)
         ORDER BY id DESC LIMIT $8"
    );
    let rows = bind_filter(sqlx::query(&sql), f)
        .bind(before_id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| JobSummary {
            id: r.get(0),
            kind: r.get(1),
            queue: r.get(2),
            state: r.get(3),
            attempt: r.get(4),
            max_attempts: r.get(5),
            run_at: r.get(6),
            created_at: r.get(7),
            finished_at: r.get(8),
            idempotency_key: r.get(9),
            last_error: r.get(10),
        })
        .collect())
}

/// Per-kind figures for `fleet queue stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindStats {
    /// Kind.
    pub kind: String,
    /// Jobs per state.
    pub states: std::collections::BTreeMap<String, i64>,
    /// Age of the oldest ready job (seconds since its run_at), if any.
    pub oldest_available_age_s: Option<f64>,
    /// Completions in the last minute.
    pub completed_last_minute: i64,
}

/// JobStats: counts per kind and state, oldest ready age, completions in the last minute.
pub async fn job_stats(conn: &mut PgConnection) -> Result<Vec<KindStats>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, state::text, count(*),
                EXTRACT(EPOCH FROM now() - min(run_at) FILTER (WHERE state = 'available'))::float8,
                count(*) FILTER (WHERE state = 'completed' AND finished_at > now() - interval '1 minute')
         FROM fleet_jobs GROUP BY kind, state ORDER BY kind",
    )
    .fetch_all(conn)
    .await?;
    let mut out: Vec<KindStats> = Vec::new();
    for r in rows {
        let kind: String = r.get(0);
        if out.last().map(|k| k.kind != kind).unwrap_or(true) {
            out.push(KindStats {
                kind: kind.clone(),
                ..KindStats::default()
            });
        }
        let k = out.last_mut().expect("pushed");
        k.states.insert(r.get(1), r.get(2));
        if let Some(age) = r.get::<Option<f64>, _>(3) {
            k.oldest_available_age_s = Some(age);
        }
        k.completed_last_minute += r.get::<i64, _>(4);
    }
    Ok(out)
}

/// What [`job_replay`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayResult {
    /// Jobs made available again with a fresh attempt budget.
    pub replayed: Vec<i64>,
    /// Matching dead/cancelled jobs left alone, with why.
    pub skipped: Vec<(i64, String)>,
}

/// JobReplay: dead or cancelled jobs matching `f` → `available` now, attempt 0 (a fresh budget),
/// error history kept, idempotency key taken again. A job whose key another job holds now is
/// skipped (replaying it would run the same work twice).
pub async fn job_replay(
    conn: &mut PgConnection,
    f: &JobFilter,
) -> Result<ReplayResult, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM fleet_jobs WHERE {FILTER_SQL} AND state IN ('dead', 'cancelled')
         ORDER BY id FOR UPDATE"
    );
    let targets: Vec<i64> = bind_filter(sqlx::query(&sql), f)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let replayed: Vec<i64> = sqlx::query_scalar(
        r#"
        WITH replayed AS (
            UPDATE fleet_jobs j SET state = 'available', attempt = 0, run_at = now(),
                finished_at = NULL, key_held = j.idempotency_key IS NOT NULL, key_held_until = NULL
            WHERE j.id = ANY($1)
              AND (j.idempotency_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM fleet_jobs o
                    WHERE o.kind = j.kind AND o.idempotency_key = j.idempotency_key
                      AND o.key_held AND o.id <> j.id))
            RETURNING j.id, j.queue
        ), notified AS (
            SELECT pg_notify('fleet_jobs', q.queue) FROM (SELECT DISTINCT queue FROM replayed) q
        )
        SELECT id FROM replayed WHERE (SELECT count(*) FROM notified) >= 0 ORDER BY id
        "#,
    )
    .bind(&targets)
    .fetch_all(&mut *conn)
    .await?;
    let done: std::collections::HashSet<i64> = replayed.iter().copied().collect();
    let skipped = targets
        .into_iter()
        .filter(|id| !done.contains(id))
        .map(|id| (id, "its idempotency key is held by another job".to_owned()))
        .collect();
    Ok(ReplayResult { replayed, skipped })
}

/// JobCancel: unfinished jobs matching `f` → `cancelled`, with a `cancelled` entry naming the
/// actor. Running ones are fenced out at once (their worker's outcome write will miss) and their
/// workers are told over [`CANCEL_CHANNEL`] (at commit) to stop the handlers. Returns
/// (id, state it was in).
pub async fn job_cancel(
    conn: &mut PgConnection,
    f: &JobFilter,
    actor: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let sql = format!(
        r#"
        WITH target AS (
            SELECT id, state FROM fleet_jobs
            WHERE {FILTER_SQL} AND state IN ('scheduled', 'available', 'running', 'retryable')
            FOR UPDATE
        ), cancelled AS (
            UPDATE fleet_jobs j SET state = 'cancelled', finished_at = now(),
                lease_owner = NULL, lease_expires_at = NULL, key_held = false, key_held_until = NULL,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'attempt', j.attempt, 'class', 'cancelled',
                    'message', 'cancelled by operator ' || $7))
            FROM target t WHERE j.id = t.id
            RETURNING j.id, t.state::text AS was
        )
        SELECT id, was FROM cancelled ORDER BY id
        "#
    );
    let rows: Vec<(i64, String)> = bind_filter(sqlx::query(&sql), f)
        .bind(actor)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let running: Vec<String> = rows
        .iter()
        .filter(|(_, was)| was == "running")
        .map(|(id, _)| id.to_string())
        .collect();
    // NOTIFY payloads are limited to 8000 bytes.
    for chunk in running.chunks(500) {
        sqlx::query("SELECT pg_notify('fleet_cancel', $1)")
            .bind(chunk.join(","))
            .execute(&mut *conn)
            .await?;
    }
    Ok(rows)
}

/// JobPruneFinished: deletes up to `limit` jobs in `states` (final states only) finished more
/// than `older_than` ago. Returns how many were deleted; call until it returns less than `limit`.
pub async fn job_prune_finished(
    conn: &mut PgConnection,
    states: &[JobState],
    older_than: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let states: Vec<&str> = states
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    let r = sqlx::query(
        r#"
        WITH doomed AS (
            SELECT id FROM fleet_jobs
            WHERE state::text = ANY($1) AND finished_at < now() - $2 * interval '1 millisecond'
            ORDER BY id LIMIT $3
        )
        DELETE FROM fleet_jobs j USING doomed WHERE j.id = doomed.id
        "#,
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// JobCountPrunable: how many jobs [`job_prune_finished`] would delete.
pub async fn job_count_prunable(
    conn: &mut PgConnection,
    states: &[JobState],
    older_than: Duration,
) -> Result<i64, sqlx::Error> {
    let states: Vec<&str> = states
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs
         WHERE state::text = ANY($1) AND finished_at < now() - $2 * interval '1 millisecond'",
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .fetch_one(conn)
    .await
}

/// What a drain waits for, over the drained kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DrainCounts {
    /// Available jobs a drain lets run: at or below a draining kind's cutoff, or of a kind not
    /// paused at all (what a drain started now would let run).
    pub backlog: i64,
    /// Available jobs held until resume: above the cutoff, or of a fully paused kind.
    pub held: i64,
    /// Running jobs.
    pub running: i64,
}

/// JobCountDraining: the drained kinds' available jobs, split into backlog and held, and their
/// running jobs.
pub async fn job_count_draining(
    conn: &mut PgConnection,
    kinds: &[String],
) -> Result<DrainCounts, sqlx::Error> {
    let row = sqlx::query(
        "SELECT
            count(*) FILTER (WHERE j.state = 'available' AND (p.kind IS NULL
                OR (p.drain_through_id IS NOT NULL AND j.id <= p.drain_through_id))),
            count(*) FILTER (WHERE j.state = 'available'),
            count(*) FILTER (WHERE j.state = 'running')
         FROM fleet_jobs j LEFT JOIN fleet_paused_kinds p ON p.kind = j.kind
         WHERE j.kind = ANY($1) AND j.state IN ('available', 'running')",
    )
    .bind(kinds)
    .fetch_one(conn)
    .await?;
    let (backlog, available): (i64, i64) = (row.get(0), row.get(1));
    Ok(DrainCounts {
        backlog,
        // Every available job is either backlog or held: held is what the claim skips.
        held: available - backlog,
        running: row.get(2),
    })
}

/// KindExists: whether any job of `kind` is stored (operators may address kinds this binary no
/// longer registers).
pub async fn kind_exists(conn: &mut PgConnection, kind: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fleet_jobs WHERE kind = $1)")
        .bind(kind)
        .fetch_one(conn)
        .await
}

/// CronTickClaim: records that `schedule`'s tick at `tick_at` is being enqueued, inside the
/// caller's transaction. Returns false when another scheduler already claimed it (the insert
/// waits for that scheduler's transaction, so the answer is final).
pub async fn cron_tick_claim(
    conn: &mut PgConnection,
    schedule: &str,
    tick_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO fleet_cron_ticks (schedule, tick_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(schedule)
    .bind(tick_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// CronTickSetJob: notes which job a claimed tick enqueued.
pub async fn cron_tick_set_job(
    conn: &mut PgConnection,
    schedule: &str,
    tick_at: DateTime<Utc>,
    job_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE fleet_cron_ticks SET job_id = $3 WHERE schedule = $1 AND tick_at = $2")
        .bind(schedule)
        .bind(tick_at)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// JobListStranded: running jobs whose lease expired more than `grace` ago — nobody is
/// rescuing them (no worker runs), so they would never finish. Ids, at most 100.
pub async fn job_list_stranded(
    conn: &mut PgConnection,
    grace: Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM fleet_jobs WHERE state = 'running'
           AND lease_expires_at < now() - $1 * interval '1 millisecond' ORDER BY id LIMIT 100",
    )
    .bind(grace.as_millis() as i64)
    .fetch_all(conn)
    .await
}

/// JobListPiiLikeArgs: jobs whose payload looks like it carries personal data (an e-mail
/// address, or a key naming a personal field). Payloads must carry ids only. At most 100.
pub async fn job_list_pii_like_args(conn: &mut PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        r#"SELECT id FROM fleet_jobs
           WHERE args::text ~* '"(passport[a-z_]*|full_name|given_name|family_name|date_of_birth|born_on|email|phone[a-z_]*)"\s*:'
              OR args::text ~ '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}'
           ORDER BY id LIMIT 100"#,
    )
    .fetch_all(conn)
    .await
}
