//! Stripe: PaymentIntents (off-session, manual capture), refunds, Stripe's idempotency keys,
//! and an erasure's two calls: detaching a saved card and deleting the customer.
//!
//! Objects are emitted **complete**: every field of the `PaymentIntent`, `Refund`, `Charge`,
//! `PaymentMethod`, `Customer`, `DeletedCustomer`, `ApiErrors` and `Event` structs generated in
//! `async-stripe-shared` 1.0.0-rc.10 is present (nullable ones as `null`), so strict
//! deserializers accept them. Checked by deserializing sandbox output (requires_capture,
//! succeeded, declined, canceled and requires_action intents, a refund, decline and
//! unexpected-state errors, and the emitted events including the `charge.refunded` charge)
//! with rc.10's miniserde deserializers; likewise, once, the detached PaymentMethod (and its
//! `GET`), the deleted customer, the refusals of both routes and of a PaymentIntent naming a
//! deleted customer or a detached card, and the `customer.deleted` and
//! `payment_method.detached` events with their objects.
//!
//! Customers and PaymentMethods are implicit: every `cus_…` id is a customer and every `pm_…`
//! id a card attached to one, until `DELETE /v1/customers/{id}` or
//! `POST /v1/payment_methods/{id}/detach`. What Stripe documents and what the sandbox chooses
//! for these routes is listed in docs/sandbox.md ("Erasure").

// Helpers return a ready HTTP error response as their `Err`; it is the cold path of a test
// double, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::{collections::BTreeMap, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, post, MethodRouter},
    Router,
};
use serde_json::{json, Value};

use crate::{
    handle::Sandbox,
    read::get_by_id,
    state::{is_implicit_id, Counters, State as SandboxState, StoredResponse, StripeIdem},
    stripe_objects::{Customer, PaymentIntent, PaymentMethod, Refund},
    util::{bearer, idempotency_key, json_response, new_id, now_unix, parse_form},
    webhooks,
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/v1/payment_intents", post(create_payment_intent))
        .route(
            "/v1/payment_intents/{id}",
            get_one(
                |st, id| st.payment_intents.get(id).map(PaymentIntent::to_json),
                |id| resource_missing("payment_intent", id, "intent").into_response(),
            ),
        )
        .route(
            "/v1/payment_intents/{id}/capture",
            post(capture_payment_intent),
        )
        .route(
            "/v1/payment_intents/{id}/cancel",
            post(cancel_payment_intent),
        )
        .route("/v1/refunds", post(create_refund))
        .route(
            "/v1/refunds/{id}",
            get_one(
                |st, id| st.refunds.get(id).map(Refund::to_json),
                |id| resource_missing("refund", id, "id").into_response(),
            ),
        )
        .route("/v1/customers/{id}", delete(delete_customer))
        .route(
            "/v1/payment_methods/{id}",
            get_one(
                |st, id| st.payment_method(id).map(|pm| pm.to_json()),
                |id| payment_method_missing(id).into_response(),
            ),
        )
        .route(
            "/v1/payment_methods/{id}/detach",
            post(detach_payment_method),
        )
}

// ---------------------------------------------------------------------------------------------
// Request parameters and errors

/// Form-encoded parameters, in request order.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true"))
    }

    fn opt_string(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).map(str::to_string)
    }

    /// Values of `name[]` / `name[0]`, … in order.
    fn list(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}[");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(']'))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let inner = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some((inner.to_string(), v.clone()))
            })
            .collect()
    }

    /// Order-independent identity of the parameters, for idempotency comparisons.
    fn fingerprint(&self) -> String {
        let mut pairs: Vec<_> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join("&")
    }

    fn int(&self, name: &str) -> Result<Option<i64>, Outcome> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(invalid_param(
                    name,
                    "parameter_invalid_integer",
                    &format!("Invalid positive integer: {name}"),
                )),
            },
        }
    }
}

/// What an operation produced: the response, whether Stripe would store it under the
/// idempotency key, and the events it caused.
pub(crate) struct Outcome {
    status: StatusCode,
    body: Value,
    store: bool,
    events: Vec<PendingEvent>,
}

/// An event an operation caused, emitted once its response is settled.
struct PendingEvent {
    event_type: &'static str,
    object: Value,
    /// `data.previous_attributes`, for the events that carry it.
    previous_attributes: Option<Value>,
}

impl Outcome {
    /// A response that Stripe stores under the idempotency key, without events (yet).
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            store: true,
            events: Vec::new(),
        }
    }

    fn ok(body: Value) -> Self {
        Self::new(StatusCode::OK, body)
    }

    /// The same response, not stored under the idempotency key (validation failures).
    fn unstored(mut self) -> Self {
        self.store = false;
        self
    }

    fn with_event(mut self, event_type: &'static str, object: Value) -> Self {
        self.events.push(PendingEvent {
            event_type,
            object,
            previous_attributes: None,
        });
        self
    }

    /// An event with `data.previous_attributes`.
    fn with_event_after(
        mut self,
        event_type: &'static str,
        object: Value,
        previous_attributes: Value,
    ) -> Self {
        self.events.push(PendingEvent {
            event_type,
            object,
            previous_attributes: Some(previous_attributes),
        });
        self
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            serde_json::to_vec(&self.body).expect("json serializes"),
        )
    }
}

fn error_body(
    error_type: &str,
    code: Option<&str>,
    decline_code: Option<&str>,
    message: &str,
    param: Option<&str>,
    payment_intent: Option<Value>,
) -> Value {
    let mut err = json!({
        "type": error_type,
        "code": code,
        "decline_code": decline_code,
        "message": message,
        "param": param,
        "doc_url": code.map(|c| format!("https://stripe.com/docs/error-codes/{}", c.replace('_', "-"))),
        "request_log_url": null,
    });
    if let Some(pi) = payment_intent {
        err["payment_intent"] = pi;
    }
    json!({ "error": err })
}

/// An `invalid_request_error` with a `code` (stored under the idempotency key).
fn request_error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Outcome {
    Outcome::new(
        status,
        error_body(
            "invalid_request_error",
            Some(code),
            None,
            message,
            param,
            None,
        ),
    )
}

/// A parameter validation failure: 400, never stored under the idempotency key.
fn invalid_param(param: &str, code: &str, message: &str) -> Outcome {
    Outcome {
        store: false,
        ..request_error(StatusCode::BAD_REQUEST, code, message, Some(param))
    }
}

/// A parameter outside its allowed values: 400 naming the `param`, with no `code` — Stripe's
/// error codes (<https://docs.stripe.com/error-codes>) have none for it (`code` is nullable:
/// "for some errors that could be handled programmatically"). Never stored.
fn invalid_value(param: &str, message: &str) -> Outcome {
    Outcome::new(
        StatusCode::BAD_REQUEST,
        error_body(
            "invalid_request_error",
            None,
            None,
            message,
            Some(param),
            None,
        ),
    )
    .unstored()
}

fn missing_param(param: &str) -> Outcome {
    invalid_param(
        param,
        "parameter_missing",
        &format!("Missing required param: {param}."),
    )
}

fn resource_missing(kind: &str, id: &str, param: &str) -> Outcome {
    request_error(
        StatusCode::NOT_FOUND,
        "resource_missing",
        &format!("No such {kind}: '{id}'"),
        Some(param),
    )
}

/// An unknown PaymentMethod in the path: 404 `resource_missing` naming `payment_method`, with
/// Stripe's capitalisation (`No such PaymentMethod: 'pm_…'`, as a third party recorded it).
fn payment_method_missing(id: &str) -> Outcome {
    resource_missing("PaymentMethod", id, "payment_method")
}

/// Detaching a card attached to no customer (already detached): 400 `invalid_request_error`
/// with Stripe's wording and no `code` or `param` (recorded by third parties; Stripe documents
/// neither). Not stored under the idempotency key: refused before anything ran.
fn not_attached() -> Outcome {
    Outcome::new(
        StatusCode::BAD_REQUEST,
        error_body(
            "invalid_request_error",
            None,
            None,
            "The payment method you provided is not attached to a customer so detachment is \
             impossible.",
            None,
            None,
        ),
    )
    .unstored()
}

/// A PaymentIntent naming a detached card: Stripe's 400 for a PaymentMethod that "can no
/// longer be used for a payment" (docs.stripe.com/api/payment_methods/detach), in the wording
/// of recorded answers, with no `code` or `param`.
fn payment_method_consumed() -> Outcome {
    Outcome::new(
        StatusCode::BAD_REQUEST,
        error_body(
            "invalid_request_error",
            None,
            None,
            "The provided PaymentMethod was previously used with a PaymentIntent without \
             Customer attachment, shared with a connected account without Customer attachment, \
             or was detached from a Customer. It may not be used again. To use a PaymentMethod \
             multiple times, you must attach it to a Customer first.",
            None,
            None,
        ),
    )
}

fn unexpected_state(pi: &PaymentIntent, action: &str, allowed: &str) -> Outcome {
    Outcome::new(
        StatusCode::BAD_REQUEST,
        error_body(
            "invalid_request_error",
            Some("payment_intent_unexpected_state"),
            None,
            &format!(
                "This PaymentIntent could not be {action} because it has a status of {}. \
                 Only a PaymentIntent with one of the following statuses may be {action}: {allowed}.",
                pi.status
            ),
            None,
            Some(pi.to_json()),
        ),
    )
}

/// An error answered before any operation ran (authentication, idempotency conflicts).
fn simple_error(
    status: StatusCode,
    error_type: &str,
    code: Option<&str>,
    message: &str,
) -> Response {
    Outcome::new(
        status,
        error_body(error_type, code, None, message, None, None),
    )
    .into_response()
}

/// What every request gets during an outage ([`Sandbox::set_outage`]): Stripe's `api_error`
/// ("a temporary problem with Stripe's servers"), with the server-error status.
pub(crate) fn outage_response(status: StatusCode) -> Response {
    simple_error(
        status,
        "api_error",
        None,
        "An unknown error occurred while processing your request (sandbox outage).",
    )
}

/// The API key of an authenticated request, or Stripe's 401.
fn authenticate(headers: &HeaderMap) -> Result<String, Response> {
    match bearer(headers) {
        Some(key) if key.starts_with("sk_test_") || key.starts_with("rk_test_") => Ok(key),
        Some(_) => Err(simple_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided. The sandbox accepts test keys (sk_test_…) only.",
        )),
        None => Err(simple_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You did not provide an API key. Provide it in the Authorization header \
             (Authorization: Bearer sk_test_…).",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The idempotent POST pipeline

/// Removes an `InFlight` record if the request is dropped before it completes.
struct InFlightGuard {
    sb: Sandbox,
    key: Option<(String, String)>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut st = self.sb.lock();
            if matches!(st.stripe_idem.get(&key), Some(StripeIdem::InFlight)) {
                st.stripe_idem.remove(&key);
            }
        }
    }
}

/// Authenticates, applies Stripe's idempotency rules around `op`, stores the response, and
/// emits the events the operation caused.
async fn idempotent_post<F>(
    sb: Sandbox,
    headers: HeaderMap,
    path: String,
    body: Bytes,
    op: F,
) -> Response
where
    F: FnOnce(&mut SandboxState, &Params) -> Outcome,
{
    let api_key = match authenticate(&headers) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let params = Params(parse_form(&String::from_utf8_lossy(&body)));
    let fingerprint = format!("POST {path}?{}", params.fingerprint());
    let idem_key = idempotency_key(&headers);
    let request_id = new_id("req_");

    let mut guard = InFlightGuard {
        sb: sb.clone(),
        key: None,
    };
    if let Some(key) = &idem_key {
        let scoped = (api_key.clone(), key.clone());
        let mut st = sb.lock();
        match st.stripe_idem.get(&scoped).cloned() {
            Some(StripeIdem::Done(stored)) => {
                if stored.fingerprint != fingerprint {
                    return simple_error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        None,
                        &format!(
                            "Keys for idempotent requests can only be used with the same \
                             parameters they were first used with. Try using a key other than \
                             '{key}' if you meant to execute a different request."
                        ),
                    );
                }
                st.counters.idempotent_replays += 1;
                drop(st);
                tracing::debug!(path, "stripe idempotent replay");
                let mut resp = stored.replay();
                let h = resp.headers_mut();
                h.insert("idempotent-replayed", HeaderValue::from_static("true"));
                if let Ok(v) = HeaderValue::from_str(key) {
                    h.insert("idempotency-key", v);
                }
                return resp;
            }
            Some(StripeIdem::InFlight) => {
                return simple_error(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotent Key \
                     (that probably means you submitted twice, and the other request is still \
                     going through). Please try again later.",
                );
            }
            None => {
                st.stripe_idem.insert(scoped.clone(), StripeIdem::InFlight);
                guard.key = Some(scoped);
            }
        }
    }

    let latency = sb.config().stripe_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    let outcome = {
        let mut st = sb.lock();
        op(&mut st, &params)
    };
    let bytes = serde_json::to_vec(&outcome.body).expect("json serializes");
    if let Some(scoped) = guard.key.take() {
        let mut st = sb.lock();
        if outcome.store {
            st.stripe_idem.insert(
                scoped,
                StripeIdem::Done(StoredResponse {
                    fingerprint,
                    status: outcome.status.as_u16(),
                    body: bytes.clone(),
                }),
            );
        } else {
            st.stripe_idem.remove(&scoped);
        }
    }
    answer(
        &sb,
        outcome.status,
        bytes,
        outcome.events,
        request_id,
        idem_key,
    )
}

/// Emits the events of a settled operation and answers with its body, the `Request-Id` and the
/// idempotency key echoed.
fn answer(
    sb: &Sandbox,
    status: StatusCode,
    bytes: Vec<u8>,
    events: Vec<PendingEvent>,
    request_id: String,
    idem_key: Option<String>,
) -> Response {
    for e in events {
        webhooks::emit_stripe(
            sb,
            e.event_type,
            e.object,
            e.previous_attributes,
            Some((request_id.clone(), idem_key.clone())),
        );
    }
    let mut resp = json_response(status, bytes);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("request-id", v);
    }
    if let Some(v) = idem_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        h.insert("idempotency-key", v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn create_payment_intent(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    idempotent_post(sb, headers, "/v1/payment_intents".into(), body, create_pi).await
}

async fn capture_payment_intent(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/capture");
    idempotent_post(sb, headers, path, body, move |st, p| capture_pi(st, &id, p)).await
}

async fn cancel_payment_intent(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/cancel");
    idempotent_post(sb, headers, path, body, move |st, p| cancel_pi(st, &id, p)).await
}

async fn create_refund(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    idempotent_post(sb, headers, "/v1/refunds".into(), body, refund_pi).await
}

async fn detach_payment_method(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_methods/{id}/detach");
    idempotent_post(sb, headers, path, body, move |st, _| detach_pm(st, &id)).await
}

/// `DELETE /v1/customers/{id}`. Not through the idempotency pipeline: Stripe says keys on a
/// DELETE have "no effect" (docs.stripe.com/api/idempotent_requests), so a retry, whatever its
/// key, answers as the customer now stands: 404 once it is deleted. The key is neither read nor
/// echoed, and the event's `request.idempotency_key` is null.
async fn delete_customer(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let outcome = {
        let mut st = sb.lock();
        delete_cus(&mut st, &id)
    };
    let bytes = serde_json::to_vec(&outcome.body).expect("json serializes");
    answer(
        &sb,
        outcome.status,
        bytes,
        outcome.events,
        new_id("req_"),
        None,
    )
}

/// `GET /v1/payment_intents/{id}` and `GET /v1/refunds/{id}`: the object, or Stripe's 404.
fn get_one(
    lookup: fn(&SandboxState, &str) -> Option<Value>,
    not_found: fn(&str) -> Response,
) -> MethodRouter<Sandbox> {
    get_by_id(
        authenticate,
        lookup,
        |object| Outcome::ok(object).into_response(),
        not_found,
    )
}

// ---------------------------------------------------------------------------------------------
// Operations (run under the state lock)

/// How a test payment method behaves on confirm: `(code, decline_code, message)` of a failure.
/// A `__<anything>` suffix is ignored (`pm_card_chargeDeclined__u42`), so seeded cards can be
/// unique per user and still pick their scenario.
fn card_failure(payment_method: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let base = payment_method.split("__").next().unwrap_or(payment_method);
    match base {
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => Some((
            "card_declined",
            "generic_decline",
            "Your card was declined.",
        )),
        "pm_card_chargeDeclinedInsufficientFunds" => Some((
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        )),
        "pm_card_chargeDeclinedExpiredCard" => {
            Some(("expired_card", "expired_card", "Your card has expired."))
        }
        "pm_card_authenticationRequired" | "pm_card_threeDSecureRequired" => Some((
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        )),
        _ => None,
    }
}

fn create_pi(st: &mut SandboxState, p: &Params) -> Outcome {
    let amount = match p.int("amount") {
        Ok(Some(a)) => a,
        Ok(None) => return missing_param("amount"),
        Err(e) => return e,
    };
    let currency = match p.get("currency") {
        Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            c.to_ascii_lowercase()
        }
        Some(_) => return invalid_value("currency", "Invalid currency."),
        None => return missing_param("currency"),
    };
    let capture_method = p.get("capture_method").unwrap_or("automatic").to_string();
    if !matches!(
        capture_method.as_str(),
        "automatic" | "automatic_async" | "manual"
    ) {
        return invalid_value(
            "capture_method",
            "Invalid capture_method: must be one of automatic, automatic_async, or manual",
        );
    }
    let confirm = p.flag("confirm");
    let off_session = matches!(p.get("off_session"), Some("true" | "one_off" | "recurring"));
    if p.get("off_session").is_some() && !confirm {
        return invalid_value(
            "off_session",
            "You may only specify `off_session` when `confirm` is true.",
        );
    }
    let payment_method = p.opt_string("payment_method");
    if confirm && payment_method.is_none() {
        return missing_param("payment_method");
    }
    let mut payment_method_types = p.list("payment_method_types");
    if payment_method_types.is_empty() {
        payment_method_types.push("card".into());
    }
    let customer = p.opt_string("customer");
    // A deleted customer is as missing as an unknown one when a request names it; a detached
    // card can no longer pay. No PaymentIntent is created.
    if let Some(c) = customer
        .as_deref()
        .filter(|c| st.deleted_customers.contains_key(*c))
    {
        return request_error(
            StatusCode::BAD_REQUEST,
            "resource_missing",
            &format!("No such customer: '{c}'"),
            Some("customer"),
        );
    }
    if let Some(pm) = payment_method.as_deref() {
        if st.detached_payment_methods.contains_key(pm) {
            return payment_method_consumed();
        }
    }
    remember_customer_and_card(st, customer.as_deref(), payment_method.as_deref());
    let metadata = p.metadata();
    let id = new_id("pi_");
    let mut pi = PaymentIntent {
        client_secret: format!("{id}_secret_{}", &new_id("")[..20]),
        id,
        amount,
        amount_capturable: 0,
        amount_received: 0,
        amount_refunded: 0,
        currency,
        customer,
        payment_method: payment_method.clone(),
        payment_method_types,
        status: if payment_method.is_some() {
            "requires_confirmation"
        } else {
            "requires_payment_method"
        },
        capture_method: capture_method.clone(),
        confirmation_method: p
            .get("confirmation_method")
            .unwrap_or("automatic")
            .to_string(),
        metadata,
        created: now_unix(),
        latest_charge: None,
        last_payment_error: None,
        next_action: None,
        canceled_at: None,
        cancellation_reason: None,
        description: p.opt_string("description"),
        receipt_email: p.opt_string("receipt_email"),
        statement_descriptor: p.opt_string("statement_descriptor"),
        statement_descriptor_suffix: p.opt_string("statement_descriptor_suffix"),
        setup_future_usage: p.opt_string("setup_future_usage"),
    };
    let booking = pi.metadata.get("booking_id").cloned().unwrap_or_default();
    st.counters.payment_intents_created += 1;
    Counters::bump(&mut st.counters.payment_intents_by_booking, &booking);

    let outcome;
    if !confirm {
        outcome = Outcome::ok(pi.to_json());
    } else {
        let pm = payment_method.as_deref().unwrap_or_default();
        match card_failure(pm) {
            Some(("authentication_required", _, _)) if !off_session => {
                // On session the customer can authenticate: the intent waits for 3DS.
                pi.status = "requires_action";
                pi.next_action = Some(json!({
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": ""},
                    "redirect_to_url": null,
                }));
                outcome = Outcome::ok(pi.to_json());
            }
            Some((code, decline_code, message)) => {
                // Off session (and for every hard decline): the attempt fails and the intent
                // returns to requires_payment_method, as Stripe does.
                let charge = new_id("ch_");
                pi.latest_charge = Some(charge.clone());
                pi.status = "requires_payment_method";
                pi.last_payment_error = Some(json!({
                    "type": "card_error",
                    "code": code,
                    "decline_code": decline_code,
                    "message": message,
                    "charge": charge,
                    "doc_url": format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")),
                    "param": null,
                    "advice_code": null,
                    "network_advice_code": null,
                    "network_decline_code": null,
                    "payment_method": null,
                    "payment_method_type": "card",
                    "request_log_url": null,
                    "setup_intent": null,
                    "source": null,
                }));
                let pi_json = pi.to_json();
                let mut body = error_body(
                    "card_error",
                    Some(code),
                    Some(decline_code),
                    message,
                    None,
                    Some(pi_json.clone()),
                );
                body["error"]["charge"] = json!(charge);
                outcome = Outcome::new(StatusCode::PAYMENT_REQUIRED, body)
                    .with_event("payment_intent.payment_failed", pi_json);
                tracing::info!(payment_intent.id = %pi.id, code, "sandbox card declined");
            }
            None => {
                pi.latest_charge = Some(new_id("ch_"));
                if capture_method == "manual" {
                    pi.status = "requires_capture";
                    pi.amount_capturable = amount;
                    let j = pi.to_json();
                    outcome = Outcome::ok(j.clone())
                        .with_event("payment_intent.amount_capturable_updated", j);
                } else {
                    pi.status = "succeeded";
                    pi.amount_received = amount;
                    let j = pi.to_json();
                    outcome = Outcome::ok(j.clone()).with_event("payment_intent.succeeded", j);
                }
                tracing::info!(payment_intent.id = %pi.id, status = pi.status, "sandbox payment intent confirmed");
            }
        }
    }
    st.payment_intents.insert(pi.id.clone(), pi);
    outcome
}

fn capture_pi(st: &mut SandboxState, id: &str, p: &Params) -> Outcome {
    let amount_to_capture = match p.int("amount_to_capture") {
        Ok(a) => a,
        Err(e) => return e,
    };
    let Some(pi) = st.payment_intents.get_mut(id) else {
        return resource_missing("payment_intent", id, "intent");
    };
    if pi.status != "requires_capture" {
        return unexpected_state(pi, "captured", "requires_capture");
    }
    let amount = amount_to_capture.unwrap_or(pi.amount_capturable);
    if amount > pi.amount_capturable {
        return request_error(
            StatusCode::BAD_REQUEST,
            "amount_too_large",
            "The amount to capture is greater than the amount capturable.",
            Some("amount_to_capture"),
        );
    }
    pi.status = "succeeded";
    pi.amount_received = amount;
    pi.amount_capturable = 0;
    let j = pi.to_json();
    tracing::info!(payment_intent.id = %id, "sandbox payment intent captured");
    st.counters.captures += 1;
    Counters::bump(&mut st.counters.captures_by_payment_intent, id);
    Outcome::ok(j.clone()).with_event("payment_intent.succeeded", j)
}

fn cancel_pi(st: &mut SandboxState, id: &str, p: &Params) -> Outcome {
    let reason = p.opt_string("cancellation_reason");
    if let Some(r) = &reason {
        if !matches!(
            r.as_str(),
            "duplicate" | "fraudulent" | "requested_by_customer" | "abandoned"
        ) {
            return invalid_value("cancellation_reason", "Invalid cancellation_reason: must be one of duplicate, fraudulent, requested_by_customer, or abandoned",
            );
        }
    }
    let Some(pi) = st.payment_intents.get_mut(id) else {
        return resource_missing("payment_intent", id, "intent");
    };
    const CANCELABLE: &str =
        "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing";
    if matches!(pi.status, "succeeded" | "canceled") {
        return unexpected_state(pi, "canceled", CANCELABLE);
    }
    pi.status = "canceled";
    pi.canceled_at = Some(now_unix());
    pi.cancellation_reason = reason;
    pi.amount_capturable = 0;
    pi.next_action = None;
    let j = pi.to_json();
    tracing::info!(payment_intent.id = %id, "sandbox payment intent canceled");
    st.counters.cancels += 1;
    Counters::bump(&mut st.counters.cancels_by_payment_intent, id);
    Outcome::ok(j.clone()).with_event("payment_intent.canceled", j)
}

fn refund_pi(st: &mut SandboxState, p: &Params) -> Outcome {
    let amount = match p.int("amount") {
        Ok(a) => a,
        Err(e) => return e,
    };
    let reason = p.opt_string("reason");
    if let Some(r) = &reason {
        if !matches!(
            r.as_str(),
            "duplicate" | "fraudulent" | "requested_by_customer"
        ) {
            return invalid_value(
                "reason",
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
            );
        }
    }
    let pi_id = match (p.opt_string("payment_intent"), p.opt_string("charge")) {
        (Some(id), _) => id,
        (None, Some(charge)) => match st
            .payment_intents
            .values()
            .find(|pi| pi.latest_charge.as_deref() == Some(charge.as_str()))
        {
            Some(pi) => pi.id.clone(),
            None => return resource_missing("charge", &charge, "charge"),
        },
        (None, None) => return missing_param("payment_intent"),
    };
    let Some(pi) = st.payment_intents.get_mut(&pi_id) else {
        return resource_missing("payment_intent", &pi_id, "payment_intent");
    };
    let refusal =
        |code: &str, message: String| request_error(StatusCode::BAD_REQUEST, code, &message, None);
    if pi.status != "succeeded" {
        return refusal(
            "charge_not_refundable",
            format!(
                "This PaymentIntent ({pi_id}) does not have a successful charge to refund (status {}).",
                pi.status
            ),
        );
    }
    let remaining = pi.amount_received - pi.amount_refunded;
    if remaining <= 0 {
        return refusal(
            "charge_already_refunded",
            format!(
                "Charge {} has already been refunded.",
                pi.latest_charge.as_deref().unwrap_or("")
            ),
        );
    }
    let amount = amount.unwrap_or(remaining);
    if amount > remaining {
        return refusal(
            "amount_too_large",
            format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
            ),
        );
    }
    pi.amount_refunded += amount;
    let refund = Refund {
        id: new_id("re_"),
        amount,
        charge: pi.latest_charge.clone(),
        created: now_unix(),
        currency: pi.currency.clone(),
        metadata: p.metadata(),
        payment_intent: pi_id.clone(),
        customer: pi.customer.clone(),
        payment_method: pi.payment_method.clone(),
        reason,
        status: "succeeded",
        balance_transaction: new_id("txn_"),
        failure_reason: None,
    };
    let pi_snapshot = pi.clone();
    st.refunds.insert(refund.id.clone(), refund.clone());
    let refunds: Vec<&Refund> = st
        .refunds
        .values()
        .filter(|r| r.payment_intent == pi_id)
        .collect();
    let charge = pi_snapshot.charge_json(&refunds);
    st.counters.refunds += 1;
    Counters::bump(&mut st.counters.refunds_by_payment_intent, &pi_id);
    *st.counters
        .refunded_amount_by_payment_intent
        .entry(pi_id.clone())
        .or_default() += amount;
    tracing::info!(refund.id = %refund.id, payment_intent.id = %pi_id, "sandbox refund created");
    Outcome::ok(refund.to_json()).with_event("charge.refunded", charge)
}

/// Records the customer and the card a PaymentIntent names, so a later detach knows whose card
/// it was and `customer.deleted` has the customer's `created`.
fn remember_customer_and_card(
    st: &mut SandboxState,
    customer: Option<&str>,
    payment_method: Option<&str>,
) {
    let now = now_unix();
    if let Some(c) = customer {
        st.customers_seen.entry(c.to_owned()).or_insert(now);
    }
    if let Some(pm) = payment_method {
        let seen = st
            .payment_methods_seen
            .entry(pm.to_owned())
            .or_insert_with(|| PaymentMethod {
                id: pm.to_owned(),
                created: now,
                customer: None,
            });
        if customer.is_some() {
            seen.customer = customer.map(str::to_owned);
        }
    }
}

/// `DELETE /v1/customers/{id}`: any `cus_…` id not yet deleted is deleted (customers are
/// implicit), answered with the `{id, object, deleted: true}` stub and announced by
/// `customer.deleted` around the customer as it was. A deleted or unknown customer is Stripe's
/// 404 `resource_missing` naming `id` (Stripe's docs only say "raises an error"; the shape is
/// what third parties recorded). The customer's cards are left as they are: Stripe does not
/// document that a deletion detaches them, so an erasure detaches each card first.
fn delete_cus(st: &mut SandboxState, id: &str) -> Outcome {
    if !is_implicit_id(id, "cus_") || st.deleted_customers.contains_key(id) {
        return resource_missing("customer", id, "id");
    }
    let now = now_unix();
    let before = Customer {
        id: id.to_owned(),
        created: st.customers_seen.get(id).copied().unwrap_or(now),
    };
    st.deleted_customers.insert(id.to_owned(), now);
    st.counters.customers_deleted += 1;
    tracing::info!(customer.id = %id, "sandbox customer deleted");
    Outcome::ok(Customer::deleted_json(id)).with_event("customer.deleted", before.to_json())
}

/// `POST /v1/payment_methods/{id}/detach`: any `pm_…` id not yet detached is detached
/// (PaymentMethods are implicit) and answered as the PaymentMethod with `customer: null`,
/// announced by `payment_method.detached` with `previous_attributes.customer` (the customer a
/// PaymentIntent last named with the card, `null` if none did). Detaching again is Stripe's
/// 400 "not attached"; an id that is not `pm_…` is 404 `resource_missing`.
fn detach_pm(st: &mut SandboxState, id: &str) -> Outcome {
    if !is_implicit_id(id, "pm_") {
        return payment_method_missing(id);
    }
    if st.detached_payment_methods.contains_key(id) {
        return not_attached();
    }
    let now = now_unix();
    let seen = st
        .payment_methods_seen
        .entry(id.to_owned())
        .or_insert_with(|| PaymentMethod {
            id: id.to_owned(),
            created: now,
            customer: None,
        });
    let from = seen.customer.take();
    let detached = seen.clone();
    st.detached_payment_methods
        .insert(id.to_owned(), from.clone());
    st.counters.payment_methods_detached += 1;
    tracing::info!(payment_method.id = %id, "sandbox payment method detached");
    let j = detached.to_json();
    Outcome::ok(j.clone()).with_event_after(
        "payment_method.detached",
        j,
        json!({ "customer": from }),
    )
}

impl Sandbox {
    /// Whether Stripe customer `id` was deleted (`DELETE /v1/customers/{id}` answered 200).
    pub fn stripe_customer_deleted(&self, id: &str) -> bool {
        self.lock().deleted_customers.contains_key(id)
    }

    /// Whether PaymentMethod `id` was detached (`POST /v1/payment_methods/{id}/detach`
    /// answered 200).
    pub fn stripe_payment_method_detached(&self, id: &str) -> bool {
        self.lock().detached_payment_methods.contains_key(id)
    }

    /// The customer PaymentMethod `id` was detached from: `None` if it was not detached,
    /// `Some(None)` if it was but no PaymentIntent had named it with a customer (a detach
    /// request names none).
    pub fn stripe_payment_method_detached_from(&self, id: &str) -> Option<Option<String>> {
        self.lock().detached_payment_methods.get(id).cloned()
    }
}
