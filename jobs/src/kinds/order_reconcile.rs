//! `order_reconcile`: a Duffel event about an order (created, creation failed; an airline
//! change is `airline_change`'s, and a job queued for one before that kind existed only
//! re-reads the order here).
//! Re-reads the order from Duffel; a failed creation for a booking that holds money resumes the
//! saga ([`BookingAttempt::request`]: it reconciles, then voids the hold on a definite
//! failure); a cancelled order of a captured booking requests its refund
//! ([`RefundCompensation::request`]: one key per booking, so it runs once whoever asks).
//! Everything is audited.

use crate::deps::HasDeps;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{booking_attempt::BookingAttempt, refund_compensation::RefundCompensation};
use crate::{audit, Job, JobContext, JobError, KindDefaults};

/// (booking id, status, captured, campaign id, offer id).
type BookingFacts = (Uuid, String, bool, Option<Uuid>, String);

/// Args: provider ids and the event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderReconcile {
    /// `ord_…`, when the event carries one.
    pub order_id: Option<String>,
    /// Our booking id from the order's metadata, when present.
    pub booking_id: Option<Uuid>,
    /// Duffel event type.
    pub event_type: String,
    /// Duffel event id (dedupes the traveler's notification).
    pub event_id: String,
}

impl Job for OrderReconcile {
    const KIND: &'static str = "order_reconcile";

    fn defaults() -> KindDefaults {
        super::reconcile_budget_defaults(crate::job::budgets::DUFFEL_ORDER)
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        // A creation that failed may name an order Duffel never made: "not found" is an
        // answer (no order), not a failure of this job.
        let order = match &self.order_id {
            Some(id) => match ctx.flights()?.get_order(id).await {
                Ok(o) => Some(o),
                Err(e) if e.is_code("not_found") => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let row: Option<BookingFacts> = sqlx::query_as(
            "SELECT b.id, b.status, b.captured_at IS NOT NULL, b.campaign_id, b.duffel_offer_id
             FROM bookings b
             WHERE ($1::text IS NOT NULL AND b.duffel_order_id = $1) OR b.id = $2",
        )
        .bind(&self.order_id)
        .bind(self.booking_id)
        .fetch_optional(&ctx.db)
        .await?;
        let Some((booking, status, captured, campaign, offer)) = row else {
            tracing::info!(event.type = %self.event_type, "order event for a booking we do not know (yet)");
            return Ok(());
        };
        let mut tx = ctx.db.begin().await?;
        // Order creation failed while the booking holds money: resume the saga now. It
        // reconciles (is there an order after all?) and, on a definite failure, voids the hold
        // — the compensation — under its own lock and keys. If an attempt is already queued,
        // the key returns it and nothing is added.
        if self.event_type == "order.creation_failed" && status == "authorized" {
            if let Some(campaign) = campaign {
                let resume = BookingAttempt::request(campaign, &offer)?;
                ctx.enqueuer.enqueue_many(&mut tx, vec![resume]).await?;
            }
        }
        let cancelled = order.as_ref().is_some_and(|o| o.cancelled_at.is_some());
        if cancelled && captured && status == "ticketed" {
            let refund = RefundCompensation::request(booking, "order_cancelled")?;
            ctx.enqueuer.enqueue_many(&mut tx, vec![refund]).await?;
        }
        audit::record(
            &mut *tx,
            "fleet",
            "order.event_reconciled",
            "booking",
            Some(&booking.to_string()),
            &serde_json::json!({ "event_type": self.event_type, "order_id": self.order_id, "order_cancelled": cancelled }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
