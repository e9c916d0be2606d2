//! Cron ticks: `fleet_cron_ticks` rows that let any number of schedulers enqueue one job per
//! tick.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// CronTickClaim: records that `schedule`'s tick at `tick_at` is being enqueued, inside the
/// caller's transaction. Returns false when another scheduler already claimed it (the insert
/// waits for that scheduler's transaction, so the answer is final).
pub async fn cron_tick_claim(
    conn: impl PgExecutor<'_>,
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
    conn: impl PgExecutor<'_>,
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
