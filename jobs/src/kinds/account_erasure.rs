//! `account_erasure`: erases a traveler's account (GDPR art. 17), worked from its
//! `data_requests` row ([`crate::data_rights`]). In order, each step safe to repeat:
//!
//! 1. **Stop new work.** The account's campaigns still searching or waiting on the traveler are
//!    cancelled (no search or booking starts again; a saga not yet past its order voids its
//!    hold). While money still moves — a saga in flight, a refund owed or not settled — the
//!    erasure waits (`waiting_on`, snoozed, no attempt used): deleting the account then would
//!    detach a booking mid-saga or lose who to pay back.
//! 2. **Stripe.** Every saved card is detached and every Stripe customer of the account
//!    deleted, each call with the key `erasure:{request}:detach:{pm}` /
//!    `erasure:{request}:customer:{cus}`; Stripe saying the card or customer is already gone
//!    is success. (Stripe ignores keys on DELETE: a retried customer delete meets its 404,
//!    `resource_missing`, which is how it learns it is done; a card detached before answers a
//!    400 that the client settles by reading the card.)
//! 3. **Tell them**, once (`account-erased/{request}`), by email, while the address still
//!    exists: the outbox row goes with the account, and a re-run after the last step finds the
//!    request completed and sends nothing.
//! 4. **Delete, in one transaction**: the bookings' PNR and itinerary and the airline changes'
//!    legs are scrubbed, an open export is cancelled, the `users` row is deleted (its profiles,
//!    cards, campaigns and outbox go with it by foreign key; the bookings and refunds stay,
//!    detached, as accounting records), the request is completed with counts, and the erasure
//!    is audited (`account.erased`). A card added meanwhile sends the job back to step 2.
//!
//! A crash anywhere repeats at most the Stripe calls (same keys) and finds the email sent. What
//! is kept, and why: docs/domain.md §2 ("After an erasure").

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::data_rights::RequestKind;
use crate::deps::HasDeps;
use crate::{
    airline_change, audit, booking, campaign, data_rights, notify, Job, JobContext, JobError,
    KindDefaults,
};

/// Args: the request (ids only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountErasure {
    /// `data_requests.id` (kind `erasure`).
    pub request_id: Uuid,
}

/// How long an erasure waits before it looks again at money still moving.
pub const WAIT_FOR_MONEY: Duration = Duration::from_secs(15 * 60);

/// The confirmation's subject and text (no personal data in either).
const SUBJECT: &str = "Your Parker Flight account has been erased";
const TEXT: &str = "As you asked, we have erased your Parker Flight account: your traveler \
profiles and passport details, saved cards (removed from our payment provider too), flight \
searches, itineraries and messages.\n\nWhat we keep, because the law requires it: the record \
of each payment and refund (amount, currency, date and the payment provider's reference) for \
as long as accounting law requires, with no name, itinerary or booking reference, and the \
record that this erasure happened.\n\nThis is the last message you will receive from us.";

impl Job for AccountErasure {
    const KIND: &'static str = "account_erasure";

    fn defaults() -> KindDefaults {
        KindDefaults {
            budgets: vec![crate::job::budgets::STRIPE.to_owned()],
            ..data_rights::job_defaults()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let request = self.request_id;
        // 1. Stop new work; wait while money moves.
        let mut tx = ctx.db.begin().await?;
        let Some(r) = data_rights::open_for_job(&mut tx, request, RequestKind::Erasure).await?
        else {
            return Ok(()); // completed by an earlier run
        };
        let user = r.user_id;
        if !lock_user(&mut tx, user).await? {
            // Deleted outside the fleet: nothing of theirs is left to erase here.
            let outcome = json!({"account_already_gone": true});
            data_rights::complete(&mut *tx, request, &outcome).await?;
            erased_audit(&mut tx, &ctx, &r, &outcome).await?;
            tx.commit().await?;
            return Ok(());
        }
        let cancelled = campaign::cancel_all_of_user(&mut *tx, user).await?;
        if !cancelled.is_empty() {
            audit::record(
                &mut *tx,
                "fleet",
                "erasure.campaigns_cancelled",
                "data_request",
                Some(&request.to_string()),
                &json!({"campaign_ids": cancelled, "job_id": ctx.job_id}),
            )
            .await?;
        }
        if let Some(e) = wait_for_money(&mut tx, request, user).await? {
            tx.commit().await?;
            return Err(e);
        }
        let cards = cards_of(&mut tx, user).await?;
        tx.commit().await?;

        // 2. Stripe: cards, then customers.
        let stripe = stripe_step(&ctx, request, &cards).await?;

        // 3. The confirmation, while the address exists.
        let key = format!("account-erased/{request}");
        if let Err(e) = notify::send_once(
            &ctx.db,
            ctx.deps()?.email()?,
            user,
            "account-erased",
            &key,
            SUBJECT,
            TEXT,
        )
        .await
        {
            data_rights::set_waiting(&ctx.db, request, Some("email_unavailable")).await?;
            return Err(e);
        }

        // 4. Scrub and delete, in one transaction.
        let mut tx = ctx.db.begin().await?;
        if data_rights::open_for_job(&mut tx, request, RequestKind::Erasure)
            .await?
            .is_none()
        {
            return Ok(()); // finished meanwhile
        }
        if !lock_user(&mut tx, user).await? {
            return Err(JobError::retryable(
                "the account went while the erasure ran; the re-run records it",
            ));
        }
        if let Some(e) = wait_for_money(&mut tx, request, user).await? {
            tx.commit().await?;
            return Err(e);
        }
        let now_cards = cards_of(&mut tx, user).await?;
        if now_cards.iter().any(|c| !cards.contains(c)) {
            return Err(JobError::retryable(
                "a card was saved during the erasure; the re-run detaches it",
            ));
        }
        let preview = data_rights::erasure_preview(&mut tx, user).await?;
        let whose = booking::ErasureOf::User(user);
        let bookings_scrubbed = booking::scrub_for_erasure(&mut tx, whose).await?;
        let changes_scrubbed = airline_change::scrub_for_erasure(&mut tx, whose).await?;
        let exports_cancelled = data_rights::cancel_open_exports_of(&mut *tx, user).await?;
        data_rights::delete_user(&mut tx, user).await?;
        let outcome = json!({
            "campaigns_cancelled": cancelled.len(),
            "campaigns_deleted": preview.campaigns,
            "profiles_deleted": preview.profiles,
            "cards_deleted": preview.cards_to_detach,
            "cards_detached_at_stripe": stripe.detached,
            "customers_deleted_at_stripe": stripe.customers_deleted,
            "notifications_deleted": preview.notifications,
            "bookings_kept_scrubbed": preview.bookings_kept,
            "bookings_scrubbed": bookings_scrubbed,
            "airline_changes_scrubbed": changes_scrubbed,
            "exports_cancelled": exports_cancelled,
        });
        data_rights::complete(&mut *tx, request, &outcome).await?;
        erased_audit(&mut tx, &ctx, &r, &outcome).await?;
        tx.commit().await?;
        tracing::info!(data_request.id = %request, job.id = ctx.job_id, "account erased");
        Ok(())
    }
}

/// Locks the account row; false if there is none.
async fn lock_user(tx: &mut sqlx::PgConnection, user: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user)
        .fetch_optional(tx)
        .await?;
    Ok(found.is_some())
}

/// The account's cards: `(pm_…, cus_…)`, oldest first.
async fn cards_of(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT stripe_payment_method_id, stripe_customer_id FROM payment_methods
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user)
    .fetch_all(tx)
    .await
}

/// If money still moves for `user`, notes why on the request and returns the snooze.
async fn wait_for_money(
    tx: &mut sqlx::PgConnection,
    request: Uuid,
    user: Uuid,
) -> Result<Option<JobError>, sqlx::Error> {
    let money = booking::money_still_moving_of_user(&mut *tx, user).await?;
    let Some(why) = money.waiting_on() else {
        return Ok(None);
    };
    data_rights::set_waiting(&mut *tx, request, Some(why)).await?;
    Ok(Some(JobError::snooze(
        WAIT_FOR_MONEY,
        format!(
            "erasure waits ({why}): {} booking(s) in flight, {} refund(s) unsettled",
            money.bookings_in_flight, money.refunds_unsettled
        ),
    )))
}

/// What step 2 confirmed: cards no customer holds and customers Stripe no longer has, whether
/// this run or an earlier one (a retried step) did it.
struct StripeDone {
    detached: usize,
    customers_deleted: usize,
}

async fn stripe_step(
    ctx: &JobContext,
    request: Uuid,
    cards: &[(String, String)],
) -> Result<StripeDone, JobError> {
    if cards.is_empty() {
        return Ok(StripeDone {
            detached: 0,
            customers_deleted: 0,
        });
    }
    let payments = ctx.deps()?.payments()?;
    let mut done = StripeDone {
        detached: 0,
        customers_deleted: 0,
    };
    for (pm, _) in cards {
        let key = format!("erasure:{request}:detach:{pm}");
        match payments.detach_payment_method(pm, &key).await {
            // Detached now or before (another run, the traveler): either way, no card left.
            Ok(_) => done.detached += 1,
            Err(e) => return Err(stripe_failed(ctx, request, e).await),
        }
    }
    let mut customers: Vec<&str> = cards.iter().map(|(_, c)| c.as_str()).collect();
    customers.sort_unstable();
    customers.dedup();
    for cus in customers {
        let key = format!("erasure:{request}:customer:{cus}");
        match payments.delete_customer(cus, &key).await {
            Ok(_) => done.customers_deleted += 1,
            Err(e) => return Err(stripe_failed(ctx, request, e).await),
        }
    }
    Ok(done)
}

/// A Stripe step failed: the request notes it (a code), the job's history keeps the error.
async fn stripe_failed(
    ctx: &JobContext,
    request: Uuid,
    e: crate::providers::stripe::StripeApiError,
) -> JobError {
    match data_rights::set_waiting(&ctx.db, request, Some("stripe_unavailable")).await {
        Ok(()) => JobError::from(e),
        Err(db) => db.into(),
    }
}

async fn erased_audit(
    tx: &mut sqlx::PgConnection,
    ctx: &JobContext,
    r: &data_rights::DataRequest,
    outcome: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    audit::record(
        &mut *tx,
        "fleet",
        "account.erased",
        "data_request",
        Some(&r.id.to_string()),
        &json!({
            "user_id": r.user_id, "source": r.source, "requested_by": r.requested_by,
            "job_id": ctx.job_id, "outcome": outcome,
        }),
    )
    .await
}
