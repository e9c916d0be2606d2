//! `refund_compensation`: gives a booking's money back and releases its trip (docs/saga.md).
//!
//! This module owns "request a refund": [`RefundCompensation::request`] builds the job with
//! the key `booking:{booking_id}:refund`, whoever asks — the booking saga (capture impossible
//! after the order), [`cancel_and_request_refund`] (an order cancelled after capture: webhook
//! follow-up, operator), `fleet booking refund`. One key per booking, so every producer's
//! request dedupes with every other's.
//!
//! # Contract: safe to run twice (or concurrently)
//! 1. Re-check the domain first: an unknown booking cancels the job; a `refunded` booking only
//!    makes sure its email went out; a booking with nothing captured and no order is a no-op.
//! 2. The Duffel order, if any, is cancelled (quote + confirm). `already_cancelled` counts as
//!    done; a refusal to cancel (e.g. a non-refundable fare) is audited and the customer is
//!    refunded anyway.
//! 3. The refund's intent is recorded first (a `refunds` row, `pending`, no Stripe id) so the
//!    invariant "captured ⇒ ticketed or refunded" holds across a crash; then Stripe is asked
//!    with `Idempotency-Key: booking:{booking_id}:refund` and parameters that depend on the
//!    booking only (the whole captured amount, `metadata[booking_id]`), so every run gets the
//!    same refund back; then the row gets its `stripe_refund_id` (unique) and status, and the
//!    booking becomes `refunded` — in one transaction with the audit row.
//! 4. The user is emailed once (`refund/{booking_id}`).

use crate::deps::HasDeps;
use crate::job::budgets;
use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use sqlx::PgConnection;

use crate::notify;
use crate::{
    audit,
    booking::{self, failure_code, is_failure_code, Booking, BookingStatus, Change},
    providers::{is_provider_id, money, FailureClass, RefundReason, RefundRequest},
    Enqueuer, Job, JobContext, JobError, KindDefaults, NewJob,
};

const ACTOR: &str = "fleet";

/// Refund booking `booking_id` (and cancel its order). `reason` is a lowercase code
/// (`order_cancelled`, `capture_failed`, `operator`, …), kept on the `refunds` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundCompensation {
    /// The booking.
    pub booking_id: Uuid,
    /// Why, as a code (`^[a-z0-9_.]{1,100}$`).
    pub reason: String,
}

impl RefundCompensation {
    /// The refund of `booking_id` for `reason` (a code; anything else becomes
    /// `order_cancelled`), with the key `booking:{booking_id}:refund`.
    pub fn request(booking_id: Uuid, reason: &str) -> Result<NewJob, JobError> {
        Ok(NewJob::of(&RefundCompensation {
            booking_id,
            reason: failure_code(reason, "order_cancelled"),
        })
        .map_err(JobError::fatal)?
        .key(refund_key(booking_id)))
    }
}

/// The one idempotency key of a booking's refund, shared by the job and the Stripe call.
pub fn refund_key(booking_id: Uuid) -> String {
    format!("booking:{booking_id}:refund")
}

/// A ticketed booking whose order was cancelled or failed later (webhook, operator): moves it
/// to `cancelled` and enqueues its refund in the same transaction on `conn` (pass `&mut *tx`).
/// Returns false, and enqueues nothing, if the booking is not ticketed.
pub async fn cancel_and_request_refund(
    conn: &mut PgConnection,
    enqueuer: &dyn Enqueuer,
    booking_id: Uuid,
    reason: &str,
) -> Result<bool, JobError> {
    let Some(b) = booking::load(&mut *conn, booking_id).await? else {
        return Ok(false);
    };
    let reason = failure_code(reason, "order_cancelled");
    let change = Change::CancelledAfterCapture { reason: &reason };
    if !booking::transition(conn, &b, change).await? {
        return Ok(false);
    }
    enqueuer
        .enqueue_many(
            conn,
            vec![RefundCompensation::request(booking_id, &reason)?],
        )
        .await?;
    Ok(true)
}

/// What an operator's refund request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorRefund {
    /// The booking.
    pub booking_id: Uuid,
    /// Its status when asked.
    pub status_before: String,
    /// A ticketed booking was moved to `cancelled` first (the refund also cancels its order).
    pub booking_cancelled: bool,
    /// What the refund gives back: the booking's charge, a decimal string in `currency`.
    pub amount: String,
    /// Its currency (ISO 4217).
    pub currency: String,
    /// The refund job (an existing one when `duplicate`). `None` in a dry run that would add
    /// one: the rolled-back insert's id is not the one the real request gets.
    pub job_id: Option<i64>,
    /// A refund of this booking was already queued: no second one.
    pub duplicate: bool,
}

/// Why an operator's refund request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefundRefused {
    /// No such booking.
    #[error("no booking with id {0}")]
    NotFound(Uuid),
    /// The booking's state does not allow it.
    #[error("booking {id} cannot be refunded: {why}")]
    NotRefundable {
        /// The booking.
        id: Uuid,
        /// Why, for the operator.
        why: &'static str,
    },
    /// The reason is not a code.
    #[error("the reason must be a code (^[a-z0-9_.]{{1,100}}$, e.g. customer_request), got {0:?}")]
    BadReason(String),
    /// The database or the enqueue failed.
    #[error(transparent)]
    Failed(#[from] JobError),
}

/// An operator asks for booking `booking_id`'s money back, on `conn` (pass `&mut *tx`): a
/// ticketed booking is cancelled and its refund requested in the same transaction; a cancelled
/// one that still holds captured money gets its refund requested. The refund's own key makes a
/// repeated request return the queued job instead of a second one.
pub async fn request_by_operator(
    conn: &mut PgConnection,
    enqueuer: &dyn Enqueuer,
    booking_id: Uuid,
    reason: &str,
) -> Result<OperatorRefund, RefundRefused> {
    if !is_failure_code(reason) {
        return Err(RefundRefused::BadReason(reason.to_owned()));
    }
    let b = booking::load(&mut *conn, booking_id)
        .await
        .map_err(JobError::from)?
        .ok_or(RefundRefused::NotFound(booking_id))?;
    let refused = |why| RefundRefused::NotRefundable { id: b.id, why };
    let booking_cancelled =
        match b.status {
            BookingStatus::Ticketed => {
                let change = Change::CancelledAfterCapture { reason };
                booking::transition(conn, &b, change)
                    .await
                    .map_err(JobError::from)?
            }
            BookingStatus::Cancelled if b.captured_at.is_some() => false,
            BookingStatus::Refunded => return Err(refused("it is already refunded")),
            BookingStatus::Pending | BookingStatus::Authorized => return Err(refused(
                "its booking saga is still running and voids its own hold; pause booking_attempt \
                 first if it must stop",
            )),
            BookingStatus::Failed | BookingStatus::Cancelled => {
                return Err(refused("nothing was captured"))
            }
        };
    let job = RefundCompensation::request(b.id, reason)?;
    let enqueued = enqueuer
        .enqueue_many(conn, vec![job])
        .await
        .map_err(JobError::from)?;
    Ok(OperatorRefund {
        booking_id: b.id,
        status_before: b.status.as_str().to_owned(),
        booking_cancelled,
        amount: b.total_amount.clone(),
        currency: b.currency.clone(),
        job_id: Some(enqueued[0].id),
        duplicate: enqueued[0].duplicate,
    })
}

impl Job for RefundCompensation {
    const KIND: &'static str = "refund_compensation";

    /// Queue `bookings`; 25 attempts, 10 s doubling to 1 h (a Stripe outage delays a refund,
    /// never drops it); one minute per attempt; no key window (the job is idempotent).
    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "bookings".to_owned(),
            concurrency: None,
            max_attempts: 25,
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
            idempotency_window: Duration::ZERO,
            priority: 0,
            budgets: vec![budgets::STRIPE.to_owned()],
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_failure_code(&self.reason) {
            return Err(JobError::fatal(
                "refund_compensation: reason must match ^[a-z0-9_.]{1,100}$",
            ));
        }
        let Some(b) = booking::load(&ctx.db, self.booking_id).await? else {
            return Err(JobError::Cancel(format!(
                "booking {} does not exist",
                self.booking_id
            )));
        };
        if b.status == BookingStatus::Refunded {
            return notify(&ctx, &b).await;
        }
        if b.status.in_flight() {
            // The saga still owns it (it voids holds itself); try again once it is over.
            return Err(JobError::retryable(format!(
                "booking {} is still {} (saga in flight)",
                b.id, b.status
            )));
        }
        if b.duffel_order_id.is_some() {
            cancel_order(&ctx, &b).await?;
        }
        if b.captured_at.is_none() {
            tracing::info!(booking.id = %b.id, "refund compensation: nothing captured");
            return Ok(());
        }
        refund(&ctx, &b, &self.reason).await?;
        let b = booking::load(&ctx.db, b.id)
            .await?
            .ok_or_else(|| JobError::retryable("booking vanished"))?;
        notify(&ctx, &b).await
    }
}

/// Cancels the booking's Duffel order unless it already is.
async fn cancel_order(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let order_id = b.duffel_order_id.as_deref().unwrap_or_default();
    let flights = ctx.flights()?;
    let order = flights.get_order(order_id).await?;
    if order.cancelled_at.is_some() {
        return Ok(());
    }
    let outcome = match flights.create_order_cancellation(order_id).await {
        Ok(c) => flights.confirm_order_cancellation(&c.id).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => {}
        Err(e) if e.is_code("already_cancelled") => {}
        Err(e) if e.class == FailureClass::Rejected => {
            // The airline will not cancel (or the order is gone): refund the customer anyway
            // and leave a trace for operators.
            audit::record(
                &ctx.db,
                ACTOR,
                "booking.order_cancel_refused",
                "booking",
                Some(&b.id.to_string()),
                &json!({"booking_id": b.id, "order_id": order_id,
                        "code": e.code.as_deref()}),
            )
            .await?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    audit::record(
        &ctx.db,
        ACTOR,
        "booking.order_cancelled",
        "booking",
        Some(&b.id.to_string()),
        &json!({"booking_id": b.id, "order_id": order_id}),
    )
    .await?;
    Ok(())
}

/// Records the intent, asks Stripe (`booking:{id}:refund`), records the refund.
async fn refund(ctx: &JobContext, b: &Booking, reason: &str) -> Result<(), JobError> {
    let pi_id = b.stripe_payment_intent_id.clone().ok_or_else(|| {
        JobError::fatal(format!("booking {}: captured without PaymentIntent", b.id))
    })?;
    // Intent first: one refund row per booking (the Stripe key is per booking too). The
    // booking row lock serialises concurrent runs, so the second sees the first's row.
    let mut tx = ctx.db.begin().await?;
    booking::lock(&mut tx, b.id).await?;
    sqlx::query(
        "INSERT INTO refunds (booking_id, amount, currency, reason, status)
         SELECT b.id, b.total_amount, b.currency, $2, 'pending' FROM bookings b
         WHERE b.id = $1 AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = $1)",
    )
    .bind(b.id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let req = RefundRequest {
        payment_intent_id: pi_id.clone(),
        amount_minor: None,
        reason: Some(RefundReason::RequestedByCustomer),
        metadata: BTreeMap::from([("booking_id".to_owned(), b.id.to_string())]),
    };
    let key = refund_key(b.id);
    let r = ctx.deps()?.payments()?.create_refund(&req, &key).await?;
    if !is_provider_id(&r.id, &["re_", "pyr_"]) {
        return Err(JobError::fatal("stripe returned a malformed refund id"));
    }
    let status = booking::REFUND_STATUSES
        .into_iter()
        .find(|s| *s == r.status)
        .unwrap_or("pending");
    let amount = money::minor_to_decimal(r.amount, &r.currency).map_err(JobError::fatal)?;
    let mut tx = ctx.db.begin().await?;
    sqlx::query(
        "UPDATE refunds SET stripe_refund_id = $2, status = $3,
                amount = CASE WHEN $4::numeric > 0 THEN $4::numeric ELSE amount END,
                updated_at = now()
         WHERE id = (SELECT id FROM refunds WHERE booking_id = $1
                     AND (stripe_refund_id IS NULL OR stripe_refund_id = $2)
                     ORDER BY created_at LIMIT 1)",
    )
    .bind(b.id)
    .bind(&r.id)
    .bind(status)
    .bind(&amount)
    .execute(&mut *tx)
    .await?;
    if matches!(status, "failed" | "canceled") {
        tx.commit().await?;
        return Err(JobError::fatal(format!(
            "booking {}: Stripe refund {} is {status}; an operator must act",
            b.id, r.id
        )));
    }
    let change = Change::Refunded {
        refund_id: &r.id,
        amount_minor: r.amount,
        currency: &r.currency,
        reason,
        status,
    };
    booking::transition(&mut tx, b, change).await?;
    tx.commit().await?;
    Ok(())
}

/// A refund as the fleet recorded it (`refunds`), for its reconcile.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordedRefund {
    /// `refunds.id`.
    pub id: Uuid,
    /// Its booking.
    pub booking_id: Uuid,
    /// `re_…`.
    pub stripe_refund_id: String,
    /// Stripe's status as last recorded.
    pub status: String,
    /// Decimal amount.
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
}

/// RefundFindByStripeId: the refund Stripe calls `stripe_refund_id`, if we made it.
pub(crate) async fn refund_by_stripe_id(
    conn: &mut PgConnection,
    stripe_refund_id: &str,
) -> Result<Option<RecordedRefund>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, booking_id, stripe_refund_id, status, amount::text AS amount,
                currency::text AS currency
         FROM refunds WHERE stripe_refund_id = $1",
    )
    .bind(stripe_refund_id)
    .fetch_optional(conn)
    .await
}

/// RefundRecordStatus: records what Stripe now says of refund `id` (a status among Stripe's
/// five, and its failure code). Returns whether anything changed.
pub(crate) async fn record_refund_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    failure_reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE refunds SET status = $2, failure_reason = $3, updated_at = now()
         WHERE id = $1 AND (status, failure_reason) IS DISTINCT FROM ($2, $3)",
    )
    .bind(id)
    .bind(status)
    .bind(failure_reason)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// RefundListUnsettled: Stripe ids of refunds still `pending` or `requires_action` whose last
/// update is older than `older_than`, oldest first, at most `limit`.
pub(crate) async fn refunds_unsettled(
    db: &crate::Db,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT stripe_refund_id FROM refunds
         WHERE status IN ('pending', 'requires_action') AND stripe_refund_id IS NOT NULL
           AND updated_at < now() - $1 * interval '1 millisecond'
         ORDER BY updated_at LIMIT $2",
    )
    .bind(older_than.as_millis() as i64)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How an operator paid back a refund that failed (`fleet booking paid-out --how`).
pub const PAYOUT_METHODS: [&str; 3] = ["bank_transfer", "stripe_payout", "cheque"];

/// What recording a payout did.
#[derive(Debug, Clone, Serialize)]
pub struct PaidOut {
    /// The booking.
    pub booking_id: Uuid,
    /// The refund that failed.
    pub failed_refund_id: Uuid,
    /// The row that records the payout (`refunds`, `succeeded`, no Stripe id).
    pub payout_refund_id: Uuid,
    /// Decimal amount paid back.
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    /// How (one of [`PAYOUT_METHODS`]).
    pub how: String,
}

/// Why a payout could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum PayoutRefused {
    /// No such booking.
    #[error("no booking with id {0}")]
    NotFound(Uuid),
    /// Nothing is owed: no refund failed, or one was made good since.
    #[error("booking {id}: nothing to pay out: {why}")]
    NothingOwed {
        /// The booking.
        id: Uuid,
        /// Why.
        why: &'static str,
    },
    /// `how` is not one of [`PAYOUT_METHODS`].
    #[error("--how must be one of bank_transfer, stripe_payout, cheque, not {0:?}")]
    BadMethod(String),
    /// The database failed.
    #[error(transparent)]
    Failed(#[from] sqlx::Error),
}

/// RefundRecordPayout: records, on `conn` (pass `&mut *tx`), that the money of booking `id`'s
/// failed refund was paid back outside Stripe's refund (`how`): a `refunds` row of the same
/// amount, `succeeded`, no Stripe id, reason `paid_out.{how}`. The booking row lock serialises
/// it with the reconcile; a second payout for the same failure is refused (nothing owed).
pub async fn record_payout(
    conn: &mut PgConnection,
    id: Uuid,
    how: &str,
) -> Result<PaidOut, PayoutRefused> {
    if !PAYOUT_METHODS.contains(&how) {
        return Err(PayoutRefused::BadMethod(how.to_owned()));
    }
    let locked: Option<i32> = sqlx::query_scalar("SELECT 1 FROM bookings WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if locked.is_none() {
        return Err(PayoutRefused::NotFound(id));
    }
    let refunds: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, status, amount::text, currency::text FROM refunds
         WHERE booking_id = $1 ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    if refunds.iter().any(|r| booking::refund_makes_good(&r.1)) {
        return Err(PayoutRefused::NothingOwed {
            id,
            why: "a refund of it is succeeded or still pending",
        });
    }
    let Some((failed_id, _, amount, currency)) = refunds.into_iter().find(|r| r.1 == "failed")
    else {
        return Err(PayoutRefused::NothingOwed {
            id,
            why: "no refund of it failed",
        });
    };
    let payout: Uuid = sqlx::query_scalar(
        "INSERT INTO refunds (booking_id, amount, currency, reason, status)
         VALUES ($1, $2::numeric, $3, $4, 'succeeded') RETURNING id",
    )
    .bind(id)
    .bind(&amount)
    .bind(&currency)
    .bind(format!("paid_out.{how}"))
    .fetch_one(&mut *conn)
    .await?;
    Ok(PaidOut {
        booking_id: id,
        failed_refund_id: failed_id,
        payout_refund_id: payout,
        amount,
        currency,
        how: how.to_owned(),
    })
}

/// The refund email, once per booking.
async fn notify(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let (Some(user_id), Some(origin), Some(destination)) =
        (b.user_id, b.origin.as_deref(), b.destination.as_deref())
    else {
        return Ok(());
    };
    let text = format!(
        "Your booking from {origin} to {destination} could not be kept, so we have refunded \
         {} {} to your card. Refunds usually reach your account within 5-10 business days.\
         \n\nParker Flight",
        b.total_amount, b.currency
    );
    notify::tell(
        &ctx.db,
        ctx.deps()?,
        user_id,
        "refund",
        &format!("refund/{}", b.id),
        "Your flight booking was refunded",
        &text,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_refuse_unknown_fields_and_reasons_are_codes() {
        let id = Uuid::new_v4();
        let ok: RefundCompensation =
            serde_json::from_value(json!({"booking_id": id, "reason": "order_cancelled"})).unwrap();
        assert_eq!(ok.booking_id, id);
        assert!(serde_json::from_value::<RefundCompensation>(
            json!({"booking_id": id, "reason": "x", "amount": 1})
        )
        .is_err());
        assert!(is_failure_code("order_cancelled"));
        assert!(!is_failure_code("Order cancelled by Jane"));
        assert!(!is_failure_code(""));
        let refund = |id| is_provider_id(id, &["re_", "pyr_"]);
        assert!(refund("re_123") && refund("pyr_1") && !refund("re_"));
    }
}
