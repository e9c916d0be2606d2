//! Queue maintenance every worker runs: promoting due jobs, rescuing expired leases, and
//! cleaning finished jobs past their retention.
//!
//! Both services are safe to run in any number of workers at once (`FOR UPDATE SKIP LOCKED`
//! and fenced updates), so no leader election is needed.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerSettings,
    queue::{self, JobState},
};

/// Rows handled per statement by each service.
const BATCH: i64 = 1_000;

/// Cadences of the maintenance services.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceSettings {
    /// How often due scheduled/retryable jobs are promoted to available (≤ 1 s).
    pub promote_interval: Duration,
    /// How often expired leases are rescued.
    pub rescue_interval: Duration,
    /// How often finished jobs past retention are deleted.
    pub clean_interval: Duration,
    /// Retention of completed, cancelled and dead jobs.
    pub retention: [(JobState, Duration); 3],
}

impl From<&WorkerSettings> for MaintenanceSettings {
    fn from(w: &WorkerSettings) -> Self {
        Self {
            promote_interval: w.poll_interval,
            rescue_interval: w.rescue_interval,
            clean_interval: w.clean_interval,
            retention: [
                (JobState::Completed, w.retention_completed),
                (JobState::Cancelled, w.retention_cancelled),
                (JobState::Dead, w.retention_dead),
            ],
        }
    }
}

/// JobCleaner: one pass deleting finished jobs past their state's retention, in bounded
/// batches (short transactions). Returns how many were deleted.
pub async fn clean_once(
    pool: &PgPool,
    retention: &[(JobState, Duration)],
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut total = 0;
    for (state, keep) in retention {
        loop {
            let n = queue::job_prune_finished(&mut conn, &[*state], *keep, BATCH * 10).await?;
            total += n;
            if n < (BATCH * 10) as u64 {
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, "cleaned finished jobs past retention");
    }
    Ok(total)
}

/// JobPromoter: one pass; loops while full batches come back.
pub async fn promote_once(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut total = 0;
    loop {
        let n = queue::job_promote_due(&mut conn, BATCH).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// JobRescuer: one pass; loops while full batches come back.
pub async fn rescue_once(pool: &PgPool) -> Result<queue::RescueCount, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut total = queue::RescueCount::default();
    loop {
        let n = queue::job_rescue_expired(&mut conn, BATCH).await?;
        total.retried += n.retried;
        total.dead += n.dead;
        if n.retried + n.dead < BATCH as u64 {
            break;
        }
    }
    crate::metrics::metrics()
        .lease_rescues
        .inc_by(total.retried + total.dead);
    if total.retried + total.dead > 0 {
        tracing::warn!(
            retried = total.retried,
            dead = total.dead,
            "rescued jobs whose lease expired"
        );
        // Rescued jobs are retryable with run_at = now: promote them right away.
        promote_once(pool).await?;
    }
    Ok(total)
}

/// Runs both services until `stop`.
pub async fn run(pool: PgPool, cfg: MaintenanceSettings, stop: CancellationToken) {
    let mut promote = tokio::time::interval(cfg.promote_interval);
    let mut rescue = tokio::time::interval(cfg.rescue_interval);
    let mut clean = tokio::time::interval(cfg.clean_interval);
    promote.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clean.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = promote.tick() => {
                if let Err(e) = promote_once(&pool).await {
                    tracing::warn!(error = %e, "promoting due jobs failed");
                }
            }
            _ = rescue.tick() => {
                if let Err(e) = rescue_once(&pool).await {
                    tracing::warn!(error = %e, "rescuing expired leases failed");
                }
            }
            _ = clean.tick() => {
                if let Err(e) = clean_once(&pool, &cfg.retention).await {
                    tracing::warn!(error = %e, "cleaning finished jobs failed");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
