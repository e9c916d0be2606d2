//! Queue maintenance that every worker runs beside its fetch loop: the [`JobPromoter`] makes
//! due jobs claimable, the [`JobRescuer`] takes back expired leases, the [`JobCleaner`] deletes
//! finished jobs past their retention.
//!
//! Every service has the same shape: a config with documented defaults, `run_once(now)`
//! returning what it did, and one loop ([`run`]) that ticks them until its token is cancelled.
//! Each pass is one or more `UPDATE/DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`
//! statements that are correct when any number of workers run them at once, so there is no
//! leader election (docs/decisions.md §4).

pub mod cleaner;
pub mod promoter;
pub mod rescuer;

use jobs::Db;
use tokio_util::sync::CancellationToken;

pub use cleaner::{CleanerConfig, JobCleaner};
pub use promoter::{JobPromoter, PromoterConfig};
pub use rescuer::{HeldClaims, JobRescuer, RescuerConfig};

use crate::{clock::Clock, config::WorkerSettings, database::health::FailureStreak};

/// Rows handled per statement by each service unless configured otherwise.
pub const DEFAULT_BATCH: i64 = 1_000;

/// The three services' settings, as a worker derives them from `[worker]`.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// Promotion of due jobs.
    pub promoter: PromoterConfig,
    /// Rescue of expired leases.
    pub rescuer: RescuerConfig,
    /// Deletion of finished jobs.
    pub cleaner: CleanerConfig,
}

impl From<&WorkerSettings> for MaintenanceSettings {
    fn from(w: &WorkerSettings) -> Self {
        Self {
            promoter: PromoterConfig {
                interval: w.poll_interval,
                ..PromoterConfig::default()
            },
            rescuer: RescuerConfig {
                interval: w.rescue_interval,
                forget_workers_after: w.forget_after,
                after_outage: w.lease,
                ..RescuerConfig::default()
            },
            cleaner: CleanerConfig {
                interval: w.clean_interval,
                retention_completed: w.retention_completed,
                retention_cancelled: w.retention_cancelled,
                retention_dead: w.retention_dead,
                ..CleanerConfig::default()
            },
        }
    }
}

/// Runs the three services until `stop`, each pass at `clock`'s time, the rescuer sparing the
/// claims `held` returns (the worker's own). A failed pass is logged and retried at the next
/// tick.
pub async fn run(
    db: Db,
    cfg: MaintenanceSettings,
    held: Option<HeldClaims>,
    clock: Clock,
    stop: CancellationToken,
) {
    let promoter = JobPromoter::new(db.clone(), cfg.promoter);
    let mut rescuer = JobRescuer::new(db.clone(), cfg.rescuer);
    if let Some(h) = held {
        rescuer = rescuer.sparing(h);
    }
    let cleaner = JobCleaner::new(db.clone(), cfg.cleaner);
    let tick = |d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let (mut rescue, mut clean) = (
        tick(rescuer.config().interval),
        tick(cleaner.config().interval),
    );
    // The promoter runs when the next job comes due (see `promoter`), at once to start with.
    let mut promote_at = tokio::time::Instant::now();
    let mut promote_failures = FailureStreak::new("promoting due jobs failed");
    let mut rescue_failures = FailureStreak::new("rescuing expired leases failed");
    let mut clean_failures = FailureStreak::new("cleaning finished jobs failed");
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(promote_at) => {
                promote_at = tokio::time::Instant::now() + promoter.config().interval;
                if !db.health().is_up() {
                    continue;
                }
                match promoter.run_once(clock.now()).await {
                    Ok(pass) => {
                        promote_failures.succeeded();
                        promote_at = tokio::time::Instant::now()
                            + promoter.config().wait_after(&pass);
                    }
                    Err(e) => promote_failures.failed(&db, &e),
                }
            }
            _ = rescue.tick() => {
                // Not while the database is away, nor for a lease after it comes back: the
                // workers cut off with this one renew their leases first.
                if !db.health().get().up_for_at_least(rescuer.config().after_outage) {
                    continue;
                }
                match rescuer.run_once(clock.now()).await {
                    // Rescued jobs are retryable with run_at = now: promote them right away.
                    Ok(n) => {
                        rescue_failures.succeeded();
                        if n.retried > 0 {
                            if let Err(e) = promoter.run_once(clock.now()).await {
                                promote_failures.failed(&db, &e);
                            }
                        }
                    }
                    Err(e) => rescue_failures.failed(&db, &e),
                }
            }
            _ = clean.tick() => {
                if !db.health().is_up() {
                    continue;
                }
                match cleaner.run_once(clock.now()).await {
                    Ok(_) => clean_failures.succeeded(),
                    Err(e) => clean_failures.failed(&db, &e),
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
