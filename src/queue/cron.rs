//! Cron ticks: `fleet_cron_ticks` rows that let any number of schedulers enqueue one job per
//! tick, and `fleet_paused_schedules`, the schedules operators paused.

use chrono::{DateTime, Utc};
use serde::Serialize;
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

/// CronTickSetSkipped: notes that a claimed tick enqueued nothing, and why (`"paused"`).
pub async fn cron_tick_set_skipped(
    conn: impl PgExecutor<'_>,
    schedule: &str,
    tick_at: DateTime<Utc>,
    why: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE fleet_cron_ticks SET skipped = $3 WHERE schedule = $1 AND tick_at = $2")
        .bind(schedule)
        .bind(tick_at)
        .bind(why)
        .execute(conn)
        .await?;
    Ok(())
}

/// A paused cron schedule.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PausedSchedule {
    /// The schedule's name (its `[schedules.NAME]`).
    pub schedule: String,
    /// Since when.
    pub paused_at: DateTime<Utc>,
    /// Who paused it.
    pub paused_by: String,
    /// Why.
    pub reason: String,
}

/// SchedulePaused: whether `schedule` is paused (read in the tick's transaction).
pub async fn schedule_paused(
    conn: impl PgExecutor<'_>,
    schedule: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fleet_paused_schedules WHERE schedule = $1)")
        .bind(schedule)
        .fetch_one(conn)
        .await
}

/// SchedulePause: pauses `schedule` as `actor` for `reason`. Returns false when it was paused
/// already (the first pause's actor and reason stay).
pub async fn schedule_pause(
    conn: impl PgExecutor<'_>,
    schedule: &str,
    actor: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO fleet_paused_schedules (schedule, paused_by, reason) VALUES ($1, $2, $3)
         ON CONFLICT (schedule) DO NOTHING",
    )
    .bind(schedule)
    .bind(actor)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// ScheduleResume: lets `schedule` enqueue again from its next tick. Returns false when it was
/// not paused.
pub async fn schedule_resume(
    conn: impl PgExecutor<'_>,
    schedule: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM fleet_paused_schedules WHERE schedule = $1")
        .bind(schedule)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// ScheduleListPaused: every paused schedule.
pub async fn schedule_list_paused(
    conn: impl PgExecutor<'_>,
) -> Result<Vec<PausedSchedule>, sqlx::Error> {
    sqlx::query_as(
        "SELECT schedule, paused_at, paused_by, reason FROM fleet_paused_schedules ORDER BY schedule",
    )
    .fetch_all(conn)
    .await
}

/// A recorded tick of a schedule and what became of it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CronTick {
    /// The schedule.
    pub schedule: String,
    /// The tick's time (the cron time, not when it ran).
    pub tick_at: DateTime<Utc>,
    /// When a scheduler claimed it.
    pub enqueued_at: DateTime<Utc>,
    /// The job it enqueued (`None`: skipped, or the job was pruned).
    pub job_id: Option<i64>,
    /// That job's state now (`None` once pruned).
    pub job_state: Option<String>,
    /// Why it enqueued nothing (`"paused"`).
    pub skipped: Option<String>,
}

/// CronTickListLatest: the latest `per` ticks of each of `schedules`, newest first, with their
/// jobs' states.
pub async fn cron_tick_list_latest(
    conn: impl PgExecutor<'_>,
    schedules: &[String],
    per: i64,
) -> Result<Vec<CronTick>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.schedule, t.tick_at, t.enqueued_at, t.job_id, j.state::text AS job_state, t.skipped
         FROM unnest($1::text[]) AS s(name)
         CROSS JOIN LATERAL (
             SELECT * FROM fleet_cron_ticks c WHERE c.schedule = s.name
             ORDER BY c.tick_at DESC LIMIT $2
         ) t
         LEFT JOIN fleet_jobs j ON j.id = t.job_id
         ORDER BY t.schedule, t.tick_at DESC",
    )
    .bind(schedules)
    .bind(per)
    .fetch_all(conn)
    .await
}
