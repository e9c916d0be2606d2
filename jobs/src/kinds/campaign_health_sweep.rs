//! `campaign_health_sweep` (daily cron): what no event announced — a consent withdrawn in the
//! product, a card or a passport that runs out before the trip, a detached card whose event
//! was lost. Every active campaign that cannot book moves to `action_required` and its user is
//! told once per campaign and reason ([`crate::campaign_health`]). The search makes the same
//! check before each search; the sweep covers campaigns whose next search is far off.
//!
//! It also reminds travelers whose passport is valid through the trip but expires within six
//! months after it (`passport-expiry/{profile}/{yyyy-mm-dd}`, once per profile and expiry,
//! like the card-expiry reminders).
//!
//! Bounded: at most `batch_size` campaigns per batch, batches until none is left (each batch
//! moves its campaigns out of `active`, so the next one reads the rest).

use serde::{Deserialize, Serialize};

use crate::campaign_health;
use crate::deps::HasDeps;
use crate::{Job, JobContext, JobError, KindDefaults};

/// Campaigns per batch unless the args say otherwise.
pub const DEFAULT_BATCH_SIZE: i64 = 200;

/// Args (the cron entry may pass `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignHealthSweep {
    /// Campaigns per batch, 1..=5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
}

impl Job for CampaignHealthSweep {
    const KIND: &'static str = "campaign_health_sweep";

    fn defaults() -> KindDefaults {
        KindDefaults {
            max_attempts: 5,
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let batch = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=5000).contains(&batch) {
            return Err(JobError::fatal("batch_size must be 1..=5000"));
        }
        let mut moved = 0u64;
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::retryable("interrupted; the next run goes on"));
            }
            let found = campaign_health::unhealthy(&ctx.db, batch).await?;
            let mut progressed = false;
            for (campaign, user, problem) in &found {
                let m = campaign_health::require_action_and_tell(
                    &ctx.db,
                    ctx.deps()?,
                    *campaign,
                    *user,
                    *problem,
                    "campaign_health_sweep",
                )
                .await?;
                progressed |= m;
                moved += u64::from(m);
            }
            if (found.len() as i64) < batch || !progressed {
                break;
            }
        }
        // Passports valid through the trip but not long after it: a reminder, once per
        // profile and expiry; at most one batch a run (the next day's run takes the rest).
        let due = campaign_health::passports_expiring_soon(&ctx.db, batch).await?;
        for (user, profile, expiry) in &due {
            campaign_health::remind_passport(&ctx.db, ctx.deps()?, *user, *profile, *expiry)
                .await?;
        }
        let reminded = due.len();
        tracing::info!(
            campaigns.moved = moved,
            passports.reminded = reminded,
            "campaign health sweep done"
        );
        Ok(())
    }
}
