//! Every transition of a job row, in the order a job lives them: insert (enqueue), claim,
//! lease renewal, outcome, promotion of due jobs, rescue of expired leases, and the operator's
//! replay and cancel. The state machine and the function behind each arrow are in
//! docs/architecture.md; the worker that drives these statements is `src/worker/executor.rs`.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use jobs::Db;
use serde::Serialize;
use serde_json::Value;
use sqlx::{pool::PoolConnection, AssertSqlSafe, Connection, PgConnection, PgExecutor, Postgres, Row};

use super::{filter::bind_filter, AttemptError, JobFilter, JobState, Now, QueueError};
use crate::queue::filter::FILTER_SQL;

/// Rows per enqueue statement: keeps one statement's parameters and memory bounded.
pub const ENQUEUE_CHUNK: usize = 5_000;

/// How often a bulk enqueue re-tries the rows whose key holder vanished or expired mid-call.
const ENQUEUE_KEY_ROUNDS: usize = 5;

/// Most unfinished jobs of one key that a fair rank counts: a key with this many or more
/// queued ranks its new jobs from the cap. Fairness between keys is unchanged (a key with a
/// short backlog still goes first); within a key past the cap, jobs of later enqueue calls
/// interleave with earlier ones instead of queueing strictly behind them. What it buys: the
/// count per key and chunk is bounded, not the key's whole backlog (docs/limits.md).
pub const FAIR_RANK_BACKLOG_CAP: i64 = 100;

/// A job ready to insert: every placement field resolved.
#[derive(Debug, Clone)]
pub struct JobInsert {
    /// Which handler will run it; must be registered with the enqueuer.
    pub kind: String,
    /// Workers serving this queue claim it.
    pub queue: String,
    /// The handler's args: ids, never PII.
    pub args: Value,
    /// Lower is claimed first.
    pub priority: i16,
    /// Not before; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before the job goes dead (≥ 1).
    pub max_attempts: i32,
    /// Per-kind deduplication key.
    pub idempotency_key: Option<String>,
    /// W3C trace context of the enqueuing span.
    pub trace_context: Option<Value>,
    /// The job whose handler enqueued this one, if any.
    pub parent_id: Option<i64>,
    /// The value per-key limits and fairness count by (the kind's `limit_key` args field).
    pub limit_key: Option<String>,
    /// Whether the kind is claimed under a fleet-wide limit, budget or fairness key
    /// ([`jobs::KindDefaults::is_limited`]): such a row is filed for
    /// [`super::job_fetch_limited`] and never taken by the plain claim.
    pub limited: bool,
}

impl JobInsert {
    /// Neither an idempotency key nor a limit key: the row can conflict with no other (the only
    /// unique index besides the id holds keyed rows) and ranks 0, so neither its insert's order
    /// against other rows nor its connection matters (a batch of such rows may be split over
    /// connections, or copied).
    pub fn is_unkeyed(&self) -> bool {
        self.idempotency_key.is_none() && self.limit_key.is_none()
    }
}

/// Outcome of inserting one job.
pub use jobs::Enqueued;

/// JobInsertMany: inserts `jobs` in as few statements as possible, on `conn` (which may be in
/// the caller's transaction). Results come back in input order.
///
/// A job whose kind+key is held returns the holder's id with `duplicate = true`; it never fails
/// the rest of the batch. A holder whose post-completion window has elapsed is released and the
/// job inserted. Ready jobs `NOTIFY` [`super::JOBS_CHANNEL`] (delivered at the caller's commit).
pub async fn job_insert_many(
    conn: &mut PgConnection,
    jobs: &[JobInsert],
    now: Now,
) -> Result<Vec<Enqueued>, QueueError> {
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in validated_chunks(jobs)? {
        out.extend(insert_chunk(conn, chunk, now).await?);
    }
    Ok(out)
}

/// `jobs` in statement-sized chunks, once every one of them is valid: a batch with a bad job
/// writes nothing.
fn validated_chunks(jobs: &[JobInsert]) -> Result<std::slice::Chunks<'_, JobInsert>, QueueError> {
    for j in jobs {
        validate_insert(j)?;
    }
    Ok(jobs.chunks(ENQUEUE_CHUNK))
}

/// [`job_insert_many`] on a connection of a pool, which may also copy: a chunk of at least
/// [`COPY_MIN_ROWS`] jobs without keys is written by `COPY` ([`insert_unkeyed_by_copy`]), each
/// chunk still in a transaction of its own. Only on a pooled connection the caller owns, with
/// no transaction open on it: if this future is dropped while a `COPY` is under way, the
/// connection is closed instead of going back to the pool (sqlx's `COPY` leaves its protocol
/// state out of step then: the pool's release ping passes, and the next statement on it fails).
pub async fn job_insert_many_pooled(
    conn: &mut PoolConnection<Postgres>,
    jobs: &[JobInsert],
    now: Now,
) -> Result<Vec<Enqueued>, QueueError> {
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in validated_chunks(jobs)? {
        let copyable = chunk.len() >= COPY_MIN_ROWS && chunk.iter().all(JobInsert::is_unkeyed);
        if copyable {
            let mut guard = CloseIfAbandoned {
                conn: &mut *conn,
                armed: true,
            };
            let copied = insert_unkeyed_by_copy(guard.conn, chunk, now).await;
            // Finished, well or not: the protocol is in step again.
            guard.armed = false;
            out.extend(copied?);
        } else {
            out.extend(insert_chunk(&mut *conn, chunk, now).await?);
        }
    }
    Ok(out)
}

/// While armed, a pooled connection is marked to be closed, not returned to its pool, if the
/// future holding this guard is dropped.
struct CloseIfAbandoned<'c> {
    conn: &'c mut PoolConnection<Postgres>,
    armed: bool,
}

impl Drop for CloseIfAbandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.close_on_drop();
        }
    }
}

/// Checks what the schema would refuse (empty or long kind, queue or key; no attempts), so a
/// bad row is named before any statement runs.
pub fn validate_insert(j: &JobInsert) -> Result<(), QueueError> {
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
    if matches!(&j.limit_key, Some(k) if k.len() > 512) {
        return Err(QueueError::InvalidJob(format!(
            "limit key of kind {:?} must be at most 512 bytes",
            j.kind
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
    now: Now,
) -> Result<Vec<Enqueued>, QueueError> {
    let mut result: Vec<Option<Enqueued>> = vec![None; chunk.len()];
    // Indices (into `chunk`) still to insert.
    let mut todo: Vec<usize> = (0..chunk.len()).collect();
    for _round in 0..ENQUEUE_KEY_ROUNDS {
        if todo.is_empty() {
            break;
        }
        let rows = insert_rows(&mut *conn, chunk, &todo, now).await?;
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
        let holders = key_holders(&mut *conn, chunk, &conflicted, now).await?;
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
            job_release_expired_keys(&mut *conn, &expired, now).await?;
        }
        todo = retry;
    }
    if !todo.is_empty() {
        return Err(QueueError::KeyContended {
            kind: chunk[todo[0]].kind.clone(),
            rounds: ENQUEUE_KEY_ROUNDS,
        });
    }
    Ok(result.into_iter().map(|r| r.expect("resolved")).collect())
}

/// Inserts `chunk[todo]`; returns (id, inserted) per row in `todo` order.
async fn insert_rows(
    conn: impl PgExecutor<'_>,
    chunk: &[JobInsert],
    todo: &[usize],
    now: Now,
) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    let n = todo.len();
    let mut traces: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut parents: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut limit_keys: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut limiteds: Vec<bool> = Vec::with_capacity(n);
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
        parents.push(j.parent_id);
        limit_keys.push(j.limit_key.as_deref());
        limiteds.push(j.limited);
    }
    // A keyed job's fair rank is its turn within its key: 1 + the key's unfinished jobs of
    // the kind, counted up to FAIR_RANK_BACKLOG_CAP (one bounded index walk per key of the
    // chunk), then its place among the chunk's jobs of that key. Chunks without keys skip the
    // ranking and insert rank 0.
    let keyed = limit_keys.iter().any(Option::is_some);
    let ranked = if keyed {
        // The count runs once per distinct key of the chunk (`keyed`), not once per row: per
        // row it was quadratic in a key's backlog (a 10,000-job burst from one user counted
        // the user's jobs 10,000 times). It stops at the cap: uncapped, every chunk paid for
        // each of its keys' whole backlog, with a heap visit per unfinished row, so a fan-out
        // of 1,000,000 searches over 100 users (10,000 each) took 2.4 s per re-run chunk.
        r#"keyed AS MATERIALIZED (
            SELECT k.kind, k.limit_key,
                   (SELECT count(*) FROM (
                        SELECT 1 FROM fleet_jobs f
                        WHERE f.kind = k.kind AND f.limit_key = k.limit_key
                          AND f.state IN ('scheduled', 'available', 'running', 'retryable')
                        LIMIT $13) backlog) AS unfinished
            FROM (SELECT DISTINCT kind, limit_key FROM input WHERE limit_key IS NOT NULL) k
        ), ranked AS (
            SELECT input.*, CASE WHEN input.limit_key IS NULL THEN 0 ELSE
                       keyed.unfinished
                       + row_number() OVER (PARTITION BY input.kind, input.limit_key ORDER BY input.ord)
                   END::int AS fair_rank
            FROM input
            LEFT JOIN keyed ON keyed.kind = input.kind AND keyed.limit_key = input.limit_key
        )"#
    } else {
        "ranked AS (SELECT input.*, 0 AS fair_rank FROM input)"
    };
    // Ids are drawn up front so every input row maps to its outcome by ordinality, whether it
    // was inserted or lost to a held key. The `notified` CTE wakes idle workers at commit.
    let sql = format!(
        r#"
        WITH input AS (
            SELECT nextval('fleet_jobs_id_seq') AS id, t.*
            FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[],
                        $5::timestamptz[], $6::int[], $7::text[], $8::jsonb[], $10::bigint[],
                        $11::text[], $12::bool[])
                 WITH ORDINALITY AS t(kind, queue, args, priority, run_at, max_attempts,
                                      idempotency_key, trace_context, parent_id, limit_key,
                                      limited, ord)
        ), {ranked}, inserted AS (
            INSERT INTO fleet_jobs (id, kind, queue, args, state, priority, run_at,
                                    max_attempts, idempotency_key, key_held, trace_context,
                                    parent_id, limit_key, fair_rank, limited)
            SELECT id, kind, queue, args,
                   CASE WHEN run_at IS NULL OR run_at <= coalesce($9, now()) THEN 'available'
                        ELSE 'scheduled' END::fleet_job_state,
                   priority, COALESCE(run_at, $9, now()), max_attempts, idempotency_key,
                   idempotency_key IS NOT NULL, trace_context, parent_id, limit_key, fair_rank,
                   limited
            FROM ranked ORDER BY ord
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
        "#
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(&kinds)
        .bind(&queues)
        .bind(&args)
        .bind(&prios)
        .bind(&run_ats)
        .bind(&maxes)
        .bind(&keys)
        .bind(&traces)
        .bind(now)
        .bind(&parents)
        .bind(&limit_keys)
        .bind(&limiteds);
    if keyed {
        query = query.bind(FAIR_RANK_BACKLOG_CAP);
    }
    let rows = query.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<bool, _>(1)))
        .collect())
}

/// Inserts a chunk of jobs without keys by `COPY`: such a row can conflict with nothing (the
/// only unique index besides the id holds keyed rows alone) and ranks 0, so it needs neither
/// the insert's `ON CONFLICT` arbiter nor its per-key ranking, and `COPY` skips the planning
/// and the array decoding of a bound `INSERT` (docs/benchmarks.md, "A bulk enqueue by COPY").
///
/// One transaction: the ids are drawn up front in input order, so ids ascend with the input and
/// a queue's jobs are claimed in the order given; the workers of each queue with a job due by
/// the statement's clock are notified, at commit; then the rows are copied. All of the chunk is
/// written, or none of it. Not cancel-safe: see [`job_insert_many_pooled`].
async fn insert_unkeyed_by_copy(
    conn: &mut PgConnection,
    chunk: &[JobInsert],
    now: Now,
) -> Result<Vec<Enqueued>, sqlx::Error> {
    // Each queue once, with its earliest run_at (None: due now), for the wake-up.
    let mut first_run_at: HashMap<&str, Option<DateTime<Utc>>> = HashMap::new();
    for j in chunk {
        first_run_at
            .entry(j.queue.as_str())
            .and_modify(|first| {
                *first = match (*first, j.run_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                }
            })
            .or_insert(j.run_at);
    }
    let (queues, first_run_ats): (Vec<&str>, Vec<Option<DateTime<Utc>>>) =
        first_run_at.into_iter().unzip();
    let mut tx = conn.begin().await?;
    let row = sqlx::query(
        r#"
        WITH notified AS (
            SELECT pg_notify('fleet_jobs', t.queue)
            FROM unnest($3::text[], $4::timestamptz[]) AS t(queue, first_run_at)
            WHERE t.first_run_at IS NULL OR t.first_run_at <= coalesce($1, now())
        )
        SELECT coalesce($1, now()),
               (SELECT array_agg(id ORDER BY id)
                FROM (SELECT nextval('fleet_jobs_id_seq') AS id
                      FROM generate_series(1, $2)) ids),
               (SELECT count(*) FROM notified)
        "#,
    )
    .bind(now)
    .bind(chunk.len() as i32)
    .bind(&queues)
    .bind(&first_run_ats)
    .fetch_one(&mut *tx)
    .await?;
    let at: DateTime<Utc> = row.get(0);
    let ids: Vec<i64> = row.get(1);
    let mut data = Vec::with_capacity(chunk.len() * 160);
    let mut scratch = Vec::new();
    for (j, id) in chunk.iter().zip(&ids) {
        copy_row(&mut data, &mut scratch, *id, j, at);
    }
    let mut copy = tx
        .copy_in_raw(
            "COPY fleet_jobs (id, kind, queue, args, state, priority, run_at, max_attempts, \
             trace_context, parent_id, limited) FROM STDIN",
        )
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(ids
        .into_iter()
        .map(|id| Enqueued {
            id,
            duplicate: false,
        })
        .collect())
}

/// Chunks of jobs without keys at least this long go by `COPY`; a shorter one is an `INSERT`,
/// one round trip against `COPY`'s four (begin, ids, copy, commit). Measured per job, one call
/// and one commit each, alternating (docs/benchmarks.md): about equal at 64 rows, `COPY`
/// 1.3-1.9x faster at 128 and 512, the `INSERT` up to 10 % faster at 4-32.
pub const COPY_MIN_ROWS: usize = 64;

/// Appends `j` as one line of `COPY`'s text format, in `insert_unkeyed_by_copy`'s column order
/// (`scratch` holds each JSON value as it is written). The state and a missing run_at are
/// resolved at `at`, the statement's clock, as the `INSERT` resolves them, and a run_at is
/// truncated to the microsecond first, as a bound timestamptz is.
fn copy_row(out: &mut Vec<u8>, scratch: &mut Vec<u8>, id: i64, j: &JobInsert, at: DateTime<Utc>) {
    use chrono::Timelike;
    use std::io::Write;
    let run_at = match j.run_at {
        Some(t) => t
            .with_nanosecond(t.nanosecond() / 1_000 * 1_000)
            .unwrap_or(t),
        None => at,
    };
    let state = if run_at <= at {
        JobState::Available
    } else {
        JobState::Scheduled
    };
    let mut json = |out: &mut Vec<u8>, v: &Value| {
        scratch.clear();
        serde_json::to_writer(&mut *scratch, v).expect("a JSON value serializes");
        copy_text(out, scratch);
    };
    let _ = write!(out, "{id}\t");
    copy_text(out, j.kind.as_bytes());
    out.push(b'\t');
    copy_text(out, j.queue.as_bytes());
    out.push(b'\t');
    json(out, &j.args);
    let _ = write!(
        out,
        "\t{}\t{}\t{}\t{}\t",
        state.as_str(),
        j.priority,
        run_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        j.max_attempts
    );
    match &j.trace_context {
        Some(t) => json(out, t),
        None => out.extend_from_slice(b"\\N"),
    }
    match j.parent_id {
        Some(p) => {
            let _ = write!(out, "\t{p}");
        }
        None => out.extend_from_slice(b"\t\\N"),
    }
    out.extend_from_slice(if j.limited { b"\tt\n" } else { b"\tf\n" });
}

/// `s` as a field of `COPY`'s text format: the backslash and the three characters that would
/// end a field or a line are escaped; everything else is taken as it is.
fn copy_text(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// For `chunk[idx]` rows that conflicted: idx → (holder id, holder's window has elapsed).
async fn key_holders(
    conn: impl PgExecutor<'_>,
    chunk: &[JobInsert],
    idxs: &[usize],
    now: Now,
) -> Result<HashMap<usize, (i64, bool)>, sqlx::Error> {
    let kinds: Vec<&str> = idxs.iter().map(|&i| chunk[i].kind.as_str()).collect();
    let keys: Vec<&str> = idxs
        .iter()
        .map(|&i| chunk[i].idempotency_key.as_deref().unwrap_or(""))
        .collect();
    let rows = sqlx::query(
        r#"
        SELECT t.ord, j.id, COALESCE(j.key_held_until <= coalesce($3, now()), false) AS expired
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(kind, key, ord)
        JOIN fleet_jobs j ON j.kind = t.kind AND j.idempotency_key = t.key AND j.key_held
        "#,
    )
    .bind(&kinds)
    .bind(&keys)
    .bind(now)
    .fetch_all(conn)
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
async fn job_release_expired_keys(
    conn: impl PgExecutor<'_>,
    ids: &[i64],
    now: Now,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fleet_jobs SET key_held = false, key_held_until = NULL
         WHERE id = ANY($1) AND key_held AND key_held_until <= coalesce($2, now())",
    )
    .bind(ids)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job as a worker claimed it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Stable across every attempt.
    pub id: i64,
    /// Which handler runs it.
    pub kind: String,
    /// The handler's args as stored.
    pub args: Value,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// This is the last attempt when `attempt == max_attempts`.
    pub max_attempts: i32,
    /// Fencing token of this claim.
    pub claim_seq: i32,
    /// W3C trace context of the enqueuing span.
    pub trace_context: Option<Value>,
}

/// Parameters of [`job_fetch_available`].
#[derive(Debug, Clone)]
pub struct FetchParams<'a> {
    /// Queues to serve; `None` = all.
    pub queues: Option<&'a [String]>,
    /// Kinds not to claim now (at their per-kind concurrency limit, or external here).
    pub skip_kinds: &'a [String],
    /// Claim only these kinds; `None` = any kind (an apalis backend's runtime claims its own
    /// kind alone).
    pub only_kinds: Option<&'a [String]>,
    /// The kinds this worker claims with [`super::job_fetch_limited`]. A ready row of one of
    /// them that is still filed as unlimited (enqueued before its kind got a limit) is never
    /// claimed here: the claim re-files it for the limited claim instead.
    pub limited_kinds: &'a [String],
    /// Most jobs to claim.
    pub limit: i64,
    /// Lease owner recorded on the rows (worker id).
    pub owner: &'a str,
    /// How long each claim holds without a heartbeat.
    pub lease: Duration,
    /// The clock of the claim (lease start); `None` = the database's.
    pub now: Now,
}

/// JobFetchAvailable: claims up to `limit` ready jobs in (priority, run_at, id) order with
/// `FOR UPDATE SKIP LOCKED`, never a paused kind (a draining kind only up to its cutoff id),
/// never a row filed as limited (those are [`super::job_fetch_limited`]'s). Each claim charges
/// an attempt, bumps `claim_seq` and starts a lease. The scan is the `limited = false` part of
/// `fleet_jobs_fetch_available_idx`, which holds only `available` rows, so neither finished
/// history nor a backlog of throttled limited jobs slows it down.
///
/// A row of one of `limited_kinds` still filed as unlimited (enqueued before its kind got a
/// limit, or by a binary without it) is re-filed as limited instead of claimed, in the same
/// statement: this worker knows the kind's limit, so it must not run it past the limit.
/// Statements repeat while they re-file rows, so re-filing never costs a claim its jobs.
///
/// The claim runs in its own transaction with sequential and bitmap scans off, so its plan is
/// the ordered walk of that index from the very first claim. On a table autovacuum has not
/// analyzed yet the planner otherwise picks a bitmap scan plus a sort of the whole backlog:
/// 7.6 ms per claim at 20,000 ready jobs against 0.12 ms (docs/benchmarks.md). The claim's
/// commit stays synchronous: a claim lost in a crash would let two runs share a fencing token.
/// Workers claim through [`job_fetch_available_on`] instead, whose session is pinned once, so
/// the claim needs no transaction of its own (decision 39).
#[cfg(any(test, feature = "testkit"))]
pub async fn job_fetch_available(
    conn: &mut PgConnection,
    p: &FetchParams<'_>,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut tx = begin_pinned(conn).await?;
    let out = fetch_available(&mut tx, p).await?;
    tx.commit().await?;
    Ok(out)
}

/// The connection a worker's fetch loop claims on, with its plans pinned (sequential and
/// bitmap scans off) so every claim walks the ready indexes (decisions 23 and 39), and, on a
/// session of its own, generic so each claim statement is planned once ([`pin_session_plans`],
/// decision 56):
/// - **a session of its own** when the database offers sessions ([`Db::session_pool`]): a
///   connection taken out of the session pool for good, pinned once; each claim is then one
///   autocommit statement in one round trip. Nothing else runs on it, so the settings reach
///   no other statement, and it never returns to the pool (dropping it closes it);
/// - **a transaction per round** behind a transaction pooler with no direct connection: the
///   round's claims run in one transaction pinned with `SET LOCAL`-style settings, committed by
///   [`ClaimSession::end_round`] before any claimed job starts; nothing outlives it.
pub struct ClaimSession {
    conn: ClaimConn,
}

enum ClaimConn {
    Session(PgConnection),
    Round(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl ClaimSession {
    /// A claim session on `db`: a pinned session of its own if `db` offers sessions, else one
    /// round's pinned transaction.
    pub async fn open(db: &Db) -> Result<Self, sqlx::Error> {
        let conn = match db.session_pool() {
            Some(sessions) => {
                let mut conn = sessions.acquire().await?.detach();
                pin_session_plans(&mut conn).await?;
                ClaimConn::Session(conn)
            }
            None => ClaimConn::Round(begin_pinned_in(db).await?),
        };
        Ok(Self { conn })
    }

    /// The connection, for the limited claims (each one autocommit statement on a session of
    /// its own; one statement of the round's transaction when there is one).
    pub fn conn(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            ClaimConn::Session(c) => c,
            ClaimConn::Round(tx) => tx,
        }
    }

    /// Whether each claim commits on its own (a session of its own), so its jobs are the
    /// worker's as soon as it answers; `false` for a round's transaction, whose claims are the
    /// worker's only once [`ClaimSession::end_round`] has committed it.
    pub fn commits_each_claim(&self) -> bool {
        matches!(self.conn, ClaimConn::Session(_))
    }

    /// Ends a round of claims: commits the round's transaction (its claims become the
    /// worker's) and gives the session back to keep for the next round, or `None` when the
    /// next round needs a new one.
    pub async fn end_round(self) -> Result<Option<Self>, sqlx::Error> {
        match self.conn {
            ClaimConn::Session(_) => Ok(Some(self)),
            ClaimConn::Round(tx) => {
                tx.commit().await?;
                Ok(None)
            }
        }
    }
}

/// The plain claim ([`job_fetch_available`]) on a [`ClaimSession`], one statement per round
/// trip: the same claim, the same plan, the same synchronous commit (the round's, for a
/// per-round session).
pub async fn job_fetch_available_on(
    session: &mut ClaimSession,
    p: &FetchParams<'_>,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    fetch_available(session.conn(), p).await
}

/// The plain claim's rounds on `conn`, whose plans are pinned (a pinned session or a pinned
/// transaction).
async fn fetch_available(
    conn: &mut PgConnection,
    p: &FetchParams<'_>,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut out = Vec::new();
    // Each round re-files at most `limit` rows; a misfiled backlog is re-filed a statement
    // at a time, and the rounds stop once a statement re-files nothing.
    for _ in 0..REFILE_ROUNDS {
        let want = p.limit - out.len() as i64;
        if want <= 0 {
            break;
        }
        let rows = claim_statement(p, want).fetch_all(&mut *conn).await?;
        let refiled: i64 = rows.first().map(|r| r.get("refiled")).unwrap_or(0);
        out.extend(
            rows.iter()
                .filter(|r| r.get::<Option<i64>, _>(0).is_some())
                .map(claimed_from_row),
        );
        if refiled == 0 {
            break;
        }
    }
    Ok(out)
}

/// The plain claim's statement (see [`job_fetch_available`]), claiming up to `want` jobs.
fn claim_statement<'q>(
    p: &'q FetchParams<'q>,
    want: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(
        r#"
        WITH picked AS (
            SELECT id, kind = ANY($7::text[]) AS misfiled FROM fleet_jobs j
            WHERE state = 'available' AND NOT limited
              AND ($1::text[] IS NULL OR queue = ANY($1))
              AND kind <> ALL($2::text[])
              AND ($8::text[] IS NULL OR kind = ANY($8))
              AND NOT EXISTS (
                  SELECT 1 FROM fleet_paused_kinds p
                  WHERE p.kind = j.kind AND (p.drain_through_id IS NULL OR j.id > p.drain_through_id))
            ORDER BY priority, run_at, id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        ), refiled AS (
            UPDATE fleet_jobs j SET limited = true
            FROM picked WHERE j.id = picked.id AND picked.misfiled
            RETURNING j.id
        ), claimed AS (
            UPDATE fleet_jobs j
            SET state = 'running', attempt = j.attempt + 1, claim_seq = j.claim_seq + 1,
                lease_owner = $4,
                lease_expires_at = coalesce($6, now()) + $5 * interval '1 millisecond',
                attempted_at = coalesce($6, now())
            FROM picked WHERE j.id = picked.id AND NOT picked.misfiled
            RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.claim_seq,
                      j.trace_context
        )
        SELECT claimed.*, r.refiled
        FROM (SELECT count(*) AS refiled FROM refiled) r LEFT JOIN claimed ON true
        "#,
    )
    .bind(p.queues)
    .bind(p.skip_kinds)
    .bind(want)
    .bind(p.owner)
    .bind(p.lease.as_millis() as i64)
    .bind(p.now)
    .bind(p.limited_kinds)
    .bind(p.only_kinds)
}

/// Most statements one [`job_fetch_available`] call runs while it re-files misfiled rows.
const REFILE_ROUNDS: usize = 16;

/// JobRefileUnlimited: ready rows of `kinds` still filed as limited (enqueued while the kind
/// had a limit, budget or fairness key, which it no longer has here) → filed for the plain
/// claim, at most `limit` per call. Without it they would wait for a limited claim that this
/// worker no longer runs for their kind. One probe of `fleet_jobs_fetch_limited_idx` per kind
/// when there is nothing to do. Returns how many rows were re-filed.
pub async fn job_refile_unlimited(
    db: &Db,
    kinds: &[String],
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = begin_pinned_in(db).await?;
    let n = sqlx::query(
        r#"
        UPDATE fleet_jobs j SET limited = false
        FROM (SELECT id FROM fleet_jobs
              WHERE state = 'available' AND limited AND kind = ANY($1::text[])
              LIMIT $2
              FOR UPDATE SKIP LOCKED) m
        WHERE j.id = m.id
        "#,
    )
    .bind(kinds)
    .bind(limit)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// A transaction whose plans cannot use sequential or bitmap scans, so they walk the ready
/// indexes from the very first claim on a never-analyzed table (decisions.md 23).
pub(super) async fn begin_pinned(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    pin_plans(&mut tx).await?;
    Ok(tx)
}

/// [`begin_pinned`] on a connection of `db`'s pool.
pub(super) async fn begin_pinned_in(
    db: &Db,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = db.begin().await?;
    pin_plans(&mut tx).await?;
    Ok(tx)
}

/// Turns sequential and bitmap scans off for the current transaction.
async fn pin_plans(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Pins the plans of a session that runs the engine's own statements alone ([`ClaimSession`],
/// [`OutcomeWriter`]), for the rest of the session: sequential and bitmap scans off, so every
/// plan walks an index even on a table never analyzed; and generic plans only, so each
/// statement is planned once per session instead of once per call. Under `auto` the plan cache
/// kept choosing custom plans for the claim in some runs and not in others (28,000 of 33,800
/// calls planned again, 0.26 ms each, at 3,000 jobs/s) and for the outcome write in about half
/// its calls: a custom plan for a handful of rows is costed below the generic plan, which
/// assumes arrays of unknown length (docs/benchmarks.md). With scans off the generic plan is
/// the same index walk.
async fn pin_session_plans(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false), \
                set_config('plan_cache_mode', 'force_generic_plan', false)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A claim's `RETURNING id, kind, args, attempt, max_attempts, claim_seq,
/// trace_context`.
pub(super) fn claimed_from_row(r: &sqlx::postgres::PgRow) -> ClaimedJob {
    ClaimedJob {
        id: r.get(0),
        kind: r.get(1),
        args: r.get(2),
        attempt: r.get(3),
        max_attempts: r.get(4),
        claim_seq: r.get(5),
        trace_context: r.get(6),
    }
}

/// JobExtendLeases: renews the leases of the given claims; returns the ids still held.
/// A claim missing from the result lost its lease (rescued or cancelled): its handler must stop.
pub async fn job_extend_leases(
    conn: impl PgExecutor<'_>,
    claims: &[(i64, i32)],
    lease: Duration,
    now: Now,
) -> Result<Vec<i64>, sqlx::Error> {
    // Rows in id order, as the outcome writes take them: the two statements lock a worker's
    // claims in the same order, so they wait on each other instead of deadlocking.
    let mut claims = claims.to_vec();
    claims.sort_unstable();
    let (ids, seqs): (Vec<i64>, Vec<i32>) = claims.into_iter().unzip();
    sqlx::query_scalar(
        r#"
        UPDATE fleet_jobs j
        SET lease_expires_at = coalesce($4, now()) + $3 * interval '1 millisecond'
        FROM unnest($1::bigint[], $2::int[]) AS h(id, claim_seq)
        WHERE j.id = h.id AND j.claim_seq = h.claim_seq AND j.state::text = 'running'
        RETURNING j.id
        "#,
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(lease.as_millis() as i64)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// JobSetOutcomeMany: writes many claims' outcomes in one statement, each fenced on
/// `(id, claim_seq, state = 'running')`. Returns the ids written; an outcome whose claim no
/// longer holds the job is not written (and so not returned).
///
/// Its commit is asynchronous (`synchronous_commit = off` for this transaction only): it does
/// not wait for the WAL flush, which on this machine's disk is ~5 ms per commit. Postgres
/// crashing within the WAL writer's delay (≤ 3 × `wal_writer_delay`, 600 ms by default) can
/// lose such an outcome. The job is then back to `running` under the claim that ran it, its
/// lease expires, the rescuer takes it back and it runs again: exactly what happens when a
/// worker is killed after its handler finished, which every handler already tolerates
/// (idempotency keys, domain re-checks). Nothing is lost; enqueues, claims and domain writes
/// stay synchronous (decisions.md).
pub async fn job_set_outcome_many(
    conn: impl PgExecutor<'_>,
    outcomes: &[OutcomeRow],
    now: Now,
) -> Result<Vec<i64>, sqlx::Error> {
    let n = outcomes.len();
    let mut ids = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut deltas = Vec::with_capacity(n);
    let mut delays: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut windows = Vec::with_capacity(n);
    // In id order, as the lease renewal takes them (see [`job_extend_leases`]).
    let mut sorted: Vec<&OutcomeRow> = outcomes.iter().collect();
    sorted.sort_unstable_by_key(|o| o.id);
    for o in sorted {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        ids.push(o.id);
        seqs.push(o.claim_seq);
        states.push(o.state.as_str());
        deltas.push(if o.attempt_charged { 0 } else { -1 });
        delays.push(o.run_in.map(ms));
        errors.push(
            o.error
                .as_ref()
                .map(|e| serde_json::to_value(e).expect("serializable")),
        );
        windows.push(ms(o.key_window));
    }
    sqlx::query_scalar(
        r#"
        WITH async_commit AS MATERIALIZED (
            SELECT set_config('synchronous_commit', 'off', true) AS setting
        )
        UPDATE fleet_jobs j SET
            state = o.state::fleet_job_state,
            attempt = j.attempt + o.attempt_delta,
            run_at = CASE WHEN o.delay_ms IS NULL THEN j.run_at
                          ELSE coalesce($8, now()) + o.delay_ms * interval '1 millisecond' END,
            errors = CASE WHEN o.error IS NULL THEN j.errors
                          ELSE j.errors || jsonb_build_array(
                                   o.error || jsonb_build_object('at', coalesce($8, now()))) END,
            finished_at = CASE WHEN o.state IN ('completed', 'cancelled', 'dead')
                               THEN coalesce($8, now()) END,
            lease_owner = NULL,
            lease_expires_at = NULL,
            outcome_claim_seq = o.claim_seq,
            key_held = j.key_held AND o.state NOT IN ('cancelled', 'dead')
                       AND (o.state <> 'completed' OR o.key_window_ms > 0),
            key_held_until = CASE WHEN j.key_held AND o.state = 'completed' AND o.key_window_ms > 0
                                  THEN coalesce($8, now()) + o.key_window_ms * interval '1 millisecond' END
        FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::bigint[], $6::jsonb[],
                    $7::bigint[])
             AS o(id, claim_seq, state, attempt_delta, delay_ms, error, key_window_ms),
             async_commit
        WHERE j.id = o.id AND j.claim_seq = o.claim_seq AND j.state::text = 'running'
          AND async_commit.setting IS NOT NULL
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
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Where a worker's completer writes outcomes ([`job_set_outcome_many`],
/// [`job_outcome_written_by`]), with their plans generic and pinned (decision 56):
/// - **a session of its own** when the pool's connections are sessions (a direct connection
///   or a session pooler): a connection taken out of the pool for good, its plans pinned
///   ([`pin_session_plans`]), so the outcome write is planned once per session, as a walk of
///   the primary key, instead of once per call. Nothing else runs on that connection, so the
///   settings reach no other statement; it never returns to the pool (a failed or timed-out
///   statement drops and closes it, and the next write opens another);
/// - **the pool** behind a transaction pooler, as every other statement there: a session
///   setting would reach other clients, and the direct connection is kept for what cannot do
///   without one.
///
/// Every statement is bounded by the handle's statement timeout, on the session too.
pub struct OutcomeWriter {
    db: Db,
    session: Option<PgConnection>,
}

impl OutcomeWriter {
    /// A writer on `db`; its session, if any, is opened by the first write.
    pub fn new(db: &Db) -> Self {
        Self {
            db: db.clone(),
            session: None,
        }
    }

    /// [`job_set_outcome_many`] on the writer's session, or on the pool.
    pub async fn set_outcome_many(
        &mut self,
        outcomes: &[OutcomeRow],
        now: Now,
    ) -> Result<Vec<i64>, sqlx::Error> {
        if self.db.through_transaction_pooler() {
            return job_set_outcome_many(&self.db, outcomes, now).await;
        }
        let limit = self.db.statement_timeout();
        let r = bounded(limit, async {
            job_set_outcome_many(self.session().await?, outcomes, now).await
        })
        .await;
        self.keep_if(r)
    }

    /// [`job_outcome_written_by`] on the writer's session, or on the pool.
    pub async fn outcome_written_by(
        &mut self,
        claims: &[(i64, i32)],
    ) -> Result<Vec<i64>, sqlx::Error> {
        if self.db.through_transaction_pooler() {
            return job_outcome_written_by(&self.db, claims).await;
        }
        let limit = self.db.statement_timeout();
        let r = bounded(limit, async {
            job_outcome_written_by(self.session().await?, claims).await
        })
        .await;
        self.keep_if(r)
    }

    /// The session, opened first if none is: a connection out of the session pool for good,
    /// its plans generic and pinned to index walks for the rest of the session.
    async fn session(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.session.is_none() {
            let sessions = self
                .db
                .session_pool()
                .expect("a pool that is not behind a transaction pooler is a pool of sessions");
            let mut conn = sessions.acquire().await?.detach();
            pin_session_plans(&mut conn).await?;
            self.session = Some(conn);
        }
        Ok(self.session.as_mut().expect("opened above"))
    }

    /// Drops (closes) the session after a failed or timed-out statement, whose connection is
    /// in an unknown state; the next write opens another.
    fn keep_if<T>(&mut self, r: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if r.is_err() {
            self.session = None;
        }
        r
    }

    /// Ends the writer's session, if one is open, with a goodbye to the server.
    pub async fn close(mut self) {
        if let Some(conn) = self.session.take() {
            let _ = conn.close().await;
        }
    }

    /// The writer's session, if one is open: for inspection (its prepared statements, its
    /// settings), never for other statements.
    #[cfg(any(test, feature = "testkit"))]
    pub fn open_session(&mut self) -> Option<&mut PgConnection> {
        self.session.as_mut()
    }
}

/// `unit`, failed with an I/O error of kind `TimedOut` if it has no answer within `limit`
/// (the handle's statement timeout, for statements on a connection of their own).
async fn bounded<T>(
    limit: Option<Duration>,
    unit: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match limit {
        None => unit.await,
        Some(limit) => tokio::time::timeout(limit, unit).await.unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer to the outcome write within database.statement_timeout",
            )))
        }),
    }
}

/// JobOutcomeWrittenBy: of `claims`, the jobs whose latest outcome those very claims wrote.
/// After a write whose acknowledgement was lost (the connection dropped after the commit),
/// the retried write is refused by the fence; this tells that apart from a job that was
/// rescued or cancelled meanwhile.
pub async fn job_outcome_written_by(
    conn: impl PgExecutor<'_>,
    claims: &[(i64, i32)],
) -> Result<Vec<i64>, sqlx::Error> {
    let (ids, seqs): (Vec<i64>, Vec<i32>) = claims.iter().copied().unzip();
    sqlx::query_scalar(
        r#"
        SELECT j.id FROM fleet_jobs j
        JOIN unnest($1::bigint[], $2::int[]) AS c(id, claim_seq) ON j.id = c.id
        WHERE j.claim_seq = c.claim_seq AND j.outcome_claim_seq = c.claim_seq
          AND j.state::text <> 'running'
        "#,
    )
    .bind(&ids)
    .bind(&seqs)
    .fetch_all(conn)
    .await
}

/// Writes one claim's outcome; [`QueueError::LostLease`] if the claim no longer holds the job.
#[cfg(any(test, feature = "testkit"))]
pub async fn job_set_outcome(
    conn: &mut PgConnection,
    outcome: OutcomeRow,
    now: Now,
) -> Result<(), QueueError> {
    let (id, claim_seq) = (outcome.id, outcome.claim_seq);
    let written = job_set_outcome_many(conn, std::slice::from_ref(&outcome), now).await?;
    if written.is_empty() {
        return Err(QueueError::LostLease { id, claim_seq });
    }
    Ok(())
}

/// What one [`job_promote_due`] statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// Jobs moved to `available`.
    pub moved: u64,
    /// How long until the earliest `run_at` of the scheduled and retryable jobs not yet due, as
    /// the statement saw them, measured from its `now` (so on the database's clock, whatever
    /// the host's says): when the next pass has work. `None` when none is waiting.
    pub next_due_in: Option<Duration>,
}

/// JobPromoteDue: moves up to `limit` scheduled/retryable jobs whose `run_at` has come to
/// `available`, and wakes workers if any moved. Reports how many moved and when the next one
/// comes due (one more probe of the same index, from `now` on).
pub async fn job_promote_due(
    conn: impl PgExecutor<'_>,
    limit: i64,
    now: Now,
) -> Result<Promoted, sqlx::Error> {
    let (moved, next_due_in_s): (i64, Option<f64>) = sqlx::query_as(
        r#"
        WITH due AS (
            SELECT id FROM fleet_jobs
            WHERE state IN ('scheduled', 'retryable') AND run_at <= coalesce($2, now())
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), promoted AS (
            UPDATE fleet_jobs j SET state = 'available' FROM due WHERE j.id = due.id
            RETURNING j.queue
        ), notified AS (
            SELECT pg_notify('fleet_jobs', q.queue) FROM (SELECT DISTINCT queue FROM promoted) q
        )
        SELECT (SELECT count(*) FROM promoted) + 0 * (SELECT count(*) FROM notified),
               (SELECT extract(epoch FROM min(run_at) - coalesce($2, now()))::float8
                FROM fleet_jobs
                WHERE state IN ('scheduled', 'retryable') AND run_at > coalesce($2, now()))
        "#,
    )
    .bind(limit)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(Promoted {
        moved: moved as u64,
        next_due_in: next_due_in_s.map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
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
///
/// Jobs in `spare` are left alone: a rescuer passes the claims its own worker holds, which are
/// alive by definition (the worker holds them until their outcomes are written; after an
/// outage its heartbeat renews their leases and its completer writes what finished meanwhile).
/// Rescuing them would re-run work whose outcome is merely waiting to be written. A claim the
/// worker does not hold (its acknowledgement was lost) is not spared: nobody would run it.
pub async fn job_rescue_expired(
    conn: impl PgExecutor<'_>,
    limit: i64,
    spare: &[i64],
    now: Now,
) -> Result<RescueCount, sqlx::Error> {
    let row = sqlx::query(
        r#"
        WITH expired AS (
            SELECT id FROM fleet_jobs
            WHERE state = 'running' AND lease_expires_at < coalesce($2, now())
              AND id <> ALL($3::bigint[])
            ORDER BY lease_expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), rescued AS (
            UPDATE fleet_jobs j SET
                state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead'
                             ELSE 'retryable' END::fleet_job_state,
                run_at = coalesce($2, now()),
                finished_at = CASE WHEN j.attempt >= j.max_attempts THEN coalesce($2, now()) END,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'at', coalesce($2, now()), 'attempt', j.attempt, 'class', 'lease_expired',
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
    .bind(now)
    .bind(spare)
    .fetch_one(conn)
    .await?;
    Ok(RescueCount {
        retried: row.get::<i64, _>(0) as u64,
        dead: row.get::<i64, _>(1) as u64,
    })
}

/// What a replay did ([`crate::Ops::replay`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayResult {
    /// Jobs made available again with a fresh attempt budget.
    pub replayed: Vec<i64>,
    /// Matching dead/cancelled jobs left alone, with why.
    pub skipped: Vec<SkippedJob>,
}

/// A job an operator command matched but left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedJob {
    /// The job.
    pub id: i64,
    /// Why it was left alone.
    pub reason: String,
}

/// A job an operator cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelledJob {
    /// The job.
    pub id: i64,
    /// The state it was in (`running` ones were told to stop).
    pub was: String,
}

/// JobReplay: dead or cancelled jobs matching `f` → `available` now, attempt 0 (a fresh budget),
/// error history kept, idempotency key taken again. A job whose key another job holds now is
/// skipped (replaying it would run the same work twice).
pub async fn job_replay(
    conn: &mut PgConnection,
    f: &JobFilter,
    now: Now,
) -> Result<ReplayResult, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM fleet_jobs WHERE {FILTER_SQL} AND state IN ('dead', 'cancelled')
         ORDER BY id FOR UPDATE"
    );
    let targets: Vec<i64> = bind_filter(sqlx::query(AssertSqlSafe(sql)), f)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let replayed: Vec<i64> = sqlx::query_scalar(
        r#"
        WITH replayed AS (
            UPDATE fleet_jobs j SET state = 'available', attempt = 0, run_at = coalesce($2, now()),
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
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let done: std::collections::HashSet<i64> = replayed.iter().copied().collect();
    let skipped = targets
        .into_iter()
        .filter(|id| !done.contains(id))
        .map(|id| SkippedJob {
            id,
            reason: "its idempotency key is held by another job".to_owned(),
        })
        .collect();
    Ok(ReplayResult { replayed, skipped })
}

/// JobRunNow: scheduled or retrying jobs matching `f` → `available` now, as the promoter would
/// make them at their `run_at` (a retry keeps the attempt it already charged). Returns their
/// ids; workers are woken at commit.
pub async fn job_run_now(
    conn: &mut PgConnection,
    f: &JobFilter,
    now: Now,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        r#"
        WITH target AS (
            SELECT id FROM fleet_jobs
            WHERE {FILTER_SQL} AND state IN ('scheduled', 'retryable')
            ORDER BY id FOR UPDATE
        ), moved AS (
            UPDATE fleet_jobs j SET state = 'available', run_at = coalesce($10, now())
            FROM target t WHERE j.id = t.id
            RETURNING j.id, j.queue
        ), notified AS (
            SELECT pg_notify('fleet_jobs', q.queue) FROM (SELECT DISTINCT queue FROM moved) q
        )
        SELECT id FROM moved WHERE (SELECT count(*) FROM notified) >= 0 ORDER BY id
        "#
    );
    Ok(bind_filter(sqlx::query(AssertSqlSafe(sql)), f)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// What [`job_delete_finished`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteResult {
    /// Jobs deleted, with their history.
    pub deleted: Vec<i64>,
    /// Matching finished jobs left alone, with why.
    pub skipped: Vec<SkippedJob>,
}

/// JobDeleteFinished: finished jobs (completed, cancelled, dead) matching `f` are deleted,
/// history and all — except those whose idempotency key is still held (a completed job's key
/// window): deleting them would let a duplicate of the work in before the window ends.
pub async fn job_delete_finished(
    conn: &mut PgConnection,
    f: &JobFilter,
    now: Now,
) -> Result<DeleteResult, sqlx::Error> {
    let sql = format!(
        r#"
        SELECT id, key_held AND (key_held_until IS NULL OR key_held_until > coalesce($10, now())),
               key_held_until
        FROM fleet_jobs
        WHERE {FILTER_SQL} AND state IN ('completed', 'cancelled', 'dead')
        ORDER BY id FOR UPDATE
        "#
    );
    let rows = bind_filter(sqlx::query(AssertSqlSafe(sql)), f)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        if r.get::<bool, _>(1) {
            let until: Option<chrono::DateTime<chrono::Utc>> = r.get(2);
            skipped.push(SkippedJob {
                id,
                reason: match until {
                    Some(t) => format!(
                        "its idempotency key is held until {}: deleting it would let a duplicate in",
                        t.format("%Y-%m-%d %H:%M:%SZ")
                    ),
                    None => "its idempotency key is held: deleting it would let a duplicate in"
                        .to_owned(),
                },
            });
        } else {
            targets.push(id);
        }
    }
    let deleted: Vec<i64> =
        sqlx::query_scalar("DELETE FROM fleet_jobs WHERE id = ANY($1) RETURNING id")
            .bind(&targets)
            .fetch_all(&mut *conn)
            .await?;
    let mut deleted = deleted;
    deleted.sort_unstable();
    Ok(DeleteResult { deleted, skipped })
}

/// JobCancel: unfinished jobs matching `f` → `cancelled`, with a `cancelled` entry naming the
/// actor. Running ones are fenced out at once (their worker's outcome write will miss) and their
/// workers are told over [`CANCEL_CHANNEL`](super::CANCEL_CHANNEL) (at commit) to stop the
/// handlers. Returns each job with the state it was in.
pub async fn job_cancel(
    conn: &mut PgConnection,
    f: &JobFilter,
    actor: &str,
    now: Now,
) -> Result<Vec<CancelledJob>, sqlx::Error> {
    let sql = format!(
        r#"
        WITH target AS (
            SELECT id, state FROM fleet_jobs
            WHERE {FILTER_SQL} AND state IN ('scheduled', 'available', 'running', 'retryable')
            FOR UPDATE
        ), cancelled AS (
            UPDATE fleet_jobs j SET state = 'cancelled', finished_at = coalesce($11, now()),
                lease_owner = NULL, lease_expires_at = NULL, key_held = false, key_held_until = NULL,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'at', coalesce($11, now()), 'attempt', j.attempt, 'class', 'cancelled',
                    'message', 'cancelled by operator ' || $10))
            FROM target t WHERE j.id = t.id
            RETURNING j.id, t.state::text AS was
        )
        SELECT id, was FROM cancelled ORDER BY id
        "#
    );
    let rows: Vec<CancelledJob> = bind_filter(sqlx::query(AssertSqlSafe(sql)), f)
        .bind(actor)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| CancelledJob {
            id: r.get(0),
            was: r.get(1),
        })
        .collect();
    let running: Vec<String> = rows
        .iter()
        .filter(|c| c.was == "running")
        .map(|c| c.id.to_string())
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

/// One claim's outcome as [`job_set_outcome_many`] writes it: what the row becomes. The worker
/// decides it ([`crate::worker::outcome`]); this is only its shape in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRow {
    /// Job id.
    pub id: i64,
    /// The claim that produced it: the write is fenced on it.
    pub claim_seq: i32,
    /// `completed`, `retryable`, `dead`, `cancelled`, or `available` (given back unstarted).
    pub state: JobState,
    /// Whether the attempt the claim charged stays charged (`false`: a snooze or a claim given
    /// back unstarted, which must not count against `max_attempts`).
    pub attempt_charged: bool,
    /// For `retryable`: runs again this long after the write.
    pub run_in: Option<Duration>,
    /// Appended to the job's error history.
    pub error: Option<AttemptError>,
    /// For `completed`: how long the idempotency key stays held (zero: released now).
    pub key_window: Duration,
}
