//! `card_detached`: Stripe's `payment_method.detached` says a saved card was removed from its
//! customer (by the traveler in the product, or by Stripe). The card can no longer be charged:
//! it is marked detached (`payment_methods.detached_at`, audited) and every active campaign
//! that would charge it moves to `action_required` now, its user told once
//! ([`crate::campaign_health`]), rather than when a fare is found.
//!
//! Safe to run twice: the mark keeps its first time, the campaigns move once, the emails have
//! their dedupe keys. A card we do not hold is a no-op (recorded by the webhook, not retried).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::campaign_health::{self, Problem};
use crate::deps::HasDeps;
use crate::providers::is_provider_id;
use crate::{audit, Job, JobContext, JobError, KindDefaults};

/// Args: the Stripe payment method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardDetached {
    /// `pm_…`.
    pub stripe_payment_method_id: String,
}

impl Job for CardDetached {
    const KIND: &'static str = "card_detached";

    fn defaults() -> KindDefaults {
        KindDefaults {
            max_attempts: 10,
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_provider_id(&self.stripe_payment_method_id, &["pm_"]) {
            return Err(JobError::fatal("card_detached: not a pm_ id"));
        }
        let mut tx = ctx.db.begin().await?;
        let card: Option<(Uuid, bool)> = sqlx::query_as(
            "UPDATE payment_methods SET detached_at = coalesce(detached_at, now())
             WHERE stripe_payment_method_id = $1
             RETURNING id, detached_at = now()",
        )
        .bind(&self.stripe_payment_method_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((card, first)) = card else {
            tracing::info!("a card we do not hold was detached: nothing to do");
            return Ok(());
        };
        if first {
            audit::record(
                &mut *tx,
                "fleet",
                "card.detached",
                "payment_method",
                Some(&card.to_string()),
                &serde_json::json!({"payment_method_id": card}),
            )
            .await?;
        }
        let campaigns: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, user_id FROM campaigns
             WHERE payment_method_id = $1 AND status IN ('active', 'action_required')",
        )
        .bind(card)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (campaign, user) in campaigns {
            campaign_health::require_action_and_tell(
                &ctx.db,
                ctx.deps()?,
                campaign,
                user,
                Problem::CardMissing,
                "payment_method.detached",
            )
            .await?;
        }
        Ok(())
    }
}
