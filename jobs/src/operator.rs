//! The domain's operator commands: what an operator may do to a traveler's booking. The
//! engine's `Ops` runs them behind the same interface as its own queue commands (an actor, a
//! dry run, a usage error for what cannot be done as asked), but the change, its checks and its
//! audit row (in the domain's `audit_log`) are the domain's, here.

use serde_json::json;
use uuid::Uuid;

use crate::{
    audit,
    booking::{self, BookingView, JobSelector},
    kinds::refund_compensation::{
        record_payout, request_by_operator, OperatorRefund, PaidOut, PayoutRefused, RefundRefused,
    },
    Db, Enqueuer, JobError,
};

/// A booking as operators see it (steps, provider ids, refunds, emails, audit; no PII) and how
/// to find the jobs behind it in the queue (the engine lists them). `None`: no such booking.
pub async fn booking_show(
    reads: &Db,
    id: Uuid,
) -> Result<Option<(BookingView, Vec<JobSelector>)>, sqlx::Error> {
    Ok(booking::view(reads, id).await?.map(|v| {
        let jobs = crate::kinds::jobs_of_booking(&v);
        (v, jobs)
    }))
}

/// Bookings newest first for the operators' list, of `status` if given, older than `before`
/// (the previous page's last `(created_at, id)`): ids, statuses, routes, dates, amounts and
/// failure codes, no personal data.
pub async fn bookings_list(
    reads: &Db,
    status: Option<booking::BookingStatus>,
    before: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<booking::BookingListRow>, sqlx::Error> {
    booking::list_recent(reads, status, before, limit).await
}

/// Requests a refund of booking `id` for `reason` (a code), as `actor`: a ticketed booking is
/// cancelled and its refund enqueued (through `enqueuer`, in the same transaction), audited as
/// `booking.refund_requested`. With `dry_run` the change is made and rolled back, and the
/// report says what would happen; nothing is audited.
pub async fn booking_refund(
    db: &Db,
    enqueuer: &dyn Enqueuer,
    actor: &str,
    id: Uuid,
    reason: &str,
    dry_run: bool,
) -> Result<OperatorRefund, RefundRefused> {
    let failed = |e: sqlx::Error| RefundRefused::Failed(JobError::from(e));
    let mut tx = db.begin().await.map_err(failed)?;
    let mut r = request_by_operator(&mut tx, enqueuer, id, reason).await?;
    if dry_run {
        tx.rollback().await.map_err(failed)?;
        if !r.duplicate {
            r.job_id = None;
        }
        return Ok(r);
    }
    let meta = json!({
        "booking_id": id, "reason": reason, "status_before": r.status_before,
        "booking_cancelled": r.booking_cancelled, "job_id": r.job_id,
        "duplicate": r.duplicate,
    });
    audit::record(
        &mut *tx,
        actor,
        "booking.refund_requested",
        "booking",
        Some(&id.to_string()),
        &meta,
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(r)
}

/// Records, as `actor`, that booking `id`'s failed refund was paid back outside Stripe's refund
/// (`how`: a bank transfer, a Stripe payout, a cheque; `reference`: the finance ticket, an id
/// with no personal data), audited as `refund.paid_out`. With `dry_run` the row is written and
/// rolled back; nothing is audited.
pub async fn booking_paid_out(
    db: &Db,
    actor: &str,
    id: Uuid,
    how: &str,
    reference: &str,
    dry_run: bool,
) -> Result<PaidOut, PayoutRefused> {
    let mut tx = db.begin().await?;
    let p = record_payout(&mut tx, id, how).await?;
    if dry_run {
        tx.rollback().await?;
        return Ok(p);
    }
    let meta = json!({
        "booking_id": id, "how": how, "reference": reference, "amount": p.amount,
        "currency": p.currency, "failed_refund_id": p.failed_refund_id,
        "payout_refund_id": p.payout_refund_id,
    });
    audit::record(
        &mut *tx,
        actor,
        "refund.paid_out",
        "booking",
        Some(&id.to_string()),
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(p)
}
