//! The sandbox's in-memory state: provider objects, idempotency records, scenarios and counters.
//!
//! Everything sits behind one `std::sync::Mutex` that is never held across an `.await`.

use std::collections::{BTreeMap, HashMap};

use axum::{http::StatusCode, response::Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    duffel_objects::{AirlineChange, Cancellation, Offer, OfferRequest, Order},
    kms_objects::{KmsFault, KmsKey},
    scenarios::{Outage, Provider, ScenarioTable},
    stripe_objects::{PaymentIntent, PaymentMethod, Refund},
    twilio_objects::TwilioMessage,
    util::{json_response, now_unix},
};

/// What the sandbox has done, so tests can prove nothing happened twice.
///
/// Maps are keyed by provider id (or by `metadata[booking_id]`); a request without that
/// metadata is counted under `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// PaymentIntents created, declined ones included. Requests that fail validation and
    /// idempotent replays create none.
    pub payment_intents_created: u64,
    /// [`payment_intents_created`](Self::payment_intents_created) per `metadata[booking_id]`.
    pub payment_intents_by_booking: BTreeMap<String, u64>,
    /// Captures that moved a PaymentIntent to `succeeded`; refused captures and replays do not
    /// count.
    pub captures: u64,
    /// [`captures`](Self::captures) per PaymentIntent id.
    pub captures_by_payment_intent: BTreeMap<String, u64>,
    /// Cancellations that moved a PaymentIntent to `canceled` (voided holds); refused ones and
    /// replays do not count.
    pub cancels: u64,
    /// [`cancels`](Self::cancels) per PaymentIntent id.
    pub cancels_by_payment_intent: BTreeMap<String, u64>,
    /// Refunds that succeeded; refused ones and replays do not count.
    pub refunds: u64,
    /// [`refunds`](Self::refunds) per PaymentIntent id.
    pub refunds_by_payment_intent: BTreeMap<String, u64>,
    /// Minor units refunded, per PaymentIntent.
    pub refunded_amount_by_payment_intent: BTreeMap<String, i64>,
    /// Customers deleted (`DELETE /v1/customers/{id}` answered 200). Refused deletes (the
    /// customer was already deleted, or is not a `cus_…` id) and outages do not count, so a
    /// customer counts at most once.
    pub customers_deleted: u64,
    /// PaymentMethods detached (`POST /v1/payment_methods/{id}/detach` answered 200).
    /// Idempotent replays, refusals (already detached, unknown) and outages do not count, so a
    /// PaymentMethod counts at most once.
    pub payment_methods_detached: u64,
    /// Stripe and Resend responses replayed from an idempotency key.
    pub idempotent_replays: u64,
    /// Offer requests created: valid, and not refused by the `rate_limited` scenario.
    pub offer_requests: u64,
    /// `POST /air/orders` that got as far as deciding the order: authenticated, well-formed
    /// (`type`, `selected_offers`, `metadata`) for an existing offer, and not rate limited.
    pub order_attempts: u64,
    /// Orders that exist (including ones whose response was a 500).
    pub orders_created: u64,
    /// [`orders_created`](Self::orders_created) per offer id (at most 1: a second order for an
    /// offer is refused).
    pub orders_by_offer: BTreeMap<String, u64>,
    /// [`orders_created`](Self::orders_created) per `metadata[booking_id]` of the order.
    pub orders_by_booking: BTreeMap<String, u64>,
    /// Confirmations that cancelled an order; confirming twice is refused and counts once.
    pub order_cancellations_confirmed: u64,
    /// Airline-initiated changes created (`POST /_sandbox/orders/{id}/airline_change` or
    /// [`Sandbox::airline_change`](crate::Sandbox::airline_change)); refused asks create none.
    pub airline_changes_created: u64,
    /// Airline-initiated changes moved to `action_taken: "accepted"`: by
    /// `POST /air/airline_initiated_changes/{id}/actions/accept`, or by the update endpoint with
    /// `action_taken: "accepted"`. Refused calls (already actioned, action not available,
    /// outage, 429) do not count, so a change counts at most once.
    pub airline_change_accepts: u64,
    /// [`airline_change_accepts`](Self::airline_change_accepts) per change id (`aic_…`; at most
    /// 1 each).
    pub airline_change_accepts_by_id: BTreeMap<String, u64>,
    /// 429s served by the Duffel rate-limit scenario.
    pub rate_limited_responses: u64,
    /// Emails actually sent (idempotent replays are not sends).
    pub emails_sent: u64,
    /// Emails sent per `Idempotency-Key` (emails without a key are not listed).
    pub emails_by_idempotency_key: BTreeMap<String, u64>,
    /// Webhook events delivered with a 2xx answer.
    pub webhooks_delivered: u64,
    /// Webhook events given up on after every attempt failed.
    pub webhooks_failed: u64,
    /// Individual delivery attempts that failed (including ones later retried successfully).
    pub webhook_attempt_failures: u64,
    /// Webhook events emitted (whether or not a target is configured).
    pub webhook_events_emitted: u64,
    /// API requests answered by an outage (its server error, or a Twilio outage's 429), per
    /// provider (`"stripe"`, `"duffel"`, `"resend"`, `"twilio"`).
    pub outage_responses: BTreeMap<String, u64>,
    /// Twilio Messages created (`POST …/Messages.json` answered 201). Refused requests and
    /// requests answered by an outage create none.
    pub sms_created: u64,
    /// [`sms_created`](Self::sms_created) per `To` (E.164, as sent).
    pub sms_by_to: BTreeMap<String, u64>,
    /// `POST …/Messages.json` answered with a 4xx of Twilio's (401 20003, or a 400 such as
    /// 21211, 21610 or 21614), none of which creates a Message. Requests answered by an outage
    /// (its 429 included) are not counted here but in
    /// [`outage_responses`](Self::outage_responses)`["twilio"]`.
    pub sms_refused: u64,
    /// KMS `GenerateDataKey` calls answered 200 (a data key made and wrapped).
    pub kms_generate_data_key: u64,
    /// KMS `Decrypt` calls answered 200 (a blob unwrapped).
    pub kms_decrypt: u64,
    /// KMS `Encrypt` calls answered 200.
    pub kms_encrypt: u64,
    /// KMS `ReEncrypt` calls answered 200 (a blob wrapped again under the current material).
    pub kms_re_encrypt: u64,
    /// KMS calls answered with an error: a fault's ([`Sandbox::set_kms_fault`](crate::Sandbox::set_kms_fault)),
    /// or a refusal (missing credentials, an unknown operation or key, a malformed member, a
    /// blob that does not open). None of them did anything.
    pub kms_refused: u64,
}

impl Counters {
    pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

/// A response stored under an idempotency key, scoped by (API key, Idempotency-Key).
#[derive(Debug, Clone)]
pub(crate) struct StoredResponse {
    /// Identity of the request that produced it; a reuse of the key must match it.
    pub fingerprint: String,
    pub status: u16,
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// The stored status and body again, byte for byte, as a JSON response.
    pub(crate) fn replay(&self) -> Response {
        json_response(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
            self.body.clone(),
        )
    }
}

/// A Stripe idempotency record.
#[derive(Debug, Clone)]
pub(crate) enum StripeIdem {
    /// The first request is still running.
    InFlight,
    /// The first request's response, replayed for every retry with the same parameters.
    Done(StoredResponse),
}

pub(crate) struct State {
    pub counters: Counters,
    pub scenarios: ScenarioTable,
    /// Outages in progress or past (an entry whose `until` has passed is over).
    pub outages: HashMap<Provider, Outage>,
    // Stripe
    pub payment_intents: HashMap<String, PaymentIntent>,
    pub refunds: HashMap<String, Refund>,
    pub stripe_idem: HashMap<(String, String), StripeIdem>,
    /// Customers are implicit (every `cus_…` id exists until deleted): when each was first
    /// named by a PaymentIntent, its `created`.
    pub customers_seen: HashMap<String, i64>,
    /// Deleted customers: id → when.
    pub deleted_customers: HashMap<String, i64>,
    /// PaymentMethods are implicit too (every `pm_…` id is an attached card until detached):
    /// the ones a PaymentIntent named, with the customer it named alongside.
    pub payment_methods_seen: HashMap<String, PaymentMethod>,
    /// Detached PaymentMethods: id → the customer it was detached from, if the sandbox knew it
    /// (a detach request names no customer).
    pub detached_payment_methods: HashMap<String, Option<String>>,
    // Duffel
    pub offer_requests: HashMap<String, OfferRequest>,
    pub offers: HashMap<String, Offer>,
    pub orders: Vec<Order>,
    pub cancellations: HashMap<String, Cancellation>,
    /// Airline-initiated changes, oldest first (every order's changes in creation order).
    pub airline_changes: Vec<AirlineChange>,
    /// 429s already served per route (the `rate_limited` budget).
    pub rate_limited: HashMap<String, u32>,
    // Resend
    pub resend_idem: HashMap<(String, String), StoredResponse>,
    /// Attachments of the emails sent with an idempotency key (decoded), by key, so tests can
    /// read what a traveler received.
    pub email_attachments: HashMap<String, Vec<(String, Vec<u8>)>>,
    // Twilio
    /// Messages of every account, oldest first.
    pub twilio_messages: Vec<TwilioMessage>,
    /// The default `messaging_service_sid` of each account (`MG…`), given to its Messages
    /// created without a Messaging Service.
    pub twilio_default_services: HashMap<String, String>,
    // KMS
    /// The fault every KMS call answers, until cleared.
    pub kms_fault: Option<KmsFault>,
    /// The one symmetric key and its key material.
    pub kms_key: KmsKey,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            counters: Counters::default(),
            scenarios: ScenarioTable::with_defaults(),
            outages: HashMap::new(),
            payment_intents: HashMap::new(),
            refunds: HashMap::new(),
            stripe_idem: HashMap::new(),
            customers_seen: HashMap::new(),
            deleted_customers: HashMap::new(),
            payment_methods_seen: HashMap::new(),
            detached_payment_methods: HashMap::new(),
            offer_requests: HashMap::new(),
            offers: HashMap::new(),
            orders: Vec::new(),
            cancellations: HashMap::new(),
            airline_changes: Vec::new(),
            rate_limited: HashMap::new(),
            resend_idem: HashMap::new(),
            email_attachments: HashMap::new(),
            twilio_messages: Vec::new(),
            twilio_default_services: HashMap::new(),
            kms_fault: None,
            kms_key: KmsKey::new(),
        }
    }

    /// PaymentMethod `id` as it stands now: its customer is `None` once detached. `None` for an
    /// id that is not a `pm_…` id.
    pub(crate) fn payment_method(&self, id: &str) -> Option<PaymentMethod> {
        if !is_implicit_id(id, "pm_") {
            return None;
        }
        let mut pm = self
            .payment_methods_seen
            .get(id)
            .cloned()
            .unwrap_or_else(|| PaymentMethod {
                id: id.to_owned(),
                created: now_unix(),
                customer: None,
            });
        if self.detached_payment_methods.contains_key(id) {
            pm.customer = None;
        }
        Some(pm)
    }

    pub(crate) fn order(&self, id: &str) -> Option<&Order> {
        self.orders.iter().find(|o| o.id == id)
    }

    pub(crate) fn order_mut(&mut self, id: &str) -> Option<&mut Order> {
        self.orders.iter_mut().find(|o| o.id == id)
    }

    pub(crate) fn airline_change(&self, id: &str) -> Option<&AirlineChange> {
        self.airline_changes.iter().find(|c| c.id == id)
    }

    pub(crate) fn airline_change_mut(&mut self, id: &str) -> Option<&mut AirlineChange> {
        self.airline_changes.iter_mut().find(|c| c.id == id)
    }

    /// The AIC objects of order `order_id`, oldest first.
    pub(crate) fn airline_changes_of(&self, order_id: &str) -> Vec<Value> {
        self.airline_changes
            .iter()
            .filter(|c| c.order_id == order_id)
            .map(|c| c.json.clone())
            .collect()
    }

    /// Rewrites order `order_id`'s `airline_initiated_changes` from the stored changes: call it
    /// after every change to one of them, so the order always lists them as they are.
    pub(crate) fn sync_airline_changes(&mut self, order_id: &str) {
        let changes = self.airline_changes_of(order_id);
        if let Some(order) = self.order_mut(order_id) {
            order.json["airline_initiated_changes"] = Value::Array(changes);
        }
    }
}

/// Whether `id` names an implicit Stripe object: `prefix` (`cus_`, `pm_`) and then at least one
/// letter, digit or underscore, and nothing else.
pub(crate) fn is_implicit_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_ids_are_the_prefix_then_letters_digits_or_underscores() {
        assert!(is_implicit_id("cus_NffrFeUfNV2Hib", "cus_"));
        assert!(is_implicit_id("pm_card_visa__u42", "pm_"));
        assert!(!is_implicit_id("cus_", "cus_"));
        assert!(!is_implicit_id("pm_card_visa", "cus_"));
        assert!(!is_implicit_id("cus_a/b", "cus_"));
        assert!(!is_implicit_id("cus_a b", "cus_"));
    }

    #[test]
    fn a_detached_payment_method_reads_without_its_customer() {
        let mut st = State::new();
        st.payment_methods_seen.insert(
            "pm_1".into(),
            PaymentMethod {
                id: "pm_1".into(),
                created: 1,
                customer: Some("cus_1".into()),
            },
        );
        assert_eq!(
            st.payment_method("pm_1").unwrap().customer.as_deref(),
            Some("cus_1")
        );
        st.detached_payment_methods
            .insert("pm_1".into(), Some("cus_1".into()));
        assert_eq!(st.payment_method("pm_1").unwrap().customer, None);
        assert!(st.payment_method("card_1").is_none());
        assert_eq!(st.payment_method("pm_2").unwrap().customer, None);
    }
}
