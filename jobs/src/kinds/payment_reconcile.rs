//! `payment_reconcile`: a Stripe event about a PaymentIntent (payment failed, canceled, charge
//! refunded or expired, dispute opened). Re-reads the PaymentIntent from Stripe — events
//! arrive late and out of order, the API is the truth — records its status on the booking and
//! audits the event (a dispute is an operator's matter: it shows in the audit trail). Booking
//! state transitions stay with the saga and the refund compensation, which hold the row lock
//! while they act.

use crate::deps::HasDeps;
use serde::{Deserialize, Serialize};

use crate::{audit, providers::PaymentIntentState, Job, JobContext, JobError, KindDefaults};

/// Args: the PaymentIntent and the event type that triggered the reconcile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentReconcile {
    /// `pi_…`.
    pub payment_intent_id: String,
    /// Stripe event type.
    pub event_type: String,
}

/// The `bookings.payment_intent_status` spelling of a state.
pub fn status_str(s: &PaymentIntentState) -> Option<&'static str> {
    Some(match s {
        PaymentIntentState::RequiresPaymentMethod => "requires_payment_method",
        PaymentIntentState::RequiresConfirmation => "requires_confirmation",
        PaymentIntentState::RequiresAction => "requires_action",
        PaymentIntentState::Processing => "processing",
        PaymentIntentState::RequiresCapture => "requires_capture",
        PaymentIntentState::Succeeded => "succeeded",
        PaymentIntentState::Canceled => "canceled",
        PaymentIntentState::Other(_) => return None,
    })
}

impl Job for PaymentReconcile {
    const KIND: &'static str = "payment_reconcile";

    fn defaults() -> KindDefaults {
        super::reconcile_budget_defaults(crate::job::budgets::STRIPE)
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let pi = ctx
            .deps()?
            .payments()?
            .retrieve_payment_intent(&self.payment_intent_id)
            .await?;
        let mut tx = ctx.db.begin().await?;
        let booking =
            crate::booking::observe_payment_intent(&mut tx, &pi.id, status_str(&pi.status)).await?;
        let Some(booking) = booking else {
            tracing::info!(event.type = %self.event_type, "payment event for a PaymentIntent no booking records (yet)");
            return Ok(());
        };
        let action = if self.event_type == "charge.dispute.created" {
            "payment.dispute_opened"
        } else {
            "payment.event_reconciled"
        };
        audit::record(
            &mut *tx,
            "fleet",
            action,
            "booking",
            Some(&booking.to_string()),
            &serde_json::json!({
                "payment_intent_id": pi.id, "event_type": self.event_type,
                "status": status_str(&pi.status), "amount_received": pi.amount_received,
            }),
        )
        .await?;
        tx.commit().await?;
        if action == "payment.dispute_opened" {
            if let Some(o) = crate::observe::money() {
                o.dispute_opened();
            }
        }
        Ok(())
    }
}
