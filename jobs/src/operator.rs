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

/// What an operator may do about an airline-initiated change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeChoice {
    /// Keep the booking on the new schedule (Duffel's accept).
    Accept,
    /// Cancel the booking and refund the traveler in full (the refund compensation cancels the
    /// order).
    CancelAndRefund,
}

impl std::str::FromStr for ChangeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "accept" => Ok(Self::Accept),
            "cancel" | "cancel-and-refund" => Ok(Self::CancelAndRefund),
            other => Err(format!(
                "unknown decision {other:?}: use accept or cancel (cancel and refund)"
            )),
        }
    }
}

/// An operator's decision about a booking's airline change (or, in a dry run, what it would
/// be).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeDecision {
    /// The booking.
    pub booking_id: Uuid,
    /// The change decided (`aic_…`).
    pub change_id: String,
    /// The decision.
    pub choice: ChangeChoice,
    /// The change's deadline.
    pub respond_by: chrono::DateTime<chrono::Utc>,
    /// The accept job (an existing one when `duplicate`); `None` for a cancel, or in a dry run
    /// that would add one.
    pub job_id: Option<i64>,
    /// An accept of this change was already queued: no second one.
    pub duplicate: bool,
    /// The refund a cancel requested.
    pub refund: Option<OperatorRefund>,
}

/// Why an operator's decision about an airline change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeRefused {
    /// No such booking.
    #[error("no booking with id {0}")]
    NotFound(Uuid),
    /// The booking has no airline change.
    #[error("booking {0} has no airline-initiated change")]
    NoChange(Uuid),
    /// Its changes are all decided.
    #[error("airline change {id} was already {status} by {by}")]
    Decided {
        /// The latest change.
        id: String,
        /// Its status.
        status: String,
        /// Who decided.
        by: String,
    },
    /// Too late: the deadline's default applies.
    #[error(
        "the deadline of airline change {id} passed at {at} UTC: the fleet keeps the new \
         schedule by default (docs/decisions.md 50); cancel and refund with `fleet booking \
         refund` if the traveler asks"
    )]
    DeadlinePassed {
        /// The change.
        id: String,
        /// Its deadline.
        at: String,
    },
    /// Duffel does not offer the action for this change.
    #[error("Duffel does not offer accept for airline change {id} (it offers {available:?}): settle it with the airline")]
    NotAvailable {
        /// The change.
        id: String,
        /// What Duffel offers.
        available: Vec<String>,
    },
    /// The refund of a cancel was refused.
    #[error(transparent)]
    Refund(RefundRefused),
    /// The database or the enqueue failed.
    #[error(transparent)]
    Failed(#[from] JobError),
}

impl From<sqlx::Error> for ChangeRefused {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// An operator (`actor`) decides booking `id`'s open airline change before its deadline:
/// `Accept` queues the accept at Duffel (one job per change, keyed); `CancelAndRefund` cancels
/// the booking and requests its refund (which cancels the order) and records the change as
/// cancelled by `actor`, in one transaction. Audited (`airline_change.accept_requested`,
/// `airline_change.cancelled`); with `dry_run` everything is rolled back.
pub async fn airline_change_decide(
    db: &Db,
    enqueuer: &dyn Enqueuer,
    actor: &str,
    id: Uuid,
    choice: ChangeChoice,
    dry_run: bool,
) -> Result<ChangeDecision, ChangeRefused> {
    use crate::airline_change;
    use crate::kinds::airline_change_action::AirlineChangeAction;
    let mut tx = db.begin().await?;
    if booking::load(&mut *tx, id).await?.is_none() {
        return Err(ChangeRefused::NotFound(id));
    }
    let changes = airline_change::of_booking(&mut *tx, id).await?;
    let Some(c) = changes.iter().rev().find(|c| c.is_open()) else {
        let last = changes.last().ok_or(ChangeRefused::NoChange(id))?;
        return Err(ChangeRefused::Decided {
            id: last.id.clone(),
            status: last.status.clone(),
            by: last.decided_by.clone().unwrap_or_default(),
        });
    };
    if chrono::Utc::now() >= c.respond_by {
        return Err(ChangeRefused::DeadlinePassed {
            id: c.id.clone(),
            at: c.respond_by.format("%Y-%m-%d %H:%M").to_string(),
        });
    }
    let mut d = ChangeDecision {
        booking_id: id,
        change_id: c.id.clone(),
        choice,
        respond_by: c.respond_by,
        job_id: None,
        duplicate: false,
        refund: None,
    };
    let action = match choice {
        ChangeChoice::Accept => {
            if !c.allows("accept") {
                return Err(ChangeRefused::NotAvailable {
                    id: c.id.clone(),
                    available: c.available_actions.clone(),
                });
            }
            let job = AirlineChangeAction::accept(&c.id, actor)?;
            let enqueued = enqueuer
                .enqueue_many(&mut tx, vec![job])
                .await
                .map_err(JobError::from)?;
            d.job_id = Some(enqueued[0].id);
            d.duplicate = enqueued[0].duplicate;
            "airline_change.accept_requested"
        }
        ChangeChoice::CancelAndRefund => {
            let refund = request_by_operator(&mut tx, enqueuer, id, "airline_change")
                .await
                .map_err(|e| match e {
                    RefundRefused::Failed(e) => ChangeRefused::Failed(e),
                    other => ChangeRefused::Refund(other),
                })?;
            airline_change::decide(&mut tx, &c.id, "cancelled", actor).await?;
            d.refund = Some(refund);
            "airline_change.cancelled"
        }
    };
    if dry_run {
        tx.rollback().await?;
        if !d.duplicate {
            d.job_id = None;
        }
        if let Some(r) = d.refund.as_mut().filter(|r| !r.duplicate) {
            r.job_id = None;
        }
        return Ok(d);
    }
    audit::record(
        &mut *tx,
        actor,
        action,
        "booking",
        Some(&id.to_string()),
        &json!({
            "booking_id": id, "airline_change_id": c.id, "job_id": d.job_id,
            "duplicate": d.duplicate,
            "refund_job_id": d.refund.as_ref().and_then(|r| r.job_id),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(d)
}
