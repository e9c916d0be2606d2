//! The live-worker registry: `fleet_workers`, one row per running `fleet worker`.
//!
//! A worker registers before its first claim, renews `last_seen_at` every heartbeat, and
//! deletes its row when it stops cleanly. A worker that died leaves its row; it reads as stale
//! once `last_seen_at` is older than its lease, and any worker's maintenance deletes it after
//! `worker.forget_after`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use super::Now;

/// What a worker says of itself when it registers.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Its lease owner id (`host:pid:random`).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The binary's version.
    pub version: String,
    /// Queues it claims from; empty = every queue.
    pub queues: Vec<String>,
    /// Kinds it runs.
    pub kinds: Vec<String>,
    /// Handlers at once.
    pub concurrency: i32,
}

/// A registered worker, as `fleet workers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    /// Its lease owner id.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The binary's version.
    pub version: String,
    /// Queues it claims from; empty = every queue.
    pub queues: Vec<String>,
    /// Kinds it runs.
    pub kinds: Vec<String>,
    /// Handlers at once.
    pub concurrency: i32,
    /// Claims held at its last heartbeat.
    pub held: i32,
    /// Jobs completed since it started, as of its last heartbeat.
    pub completed: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// Whether its last heartbeat is recent (within `alive_within` of the listing's clock).
    pub alive: bool,
}

impl WorkerRow {
    /// Whether this worker claims jobs of `kind` on `queue`.
    pub fn serves(&self, kind: &str, queue: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
            && (self.queues.is_empty() || self.queues.iter().any(|q| q == queue))
    }
}

/// WorkerRegister: records (or replaces) worker `w`, seen now.
pub async fn worker_register(conn: impl PgExecutor<'_>, w: &WorkerInfo) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fleet_workers (id, host, pid, version, queues, kinds, concurrency)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), queues = EXCLUDED.queues,
            kinds = EXCLUDED.kinds, concurrency = EXCLUDED.concurrency",
    )
    .bind(&w.id)
    .bind(&w.host)
    .bind(w.pid)
    .bind(&w.version)
    .bind(&w.queues)
    .bind(&w.kinds)
    .bind(w.concurrency)
    .execute(conn)
    .await?;
    Ok(())
}

/// WorkerHeartbeat: renews worker `id`'s row with its current figures. Returns false when the
/// row is gone (pruned while the worker stalled): the caller registers again.
pub async fn worker_heartbeat(
    conn: impl PgExecutor<'_>,
    id: &str,
    held: i32,
    completed: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE fleet_workers SET last_seen_at = now(), held = $2, completed = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(held)
    .bind(completed)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// WorkerDeregister: a worker that stopped cleanly removes its row.
pub async fn worker_deregister(conn: impl PgExecutor<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM fleet_workers WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// WorkerForgetStale: deletes rows whose last heartbeat is older than `after` (their workers
/// died). Returns how many.
pub async fn worker_forget_stale(
    conn: impl PgExecutor<'_>,
    after: std::time::Duration,
    now: Now,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM fleet_workers
         WHERE last_seen_at < coalesce($2, now()) - $1 * interval '1 millisecond'",
    )
    .bind(after.as_millis() as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// WorkerList: every registered worker, oldest first; `alive` when its last heartbeat is
/// within `alive_within` of now.
pub async fn worker_list(
    conn: impl PgExecutor<'_>,
    alive_within: std::time::Duration,
    now: Now,
) -> Result<Vec<WorkerRow>, sqlx::Error> {
    type Row = (
        String,
        String,
        i32,
        String,
        Vec<String>,
        Vec<String>,
        i32,
        i32,
        i64,
        DateTime<Utc>,
        DateTime<Utc>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, host, pid, version, queues, kinds, concurrency, held, completed, started_at,
                last_seen_at,
                last_seen_at >= coalesce($2, now()) - $1 * interval '1 millisecond'
         FROM fleet_workers ORDER BY started_at, id",
    )
    .bind(alive_within.as_millis() as i64)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| WorkerRow {
            id: r.0,
            host: r.1,
            pid: r.2,
            version: r.3,
            queues: r.4,
            kinds: r.5,
            concurrency: r.6,
            held: r.7,
            completed: r.8,
            started_at: r.9,
            last_seen_at: r.10,
            alive: r.11,
        })
        .collect())
}
