//! Backfills: resumable, batched, checkpointed passes over a table, run as the `backfill` job.
//!
//! Contract:
//! - rows are walked in primary-key order; each batch's changes and the checkpoint's advance
//!   commit in **one transaction**, under a `FOR UPDATE` lock on the checkpoint row. A crash,
//!   kill or drain therefore redoes at most the uncommitted batch, and a second runner waits
//!   for the first: every row is done once per run;
//! - the job is long-running: it checks its cancellation token between batches (a drain or an
//!   operator cancel stops it at a batch boundary) and resumes from the checkpoint when re-run;
//! - progress (`done_rows` of `total_rows`) is in the `backfills` table and in the logs;
//! - `pause_ms` throttles between batches so a backfill never starves the booking path.

pub mod pii_reencrypt;
pub mod profile_completeness;

use crate::deps::HasDeps;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{BoxFuture, Deps, Job, JobContext, JobError, KindDefaults};

/// One batch's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Rows visited (0: the pass is complete).
    pub rows: i64,
    /// The last row id visited (the next batch starts after it).
    pub last_id: Option<Uuid>,
}

/// A concrete backfill.
pub trait Backfill: Send + Sync {
    /// Stable name (the checkpoint's key).
    fn name(&self) -> &'static str;
    /// Rows the pass will visit (progress denominator): every traveler profile, unless the
    /// backfill walks another table.
    fn count<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
        Box::pin(sqlx::query_scalar("SELECT count(*) FROM traveler_profiles").fetch_one(conn))
    }
    /// Does up to `limit` rows with id > `after`, on `conn` (inside the batch's transaction).
    fn run_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        after: Option<Uuid>,
        limit: i64,
        deps: &'a Deps,
    ) -> BoxFuture<'a, Result<Batch, JobError>>;
}

/// The registered backfills.
pub fn all() -> Vec<Box<dyn Backfill>> {
    vec![
        Box::new(profile_completeness::ProfileCompleteness),
        Box::new(pii_reencrypt::PiiReencrypt),
    ]
}

/// The backfill named `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Backfill>> {
    all().into_iter().find(|b| b.name() == name)
}

/// The `backfill` job: runs (or resumes) one backfill to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBackfill {
    /// Which backfill.
    pub name: String,
    /// Rows per batch (transaction).
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    /// Pause between batches, ms.
    #[serde(default)]
    pub pause_ms: u64,
}

fn default_batch() -> i64 {
    500
}

impl Job for RunBackfill {
    const KIND: &'static str = "backfill";

    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "maintenance".into(),
            concurrency: Some(1),
            max_attempts: 20,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(600),
            timeout: Duration::from_secs(6 * 3600),
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let Some(b) = by_name(&self.name) else {
            let known: Vec<&str> = all().iter().map(|b| b.name()).collect();
            return Err(JobError::fatal(format!(
                "unknown backfill {:?} (known: {})",
                self.name,
                known.join(", ")
            )));
        };
        if !(1..=50_000).contains(&self.batch_size) {
            return Err(JobError::fatal(format!(
                "batch_size must be 1..=50000, got {}",
                self.batch_size
            )));
        }
        run(
            b.as_ref(),
            &ctx,
            self.batch_size,
            Duration::from_millis(self.pause_ms),
        )
        .await
    }
}

/// Checkpoint state, as `fleet backfill status` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Progress {
    /// Backfill name.
    pub name: String,
    /// Rows done in this run.
    pub done_rows: i64,
    /// Rows when the run started.
    pub total_rows: i64,
    /// Started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Last checkpoint.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Finished, if it has.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// All checkpoints.
pub async fn progress(conn: impl sqlx::PgExecutor<'_>) -> Result<Vec<Progress>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, done_rows, total_rows, started_at, updated_at, finished_at FROM backfills ORDER BY name",
    )
    .fetch_all(conn)
    .await
}

/// Starts a new run of `name` if the previous one finished (or none exists): resets the
/// checkpoint. An unfinished run is left alone so it resumes. Returns whether it reset.
pub async fn reset_if_finished(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE backfills SET cursor = NULL, done_rows = 0, total_rows = 0, started_at = now(),
                updated_at = now(), finished_at = NULL
         WHERE name = $1 AND finished_at IS NOT NULL",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Runs `b` from its checkpoint until done, cancelled, or failed.
pub async fn run(
    b: &dyn Backfill,
    ctx: &JobContext,
    batch: i64,
    pause: Duration,
) -> Result<(), JobError> {
    {
        let mut conn = ctx.db.begin().await?;
        let total = b.count(&mut conn).await?;
        // A run that has not started yet (new, or reset by `fleet backfill start`) takes the
        // current row count as its progress denominator.
        sqlx::query(
            "INSERT INTO backfills (name, total_rows) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET total_rows = EXCLUDED.total_rows
             WHERE backfills.cursor IS NULL AND backfills.finished_at IS NULL",
        )
        .bind(b.name())
        .bind(total)
        .execute(&mut *conn)
        .await?;
        conn.commit().await?;
    }
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::retryable(
                "backfill interrupted; it resumes from its checkpoint",
            ));
        }
        let mut tx = ctx.db.begin().await?;
        let cp: (Option<Uuid>, i64, i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT cursor, done_rows, total_rows, finished_at FROM backfills WHERE name = $1 FOR UPDATE",
        )
        .bind(b.name())
        .fetch_one(&mut *tx)
        .await?;
        let (cursor, done, total, finished) = cp;
        if finished.is_some() {
            tx.commit().await?;
            tracing::info!(backfill = b.name(), done, "backfill already finished");
            return Ok(());
        }
        let r = b.run_batch(&mut tx, cursor, batch, ctx.deps()?).await?;
        if r.rows == 0 {
            sqlx::query(
                "UPDATE backfills SET finished_at = now(), updated_at = now() WHERE name = $1",
            )
            .bind(b.name())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(backfill = b.name(), done, total, "backfill finished");
            return Ok(());
        }
        sqlx::query("UPDATE backfills SET cursor = $2, done_rows = done_rows + $3, updated_at = now() WHERE name = $1")
            .bind(b.name())
            .bind(r.last_id)
            .bind(r.rows)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            backfill = b.name(),
            done = done + r.rows,
            total,
            "backfill progress"
        );
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = ctx.cancel.cancelled() => {}
            }
        }
    }
}
