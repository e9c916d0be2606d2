//! `refund_reconcile`: a refund's life after it was created (issue 20). Stripe sends
//! `refund.updated` / `refund.failed` (and `charge.refund.updated` on older accounts) when a
//! refund moves — most go `pending` → `succeeded`, a few fail days later because the card was
//! closed or lost; `refund_sweep` asks for the ones that stay pending too long.
//!
//! One run re-reads the refund from Stripe (events arrive late and out of order: the API is the
//! truth) and records its status and failure code on our `refunds` row (through
//! `refund_compensation`, the table's owner), with an audit row for each change. A refund that
//! failed is the traveler's money we still owe: the run emails the traveler once
//! (`refund-failed/{refund}`), logs a warning, and `fleet check` names the booking until an
//! operator records that it was paid back another way (`fleet booking paid-out`,
//! [`super::refund_compensation::record_payout`]; docs/runbooks/refund-failed.md).
//!
//! Bad input: an event about a refund we never made is recorded by the ingress and ends here
//! as a no-op with one log line, never retried; a malformed id is a bad payload (dead at once).

use crate::deps::HasDeps;
use serde::{Deserialize, Serialize};

use crate::{
    audit,
    kinds::refund_compensation::{record_refund_status, refund_by_stripe_id, refunds_unsettled},
    notify,
    providers::is_provider_id,
    Job, JobContext, JobError, KindDefaults, NewJob,
};

/// Args: the Stripe refund, and the event that asked (`sweep` when the sweep did).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundReconcile {
    /// `re_…` (or `pyr_…`).
    pub stripe_refund_id: String,
    /// Stripe event type, or `sweep`.
    pub event_type: String,
}

impl RefundReconcile {
    /// The reconcile of `stripe_refund_id` asked by `event_type`.
    pub fn request(stripe_refund_id: &str, event_type: &str) -> Result<NewJob, JobError> {
        NewJob::of(&RefundReconcile {
            stripe_refund_id: stripe_refund_id.to_owned(),
            event_type: event_type.to_owned(),
        })
        .map_err(JobError::fatal)
    }
}

impl Job for RefundReconcile {
    const KIND: &'static str = "refund_reconcile";

    fn defaults() -> KindDefaults {
        super::reconcile_budget_defaults(crate::job::budgets::STRIPE)
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_provider_id(&self.stripe_refund_id, &["re_", "pyr_"]) {
            return Err(JobError::fatal("refund_reconcile: not a Stripe refund id"));
        }
        let mut tx = ctx.db.begin().await?;
        let found = refund_by_stripe_id(&mut tx, &self.stripe_refund_id).await?;
        tx.commit().await?;
        let Some(ours) = found else {
            tracing::warn!(
                refund = %self.stripe_refund_id, event.type = %self.event_type,
                "refund event for a refund we never made: recorded, nothing to do"
            );
            return Ok(());
        };
        let r = ctx
            .deps()?
            .payments()?
            .retrieve_refund(&self.stripe_refund_id)
            .await?;
        let Some(status) = crate::booking::REFUND_STATUSES
            .into_iter()
            .find(|s| *s == r.status)
        else {
            return Err(JobError::fatal(format!(
                "refund {}: Stripe status {:?} is not one we know",
                r.id, r.status
            )));
        };
        // A code only (lowercase letters and `_`); anything else is recorded as `unknown`.
        let failure = r.failure_reason.as_deref().map(|f| {
            if !f.is_empty()
                && f.len() <= 64
                && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                f
            } else {
                "unknown"
            }
        });
        let failure = if status == "failed" {
            Some(failure.unwrap_or("unknown"))
        } else {
            failure
        };
        let mut tx = ctx.db.begin().await?;
        crate::booking::lock(&mut tx, ours.booking_id).await?;
        let changed = record_refund_status(&mut tx, ours.id, status, failure).await?;
        if changed {
            audit::record(
                &mut *tx,
                "fleet",
                if status == "failed" {
                    "refund.failed"
                } else {
                    "refund.status_changed"
                },
                "booking",
                Some(&ours.booking_id.to_string()),
                &serde_json::json!({
                    "refund_id": ours.id, "stripe_refund_id": r.id, "from": ours.status,
                    "to": status, "failure_reason": failure, "event_type": self.event_type,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        if status == "failed" {
            if changed {
                tracing::warn!(
                    booking.id = %ours.booking_id, refund = %r.id,
                    failure_reason = failure.unwrap_or("unknown"),
                    "a refund failed: the traveler's money came back to our Stripe balance; pay it back another way"
                );
            }
            // Once per refund, whichever run gets here (a crash after the commit above
            // retries this part only).
            tell_traveler(&ctx, &ours).await?;
        }
        Ok(())
    }
}

/// The "your refund did not reach your card" email, once per refund.
async fn tell_traveler(
    ctx: &JobContext,
    r: &crate::kinds::refund_compensation::RecordedRefund,
) -> Result<(), JobError> {
    let Some(b) = crate::booking::load(&ctx.db, r.booking_id).await? else {
        return Ok(());
    };
    let Some(user_id) = b.user_id else {
        return Ok(()); // erased: nobody to tell
    };
    let text = format!(
        "We tried to refund {} {} to the card you booked with, but your bank could not accept \
         it (the card may be closed or replaced). The money is safe with us: we will contact \
         you within two business days to pay it back another way.\n\nParker Flight",
        r.amount, r.currency
    );
    notify::tell(
        &ctx.db,
        ctx.deps()?,
        user_id,
        "refund_failed",
        &format!("refund-failed/{}", r.id),
        "Your refund could not reach your card",
        &text,
    )
    .await?;
    Ok(())
}

/// `refund_sweep`: asks for a reconcile of every refund still pending after `older_than_secs`
/// (Stripe's events can be lost or late; a refund stuck pending is seen by someone). Each
/// reconcile is keyed per refund, so a sweep that runs while one is queued adds nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundSweep {
    /// How long a refund may stay pending before it is re-read (default: a day).
    #[serde(default = "RefundSweep::default_older_than_secs")]
    pub older_than_secs: u64,
}

impl RefundSweep {
    fn default_older_than_secs() -> u64 {
        86_400
    }
}

/// At most this many refunds are re-read per sweep (the rest, next time).
const SWEEP_BATCH: i64 = 500;

impl Job for RefundSweep {
    const KIND: &'static str = "refund_sweep";

    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "maintenance".to_owned(),
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let older = std::time::Duration::from_secs(self.older_than_secs);
        let ids = refunds_unsettled(&ctx.db, older, SWEEP_BATCH).await?;
        let jobs = ids
            .iter()
            .map(|id| Ok(RefundReconcile::request(id, "sweep")?.key(format!("refund_sweep:{id}"))))
            .collect::<Result<Vec<_>, JobError>>()?;
        if !jobs.is_empty() {
            tracing::info!(
                refunds = jobs.len(),
                "refunds still pending: asking Stripe again"
            );
            let mut tx = ctx.db.begin().await?;
            ctx.enqueuer.enqueue_many(&mut tx, jobs).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}
