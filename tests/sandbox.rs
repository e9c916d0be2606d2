//! Black-box tests of the provider sandbox: each starts a sandbox on 127.0.0.1:0 and talks to
//! it over HTTP with reqwest, exactly as the fleet's clients do.

mod common;

use std::{net::SocketAddr, time::Duration};

use reqwest::{Client, StatusCode};
use sandbox::{
    duffel_signature_header, scenarios::Provider, stripe_signature_header, RunningSandbox, Sandbox,
    SandboxConfig, Scenario, WebhookTarget,
};
use serde_json::{json, Value};

/// Checks a `t=…,v1=…` header (either provider) against `body` with the fleet's verifier.
fn verify_signature_header(
    header: &str,
    secret: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    fleet::webhooks::signature::verify(
        Some(header),
        &[secret.to_owned()],
        body,
        now,
        tolerance_secs,
    )
    .is_ok()
}

#[test]
fn signature_header_verifies_and_tampering_fails() {
    let body = br#"{"id":"evt_1"}"#;
    let h = stripe_signature_header("whsec_x", 1_700_000_000, body);
    assert!(verify_signature_header(
        &h,
        "whsec_x",
        body,
        1_700_000_100,
        300
    ));
    assert!(!verify_signature_header(
        &h,
        "whsec_y",
        body,
        1_700_000_100,
        300
    ));
    assert!(!verify_signature_header(
        &h,
        "whsec_x",
        b"{}",
        1_700_000_100,
        300
    ));
    assert!(!verify_signature_header(
        &h,
        "whsec_x",
        body,
        1_700_000_400,
        300
    ));
    assert_eq!(h, duffel_signature_header("whsec_x", 1_700_000_000, body));
}

const SK: &str = "sk_test_sandbox";
const DUFFEL: &str = "duffel_test_sandbox";
const RESEND: &str = "re_sandbox";

async fn start(cfg: SandboxConfig) -> (RunningSandbox, Client) {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sb = Sandbox::start(cfg, addr).await.expect("sandbox starts");
    (sb, Client::new())
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let raw = resp.bytes().await.expect("body").to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

async fn stripe_post(
    c: &Client,
    base: &str,
    path: &str,
    idem: Option<&str>,
    form: &[(&str, &str)],
) -> Reply {
    let mut req = c.post(format!("{base}{path}")).bearer_auth(SK).form(form);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    reply(req.send().await.expect("request")).await
}

fn pi_form<'a>(pm: &'a str, booking: &'a str, amount: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("amount", amount),
        ("currency", "usd"),
        ("customer", "cus_123"),
        ("payment_method", pm),
        ("off_session", "true"),
        ("confirm", "true"),
        ("capture_method", "manual"),
        ("metadata[booking_id]", booking),
        ("metadata[campaign_id]", "cmp_1"),
    ]
}

async fn duffel(
    c: &Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = c
        .request(method, format!("{base}{path}"))
        .bearer_auth(DUFFEL)
        .header("Duffel-Version", "v2");
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.expect("request")).await
}

fn search_body(origin: &str, destination: &str, date: &str) -> Value {
    json!({"data": {
        "slices": [{"origin": origin, "destination": destination, "departure_date": date}],
        "passengers": [{"type": "adult"}],
        "cabin_class": "economy",
    }})
}

/// Searches a route and returns the offers sorted by total amount.
async fn search(c: &Client, base: &str, origin: &str, destination: &str, date: &str) -> Vec<Value> {
    let req = duffel(
        c,
        base,
        reqwest::Method::POST,
        "/air/offer_requests?return_offers=false",
        Some(search_body(origin, destination, date)),
    )
    .await;
    assert_eq!(req.status, StatusCode::CREATED, "{}", req.body);
    let orq = req.body["data"]["id"].as_str().unwrap().to_string();
    let offers = duffel(
        c,
        base,
        reqwest::Method::GET,
        &format!("/air/offers?offer_request_id={orq}&sort=total_amount"),
        None,
    )
    .await;
    assert_eq!(offers.status, StatusCode::OK, "{}", offers.body);
    offers.body["data"].as_array().unwrap().clone()
}

fn order_body(offer: &Value, booking: &str) -> Value {
    let passengers: Vec<Value> = offer["passengers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            json!({
                "id": p["id"], "type": "adult", "title": "ms",
                "given_name": "Ada", "family_name": "Lovelace", "born_on": "1990-12-10",
                "gender": "f", "email": "ada@example.com", "phone_number": "+442080160508",
                "identity_documents": [{"type": "passport", "unique_identifier": "X1234567",
                    "issuing_country_code": "GB", "expires_on": "2035-01-01"}],
            })
        })
        .collect();
    json!({"data": {
        "type": "instant",
        "selected_offers": [offer["id"]],
        "passengers": passengers,
        "payments": [{"type": "balance", "amount": offer["total_amount"], "currency": offer["total_currency"]}],
        "metadata": {"booking_id": booking},
    }})
}

// ------------------------------------------------------------------------------------------
// Stripe

#[tokio::test]
async fn stripe_idempotent_replay_returns_the_same_payment_intent_and_counts_one() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let form = pi_form("pm_card_visa", "bk_1", "12345");
    let first = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("booking:bk_1:pi"),
        &form,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["status"], "requires_capture");
    assert_eq!(first.body["amount_capturable"], 12345);
    assert_eq!(first.body["metadata"]["booking_id"], "bk_1");
    assert!(first.headers.get("idempotent-replayed").is_none());

    // Same parameters in another order are the same request.
    let mut reordered = form.clone();
    reordered.reverse();
    let again = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("booking:bk_1:pi"),
        &reordered,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.raw, first.raw, "replay is byte for byte");
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_intents_created, 1);
    assert_eq!(counters.payment_intents_by_booking["bk_1"], 1);
    assert_eq!(counters.idempotent_replays, 1);

    // The same key under another API key is a different key.
    let other = c
        .post(format!("{}/v1/payment_intents", sb.base_url))
        .bearer_auth("sk_test_other_account")
        .header("Idempotency-Key", "booking:bk_1:pi")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(sb.sandbox.counters().payment_intents_created, 2);
}

#[tokio::test]
async fn stripe_same_key_with_different_params_is_an_idempotency_error() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let ok = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("k1"),
        &pi_form("pm_card_visa", "bk_2", "1000"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let clash = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("k1"),
        &pi_form("pm_card_visa", "bk_2", "2000"),
    )
    .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
    assert_eq!(clash.body["error"]["type"], "idempotency_error");
    assert_eq!(sb.sandbox.counters().payment_intents_created, 1);
}

#[tokio::test]
async fn stripe_concurrent_same_key_requests_never_create_two_payment_intents() {
    let cfg = SandboxConfig {
        stripe_latency_ms: 300,
        ..SandboxConfig::default()
    };
    let (sb, c) = start(cfg).await;
    let form = pi_form("pm_card_visa", "bk_3", "5000");
    let calls = (0..5).map(|_| {
        stripe_post(
            &c,
            &sb.base_url,
            "/v1/payment_intents",
            Some("booking:bk_3:pi"),
            &form,
        )
    });
    let replies = futures::future::join_all(calls).await;
    let mut ids = std::collections::HashSet::new();
    let mut conflicts = 0;
    for r in &replies {
        match r.status {
            StatusCode::OK => {
                ids.insert(r.body["id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.body["error"]["code"], "idempotency_key_in_use");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "exactly one PaymentIntent id is ever returned"
    );
    assert!(
        conflicts >= 1,
        "requests arriving while the first runs get 409"
    );
    assert_eq!(sb.sandbox.counters().payment_intents_created, 1);

    // After the first finishes, a retry replays it.
    let retry = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("booking:bk_3:pi"),
        &form,
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert!(ids.contains(retry.body["id"].as_str().unwrap()));
}

#[tokio::test]
async fn capture_is_only_allowed_from_requires_capture() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let pi = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        None,
        &pi_form("pm_card_visa", "bk_4", "7000"),
    )
    .await;
    let id = pi.body["id"].as_str().unwrap();

    let captured = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{id}/capture"),
        Some("booking:bk_4:capture"),
        &[],
    )
    .await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.body);
    assert_eq!(captured.body["status"], "succeeded");
    assert_eq!(captured.body["amount_received"], 7000);

    // A retried capture with the same key replays; a fresh capture is refused.
    let replay = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{id}/capture"),
        Some("booking:bk_4:capture"),
        &[],
    )
    .await;
    assert_eq!(replay.status, StatusCode::OK);
    let twice = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{id}/capture"),
        None,
        &[],
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        twice.body["error"]["code"],
        "payment_intent_unexpected_state"
    );

    // A succeeded intent cannot be canceled either.
    let cancel = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{id}/cancel"),
        None,
        &[],
    )
    .await;
    assert_eq!(cancel.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        cancel.body["error"]["code"],
        "payment_intent_unexpected_state"
    );

    // A held intent can be canceled, and then not captured.
    let held = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        None,
        &pi_form("pm_card_visa", "bk_5", "7000"),
    )
    .await;
    let held_id = held.body["id"].as_str().unwrap();
    let voided = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{held_id}/cancel"),
        None,
        &[("cancellation_reason", "abandoned")],
    )
    .await;
    assert_eq!(voided.body["status"], "canceled");
    let late = stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{held_id}/capture"),
        None,
        &[],
    )
    .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);

    let unknown = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents/pi_nope/capture",
        None,
        &[],
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "resource_missing");

    let counters = sb.sandbox.counters();
    assert_eq!(counters.captures, 1);
    assert_eq!(counters.cancels, 1);
}

#[tokio::test]
async fn declined_card_is_a_402_card_error_carrying_the_payment_intent() {
    let (sb, c) = start(SandboxConfig::default()).await;
    for (pm, code, decline) in [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            "insufficient_funds",
        ),
        (
            "pm_card_authenticationRequired",
            "authentication_required",
            "authentication_required",
        ),
    ] {
        let r = stripe_post(
            &c,
            &sb.base_url,
            "/v1/payment_intents",
            Some(pm),
            &pi_form(pm, "bk_6", "9000"),
        )
        .await;
        assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{pm}");
        let err = &r.body["error"];
        assert_eq!(err["type"], "card_error");
        assert_eq!(err["code"], code);
        assert_eq!(err["decline_code"], decline);
        // Off session, the intent falls back to requires_payment_method (no 3DS possible).
        assert_eq!(err["payment_intent"]["status"], "requires_payment_method");
        assert_eq!(err["payment_intent"]["last_payment_error"]["code"], code);
        // A retry with the same key replays the decline; nothing new is created.
        let again = stripe_post(
            &c,
            &sb.base_url,
            "/v1/payment_intents",
            Some(pm),
            &pi_form(pm, "bk_6", "9000"),
        )
        .await;
        assert_eq!(again.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(again.raw, r.raw);
    }
    assert_eq!(sb.sandbox.counters().payment_intents_created, 3);
}

#[tokio::test]
async fn refunds_are_limited_to_what_was_captured() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let pi = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        None,
        &pi_form("pm_card_visa", "bk_7", "10000"),
    )
    .await;
    let id = pi.body["id"].as_str().unwrap().to_string();
    let early = stripe_post(
        &c,
        &sb.base_url,
        "/v1/refunds",
        None,
        &[("payment_intent", &id)],
    )
    .await;
    assert_eq!(
        early.status,
        StatusCode::BAD_REQUEST,
        "an uncaptured hold is voided, not refunded"
    );
    stripe_post(
        &c,
        &sb.base_url,
        &format!("/v1/payment_intents/{id}/capture"),
        None,
        &[],
    )
    .await;

    let part = stripe_post(
        &c,
        &sb.base_url,
        "/v1/refunds",
        Some("booking:bk_7:refund"),
        &[
            ("payment_intent", &id),
            ("amount", "4000"),
            ("reason", "requested_by_customer"),
        ],
    )
    .await;
    assert_eq!(part.status, StatusCode::OK, "{}", part.body);
    assert_eq!(part.body["object"], "refund");
    assert_eq!(part.body["status"], "succeeded");
    let too_much = stripe_post(
        &c,
        &sb.base_url,
        "/v1/refunds",
        None,
        &[("payment_intent", &id), ("amount", "6001")],
    )
    .await;
    assert_eq!(too_much.status, StatusCode::BAD_REQUEST);
    let rest = stripe_post(
        &c,
        &sb.base_url,
        "/v1/refunds",
        None,
        &[("payment_intent", &id)],
    )
    .await;
    assert_eq!(rest.body["amount"], 6000);

    let fetched = reply(
        c.get(format!(
            "{}/v1/refunds/{}",
            sb.base_url,
            part.body["id"].as_str().unwrap()
        ))
        .bearer_auth(SK)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(fetched.body, part.body);
    let counters = sb.sandbox.counters();
    assert_eq!(counters.refunds_by_payment_intent[&id], 2);
    assert_eq!(counters.refunded_amount_by_payment_intent[&id], 10000);
}

#[tokio::test]
async fn payment_intent_carries_every_field_async_stripe_requires() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let pi = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        None,
        &pi_form("pm_card_visa", "bk_8", "100"),
    )
    .await;
    let fetched = reply(
        c.get(format!(
            "{}/v1/payment_intents/{}",
            sb.base_url,
            pi.body["id"].as_str().unwrap()
        ))
        .bearer_auth(SK)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(fetched.body, pi.body);
    let obj = fetched.body.as_object().unwrap();
    for required in [
        "id",
        "amount",
        "amount_capturable",
        "amount_received",
        "capture_method",
        "confirmation_method",
        "created",
        "currency",
        "livemode",
        "metadata",
        "payment_method_types",
        "status",
    ] {
        assert!(
            obj.get(required).is_some_and(|v| !v.is_null()),
            "{required} must be set"
        );
    }
    for nullable in [
        "latest_charge",
        "last_payment_error",
        "cancellation_reason",
        "client_secret",
        "description",
        "next_action",
        "on_behalf_of",
        "receipt_email",
        "setup_future_usage",
        "statement_descriptor",
        "transfer_data",
        "transfer_group",
        "application",
        "application_fee_amount",
        "canceled_at",
        "review",
        "shipping",
        "processing",
        "payment_method_options",
        "payment_method_configuration_details",
        "automatic_payment_methods",
        "amount_details",
        "invoice",
        "source",
        "statement_descriptor_suffix",
        "customer",
        "payment_method",
    ] {
        assert!(obj.contains_key(nullable), "{nullable} must be present");
    }
    assert_eq!(obj["object"], "payment_intent");
}

// ------------------------------------------------------------------------------------------
// Stripe: an account erasure's card detaches and customer deletion

/// Every field of async-stripe-shared 1.0.0-rc.10's `PaymentMethod` (`type_` is `type`), and
/// `object`.
const PAYMENT_METHOD_KEYS: [&str; 70] = [
    "acss_debit",
    "affirm",
    "afterpay_clearpay",
    "alipay",
    "allow_redisplay",
    "alma",
    "amazon_pay",
    "au_becs_debit",
    "bacs_debit",
    "bancontact",
    "billie",
    "billing_details",
    "bizum",
    "blik",
    "boleto",
    "card",
    "card_present",
    "cashapp",
    "created",
    "crypto",
    "custom",
    "customer",
    "customer_account",
    "customer_balance",
    "eps",
    "fpx",
    "giropay",
    "grabpay",
    "id",
    "ideal",
    "interac_present",
    "kakao_pay",
    "klarna",
    "konbini",
    "kr_card",
    "link",
    "livemode",
    "mb_way",
    "metadata",
    "mobilepay",
    "multibanco",
    "naver_pay",
    "nz_bank_account",
    "object",
    "oxxo",
    "p24",
    "pay_by_bank",
    "payco",
    "paynow",
    "paypal",
    "paypay",
    "payto",
    "pix",
    "promptpay",
    "radar_options",
    "revolut_pay",
    "samsung_pay",
    "satispay",
    "scalapay",
    "sepa_debit",
    "sequra",
    "sofort",
    "sunbit",
    "swish",
    "twint",
    "type",
    "upi",
    "us_bank_account",
    "wechat_pay",
    "zip",
];

/// Every field of rc.10's `Customer`, and `object`.
const CUSTOMER_KEYS: [&str; 31] = [
    "address",
    "balance",
    "business_name",
    "cash_balance",
    "created",
    "currency",
    "customer_account",
    "default_source",
    "delinquent",
    "description",
    "discount",
    "email",
    "id",
    "individual_name",
    "invoice_credit_balance",
    "invoice_prefix",
    "invoice_settings",
    "livemode",
    "metadata",
    "name",
    "next_invoice_sequence",
    "object",
    "phone",
    "preferred_locales",
    "shipping",
    "sources",
    "subscriptions",
    "tax",
    "tax_exempt",
    "tax_ids",
    "test_clock",
];

/// The documented wording of Stripe's refusal to detach a card attached to no customer.
const NOT_ATTACHED: &str =
    "The payment method you provided is not attached to a customer so detachment is impossible.";

async fn stripe_delete(c: &Client, base: &str, path: &str, idem: Option<&str>) -> Reply {
    let mut req = c.delete(format!("{base}{path}")).bearer_auth(SK);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    reply(req.send().await.expect("request")).await
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// `(status, type, code, param, message)` of a Stripe error reply.
fn stripe_error(r: &Reply) -> (StatusCode, Value, Value, Value, String) {
    let e = &r.body["error"];
    (
        r.status,
        e["type"].clone(),
        e["code"].clone(),
        e["param"].clone(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The next delivered Stripe event, its signature checked with the fleet's verifier.
async fn next_stripe_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<common::Delivery>,
) -> Value {
    let (path, headers, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(path, "stripe");
    let sig = headers["stripe-signature"].to_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(verify_signature_header(sig, "whsec_test", &body, now, 300));
    serde_json::from_slice(&body).unwrap()
}

/// A PaymentIntent for `booking` charging `pm` of `customer` (as the booking saga sends it).
async fn charge(c: &Client, base: &str, customer: &str, pm: &str, booking: &str) -> Reply {
    let mut form = pi_form(pm, booking, "5000");
    for (k, v) in form.iter_mut() {
        if *k == "customer" {
            *v = customer;
        }
    }
    stripe_post(c, base, "/v1/payment_intents", None, &form).await
}

/// Stripe documents that an `Idempotency-Key` on a DELETE "has no effect": the first delete
/// answers the `{id, object, deleted}` stub, and every later one, with the same key, another
/// key or none, is Stripe's 404 `resource_missing` — never a replayed 200 — while the customer
/// is deleted and counted exactly once.
#[tokio::test]
async fn deleting_a_customer_answers_the_deleted_stub_once_and_every_retry_is_resource_missing() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let cus = "cus_erase1";
    let path = format!("/v1/customers/{cus}");
    assert!(!sb.sandbox.stripe_customer_deleted(cus));

    let deleted = stripe_delete(&c, &base, &path, Some("erasure:1:customer")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(
        deleted.body,
        json!({"id": cus, "object": "customer", "deleted": true}),
        "the documented stub, key for key (rc.10's DeletedCustomer)"
    );
    assert!(deleted.headers.get("idempotent-replayed").is_none());
    assert!(sb.sandbox.stripe_customer_deleted(cus));
    assert!(!sb.sandbox.stripe_customer_deleted("cus_other"));

    for key in [
        Some("erasure:1:customer"),
        Some("erasure:1:customer:retry"),
        None,
    ] {
        let again = stripe_delete(&c, &base, &path, key).await;
        assert_eq!(
            stripe_error(&again),
            (
                StatusCode::NOT_FOUND,
                json!("invalid_request_error"),
                json!("resource_missing"),
                json!("id"),
                format!("No such customer: '{cus}'"),
            ),
            "key {key:?}"
        );
        assert!(
            again.headers.get("idempotent-replayed").is_none(),
            "a DELETE is never replayed (key {key:?})"
        );
    }

    // Not a customer id at all: the same 404; unauthenticated: 401 before anything.
    let unknown = stripe_delete(&c, &base, "/v1/customers/nope", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["message"], "No such customer: 'nope'");
    let anonymous = reply(
        c.delete(format!("{base}/v1/customers/cus_erase2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(!sb.sandbox.stripe_customer_deleted("cus_erase2"));

    let counters = sb.sandbox.counters();
    assert_eq!(counters.customers_deleted, 1);
    assert_eq!(counters.idempotent_replays, 0);
}

/// A detach answers the complete PaymentMethod (every field of rc.10's struct) with
/// `customer: null`; the same key replays it byte for byte; a second detach under another key
/// (or none) is Stripe's 400 "not attached … detachment is impossible" with no code, which is
/// not stored under its key; an id that is not `pm_…` is 404 `resource_missing`. The card is
/// detached and counted once.
#[tokio::test]
async fn detaching_a_card_answers_it_without_customer_replays_its_key_and_refuses_a_second_detach()
{
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let pm = "pm_card_visa__erase1";
    let cus = "cus_erase1";
    // The saga charged the card for this customer once, so the sandbox knows whose it is.
    let pi = charge(&c, &base, cus, pm, "bk_erase1").await;
    assert_eq!(pi.status, StatusCode::OK, "{}", pi.body);
    let path = format!("/v1/payment_methods/{pm}/detach");

    let detached = stripe_post(&c, &base, &path, Some("erasure:1:card:1"), &[]).await;
    assert_eq!(detached.status, StatusCode::OK, "{}", detached.body);
    let body = &detached.body;
    assert_eq!(sorted_keys(body), PAYMENT_METHOD_KEYS, "every rc.10 field");
    assert_eq!(body["id"], pm);
    assert_eq!(body["object"], "payment_method");
    assert_eq!(body["type"], "card");
    assert_eq!(body["customer"], Value::Null);
    assert_eq!(body["livemode"], false);
    assert!(body["created"].is_i64());
    for required in ["brand", "exp_month", "exp_year", "funding", "last4"] {
        assert!(!body["card"][required].is_null(), "card.{required}");
    }
    assert_eq!(body["card"]["last4"], "4242");
    assert_eq!(
        sorted_keys(&body["billing_details"]),
        ["address", "email", "name", "phone", "tax_id"]
    );
    assert!(sb.sandbox.stripe_payment_method_detached(pm));
    assert_eq!(
        sb.sandbox.stripe_payment_method_detached_from(pm),
        Some(Some(cus.to_owned()))
    );

    let replay = stripe_post(&c, &base, &path, Some("erasure:1:card:1"), &[]).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.raw, detached.raw, "replay is byte for byte");
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    // The same key with other parameters is an idempotency error, not a second detach.
    let clash = stripe_post(
        &c,
        &base,
        &path,
        Some("erasure:1:card:1"),
        &[("expand[]", "customer")],
    )
    .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
    assert_eq!(clash.body["error"]["type"], "idempotency_error");

    for key in [
        Some("erasure:1:card:1:again"),
        Some("erasure:1:card:1:again"),
        None,
    ] {
        let again = stripe_post(&c, &base, &path, key, &[]).await;
        assert_eq!(
            stripe_error(&again),
            (
                StatusCode::BAD_REQUEST,
                json!("invalid_request_error"),
                Value::Null,
                Value::Null,
                NOT_ATTACHED.to_owned(),
            ),
            "key {key:?}"
        );
        assert!(
            again.headers.get("idempotent-replayed").is_none(),
            "the refusal is not stored under its key"
        );
    }

    // Reading the card shows it detached; an id that is not a PaymentMethod is a 404.
    let read = reply(
        c.get(format!("{base}/v1/payment_methods/{pm}"))
            .bearer_auth(SK)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["customer"], Value::Null);
    assert_eq!(sorted_keys(&read.body), PAYMENT_METHOD_KEYS);
    let unknown = stripe_post(&c, &base, "/v1/payment_methods/card_1/detach", None, &[]).await;
    assert_eq!(
        stripe_error(&unknown),
        (
            StatusCode::NOT_FOUND,
            json!("invalid_request_error"),
            json!("resource_missing"),
            json!("payment_method"),
            "No such PaymentMethod: 'card_1'".to_owned(),
        )
    );

    // A card no PaymentIntent named detaches too; the sandbox does not know its customer.
    let stranger = stripe_post(
        &c,
        &base,
        "/v1/payment_methods/pm_never_charged/detach",
        None,
        &[],
    )
    .await;
    assert_eq!(stranger.status, StatusCode::OK, "{}", stranger.body);
    assert_eq!(
        sb.sandbox
            .stripe_payment_method_detached_from("pm_never_charged"),
        Some(None)
    );

    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_methods_detached, 2);
    assert_eq!(counters.idempotent_replays, 1);
}

/// After the erasure, a PaymentIntent naming the deleted customer is Stripe's 400
/// `resource_missing` on `customer`, and one charging a detached card (for any customer) is
/// Stripe's 400 for a PaymentMethod that "may not be used again"; neither creates a
/// PaymentIntent, while other customers and cards are charged as before.
#[tokio::test]
async fn a_payment_intent_naming_a_deleted_customer_or_a_detached_card_is_refused_and_creates_nothing(
) {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let (cus, pm) = ("cus_erase3", "pm_card_visa__erase3");
    assert_eq!(
        charge(&c, &base, cus, pm, "bk_e3a").await.status,
        StatusCode::OK
    );
    let detached = stripe_post(
        &c,
        &base,
        &format!("/v1/payment_methods/{pm}/detach"),
        Some("erasure:3:card"),
        &[],
    )
    .await;
    assert_eq!(detached.status, StatusCode::OK);
    let deleted = stripe_delete(&c, &base, &format!("/v1/customers/{cus}"), None).await;
    assert_eq!(deleted.status, StatusCode::OK);

    let deleted_customer = charge(&c, &base, cus, "pm_card_visa__fresh", "bk_e3b").await;
    assert_eq!(
        stripe_error(&deleted_customer),
        (
            StatusCode::BAD_REQUEST,
            json!("invalid_request_error"),
            json!("resource_missing"),
            json!("customer"),
            format!("No such customer: '{cus}'"),
        )
    );
    let detached_card = charge(&c, &base, "cus_someone_else", pm, "bk_e3c").await;
    let (status, error_type, code, param, message) = stripe_error(&detached_card);
    assert_eq!(
        (status, error_type, code, param),
        (
            StatusCode::BAD_REQUEST,
            json!("invalid_request_error"),
            Value::Null,
            Value::Null
        )
    );
    assert!(
        message.contains("was detached from a Customer. It may not be used again."),
        "{message}"
    );
    assert!(detached_card.body["error"].get("payment_intent").is_none());

    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_intents_created, 1);
    assert!(!counters.payment_intents_by_booking.contains_key("bk_e3b"));
    assert!(!counters.payment_intents_by_booking.contains_key("bk_e3c"));
    // Others are untouched.
    let other = charge(&c, &base, "cus_erase4", "pm_card_visa__erase4", "bk_e3d").await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    assert_eq!(other.body["status"], "requires_capture");
}

/// The erasure is announced like every Stripe change: `payment_method.detached` around the
/// card (`customer: null`) with `previous_attributes.customer` and the detach's idempotency
/// key, and `customer.deleted` around the complete Customer as it was (every rc.10 field, no
/// `deleted` key, no name or email kept), its `request.idempotency_key` null (keys have no
/// effect on a DELETE). A replayed detach announces nothing again.
#[tokio::test]
async fn an_erasure_emits_payment_method_detached_with_the_previous_customer_and_customer_deleted_with_the_customer(
) {
    let (url, mut rx) = common::webhook_receiver(0).await;
    let cfg = SandboxConfig {
        webhook: Some(WebhookTarget {
            stripe_url: format!("{url}/stripe"),
            stripe_secret: "whsec_test".into(),
            duffel_url: format!("{url}/duffel"),
            duffel_secret: "duffel_whsec".into(),
        }),
        webhook_backoff_ms: 50,
        ..SandboxConfig::default()
    };
    let (sb, c) = start(cfg).await;
    let base = sb.base_url.clone();
    let (cus, pm) = ("cus_erase5", "pm_card_visa__erase5");
    assert_eq!(
        charge(&c, &base, cus, pm, "bk_e5").await.status,
        StatusCode::OK
    );
    assert_eq!(
        next_stripe_event(&mut rx).await["type"],
        "payment_intent.amount_capturable_updated"
    );

    let detach_path = format!("/v1/payment_methods/{pm}/detach");
    let detached = stripe_post(&c, &base, &detach_path, Some("erasure:5:card"), &[]).await;
    assert_eq!(detached.status, StatusCode::OK);
    let event = next_stripe_event(&mut rx).await;
    assert_eq!(event["type"], "payment_method.detached");
    assert_eq!(event["object"], "event");
    assert_eq!(event["data"]["object"], detached.body);
    assert_eq!(event["data"]["object"]["customer"], Value::Null);
    assert_eq!(
        event["data"]["previous_attributes"],
        json!({"customer": cus})
    );
    assert_eq!(event["request"]["idempotency_key"], "erasure:5:card");
    assert_eq!(
        sorted_keys(&event),
        [
            "api_version",
            "created",
            "data",
            "id",
            "livemode",
            "object",
            "pending_webhooks",
            "request",
            "type"
        ]
    );

    // A replay announces nothing; the delete comes next.
    let replay = stripe_post(&c, &base, &detach_path, Some("erasure:5:card"), &[]).await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let deleted = stripe_delete(
        &c,
        &base,
        &format!("/v1/customers/{cus}"),
        Some("erasure:5"),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let event = next_stripe_event(&mut rx).await;
    assert_eq!(event["type"], "customer.deleted");
    let customer = &event["data"]["object"];
    assert_eq!(sorted_keys(customer), CUSTOMER_KEYS, "every rc.10 field");
    assert_eq!(customer["id"], cus);
    assert_eq!(customer["object"], "customer");
    assert!(customer.get("deleted").is_none(), "the customer as it was");
    assert_eq!(customer["email"], Value::Null);
    assert_eq!(customer["name"], Value::Null);
    assert!(event["data"].get("previous_attributes").is_none());
    assert_eq!(event["request"]["idempotency_key"], Value::Null);
    assert!(event["request"]["id"].as_str().unwrap().starts_with("req_"));

    // Refused retries announce nothing either.
    stripe_delete(
        &c,
        &base,
        &format!("/v1/customers/{cus}"),
        Some("erasure:5"),
    )
    .await;
    stripe_post(&c, &base, &detach_path, Some("erasure:5:card:again"), &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "no further event");
    assert_eq!(sb.sandbox.counters().webhook_events_emitted, 3);
}

/// During a Stripe outage both erasure routes answer the outage's `api_error` before anything
/// is done: nothing is detached or deleted, counted or announced, and no result is kept under
/// the detach's key, so the same key detaches the card once the outage is over.
#[tokio::test]
async fn a_stripe_outage_refuses_the_card_detach_and_the_customer_delete_without_performing_them() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let (cus, pm) = ("cus_erase6", "pm_card_visa__erase6");
    let detach_path = format!("/v1/payment_methods/{pm}/detach");
    let delete_path = format!("/v1/customers/{cus}");
    sb.sandbox
        .set_outage(Provider::Stripe, Duration::from_secs(60), 503);

    let detach = stripe_post(&c, &base, &detach_path, Some("erasure:6:card"), &[]).await;
    let delete = stripe_delete(&c, &base, &delete_path, Some("erasure:6")).await;
    for r in [&detach, &delete] {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.body["error"]["type"], "api_error");
    }
    assert!(!sb.sandbox.stripe_payment_method_detached(pm));
    assert!(!sb.sandbox.stripe_customer_deleted(cus));
    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_methods_detached, 0);
    assert_eq!(counters.customers_deleted, 0);
    assert_eq!(counters.webhook_events_emitted, 0);
    assert_eq!(counters.outage_responses["stripe"], 2);

    sb.sandbox.set_outage(Provider::Stripe, Duration::ZERO, 503);
    let detach = stripe_post(&c, &base, &detach_path, Some("erasure:6:card"), &[]).await;
    assert_eq!(detach.status, StatusCode::OK, "{}", detach.body);
    assert!(detach.headers.get("idempotent-replayed").is_none());
    let delete = stripe_delete(&c, &base, &delete_path, Some("erasure:6")).await;
    assert_eq!(delete.status, StatusCode::OK, "{}", delete.body);
    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_methods_detached, 1);
    assert_eq!(counters.customers_deleted, 1);
}

// ------------------------------------------------------------------------------------------
// Duffel

#[tokio::test]
async fn duffel_fares_are_deterministic_and_sorted_ascending() {
    let (sb, c) = start(SandboxConfig {
        seed: 7,
        ..SandboxConfig::default()
    })
    .await;
    let a = search(&c, &sb.base_url, "LHR", "JFK", "2030-05-01").await;
    let b = search(&c, &sb.base_url, "LHR", "JFK", "2030-05-01").await;
    let prices = |offers: &[Value]| -> Vec<f64> {
        offers
            .iter()
            .map(|o| o["total_amount"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    assert!((3..=5).contains(&a.len()));
    assert_eq!(prices(&a), prices(&b), "same criteria, same fares");
    assert_ne!(a[0]["id"], b[0]["id"], "offer ids are fresh per request");
    let p = prices(&a);
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "sorted ascending: {p:?}"
    );
    let offer = &a[0];
    assert!(offer["id"].as_str().unwrap().starts_with("off_"));
    assert!(offer["passengers"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("pas_"));
    assert!(offer["slices"][0]["segments"][0]["marketing_carrier_flight_number"].is_string());
    assert!(offer["expires_at"].is_string());

    // Another sandbox with the same seed prices the same; another date prices differently.
    let (sb2, _) = start(SandboxConfig {
        seed: 7,
        ..SandboxConfig::default()
    })
    .await;
    assert_eq!(
        prices(&search(&c, &sb2.base_url, "LHR", "JFK", "2030-05-01").await),
        p
    );
    assert_ne!(
        prices(&search(&c, &sb.base_url, "LHR", "JFK", "2030-05-02").await),
        p
    );
}

#[tokio::test]
async fn price_rises_scenario_re_read_returns_a_higher_total() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let offers = search(&c, &sb.base_url, "LHR", "CDG", "2030-06-01").await;
    let offer = &offers[0];
    let searched: f64 = offer["total_amount"].as_str().unwrap().parse().unwrap();
    let reread = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        &format!("/air/offers/{}", offer["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(reread.status, StatusCode::OK);
    let now: f64 = reread.body["data"]["total_amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(now > searched, "{now} > {searched}");

    // Paying the stale search price is refused; the new price books.
    let stale = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(offer, "bk_pr")),
    )
    .await;
    assert_eq!(stale.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        stale.body["errors"][0]["code"],
        "payment_amount_does_not_match_order_amount"
    );
    let ok = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(&reread.body["data"], "bk_pr")),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);

    // offer_gone: the re-read is a 404.
    let gone = search(&c, &sb.base_url, "LHR", "AMS", "2030-06-01").await;
    let r = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        &format!("/air/offers/{}", gone[0]["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["errors"][0]["code"], "offer_no_longer_available");
}

#[tokio::test]
async fn order_created_then_500_creates_exactly_one_order_visible_via_lookup() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let offers = search(&c, &sb.base_url, "LHR", "ZRH", "2030-07-01").await;
    let offer = &offers[0];
    let resp = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(offer, "bk_9")),
    )
    .await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Reconcile by booking metadata and by offer: one order.
    let by_booking = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        "/air/orders?metadata%5Bbooking_id%5D=bk_9",
        None,
    )
    .await;
    let orders = by_booking.body["data"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{}", by_booking.body);
    let by_offer = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        &format!("/air/orders?offer_id={}", offer["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(by_offer.body["data"], by_booking.body["data"]);
    let order = &orders[0];
    assert!(order["id"].as_str().unwrap().starts_with("ord_"));
    assert_eq!(order["booking_reference"].as_str().unwrap().len(), 6);
    assert_eq!(order["total_amount"], offer["total_amount"]);
    let direct = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        &format!("/air/orders/{}", order["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(&direct.body["data"], order);

    // Re-POSTing instead of reconciling cannot book twice.
    let again = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(offer, "bk_9")),
    )
    .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    let counters = sb.sandbox.counters();
    assert_eq!(counters.orders_created, 1);
    assert_eq!(counters.orders_by_booking["bk_9"], 1);
    assert_eq!(counters.order_attempts, 2);

    let none = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::GET,
        "/air/orders?metadata%5Bbooking_id%5D=bk_other",
        None,
    )
    .await;
    assert_eq!(none.body["data"], json!([]));
}

#[tokio::test]
async fn second_order_for_the_same_offer_is_refused() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let offers = search(&c, &sb.base_url, "LHR", "JFK", "2030-08-01").await;
    let first = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(&offers[0], "bk_10")),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let second = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(&offers[0], "bk_10")),
    )
    .await;
    assert_eq!(second.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        second.body["errors"][0]["code"],
        "order_creation_already_attempted"
    );
    assert_eq!(
        sb.sandbox.counters().orders_by_offer[offers[0]["id"].as_str().unwrap()],
        1
    );

    // Cancel it: quote, confirm once, the second confirm is already_cancelled.
    let order_id = first.body["data"]["id"].as_str().unwrap();
    let quote = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/order_cancellations",
        Some(json!({"data": {"order_id": order_id}})),
    )
    .await;
    assert_eq!(quote.status, StatusCode::CREATED);
    assert!(quote.body["data"]["confirmed_at"].is_null());
    let path = format!(
        "/air/order_cancellations/{}/actions/confirm",
        quote.body["data"]["id"].as_str().unwrap()
    );
    let confirmed = duffel(&c, &sb.base_url, reqwest::Method::POST, &path, None).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert!(confirmed.body["data"]["confirmed_at"].is_string());
    let twice = duffel(&c, &sb.base_url, reqwest::Method::POST, &path, None).await;
    assert_eq!(twice.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(twice.body["errors"][0]["code"], "already_cancelled");
}

#[tokio::test]
async fn failing_order_scenarios_refuse_with_duffel_codes_and_create_nothing() {
    let (sb, c) = start(SandboxConfig::default()).await;
    for (dest, status, code) in [
        (
            "DUB",
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_balance",
        ),
        ("MAD", StatusCode::UNPROCESSABLE_ENTITY, "price_changed"),
        (
            "AMS",
            StatusCode::UNPROCESSABLE_ENTITY,
            "offer_no_longer_available",
        ),
        (
            "BCN",
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
        ),
    ] {
        let offers = search(&c, &sb.base_url, "LHR", dest, "2030-09-01").await;
        let r = duffel(
            &c,
            &sb.base_url,
            reqwest::Method::POST,
            "/air/orders",
            Some(order_body(&offers[0], "bk_f")),
        )
        .await;
        assert_eq!(r.status, status, "{dest}: {}", r.body);
        assert_eq!(r.body["errors"][0]["code"], code);
    }
    assert_eq!(sb.sandbox.counters().orders_created, 0);
}

#[tokio::test]
async fn rate_limited_route_answers_429_with_a_reset_date_in_the_future() {
    let (sb, c) = start(SandboxConfig::default()).await;
    sb.sandbox.set_scenario("LHR-JFK", Scenario::RateLimited);
    let body = search_body("LHR", "JFK", "2030-10-01");
    for _ in 0..2 {
        let r = duffel(
            &c,
            &sb.base_url,
            reqwest::Method::POST,
            "/air/offer_requests",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.body["errors"][0]["type"], "rate_limit_error");
        assert_eq!(r.headers["ratelimit-remaining"], "0");
        assert!(r.headers.contains_key("ratelimit-limit"));
        let reset = r.headers["ratelimit-reset"].to_str().unwrap();
        let reset = chrono::DateTime::parse_from_rfc2822(reset).expect("an HTTP date");
        assert!(reset > chrono::Utc::now(), "reset {reset} is in the future");
    }
    let ok = duffel(
        &c,
        &sb.base_url,
        reqwest::Method::POST,
        "/air/offer_requests",
        Some(body),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(sb.sandbox.counters().rate_limited_responses, 2);

    // The admin endpoint sets scenarios too.
    let set = c
        .post(format!("{}/_sandbox/scenarios", sb.base_url))
        .json(&json!({"route": "lhr-jfk", "scenario": "normal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(sb.sandbox.scenario("LHR-JFK"), Scenario::Normal);
}

// ------------------------------------------------------------------------------------------
// Resend

#[tokio::test]
async fn resend_idempotency_key_sends_once() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let email = json!({"from": "Parker Flight <noreply@parkerflight.test>", "to": ["t@example.com"],
        "subject": "Your trip is booked", "html": "<p>Booked</p>", "text": "Booked"});
    let send = |body: Value| {
        c.post(format!("{}/emails", sb.base_url))
            .bearer_auth(RESEND)
            .header("Idempotency-Key", "booking-confirmed/bk_11")
            .json(&body)
            .send()
    };
    let first = reply(send(email.clone()).await.unwrap()).await;
    assert_eq!(first.status, StatusCode::OK);
    let id = first.body["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let second = reply(send(email.clone()).await.unwrap()).await;
    assert_eq!(second.body["id"], id.as_str());
    let mut changed = email.clone();
    changed["subject"] = json!("Something else");
    let clash = reply(send(changed).await.unwrap()).await;
    assert_eq!(clash.status, StatusCode::CONFLICT);
    assert_eq!(clash.body["name"], "invalid_idempotent_request");

    let counters = sb.sandbox.counters();
    assert_eq!(counters.emails_sent, 1);
    assert_eq!(
        counters.emails_by_idempotency_key["booking-confirmed/bk_11"],
        1
    );

    // Served as JSON too.
    let served: sandbox::Counters = c
        .get(format!("{}/_sandbox/counters", sb.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, sb.sandbox.counters());
}

// ------------------------------------------------------------------------------------------
// Webhooks and auth

#[tokio::test]
async fn stripe_webhook_is_delivered_with_a_signature_that_verifies() {
    let (url, mut rx) = common::webhook_receiver(1).await;
    let cfg = SandboxConfig {
        webhook: Some(WebhookTarget {
            stripe_url: format!("{url}/stripe"),
            stripe_secret: "whsec_test".into(),
            duffel_url: format!("{url}/duffel"),
            duffel_secret: "duffel_whsec".into(),
        }),
        webhook_backoff_ms: 50,
        ..SandboxConfig::default()
    };
    let (sb, c) = start(cfg).await;
    let pi = stripe_post(
        &c,
        &sb.base_url,
        "/v1/payment_intents",
        Some("wh"),
        &pi_form("pm_card_visa", "bk_12", "4200"),
    )
    .await;

    let (path, headers, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(path, "stripe");
    let sig = headers["stripe-signature"].to_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(verify_signature_header(sig, "whsec_test", &body, now, 300));
    assert!(!verify_signature_header(
        sig,
        "whsec_wrong",
        &body,
        now,
        300
    ));
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "payment_intent.amount_capturable_updated");
    assert_eq!(event["livemode"], false);
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["data"]["object"]["id"], pi.body["id"]);
    assert_eq!(event["request"]["idempotency_key"], "wh");

    // The admin endpoint emits arbitrary signed Duffel events.
    let emitted = c
        .post(format!("{}/_sandbox/webhooks/duffel", sb.base_url))
        .json(&json!({"type": "order.airline_initiated_change_detected", "object": {"id": "oac_1", "order_id": "ord_1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(emitted.status(), StatusCode::OK);
    let (path, headers, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(path, "duffel");
    let sig = headers["x-duffel-signature"].to_str().unwrap();
    assert!(verify_signature_header(
        sig,
        "duffel_whsec",
        &body,
        chrono::Utc::now().timestamp(),
        300
    ));
    // Top level, as Duffel delivers it; only API responses are wrapped in `data`.
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "order.airline_initiated_change_detected");
    assert!(event["id"].as_str().unwrap().starts_with("wev_"));
    assert_eq!(event["live_mode"], false);
    assert_eq!(event["api_version"], "v2");
    assert_eq!(event["data"]["object"]["order_id"], "ord_1");
    assert_eq!(event["idempotency_key"], "oac_1", "the related object's id");
    assert!(event["data"].get("type").is_none());

    // The receiver hands events over before its 200 reaches the sandbox: wait for the count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sb.sandbox.counters().webhooks_delivered < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = sb.sandbox.counters();
    assert_eq!(counters.webhooks_delivered, 2);
    assert_eq!(
        counters.webhook_attempt_failures, 1,
        "the first attempt was refused and retried"
    );
    assert_eq!(counters.webhooks_failed, 0);
}

#[tokio::test]
async fn missing_auth_is_rejected_with_401() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let stripe = reply(
        c.post(format!("{}/v1/payment_intents", sb.base_url))
            .form(&pi_form("pm_card_visa", "b", "100"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stripe.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stripe.body["error"]["type"], "invalid_request_error");
    let stripe_get = c
        .get(format!("{}/v1/payment_intents/pi_x", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(stripe_get.status(), StatusCode::UNAUTHORIZED);

    let duffel_noauth = reply(
        c.post(format!("{}/air/offer_requests", sb.base_url))
            .header("Duffel-Version", "v2")
            .json(&search_body("LHR", "JFK", "2030-01-01"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(duffel_noauth.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        duffel_noauth.body["errors"][0]["type"],
        "authentication_error"
    );
    let duffel_noversion = c
        .post(format!("{}/air/offer_requests", sb.base_url))
        .bearer_auth(DUFFEL)
        .json(&search_body("LHR", "JFK", "2030-01-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(duffel_noversion.status(), StatusCode::BAD_REQUEST);

    let resend = reply(
        c.post(format!("{}/emails", sb.base_url))
            .json(&json!({"from": "a@b.c", "to": "d@e.f", "subject": "s", "text": "t"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resend.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resend.body["name"], "missing_api_key");

    let counters = sb.sandbox.counters();
    assert_eq!(
        counters.payment_intents_created + counters.offer_requests + counters.emails_sent,
        0
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn provider_latency_delays_every_stripe_and_duffel_call_but_not_email_or_admin() {
    let (sb, c) = start(SandboxConfig {
        provider_latency: Some("300ms..400ms".parse().unwrap()),
        ..SandboxConfig::default()
    })
    .await;
    let base = sb.base_url.clone();

    let t = std::time::Instant::now();
    let offers = search(&c, &base, "LHR", "JFK", "2031-03-04").await;
    // Two Duffel calls, each at least 300 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert!(!offers.is_empty());

    let t = std::time::Instant::now();
    let pi = stripe_post(
        &c,
        &base,
        "/v1/payment_intents",
        Some("lat-1"),
        &pi_form("pm_card_visa", "bk_lat", "1000"),
    )
    .await;
    assert_eq!(pi.status, StatusCode::OK, "{}", pi.body);
    let stripe = t.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(1500)).contains(&stripe),
        "{stripe:?}"
    );

    // Email and the admin endpoints answer at once.
    let t = std::time::Instant::now();
    let sent = c
        .post(format!("{base}/emails"))
        .bearer_auth(RESEND)
        .header("Idempotency-Key", "lat/1")
        .json(
            &json!({"from": "a@parkerflight.test", "to": ["t@example.com"],
            "subject": "s", "html": "<p>h</p>", "text": "t"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    c.get(format!("{base}/_sandbox/counters"))
        .send()
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

// ------------------------------------------------------------------------------------------
// Outages

/// `POST /_sandbox/outages` takes a provider down for a time: every API request gets the
/// provider's own server-error shape before anything happens, so a keyed Stripe request made
/// during the outage is not stored and the same key creates the intent once it is over.
#[tokio::test]
async fn a_stripe_outage_answers_api_errors_creates_nothing_and_ends_on_time() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let outage = |body: Value| {
        c.post(format!("{}/_sandbox/outages", sb.base_url))
            .json(&body)
            .send()
    };
    let r = reply(
        outage(json!({"provider": "stripe", "seconds": 1.5, "status": 503}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["down"], true);
    assert_eq!(r.body["status"], 503);

    let form = pi_form("pm_card_visa", "bk_outage", "1000");
    let down = stripe_post(&c, &sb.base_url, "/v1/payment_intents", Some("k1"), &form).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.body["error"]["type"], "api_error", "{:?}", down.body);
    let read = reply(
        c.get(format!("{}/v1/payment_intents/pi_x", sb.base_url))
            .bearer_auth(SK)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
    // Other providers are up.
    let email = json!({"from": "a@parkerflight.test", "to": ["t@example.com"], "subject": "s", "text": "t"});
    let send_email = || {
        c.post(format!("{}/emails", sb.base_url))
            .bearer_auth(RESEND)
            .json(&email)
            .send()
    };
    assert_eq!(send_email().await.unwrap().status(), StatusCode::OK);
    let listed: Value = c
        .get(format!("{}/_sandbox/outages", sb.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["provider"], "stripe");
    assert_eq!(listed[0]["down"], true);
    assert_eq!(listed[1]["down"], false);

    let counters = sb.sandbox.counters();
    assert_eq!(counters.payment_intents_created, 0);
    assert_eq!(counters.outage_responses["stripe"], 2);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let up = stripe_post(&c, &sb.base_url, "/v1/payment_intents", Some("k1"), &form).await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.body);
    assert_eq!(up.body["status"], "requires_capture");
    assert!(up.headers.get("idempotent-replayed").is_none());
    assert_eq!(sb.sandbox.counters().payment_intents_created, 1);

    // Duffel and Resend go down the same way, each in its own error shape; 0 s ends it.
    outage(json!({"provider": "duffel", "seconds": 60}))
        .await
        .unwrap();
    outage(json!({"provider": "resend", "seconds": 60}))
        .await
        .unwrap();
    let search_now = || {
        duffel(
            &c,
            &sb.base_url,
            reqwest::Method::POST,
            "/air/offer_requests",
            Some(search_body("LHR", "JFK", "2027-03-01")),
        )
    };
    let d = search_now().await;
    assert_eq!(d.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(d.body["errors"][0]["type"], "api_error");
    let e = reply(send_email().await.unwrap()).await;
    assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(e.body["name"], "internal_server_error");
    let ended = reply(
        outage(json!({"provider": "duffel", "seconds": 0}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ended.body["down"], false);
    let d = search_now().await;
    assert_eq!(d.status, StatusCode::CREATED, "{:?}", d.body);

    // Bad requests name what is wrong and change nothing.
    for (body, says) in [
        (
            json!({"provider": "vonage", "seconds": 5}),
            "not one of stripe, duffel, resend, twilio",
        ),
        (
            json!({"provider": "stripe", "seconds": -1}),
            "seconds must be 0",
        ),
        (
            json!({"provider": "stripe", "seconds": 1e9}),
            "seconds must be 0",
        ),
        (
            json!({"provider": "stripe", "seconds": 5, "status": 404}),
            "status must be one of",
        ),
        (json!({"provider": "stripe", "secs": 5}), "expected"),
    ] {
        let r = reply(outage(body.clone()).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    assert!(sb
        .sandbox
        .outage(sandbox::scenarios::Provider::Stripe)
        .is_none());
}

// ------------------------------------------------------------------------------------------
// Airline-initiated changes

/// Searches `origin`-`destination`, books the cheapest offer for `booking` and returns the order.
async fn book(c: &Client, base: &str, origin: &str, destination: &str, booking: &str) -> Value {
    let offers = search(c, base, origin, destination, "2031-05-01").await;
    let order = duffel(
        c,
        base,
        reqwest::Method::POST,
        "/air/orders",
        Some(order_body(&offers[0], booking)),
    )
    .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);
    order.body["data"].clone()
}

/// `POST /_sandbox/orders/{order_id}/airline_change` with `body`.
async fn airline_change(c: &Client, base: &str, order_id: &str, body: Value) -> Reply {
    reply(
        c.post(format!("{base}/_sandbox/orders/{order_id}/airline_change"))
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// `GET /air/airline_initiated_changes?order_id=…`, asserting a 200; the `data` list.
async fn list_airline_changes(c: &Client, base: &str, order_id: &str) -> Value {
    let r = duffel(
        c,
        base,
        reqwest::Method::GET,
        &format!("/air/airline_initiated_changes?order_id={order_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["data"].clone()
}

fn accept_path(aic_id: &str) -> String {
    format!("/air/airline_initiated_changes/{aic_id}/actions/accept")
}

fn local_time(v: &Value) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(v.as_str().expect("a time"), "%Y-%m-%dT%H:%M:%S")
        .expect("Duffel's local time")
}

/// The first (and only) error of a Duffel error body: (status, type, code).
fn duffel_error(r: &Reply) -> (StatusCode, String, String) {
    let e = &r.body["errors"][0];
    (
        r.status,
        e["type"].as_str().unwrap_or_default().to_owned(),
        e["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn an_airline_change_moves_the_orders_times_is_listed_delivered_once_and_accepted_once() {
    let (url, mut rx) = common::webhook_receiver(0).await;
    let (sb, c) = start(SandboxConfig {
        webhook: Some(WebhookTarget {
            stripe_url: format!("{url}/stripe"),
            stripe_secret: "whsec_test".into(),
            duffel_url: format!("{url}/duffel"),
            duffel_secret: "duffel_whsec".into(),
        }),
        webhook_backoff_ms: 50,
        ..SandboxConfig::default()
    })
    .await;
    let base = sb.base_url.clone();
    let order = book(&c, &base, "LHR", "JFK", "bk_aic").await;
    let order_id = order["id"].as_str().unwrap();
    let before = order["slices"].clone();

    // The airline moves the flights 90 minutes later.
    let created = airline_change(&c, &base, order_id, json!({"shift_minutes": 90})).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let aic = created.body.clone();
    let aic_id = aic["id"].as_str().unwrap().to_owned();
    assert!(aic_id.starts_with("aic_"), "{aic_id}");
    let keys: Vec<&str> = aic
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut documented = vec![
        "id",
        "order_id",
        "action_taken",
        "action_taken_at",
        "added",
        "removed",
        "available_actions",
        "created_at",
        "updated_at",
        "travel_agent_ticket",
    ];
    documented.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, documented, "only Duffel's documented fields");
    assert_eq!(aic["order_id"], order_id);
    assert!(aic["action_taken"].is_null() && aic["action_taken_at"].is_null());
    assert!(aic["travel_agent_ticket"].is_null());
    assert_eq!(
        aic["available_actions"],
        json!(["accept", "cancel", "change"])
    );
    assert_eq!(aic["created_at"], aic["updated_at"]);
    assert_eq!(
        aic["removed"], before,
        "removed: the order's slices as it served them"
    );

    // Listed for the order, oldest first, exactly as created.
    let listed = list_airline_changes(&c, &base, order_id).await;
    assert_eq!(listed, json!([aic.clone()]));
    let added = listed[0]["added"].clone();
    let (old, new) = (before.as_array().unwrap(), added.as_array().unwrap());
    assert_eq!(old.len(), new.len());
    for (old, new) in old.iter().zip(new) {
        assert_ne!(old["id"], new["id"]);
        assert!(new["id"].as_str().unwrap().starts_with("sli_"));
        assert_eq!(old["origin"], new["origin"]);
        assert_eq!(old["destination"], new["destination"]);
        assert_eq!(old["duration"], new["duration"]);
        let (old_segs, new_segs) = (
            old["segments"].as_array().unwrap(),
            new["segments"].as_array().unwrap(),
        );
        assert_eq!(old_segs.len(), new_segs.len());
        for (o, n) in old_segs.iter().zip(new_segs) {
            assert_ne!(o["id"], n["id"]);
            assert!(n["id"].as_str().unwrap().starts_with("seg_"));
            for field in ["departing_at", "arriving_at"] {
                assert_eq!(
                    local_time(&n[field]) - local_time(&o[field]),
                    chrono::Duration::minutes(90),
                    "{field}"
                );
            }
            assert_eq!(
                o["marketing_carrier_flight_number"],
                n["marketing_carrier_flight_number"]
            );
        }
    }

    // The order now flies the new times and lists the change.
    let now = duffel(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/air/orders/{order_id}"),
        None,
    )
    .await;
    assert_eq!(now.body["data"]["slices"], added);
    assert_eq!(
        now.body["data"]["airline_initiated_changes"],
        json!([aic.clone()])
    );

    // Delivered as Duffel's v2 event: the order in `data.object.id`, the change in `aic_id`.
    let mut deliveries = Vec::new();
    let event = loop {
        let (path, headers, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered")
            .unwrap();
        let event: Value = serde_json::from_slice(&body).unwrap();
        deliveries.push(event.clone());
        if event["type"] == "order.airline_initiated_change_detected" {
            assert_eq!(path, "duffel");
            let sig = headers["x-duffel-signature"].to_str().unwrap();
            let t = chrono::Utc::now().timestamp();
            assert!(verify_signature_header(sig, "duffel_whsec", &body, t, 300));
            break event;
        }
    };
    assert!(event["id"].as_str().unwrap().starts_with("wev_"));
    assert_eq!(event["api_version"], "v2");
    assert_eq!(event["live_mode"], false);
    assert_eq!(event["idempotency_key"], aic_id.as_str());
    assert!(event["created_at"].is_string());
    assert!(event["identity_organisation_id"]
        .as_str()
        .unwrap()
        .starts_with("org_"));
    assert_eq!(
        event["data"],
        json!({"object": {"id": order_id, "aic_id": aic_id}})
    );

    // Accepted once; a second accept is refused, not replayed (Duffel has no idempotency key).
    let accepted = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &accept_path(&aic_id),
        None,
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    let done = &accepted.body["data"];
    assert_eq!(done["action_taken"], "accepted");
    assert!(done["action_taken_at"].is_string());
    assert_eq!(done["updated_at"], done["action_taken_at"]);
    assert_eq!(done["available_actions"], json!([]));
    assert_eq!(done["created_at"], aic["created_at"]);
    assert_eq!(done["added"], added);
    let again = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &accept_path(&aic_id),
        None,
    )
    .await;
    assert_eq!(
        duffel_error(&again),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_state_error".into(),
            "airline_initiated_change_already_actioned".into()
        ),
        "{}",
        again.body
    );
    assert_eq!(
        list_airline_changes(&c, &base, order_id).await,
        json!([done])
    );
    let order_now = duffel(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/air/orders/{order_id}"),
        None,
    )
    .await;
    assert_eq!(
        order_now.body["data"]["airline_initiated_changes"],
        json!([done])
    );
    let counters = sb.sandbox.counters();
    assert_eq!(counters.airline_changes_created, 1);
    assert_eq!(counters.airline_change_accepts, 1);
    assert_eq!(
        counters.airline_change_accepts_by_id,
        [(aic_id.clone(), 1)].into_iter().collect()
    );

    // Unknown ids are Duffel's 404; a missing or malformed order_id is a validation error.
    let unknown = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &accept_path("aic_0000000000000000000000"),
        None,
    )
    .await;
    assert_eq!(
        duffel_error(&unknown),
        (
            StatusCode::NOT_FOUND,
            "invalid_request_error".into(),
            "not_found".into()
        )
    );
    for (query, code) in [
        ("", "validation_required"),
        ("?order_id=", "validation_format"),
        ("?order_id=nope", "validation_format"),
        ("?order_id=ord_12%2F3", "validation_format"),
    ] {
        let r = duffel(
            &c,
            &base,
            reqwest::Method::GET,
            &format!("/air/airline_initiated_changes{query}"),
            None,
        )
        .await;
        assert_eq!(
            duffel_error(&r),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error".into(),
                code.into()
            ),
            "{query}: {}",
            r.body
        );
    }
    assert_eq!(
        list_airline_changes(&c, &base, "ord_0000000000000000000000").await,
        json!([]),
        "an unknown order has no changes"
    );

    // Bad asks name what is wrong and change nothing.
    for (body, status, says) in [
        (json!({"shift_minutes": 0}), 400, "shift_minutes"),
        (json!({"shift_minutes": 10_081}), 400, "shift_minutes"),
        (json!({"shift_minutes": -10_081}), 400, "shift_minutes"),
        (json!({"shift_minutes": 1.5}), 400, "shift_minutes"),
        (json!({"shift_minutes": "90"}), 400, "shift_minutes"),
        (json!({}), 400, "shift_minutes"),
        (
            json!({"shift_minutes": 5, "available_actions": ["explode"]}),
            400,
            "available_actions",
        ),
        (
            json!({"shift_minutes": 5, "available_actions": ["accept", "accept"]}),
            400,
            "available_actions",
        ),
        (
            json!({"shift_minutes": 5, "available_actions": "accept"}),
            400,
            "available_actions",
        ),
        (
            json!({"shift_minutes": 5, "deliver": "yes"}),
            400,
            "deliver",
        ),
        (json!({"shift_minutes": 5, "shift": 1}), 400, "\"shift\""),
        (json!([90]), 400, "expected a JSON object"),
    ] {
        let r = airline_change(&c, &base, order_id, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let r = airline_change(
        &c,
        &base,
        "ord_0000000000000000000000",
        json!({"shift_minutes": 5}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(sb.sandbox.counters().airline_changes_created, 1);
    // A change made without delivery is not announced.
    let quiet = airline_change(
        &c,
        &base,
        order_id,
        json!({"shift_minutes": -15, "deliver": false}),
    )
    .await;
    assert_eq!(quiet.status, StatusCode::OK, "{}", quiet.body);
    assert_eq!(
        quiet.body["removed"], added,
        "the second change starts from the first"
    );

    // Exactly two events were delivered (order.created and the one detection), nothing more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sb.sandbox.counters().webhooks_delivered < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok((_, _, body)) = rx.try_recv() {
        deliveries.push(serde_json::from_slice(&body).unwrap());
    }
    let detected = deliveries
        .iter()
        .filter(|e| e["type"] == "order.airline_initiated_change_detected")
        .count();
    assert_eq!(detected, 1, "{deliveries:?}");
    let counters = sb.sandbox.counters();
    assert_eq!(counters.webhooks_delivered, 2);
    assert_eq!(counters.airline_changes_created, 2);
    assert_eq!(counters.airline_change_accepts, 1);
}

#[tokio::test]
async fn cancelling_an_order_marks_its_open_airline_change_cancelled_and_keeps_an_accepted_one() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let order = book(&c, &base, "LHR", "JFK", "bk_aic_cancel").await;
    let order_id = order["id"].as_str().unwrap();

    // Through the handle: one change accepted, a later one left open.
    let first = sb
        .sandbox
        .airline_change(order_id, -45, None, false)
        .expect("changed");
    let first_id = first["id"].as_str().unwrap();
    let accepted = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &accept_path(first_id),
        None,
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    let second = sb
        .sandbox
        .airline_change(
            order_id,
            30,
            Some(vec!["accept".into(), "update".into()]),
            false,
        )
        .expect("changed");
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(second["available_actions"], json!(["accept", "update"]));
    assert_eq!(second["removed"], first["added"]);

    // Cancel the order through Duffel's quote-and-confirm flow.
    let quote = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        "/air/order_cancellations",
        Some(json!({"data": {"order_id": order_id}})),
    )
    .await;
    assert_eq!(quote.status, StatusCode::CREATED, "{}", quote.body);
    let confirmed = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &format!(
            "/air/order_cancellations/{}/actions/confirm",
            quote.body["data"]["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);

    let listed = list_airline_changes(&c, &base, order_id).await;
    assert_eq!(listed[0]["id"], first_id, "oldest first");
    assert_eq!(
        listed[0]["action_taken"], "accepted",
        "an accepted change stays accepted"
    );
    assert_eq!(
        listed[0]["action_taken_at"],
        accepted.body["data"]["action_taken_at"]
    );
    assert_eq!(listed[1]["id"], second_id);
    assert_eq!(listed[1]["action_taken"], "cancelled");
    assert!(listed[1]["action_taken_at"].is_string());
    assert_eq!(listed[1]["updated_at"], listed[1]["action_taken_at"]);
    assert_eq!(listed[1]["available_actions"], json!([]));
    let order_now = duffel(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/air/orders/{order_id}"),
        None,
    )
    .await;
    assert!(order_now.body["data"]["cancelled_at"].is_string());
    assert_eq!(order_now.body["data"]["airline_initiated_changes"], listed);

    // The cancelled change cannot be accepted any more.
    let late = duffel(
        &c,
        &base,
        reqwest::Method::POST,
        &accept_path(second_id),
        None,
    )
    .await;
    assert_eq!(
        duffel_error(&late).2,
        "airline_initiated_change_already_actioned"
    );
    assert!(late.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cancelled"));

    // The handle refuses what the admin route refuses.
    let e = sb
        .sandbox
        .airline_change(order_id, 30, None, false)
        .unwrap_err();
    assert!(e.contains("cancelled"), "{e}");
    let e = sb
        .sandbox
        .airline_change("ord_0000000000000000000000", 30, None, false)
        .unwrap_err();
    assert!(e.starts_with("no order"), "{e}");
    let e = sb
        .sandbox
        .airline_change(order_id, 0, None, false)
        .unwrap_err();
    assert!(e.contains("shift_minutes"), "{e}");
    let e = sb
        .sandbox
        .airline_change(order_id, 5, Some(vec!["refund".into()]), false)
        .unwrap_err();
    assert!(e.contains("available_actions"), "{e}");
    let r = airline_change(&c, &base, order_id, json!({"shift_minutes": 5})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);

    let counters = sb.sandbox.counters();
    assert_eq!(counters.airline_changes_created, 2);
    assert_eq!(counters.airline_change_accepts, 1);
    assert_eq!(
        counters.webhook_events_emitted, 2,
        "order.created and order_cancellation.confirmed only: deliver was false"
    );
}

#[tokio::test]
async fn an_airline_change_offering_update_is_resolved_by_patch_once_and_not_by_accept() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let order = book(&c, &base, "LHR", "JFK", "bk_aic_update").await;
    let order_id = order["id"].as_str().unwrap();
    let created = airline_change(
        &c,
        &base,
        order_id,
        json!({"shift_minutes": 120, "available_actions": ["update"], "deliver": false}),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let aic_id = created.body["id"].as_str().unwrap();
    let path = format!("/air/airline_initiated_changes/{aic_id}");

    // Accept is not among its actions.
    let accept = duffel(&c, &base, reqwest::Method::POST, &accept_path(aic_id), None).await;
    assert_eq!(
        duffel_error(&accept),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error".into(),
            "airline_initiated_change_action_not_available".into()
        ),
        "{}",
        accept.body
    );
    assert!(accept.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("'accept'"));

    // Malformed updates are refused and change nothing.
    for (body, status, code) in [
        (
            json!({"data": {"action_taken": "postponed"}}),
            422,
            "validation_format",
        ),
        (json!({"data": {}}), 422, "validation_required"),
        (
            json!({"action_taken": "accepted"}),
            400,
            "missing_data_param",
        ),
    ] {
        let r = duffel(&c, &base, reqwest::Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        assert_eq!(r.body["errors"][0]["code"], code, "{body}");
    }
    assert!(list_airline_changes(&c, &base, order_id).await[0]["action_taken"].is_null());

    // The update records the action once.
    let patch = |action: &str| {
        duffel(
            &c,
            &base,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"data": {"action_taken": action}})),
        )
    };
    let updated = patch("accepted").await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["data"]["action_taken"], "accepted");
    assert!(updated.body["data"]["action_taken_at"].is_string());
    assert_eq!(updated.body["data"]["available_actions"], json!([]));
    let twice = patch("changed").await;
    assert_eq!(
        duffel_error(&twice).1,
        "invalid_state_error",
        "{}",
        twice.body
    );
    let unknown = duffel(
        &c,
        &base,
        reqwest::Method::PATCH,
        "/air/airline_initiated_changes/aic_0000000000000000000000",
        Some(json!({"data": {"action_taken": "accepted"}})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // A change without `update` cannot be patched.
    let plain = sb
        .sandbox
        .airline_change(order_id, 10, None, false)
        .expect("changed");
    let r = duffel(
        &c,
        &base,
        reqwest::Method::PATCH,
        &format!(
            "/air/airline_initiated_changes/{}",
            plain["id"].as_str().unwrap()
        ),
        Some(json!({"data": {"action_taken": "changed"}})),
    )
    .await;
    assert_eq!(
        duffel_error(&r).2,
        "airline_initiated_change_action_not_available"
    );
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("'update'"));

    let counters = sb.sandbox.counters();
    assert_eq!(counters.airline_change_accepts, 1);
    assert_eq!(counters.airline_change_accepts_by_id[aic_id], 1);
}

#[tokio::test]
async fn a_duffel_outage_and_a_rate_limited_route_refuse_the_airline_change_routes_and_change_nothing(
) {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let order = book(&c, &base, "LHR", "JFK", "bk_aic_outage").await;
    let order_id = order["id"].as_str().unwrap();

    // The same authentication and version checks as every Duffel route.
    let list_path = format!("{base}/air/airline_initiated_changes?order_id={order_id}");
    let no_token = reply(
        c.get(&list_path)
            .header("Duffel-Version", "v2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        no_token.body["errors"][0]["code"],
        "missing_authorization_header"
    );
    let no_version = reply(c.get(&list_path).bearer_auth(DUFFEL).send().await.unwrap()).await;
    assert_eq!(no_version.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        no_version.body["errors"][0]["code"],
        "missing_version_header"
    );

    let outage = |body: Value| {
        c.post(format!("{base}/_sandbox/outages"))
            .json(&body)
            .send()
    };
    let r = outage(json!({"provider": "duffel", "seconds": 60, "status": 503}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The airline changes schedules whatever Duffel's API is doing: the admin route answers.
    let created = airline_change(&c, &base, order_id, json!({"shift_minutes": 60})).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let aic_id = created.body["id"].as_str().unwrap();

    let calls = [
        (
            reqwest::Method::GET,
            format!("/air/airline_initiated_changes?order_id={order_id}"),
            None,
        ),
        (reqwest::Method::POST, accept_path(aic_id), None),
        (
            reqwest::Method::PATCH,
            format!("/air/airline_initiated_changes/{aic_id}"),
            Some(json!({"data": {"action_taken": "accepted"}})),
        ),
    ];
    for (method, path, body) in &calls {
        let r = duffel(&c, &base, method.clone(), path, body.clone()).await;
        assert_eq!(
            duffel_error(&r),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error".into(),
                "internal_server_error".into()
            ),
            "{method} {path}: {}",
            r.body
        );
    }
    let counters = sb.sandbox.counters();
    assert_eq!(counters.outage_responses["duffel"], 3);
    assert_eq!(counters.airline_change_accepts, 0);

    let ended = outage(json!({"provider": "duffel", "seconds": 0}))
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::OK);
    assert!(list_airline_changes(&c, &base, order_id).await[0]["action_taken"].is_null());

    // The order's route plays `rate_limited`: its change requests get the 429s first.
    sb.sandbox.set_scenario("LHR-JFK", Scenario::RateLimited);
    let limited = duffel(&c, &base, reqwest::Method::POST, &accept_path(aic_id), None).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert!(limited.headers.get("ratelimit-reset").is_some());
    let limited = duffel(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/air/airline_initiated_changes?order_id={order_id}"),
        None,
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sb.sandbox.counters().airline_change_accepts, 0);
    let accepted = duffel(&c, &base, reqwest::Method::POST, &accept_path(aic_id), None).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    assert_eq!(accepted.body["data"]["action_taken"], "accepted");
    assert_eq!(sb.sandbox.counters().airline_change_accepts, 1);
}

// ------------------------------------------------------------------------------------------
// Twilio Programmable Messaging

const TWILIO_ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "sandbox_auth_token";
/// Twilio's test-credential sender that "passes all validation".
const TWILIO_FROM: &str = "+15005550006";

fn twilio_url(base: &str, account: &str) -> String {
    format!("{base}/2010-04-01/Accounts/{account}/Messages.json")
}

/// `POST …/Messages.json` with the account's Basic credentials and `form`.
async fn twilio_send(c: &Client, base: &str, form: &[(&str, &str)]) -> Reply {
    reply(
        c.post(twilio_url(base, TWILIO_ACCOUNT))
            .basic_auth(TWILIO_ACCOUNT, Some(TWILIO_TOKEN))
            .form(form)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// `GET …/Messages.json?query` with the account's Basic credentials.
async fn twilio_list(c: &Client, base: &str, query: &[(&str, &str)]) -> Reply {
    reply(
        c.get(twilio_url(base, TWILIO_ACCOUNT))
            .basic_auth(TWILIO_ACCOUNT, Some(TWILIO_TOKEN))
            .query(query)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// `GET {base}{uri}` for a `*_page_uri` the list answered.
async fn twilio_follow(c: &Client, base: &str, uri: &Value) -> Reply {
    let uri = uri.as_str().expect("a page uri");
    reply(
        c.get(format!("{base}{uri}"))
            .basic_auth(TWILIO_ACCOUNT, Some(TWILIO_TOKEN))
            .send()
            .await
            .expect("request"),
    )
    .await
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

fn is_twilio_sid(prefix: &str, v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.strip_prefix(prefix)
            .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Asserts Twilio's error shape (exactly `code`, `message`, `more_info`, `status`, the body's
/// status the HTTP one) and returns (HTTP status, code).
fn twilio_error(r: &Reply) -> (StatusCode, u64) {
    assert_eq!(
        keys(&r.body),
        ["code", "message", "more_info", "status"],
        "{}",
        r.body
    );
    let code = r.body["code"].as_u64().expect("a numeric code");
    assert_eq!(r.body["status"], r.status.as_u16(), "{}", r.body);
    assert_eq!(
        r.body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
    assert!(!r.body["message"].as_str().unwrap_or_default().is_empty());
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json",
        "{}",
        r.body
    );
    (r.status, code)
}

/// The UTC day of a Message's `date_sent` (RFC 2822, as Twilio writes it).
fn sent_day(message: &Value) -> chrono::NaiveDate {
    let sent = message["date_sent"].as_str().expect("date_sent");
    assert!(sent.ends_with(" +0000"), "{sent}");
    chrono::DateTime::parse_from_rfc2822(sent)
        .expect("RFC 2822")
        .with_timezone(&chrono::Utc)
        .date_naive()
}

#[tokio::test]
async fn a_twilio_message_is_created_once_per_request_listed_by_recipient_and_day() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let to = "+14155550100";
    let text = "Your flight LHR to JFK is booked";
    let form = [("To", to), ("From", TWILIO_FROM), ("Body", text)];

    // 201 with the Message resource: exactly the fields of the spec's `create` example.
    let first = twilio_send(&c, &base, &form).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(
        first.headers.get("content-type").unwrap(),
        "application/json"
    );
    let m = &first.body;
    assert_eq!(
        keys(m),
        [
            "account_sid",
            "api_version",
            "body",
            "date_created",
            "date_sent",
            "date_updated",
            "direction",
            "error_code",
            "error_message",
            "from",
            "messaging_service_sid",
            "num_media",
            "num_segments",
            "price",
            "price_unit",
            "sid",
            "status",
            "subresource_uris",
            "to",
            "uri",
        ]
    );
    assert!(is_twilio_sid("SM", &m["sid"]), "{}", m["sid"]);
    let sid = m["sid"].as_str().unwrap().to_owned();
    assert_eq!(m["account_sid"], TWILIO_ACCOUNT);
    assert_eq!(m["api_version"], "2010-04-01");
    assert_eq!(m["status"], "queued");
    assert_eq!(m["direction"], "outbound-api");
    assert_eq!(
        (&m["to"], &m["from"], &m["body"]),
        (&json!(to), &json!(TWILIO_FROM), &json!(text))
    );
    assert_eq!(m["num_segments"], "1", "a string, as Twilio sends it");
    assert_eq!(m["num_media"], "0");
    for null in ["error_code", "error_message", "price", "price_unit"] {
        assert!(m[null].is_null(), "{null}: {}", m[null]);
    }
    assert!(is_twilio_sid("MG", &m["messaging_service_sid"]), "{m}");
    assert_eq!(m["date_created"], m["date_sent"]);
    assert_eq!(m["date_created"], m["date_updated"]);
    let day = sent_day(m);
    assert_eq!(
        m["uri"],
        format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Messages/{sid}.json")
    );
    assert_eq!(
        m["subresource_uris"],
        json!({"media": format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Messages/{sid}/Media.json")})
    );

    // No idempotency key at Twilio: the same request again is a second Message.
    let second = twilio_send(&c, &base, &form).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_ne!(second.body["sid"], first.body["sid"]);
    assert_eq!(
        second.body["messaging_service_sid"], m["messaging_service_sid"],
        "one default service per account"
    );
    // Another recipient; a long body is segmented (153 GSM-7 characters a segment).
    let other = twilio_send(
        &c,
        &base,
        &[
            ("To", "+14155550101"),
            ("From", TWILIO_FROM),
            ("Body", &"a".repeat(161)),
        ],
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_eq!(other.body["num_segments"], "2");
    // A Messaging Service picks the sender: `from` null, `accepted`, 0 segments so far.
    let service = "MG0123456789abcdef0123456789abcdef";
    let via_service = twilio_send(
        &c,
        &base,
        &[
            ("To", "+14155550101"),
            ("MessagingServiceSid", service),
            ("Body", text),
        ],
    )
    .await;
    assert_eq!(
        via_service.status,
        StatusCode::CREATED,
        "{}",
        via_service.body
    );
    assert!(via_service.body["from"].is_null());
    assert_eq!(via_service.body["messaging_service_sid"], service);
    assert_eq!(via_service.body["status"], "accepted");
    assert_eq!(via_service.body["num_segments"], "0");
    // An API key (`SK…`) and its secret authenticate too; the path still names the account.
    let with_key = reply(
        c.post(twilio_url(&base, TWILIO_ACCOUNT))
            .basic_auth("SK0123456789abcdef0123456789abcdef", Some("key_secret"))
            .form(&[
                ("To", "+14155550102"),
                ("From", TWILIO_FROM),
                ("Body", text),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(with_key.status, StatusCode::CREATED, "{}", with_key.body);
    assert_eq!(with_key.body["account_sid"], TWILIO_ACCOUNT);

    let counters = sb.sandbox.counters();
    assert_eq!(counters.sms_created, 5);
    assert_eq!(counters.sms_by_to[to], 2);
    assert_eq!(counters.sms_by_to["+14155550101"], 2);
    assert_eq!(counters.sms_by_to["+14155550102"], 1);
    assert_eq!(counters.sms_refused, 0);

    // The recipient's Messages of that UTC day, newest first, in Twilio's list envelope.
    let date = day.format("%Y-%m-%d").to_string();
    let listed = twilio_list(&c, &base, &[("To", to), ("DateSent", &date)]).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let page = &listed.body;
    assert_eq!(
        keys(page),
        [
            "end",
            "first_page_uri",
            "messages",
            "next_page_uri",
            "page",
            "page_size",
            "previous_page_uri",
            "start",
            "uri",
        ]
    );
    let sids: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["sid"])
        .collect();
    assert_eq!(
        sids,
        [&second.body["sid"], &first.body["sid"]],
        "newest first"
    );
    assert_eq!(page["messages"][1], first.body, "the resource as created");
    assert_eq!(
        (
            &page["page"],
            &page["page_size"],
            &page["start"],
            &page["end"]
        ),
        (&json!(0), &json!(50), &json!(0), &json!(1))
    );
    assert!(page["next_page_uri"].is_null() && page["previous_page_uri"].is_null());
    let uri = format!(
        "/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Messages.json?To=%2B14155550100&DateSent={date}&PageSize=50&Page=0"
    );
    assert_eq!(page["uri"], uri);
    assert_eq!(page["first_page_uri"], uri);

    // Filtered by the day sent (on, on or before, on or after) and by sender.
    let yesterday = (day - chrono::Days::new(1)).format("%Y-%m-%d").to_string();
    let count = |r: &Reply| r.body["messages"].as_array().map(Vec::len);
    for (query, n) in [
        (vec![("To", to), ("DateSent", yesterday.as_str())], 0),
        (vec![("To", to), ("DateSent<", yesterday.as_str())], 0),
        (vec![("To", to), ("DateSent<", date.as_str())], 2),
        (vec![("To", to), ("DateSent>", date.as_str())], 2),
        (vec![("To", to), ("DateSent>", yesterday.as_str())], 2),
        (vec![("To", to), ("From", TWILIO_FROM)], 2),
        (vec![("To", to), ("From", "+14155559999")], 0),
        (vec![("To", "+14155550101")], 2),
        (vec![("To", "+14155550101"), ("From", TWILIO_FROM)], 1),
        (vec![("To", "+14155550199")], 0),
        (vec![("DateSent", date.as_str())], 5),
    ] {
        let r = twilio_list(&c, &base, &query).await;
        assert_eq!(r.status, StatusCode::OK, "{query:?}: {}", r.body);
        assert_eq!(count(&r), Some(n), "{query:?}: {}", r.body);
    }
    let empty = twilio_list(&c, &base, &[("To", to), ("DateSent", &yesterday)]).await;
    assert_eq!(
        (&empty.body["start"], &empty.body["end"]),
        (&json!(0), &json!(0))
    );

    // Another account sees none of them.
    let stranger = "ACfedcba9876543210fedcba9876543210";
    let theirs = reply(
        c.get(twilio_url(&base, stranger))
            .basic_auth(stranger, Some("their_token"))
            .query(&[("To", to)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert_eq!(count(&theirs), Some(0));

    // Pages follow `next_page_uri` and `previous_page_uri`.
    let p0 = twilio_list(&c, &base, &[("To", to), ("PageSize", "1")]).await;
    assert_eq!(p0.body["messages"][0]["sid"], second.body["sid"]);
    assert!(p0.body["previous_page_uri"].is_null());
    let p1 = twilio_follow(&c, &base, &p0.body["next_page_uri"]).await;
    assert_eq!(p1.status, StatusCode::OK, "{}", p1.body);
    assert_eq!(p1.body["messages"][0]["sid"], first.body["sid"]);
    assert_eq!(
        (&p1.body["page"], &p1.body["start"], &p1.body["end"]),
        (&json!(1), &json!(1), &json!(1))
    );
    assert!(p1.body["next_page_uri"].is_null(), "{}", p1.body);
    let back = twilio_follow(&c, &base, &p1.body["previous_page_uri"]).await;
    assert_eq!(back.body["messages"][0]["sid"], second.body["sid"]);
    assert_eq!(back.body["page"], 0);

    // A DateSent the sandbox cannot read is a 400 naming it (Twilio documents no code for it).
    let bad = twilio_list(&c, &base, &[("To", to), ("DateSent", "yesterday")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["status"], 400);
    assert!(
        bad.body["message"].as_str().unwrap().contains("DateSent"),
        "{}",
        bad.body
    );

    // Listing creates nothing; the counters are served as JSON too.
    let served: sandbox::Counters = c
        .get(format!("{base}/_sandbox/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, sb.sandbox.counters());
    assert_eq!(served.sms_created, 5);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn twilio_refuses_invalid_unreachable_and_unsubscribed_numbers_and_an_outage_creates_nothing()
{
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let text = "Your flight LHR to JFK is booked";
    let send_to = |to: &'static str| {
        let c = c.clone();
        let base = base.clone();
        async move {
            twilio_send(
                &c,
                &base,
                &[("To", to), ("From", TWILIO_FROM), ("Body", text)],
            )
            .await
        }
    };

    // Twilio's test-credential magic recipients, each with its documented code.
    for (to, code) in [
        ("+15005550001", 21211), // invalid
        ("+15005550002", 21612), // cannot route
        ("+15005550003", 21408), // no international permission
        ("+15005550004", 21610), // unsubscribed (blocked for the account)
        ("+15005550009", 21614), // cannot receive SMS (not a mobile)
    ] {
        let r = send_to(to).await;
        assert_eq!(
            twilio_error(&r),
            (StatusCode::BAD_REQUEST, code),
            "{to}: {}",
            r.body
        );
    }
    // The magic senders that are refused.
    for (from, code) in [
        ("+15005550001", 21212),
        ("+15005550007", 21606),
        ("+15005550008", 21611),
    ] {
        let r = twilio_send(
            &c,
            &base,
            &[("To", "+14155550100"), ("From", from), ("Body", text)],
        )
        .await;
        assert_eq!(
            twilio_error(&r),
            (StatusCode::BAD_REQUEST, code),
            "{from}: {}",
            r.body
        );
    }
    // Validation, in Twilio's codes.
    let long = "a".repeat(1601);
    let service = "MG0123456789abcdef0123456789abcdef";
    for (form, code) in [
        (vec![("From", TWILIO_FROM), ("Body", text)], 21604),
        (
            vec![("To", ""), ("From", TWILIO_FROM), ("Body", text)],
            21604,
        ),
        (
            vec![("To", "4155550100"), ("From", TWILIO_FROM), ("Body", text)],
            21211,
        ),
        (
            vec![
                ("To", "+1 415 555 0100"),
                ("From", TWILIO_FROM),
                ("Body", text),
            ],
            21211,
        ),
        (
            vec![
                ("To", "+04155550100"),
                ("From", TWILIO_FROM),
                ("Body", text),
            ],
            21211,
        ),
        (
            vec![
                ("To", "+14155550100"),
                ("From", "+14155550100"),
                ("Body", text),
            ],
            21211,
        ),
        (vec![("To", "+14155550100"), ("Body", text)], 21603),
        (
            vec![
                ("To", "+14155550100"),
                ("MessagingServiceSid", "MG123"),
                ("Body", text),
            ],
            21603,
        ),
        (vec![("To", "+14155550100"), ("From", TWILIO_FROM)], 21602),
        (
            vec![("To", "+14155550100"), ("From", TWILIO_FROM), ("Body", "")],
            21602,
        ),
        (
            vec![("To", "+14155550100"), ("MessagingServiceSid", service)],
            21619,
        ),
        (
            vec![
                ("To", "+14155550100"),
                ("From", TWILIO_FROM),
                ("Body", long.as_str()),
            ],
            21617,
        ),
    ] {
        let r = twilio_send(&c, &base, &form).await;
        assert_eq!(
            twilio_error(&r),
            (StatusCode::BAD_REQUEST, code),
            "{form:?}: {}",
            r.body
        );
    }
    // The To of a 21211 is named in the message, in the words of Twilio's documented example.
    let r = twilio_send(
        &c,
        &base,
        &[("To", "4155550100"), ("From", TWILIO_FROM), ("Body", text)],
    )
    .await;
    assert_eq!(
        r.body["message"],
        "The 'To' number 4155550100 is not a valid phone number."
    );
    // 1,600 characters is still one Message.
    let longest = "a".repeat(1600);
    let ok = twilio_send(
        &c,
        &base,
        &[
            ("To", "+14155550100"),
            ("From", TWILIO_FROM),
            ("Body", &longest),
        ],
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    assert_eq!(ok.body["num_segments"], "11");

    // Authentication: Basic, username the path's Account SID (or an SK key), a password.
    let form = [
        ("To", "+14155550100"),
        ("From", TWILIO_FROM),
        ("Body", text),
    ];
    let stranger = "ACfedcba9876543210fedcba9876543210";
    let url = twilio_url(&base, TWILIO_ACCOUNT);
    for (what, req) in [
        ("no credentials", c.post(&url)),
        (
            "another account",
            c.post(&url).basic_auth(stranger, Some(TWILIO_TOKEN)),
        ),
        (
            "no password",
            c.post(&url).basic_auth(TWILIO_ACCOUNT, None::<&str>),
        ),
        (
            "empty password",
            c.post(&url).basic_auth(TWILIO_ACCOUNT, Some("")),
        ),
        ("a bearer token", c.post(&url).bearer_auth(TWILIO_TOKEN)),
        (
            "a malformed account",
            c.post(twilio_url(&base, "AC123"))
                .basic_auth("AC123", Some(TWILIO_TOKEN)),
        ),
    ] {
        let r = reply(req.form(&form).send().await.unwrap()).await;
        assert_eq!(
            twilio_error(&r),
            (StatusCode::UNAUTHORIZED, 20003),
            "{what}: {}",
            r.body
        );
    }
    let list = reply(c.get(&url).send().await.unwrap()).await;
    assert_eq!(twilio_error(&list), (StatusCode::UNAUTHORIZED, 20003));

    let refused_creates = 5 + 3 + 12 + 1 + 6;
    let counters = sb.sandbox.counters();
    assert_eq!(counters.sms_created, 1, "only the 1,600-character body");
    assert_eq!(
        counters.sms_refused, refused_creates,
        "every refused create, the list's 401 aside"
    );
    assert_eq!(
        counters.sms_by_to.keys().collect::<Vec<_>>(),
        ["+14155550100"]
    );
    assert!(!counters.outage_responses.contains_key("twilio"));

    // A 503 outage (over HTTP): every Twilio call answers it in Twilio's shape; nothing is made.
    let outage = |body: Value| {
        c.post(format!("{base}/_sandbox/outages"))
            .json(&body)
            .send()
    };
    let down = reply(
        outage(json!({"provider": "twilio", "seconds": 60, "status": 503}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.body);
    assert_eq!(
        (&down.body["provider"], &down.body["down"]),
        (&json!("twilio"), &json!(true))
    );
    let r = send_to("+14155550103").await;
    assert_eq!(
        twilio_error(&r),
        (StatusCode::SERVICE_UNAVAILABLE, 20503),
        "{}",
        r.body
    );
    let r = twilio_list(&c, &base, &[("To", "+14155550103")]).await;
    assert_eq!(twilio_error(&r), (StatusCode::SERVICE_UNAVAILABLE, 20503));
    // …even a request Twilio would refuse: the outage answers first.
    let r = twilio_send(&c, &base, &[("To", "+14155550103")]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The other providers and the control endpoints keep answering.
    let email =
        json!({"from": "a@parkerflight.test", "to": "t@example.com", "subject": "s", "text": "t"});
    let sent = c
        .post(format!("{base}/emails"))
        .bearer_auth(RESEND)
        .json(&email)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    let listed: Value = c
        .get(format!("{base}/_sandbox/outages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[3]["provider"], "twilio");
    assert_eq!(
        (&listed[3]["down"], &listed[3]["status"]),
        (&json!(true), &json!(503))
    );

    // A 429 (Rust API): Twilio's 20429, "never processed".
    sb.sandbox
        .set_outage(Provider::Twilio, Duration::from_secs(60), 429);
    let r = send_to("+14155550103").await;
    assert_eq!(
        twilio_error(&r),
        (StatusCode::TOO_MANY_REQUESTS, 20429),
        "{}",
        r.body
    );
    assert_eq!(r.body["message"], "Too Many Requests");
    // 429 is Twilio's alone; a 500 outage answers 20500.
    let stripe_429 = reply(
        outage(json!({"provider": "stripe", "seconds": 5, "status": 429}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stripe_429.status, StatusCode::BAD_REQUEST);
    assert!(stripe_429.body["error"]
        .as_str()
        .unwrap()
        .contains("status must be one of"));
    assert!(sb.sandbox.outage(Provider::Stripe).is_none());
    sb.sandbox
        .set_outage(Provider::Twilio, Duration::from_millis(400), 500);
    let r = send_to("+14155550103").await;
    assert_eq!(twilio_error(&r), (StatusCode::INTERNAL_SERVER_ERROR, 20500));

    let counters = sb.sandbox.counters();
    assert_eq!(counters.sms_created, 1, "no outage answer created anything");
    assert_eq!(
        counters.sms_refused, refused_creates,
        "outage answers are not refusals"
    );
    assert_eq!(counters.outage_responses["twilio"], 5);
    assert!(!counters.sms_by_to.contains_key("+14155550103"));

    // The outage ends on time; the retry is the one Message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sb.sandbox.outage(Provider::Twilio).is_none());
    let r = send_to("+14155550103").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let counters = sb.sandbox.counters();
    assert_eq!(counters.sms_created, 2);
    assert_eq!(counters.sms_by_to["+14155550103"], 1);
    assert_eq!(counters.outage_responses["twilio"], 5);
    sb.shutdown().await.expect("clean shutdown");
}

// ----------------------------------------------------------------------------------------------
// AWS KMS (awsJson1_1 on `POST /`), with plain reqwest: the fleet's SDK-based tests are separate.

/// A SigV4-shaped `Authorization` header: the sandbox requires one and does not verify it.
const KMS_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDSANDBOX/20260101/eu-west-1/kms/aws4_request, \
     SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00";

/// The fleet's encryption context of data key version 1, in the two orders a HashMap may send.
const CONTEXT_V1: &str = r#"{"purpose": "parker-pii", "data_key_version": "1"}"#;
const CONTEXT_V1_REORDERED: &str = r#"{"data_key_version": "1", "purpose": "parker-pii"}"#;

/// `POST /` with `X-Amz-Target: TrentService.{op}`, the awsJson1_1 content type, credentials
/// and `body` exactly as written (so a test controls the order of an encryption context).
async fn kms(c: &Client, base: &str, op: &str, body: &str) -> Reply {
    reply(
        c.post(format!("{base}/"))
            .header("x-amz-target", format!("TrentService.{op}"))
            .header("content-type", "application/x-amz-json-1.1")
            .header("authorization", KMS_AUTH)
            .body(body.to_owned())
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Asserts a 200 in the awsJson1_1 shape (content type, request id) and returns the body.
fn kms_ok(r: &Reply) -> &Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/x-amz-json-1.1"
    );
    assert!(r.headers.contains_key("x-amzn-requestid"));
    &r.body
}

/// Asserts AWS's error shape (exactly `__type` and `message`, the awsJson1_1 content type, a
/// request id) and returns (status, `__type`).
fn kms_error(r: &Reply) -> (StatusCode, String) {
    assert_eq!(keys(&r.body), ["__type", "message"], "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/x-amz-json-1.1"
    );
    assert!(r.headers.contains_key("x-amzn-requestid"));
    (r.status, r.body["__type"].as_str().unwrap().to_owned())
}

/// The byte length of a padded standard-base64 string.
fn base64_len(s: &Value) -> usize {
    let s = s.as_str().expect("a base64 string");
    s.len() / 4 * 3 - s.bytes().rev().take_while(|&b| b == b'=').count()
}

/// A `KeyMaterialId`: 64 lower-case hex digits.
fn is_key_material_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// GenerateDataKey (AES_256) under the alias with `context` (a JSON object as text).
async fn kms_data_key(c: &Client, base: &str, context: &str) -> Value {
    let r = kms(
        c,
        base,
        "GenerateDataKey",
        &format!(
            r#"{{"KeyId": "alias/parker-kms-key", "KeySpec": "AES_256", "EncryptionContext": {context}}}"#
        ),
    )
    .await;
    kms_ok(&r).clone()
}

/// `{"CiphertextBlob": blob, "EncryptionContext": context}` plus `extra` members.
fn decrypt_body(blob: &Value, context: Option<&str>, extra: &str) -> String {
    let context = context
        .map(|c| format!(r#", "EncryptionContext": {c}"#))
        .unwrap_or_default();
    format!(r#"{{"CiphertextBlob": {blob}{context}{extra}}}"#)
}

#[tokio::test]
async fn kms_generate_data_key_then_decrypt_with_the_same_context_returns_the_key_under_every_key_id_spelling(
) {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();

    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    assert_eq!(
        keys(&made),
        ["CiphertextBlob", "KeyId", "KeyMaterialId", "Plaintext"],
        "{made}"
    );
    assert_eq!(
        made["KeyId"],
        sandbox::KMS_KEY_ARN,
        "the key ARN, not the alias"
    );
    assert_eq!(
        made["KeyId"],
        "arn:aws:kms:eu-west-1:111122223333:key/8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a"
    );
    assert_eq!(base64_len(&made["Plaintext"]), 32);
    assert!(is_key_material_id(&made["KeyMaterialId"]), "{made}");
    assert_eq!(made["KeyMaterialId"], sb.sandbox.kms_key_material_id());

    // Decrypt: the context in another order, the key named every way (or not at all).
    let spellings = [
        r#", "KeyId": "alias/parker-kms-key""#.to_owned(),
        r#", "KeyId": "arn:aws:kms:eu-west-1:111122223333:alias/parker-kms-key""#.to_owned(),
        format!(r#", "KeyId": "{}""#, sandbox::KMS_KEY_ID),
        format!(r#", "KeyId": "{}""#, sandbox::KMS_KEY_ARN),
        String::new(),
    ];
    for extra in &spellings {
        let body = decrypt_body(&made["CiphertextBlob"], Some(CONTEXT_V1_REORDERED), extra);
        let r = kms(&c, &base, "Decrypt", &body).await;
        let out = kms_ok(&r);
        assert_eq!(
            keys(out),
            ["EncryptionAlgorithm", "KeyId", "KeyMaterialId", "Plaintext"],
            "{out}"
        );
        assert_eq!(out["Plaintext"], made["Plaintext"], "KeyId{extra}");
        assert_eq!(out["KeyId"], sandbox::KMS_KEY_ARN);
        assert_eq!(out["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
        assert_eq!(out["KeyMaterialId"], made["KeyMaterialId"]);
    }
    // NumberOfBytes 32 is AES_256's size; every data key and blob is fresh.
    let r = kms(
        &c,
        &base,
        "GenerateDataKey",
        &format!(
            r#"{{"KeyId": "{}", "NumberOfBytes": 32, "EncryptionContext": {CONTEXT_V1}}}"#,
            sandbox::KMS_KEY_ARN
        ),
    )
    .await;
    let second = kms_ok(&r);
    assert_eq!(base64_len(&second["Plaintext"]), 32);
    assert_ne!(second["Plaintext"], made["Plaintext"]);
    assert_ne!(second["CiphertextBlob"], made["CiphertextBlob"]);

    let counters = sb.sandbox.counters();
    assert_eq!(
        (
            counters.kms_generate_data_key,
            counters.kms_decrypt,
            counters.kms_encrypt,
            counters.kms_re_encrypt,
            counters.kms_refused
        ),
        (2, 5, 0, 0, 0)
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_encrypt_then_decrypt_returns_the_plaintext_only_with_its_context() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    // "passport number 123456789", base64.
    let plaintext = "cGFzc3BvcnQgbnVtYmVyIDEyMzQ1Njc4OQ==";
    let r = kms(
        &c,
        &base,
        "Encrypt",
        &format!(r#"{{"KeyId": "alias/parker-kms-key", "Plaintext": "{plaintext}", "EncryptionContext": {CONTEXT_V1}}}"#),
    )
    .await;
    let sealed = kms_ok(&r).clone();
    assert_eq!(
        keys(&sealed),
        ["CiphertextBlob", "EncryptionAlgorithm", "KeyId"],
        "{sealed}"
    );
    assert_eq!(
        (&sealed["KeyId"], &sealed["EncryptionAlgorithm"]),
        (&json!(sandbox::KMS_KEY_ARN), &json!("SYMMETRIC_DEFAULT"))
    );
    let body = decrypt_body(&sealed["CiphertextBlob"], Some(CONTEXT_V1_REORDERED), "");
    let r = kms(&c, &base, "Decrypt", &body).await;
    assert_eq!(kms_ok(&r)["Plaintext"], plaintext);
    let r = kms(
        &c,
        &base,
        "Decrypt",
        &decrypt_body(&sealed["CiphertextBlob"], None, ""),
    )
    .await;
    assert_eq!(
        kms_error(&r),
        (StatusCode::BAD_REQUEST, "InvalidCiphertextException".into())
    );
    let counters = sb.sandbox.counters();
    assert_eq!(
        (
            counters.kms_encrypt,
            counters.kms_decrypt,
            counters.kms_refused
        ),
        (1, 1, 1)
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_decrypt_with_a_wrong_or_missing_context_or_a_foreign_blob_is_invalid_ciphertext_and_decrypts_nothing(
) {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    let blob = &made["CiphertextBlob"];

    let wrong_contexts = [
        None,
        Some("{}"),
        Some("null"),
        Some(r#"{"purpose": "parker-pii"}"#),
        Some(r#"{"purpose": "parker-pii", "data_key_version": "2"}"#),
        Some(r#"{"Purpose": "parker-pii", "data_key_version": "1"}"#),
        Some(r#"{"purpose": "parker-pii", "data_key_version": "1", "tenant": "42"}"#),
    ];
    for context in wrong_contexts {
        let body = decrypt_body(blob, context, r#", "KeyId": "alias/parker-kms-key""#);
        let r = kms(&c, &base, "Decrypt", &body).await;
        assert_eq!(
            kms_error(&r),
            (StatusCode::BAD_REQUEST, "InvalidCiphertextException".into()),
            "context {context:?}"
        );
        let answer = String::from_utf8_lossy(&r.raw);
        assert!(!answer.contains(made["Plaintext"].as_str().unwrap()));
    }
    // A blob another sandbox made (its own random key material), and bytes that are no blob.
    let (other, _) = start(SandboxConfig::default()).await;
    let foreign = kms_data_key(&c, &other.base_url, CONTEXT_V1).await;
    for not_ours in [&foreign["CiphertextBlob"], &json!("AAAAAAAAAAAAAAAA")] {
        let body = decrypt_body(not_ours, Some(CONTEXT_V1), "");
        let r = kms(&c, &base, "Decrypt", &body).await;
        assert_eq!(
            kms_error(&r),
            (StatusCode::BAD_REQUEST, "InvalidCiphertextException".into())
        );
    }
    // The right context still opens it.
    let r = kms(
        &c,
        &base,
        "Decrypt",
        &decrypt_body(blob, Some(CONTEXT_V1), ""),
    )
    .await;
    assert_eq!(kms_ok(&r)["Plaintext"], made["Plaintext"]);

    let counters = sb.sandbox.counters();
    assert_eq!(counters.kms_decrypt, 1, "only the right context decrypted");
    assert_eq!(counters.kms_refused, 9);
    other.shutdown().await.expect("clean shutdown");
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_an_unknown_key_is_not_found_in_every_operation_and_nothing_is_wrapped() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    let blob = &made["CiphertextBlob"];
    let before = sb.sandbox.counters();

    let unknown = [
        "alias/other-key",
        "arn:aws:kms:eu-west-1:111122223333:alias/other-key",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:us-east-1:111122223333:key/8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a",
    ];
    for key in unknown {
        let calls = [
            (
                "GenerateDataKey",
                format!(r#"{{"KeyId": "{key}", "KeySpec": "AES_256"}}"#),
            ),
            (
                "Encrypt",
                format!(r#"{{"KeyId": "{key}", "Plaintext": "AAEC"}}"#),
            ),
            (
                "Decrypt",
                decrypt_body(blob, Some(CONTEXT_V1), &format!(r#", "KeyId": "{key}""#)),
            ),
            (
                "ReEncrypt",
                format!(
                    r#"{{"CiphertextBlob": {blob}, "SourceEncryptionContext": {CONTEXT_V1}, "SourceKeyId": "{key}", "DestinationKeyId": "alias/parker-kms-key"}}"#
                ),
            ),
            (
                "ReEncrypt",
                format!(
                    r#"{{"CiphertextBlob": {blob}, "SourceEncryptionContext": {CONTEXT_V1}, "DestinationKeyId": "{key}"}}"#
                ),
            ),
        ];
        for (op, body) in calls {
            let r = kms(&c, &base, op, &body).await;
            assert_eq!(
                kms_error(&r),
                (StatusCode::BAD_REQUEST, "NotFoundException".into()),
                "{op} {key}"
            );
        }
    }
    let r = kms(
        &c,
        &base,
        "GenerateDataKey",
        r#"{"KeyId": "alias/other-key", "KeySpec": "AES_256"}"#,
    )
    .await;
    assert_eq!(
        r.body["message"],
        "Alias arn:aws:kms:eu-west-1:111122223333:alias/other-key is not found."
    );

    let after = sb.sandbox.counters();
    assert_eq!(
        (
            after.kms_generate_data_key,
            after.kms_decrypt,
            after.kms_encrypt,
            after.kms_re_encrypt
        ),
        (
            before.kms_generate_data_key,
            before.kms_decrypt,
            before.kms_encrypt,
            before.kms_re_encrypt
        )
    );
    assert_eq!(after.kms_refused, before.kms_refused + 4 * 5 + 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_each_fault_answers_its_error_performs_nothing_and_clearing_it_restores_service() {
    use sandbox::KmsFault;
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    let blob = &made["CiphertextBlob"];
    let calls = [
        (
            "GenerateDataKey",
            format!(
                r#"{{"KeyId": "alias/parker-kms-key", "KeySpec": "AES_256", "EncryptionContext": {CONTEXT_V1}}}"#
            ),
            "kms:GenerateDataKey",
        ),
        (
            "Decrypt",
            decrypt_body(
                blob,
                Some(CONTEXT_V1),
                r#", "KeyId": "alias/parker-kms-key""#,
            ),
            "kms:Decrypt",
        ),
        (
            "Encrypt",
            r#"{"KeyId": "alias/parker-kms-key", "Plaintext": "AAEC"}"#.to_owned(),
            "kms:Encrypt",
        ),
        (
            "ReEncrypt",
            format!(
                r#"{{"CiphertextBlob": {blob}, "SourceEncryptionContext": {CONTEXT_V1}, "DestinationKeyId": "alias/parker-kms-key", "DestinationEncryptionContext": {CONTEXT_V1}}}"#
            ),
            "kms:ReEncryptFrom",
        ),
    ];
    let before = sb.sandbox.counters();

    for (fault, status, kind) in [
        (
            KmsFault::Throttling,
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
        ),
        (
            KmsFault::Outage,
            StatusCode::INTERNAL_SERVER_ERROR,
            "KMSInternalException",
        ),
        (
            KmsFault::AccessDenied,
            StatusCode::BAD_REQUEST,
            "AccessDeniedException",
        ),
    ] {
        sb.sandbox.set_kms_fault(Some(fault));
        assert_eq!(sb.sandbox.kms_fault(), Some(fault));
        for (op, body, permission) in &calls {
            let r = kms(&c, &base, op, body).await;
            assert_eq!(kms_error(&r), (status, kind.to_owned()), "{fault:?} {op}");
            let message = r.body["message"].as_str().unwrap();
            match fault {
                KmsFault::Throttling => assert_eq!(message, "Rate exceeded"),
                KmsFault::AccessDenied => {
                    assert!(
                        message.contains(&format!("not authorized to perform: {permission} ")),
                        "{message}"
                    );
                    assert!(!message.contains("AKIDSANDBOX") && !message.contains("Signature"));
                }
                KmsFault::Outage => assert!(!message.is_empty()),
            }
        }
        // The fault answers before the credentials are looked at.
        let bare = reply(
            c.post(format!("{base}/"))
                .header("x-amz-target", "TrentService.Decrypt")
                .header("content-type", "application/x-amz-json-1.1")
                .body("{}")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(kms_error(&bare), (status, kind.to_owned()));
        // Nothing was performed: no operation counted, only the refusals.
        let now = sb.sandbox.counters();
        assert_eq!(
            (
                now.kms_generate_data_key,
                now.kms_decrypt,
                now.kms_encrypt,
                now.kms_re_encrypt
            ),
            (
                before.kms_generate_data_key,
                before.kms_decrypt,
                before.kms_encrypt,
                before.kms_re_encrypt
            ),
            "{fault:?}"
        );
    }
    assert_eq!(
        sb.sandbox.counters().kms_refused,
        before.kms_refused + 3 * 5
    );

    // Cleared: every call works again, and the blob made before the faults still decrypts.
    sb.sandbox.set_kms_fault(None);
    assert_eq!(sb.sandbox.kms_fault(), None);
    for (op, body, _) in &calls {
        let r = kms(&c, &base, op, body).await;
        kms_ok(&r);
        if *op == "Decrypt" {
            assert_eq!(r.body["Plaintext"], made["Plaintext"]);
        }
    }
    let after = sb.sandbox.counters();
    assert_eq!(
        (
            after.kms_generate_data_key,
            after.kms_decrypt,
            after.kms_encrypt,
            after.kms_re_encrypt,
            after.kms_refused
        ),
        (
            before.kms_generate_data_key + 1,
            before.kms_decrypt + 1,
            before.kms_encrypt + 1,
            before.kms_re_encrypt + 1,
            before.kms_refused + 15
        )
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_after_rotating_the_key_material_old_blobs_still_decrypt_and_new_blobs_use_the_new_material(
) {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let old = kms_data_key(&c, &base, CONTEXT_V1).await;
    let first_material = sb.sandbox.kms_key_material_id();
    assert_eq!(old["KeyMaterialId"], first_material);

    sb.sandbox.rotate_kms_key_material();
    let second_material = sb.sandbox.kms_key_material_id();
    assert_ne!(second_material, first_material);
    let new = kms_data_key(&c, &base, CONTEXT_V1).await;
    assert_eq!(
        new["KeyMaterialId"], second_material,
        "new wraps use the new material"
    );
    assert_eq!(new["KeyId"], old["KeyId"], "same key, same ARN");
    assert_ne!(new["CiphertextBlob"], old["CiphertextBlob"]);

    // Both decrypt, each with the material that wrapped it, before and after another rotation.
    for round in 0..2 {
        for (made, material) in [(&old, &first_material), (&new, &second_material)] {
            let body = decrypt_body(&made["CiphertextBlob"], Some(CONTEXT_V1_REORDERED), "");
            let r = kms(&c, &base, "Decrypt", &body).await;
            let out = kms_ok(&r);
            assert_eq!(out["Plaintext"], made["Plaintext"], "round {round}");
            assert_eq!(&out["KeyMaterialId"], material, "round {round}");
        }
        sb.sandbox.rotate_kms_key_material();
    }
    let third = kms_data_key(&c, &base, CONTEXT_V1).await;
    assert!(third["KeyMaterialId"] != first_material && third["KeyMaterialId"] != second_material);
    assert_eq!(sb.sandbox.counters().kms_refused, 0);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_re_encrypt_returns_a_new_blob_that_decrypts_to_the_same_plaintext() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    let blob = &made["CiphertextBlob"];
    sb.sandbox.rotate_kms_key_material();

    let context_v2 = r#"{"purpose": "parker-pii", "data_key_version": "2"}"#;
    let r = kms(
        &c,
        &base,
        "ReEncrypt",
        &format!(
            r#"{{"CiphertextBlob": {blob}, "SourceKeyId": "alias/parker-kms-key", "SourceEncryptionContext": {CONTEXT_V1_REORDERED}, "DestinationKeyId": "{}", "DestinationEncryptionContext": {context_v2}}}"#,
            sandbox::KMS_KEY_ARN
        ),
    )
    .await;
    let re = kms_ok(&r).clone();
    assert_eq!(
        keys(&re),
        [
            "CiphertextBlob",
            "DestinationEncryptionAlgorithm",
            "DestinationKeyMaterialId",
            "KeyId",
            "SourceEncryptionAlgorithm",
            "SourceKeyId",
            "SourceKeyMaterialId"
        ],
        "{re}"
    );
    assert!(
        re.get("Plaintext").is_none(),
        "the plaintext never leaves KMS"
    );
    assert_ne!(&re["CiphertextBlob"], blob);
    assert_eq!(
        (&re["KeyId"], &re["SourceKeyId"]),
        (&json!(sandbox::KMS_KEY_ARN), &json!(sandbox::KMS_KEY_ARN))
    );
    assert_eq!(
        (
            &re["SourceEncryptionAlgorithm"],
            &re["DestinationEncryptionAlgorithm"]
        ),
        (&json!("SYMMETRIC_DEFAULT"), &json!("SYMMETRIC_DEFAULT"))
    );
    assert_eq!(re["SourceKeyMaterialId"], made["KeyMaterialId"]);
    assert_eq!(
        re["DestinationKeyMaterialId"],
        sb.sandbox.kms_key_material_id()
    );
    assert_ne!(re["DestinationKeyMaterialId"], re["SourceKeyMaterialId"]);

    // The new blob opens with the destination context to the same data key, not with the old.
    let r = kms(
        &c,
        &base,
        "Decrypt",
        &decrypt_body(&re["CiphertextBlob"], Some(context_v2), ""),
    )
    .await;
    assert_eq!(kms_ok(&r)["Plaintext"], made["Plaintext"]);
    let r = kms(
        &c,
        &base,
        "Decrypt",
        &decrypt_body(&re["CiphertextBlob"], Some(CONTEXT_V1), ""),
    )
    .await;
    assert_eq!(
        kms_error(&r),
        (StatusCode::BAD_REQUEST, "InvalidCiphertextException".into())
    );
    // The source context must match too; the old blob still decrypts.
    let r = kms(
        &c,
        &base,
        "ReEncrypt",
        &format!(r#"{{"CiphertextBlob": {blob}, "SourceEncryptionContext": {context_v2}, "DestinationKeyId": "alias/parker-kms-key"}}"#),
    )
    .await;
    assert_eq!(
        kms_error(&r),
        (StatusCode::BAD_REQUEST, "InvalidCiphertextException".into())
    );
    let r = kms(
        &c,
        &base,
        "Decrypt",
        &decrypt_body(blob, Some(CONTEXT_V1), ""),
    )
    .await;
    assert_eq!(kms_ok(&r)["Plaintext"], made["Plaintext"]);

    let counters = sb.sandbox.counters();
    assert_eq!(
        (
            counters.kms_re_encrypt,
            counters.kms_decrypt,
            counters.kms_refused
        ),
        (1, 2, 2)
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_refuses_a_call_without_sigv4_credentials_an_unknown_operation_or_another_content_type()
{
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let body = r#"{"KeyId": "alias/parker-kms-key", "KeySpec": "AES_256"}"#;
    let post = |target: Option<&str>, content_type: &str, auth: Option<&str>| {
        let mut req = c
            .post(format!("{base}/"))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = target {
            req = req.header("x-amz-target", t);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let gdk = Some("TrentService.GenerateDataKey");
    let json11 = "application/x-amz-json-1.1";
    for (what, req, expected) in [
        (
            "no Authorization",
            post(gdk, json11, None),
            "UnrecognizedClientException",
        ),
        (
            "a bearer token",
            post(gdk, json11, Some("Bearer sk_test_sandbox")),
            "UnrecognizedClientException",
        ),
        (
            "an operation not served",
            post(Some("TrentService.ListKeys"), json11, Some(KMS_AUTH)),
            "UnknownOperationException",
        ),
        (
            "no X-Amz-Target",
            post(None, json11, Some(KMS_AUTH)),
            "UnknownOperationException",
        ),
        (
            "plain JSON",
            post(gdk, "application/json", Some(KMS_AUTH)),
            "SerializationException",
        ),
    ] {
        let r = reply(req.await.unwrap()).await;
        assert_eq!(
            kms_error(&r),
            (StatusCode::BAD_REQUEST, expected.into()),
            "{what}"
        );
    }
    let r = kms(&c, &base, "GenerateDataKey", "{not json").await;
    assert_eq!(
        kms_error(&r),
        (StatusCode::BAD_REQUEST, "SerializationException".into())
    );
    let counters = sb.sandbox.counters();
    assert_eq!(
        (counters.kms_generate_data_key, counters.kms_refused),
        (0, 6)
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kms_faults_and_rotation_can_be_driven_through_the_control_endpoints() {
    let (sb, c) = start(SandboxConfig::default()).await;
    let base = sb.base_url.clone();
    let control = |path: &str, body: Option<Value>| {
        let req = match body {
            Some(b) => c.post(format!("{base}/_sandbox/kms{path}")).json(&b),
            None => c.get(format!("{base}/_sandbox/kms{path}")),
        };
        async move { reply(req.send().await.unwrap()).await }
    };
    let state = control("", None).await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(
        keys(&state.body),
        [
            "alias",
            "fault",
            "key_id",
            "key_material_id",
            "key_materials"
        ]
    );
    assert_eq!(
        (
            &state.body["key_id"],
            &state.body["alias"],
            &state.body["fault"],
            &state.body["key_materials"]
        ),
        (
            &json!(sandbox::KMS_KEY_ARN),
            &json!("alias/parker-kms-key"),
            &Value::Null,
            &json!(1)
        )
    );

    let set = control("/fault", Some(json!({"fault": "throttling"}))).await;
    assert_eq!(set.body["fault"], "throttling", "{}", set.body);
    assert_eq!(sb.sandbox.kms_fault(), Some(sandbox::KmsFault::Throttling));
    let r = kms(
        &c,
        &base,
        "GenerateDataKey",
        r#"{"KeyId": "alias/parker-kms-key", "KeySpec": "AES_256"}"#,
    )
    .await;
    assert_eq!(
        kms_error(&r),
        (StatusCode::BAD_REQUEST, "ThrottlingException".into())
    );
    let bad = control("/fault", Some(json!({"fault": "slow"}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"]
        .as_str()
        .unwrap()
        .contains("throttling, outage, access_denied"));
    assert_eq!(
        sb.sandbox.kms_fault(),
        Some(sandbox::KmsFault::Throttling),
        "unchanged"
    );
    let cleared = control("/fault", Some(json!({"fault": null}))).await;
    assert_eq!(cleared.body["fault"], Value::Null);

    let rotated = control("/rotate", Some(json!({}))).await;
    assert_eq!(rotated.body["key_materials"], 2);
    assert_ne!(
        rotated.body["key_material_id"],
        state.body["key_material_id"]
    );
    let made = kms_data_key(&c, &base, CONTEXT_V1).await;
    assert_eq!(made["KeyMaterialId"], rotated.body["key_material_id"]);
    sb.shutdown().await.expect("clean shutdown");
}
