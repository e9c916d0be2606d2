//! Queue maintenance that every worker runs beside its fetch loop: the [`JobPromoter`] makes
//! due jobs claimable, the [`JobRescuer`] takes back expired leases, the [`JobCleaner`] deletes
//! finished jobs past their retention.
//!
//! Every service has the same shape: a config with documented defaults, `run_once(now)`
//! returning what it did, and [`run`], which ticks them until its token is cancelled (the
//! cleaner in a loop of its own, so a long purge never delays a promotion or a rescue).
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
///
/// The cleaner runs in a loop of its own, beside the promoter's and the rescuer's: a pass
/// deletes everything that passed its retention since the last one, which takes seconds at a
/// high rate (ten minutes of 3,000 jobs/s is 180 statements of 10,000 rows), and the jobs that
/// come due meanwhile must not wait for it (decision 58). So maintenance holds up to two
/// connections at once. A pass in progress is never cut short: each of its statements is a
/// short transaction of its own, and `stop` is seen between passes.
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
    tokio::join!(
        promote_and_rescue(&db, &promoter, &rescuer, &clock, &stop),
        clean(&db, &cleaner, &clock, &stop),
    );
}

/// A ticker that skips the ticks it missed while a pass ran, its first tick at once.
fn ticker(every: std::time::Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// The promoter, when the next job comes due, and the rescuer, every `rescue_interval`.
async fn promote_and_rescue(
    db: &Db,
    promoter: &JobPromoter,
    rescuer: &JobRescuer,
    clock: &Clock,
    stop: &CancellationToken,
) {
    let mut rescue = ticker(rescuer.config().interval);
    // The promoter runs when the next job comes due (see `promoter`), at once to start with.
    let mut promote_at = tokio::time::Instant::now();
    let mut promote_failures = FailureStreak::new("promoting due jobs failed");
    let mut rescue_failures = FailureStreak::new("rescuing expired leases failed");
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
                    Err(e) => promote_failures.failed(db, &e),
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
                                promote_failures.failed(db, &e);
                            }
                        }
                    }
                    Err(e) => rescue_failures.failed(db, &e),
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The cleaner, every `clean_interval`.
async fn clean(db: &Db, cleaner: &JobCleaner, clock: &Clock, stop: &CancellationToken) {
    let mut clean = ticker(cleaner.config().interval);
    let mut clean_failures = FailureStreak::new("cleaning finished jobs failed");
    loop {
        tokio::select! {
            _ = clean.tick() => {
                if !db.health().is_up() {
                    continue;
                }
                match cleaner.run_once(clock.now()).await {
                    Ok(_) => clean_failures.succeeded(),
                    Err(e) => clean_failures.failed(db, &e),
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
