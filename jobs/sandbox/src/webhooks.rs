//! Signed webhook delivery, and the signing helpers tests use to sign their own events.
//!
//! Stripe (`Stripe-Signature`) and Duffel (`X-Duffel-Signature`) use the same scheme:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`.
//!
//! Delivery is at least once from the receiver's point of view: a spawned task POSTs the event
//! and retries a non-2xx or transport error up to [`WEBHOOK_ATTEMPTS`] times with exponential
//! backoff (starting at `SandboxConfig::webhook_backoff_ms`), then gives up and counts a failure.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    config::WebhookTarget,
    handle::Sandbox,
    util::{new_id, now_unix},
};

/// The Stripe API version stamped on events: async-stripe 1.0.0-rc.10's generated `VERSION`, so
/// its webhook parser does not warn about a mismatch.
pub const STRIPE_API_VERSION: &str = "2026-09-30.endive";

/// The `identity_organisation_id` on every Duffel event: the sandbox is one organisation.
pub const DUFFEL_ORGANISATION_ID: &str = "org_0000SandboxParkerFlight";

/// Delivery attempts per event before it is counted in `webhooks_failed`.
pub const WEBHOOK_ATTEMPTS: u32 = 4;

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
///
/// Written from the providers' documentation, not shared with the fleet's verifier, so a test
/// that signs here and verifies there checks the verifier against the documented scheme.
pub fn sign_payload(secret: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Stripe-Signature` header value for `body` signed at `timestamp`.
pub fn stripe_signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    signature_header(secret, timestamp, body)
}

/// The `X-Duffel-Signature` header value for `body` signed at `timestamp` (the same scheme as
/// Stripe's).
pub fn duffel_signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    signature_header(secret, timestamp, body)
}

/// `t=<timestamp>,v1=<signature>`, the header value both providers use.
fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign_payload(secret, timestamp, body))
}

impl Sandbox {
    /// Emits a signed Stripe event of any type with `object` as `data.object` and returns its id.
    /// Delivery runs on a spawned task, so this needs a Tokio runtime; without a configured
    /// webhook target nothing is delivered, but the event still counts in
    /// [`Counters::webhook_events_emitted`](crate::Counters::webhook_events_emitted).
    pub fn emit_stripe_event(&self, event_type: &str, object: Value) -> String {
        emit_stripe(self, event_type, object, None, None)
    }

    /// Emits a signed Duffel event of any type with `object` as `data.object` and returns its id.
    /// Delivery runs on a spawned task, so this needs a Tokio runtime; without a configured
    /// webhook target nothing is delivered, but the event still counts in
    /// [`Counters::webhook_events_emitted`](crate::Counters::webhook_events_emitted).
    pub fn emit_duffel_event(&self, event_type: &str, object: Value) -> String {
        emit_duffel(self, event_type, object)
    }
}

/// Stripe's refund `failure_reason` values (docs.stripe.com/api/refunds/object).
pub const REFUND_FAILURE_REASONS: [&str; 7] = [
    "charge_for_pending_refund_disputed",
    "declined",
    "expired_or_canceled_card",
    "insufficient_funds",
    "lost_or_stolen_card",
    "merchant_request",
    "unknown",
];

impl Sandbox {
    /// Moves refund `id` to `status` (Stripe's: `pending`, `requires_action`, `succeeded`,
    /// `failed`, `canceled`), with `failure_reason` when it failed, as the card network would
    /// days after the refund was created; emits `refund.updated`, and `refund.failed` too when
    /// it failed, around the refund object. Returns the refund, or what is wrong with the ask.
    pub fn settle_refund(
        &self,
        id: &str,
        status: &str,
        failure_reason: Option<&str>,
    ) -> Result<Value, String> {
        const STATUSES: [&str; 5] = [
            "pending",
            "requires_action",
            "succeeded",
            "failed",
            "canceled",
        ];
        let Some(status) = STATUSES.iter().copied().find(|s| *s == status) else {
            return Err(format!(
                "status {status:?} is not one of {}",
                STATUSES.join(", ")
            ));
        };
        let failure_reason = match (status, failure_reason) {
            ("failed", None) => "unknown",
            ("failed", Some(f)) => REFUND_FAILURE_REASONS
                .iter()
                .copied()
                .find(|r| *r == f)
                .ok_or_else(|| {
                    format!(
                        "failure_reason {f:?} is not one of {}",
                        REFUND_FAILURE_REASONS.join(", ")
                    )
                })?,
            (_, Some(_)) => return Err("failure_reason is only for status \"failed\"".into()),
            (_, None) => "",
        };
        let object = {
            let mut st = self.lock();
            let Some(r) = st.refunds.get_mut(id) else {
                return Err(format!("no refund {id:?}"));
            };
            r.status = status;
            r.failure_reason = (!failure_reason.is_empty()).then(|| failure_reason.to_owned());
            r.to_json()
        };
        emit_stripe(self, "refund.updated", object.clone(), None, None);
        if status == "failed" {
            emit_stripe(self, "refund.failed", object.clone(), None, None);
        }
        Ok(object)
    }
}

/// Builds a Stripe event around `object` and delivers it if a target is configured.
/// `request` is `(request id, idempotency key)` of the API call that caused it.
///
/// The shape is Stripe's "The Event object" example (<https://docs.stripe.com/api/events/object>,
/// `tests/contracts/stripe/event.json`), key for key: no Connect `account`/`context`, and
/// `data.previous_attributes` only when `previous_attributes` is given (Stripe sends it for
/// `*.updated` events and, as a third party recorded it, `payment_method.detached`'s
/// `{"customer": …}`; docs/sandbox.md grades the sources).
pub(crate) fn emit_stripe(
    sb: &Sandbox,
    event_type: &str,
    object: Value,
    previous_attributes: Option<Value>,
    request: Option<(String, Option<String>)>,
) -> String {
    let id = new_id("evt_");
    let mut data = json!({ "object": object });
    if let Some(previous) = previous_attributes {
        data["previous_attributes"] = previous;
    }
    let event = json!({
        "id": id,
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": now_unix(),
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": match request {
            Some((rid, key)) => json!({"id": rid, "idempotency_key": key}),
            None => json!({"id": null, "idempotency_key": null}),
        },
        "type": event_type,
    });
    tracing::debug!(event.id = %id, event.type = event_type, "stripe event emitted");
    publish(sb, &id, &event, "Stripe-Signature", |t| {
        (t.stripe_url, t.stripe_secret)
    });
    id
}

/// Builds a Duffel event around `object` and delivers it if a target is configured.
///
/// The shape is the general shape on Duffel's webhooks page
/// (<https://duffel.com/docs/api/v2/webhooks>, `tests/contracts/duffel/`): every field at the
/// top level, the resource in `data.object`. Only API *responses* are wrapped in
/// `{"data": …}`, a delivered event is not. `idempotency_key` is "the related object's id":
/// the change's `aic_id` for an airline-initiated change, else the object's own `id`.
pub(crate) fn emit_duffel(sb: &Sandbox, event_type: &str, object: Value) -> String {
    let id = new_id("wev_");
    let related = ["aic_id", "id"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| new_id("obj_"));
    let event = json!({
        "id": id,
        "api_version": "v2",
        "type": event_type,
        "data": {"object": object},
        "live_mode": false,
        "idempotency_key": related,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "identity_organisation_id": DUFFEL_ORGANISATION_ID,
    });
    tracing::debug!(event.id = %id, event.type = event_type, "duffel event emitted");
    publish(sb, &id, &event, "X-Duffel-Signature", |t| {
        (t.duffel_url, t.duffel_secret)
    });
    id
}

/// Counts the event as emitted and, if a target is configured, delivers it to the (URL,
/// secret) that `endpoint` picks from the target, signed in the `header` header.
fn publish(
    sb: &Sandbox,
    event_id: &str,
    event: &Value,
    header: &'static str,
    endpoint: fn(WebhookTarget) -> (String, String),
) {
    sb.lock().counters.webhook_events_emitted += 1;
    if let Some(target) = sb.config().webhook.clone() {
        let (url, secret) = endpoint(target);
        let body = serde_json::to_vec(event).expect("json serializes");
        spawn_delivery(sb.clone(), url, secret, header, event_id.to_string(), body);
    }
}

fn spawn_delivery(
    sb: Sandbox,
    url: String,
    secret: String,
    header: &'static str,
    event_id: String,
    body: Vec<u8>,
) {
    let backoff = Duration::from_millis(sb.config().webhook_backoff_ms);
    tokio::spawn(async move {
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            // Re-sign each attempt, as providers do, so the timestamp stays fresh.
            let t = now_unix();
            let signature = signature_header(&secret, t, &body);
            let result = sb
                .http()
                .post(&url)
                .header("content-type", "application/json")
                .header(header, signature)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(resp) if resp.status().is_success() => {
                    sb.lock().counters.webhooks_delivered += 1;
                    tracing::debug!(event.id = %event_id, attempt, "webhook delivered");
                    return;
                }
                Ok(resp) => {
                    tracing::debug!(event.id = %event_id, attempt, status = resp.status().as_u16(), "webhook rejected");
                }
                Err(_) => {
                    tracing::debug!(event.id = %event_id, attempt, "webhook transport error");
                }
            }
            sb.lock().counters.webhook_attempt_failures += 1;
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(backoff * 2u32.pow(attempt - 1)).await;
            }
        }
        sb.lock().counters.webhooks_failed += 1;
        tracing::warn!(event.id = %event_id, "webhook delivery gave up");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body_as_documented() {
        // Expected value computed independently: Python's
        // hmac.new(b"whsec_x", b'1700000000.{"id":"evt_1"}', hashlib.sha256).hexdigest()
        let body = br#"{"id":"evt_1"}"#;
        assert_eq!(
            sign_payload("whsec_x", 1_700_000_000, body),
            "366e40c480fe3a9e6a03609dca079cea86d77ae82d5a56b5348208247317a8d1"
        );
        let h = stripe_signature_header("whsec_x", 1_700_000_000, body);
        assert_eq!(
            h,
            format!(
                "t=1700000000,v1={}",
                sign_payload("whsec_x", 1_700_000_000, body)
            )
        );
        assert_eq!(h, duffel_signature_header("whsec_x", 1_700_000_000, body));
    }
}
