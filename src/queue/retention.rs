//! Deleting finished jobs past their retention (the cleaner and `fleet queue prune`).

use std::time::Duration;

use sqlx::PgConnection;

use super::{JobState, Now};

/// JobPruneFinished: deletes up to `limit` jobs in `states` (final states only) finished more
/// than `older_than` ago. Returns how many were deleted; call until it returns less than `limit`.
pub async fn job_prune_finished(
    conn: &mut PgConnection,
    states: &[JobState],
    older_than: Duration,
    limit: i64,
    now: Now,
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
            WHERE state::text = ANY($1)
              AND finished_at < coalesce($4, now()) - $2 * interval '1 millisecond'
            ORDER BY id LIMIT $3
        )
        DELETE FROM fleet_jobs j USING doomed WHERE j.id = doomed.id
        "#,
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .bind(limit)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// JobCountPrunable: how many jobs [`job_prune_finished`] would delete.
pub async fn job_count_prunable(
    conn: &mut PgConnection,
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
           AND finished_at < coalesce($3, now()) - $2 * interval '1 millisecond'",
    )
    .bind(&states)
    .bind(older_than.as_millis() as i64)
    .bind(now)
    .fetch_one(conn)
    .await
}
