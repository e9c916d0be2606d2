//! `card_update`: Stripe's `payment_method.automatically_updated` gave a saved card a new
//! expiry. Recording it moves the card's reminder state along: reminders are keyed by
//! card and expiry month, so a new expiry starts a new reminder cycle.

use serde::{Deserialize, Serialize};

use crate::{audit, Job, JobContext, JobError, KindDefaults};

/// Args: the Stripe payment method and its new expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardUpdate {
    /// `pm_…`.
    pub stripe_payment_method_id: String,
    /// 1–12.
    pub exp_month: i16,
    /// Four digits.
    pub exp_year: i16,
}

impl Job for CardUpdate {
    const KIND: &'static str = "card_update";

    fn defaults() -> KindDefaults {
        KindDefaults {
            max_attempts: 10,
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !(1..=12).contains(&self.exp_month) || !(2000..=2200).contains(&self.exp_year) {
            return Err(JobError::fatal(format!(
                "invalid expiry {}/{}",
                self.exp_month, self.exp_year
            )));
        }
        let mut tx = ctx.db.begin().await?;
        let card: Option<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE payment_methods SET exp_month = $2, exp_year = $3 WHERE stripe_payment_method_id = $1 RETURNING id",
        )
        .bind(&self.stripe_payment_method_id)
        .bind(self.exp_month)
        .bind(self.exp_year)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(card) = card else {
            tracing::info!("card update for a payment method we do not store: nothing to do");
            return Ok(());
        };
        audit::record(
            &mut *tx,
            "fleet",
            "card.expiry_updated",
            "payment_method",
            Some(&card.to_string()),
            &serde_json::json!({ "exp_month": self.exp_month, "exp_year": self.exp_year }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
