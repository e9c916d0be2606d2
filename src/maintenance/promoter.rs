//! JobPromoter: scheduled and retryable jobs whose `run_at` has come → `available`.
//!
//! A pass every `interval` alone promotes in bursts: at 3,000 jobs/s with one in ten retried,
//! each 500 ms pass made some 150 retries claimable at once, ahead of new jobs (they sort by
//! `run_at`), and the new jobs behind them waited ~15 ms for a claim: the steady state's
//! pickup p99 (docs/benchmarks.md, decision 57). So each pass also reads when the next job
//! comes due, and the next pass runs then, but no sooner than `min_gap` after this one (a
//! stream of retries is promoted in slices of `min_gap`, not row by row) and no later than
//! `interval` (jobs written since, by other workers or this one, are seen within it).

use std::time::Duration;

use jobs::Db;

use crate::queue::{self, Now, Promoted};

/// Settings of the [`JobPromoter`].
#[derive(Debug, Clone, Copy)]
pub struct PromoterConfig {
    /// The longest time between passes; also the longest a due job waits to become claimable
    /// when it was written after the last pass read the next due time (≤ 1 s by the worker's
    /// `poll_interval` validation). Default 500 ms.
    pub interval: Duration,
    /// The shortest time between passes, however soon the next job comes due. Default 50 ms.
    pub min_gap: Duration,
    /// Rows per statement; a pass loops while full batches come back. Default 1,000.
    pub batch: i64,
}

impl Default for PromoterConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            min_gap: Duration::from_millis(50),
            batch: super::DEFAULT_BATCH,
        }
    }
}

impl PromoterConfig {
    /// How long to wait after `pass` before the next: until its next job comes due, within
    /// [`Self::min_gap`] ..= [`Self::interval`].
    pub fn wait_after(&self, pass: &Promoted) -> Duration {
        let gap = self.min_gap.min(self.interval);
        pass.next_due_in
            .map_or(self.interval, |due| due.clamp(gap, self.interval))
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

    /// One pass at `now` (`None`: the database's clock): how many jobs became available in
    /// all its statements, and when the next comes due as its last statement saw it.
    pub async fn run_once(&self, now: Now) -> Result<Promoted, sqlx::Error> {
        let mut moved = 0;
        loop {
            let p = queue::job_promote_due(&self.db, self.cfg.batch, now).await?;
            moved += p.moved;
            if p.moved < self.cfg.batch as u64 {
                return Ok(Promoted { moved, ..p });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(next_due_in: Option<u64>) -> Promoted {
        Promoted {
            moved: 0,
            next_due_in: next_due_in.map(Duration::from_millis),
        }
    }

    #[test]
    fn the_next_pass_runs_when_the_next_job_comes_due_within_the_gap_and_the_interval() {
        let cfg = PromoterConfig::default();
        let ms = Duration::from_millis;
        assert_eq!(cfg.wait_after(&pass(Some(120))), ms(120));
        assert_eq!(cfg.wait_after(&pass(Some(3))), ms(50), "no sooner than min_gap");
        assert_eq!(cfg.wait_after(&pass(Some(0))), ms(50));
        assert_eq!(cfg.wait_after(&pass(Some(9_000))), ms(500), "no later than interval");
        assert_eq!(cfg.wait_after(&pass(None)), ms(500), "nothing waits: the interval");
        let short = PromoterConfig {
            interval: ms(20),
            ..cfg
        };
        assert_eq!(short.wait_after(&pass(Some(3))), ms(20), "an interval below the gap wins");
    }
}
