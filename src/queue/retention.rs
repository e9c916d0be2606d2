//! Deleting finished jobs past their retention (the cleaner and `fleet queue prune`), and
//! releasing idempotency keys whose post-completion window has elapsed.
//!
//! **How a purge stays cheap with millions of rows.** A purge walks the primary key in id order,
//! one bounded window of `limit` rows per statement, and carries a cursor (the last id it
//! examined) from one statement to the next. So each statement reads `limit` index entries and
//! rows, never the entries an earlier batch just deleted (which stay in the index until vacuum)
//! and never the rest of the table: the walk stops at the first window whose rows were all
//! created after the cutoff. That stop is exact, not a heuristic: ids are drawn from a sequence
//! at insert, `created_at` is the inserting transaction's start (database clock), and a job
//! finishes after it was inserted, so every job with `finished_at < cutoff` has an id below that
//! of any window whose oldest `created_at` is at or past the cutoff. Each statement is its own
//! short transaction (or the caller's), holding row locks only on the finished rows it deletes,
//! which no worker touches.

use std::time::Duration;

use jobs::Db;
use sqlx::{PgExecutor, Row};

use super::{JobState, Now};

/// What one [`job_prune_finished`] statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    /// Jobs deleted.
    pub deleted: u64,
    /// Where the next batch continues (`after_id`); `None` when the walk is over.
    pub next_after_id: Option<i64>,
}

/// JobPruneFinished: one batch of a purge. Examines the next `limit` jobs after `after_id` in
/// id order (start a purge with `after_id = 0`) and deletes those in `states` (final states
/// only) that finished more than `older_than` ago, except a completed job whose idempotency
/// key is still held (its window has not elapsed: deleting it would free the key early).
/// Call again with [`PruneBatch::next_after_id`] until it is `None`.
///
/// Only rows created before the cutoff are looked up (a job finishes after it was created), so
/// a window of recent jobs costs one index range read. The conditions are tested on the row
/// being deleted, so a job replayed or re-keyed while the
/// batch waited for its lock is re-checked in its new version and kept. The window's ids reach
/// the delete as an array, so its plan is one primary-key lookup per id: a join with the window
/// let the planner pick a hash join over a sequential scan of the whole table (2.7 s with a
/// million finished jobs, measured).
pub async fn job_prune_finished(
    conn: impl PgExecutor<'_>,
    states: &[JobState],
    older_than: Duration,
    limit: i64,
    after_id: i64,
    now: Now,
) -> Result<PruneBatch, sqlx::Error> {
    let states: Vec<&str> = states
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    let row = sqlx::query(
        r#"
        WITH t AS (
            SELECT coalesce($4::timestamptz, now()) - $2 * interval '1 millisecond' AS cutoff,
                   coalesce($4::timestamptz, now()) AS now
        ), scanned AS MATERIALIZED (
            SELECT id, created_at FROM fleet_jobs WHERE id > $5 ORDER BY id LIMIT $3
        ), deleted AS (
            DELETE FROM fleet_jobs j
            WHERE j.id = ANY (ARRAY(SELECT id FROM scanned
                                    WHERE created_at < (SELECT cutoff FROM t)))
              AND j.state::text = ANY($1)
              AND j.finished_at < (SELECT cutoff FROM t)
              AND (NOT j.key_held OR j.key_held_until <= (SELECT now FROM t))
            RETURNING j.id
        )
        SELECT (SELECT count(*) FROM deleted),
               (SELECT count(*) FROM scanned),
               (SELECT max(id) FROM scanned),
               coalesce((SELECT min(created_at) FROM scanned) >= (SELECT cutoff FROM t), true)
        "#,
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .bind(limit)
    .bind(now)
    .bind(after_id)
    .fetch_one(conn)
    .await?;
    let deleted = row.get::<i64, _>(0) as u64;
    let scanned: i64 = row.get(1);
    let last: Option<i64> = row.get(2);
    let past_cutoff: bool = row.get(3);
    Ok(PruneBatch {
        deleted,
        next_after_id: if scanned < limit || past_cutoff {
            None
        } else {
            last
        },
    })
}

/// JobCountPrunable: how many jobs a purge by [`job_prune_finished`] would delete.
pub async fn job_count_prunable(
    conn: impl PgExecutor<'_>,
    states: &[JobState],
    older_than: Duration,
    now: Now,
) -> Result<i64, sqlx::Error> {
    let states: Vec<&str> = states
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs
         WHERE state::text = ANY($1)
           AND finished_at < coalesce($3, now()) - $2 * interval '1 millisecond'
           AND (NOT key_held OR key_held_until <= coalesce($3, now()))",
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// JobReleaseElapsedKeys: frees the idempotency keys of up to `limit` completed jobs whose
/// window has elapsed. A later enqueue of the key would free it anyway (the insert path checks
/// the holder's window); doing it in the cleaner keeps finished jobs out of the unique key
/// index, which every keyed enqueue descends, so it holds unfinished jobs and open windows
/// only instead of every keyed job in retention. Returns how many were freed.
///
/// Reads the open windows in the order they end (`fleet_jobs_key_window_idx`, partial on
/// `key_held_until IS NOT NULL`), so a statement reads the rows it frees and no others.
/// Pinned like the claims: on a table not yet analyzed after a large load of history the
/// planner may otherwise read the whole heap for the few held keys.
pub async fn job_release_elapsed_keys(db: &Db, limit: i64, now: Now) -> Result<u64, sqlx::Error> {
    let mut tx = super::job::begin_pinned_in(db).await?;
    let r = sqlx::query(
        r#"
        WITH elapsed AS (
            SELECT id FROM fleet_jobs
            WHERE key_held_until <= coalesce($2, now()) AND key_held
            ORDER BY key_held_until
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE fleet_jobs j SET key_held = false, key_held_until = NULL
        FROM elapsed
        WHERE j.id = elapsed.id AND j.key_held AND j.key_held_until <= coalesce($2, now())
        "#,
    )
    .bind(limit)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}
