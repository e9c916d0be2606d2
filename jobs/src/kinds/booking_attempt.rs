//! `booking_attempt`: the booking saga (docs/saga.md) — hold the card, book the flight, capture.
//!
//! # Contract
//! - **At most one booking per campaign** (a unique index on live bookings), and **at most one
//!   attempt per (campaign, offer)**: a re-run, a replay or a duplicate job resumes the
//!   campaign's live booking, or finds the failed booking of the same offer and does nothing.
//! - **Each step records its outcome in the `bookings` row before the next step runs**, so a
//!   re-run after a crash resumes where the row says and never repeats a side effect. No
//!   database transaction is open during a provider call: lock → commit → call (with an
//!   idempotency key derived from the booking id) → record in a new short transaction.
//! - Stripe calls carry `booking:{booking_id}:pi`, `…:capture`, `…:cancel`; a retry replays
//!   Stripe's stored answer. Duffel has no idempotency key: `order_attempted_at` is committed
//!   before `POST /air/orders`, and once it is set every later run **reconciles first**
//!   (looks the order up by `metadata.booking_id` and offer id) and POSTs again only when the
//!   lookup finds nothing. After an ambiguous POST (timeout, 5xx) that the lookup cannot
//!   confirm, the attempt fails retryably and the next one reconciles again.
//! - Business refusals (offer gone, price above the limit, card declined, order refused) are
//!   saga outcomes, recorded on the booking and the campaign; the job completes. Provider
//!   outages retry with backoff (429s snooze until the reset); `Fatal` is kept for
//!   misconfiguration and bugs (an invalid request, a missing key or client).
//! - One saga per campaign at a time: a session advisory lock on a dedicated connection (no
//!   transaction) serialises concurrent duplicates; a busy lock snoozes the job. A killed
//!   worker's connection closes and Postgres releases the lock.
//!
//! # State transitions
//! The saga decides; [`crate::booking`] writes: every change of the bookings row (and its audit
//! entry) is a [`Change`] applied by [`booking::transition`], whose table lists them all.
//! Campaign moves go through [`crate::campaign`].
//!
//! A failed attempt pushes the campaign's `next_search_at` to now + [`RESEARCH_AFTER`] (one
//! hour: long enough not to hammer a route whose fares just moved, short enough to catch the
//! next good fare).

use crate::deps::HasDeps;
use crate::job::budgets;
use std::{collections::BTreeMap, time::Duration};

use crate::Db;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    audit,
    booking::{self, failure_code, Booking, BookingStatus, Change},
    campaign, notify, observe,
    pii::{Keyring, Plaintext},
    providers::{
        is_provider_id, money, AuthorizePayment, CreateOrder, FailureClass, IdentityDocument,
        Offer, Order, OrderLookup, OrderPassenger, PaymentIntentState, PaymentIntentSummary,
        StripeApiError,
    },
    Job, JobContext, JobError, KindDefaults, NewJob,
};

use super::refund_compensation::RefundCompensation;

/// How far a failed attempt pushes the campaign's next search.
pub const RESEARCH_AFTER: Duration = Duration::from_secs(3600);

/// How long a job snoozes when another saga of the same campaign holds the campaign lock.
const LOCK_BUSY_SNOOZE: Duration = Duration::from_secs(5);

/// Most steps one run takes (each step changes the row; this only guards against a bug).
const MAX_STEPS: usize = 16;

/// Failure codes that mean "the card needs the user": they put the campaign in
/// `action_required` and send the action-required email.
const DECLINE_CODES: &[&str] = &[
    "card_declined",
    "authentication_required",
    "payment_method_unusable",
];

/// Failure codes that mean "the fare is gone or moved" (Duffel's offer errors, or a price now
/// above the campaign's limit): the campaign searches again.
const FARE_GONE_CODES: &[&str] = &[
    "offer_no_longer_available",
    "offer_expired",
    "price_changed",
    "price_above_max",
];

/// Book the offer `offer_id` for campaign `campaign_id`. Ids only; enqueued through
/// [`BookingAttempt::request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingAttempt {
    /// The campaign.
    pub campaign_id: Uuid,
    /// The Duffel offer the search picked (`off_…`).
    pub offer_id: String,
}

impl BookingAttempt {
    /// The booking attempt of `offer_id` for `campaign_id`, with the key
    /// `booking_attempt:{campaign_id}`: one attempt per campaign is queued or running at a time,
    /// whoever asks (the search, an order webhook's follow-up).
    pub fn request(campaign_id: Uuid, offer_id: &str) -> Result<NewJob, JobError> {
        Ok(NewJob::of(&BookingAttempt {
            campaign_id,
            offer_id: offer_id.to_owned(),
        })
        .map_err(JobError::fatal)?
        .key(attempt_key(campaign_id)))
    }
}

/// The key of a campaign's booking attempt; also names its saga lock.
fn attempt_key(campaign_id: Uuid) -> String {
    format!("{}:{campaign_id}", BookingAttempt::KIND)
}

impl Job for BookingAttempt {
    const KIND: &'static str = "booking_attempt";

    /// Queue `bookings`; 30 attempts with backoff from 10 s doubling to a 2 h cap (about two
    /// days in all: a provider outage delays a booking, never drops it, and the 5–7 day card
    /// hold outlasts the budget); two minutes per attempt (Duffel's order call can be slow).
    /// No idempotency window: once a job is done the campaign's key is free for the next
    /// search's attempt (the saga itself dedupes on the bookings table).
    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "bookings".to_owned(),
            concurrency: None,
            max_attempts: 30,
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(2 * 3600),
            timeout: Duration::from_secs(120),
            idempotency_window: Duration::ZERO,
            priority: 0,
            // One saga per campaign at a time, fleet-wide: two attempts for one campaign would
            // race for its one booking (the row lock decides, but the loser's Stripe hold and
            // Duffel calls are wasted).
            key_concurrency: Some(1),
            limit_key: Some("campaign_id".to_owned()),
            budgets: vec![budgets::STRIPE.to_owned(), budgets::DUFFEL_ORDER.to_owned()],
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_offer_id(&self.offer_id) {
            return Err(JobError::fatal(
                "booking_attempt: offer_id is not an off_… id",
            ));
        }
        let Some(lock) = CampaignLock::try_acquire(&ctx.db, self.campaign_id).await? else {
            return Err(JobError::snooze(
                LOCK_BUSY_SNOOZE,
                format!(
                    "another booking attempt for campaign {} is running",
                    self.campaign_id
                ),
            ));
        };
        let result = saga(&ctx, &self).await;
        lock.release().await;
        result
    }
}

// ─── the saga ────────────────────────────────────────────────────────────────────────────────

async fn saga(ctx: &JobContext, args: &BookingAttempt) -> Result<(), JobError> {
    let booking_id = match claim(ctx, args).await? {
        Claim::Booking(id) => id,
        Claim::NotEligible(why) => {
            tracing::info!(campaign.id = %args.campaign_id, why, "booking attempt: nothing to do");
            return Err(JobError::Cancel(format!(
                "campaign {} not eligible: {why}",
                args.campaign_id
            )));
        }
    };
    for _ in 0..MAX_STEPS {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::retryable("booking attempt interrupted"));
        }
        let b = booking::load(&ctx.db, booking_id)
            .await?
            .ok_or_else(|| JobError::retryable(format!("booking {booking_id} vanished")))?;
        let step = next_step(&b);
        tracing::debug!(booking.id = %b.id, ?step, "booking saga step");
        match step {
            Step::CheckOffer => check_offer(ctx, &b).await?,
            Step::Authorize => authorize(ctx, &b).await?,
            Step::RefreshIntent => refresh_intent(ctx, &b).await?,
            Step::Order => place_order(ctx, &b, true).await?,
            Step::Reconcile => reconcile_or_order(ctx, &b).await?,
            Step::Capture => capture(ctx, &b).await?,
            Step::Compensate => compensate(ctx, &b).await?,
            Step::Finished => return finish(ctx, &b).await,
        }
    }
    Err(JobError::retryable(format!(
        "booking {booking_id}: saga made no progress in {MAX_STEPS} steps"
    )))
}

/// What the booking row says comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CheckOffer,
    Authorize,
    RefreshIntent,
    Order,
    Reconcile,
    Capture,
    Compensate,
    Finished,
}

fn next_step(b: &Booking) -> Step {
    use BookingStatus::{Authorized, Pending};
    match b.status {
        Pending if b.offer_checked_at.is_none() => Step::CheckOffer,
        Pending if b.stripe_payment_intent_id.is_none() => Step::Authorize,
        Pending => Step::RefreshIntent,
        Authorized if b.failure_code.is_some() => Step::Compensate,
        Authorized if b.duffel_order_id.is_some() => Step::Capture,
        Authorized if b.order_attempted_at.is_none() => Step::Order,
        Authorized => Step::Reconcile,
        _ => Step::Finished,
    }
}

enum Claim {
    Booking(Uuid),
    NotEligible(&'static str),
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    user_id: Uuid,
    status: String,
    consented: bool,
    unexpired: bool,
    max_price: String,
    currency: String,
    traveler_profile_id: Option<Uuid>,
    has_card: bool,
}

/// Step 1: lock the campaign; resume its booking, or check eligibility and create one.
async fn claim(ctx: &JobContext, args: &BookingAttempt) -> Result<Claim, JobError> {
    let keyring = ctx.deps()?.keyring_for(&ctx.db).await?;
    let mut tx = ctx.db.begin().await?;
    let campaign: Option<CampaignRow> = sqlx::query_as(
        "SELECT c.user_id, c.status, c.consent_at IS NOT NULL AS consented,
                c.expires_at > now() AS unexpired, c.max_price::text AS max_price,
                c.currency::text AS currency, c.traveler_profile_id,
                c.payment_method_id IS NOT NULL AS has_card
         FROM campaigns c WHERE c.id = $1 FOR UPDATE",
    )
    .bind(args.campaign_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(c) = campaign else {
        return Ok(Claim::NotEligible("campaign not found"));
    };
    // The live booking (re-runs and duplicates resume it), else this offer's failed attempt.
    let existing = booking::find_for_attempt(&mut tx, args.campaign_id, &args.offer_id).await?;
    if let Some(id) = existing {
        tx.commit().await?;
        return Ok(Claim::Booking(id));
    }
    if c.status != "active" {
        return Ok(Claim::NotEligible("campaign is not active"));
    }
    if !c.consented {
        return Ok(Claim::NotEligible("no consent to off-session charges"));
    }
    if !c.unexpired {
        return Ok(Claim::NotEligible("campaign expired"));
    }
    let problem = if !c.has_card {
        Some("card_missing")
    } else {
        match c.traveler_profile_id {
            None => Some("profile_missing"),
            // Completeness only: nothing sealed is opened (nor audited) to check it.
            Some(profile_id) => load_traveler(&mut tx, &keyring, profile_id, None)
                .await?
                .err(),
        }
    };
    if let Some(code) = problem {
        // Release the campaign's row first: the move takes it again.
        tx.commit().await?;
        let sentence = match code {
            "card_missing" => "it has no saved card to pay with",
            "profile_missing" => "it has no traveler profile",
            _ => {
                "the traveler profile is missing details the airline requires (date of birth, \
                 gender M or F, email and phone)"
            }
        };
        crate::campaign_health::require_action_for(
            &ctx.db,
            ctx.deps()?,
            args.campaign_id,
            c.user_id,
            (code, sentence),
            "booking_attempt",
        )
        .await?;
        return Ok(Claim::NotEligible(
            "campaign needs the user (card or profile)",
        ));
    }
    // total_amount is the ceiling (max_price) until step 2 records the offer's price.
    let id = booking::create(
        &mut tx,
        args.campaign_id,
        &args.offer_id,
        &c.max_price,
        &c.currency,
    )
    .await?;
    tx.commit().await?;
    Ok(Claim::Booking(id))
}

/// Step 2: re-read the offer; record the amount to charge, or fail the attempt.
async fn check_offer(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let offer = match ctx.flights()?.get_offer(&b.duffel_offer_id).await {
        Ok(offer) => offer,
        Err(e) if e.class == FailureClass::Rejected => {
            let code = e
                .code
                .as_deref()
                .filter(|c| *c != "not_found")
                .unwrap_or("offer_no_longer_available");
            return fail_before_hold(&ctx.db, b, &failure_code(code, "offer_no_longer_available"))
                .await;
        }
        Err(e) => return Err(e.into()),
    };
    let mut tx = ctx.db.begin().await?;
    // Lock the campaign so its max_price cannot move between the check and the write.
    let limit: Option<(String, String)> = sqlx::query_as(
        "SELECT max_price::text, currency::text FROM campaigns WHERE id = $1 FOR UPDATE",
    )
    .bind(b.campaign_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((max_price, currency)) = limit else {
        return Err(JobError::fatal(format!(
            "booking {}: in-flight booking without a campaign",
            b.id
        )));
    };
    let max_minor = money::decimal_to_minor(&max_price, &currency).map_err(JobError::fatal)?;
    let problem = if offer.currency != currency || offer.currency != b.currency {
        Some("currency_mismatch")
    } else if offer.total_amount_minor > max_minor {
        Some("price_above_max")
    } else if offer.total_amount_minor <= 0 {
        Some("offer_price_invalid")
    } else if offer.passenger_ids.len() != 1 {
        Some("offer_passenger_mismatch")
    } else {
        None
    };
    if let Some(code) = problem {
        drop(tx);
        return fail_before_hold(&ctx.db, b, code).await;
    }
    let amount = money::minor_to_decimal(offer.total_amount_minor, &offer.currency)
        .map_err(JobError::fatal)?;
    booking::transition(
        &mut tx,
        b,
        Change::OfferChecked {
            amount: &amount,
            amount_minor: offer.total_amount_minor,
            itinerary: &itinerary(&offer),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Step 3: the card hold (`booking:{id}:pi`).
async fn authorize(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    // Last look before the first side effect: the user may have paused, cancelled or removed
    // the card since step 1 (a resumed booking can be hours old).
    let campaign: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT c.status, pm.stripe_customer_id, pm.stripe_payment_method_id
         FROM campaigns c LEFT JOIN payment_methods pm ON pm.id = c.payment_method_id
         WHERE c.id = $1",
    )
    .bind(b.campaign_id)
    .fetch_optional(&ctx.db)
    .await?;
    let (customer_id, payment_method_id) = match campaign {
        Some((status, _, _)) if status != "active" => {
            return fail_before_hold(&ctx.db, b, "campaign_not_active").await
        }
        Some((_, Some(cus), Some(pm))) => (cus, pm),
        Some(_) => return fail_before_hold(&ctx.db, b, "card_missing").await,
        None => return fail_before_hold(&ctx.db, b, "campaign_not_active").await,
    };
    let req = AuthorizePayment {
        customer_id,
        payment_method_id,
        amount_minor: b.amount_minor()?,
        currency: b.currency.clone(),
        booking_id: b.id.to_string(),
        campaign_id: b.campaign_id.map(|c| c.to_string()).unwrap_or_default(),
    };
    let key = format!("booking:{}:pi", b.id);
    match ctx.deps()?.payments()?.authorize_payment(&req, &key).await {
        Ok(pi) => apply_intent(&ctx.db, b, &pi).await,
        Err(e) if e.is_decline() || e.class == FailureClass::Rejected => {
            let code = if e.requires_authentication() {
                "authentication_required"
            } else if e.is_decline() {
                "card_declined"
            } else {
                // Refused for another business reason (e.g. the card or customer is gone).
                "payment_method_unusable"
            };
            record_decline(&ctx.db, b, e.payment_intent_id.as_deref(), code, Some(&e)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Step 3 again, when a PaymentIntent was recorded without a hold (e.g. `processing`).
async fn refresh_intent(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let pi_id = b.stripe_payment_intent_id.as_deref().unwrap_or_default();
    let pi = ctx
        .deps()?
        .payments()?
        .retrieve_payment_intent(pi_id)
        .await?;
    apply_intent(&ctx.db, b, &pi).await
}

/// Records what a PaymentIntent says about the hold.
async fn apply_intent(db: &Db, b: &Booking, pi: &PaymentIntentSummary) -> Result<(), JobError> {
    if !is_provider_id(&pi.id, &["pi_"]) {
        return Err(JobError::fatal(
            "stripe returned a malformed PaymentIntent id",
        ));
    }
    let amount = b.amount_minor()?;
    match &pi.status {
        PaymentIntentState::RequiresCapture => {
            if pi.amount_capturable < amount || !pi.currency.eq_ignore_ascii_case(&b.currency) {
                return Err(JobError::fatal(format!(
                    "booking {}: PaymentIntent {} holds {} {} for a booking of {} {}",
                    b.id, pi.id, pi.amount_capturable, pi.currency, amount, b.currency
                )));
            }
            let mut tx = db.begin().await?;
            booking::transition(
                &mut tx,
                b,
                Change::Authorized {
                    payment_intent_id: &pi.id,
                    amount_minor: amount,
                },
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        PaymentIntentState::RequiresAction => {
            record_decline(db, b, Some(&pi.id), "authentication_required", None).await
        }
        PaymentIntentState::RequiresPaymentMethod => {
            record_decline(db, b, Some(&pi.id), "card_declined", None).await
        }
        PaymentIntentState::Canceled => {
            record_intent_id(db, b, &pi.id, "canceled").await?;
            fail_before_hold(db, b, "payment_intent_canceled").await
        }
        PaymentIntentState::Succeeded => Err(JobError::fatal(format!(
            "booking {}: PaymentIntent {} was captured before any order (manual capture expected)",
            b.id, pi.id
        ))),
        other => {
            let status = match other {
                PaymentIntentState::Processing => "processing",
                PaymentIntentState::RequiresConfirmation => "requires_confirmation",
                _ => "processing",
            };
            record_intent_id(db, b, &pi.id, status).await?;
            Err(JobError::retryable(format!(
                "booking {}: PaymentIntent {} is {status}, not requires_capture yet",
                b.id, pi.id
            )))
        }
    }
}

async fn record_intent_id(db: &Db, b: &Booking, pi_id: &str, status: &str) -> Result<(), JobError> {
    let change = Change::IntentRecorded {
        payment_intent_id: pi_id,
        status,
    };
    booking::transition_alone(db, b, change).await?;
    Ok(())
}

/// A declined card: booking `failed`, campaign `action_required` (the email follows in
/// [`finish`], so a crash between the two still sends it).
async fn record_decline(
    db: &Db,
    b: &Booking,
    pi_id: Option<&str>,
    code: &str,
    err: Option<&StripeApiError>,
) -> Result<(), JobError> {
    let pi_id = pi_id.filter(|id| is_provider_id(id, &["pi_"]));
    let mut tx = db.begin().await?;
    let change = Change::Declined {
        payment_intent_id: pi_id,
        code,
        stripe_code: err.and_then(|e| e.code.as_deref()),
        decline_code: err.and_then(|e| e.decline_code.as_deref()),
    };
    let moved = booking::transition(&mut tx, b, change).await?;
    if moved {
        if let Some(c) = b.campaign_id {
            campaign::require_action(&mut *tx, c).await?;
        }
    }
    tx.commit().await?;
    if moved {
        if let Some(o) = observe::money() {
            o.card_declined(observe::label(
                err.and_then(|e| e.decline_code.as_deref()).unwrap_or(code),
            ));
        }
        finished(b, "failed", code, u32::from(pi_id.is_some()));
    }
    Ok(())
}

/// A failure before any hold exists: booking `failed`, campaign rescheduled (or
/// `action_required` when the user must act).
async fn fail_before_hold(db: &Db, b: &Booking, code: &str) -> Result<(), JobError> {
    let mut tx = db.begin().await?;
    let moved = booking::transition(&mut tx, b, Change::FailedBeforeHold { code }).await?;
    if moved {
        apply_campaign_effect(&mut tx, b, code).await?;
    }
    tx.commit().await?;
    if moved {
        // A PaymentIntent may exist that never held anything (Stripe canceled it).
        let pis =
            u32::from(b.stripe_payment_intent_id.is_some() || code == "payment_intent_canceled");
        finished(b, "failed", code, pis);
    }
    Ok(())
}

/// What a failed attempt does to its campaign.
fn campaign_effect(code: &str) -> CampaignEffect {
    match code {
        "campaign_not_active" | "order_cancelled" | "capture_failed" => CampaignEffect::None,
        "card_missing"
        | "profile_missing"
        | "profile_incomplete"
        | "profile_gender_unsupported" => CampaignEffect::ActionRequired,
        c if DECLINE_CODES.contains(&c) => CampaignEffect::ActionRequired,
        _ => CampaignEffect::Reschedule,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CampaignEffect {
    None,
    Reschedule,
    ActionRequired,
}

async fn apply_campaign_effect(
    conn: &mut PgConnection,
    b: &Booking,
    code: &str,
) -> Result<(), sqlx::Error> {
    let Some(c) = b.campaign_id else {
        return Ok(()); // detached: the user was erased
    };
    match campaign_effect(code) {
        CampaignEffect::None => {}
        CampaignEffect::Reschedule => campaign::push_next_search(conn, c, RESEARCH_AFTER).await?,
        CampaignEffect::ActionRequired => {
            campaign::require_action(conn, c).await?;
        }
    }
    Ok(())
}

/// Step 4: create the Duffel order. `first`: no POST was ever attempted for this booking
/// (mark `order_attempted_at` before sending); otherwise reconciliation found no order.
async fn place_order(ctx: &JobContext, b: &Booking, first: bool) -> Result<(), JobError> {
    // Last look before the point of no return: a campaign paused or cancelled meanwhile
    // gets its hold voided instead of a ticket.
    let campaign: Option<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT status, traveler_profile_id FROM campaigns WHERE id = $1")
            .bind(b.campaign_id)
            .fetch_optional(&ctx.db)
            .await?;
    let profile_id = match campaign {
        Some((status, _)) if status != "active" => {
            return decide_failure(&ctx.db, b, "campaign_not_active").await
        }
        None => return decide_failure(&ctx.db, b, "campaign_not_active").await,
        Some((_, None)) => return decide_failure(&ctx.db, b, "profile_missing").await,
        Some((_, Some(profile_id))) => profile_id,
    };
    let passenger_id = b
        .flight_details
        .as_ref()
        .and_then(|d| d.get("passenger_ids"))
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            JobError::fatal(format!("booking {}: no offer passenger id recorded", b.id))
        })?;
    let traveler = {
        // KMS down: the attempt waits and retries here, before anything is sent to Duffel.
        let keyring = ctx.deps()?.keyring_for(&ctx.db).await?;
        let mut tx = ctx.db.begin().await?;
        let read = audit::PiiRead {
            purpose: "booking_order",
            job_id: Some(ctx.job_id),
            shown_on: match b.campaign_id {
                Some(c) => ("campaign", c),
                None => ("booking", b.id),
            },
        };
        let loaded = load_traveler(&mut tx, &keyring, profile_id, Some(read)).await?;
        tx.commit().await?;
        match loaded {
            Ok(t) => t,
            Err(code) => return decide_failure(&ctx.db, b, code).await,
        }
    };
    if first && !booking::transition_alone(&ctx.db, b, Change::OrderAttempted).await? {
        return Ok(()); // the row moved on; the loop re-reads it
    }
    let order = CreateOrder {
        offer_id: b.duffel_offer_id.clone(),
        passengers: vec![traveler.passenger(passenger_id)],
        amount_minor: b.amount_minor()?,
        currency: b.currency.clone(),
        metadata: BTreeMap::from([("booking_id".to_owned(), b.id.to_string())]),
    };
    let flights = ctx.flights()?;
    let result = flights.create_order(&order).await;
    drop(order); // the passenger's PII leaves memory here
    drop(traveler);
    match result {
        Ok(order) => record_order(&ctx.db, b, &order, false).await,
        Err(e) if e.order_may_exist() => match find_order(ctx, b).await? {
            Some(order) => record_order(&ctx.db, b, &order, true).await,
            None if ctx.attempt >= ctx.max_attempts => {
                // Out of attempts and Duffel confirms there is no order: give the money back
                // rather than leave a hold to expire.
                decide_failure(&ctx.db, b, "order_not_created").await
            }
            None => Err(JobError::retryable(format!(
                "{e}; no order found by reconciliation, the next attempt looks again"
            ))),
        },
        Err(e) if e.class == FailureClass::Rejected => {
            let code = failure_code(e.code.as_deref().unwrap_or(""), "order_rejected");
            decide_failure(&ctx.db, b, &code).await
        }
        Err(e) if e.class == FailureClass::Invalid => {
            // Our request or config is wrong: void the hold (nothing was booked), then let
            // the job die visibly for a fix and replay.
            let code = failure_code(e.code.as_deref().unwrap_or(""), "order_invalid");
            decide_failure(&ctx.db, b, &code).await?;
            let b = booking::load(&ctx.db, b.id)
                .await?
                .ok_or_else(|| JobError::retryable(format!("booking {} vanished", b.id)))?;
            compensate(ctx, &b).await?;
            Err(JobError::fatal(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Step 4 on a re-run: the order was attempted before, so look it up; POST only when Duffel
/// says it does not exist.
async fn reconcile_or_order(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    match find_order(ctx, b).await? {
        Some(order) => record_order(&ctx.db, b, &order, true).await,
        None => place_order(ctx, b, false).await,
    }
}

async fn find_order(ctx: &JobContext, b: &Booking) -> Result<Option<Order>, JobError> {
    let lookup = OrderLookup {
        booking_id: Some(b.id.to_string()),
        offer_id: Some(b.duffel_offer_id.clone()),
    };
    let mut found = ctx
        .flights()?
        .find_orders(&lookup)
        .await
        .map_err(JobError::from)?;
    // Prefer a live order; several would be a provider bug (one order per offer).
    found.sort_by_key(|o| o.cancelled_at.is_some());
    Ok(found.into_iter().next())
}

/// Step 5 (first half): the order exists.
async fn record_order(
    db: &Db,
    b: &Booking,
    order: &Order,
    reconciled: bool,
) -> Result<(), JobError> {
    if !is_provider_id(&order.id, &["ord_"]) {
        return Err(JobError::fatal("duffel returned a malformed order id"));
    }
    let pnr = order
        .booking_reference
        .as_deref()
        .map(str::trim)
        .filter(|p| (1..=16).contains(&p.len()));
    let change = Change::Ordered {
        order_id: &order.id,
        pnr,
        reconciled,
        order_amount_minor: order.total_amount_minor,
        order_currency: &order.currency,
    };
    booking::transition_alone(db, b, change).await?;
    if order.cancelled_at.is_some() {
        // Found, but already cancelled: nothing to capture for.
        return decide_failure(db, b, "order_cancelled").await;
    }
    Ok(())
}

/// Records that the attempt has failed while a hold exists; [`compensate`] voids it next.
/// Recorded first so a crash between the decision and the void never leads to a new order.
async fn decide_failure(db: &Db, b: &Booking, code: &str) -> Result<(), JobError> {
    booking::transition_alone(db, b, Change::FailureDecided { code }).await?;
    Ok(())
}

/// Step 6: void the hold (`booking:{id}:cancel`); booking `failed` (or `cancelled` if an
/// order exists), campaign per [`campaign_effect`].
async fn compensate(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let code = b
        .failure_code
        .clone()
        .unwrap_or_else(|| "order_failed".into());
    let pi_id = b
        .stripe_payment_intent_id
        .as_deref()
        .ok_or_else(|| JobError::fatal(format!("booking {}: hold without PaymentIntent", b.id)))?;
    let payments = ctx.deps()?.payments()?;
    let key = format!("booking:{}:cancel", b.id);
    match payments.cancel_payment_intent(pi_id, &key).await {
        Ok(pi) if pi.status == PaymentIntentState::Canceled => {}
        Ok(pi) => {
            return Err(JobError::retryable(format!(
                "booking {}: PaymentIntent {} not canceled after cancel ({:?})",
                b.id, pi.id, pi.status
            )))
        }
        Err(e) if e.is_unexpected_state() => {
            let pi = payments.retrieve_payment_intent(pi_id).await?;
            if pi.status != PaymentIntentState::Canceled {
                return Err(JobError::fatal(format!(
                    "booking {}: PaymentIntent {} is {:?}, cannot void the hold",
                    b.id, pi.id, pi.status
                )));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let mut tx = ctx.db.begin().await?;
    let moved = booking::transition(&mut tx, b, Change::HoldVoided { code: &code }).await?;
    if moved {
        apply_campaign_effect(&mut tx, b, &code).await?;
    }
    tx.commit().await?;
    if moved {
        // An order existed (and was not kept): `cancelled`, as the row says.
        let outcome = if b.duffel_order_id.is_some() {
            "cancelled"
        } else {
            "failed"
        };
        finished(b, outcome, &code, 1);
    }
    Ok(())
}

/// Step 5 (second half): capture the hold (`booking:{id}:capture`).
async fn capture(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let pi_id = b
        .stripe_payment_intent_id
        .as_deref()
        .ok_or_else(|| JobError::fatal(format!("booking {}: hold without PaymentIntent", b.id)))?;
    let payments = ctx.deps()?.payments()?;
    let key = format!("booking:{}:capture", b.id);
    let pi = match payments.capture_payment_intent(pi_id, &key).await {
        Ok(pi) => pi,
        Err(e) if e.is_unexpected_state() => payments.retrieve_payment_intent(pi_id).await?,
        Err(e) => return Err(e.into()),
    };
    match pi.status {
        PaymentIntentState::Succeeded => finalize_ticketed(ctx, b, &pi).await,
        PaymentIntentState::Canceled => {
            // The hold is gone (expired or voided) but the order exists: cancel the booking
            // and let the compensation cancel the order (nothing was captured).
            let mut tx = ctx.db.begin().await?;
            let moved = booking::transition(&mut tx, b, Change::CaptureFailed).await?;
            if moved {
                let refund = RefundCompensation::request(b.id, "capture_failed")?;
                ctx.enqueuer.enqueue_many(&mut tx, vec![refund]).await?;
            }
            tx.commit().await?;
            if moved {
                finished(b, "cancelled", "capture_failed", 1);
            }
            Ok(())
        }
        other => Err(JobError::retryable(format!(
            "booking {}: PaymentIntent {} is {other:?} after capture",
            b.id, pi.id
        ))),
    }
}

async fn finalize_ticketed(
    ctx: &JobContext,
    b: &Booking,
    pi: &PaymentIntentSummary,
) -> Result<(), JobError> {
    let mut tx = ctx.db.begin().await?;
    let change = Change::Ticketed {
        amount_received: pi.amount_received,
        currency: &pi.currency,
    };
    let moved = booking::transition(&mut tx, b, change).await?;
    if moved {
        if let Some(c) = b.campaign_id {
            campaign::mark_booked(&mut *tx, c).await?;
        }
    }
    tx.commit().await?;
    if moved {
        finished(b, "ticketed", "none", 1);
    }
    Ok(())
}

/// Tells the metrics (if a worker installed them) that `b` just ended `outcome`: called after
/// the commit of the transition that moved it, by that run only ([`crate::observe`]).
fn finished(b: &Booking, outcome: &'static str, reason: &str, payment_intents: u32) {
    if let Some(o) = observe::money() {
        let seconds = (chrono::Utc::now() - b.created_at)
            .num_milliseconds()
            .max(0) as f64
            / 1e3;
        o.booking_finished(outcome, reason, seconds, payment_intents);
    }
}

/// The saga is over: send what the outcome owes the user, exactly once.
async fn finish(ctx: &JobContext, b: &Booking) -> Result<(), JobError> {
    let (Some(user_id), Some(origin), Some(destination)) =
        (b.user_id, b.origin.as_deref(), b.destination.as_deref())
    else {
        return Ok(()); // detached (user erased): nobody to write to
    };
    match b.status {
        BookingStatus::Ticketed => {
            let departs = b
                .flight_details
                .as_ref()
                .and_then(|d| d.pointer("/slices/0/departing_at"))
                .and_then(Value::as_str)
                .unwrap_or("see your booking");
            let text = format!(
                "Your flight is booked.\n\nRoute: {origin} to {destination}\nDeparture: \
                 {departs}\nBooking reference: {}\nTotal charged: {} {}\n\nParker Flight",
                b.pnr.as_deref().unwrap_or("to follow"),
                b.total_amount,
                b.currency
            );
            notify::tell(
                &ctx.db,
                ctx.deps()?,
                user_id,
                "booking-confirmed",
                &format!("booking-confirmed/{}", b.id),
                &format!("Your flight {origin} to {destination} is booked"),
                &text,
            )
            .await?;
        }
        BookingStatus::Failed
            if b.failure_code
                .as_deref()
                .is_some_and(|c| DECLINE_CODES.contains(&c)) =>
        {
            let why = if b.failure_code.as_deref() == Some("authentication_required") {
                "your bank asked for authentication, which cannot happen while you are away"
            } else {
                "your bank declined the payment"
            };
            let text = format!(
                "We found a flight from {origin} to {destination} for {} {} that matches your \
                 campaign, but we could not hold the fare on your saved card: {why}.\n\nPlease \
                 update your card in the Parker Flight app; your campaign resumes once it is \
                 fixed.\n\nParker Flight",
                b.total_amount, b.currency
            );
            notify::tell(
                &ctx.db,
                ctx.deps()?,
                user_id,
                "action-required",
                &format!("action-required/{}", b.id),
                "Action needed: your card could not be charged",
                &text,
            )
            .await?;
        }
        // The hold was taken (an order is only attempted once the card is held) and voided:
        // the traveler may see the pending amount on their statement, so say it was released.
        BookingStatus::Failed if b.order_attempted_at.is_some() => {
            let text = format!(
                "We found a flight from {origin} to {destination} for {} {} and placed a \
                 temporary hold of that amount on your saved card, but the booking could not \
                 be completed with the airline. You were not charged: the hold has been \
                 released (your bank may take a few days to remove it from your \
                 statement).\n\nParker Flight",
                b.total_amount, b.currency
            );
            notify::tell(
                &ctx.db,
                ctx.deps()?,
                user_id,
                "hold-voided",
                &format!("hold-voided/{}", b.id),
                "Your card hold was released",
                &text,
            )
            .await?;
        }
        // The fare went while an earlier try of this attempt had failed (a provider outage,
        // or a crash): the traveler would never learn a fare was found. Tell them once.
        BookingStatus::Failed
            if ctx.attempt > 1
                && b.failure_code
                    .as_deref()
                    .is_some_and(|c| FARE_GONE_CODES.contains(&c)) =>
        {
            let text = format!(
                "We found a flight from {origin} to {destination} for {} {} that matches your \
                 campaign, but our booking partners were unavailable when we tried to book it, \
                 and the fare was gone by the time they were back. You were not charged. Your \
                 campaign keeps searching and we will book the next matching fare.\n\nParker \
                 Flight",
                b.total_amount, b.currency
            );
            notify::tell(
                &ctx.db,
                ctx.deps()?,
                user_id,
                "fare-unbookable",
                &format!("fare-unbookable/{}", b.id),
                "We found a fare but could not book it in time",
                &text,
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

// ─── rows, travelers, helpers ────────────────────────────────────────────────────────────────

/// The traveler as Duffel needs them. Holds PII in memory only: no `Debug`, never logged.
struct Traveler {
    given_name: String,
    family_name: String,
    born_on: NaiveDate,
    gender: &'static str,
    email: String,
    phone: String,
    passport: Option<(Plaintext, String, NaiveDate)>,
}

impl Traveler {
    fn passenger(&self, passenger_id: String) -> OrderPassenger {
        OrderPassenger {
            id: passenger_id,
            title: if self.gender == "m" { "mr" } else { "ms" }.to_owned(),
            gender: self.gender.to_owned(),
            given_name: self.given_name.clone(),
            family_name: self.family_name.clone(),
            born_on: self.born_on,
            email: self.email.clone(),
            phone_number: self.phone.clone(),
            identity_documents: self
                .passport
                .as_ref()
                .map(|(number, country, expiry)| IdentityDocument {
                    unique_identifier: number.expose().to_owned(),
                    issuing_country_code: country.clone(),
                    expires_on: *expiry,
                    kind: "passport".to_owned(),
                })
                .into_iter()
                .collect(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    full_name: String,
    date_of_birth: Option<NaiveDate>,
    gender: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    passport_number_enc: Option<Vec<u8>>,
    encryption_key_version: Option<i32>,
    passport_country: Option<String>,
    passport_expiry: Option<NaiveDate>,
}

/// Reads a traveler profile, and with `read` opens its passport number, audited as that read
/// (`pii.read`, on the same connection). Without `read` nothing sealed is opened: the
/// passport is left out. `Ok(Err(code))`: the profile cannot be booked (the user must complete
/// it); `Err`: the keyring cannot open it (fatal misconfiguration).
async fn load_traveler(
    conn: &mut PgConnection,
    keyring: &Keyring,
    profile_id: Uuid,
    read: Option<audit::PiiRead<'_>>,
) -> Result<Result<Traveler, &'static str>, JobError> {
    let row: Option<ProfileRow> = sqlx::query_as(
        "SELECT p.full_name, p.date_of_birth, p.gender::text AS gender,
                coalesce(p.email, u.email) AS email, p.phone, p.passport_number_enc,
                p.encryption_key_version, p.passport_country::text AS passport_country,
                p.passport_expiry
         FROM traveler_profiles p JOIN users u ON u.id = p.user_id WHERE p.id = $1",
    )
    .bind(profile_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(p) = row else {
        return Ok(Err("profile_missing"));
    };
    let gender = match p.gender.as_deref() {
        Some("M") => "m",
        Some("F") => "f",
        Some(_) => return Ok(Err("profile_gender_unsupported")),
        None => return Ok(Err("profile_incomplete")),
    };
    let (Some(born_on), Some(email), Some(phone)) = (p.date_of_birth, p.email, p.phone) else {
        return Ok(Err("profile_incomplete"));
    };
    let Some((given_name, family_name)) = split_name(&p.full_name) else {
        return Ok(Err("profile_incomplete"));
    };
    let passport = match (
        p.passport_number_enc,
        p.encryption_key_version,
        p.passport_country,
        p.passport_expiry,
    ) {
        (Some(bytes), Some(version), Some(country), Some(expiry)) => match read {
            Some(read) => {
                let number = keyring.decrypt(profile_id, version, &bytes)?;
                audit::pii_read(&mut *conn, profile_id, read).await?;
                Some((number, country, expiry))
            }
            None => None,
        },
        _ => None,
    };
    Ok(Ok(Traveler {
        given_name,
        family_name,
        born_on,
        gender,
        email,
        phone,
        passport,
    }))
}

/// "Given Names Family" → ("Given Names", "Family"); a single name serves as both.
fn split_name(full: &str) -> Option<(String, String)> {
    let full = full.trim();
    if full.is_empty() {
        return None;
    }
    Some(match full.rsplit_once(char::is_whitespace) {
        Some((given, family)) => (given.trim().to_owned(), family.trim().to_owned()),
        None => (full.to_owned(), full.to_owned()),
    })
}

/// The itinerary kept on the booking: ids, codes and times only (no traveler data).
fn itinerary(offer: &Offer) -> Value {
    json!({
        "offer_id": offer.id,
        "owner_iata": offer.owner_iata,
        "passenger_ids": offer.passenger_ids,
        "slices": booking::legs_json(&offer.slices),
    })
}

fn is_offer_id(id: &str) -> bool {
    is_provider_id(id, &["off_"])
}

/// One saga per campaign at a time: a session advisory lock held on a connection taken out
/// of the session pool (no transaction, so nothing is held open in the database's MVCC sense).
/// Closing the connection releases the lock, also when the process dies.
///
/// Behind a transaction pooler with no direct connection ([`Db::session_pool`] is `None`)
/// there is no session to hold it, and no lock is taken: the kind's fleet-wide key concurrency
/// of 1 still keeps two attempts of one campaign from being claimed at once, and the booking
/// row's guards keep the money safe. What is lost is the lock's hold on an attempt whose lease
/// expired while its handler still runs (a partitioned worker): a second attempt may then
/// spend provider calls the first already made (docs/operations.md, "Managed Postgres").
struct CampaignLock {
    conn: Option<PgConnection>,
}

impl CampaignLock {
    async fn try_acquire(db: &Db, campaign_id: Uuid) -> Result<Option<Self>, JobError> {
        use sqlx::Connection;
        let Some(sessions) = db.session_pool() else {
            return Ok(Some(Self { conn: None }));
        };
        let mut conn = sessions.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(attempt_key(campaign_id))
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Self { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn release(self) {
        use sqlx::Connection;
        // Closing the session releases its advisory locks.
        if let Some(conn) = self.conn {
            let _ = conn.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str) -> Booking {
        Booking {
            id: Uuid::nil(),
            campaign_id: Some(Uuid::nil()),
            user_id: None,
            duffel_offer_id: "off_1".into(),
            duffel_order_id: None,
            stripe_payment_intent_id: None,
            pnr: None,
            total_amount: "450.00".into(),
            currency: "USD".into(),
            status: BookingStatus::try_from(status.to_owned()).unwrap(),
            flight_details: None,
            offer_checked_at: None,
            order_attempted_at: None,
            ordered_at: None,
            captured_at: None,
            failure_code: None,
            origin: None,
            destination: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn args_are_ids_only_and_refuse_unknown_fields() {
        let id = Uuid::new_v4();
        let ok: BookingAttempt =
            serde_json::from_value(json!({"campaign_id": id, "offer_id": "off_1"})).unwrap();
        assert_eq!(ok.campaign_id, id);
        let bad = serde_json::from_value::<BookingAttempt>(
            json!({"campaign_id": id, "offer_id": "off_1", "email": "x@y.z"}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn one_attempt_key_per_campaign() {
        let id = Uuid::new_v4();
        let job = BookingAttempt::request(id, "off_1").unwrap();
        assert_eq!(job.kind, "booking_attempt");
        assert_eq!(
            job.opts.idempotency_key,
            Some(format!("booking_attempt:{id}"))
        );
    }

    #[test]
    fn the_row_decides_the_next_step() {
        let now = Some(chrono::Utc::now());
        let mut b = row("pending");
        assert_eq!(next_step(&b), Step::CheckOffer);
        b.offer_checked_at = now;
        assert_eq!(next_step(&b), Step::Authorize);
        b.stripe_payment_intent_id = Some("pi_1".into());
        assert_eq!(next_step(&b), Step::RefreshIntent);
        b.status = BookingStatus::Authorized;
        assert_eq!(next_step(&b), Step::Order);
        b.order_attempted_at = now;
        assert_eq!(
            next_step(&b),
            Step::Reconcile,
            "attempted: reconcile, never re-POST"
        );
        b.duffel_order_id = Some("ord_1".into());
        assert_eq!(next_step(&b), Step::Capture);
        b.failure_code = Some("order_cancelled".into());
        assert_eq!(next_step(&b), Step::Compensate);
        for s in ["ticketed", "failed", "cancelled", "refunded"] {
            assert_eq!(next_step(&row(s)), Step::Finished);
        }
    }

    #[test]
    fn effects_of_failures_on_the_campaign() {
        assert_eq!(
            campaign_effect("price_above_max"),
            CampaignEffect::Reschedule
        );
        assert_eq!(
            campaign_effect("insufficient_balance"),
            CampaignEffect::Reschedule
        );
        assert_eq!(
            campaign_effect("card_declined"),
            CampaignEffect::ActionRequired
        );
        assert_eq!(
            campaign_effect("card_missing"),
            CampaignEffect::ActionRequired
        );
        assert_eq!(campaign_effect("campaign_not_active"), CampaignEffect::None);
    }

    #[test]
    fn names_split_on_the_last_space() {
        assert_eq!(
            split_name(" Ada Maria Lovelace "),
            Some(("Ada Maria".into(), "Lovelace".into()))
        );
        assert_eq!(split_name("Cher"), Some(("Cher".into(), "Cher".into())));
        assert_eq!(split_name("  "), None);
    }

    #[test]
    fn provider_ids_are_checked_before_they_reach_the_schema() {
        assert!(is_offer_id("off_0000AbC_1"));
        assert!(!is_offer_id("off_"));
        assert!(!is_offer_id("ord_1"));
        assert!(!is_offer_id("off_1; drop"));
        assert!(is_provider_id("pi_123", &["pi_"]));
    }
}
