//! JobRescuer: running jobs whose lease expired (their worker died or stalled) → `retryable`,
//! or `dead` on their last attempt.

use std::time::Duration;

use jobs::Db;

use crate::queue::{self, Now, RescueCount};

/// Settings of the [`JobRescuer`].
#[derive(Debug, Clone)]
pub struct RescuerConfig {
    /// Time between passes. A dead worker's jobs come back at most `lease + interval` after
    /// its last heartbeat. Default 5 s.
    pub interval: Duration,
    /// Rows per statement; a pass loops while full batches come back. Default 1,000.
    pub batch: i64,
    /// A dead worker's registry row is deleted this long after its last heartbeat. Default
    /// 10 min.
    pub forget_workers_after: Duration,
    /// After the database comes back from an outage, no rescue for this long (a worker's
    /// lease): every worker cut off with this one renews its leases first, so the rescue takes
    /// back only the claims of workers that did not come back. Default 15 s.
    pub after_outage: Duration,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            batch: super::DEFAULT_BATCH,
            forget_workers_after: Duration::from_secs(600),
            after_outage: Duration::from_secs(15),
        }
    }
}

/// Takes back expired leases (the late outcome of the claim it rescued is refused by the fence),
/// and forgets workers that stopped heartbeating long ago.
pub struct JobRescuer {
    db: Db,
    cfg: RescuerConfig,
    held: Option<HeldClaims>,
}

/// The ids of the claims a worker holds right now.
pub type HeldClaims = std::sync::Arc<dyn Fn() -> Vec<i64> + Send + Sync>;

impl JobRescuer {
    /// A rescuer over `db`.
    pub fn new(db: impl Into<Db>, cfg: RescuerConfig) -> Self {
        Self {
            db: db.into(),
            cfg,
            held: None,
        }
    }

    /// This rescuer, never taking back the claims `held` returns: those its own worker holds
    /// (see [`queue::job_rescue_expired`]).
    pub fn sparing(mut self, held: HeldClaims) -> Self {
        self.held = Some(held);
        self
    }

    /// Its settings.
    pub fn config(&self) -> &RescuerConfig {
        &self.cfg
    }

    /// One pass at `now` (`None`: the database's clock): how many jobs went back to
    /// `retryable` and how many went `dead`.
    pub async fn run_once(&self, now: Now) -> Result<RescueCount, sqlx::Error> {
        let mut total = RescueCount::default();
        let spare = self.held.as_ref().map(|h| h()).unwrap_or_default();
        loop {
            let n = queue::job_rescue_expired(&self.db, self.cfg.batch, &spare, now).await?;
            total.retried += n.retried;
            total.dead += n.dead;
            if n.retried + n.dead < self.cfg.batch as u64 {
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
        }
        let forgotten =
            queue::worker_forget_stale(&self.db, self.cfg.forget_workers_after, now).await?;
        if forgotten > 0 {
            tracing::info!(
                workers = forgotten,
                "forgot workers that stopped heartbeating"
            );
        }
        Ok(total)
    }
}
