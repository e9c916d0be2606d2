//! The `bookings` row and its one owner: every write to the table is here, as a [`Change`]
//! applied by [`transition`], which writes the row and its `audit_log` entry in the same
//! statement sequence on the caller's connection (pass `&mut *tx`: both commit or neither).
//!
//! The saga that drives these changes is [`crate::kinds::booking_attempt`]; the refund that
//! follows a cancelled booking is [`crate::kinds::refund_compensation`]. docs/saga.md draws the
//! steps; the table below is the row's life.
//!
//! | change | from | to | audit action |
//! |---|---|---|---|
//! | [`create`] | ∅ | `pending` (`total_amount` = the campaign's max_price as the ceiling) | `booking.started` |
//! | [`Change::OfferChecked`] | `pending` | `pending` + `offer_checked_at`, the amount to charge | `booking.offer_checked` |
//! | [`Change::IntentRecorded`] | `pending` | `pending` + a PaymentIntent without a hold yet | — |
//! | [`Change::Authorized`] | `pending` | `authorized` (the hold exists) | `booking.authorized` |
//! | [`Change::Declined`] | `pending` | `failed` (card declined, authentication required) | `booking.payment_declined` |
//! | [`Change::FailedBeforeHold`] | `pending` (no hold) | `failed` | `booking.failed` |
//! | [`Change::OrderAttempted`] | `authorized` | + `order_attempted_at`, just before `POST /air/orders` | — |
//! | [`Change::Ordered`] | `authorized` | + `duffel_order_id`, `pnr` | `booking.ordered` |
//! | [`Change::FailureDecided`] | `authorized` | + `failure_code` (the hold is still to void) | — |
//! | [`Change::HoldVoided`] | `authorized` | `failed`, or `cancelled` when an order exists | `booking.failed` |
//! | [`Change::CaptureFailed`] | `authorized` | `cancelled` (the hold is gone, the order exists) | `booking.capture_failed` |
//! | [`Change::Ticketed`] | `authorized` + order | `ticketed` (captured) | `booking.ticketed` |
//! | [`Change::CancelledAfterCapture`] | `ticketed` | `cancelled` (the order went away after capture) | `booking.cancelled` |
//! | [`Change::Refunded`] | `ticketed`, `cancelled` (captured) | `refunded` | `booking.refunded` |
//!
//! Every change is guarded by the state it starts from, so a re-run, a duplicate or a race
//! applies it at most once: [`transition`] returns whether the row moved, and only a row that
//! moved gets its audit entry.

use std::fmt;

use crate::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{audit, providers::money, JobError};

/// The actor written on the booking's audit rows.
const ACTOR: &str = "fleet";

/// Mirror of `bookings.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    /// Created; no hold on the card yet.
    Pending,
    /// The card is held (PaymentIntent `requires_capture`).
    Authorized,
    /// Ordered and captured.
    Ticketed,
    /// The attempt failed and holds no money.
    Failed,
    /// An order existed and is (to be) cancelled; a captured one is refunded next.
    Cancelled,
    /// The captured money went back.
    Refunded,
}

impl BookingStatus {
    /// Every status, in life order.
    pub const ALL: [BookingStatus; 6] = [
        Self::Pending,
        Self::Authorized,
        Self::Ticketed,
        Self::Failed,
        Self::Cancelled,
        Self::Refunded,
    ];

    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Authorized => "authorized",
            Self::Ticketed => "ticketed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    /// Whether the saga still owns the booking (it may hold money and act on it).
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Pending | Self::Authorized)
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for BookingStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown booking status {s:?}"))
    }
}

/// A booking with what the saga and the refund need of its campaign.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Booking {
    /// `bookings.id`.
    pub id: Uuid,
    /// `None` once the campaign's user was erased (the booking is detached).
    pub campaign_id: Option<Uuid>,
    /// The campaign's user, while attached.
    pub user_id: Option<Uuid>,
    /// The offer the attempt books.
    pub duffel_offer_id: String,
    /// Set once the order exists.
    pub duffel_order_id: Option<String>,
    /// Set once a PaymentIntent exists.
    pub stripe_payment_intent_id: Option<String>,
    /// The airline's booking reference.
    pub pnr: Option<String>,
    /// Decimal string in `currency`: the ceiling until the offer is checked, then the charge.
    pub total_amount: String,
    /// ISO 4217, upper case.
    pub currency: String,
    /// Where the row is in its life.
    #[sqlx(try_from = "String")]
    pub status: BookingStatus,
    /// The itinerary (ids, codes and times only).
    pub flight_details: Option<Value>,
    /// When the offer was re-read and priced.
    pub offer_checked_at: Option<DateTime<Utc>>,
    /// When the order POST was first attempted (Duffel has no idempotency key).
    pub order_attempted_at: Option<DateTime<Utc>>,
    /// When the order was recorded.
    pub ordered_at: Option<DateTime<Utc>>,
    /// When the hold was captured.
    pub captured_at: Option<DateTime<Utc>>,
    /// Why the attempt failed (`^[a-z0-9_.]{1,100}$`).
    pub failure_code: Option<String>,
    /// The campaign's origin, while attached.
    pub origin: Option<String>,
    /// The campaign's destination, while attached.
    pub destination: Option<String>,
    /// When the attempt's first step created the row (the fare had just been found).
    pub created_at: DateTime<Utc>,
}

impl Booking {
    /// The amount held or charged, in minor units.
    pub fn amount_minor(&self) -> Result<i64, JobError> {
        money::decimal_to_minor(&self.total_amount, &self.currency).map_err(JobError::fatal)
    }
}

/// BookingLoad: one booking with its campaign's route and user.
pub async fn load<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as::<_, Booking>(
        "SELECT b.id, b.campaign_id, c.user_id, b.duffel_offer_id, b.duffel_order_id,
                b.stripe_payment_intent_id, b.pnr, b.total_amount::text AS total_amount,
                b.currency::text AS currency, b.status, b.flight_details, b.offer_checked_at,
                b.order_attempted_at, b.ordered_at, b.captured_at, b.failure_code,
                c.origin::text AS origin, c.destination::text AS destination, b.created_at
         FROM bookings b LEFT JOIN campaigns c ON c.id = b.campaign_id
         WHERE b.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The booking a (re-)run of the saga resumes for `campaign_id`: the live one, else the failed
/// attempt of this same offer (which it must not repeat).
pub async fn find_for_attempt(
    conn: &mut PgConnection,
    campaign_id: Uuid,
    offer_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM bookings
         WHERE campaign_id = $1 AND (status <> 'failed' OR duffel_offer_id = $2)
         ORDER BY (status <> 'failed') DESC, created_at DESC LIMIT 1",
    )
    .bind(campaign_id)
    .bind(offer_id)
    .fetch_optional(conn)
    .await
}

/// The booking of a Duffel order, if we booked it.
pub async fn find_by_order(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM bookings WHERE duffel_order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// BookingCreate: a `pending` booking of `offer_id` for the campaign, its `total_amount` the
/// campaign's `max_price` (the ceiling until the offer is priced), audited as
/// `booking.started`. The unique index on live bookings refuses a second one per campaign.
pub async fn create(
    conn: &mut PgConnection,
    campaign_id: Uuid,
    offer_id: &str,
    max_price: &str,
    currency: &str,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO bookings (id, campaign_id, duffel_offer_id, total_amount, currency)
         VALUES ($1, $2, $3, $4::numeric, $5)",
    )
    .bind(id)
    .bind(campaign_id)
    .bind(offer_id)
    .bind(max_price)
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    audit::record(
        conn,
        ACTOR,
        "booking.started",
        "booking",
        Some(&id.to_string()),
        &json!({"booking_id": id, "campaign_id": campaign_id, "offer_id": offer_id}),
    )
    .await?;
    Ok(id)
}

/// What happened to a booking; [`transition`] turns it into the row's update and audit entry.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// The offer was re-read within the campaign's limits: charge `amount_minor` (= the decimal
    /// `amount`) and keep `itinerary`.
    OfferChecked {
        /// Decimal string of the offer's total.
        amount: &'a str,
        /// The same total in minor units (for the audit entry).
        amount_minor: i64,
        /// The itinerary to keep (ids, codes, times only).
        itinerary: &'a Value,
    },
    /// A PaymentIntent exists but holds nothing yet (e.g. `processing`).
    IntentRecorded {
        /// `pi_…`.
        payment_intent_id: &'a str,
        /// Its Stripe status.
        status: &'a str,
    },
    /// The PaymentIntent holds the amount (`requires_capture`).
    Authorized {
        /// `pi_…`.
        payment_intent_id: &'a str,
        /// The amount held, minor units.
        amount_minor: i64,
    },
    /// The card was declined or needs the user.
    Declined {
        /// The PaymentIntent the decline created, if Stripe returned one.
        payment_intent_id: Option<&'a str>,
        /// `card_declined`, `authentication_required`, `payment_method_unusable`.
        code: &'a str,
        /// Stripe's error code, for the audit entry.
        stripe_code: Option<&'a str>,
        /// Stripe's decline code, for the audit entry.
        decline_code: Option<&'a str>,
    },
    /// The attempt failed before any hold existed.
    FailedBeforeHold {
        /// Why.
        code: &'a str,
    },
    /// The order POST is about to be sent (never twice: Duffel has no idempotency key).
    OrderAttempted,
    /// The order exists (answered, or found by reconciliation).
    Ordered {
        /// `ord_…`.
        order_id: &'a str,
        /// The airline's booking reference (1..=16 characters), when Duffel gave one.
        pnr: Option<&'a str>,
        /// Found by reconciliation rather than answered by the POST.
        reconciled: bool,
        /// The order's total, minor units (for the audit entry).
        order_amount_minor: i64,
        /// The order's currency (for the audit entry).
        order_currency: &'a str,
    },
    /// A definite failure was decided while a hold exists; voiding it comes next.
    FailureDecided {
        /// Why.
        code: &'a str,
    },
    /// The hold was voided: `failed`, or `cancelled` when an order exists.
    HoldVoided {
        /// The recorded failure code (or `order_failed`).
        code: &'a str,
    },
    /// The capture was impossible (the hold is gone) while the order exists.
    CaptureFailed,
    /// The hold was captured: the booking is ticketed.
    Ticketed {
        /// Minor units received.
        amount_received: i64,
        /// Currency of the capture.
        currency: &'a str,
    },
    /// A ticketed booking's order was cancelled or failed later: its refund is due.
    CancelledAfterCapture {
        /// Why, as a code.
        reason: &'a str,
    },
    /// The captured money went back.
    Refunded {
        /// `re_…`.
        refund_id: &'a str,
        /// Minor units refunded.
        amount_minor: i64,
        /// Currency of the refund.
        currency: &'a str,
        /// Why, as a code.
        reason: &'a str,
        /// Stripe's refund status.
        status: &'a str,
    },
}

/// [`transition`] in a transaction of its own: the row and its audit entry commit together.
pub async fn transition_alone(
    db: &Db,
    b: &Booking,
    change: Change<'_>,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let moved = transition(&mut tx, b, change).await?;
    tx.commit().await?;
    Ok(moved)
}

/// BookingTransition: applies `change` to booking `b` (as the caller loaded it) on `conn`, and
/// when the row moved writes its audit entry on the same connection. Returns whether the row
/// moved; `false` means the guard did not match (the change was applied before, or the row
/// moved on), and nothing was written.
pub async fn transition(
    conn: &mut PgConnection,
    b: &Booking,
    change: Change<'_>,
) -> Result<bool, sqlx::Error> {
    // Each change: its guarded update, and the audit entry written if the row moved.
    let (update, audit_entry) = match change {
        Change::OfferChecked {
            amount,
            amount_minor,
            itinerary,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET total_amount = $2::numeric, offer_checked_at = now(),
                        flight_details = $3, updated_at = now()
                 WHERE id = $1 AND status = 'pending' AND offer_checked_at IS NULL",
            )
            .bind(b.id)
            .bind(amount)
            .bind(itinerary);
            (
                q,
                Some((
                    "booking.offer_checked",
                    json!({"booking_id": b.id, "offer_id": b.duffel_offer_id,
                           "amount_minor": amount_minor, "currency": b.currency}),
                )),
            )
        }
        Change::IntentRecorded {
            payment_intent_id,
            status,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET stripe_payment_intent_id = $2, payment_intent_status = $3,
                        updated_at = now()
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(b.id)
            .bind(payment_intent_id)
            .bind(status);
            (q, None)
        }
        Change::Authorized {
            payment_intent_id,
            amount_minor,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET stripe_payment_intent_id = $2,
                        payment_intent_status = 'requires_capture', authorized_at = now(),
                        status = 'authorized', updated_at = now()
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(b.id)
            .bind(payment_intent_id);
            (
                q,
                Some((
                    "booking.authorized",
                    json!({"booking_id": b.id, "payment_intent": payment_intent_id,
                           "amount_minor": amount_minor, "currency": b.currency}),
                )),
            )
        }
        Change::Declined {
            payment_intent_id,
            code,
            stripe_code,
            decline_code,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET status = 'failed', failure_code = $2,
                        stripe_payment_intent_id = coalesce($3, stripe_payment_intent_id),
                        payment_intent_status = CASE WHEN coalesce($3, stripe_payment_intent_id) IS NULL
                                                     THEN payment_intent_status
                                                     ELSE 'requires_payment_method' END,
                        updated_at = now()
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(b.id)
            .bind(code)
            .bind(payment_intent_id);
            (
                q,
                Some((
                    "booking.payment_declined",
                    json!({"booking_id": b.id, "campaign_id": b.campaign_id,
                           "payment_intent": payment_intent_id, "failure_code": code,
                           "stripe_code": stripe_code, "decline_code": decline_code}),
                )),
            )
        }
        Change::FailedBeforeHold { code } => {
            let q = sqlx::query(
                "UPDATE bookings SET status = 'failed', failure_code = $2, updated_at = now()
                 WHERE id = $1 AND status = 'pending' AND authorized_at IS NULL",
            )
            .bind(b.id)
            .bind(code);
            (
                q,
                Some((
                    "booking.failed",
                    json!({"booking_id": b.id, "campaign_id": b.campaign_id,
                           "failure_code": code, "hold": false}),
                )),
            )
        }
        Change::OrderAttempted => {
            let q = sqlx::query(
                "UPDATE bookings SET order_attempted_at = now(), updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND order_attempted_at IS NULL
                   AND failure_code IS NULL",
            )
            .bind(b.id);
            (q, None)
        }
        Change::Ordered {
            order_id,
            pnr,
            reconciled,
            order_amount_minor,
            order_currency,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET duffel_order_id = $2, pnr = $3, ordered_at = now(),
                        flight_details = coalesce(flight_details, '{}'::jsonb)
                                         || jsonb_build_object('order_id', $2::text),
                        updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND duffel_order_id IS NULL",
            )
            .bind(b.id)
            .bind(order_id)
            .bind(pnr);
            (
                q,
                Some((
                    "booking.ordered",
                    json!({"booking_id": b.id, "order_id": order_id,
                           "offer_id": b.duffel_offer_id, "reconciled": reconciled,
                           "order_amount_minor": order_amount_minor,
                           "currency": order_currency}),
                )),
            )
        }
        Change::FailureDecided { code } => {
            let q = sqlx::query(
                "UPDATE bookings SET failure_code = $2, updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND failure_code IS NULL",
            )
            .bind(b.id)
            .bind(code);
            (q, None)
        }
        Change::HoldVoided { code } => {
            let status = if b.ordered_at.is_some() {
                "cancelled"
            } else {
                "failed"
            };
            let q = sqlx::query(
                "UPDATE bookings SET status = $2, canceled_at = now(),
                        payment_intent_status = 'canceled', updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND captured_at IS NULL",
            )
            .bind(b.id)
            .bind(status);
            (
                q,
                Some((
                    "booking.failed",
                    json!({"booking_id": b.id, "campaign_id": b.campaign_id,
                           "failure_code": code,
                           "payment_intent": b.stripe_payment_intent_id,
                           "hold": "voided", "status": status}),
                )),
            )
        }
        Change::CaptureFailed => {
            let q = sqlx::query(
                "UPDATE bookings SET status = 'cancelled', canceled_at = now(),
                        payment_intent_status = 'canceled', failure_code = 'capture_failed',
                        updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND captured_at IS NULL",
            )
            .bind(b.id);
            (
                q,
                Some((
                    "booking.capture_failed",
                    json!({"booking_id": b.id, "payment_intent": b.stripe_payment_intent_id,
                           "order_id": b.duffel_order_id}),
                )),
            )
        }
        Change::Ticketed {
            amount_received,
            currency,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET captured_at = now(), payment_intent_status = 'succeeded',
                        status = 'ticketed', updated_at = now()
                 WHERE id = $1 AND status = 'authorized' AND ordered_at IS NOT NULL",
            )
            .bind(b.id);
            (
                q,
                Some((
                    "booking.ticketed",
                    json!({"booking_id": b.id, "campaign_id": b.campaign_id,
                           "order_id": b.duffel_order_id,
                           "payment_intent": b.stripe_payment_intent_id,
                           "amount_minor": amount_received, "currency": currency}),
                )),
            )
        }
        Change::CancelledAfterCapture { reason } => {
            let q = sqlx::query(
                "UPDATE bookings SET status = 'cancelled', failure_code = $2, updated_at = now()
                 WHERE id = $1 AND status = 'ticketed' AND captured_at IS NOT NULL",
            )
            .bind(b.id)
            .bind(reason);
            (
                q,
                Some((
                    "booking.cancelled",
                    json!({"booking_id": b.id, "reason": reason, "refund": "enqueued"}),
                )),
            )
        }
        Change::Refunded {
            refund_id,
            amount_minor,
            currency,
            reason,
            status,
        } => {
            let q = sqlx::query(
                "UPDATE bookings SET status = 'refunded', updated_at = now()
                 WHERE id = $1 AND captured_at IS NOT NULL AND status IN ('ticketed', 'cancelled')",
            )
            .bind(b.id);
            (
                q,
                Some((
                    "booking.refunded",
                    json!({"booking_id": b.id, "payment_intent": b.stripe_payment_intent_id,
                           "refund": refund_id, "amount_minor": amount_minor,
                           "currency": currency, "reason": reason, "status": status}),
                )),
            )
        }
    };
    let moved = update.execute(&mut *conn).await?.rows_affected() == 1;
    if let (true, Some((action, metadata))) = (moved, audit_entry) {
        audit::record(
            conn,
            ACTOR,
            action,
            "booking",
            Some(&b.id.to_string()),
            &metadata,
        )
        .await?;
    }
    Ok(moved)
}

/// Locks booking `id`'s row until the caller's transaction ends: concurrent refunds of one
/// booking serialise here.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM bookings WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records what Stripe now says of a PaymentIntent (a webhook follow-up re-read it) on the
/// booking that holds it, without moving the booking: its status is the saga's to decide.
/// Returns the booking, if one records this PaymentIntent.
pub async fn observe_payment_intent(
    conn: &mut PgConnection,
    payment_intent_id: &str,
    status: Option<&str>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE bookings SET payment_intent_status = COALESCE($2, payment_intent_status), updated_at = now()
         WHERE stripe_payment_intent_id = $1 RETURNING id",
    )
    .bind(payment_intent_id)
    .bind(status)
    .fetch_optional(conn)
    .await
}

/// Money that still ties a traveler to their bookings, which an account erasure waits for
/// (deleting the account would lose who to give it back to, or detach a booking mid-saga).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MoneyStillMoving {
    /// Sagas not finished: `pending`, `authorized` (a card hold exists).
    pub bookings_in_flight: i64,
    /// Bookings whose money is owed back or on its way back: cancelled after capture with no
    /// refund yet, a refund `pending`/`requires_action`, or a failed refund nothing made good.
    pub refunds_unsettled: i64,
}

impl MoneyStillMoving {
    /// Why an erasure must wait, as a code (`booking_in_flight`, `refund_unsettled`), or `None`.
    pub fn waiting_on(&self) -> Option<&'static str> {
        if self.bookings_in_flight > 0 {
            Some("booking_in_flight")
        } else if self.refunds_unsettled > 0 {
            Some("refund_unsettled")
        } else {
            None
        }
    }
}

/// BookingMoneyStillMovingOfUser: [`MoneyStillMoving`] over the bookings of user `user_id`'s
/// campaigns.
pub async fn money_still_moving_of_user(
    conn: impl sqlx::PgExecutor<'_>,
    user_id: Uuid,
) -> Result<MoneyStillMoving, sqlx::Error> {
    let (bookings_in_flight, refunds_unsettled): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE b.status IN ('pending', 'authorized')),
                count(*) FILTER (WHERE
                    (b.status = 'cancelled' AND b.captured_at IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = b.id
                                     AND r.status = 'succeeded'))
                    OR EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = b.id
                               AND r.status IN ('pending', 'requires_action'))
                    OR (EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = b.id
                                AND r.status = 'failed')
                        AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = b.id
                                        AND r.status = 'succeeded')))
         FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
         WHERE c.user_id = $1",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(MoneyStillMoving {
        bookings_in_flight,
        refunds_unsettled,
    })
}

/// Whose personal data an erasure removes: the traveler profiles the retention purge erases,
/// or a whole account (the account erasure).
#[derive(Debug, Clone, Copy)]
pub enum ErasureOf<'a> {
    /// These profiles' campaigns.
    Profiles(&'a [Uuid]),
    /// Every campaign of this user, whatever its profile.
    User(Uuid),
}

impl ErasureOf<'_> {
    /// `($1, $2)` of the erasure statements' `c.traveler_profile_id = ANY($1) OR c.user_id = $2`.
    pub(crate) fn binds(&self) -> (Vec<Uuid>, Option<Uuid>) {
        match self {
            Self::Profiles(ids) => (ids.to_vec(), None),
            Self::User(id) => (Vec::new(), Some(*id)),
        }
    }
}

/// For a GDPR erasure: removes the personal data a booking keeps (`pnr`, `flight_details`)
/// from every booking of `whose` campaigns; the accounting record stays (and is detached when
/// an account's campaigns go). Returns how many bookings were scrubbed.
pub async fn scrub_for_erasure(
    conn: &mut PgConnection,
    whose: ErasureOf<'_>,
) -> Result<u64, sqlx::Error> {
    let (profiles, user) = whose.binds();
    let r = sqlx::query(
        "UPDATE bookings b SET pnr = NULL, flight_details = NULL, updated_at = now()
         FROM campaigns c
         WHERE c.id = b.campaign_id
           AND (c.traveler_profile_id = ANY($1) OR c.user_id = $2)
           AND (b.pnr IS NOT NULL OR b.flight_details IS NOT NULL)",
    )
    .bind(&profiles)
    .bind(user)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Legs as `bookings.flight_details` keeps them (and `airline_changes` before and after):
/// airport codes, local times to the second, segment counts.
pub fn legs_json(slices: &[crate::providers::OfferSlice]) -> Value {
    Value::Array(
        slices
            .iter()
            .map(|s| {
                json!({
                    "origin": s.origin,
                    "destination": s.destination,
                    "departing_at": s.departing_at.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()),
                    "arriving_at": s.arriving_at.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()),
                    "segments": s.segments,
                })
            })
            .collect(),
    )
}

/// BookingItineraryRefresh: the airline moved legs of booking `id`'s order (change
/// `change_id`): each leg of `removed` found in `flight_details` (same origin, destination and
/// departure) is replaced by the leg of `added` at the same position, audited as
/// `booking.itinerary_changed` (ids only). Returns whether the itinerary changed; a leg not
/// found (already replaced: a re-run) is left alone.
pub async fn refresh_itinerary(
    conn: &mut PgConnection,
    id: Uuid,
    change_id: &str,
    removed: &Value,
    added: &Value,
) -> Result<bool, sqlx::Error> {
    let details: Option<Option<Value>> =
        sqlx::query_scalar("SELECT flight_details FROM bookings WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(Some(mut details)) = details else {
        return Ok(false);
    };
    let (Some(removed), Some(added)) = (removed.as_array(), added.as_array()) else {
        return Ok(false);
    };
    let same = |a: &Value, b: &Value| {
        ["origin", "destination", "departing_at"]
            .iter()
            .all(|k| a.get(*k) == b.get(*k))
    };
    let mut replaced = 0;
    if let Some(slices) = details.get_mut("slices").and_then(Value::as_array_mut) {
        for (old, new) in removed.iter().zip(added) {
            if let Some(leg) = slices.iter_mut().find(|l| same(l, old)) {
                *leg = new.clone();
                replaced += 1;
            }
        }
    }
    if replaced == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE bookings SET flight_details = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(&details)
        .execute(&mut *conn)
        .await?;
    audit::record(
        conn,
        ACTOR,
        "booking.itinerary_changed",
        "booking",
        Some(&id.to_string()),
        &json!({"booking_id": id, "airline_change_id": change_id, "legs_replaced": replaced}),
    )
    .await?;
    Ok(true)
}

/// A provider code as a `failure_code` (`^[a-z0-9_.]{1,100}$`, the schema's check), or
/// `fallback` when nothing is left of it.
pub fn failure_code(code: &str, fallback: &str) -> String {
    let cleaned: String = code
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if cleaned.is_empty() {
        fallback.to_owned()
    } else {
        cleaned
    }
}

/// Whether `s` already is a failure or reason code (`^[a-z0-9_.]{1,100}$`).
pub fn is_failure_code(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Bookings per status (for the demo's progress and operators).
pub async fn count_by_status(
    db: &Db,
) -> Result<std::collections::BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM bookings GROUP BY status")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The `limit` oldest ticketed bookings' ids.
pub async fn ticketed(db: &Db, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM bookings WHERE status = 'ticketed' ORDER BY id LIMIT $1")
        .bind(limit)
        .fetch_all(db)
        .await
}

/// (campaign id, captured_at) of every ticketed booking: `captured_at` is written by the
/// same statement that makes the booking `ticketed` ([`Change::Ticketed`]).
pub async fn ticketed_at_by_campaign(db: &Db) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT campaign_id, captured_at FROM bookings
         WHERE status = 'ticketed' AND campaign_id IS NOT NULL",
    )
    .fetch_all(db)
    .await
}

/// Failed or cancelled bookings per failure code, most frequent first (why bookings failed).
pub async fn failures_by_code(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(failure_code, 'unknown'), count(*) FROM bookings
         WHERE status IN ('failed', 'cancelled') GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_fit_the_schema() {
        assert_eq!(failure_code("price_changed", "x"), "price_changed");
        assert_eq!(failure_code("Weird-Code!", "x"), "weird_code_");
        assert_eq!(failure_code("", "order_rejected"), "order_rejected");
        assert_eq!(failure_code(&"a".repeat(300), "x").len(), 100);
    }

    #[test]
    fn statuses_round_trip_their_database_spelling() {
        for st in BookingStatus::ALL {
            assert_eq!(BookingStatus::try_from(st.as_str().to_owned()), Ok(st));
        }
        assert!(BookingStatus::try_from("lost".to_owned()).is_err());
    }
}

// ─── the operator's view ─────────────────────────────────────────────────────────────────────

/// A booking as operators see it (`fleet booking show`, the console's timeline). No personal
/// data: no names, emails or passport data, and the PNR is only said to exist.
#[derive(Debug, Clone, Serialize)]
pub struct BookingView {
    /// `bookings.id`.
    pub id: Uuid,
    /// Its campaign (`None` once the user was erased).
    pub campaign_id: Option<Uuid>,
    /// The campaign's origin, IATA code (`None` once erased).
    pub origin: Option<String>,
    /// The campaign's destination.
    pub destination: Option<String>,
    /// The campaign's departure window.
    pub departs_from: Option<chrono::NaiveDate>,
    /// Its end.
    pub departs_until: Option<chrono::NaiveDate>,
    /// Where the row is in its life.
    pub status: String,
    /// Decimal amount held or charged.
    pub total_amount: String,
    /// ISO 4217.
    pub currency: String,
    /// The Duffel offer (`off_…`).
    pub offer_id: String,
    /// The Duffel order (`ord_…`), once it exists.
    pub order_id: Option<String>,
    /// The Stripe PaymentIntent (`pi_…`), once it exists.
    pub payment_intent_id: Option<String>,
    /// Stripe's last known status of it.
    pub payment_intent_status: Option<String>,
    /// Why the attempt failed, as a code.
    pub failure_code: Option<String>,
    /// Whether the airline's booking reference is recorded (it is not shown).
    pub pnr_recorded: bool,
    /// The saga's steps that happened, in order, with their times.
    pub steps: Vec<BookingStep>,
    /// Refunds of the booking.
    pub refunds: Vec<RefundView>,
    /// Emails the booking caused (kinds and dedupe keys; never an address).
    pub emails: Vec<EmailView>,
    /// Audit entries of the booking and its campaign, oldest first.
    pub audit: Vec<crate::audit::AuditEntry>,
    /// Airline-initiated changes of its order, oldest first (legs: codes and local times).
    pub airline_changes: Vec<crate::airline_change::ChangeRow>,
}

impl BookingView {
    /// A refund of it failed and none made it good since: the money is owed to the traveler
    /// (until an operator records its payout).
    pub fn refund_owed(&self) -> bool {
        self.refunds.iter().any(|f| f.status == "failed")
            && !self.refunds.iter().any(|f| refund_makes_good(&f.status))
    }
}

/// One step of the saga and when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct BookingStep {
    /// `started`, `offer_checked`, `authorized`, `order_attempted`, `ordered`, `captured`,
    /// `hold_voided`.
    pub step: &'static str,
    /// When.
    pub at: DateTime<Utc>,
}

/// A refund of a booking.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RefundView {
    /// `refunds.id`.
    pub id: Uuid,
    /// Stripe's id (`re_…`), once Stripe answered.
    pub stripe_refund_id: Option<String>,
    /// Decimal amount.
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    /// Why, as a code.
    pub reason: String,
    /// Stripe's refund status.
    pub status: String,
    /// Why it failed (Stripe's code), when it did.
    pub failure_reason: Option<String>,
    /// When the intent was recorded.
    pub created_at: DateTime<Utc>,
    /// When its status last changed (a failure is recorded at this time).
    pub updated_at: DateTime<Utc>,
}

/// An email the outbox recorded for a booking.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EmailView {
    /// What it is about.
    pub kind: String,
    /// Its dedupe key (ids only).
    pub dedupe_key: String,
    /// When it went out (`None`: recorded, not yet sent).
    pub sent_at: Option<DateTime<Utc>>,
    /// `email` or `sms`.
    pub channel: String,
    /// Why the provider refused it for good (`twilio_21211`, `no_phone`), if it did.
    pub failure_code: Option<String>,
}

/// Which jobs belong to a booking, in the domain's words: a kind and its key, or a kind and
/// args the job's contain. The engine turns each into a queue filter.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSelector {
    /// The job kind.
    pub kind: &'static str,
    /// The idempotency key, if the kind's jobs of this booking share one.
    pub key: Option<String>,
    /// Args the jobs contain.
    pub args: Option<Value>,
}

/// The bookings row as the view reads it.
#[derive(sqlx::FromRow)]
struct ViewRow {
    id: Uuid,
    campaign_id: Option<Uuid>,
    status: String,
    total_amount: String,
    currency: String,
    duffel_offer_id: String,
    duffel_order_id: Option<String>,
    stripe_payment_intent_id: Option<String>,
    payment_intent_status: Option<String>,
    failure_code: Option<String>,
    pnr_recorded: bool,
    created_at: DateTime<Utc>,
    offer_checked_at: Option<DateTime<Utc>>,
    authorized_at: Option<DateTime<Utc>>,
    order_attempted_at: Option<DateTime<Utc>>,
    ordered_at: Option<DateTime<Utc>>,
    captured_at: Option<DateTime<Utc>>,
    canceled_at: Option<DateTime<Utc>>,
    origin: Option<String>,
    destination: Option<String>,
    departs_from: Option<chrono::NaiveDate>,
    departs_until: Option<chrono::NaiveDate>,
}

/// One booking in the operators' list: what it is and where it stands, no personal data.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BookingListRow {
    /// `bookings.id`.
    pub id: Uuid,
    /// Where the row is in its life.
    pub status: String,
    /// Its campaign (`None` once the user was erased).
    pub campaign_id: Option<Uuid>,
    /// The campaign's route, IATA codes (`None` once erased).
    pub origin: Option<String>,
    /// The campaign's destination.
    pub destination: Option<String>,
    /// The campaign's departure window.
    pub departs_from: Option<chrono::NaiveDate>,
    /// Its end.
    pub departs_until: Option<chrono::NaiveDate>,
    /// Decimal amount held or charged.
    pub total_amount: String,
    /// ISO 4217.
    pub currency: String,
    /// When the attempt began.
    pub created_at: DateTime<Utc>,
    /// Why it failed, as a code.
    pub failure_code: Option<String>,
}

/// BookingListRecent: bookings newest first (`created_at`, then id), of `status` if given,
/// strictly older than `before` (the last row of the previous page), at most `limit`.
pub async fn list_recent(
    db: &Db,
    status: Option<BookingStatus>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<BookingListRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.id, b.status, b.campaign_id, c.origin::text AS origin,
                c.destination::text AS destination, c.departure_date_start AS departs_from,
                c.departure_date_end AS departs_until, b.total_amount::text AS total_amount,
                b.currency::text AS currency, b.created_at, b.failure_code
         FROM bookings b LEFT JOIN campaigns c ON c.id = b.campaign_id
         WHERE ($1::text IS NULL OR b.status = $1)
           AND ($2::timestamptz IS NULL OR (b.created_at, b.id) < ($2, $3))
         ORDER BY b.created_at DESC, b.id DESC
         LIMIT $4",
    )
    .bind(status.map(BookingStatus::as_str))
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Stripe's refund statuses: `refunds.status` holds only these.
pub const REFUND_STATUSES: [&str; 5] = [
    "pending",
    "requires_action",
    "succeeded",
    "failed",
    "canceled",
];

/// Whether a refund in `status` gives the money back: it did (`succeeded`, which a recorded
/// payout also is) or is on its way (`pending`, `requires_action`).
pub fn refund_makes_good(status: &str) -> bool {
    matches!(status, "succeeded" | "pending" | "requires_action")
}

/// Money a booking's saga still moves: a card hold, or a captured payment owed back.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct MoneyAtStakeRow {
    /// `bookings.id`.
    pub id: Uuid,
    /// `authorized` (the card is held) or `cancelled` (captured, refund owed).
    pub status: String,
    /// Its campaign (`None` once the user was erased).
    pub campaign_id: Option<Uuid>,
    /// The offer the saga books.
    pub duffel_offer_id: String,
    /// Decimal amount held or owed.
    pub total_amount: String,
    /// ISO 4217.
    pub currency: String,
    /// Since when: the hold's time, or the cancellation's.
    pub since: Option<DateTime<Utc>>,
}

/// BookingListMoneyAtStake: bookings whose saga still holds or owes money, oldest first, at
/// most `limit`: `authorized` (a card hold exists) and `cancelled` after a capture (the refund
/// is still to be made).
pub async fn list_money_at_stake(db: &Db, limit: i64) -> Result<Vec<MoneyAtStakeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, campaign_id, duffel_offer_id, total_amount::text AS total_amount,
                currency::text AS currency,
                CASE WHEN status = 'authorized' THEN authorized_at ELSE canceled_at END AS since
         FROM bookings
         WHERE status = 'authorized' OR (status = 'cancelled' AND captured_at IS NOT NULL)
         ORDER BY created_at, id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// BookingView: the booking `id` for operators, or `None` if there is none.
pub async fn view(db: &Db, id: Uuid) -> Result<Option<BookingView>, sqlx::Error> {
    let row: Option<ViewRow> = sqlx::query_as(
        "SELECT b.id, b.campaign_id, b.status, b.total_amount::text AS total_amount,
                b.currency::text AS currency, b.duffel_offer_id, b.duffel_order_id,
                b.stripe_payment_intent_id, b.payment_intent_status, b.failure_code,
                b.pnr IS NOT NULL AS pnr_recorded, b.created_at, b.offer_checked_at,
                b.authorized_at, b.order_attempted_at, b.ordered_at, b.captured_at, b.canceled_at,
                c.origin::text AS origin, c.destination::text AS destination,
                c.departure_date_start AS departs_from, c.departure_date_end AS departs_until
         FROM bookings b LEFT JOIN campaigns c ON c.id = b.campaign_id WHERE b.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let mut steps: Vec<BookingStep> = [
        ("started", Some(r.created_at)),
        ("offer_checked", r.offer_checked_at),
        ("authorized", r.authorized_at),
        ("order_attempted", r.order_attempted_at),
        ("ordered", r.ordered_at),
        ("captured", r.captured_at),
        ("hold_voided", r.canceled_at),
    ]
    .into_iter()
    .filter_map(|(step, at)| at.map(|at| BookingStep { step, at }))
    .collect();
    steps.sort_by_key(|s| s.at);
    let refunds: Vec<RefundView> = sqlx::query_as(
        "SELECT id, stripe_refund_id, amount::text AS amount, currency::text AS currency, reason,
                status, failure_reason, created_at, updated_at
         FROM refunds WHERE booking_id = $1 ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let emails: Vec<EmailView> = sqlx::query_as(
        "SELECT kind, dedupe_key, sent_at, channel, failure_code FROM notifications,
                LATERAL (SELECT CASE WHEN channel = 'sms' THEN left(dedupe_key, -4)
                                     ELSE dedupe_key END AS k) m
         WHERE m.k IN ('booking-confirmed/' || $1, 'action-required/' || $1, 'refund/' || $1, 'hold-voided/' || $1, 'fare-unbookable/' || $1)
            OR m.k LIKE 'order-change/' || $1 || '/%'
            OR m.k IN (SELECT 'refund-failed/' || r.id FROM refunds r WHERE r.booking_id = $1::uuid)
            OR m.k IN (SELECT 'airline-change/' || a.id FROM airline_changes a WHERE a.booking_id = $1::uuid)
            OR ($2::uuid IS NOT NULL AND m.k LIKE 'campaign-action-required/' || $2 || '/%')
         ORDER BY created_at",
    )
    .bind(id.to_string())
    .bind(r.campaign_id.map(|c| c.to_string()))
    .fetch_all(db)
    .await?;
    let airline_changes = crate::airline_change::of_booking(db, id).await?;
    let mut audit = crate::audit::list(
        db,
        &crate::audit::AuditFilter {
            resource_type: Some("booking".into()),
            resource_id: Some(id.to_string()),
            limit: 500,
            ..crate::audit::AuditFilter::default()
        },
    )
    .await?;
    if let Some(c) = r.campaign_id {
        audit.extend(
            crate::audit::list(
                db,
                &crate::audit::AuditFilter {
                    resource_type: Some("campaign".into()),
                    resource_id: Some(c.to_string()),
                    limit: 500,
                    ..crate::audit::AuditFilter::default()
                },
            )
            .await?,
        );
    }
    audit.sort_by_key(|a| a.created_at);
    Ok(Some(BookingView {
        id: r.id,
        campaign_id: r.campaign_id,
        origin: r.origin,
        destination: r.destination,
        departs_from: r.departs_from,
        departs_until: r.departs_until,
        status: r.status,
        total_amount: r.total_amount,
        currency: r.currency,
        offer_id: r.duffel_offer_id,
        order_id: r.duffel_order_id,
        payment_intent_id: r.stripe_payment_intent_id,
        payment_intent_status: r.payment_intent_status,
        failure_code: r.failure_code,
        pnr_recorded: r.pnr_recorded,
        steps,
        refunds,
        emails,
        audit,
        airline_changes,
    }))
}
