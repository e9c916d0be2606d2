//! Operator reads over the queue: one job, pages of jobs, per-kind stats, and the checks that
//! `fleet check` runs. Nothing here writes.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgExecutor, Row};

use super::{
    filter::{bind_filter, FILTER_SQL},
    AttemptError, JobFilter, JobState, Now,
};

/// A job row as stored, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Stable across every attempt; what side-effect keys are derived from.
    pub id: i64,
    /// Which handler runs it (`Job::KIND`).
    pub kind: String,
    /// Workers serving this queue claim it.
    pub queue: String,
    /// The handler's args as stored: ids, never PII.
    pub args: Value,
    /// Where the job is in its life (docs/architecture.md).
    pub state: JobState,
    /// Lower is claimed first.
    pub priority: i16,
    /// Not claimed before this time; for a retry, when its backoff ends.
    pub run_at: DateTime<Utc>,
    /// Attempts charged.
    pub attempt: i32,
    /// Attempts before the job goes dead (fixed at enqueue).
    pub max_attempts: i32,
    /// Fencing token of the latest claim.
    pub claim_seq: i32,
    /// The key that dedupes enqueues of this kind, if any.
    pub idempotency_key: Option<String>,
    /// Whether the key is taken.
    pub key_held: bool,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// Current lease owner.
    pub lease_owner: Option<String>,
    /// Current lease expiry.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the latest claim began.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it reached a final state (set exactly then).
    pub finished_at: Option<DateTime<Utc>>,
    /// The job whose handler enqueued it, if any.
    pub parent_id: Option<i64>,
    /// The W3C trace context it was enqueued under (`traceparent`, `tracestate`).
    pub trace_context: Option<Value>,
}

impl JobRecord {
    /// The trace id of the enqueuing span, from its `traceparent` (`00-<trace id>-…`).
    pub fn trace_id(&self) -> Option<&str> {
        let tp = self.trace_context.as_ref()?.get("traceparent")?.as_str()?;
        tp.split('-').nth(1).filter(|t| t.len() == 32)
    }
}

/// JobIdsMissing: of `ids`, those no job has (never enqueued, or pruned), in the order given.
pub async fn job_ids_missing(
    conn: impl PgExecutor<'_>,
    ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT i FROM unnest($1::bigint[]) WITH ORDINALITY AS u(i, n)
         WHERE NOT EXISTS (SELECT 1 FROM fleet_jobs j WHERE j.id = u.i) ORDER BY n",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// JobGet: one job by id.
pub async fn job_get(conn: impl PgExecutor<'_>, id: i64) -> Result<Option<JobRecord>, sqlx::Error> {
    let row = sqlx::query(
        r#"
        SELECT id, kind, queue, args, state::text, priority, run_at, attempt, max_attempts,
               claim_seq, idempotency_key, key_held, errors, lease_owner, lease_expires_at,
               created_at, attempted_at, finished_at, parent_id, trace_context
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
        errors: super::history::history_from_stored(errors),
        lease_owner: r.get(13),
        lease_expires_at: r.get(14),
        created_at: r.get(15),
        attempted_at: r.get(16),
        finished_at: r.get(17),
        parent_id: r.get(18),
        trace_context: r.get(19),
    }))
}

/// JobCountByState: how many jobs are in each state (optionally of one kind).
pub async fn job_count_by_state(
    conn: impl PgExecutor<'_>,
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

/// One line of `fleet queue list`.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Stable across every attempt.
    pub id: i64,
    /// Which handler runs it.
    pub kind: String,
    /// Workers serving this queue claim it.
    pub queue: String,
    /// Where the job is in its life.
    pub state: String,
    /// Attempts charged.
    pub attempt: i32,
    /// Attempts before the job goes dead.
    pub max_attempts: i32,
    /// Not claimed before this time.
    pub run_at: DateTime<Utc>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The enqueue dedupe key, if any.
    pub idempotency_key: Option<String>,
    /// The latest error's message.
    pub last_error: Option<String>,
    /// The worker holding the job's lease (set while it runs).
    pub lease_owner: Option<String>,
    /// When the latest claim began.
    pub attempted_at: Option<DateTime<Utc>>,
}

/// The columns [`summary_of`] reads, in its order.
const SUMMARY_COLUMNS: &str = "id, kind, queue, state::text, attempt, max_attempts, run_at, \
     created_at, finished_at, idempotency_key, errors -> -1 ->> 'message', lease_owner, \
     attempted_at";

/// JobList: jobs matching `f`, newest first, `limit` per page, ids below `before_id`.
pub async fn job_list(
    conn: impl PgExecutor<'_>,
    f: &JobFilter,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}
         FROM fleet_jobs WHERE {FILTER_SQL} AND ($10::bigint IS NULL OR id < $10)
         ORDER BY id DESC LIMIT $11"
    );
    let rows = bind_filter(sqlx::query(AssertSqlSafe(sql)), f)
        .bind(before_id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(summary_of).collect())
}

/// Unfinished jobs of one kind in one state, for the metrics snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueGauge {
    /// The kind.
    pub kind: String,
    /// `scheduled`, `available`, `running` or `retryable`.
    pub state: String,
    /// How many.
    pub count: i64,
    /// For `available`: the age of the oldest, seconds since its `run_at`.
    pub oldest_age_s: Option<f64>,
}

/// JobGauges: per kind and unfinished state, the count (and the oldest ready job's age).
/// Reads unfinished rows only, each state through the partial index that holds exactly it
/// (`fetch_available`, `promote_due`, `rescue_expired`), so history never enters the query:
/// its cost follows the backlog, not the table.
pub async fn job_gauges(
    conn: impl PgExecutor<'_>,
    now: Now,
) -> Result<Vec<QueueGauge>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH t AS (SELECT coalesce($1::timestamptz, now()) AS now)
         SELECT kind, 'available', count(*),
                EXTRACT(EPOCH FROM (SELECT now FROM t) - min(run_at))::float8
           FROM fleet_jobs WHERE state = 'available' GROUP BY kind
         UNION ALL
         SELECT kind, state::text, count(*), NULL
           FROM fleet_jobs WHERE state IN ('scheduled', 'retryable') GROUP BY kind, state
         UNION ALL
         SELECT kind, 'running', count(*), NULL
           FROM fleet_jobs WHERE state = 'running' GROUP BY kind
         ORDER BY 1, 2",
    )
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| QueueGauge {
            kind: r.get(0),
            state: r.get(1),
            count: r.get(2),
            oldest_age_s: r.get(3),
        })
        .collect())
}

/// JobListChildren: the jobs job `id`'s handlers enqueued, oldest first (at most 200).
pub async fn job_list_children(
    conn: impl PgExecutor<'_>,
    id: i64,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM fleet_jobs WHERE parent_id = $1 ORDER BY id LIMIT 200"
    )))
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(summary_of).collect())
}

fn summary_of(r: sqlx::postgres::PgRow) -> JobSummary {
    JobSummary {
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
        lease_owner: r.get(11),
        attempted_at: r.get(12),
    }
}

/// Completions of one kind in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompletionMinute {
    /// The kind.
    pub kind: String,
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Jobs of `kind` that completed in it.
    pub completed: i64,
}

/// JobCountCompletedByMinute: per kind, completions in each of the last `minutes` whole
/// minutes up to now (the current, partial minute included), oldest first; minutes without a
/// completion are left out.
pub async fn job_count_completed_by_minute(
    conn: impl PgExecutor<'_>,
    minutes: i32,
    now: Now,
) -> Result<Vec<CompletionMinute>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "WITH t AS (SELECT coalesce($2::timestamptz, now()) AS now)
         SELECT kind, date_trunc('minute', finished_at) AS minute, count(*)
         FROM fleet_jobs, t
         WHERE state = 'completed'
           AND finished_at >= date_trunc('minute', t.now) - ($1 - 1) * interval '1 minute'
           AND finished_at <= t.now
         GROUP BY kind, minute ORDER BY minute, kind",
    )
    .bind(minutes)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, minute, completed)| CompletionMinute {
            kind,
            minute,
            completed,
        })
        .collect())
}

/// Per-kind figures for `fleet queue stats` (one row per kind and queue).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindStats {
    /// The kind these figures are about.
    pub kind: String,
    /// The queue its jobs are on (a kind whose queue changed has a row per queue).
    pub queue: String,
    /// Jobs per state (history included).
    pub states: std::collections::BTreeMap<String, i64>,
    /// Scheduled or retryable jobs whose `run_at` has come: claimable at the next promotion.
    pub due_now: i64,
    /// Scheduled or retryable jobs due later.
    pub later: i64,
    /// Jobs that went dead in the last 24 hours.
    pub dead_last_day: i64,
    /// Age of the oldest ready job (seconds since its run_at), if any.
    pub oldest_available_age_s: Option<f64>,
    /// Completions in the last minute.
    pub completed_last_minute: i64,
    /// `paused`, `draining`, or `None`.
    pub paused: Option<&'static str>,
    /// Of the ready jobs, those held back by a fleet-wide limit or an empty rate budget (the
    /// rest wait for a worker). Filled by `Ops::limits` (it needs the kinds' settings).
    pub waiting_on_limit: i64,
    /// What holds them (`global_concurrency 20/20`, `budget duffel_search blocked until …`).
    pub limited_by: Option<String>,
}

/// JobStats: per kind and queue, counts by state, due now and later, dead in the last day,
/// oldest ready age, completions in the last minute, and whether the kind is paused or
/// draining.
pub async fn job_stats(
    conn: &mut sqlx::PgConnection,
    now: Now,
) -> Result<Vec<KindStats>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH t AS (SELECT coalesce($1::timestamptz, now()) AS now)
         SELECT j.kind, j.queue, j.state::text, count(*),
                EXTRACT(EPOCH FROM t.now - min(j.run_at) FILTER (WHERE j.state = 'available'))::float8,
                count(*) FILTER (WHERE j.state = 'completed' AND j.finished_at > t.now - interval '1 minute'),
                count(*) FILTER (WHERE j.state IN ('scheduled', 'retryable') AND j.run_at <= t.now),
                count(*) FILTER (WHERE j.state = 'dead' AND j.finished_at > t.now - interval '1 day'),
                max(CASE WHEN p.kind IS NULL THEN NULL
                         WHEN p.drain_through_id IS NULL THEN 'paused' ELSE 'draining' END)
         FROM fleet_jobs j CROSS JOIN t
         LEFT JOIN fleet_paused_kinds p ON p.kind = j.kind
         GROUP BY j.kind, j.queue, j.state, t.now ORDER BY j.kind, j.queue",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<KindStats> = Vec::new();
    for r in rows {
        let (kind, queue): (String, String) = (r.get(0), r.get(1));
        if out
            .last()
            .map(|k| k.kind != kind || k.queue != queue)
            .unwrap_or(true)
        {
            out.push(KindStats {
                kind: kind.clone(),
                queue: queue.clone(),
                ..KindStats::default()
            });
        }
        let k = out.last_mut().expect("pushed");
        let (state, n): (String, i64) = (r.get(2), r.get(3));
        if let Some(age) = r.get::<Option<f64>, _>(4) {
            k.oldest_available_age_s = Some(age);
        }
        k.completed_last_minute += r.get::<i64, _>(5);
        let due: i64 = r.get(6);
        if state == "scheduled" || state == "retryable" {
            k.due_now += due;
            k.later += n - due;
        }
        k.dead_last_day += r.get::<i64, _>(7);
        k.paused = match r.get::<Option<String>, _>(8).as_deref() {
            Some("paused") => Some("paused"),
            Some("draining") => Some("draining"),
            _ => k.paused,
        };
        k.states.insert(state, n);
    }
    // A paused kind with no jobs at all is still worth a row.
    for p in super::kind_list_paused(conn).await? {
        if !out.iter().any(|k| k.kind == p.kind) {
            out.push(KindStats {
                kind: p.kind,
                queue: "-".to_owned(),
                paused: Some(if p.draining_through_id.is_some() {
                    "draining"
                } else {
                    "paused"
                }),
                ..KindStats::default()
            });
        }
    }
    Ok(out)
}

/// KindExists: whether any job of `kind` is stored (operators may address kinds this binary no
/// longer registers).
pub async fn kind_exists(conn: impl PgExecutor<'_>, kind: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fleet_jobs WHERE kind = $1)")
        .bind(kind)
        .fetch_one(conn)
        .await
}

/// JobListStranded: running jobs whose lease expired more than `grace` ago — nobody is
/// rescuing them (no worker runs), so they would never finish. Ids, at most 100.
pub async fn job_list_stranded(
    conn: impl PgExecutor<'_>,
    grace: Duration,
    now: Now,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM fleet_jobs WHERE state = 'running'
           AND lease_expires_at < coalesce($2, now()) - $1 * interval '1 millisecond'
         ORDER BY id LIMIT 100",
    )
    .bind(grace.as_millis() as i64)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// JobListPiiLikeArgs: jobs whose payload looks like it carries personal data (an e-mail
/// address, or a key naming a personal field). Payloads must carry ids only. At most 100.
pub async fn job_list_pii_like_args(conn: impl PgExecutor<'_>) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        r#"SELECT id FROM fleet_jobs
           WHERE args::text ~* '"(passport[a-z_]*|full_name|given_name|family_name|date_of_birth|born_on|email|phone[a-z_]*)"\s*:'
              OR args::text ~ '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}'
           ORDER BY id LIMIT 100"#,
    )
    .fetch_all(conn)
    .await
}

/// JobCountInFlight: jobs available, running or retryable, of kinds other than `except`.
pub async fn job_count_in_flight(
    conn: impl PgExecutor<'_>,
    except: &[String],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs
         WHERE state IN ('available', 'running', 'retryable') AND kind <> ALL($1)",
    )
    .bind(except)
    .fetch_one(conn)
    .await
}

/// Failed attempts recorded on jobs that are not dead (retries that happened), and dead jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryCounts {
    /// Error entries of jobs that are not dead.
    pub retries: i64,
    /// Dead jobs.
    pub dead: i64,
}

/// JobCountRetries: see [`RetryCounts`].
pub async fn job_count_retries(conn: impl PgExecutor<'_>) -> Result<RetryCounts, sqlx::Error> {
    let (retries, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(sum(jsonb_array_length(errors)), 0)::bigint FROM fleet_jobs
                 WHERE state <> 'dead'),
                (SELECT count(*) FROM fleet_jobs WHERE state = 'dead')",
    )
    .fetch_one(conn)
    .await?;
    Ok(RetryCounts { retries, dead })
}

/// JobCountCompletedOnce: of the jobs of `kind` whose `args.i` is below `below` (the bench's
/// burn-down), how many completed and how many were claimed more than once.
pub async fn job_count_completed_once(
    conn: impl PgExecutor<'_>,
    kind: &str,
    below: i64,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE claim_seq > 1)
         FROM fleet_jobs WHERE kind = $1 AND (args->>'i')::bigint < $2",
    )
    .bind(kind)
    .bind(below)
    .fetch_one(conn)
    .await
}

/// JobCountWithKeys: how many jobs hold one of `keys` as their idempotency key, and how many
/// jobs there are in all (benchmarks check "exactly these jobs, nothing else").
pub async fn job_count_with_keys(
    conn: impl PgExecutor<'_>,
    keys: &[String],
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM fleet_jobs WHERE idempotency_key = ANY($1)),
                (SELECT count(*) FROM fleet_jobs)",
    )
    .bind(keys)
    .fetch_one(conn)
    .await
}

/// What the jobs table takes on disk, and how many rows it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobTableSize {
    /// Rows (every state).
    pub rows: i64,
    /// The heap (`pg_relation_size`).
    pub heap_bytes: i64,
    /// Every index (`pg_indexes_size`).
    pub index_bytes: i64,
    /// Heap, indexes and TOAST (`pg_total_relation_size`).
    pub total_bytes: i64,
}

/// JobTableSize: the jobs table's size on disk and row count (benchmarks: bytes per job).
pub async fn job_table_size(conn: impl PgExecutor<'_>) -> Result<JobTableSize, sqlx::Error> {
    let (rows, heap_bytes, index_bytes, total_bytes) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM fleet_jobs), pg_relation_size('fleet_jobs'),
                pg_indexes_size('fleet_jobs'), pg_total_relation_size('fleet_jobs')",
    )
    .fetch_one(conn)
    .await?;
    Ok(JobTableSize {
        rows,
        heap_bytes,
        index_bytes,
        total_bytes,
    })
}

/// How many jobs of one kind there are, and how many distinct idempotency keys and distinct
/// args they carry (a fan-out bench checks "one job per target, none twice").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindDistinct {
    /// Jobs of the kind.
    pub jobs: i64,
    /// Distinct idempotency keys among them.
    pub keys: i64,
    /// Distinct args among them.
    pub args: i64,
}

/// JobCountDistinct: see [`KindDistinct`].
pub async fn job_count_distinct(
    conn: impl PgExecutor<'_>,
    kind: &str,
) -> Result<KindDistinct, sqlx::Error> {
    let (jobs, keys, args): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key), count(DISTINCT args)
         FROM fleet_jobs WHERE kind = $1",
    )
    .bind(kind)
    .fetch_one(conn)
    .await?;
    Ok(KindDistinct { jobs, keys, args })
}

/// JobListCreated: every job of `kind` as (args, created_at), oldest first. `created_at` is
/// the enqueuing transaction's `now()`: for a follow-up enqueued as an outbox, the moment its
/// producer decided (the booking bench reads "fare found" from it).
pub async fn job_list_created(
    conn: impl PgExecutor<'_>,
    kind: &str,
) -> Result<Vec<(Value, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT args, created_at FROM fleet_jobs WHERE kind = $1 ORDER BY id")
        .bind(kind)
        .fetch_all(conn)
        .await
}

/// The queue table's storage, for benchmarks and capacity checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobTableSizes {
    /// Heap bytes of `fleet_jobs` (without TOAST and indexes).
    pub heap_bytes: i64,
    /// TOAST bytes (large `args` / `errors`).
    pub toast_bytes: i64,
    /// Each index of `fleet_jobs`: name and bytes, by name.
    pub indexes: Vec<(String, i64)>,
    /// Live rows, as the statistics collector estimates them.
    pub live_rows: i64,
    /// Dead row versions not yet vacuumed (estimate).
    pub dead_rows: i64,
    /// Autovacuum runs on the table since statistics were reset.
    pub autovacuum_count: i64,
    /// Autoanalyze runs on the table.
    pub autoanalyze_count: i64,
}

/// JobTableSizes: see [`JobTableSizes`]. Reads catalog sizes only, never the rows.
pub async fn job_table_sizes<'c>(
    conn: impl PgExecutor<'c> + Copy,
) -> Result<JobTableSizes, sqlx::Error> {
    let row = sqlx::query(
        "SELECT pg_relation_size('fleet_jobs'),
                coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
                coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
                coalesce(s.autovacuum_count, 0), coalesce(s.autoanalyze_count, 0)
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE c.oid = 'fleet_jobs'::regclass",
    )
    .fetch_one(conn)
    .await?;
    let indexes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
         FROM pg_index i WHERE i.indrelid = 'fleet_jobs'::regclass ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(JobTableSizes {
        heap_bytes: row.get(0),
        toast_bytes: row.get(1),
        indexes,
        live_rows: row.get(2),
        dead_rows: row.get(3),
        autovacuum_count: row.get(4),
        autoanalyze_count: row.get(5),
    })
}

/// JobTableAutovacuumOff: why autovacuum will not clean `fleet_jobs` here, if it will not:
/// `autovacuum` or `track_counts` off server-wide, or `autovacuum_enabled = false` on the
/// table. `None` when it runs. Every transition leaves a dead row version, so without vacuum
/// the table and its indexes only grow, and the statements that walk them (the key windows'
/// release, the purge, the claims) slow down with every job (docs/operations.md).
pub async fn job_table_autovacuum_off(
    conn: impl PgExecutor<'_>,
) -> Result<Option<String>, sqlx::Error> {
    let (server, counts, table): (bool, bool, Option<bool>) = sqlx::query_as(
        r#"
        SELECT current_setting('autovacuum')::bool,
               current_setting('track_counts')::bool,
               (SELECT o.option_value::bool
                FROM pg_class c, pg_options_to_table(c.reloptions) o
                WHERE c.oid = 'fleet_jobs'::regclass AND o.option_name = 'autovacuum_enabled')
        "#,
    )
    .fetch_one(conn)
    .await?;
    Ok(if !server {
        Some("the server runs with autovacuum = off".to_owned())
    } else if !counts {
        Some("the server runs with track_counts = off (autovacuum needs it)".to_owned())
    } else if table == Some(false) {
        Some("fleet_jobs has autovacuum_enabled = false".to_owned())
    } else {
        None
    })
}

/// The width of an [`ActivityBucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// An hour.
    Hour,
    /// A day (UTC).
    Day,
}

impl Bucket {
    /// `date_trunc`'s name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    /// Its length.
    pub fn length(self) -> chrono::Duration {
        match self {
            Bucket::Hour => chrono::Duration::hours(1),
            Bucket::Day => chrono::Duration::days(1),
        }
    }
}

/// What one kind did in one bucket of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    /// The kind.
    pub kind: String,
    /// The bucket's start.
    pub at: DateTime<Utc>,
    /// Jobs that completed in it.
    pub completed: i64,
    /// Jobs that went dead in it.
    pub dead: i64,
    /// Attempts that failed in it (each retry's failure; cancellations are not failures).
    pub failed_attempts: i64,
}

/// JobCountActivity: per kind, in each of the last `buckets` buckets up to now (the current,
/// partial one included), oldest first: completions, deaths and failed attempts. Buckets
/// without any are left out. It reads the history (finished jobs and their error entries)
/// without an index on time: a page view's cost grows with the table; retention bounds it.
pub async fn job_count_activity(
    conn: impl PgExecutor<'_>,
    bucket: Bucket,
    buckets: i32,
    now: Now,
) -> Result<Vec<ActivityBucket>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        r#"
        WITH w AS (
            SELECT date_trunc($1, coalesce($3::timestamptz, now()))
                       - ($2 - 1) * ('1 ' || $1)::interval AS since,
                   coalesce($3::timestamptz, now()) AS now
        ), ends AS (
            SELECT kind, date_trunc($1, finished_at) AS at,
                   (state = 'completed')::int AS completed, (state = 'dead')::int AS dead,
                   0 AS failed
            FROM fleet_jobs, w
            WHERE state IN ('completed', 'dead') AND finished_at >= w.since AND finished_at <= w.now
        ), failures AS (
            SELECT j.kind, date_trunc($1, (e->>'at')::timestamptz) AS at,
                   0 AS completed, 0 AS dead, 1 AS failed
            FROM fleet_jobs j, w, jsonb_array_elements(
                     CASE WHEN jsonb_typeof(j.errors) = 'array' THEN j.errors ELSE '[]' END) e
            WHERE coalesce(j.finished_at, j.attempted_at) >= w.since
              AND jsonb_typeof(e) = 'object'
              -- Entries from another binary may hold anything: only a time in this shape is read.
              AND e->>'at' ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}'
              AND e->>'class' IS DISTINCT FROM 'cancelled'
        )
        SELECT kind, at, sum(completed)::bigint, sum(dead)::bigint, sum(failed)::bigint
        FROM (SELECT * FROM ends UNION ALL SELECT * FROM failures) x, w
        WHERE x.at >= w.since AND x.at <= w.now
        GROUP BY kind, at ORDER BY at, kind
        "#,
    )
    .bind(bucket.as_str())
    .bind(buckets)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, at, completed, dead, failed_attempts)| ActivityBucket {
            kind,
            at,
            completed,
            dead,
            failed_attempts,
        })
        .collect())
}
