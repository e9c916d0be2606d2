//! JobCleaner: deletes finished jobs past their state's retention, in bounded batches (short
//! transactions), so history never grows without bound.

use std::time::Duration;

use jobs::Db;

use crate::queue::{self, JobState, Now};

/// Settings of the [`JobCleaner`].
#[derive(Debug, Clone, Copy)]
pub struct CleanerConfig {
    /// Time between passes. Default 10 min.
    pub interval: Duration,
    /// Completed jobs are kept this long after they finished. Default 7 days.
    pub retention_completed: Duration,
    /// Cancelled jobs are kept this long. Default 7 days.
    pub retention_cancelled: Duration,
    /// Dead jobs (the replayable record of failures) are kept this long. Default 30 days.
    pub retention_dead: Duration,
    /// Rows per delete statement. Default 10,000.
    pub batch: i64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            interval: Duration::from_secs(600),
            retention_completed: 7 * DAY,
            retention_cancelled: 7 * DAY,
            retention_dead: 30 * DAY,
            batch: 10 * super::DEFAULT_BATCH,
        }
    }
}

impl CleanerConfig {
    /// Each final state with its retention.
    pub fn retention(&self) -> [(JobState, Duration); 3] {
        [
            (JobState::Completed, self.retention_completed),
            (JobState::Cancelled, self.retention_cancelled),
            (JobState::Dead, self.retention_dead),
        ]
    }
}

/// Deletes finished jobs past retention.
pub struct JobCleaner {
    db: Db,
    cfg: CleanerConfig,
}

impl JobCleaner {
    /// A cleaner over `db`.
    pub fn new(db: impl Into<Db>, cfg: CleanerConfig) -> Self {
        Self { db: db.into(), cfg }
    }

    /// Its settings.
    pub fn config(&self) -> &CleanerConfig {
        &self.cfg
    }

    /// One pass at `now` (`None`: the database's clock): releases elapsed key windows, then
    /// purges each final state past its retention, batch by batch (each batch its own short
    /// statement, so no lock is held across the pass). Returns how many jobs were deleted.
    pub async fn run_once(&self, now: Now) -> Result<u64, sqlx::Error> {
        let mut released = 0;
        loop {
            let n = queue::job_release_elapsed_keys(&self.db, self.cfg.batch, now).await?;
            released += n;
            if n < self.cfg.batch as u64 {
                break;
            }
        }
        let mut total = 0;
        for (state, keep) in self.cfg.retention() {
            let mut after_id = Some(0);
            while let Some(after) = after_id {
                let b =
                    queue::job_prune_finished(&self.db, &[state], keep, self.cfg.batch, after, now)
                        .await?;
                total += b.deleted;
                after_id = b.next_after_id;
            }
        }
        if total > 0 || released > 0 {
            tracing::info!(
                deleted = total,
                keys_released = released,
                "cleaned finished jobs past retention"
            );
        }
        Ok(total)
    }
}
