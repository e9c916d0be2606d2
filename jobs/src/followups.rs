//! What a provider's event asks of the fleet: a verified, recorded webhook event in, the typed
//! follow-up jobs out (ids only in their args). The ingress enqueues them in the transaction
//! that records the event, so a delivery's follow-ups exist exactly once.
//!
//! Keys are `{provider}:{event id}:{n}`, unless a domain key exists that must dedupe with other
//! producers: a refund uses its booking's key ([`RefundCompensation::request`]), so the saga,
//! the webhook and an operator asking for the same refund make one job.
//!
//! An event whose object lacks what a follow-up needs (no PaymentIntent id, a card expiry out
//! of range) makes no job: it is recorded and logged, never retried by the provider for days.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    booking,
    kinds::{
        airline_change::AirlineChangeDetected, card_detached::CardDetached,
        card_update::CardUpdate, order_reconcile::OrderReconcile,
        payment_reconcile::PaymentReconcile, refund_compensation::RefundCompensation,
        refund_reconcile::RefundReconcile,
    },
    JobError, NewJob,
};

/// A provider that sends us webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Stripe.
    Stripe,
    /// Duffel.
    Duffel,
}

impl Provider {
    /// `webhook_events.provider` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Duffel => "duffel",
        }
    }
}

/// A delivered event, as the ingress parsed it from the provider's documented envelope.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who sent it.
    pub provider: Provider,
    /// `evt_…` (Stripe), `wev_…` (Duffel).
    pub id: String,
    /// The event type, e.g. `payment_intent.canceled`.
    pub kind: String,
    /// `data.object`: the resource the event is about.
    pub object: Value,
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The follow-up jobs of `e`. Reads the domain on `conn` where the event names a provider
/// object we must map to ours (an order cancellation → our booking).
pub async fn for_event(conn: &mut PgConnection, e: &Event) -> Result<Vec<NewJob>, JobError> {
    let key = |n: usize| format!("{}:{}:{n}", e.provider.as_str(), e.id);
    let o = &e.object;
    let mut jobs = Vec::new();
    let payment = |pi: &str| {
        NewJob::of(&PaymentReconcile {
            payment_intent_id: pi.to_owned(),
            event_type: e.kind.clone(),
        })
        .map_err(JobError::fatal)
    };
    match (e.provider, e.kind.as_str()) {
        (Provider::Stripe, "payment_intent.payment_failed" | "payment_intent.canceled") => {
            if let Some(pi) = str_of(o, &["id"]) {
                jobs.push(payment(pi)?.key(key(0)));
            }
        }
        (Provider::Stripe, "charge.refunded" | "charge.expired" | "charge.dispute.created") => {
            // A Charge's and a Dispute's `payment_intent` is nullable (Stripe's own Dispute
            // example has `"payment_intent": null`: a charge made without a PaymentIntent).
            // Ours are all made through PaymentIntents, so a null one is not our payment; it
            // is recorded, and said, never dropped in silence.
            match str_of(o, &["payment_intent"]) {
                Some(pi) => jobs.push(payment(pi)?.key(key(0))),
                None => tracing::warn!(
                    event.id = %e.id, event.type = %e.kind,
                    charge = str_of(o, &["charge"]).or(str_of(o, &["id"])).unwrap_or(""),
                    "charge event without a PaymentIntent: recorded, no job"
                ),
            }
        }
        (Provider::Stripe, "refund.updated" | "refund.failed" | "charge.refund.updated") => {
            // The object is the Refund (`re_…`): re-read it, record what Stripe says.
            match str_of(o, &["id"]).filter(|id| id.starts_with("re_") || id.starts_with("pyr_")) {
                Some(re) => jobs.push(RefundReconcile::request(re, &e.kind)?.key(key(0))),
                None => tracing::warn!(
                    event.id = %e.id, event.type = %e.kind,
                    "refund event without a refund id: recorded, no job"
                ),
            }
        }
        (Provider::Stripe, "payment_method.automatically_updated") => {
            let card = (
                str_of(o, &["id"]),
                o["card"]["exp_month"]
                    .as_i64()
                    .and_then(|m| i16::try_from(m).ok()),
                o["card"]["exp_year"]
                    .as_i64()
                    .and_then(|y| i16::try_from(y).ok()),
            );
            let (Some(pm), Some(exp_month), Some(exp_year)) = card else {
                tracing::warn!(event.id = %e.id, "card update without a usable card expiry: no job");
                return Ok(jobs);
            };
            let job = NewJob::of(&CardUpdate {
                stripe_payment_method_id: pm.to_owned(),
                exp_month,
                exp_year,
            })
            .map_err(JobError::fatal)?;
            jobs.push(job.key(key(0)));
        }
        (Provider::Stripe, "payment_method.detached") => {
            // The object is the PaymentMethod, its `customer` now null.
            match str_of(o, &["id"]).filter(|id| id.starts_with("pm_")) {
                Some(pm) => {
                    let job = NewJob::of(&CardDetached {
                        stripe_payment_method_id: pm.to_owned(),
                    })
                    .map_err(JobError::fatal)?;
                    jobs.push(job.key(key(0)));
                }
                None => {
                    tracing::warn!(event.id = %e.id, "card detached naming no pm_ id: recorded, no job")
                }
            }
        }
        (Provider::Duffel, "order.airline_initiated_change_detected") => {
            // Duffel's v2 migration guide: `data.object.id` is the order and
            // `data.object.aic_id` the change. Should the object be the change itself
            // (`aic_…`, with `order_id`), its ids are read from there.
            let order_id = str_of(o, &["id"])
                .filter(|id| id.starts_with("ord_"))
                .or_else(|| str_of(o, &["order_id"]));
            let aic_id = str_of(o, &["aic_id"])
                .or_else(|| str_of(o, &["id"]).filter(|id| id.starts_with("aic_")));
            match order_id {
                Some(order_id) => {
                    let job = NewJob::of(&AirlineChangeDetected {
                        order_id: order_id.to_owned(),
                        aic_id: aic_id.map(str::to_owned),
                        event_id: e.id.clone(),
                    })
                    .map_err(JobError::fatal)?;
                    jobs.push(job.key(key(0)));
                }
                None => {
                    tracing::warn!(event.id = %e.id, event.type = %e.kind, "airline change naming no order: recorded, no job");
                }
            }
        }
        (Provider::Duffel, "order.created" | "order.creation_failed") => {
            // The object is the order (`ord_…`).
            let order_id = str_of(o, &["id"])
                .filter(|id| id.starts_with("ord_"))
                .or_else(|| str_of(o, &["order_id"]))
                .map(str::to_owned);
            let booking_id =
                str_of(o, &["metadata", "booking_id"]).and_then(|b| Uuid::parse_str(b).ok());
            if order_id.is_some() || booking_id.is_some() {
                let job = NewJob::of(&OrderReconcile {
                    order_id,
                    booking_id,
                    event_type: e.kind.clone(),
                    event_id: e.id.clone(),
                })
                .map_err(JobError::fatal)?;
                jobs.push(job.key(key(0)));
            } else {
                tracing::warn!(event.id = %e.id, event.type = %e.kind, "order event naming no order and no booking: recorded, no job");
            }
        }
        (Provider::Duffel, "order_cancellation.confirmed") => {
            if let Some(order) = str_of(o, &["order_id"]) {
                match booking::find_by_order(conn, order).await? {
                    Some(b) => jobs.push(RefundCompensation::request(b, "order_cancelled")?),
                    None => {
                        tracing::warn!(event.id = %e.id, "order cancellation for an order we did not book")
                    }
                }
            }
        }
        _ => {}
    }
    Ok(jobs)
}
