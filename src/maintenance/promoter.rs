//! JobPromoter: scheduled and retryable jobs whose `run_at` has come → `available`.

use std::time::Duration;

use jobs::Db;

use crate::queue::{self, Now};

/// Settings of the [`JobPromoter`].
#[derive(Debug, Clone, Copy)]
pub struct PromoterConfig {
    /// Time between passes; also the longest a due job waits to become claimable (≤ 1 s by
    /// the worker's `poll_interval` validation). Default 500 ms.
    pub interval: Duration,
    /// Rows per statement; a pass loops while full batches come back. Default 1,000.
    pub batch: i64,
}

impl Default for PromoterConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            batch: super::DEFAULT_BATCH,
        }
    }
}

/// Moves due jobs to `available` and wakes idle workers (the statement notifies).
pub struct JobPromoter {
    db: Db,
    cfg: PromoterConfig,
}

impl JobPromoter {
    /// A promoter over `db`.
    pub fn new(db: impl Into<Db>, cfg: PromoterConfig) -> Self {
        Self { db: db.into(), cfg }
    }

    /// Its settings.
    pub fn config(&self) -> &PromoterConfig {
        &self.cfg
    }

    /// One pass at `now` (`None`: the database's clock). Returns how many jobs became
    /// available.
    pub async fn run_once(&self, now: Now) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = queue::job_promote_due(&self.db, self.cfg.batch, now).await?;
            total += n;
            if n < self.cfg.batch as u64 {
                return Ok(total);
            }
        }
    }
}
