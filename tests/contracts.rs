//! Provider contracts, from the providers' own documentation (`tests/contracts/`, each fixture
//! citing its page):
//! - the documented delivered events, correctly signed, pass the real webhook router and make
//!   the right follow-up jobs;
//! - the sandbox sends and answers exactly the documented shapes, so the sandbox and the
//!   fleet can never again agree on a shape the providers do not send;
//! - the documented error bodies get the right classification from the real clients.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    http::{HeaderName, HeaderValue, StatusCode},
    response::IntoResponse,
    Router,
};
use common::*;
use fleet::{
    webhooks::{signature, WebhookSecrets},
    Queue,
};
use jobs::{
    providers::{
        email::QUOTA_SNOOZE, ApiKey, AuthorizePayment, CreateOrder, DuffelClient, DuffelConfig,
        EmailApi, EmailConfig, FailureClass, FlightsApi, OrderPassenger, OutgoingEmail,
        PaymentsApi, ResendClient, StripeConfig, StripePayments,
    },
    JobError,
};
use reqwest::Client;
use sandbox::{Sandbox, SandboxConfig, WebhookTarget};
use serde_json::{json, Value};
use sqlx::PgPool;

// ------------------------------------------------------------------------------------------
// Fixtures and the shape check

/// One file of `tests/contracts/` (format in its README).
struct Fixture {
    name: String,
    v: Value,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/contracts/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        Self {
            name: name.to_owned(),
            v,
        }
    }

    fn example(&self) -> Value {
        self.v["example"].clone()
    }

    fn status(&self) -> u16 {
        let s = self.v["status"].as_u64();
        u16::try_from(s.unwrap_or_else(|| panic!("{}: no status", self.name))).unwrap()
    }

    fn listed(&self, list: &str, path: &str) -> bool {
        self.v[list]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p == path))
    }

    /// Whether `got` has the documented shape; the problems found otherwise.
    fn check(&self, got: &Value) -> Result<(), String> {
        let mut problems = Vec::new();
        walk(self, "", &self.v["example"], got, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} ({}): {}",
                self.name,
                self.v["source"].as_str().unwrap_or("?"),
                problems.join("; ")
            ))
        }
    }

    #[track_caller]
    fn assert_shape(&self, got: &Value) {
        if let Err(e) = self.check(got) {
            panic!("{e}\n  got: {got}");
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The rules of `tests/contracts/README.md`: a documented `null` takes anything, a documented
/// value takes its JSON type (or `null` where listed nullable), objects need every documented
/// key (and only those if the fixture is complete), list items match the first example item.
fn walk(fx: &Fixture, path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    if want.is_null() {
        return;
    }
    if got.is_null() {
        if !fx.listed("nullable", path) {
            out.push(format!("{path}: null, documented {}", kind(want)));
        }
        return;
    }
    let (w, g) = (kind(want), kind(got));
    if w != g && !(w == "number" && g == "integer") {
        out.push(format!("{path}: {g}, documented {w}"));
        return;
    }
    if fx.listed("opaque", path) {
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) if !w.is_empty() => {
            for (k, wv) in w {
                let p = join(path, k);
                match g.get(k) {
                    Some(gv) => walk(fx, &p, wv, gv, out),
                    // A provider that leaves out what does not apply (Stripe's errors).
                    None if fx.v["omits_nulls"] == true
                        && (wv.is_null() || fx.listed("nullable", &p)) => {}
                    None => out.push(format!("{p}: missing")),
                }
            }
            if fx.v["complete"] == true {
                for k in g.keys().filter(|k| !w.contains_key(*k)) {
                    out.push(format!("{}: not in the documented shape", join(path, k)));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if let Some(w0) = w.first() {
                for gv in g {
                    walk(fx, &format!("{path}[]"), w0, gv, out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn every_fixture_cites_the_providers_own_page_and_is_listed() {
    let dir = format!("{}/tests/contracts", env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
    let mut seen = 0;
    for provider in ["duffel", "stripe", "resend"] {
        for entry in std::fs::read_dir(format!("{dir}/{provider}")).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let name = format!("{provider}/{file}");
            let fx = Fixture::load(&name);
            let source = fx.v["source"].as_str().unwrap_or_default();
            let official = [
                "https://duffel.com/",
                "https://www.duffel.com/",
                "https://changelog.duffel.com/",
                "https://docs.stripe.com/",
                "https://resend.com/",
                "https://github.com/duffelhq/",
                "https://github.com/resend/",
            ];
            assert!(
                official.iter().any(|o| source.starts_with(o)),
                "{name}: source {source:?} is not the provider's own page"
            );
            assert!(
                fx.v["notes"].as_str().is_some_and(|n| n.len() > 40),
                "{name}: says what is verbatim and what was adapted"
            );
            assert!(fx.v["example"].is_object(), "{name}: has an example");
            // The example conforms to itself: the nullable/opaque paths are well formed.
            fx.assert_shape(&fx.example());
            let stem = name.trim_end_matches(".json");
            let listed = readme.contains(&format!("`{name}`"))
                || readme.contains(&format!("`{}.*.json`", stem.split('.').next().unwrap()));
            assert!(listed, "{name} is listed in tests/contracts/README.md");
            seen += 1;
        }
    }
    assert!(seen >= 30, "{seen} fixtures");
}

#[test]
fn the_shape_check_refuses_the_old_duffel_envelope_and_invented_fields() {
    let fx = Fixture::load("duffel/webhook_event.order_created.json");
    let wrapped = json!({"data": {"id": "wev_1", "type": "order.created", "object": {},
        "live_mode": false}});
    let err = fx.check(&wrapped).unwrap_err();
    assert!(err.contains("id: missing"), "{err}");
    assert!(
        err.contains("data.id: not in the documented shape"),
        "{err}"
    );
    let mut invented = fx.example();
    invented["delivery_attempt"] = json!(1);
    invented["live_mode"] = json!("false");
    let err = fx.check(&invented).unwrap_err();
    assert!(
        err.contains("delivery_attempt: not in the documented shape"),
        "{err}"
    );
    assert!(
        err.contains("live_mode: string, documented boolean"),
        "{err}"
    );
    let cancellation = Fixture::load("duffel/order_cancellation.json");
    let mut c = cancellation.example();
    c["confirmed_at"] = Value::Null; // documented nullable
    cancellation.assert_shape(&c);
    c["order_id"] = Value::Null; // not nullable
    assert!(cancellation.check(&c).is_err());
}

// ------------------------------------------------------------------------------------------
// (a) Documented events through the real router

const STRIPE_SECRET: &str = "whsec_contract_stripe";
const DUFFEL_SECRET: &str = "whsec_contract_duffel";

async fn ingress(pool: &PgPool) -> (String, tokio_util::sync::CancellationToken) {
    let router = fleet::webhooks::router(
        pool.clone(),
        Queue::new(pool.clone(), Arc::new(fleet_registry())),
        WebhookSecrets {
            stripe: vec![STRIPE_SECRET.into()],
            duffel: vec![DUFFEL_SECRET.into()],
            product: Vec::new(),
        },
        fleet::serve::Limits::default().max_body_bytes,
    );
    serve(router).await
}

/// POSTs `event` to `/webhooks/{provider}`, signed now as that provider signs.
async fn deliver(base: &str, provider: &str, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let (header, secret) = match provider {
        "stripe" => ("stripe-signature", STRIPE_SECRET),
        _ => ("x-duffel-signature", DUFFEL_SECRET),
    };
    let t = chrono::Utc::now().timestamp();
    let resp = Client::new()
        .post(format!("{base}/webhooks/{provider}"))
        .header("content-type", "application/json")
        .header(header, signature::header(secret, t, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The documented event `fixture` with `object` as `data.object` and its own event id (every
/// documented example carries the same id, and a redelivered id is a duplicate).
fn event(fixture: &str, id: &str, object: Value) -> Value {
    let mut e = Fixture::load(fixture).example();
    e["id"] = json!(id);
    e["data"]["object"] = object;
    e
}

fn duffel_event(kind: &str, id: &str, object: Value) -> Value {
    let file = format!("duffel/webhook_event.{}.json", kind.replace('.', "_"));
    let e = event(&file, id, object);
    assert_eq!(e["type"], kind, "{file}");
    e
}

fn stripe_event(kind: &str, id: &str, object: Value) -> Value {
    let mut e = event("stripe/event.json", id, object);
    e["type"] = json!(kind);
    e
}

async fn newest_job(pool: &PgPool) -> (String, Value, String) {
    sqlx::query_as("SELECT kind, args, idempotency_key FROM fleet_jobs ORDER BY id DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn counts(pool: &PgPool) -> (i64, i64) {
    webhook_and_job_counts(pool).await
}

/// A ticketed booking of the documented order id, as the saga leaves it.
async fn ticketed_booking(pool: &PgPool, order_id: &str) -> uuid::Uuid {
    let keys = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let seeded = jobs::seed::seed_campaign(
        &jobs::Db::from(pool.clone()),
        &keys,
        &jobs::seed::CampaignSeed::new(1),
    )
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id, stripe_payment_intent_id, total_amount, currency,
                               status, authorized_at, order_attempted_at, ordered_at, captured_at)
         VALUES ($1, 'off_00009htYpSCXrwaB9DnUm0', $2, 'pi_3MtwBwLkdIwHu7ix28a3tqPa', 300, 'USD', 'ticketed', now(), now(), now(), now())
         RETURNING id",
    )
    .bind(seeded.campaign_id)
    .bind(order_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_documented_duffel_order_cancellation_enqueues_the_refund_compensation() {
    let db = db().await;
    let cancellation = Fixture::load("duffel/order_cancellation.json").example();
    let order_id = cancellation["order_id"].as_str().unwrap();
    let booking = ticketed_booking(&db.pool, order_id).await;
    let (base, stop) = ingress(&db.pool).await;
    let e = duffel_event(
        "order_cancellation.confirmed",
        "wev_0000A4tQSmKyqOrcySrGbo",
        cancellation.clone(),
    );
    let (status, v) = deliver(&base, "duffel", &e).await;
    assert_eq!((status, v["jobs"].as_u64()), (200, Some(1)), "{v}");
    let (kind, args, key) = newest_job(&db.pool).await;
    assert_eq!(kind, "refund_compensation");
    assert_eq!(
        args,
        json!({"booking_id": booking, "reason": "order_cancelled"})
    );
    assert_eq!(key, format!("booking:{booking}:refund"));
    // Duffel retries for 72 h: the same delivery again changes nothing.
    let (status, v) = deliver(&base, "duffel", &e).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(counts(&db.pool).await, (1, 1));
    stop.cancel();
}

#[tokio::test]
async fn documented_duffel_order_events_are_accepted_and_reconcile_the_order() {
    let db = db().await;
    let (base, stop) = ingress(&db.pool).await;
    let order = Fixture::load("duffel/order.json").example();
    let aic = Fixture::load("duffel/airline_initiated_change_event_object.json").example();
    let cases = [
        (
            "order.created",
            "wev_0000A4tQSmKyqOrcySrGb1",
            order,
            "ord_00009hthhsUZ8W4LxQgkjo",
        ),
        (
            "order.airline_initiated_change_detected",
            "wev_0000A4tQSmKyqOrcySrGb2",
            aic,
            "ord_0000ABd6wggSct7BoraU1o",
        ),
    ];
    for (kind, id, object, order_id) in cases {
        let (status, v) = deliver(&base, "duffel", &duffel_event(kind, id, object)).await;
        assert_eq!((status, v["jobs"].as_u64()), (200, Some(1)), "{kind}: {v}");
        let (job, args, key) = newest_job(&db.pool).await;
        if kind == "order.airline_initiated_change_detected" {
            // The change has its own kind: the order and the change named by the object.
            assert_eq!(job, "airline_change", "{kind}");
            assert_eq!(
                args,
                json!({"order_id": order_id, "aic_id": "aic_0011AJSACO83RgsiSySpzH", "event_id": id})
            );
        } else {
            assert_eq!(job, "order_reconcile", "{kind}");
            assert_eq!(
                args,
                json!({"order_id": order_id, "booking_id": null, "event_type": kind, "event_id": id})
            );
        }
        assert_eq!(key, format!("duffel:{id}:0"));
    }
    // order.creation_failed: what its object holds is not documented; an object naming no
    // order and no booking is recorded (the provider stops retrying) and makes no job.
    let failed = duffel_event(
        "order.creation_failed",
        "wev_0000A4tQSmKyqOrcySrGb3",
        json!({}),
    );
    let (status, v) = deliver(&base, "duffel", &failed).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    assert_eq!(counts(&db.pool).await, (3, 2));
    stop.cancel();
}

#[tokio::test]
async fn documented_stripe_events_are_accepted_and_make_their_follow_ups() {
    let db = db().await;
    let (base, stop) = ingress(&db.pool).await;
    let pi = Fixture::load("stripe/payment_intent.json").example();
    let charge = Fixture::load("stripe/charge.json").example();
    let dispute = Fixture::load("stripe/dispute.json").example();
    let pm = Fixture::load("stripe/payment_method.json").example();
    let refund = Fixture::load("stripe/refund.json").example();
    let mut refund_failed = refund.clone();
    refund_failed["status"] = json!("failed");
    refund_failed["failure_reason"] = json!("expired_or_canceled_card");
    let refund_reconcile = |kind: &str| {
        Some((
            "refund_reconcile",
            json!({"stripe_refund_id": "re_1Nispe2eZvKYlo2Cd31jOCgZ", "event_type": kind}),
        ))
    };
    let pi_id = pi["id"].as_str().unwrap().to_owned();
    let with_pi = |mut o: Value| {
        o["payment_intent"] = json!(pi_id);
        o
    };
    let reconcile = |kind: &str| {
        Some((
            "payment_reconcile",
            json!({"payment_intent_id": pi_id, "event_type": kind}),
        ))
    };
    // (event type, data.object, the follow-up job's kind and args, if any)
    type Case<'a> = (&'a str, Value, Option<(&'a str, Value)>);
    let cases: Vec<Case> = vec![
        (
            "payment_intent.payment_failed",
            pi.clone(),
            reconcile("payment_intent.payment_failed"),
        ),
        (
            "payment_intent.canceled",
            pi.clone(),
            reconcile("payment_intent.canceled"),
        ),
        // The documented examples' charge and dispute were made without a PaymentIntent
        // (`payment_intent: null`): recorded, no job. Ours always have one.
        ("charge.refunded", charge.clone(), None),
        ("charge.dispute.created", dispute.clone(), None),
        (
            "charge.refunded",
            with_pi(charge.clone()),
            reconcile("charge.refunded"),
        ),
        (
            "charge.expired",
            with_pi(charge),
            reconcile("charge.expired"),
        ),
        (
            "charge.dispute.created",
            with_pi(dispute),
            reconcile("charge.dispute.created"),
        ),
        (
            "refund.updated",
            refund.clone(),
            refund_reconcile("refund.updated"),
        ),
        (
            "refund.failed",
            refund_failed,
            refund_reconcile("refund.failed"),
        ),
        (
            "charge.refund.updated",
            refund,
            refund_reconcile("charge.refund.updated"),
        ),
        (
            "payment_method.automatically_updated",
            pm,
            Some((
                "card_update",
                json!({"stripe_payment_method_id": "pm_1Q0PsIJvEtkwdCNYMSaVuRz6", "exp_month": 8, "exp_year": 2026}),
            )),
        ),
    ];
    for (n, (kind, object, want)) in cases.into_iter().enumerate() {
        let id = format!("evt_1NG8Du2eZvKYlo2CUI79vXW{n}");
        let (status, v) = deliver(&base, "stripe", &stripe_event(kind, &id, object)).await;
        assert_eq!(status, 200, "{kind}: {v}");
        match want {
            Some((job, args)) => {
                assert_eq!(v["jobs"].as_u64(), Some(1), "{kind}: {v}");
                let (got_job, got_args, key) = newest_job(&db.pool).await;
                assert_eq!((got_job.as_str(), &got_args), (job, &args), "{kind}");
                assert_eq!(key, format!("stripe:{id}:0"));
            }
            None => assert_eq!(v["status"], "ignored", "{kind}: {v}"),
        }
    }
    // The example event itself, verbatim (a SetupIntent event we do not handle): recorded.
    let verbatim = Fixture::load("stripe/event.json").example();
    let (status, v) = deliver(&base, "stripe", &verbatim).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    assert_eq!(counts(&db.pool).await, (12, 9));
    stop.cancel();
}

// ------------------------------------------------------------------------------------------
// (b) The sandbox sends and answers the documented shapes

const SK: &str = "sk_test_contracts";
const DUFFEL_TOKEN: &str = "duffel_test_contracts";
const RESEND_KEY: &str = "re_contracts";

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.json().await.unwrap_or(Value::Null),
    }
}

struct Api {
    base: String,
    c: Client,
}

impl Api {
    fn stripe(&self, path: &str, key: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.c
            .post(format!("{}{path}", self.base))
            .bearer_auth(SK)
            .header("Idempotency-Key", key)
            .form(form)
    }

    fn duffel(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(DUFFEL_TOKEN)
            .header("Duffel-Version", "v2")
    }

    fn resend(&self, key: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.c.post(format!("{}/emails", self.base));
        match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
}

fn hold_form(pm: &str) -> Vec<(&str, &str)> {
    vec![
        ("amount", "9080"),
        ("currency", "gbp"),
        ("customer", "cus_contracts"),
        ("payment_method", pm),
        ("off_session", "true"),
        ("confirm", "true"),
        ("capture_method", "manual"),
        ("metadata[booking_id]", "bk_contracts"),
    ]
}

/// Drives the sandbox through every state change that emits an event (Stripe: hold, capture,
/// refund, decline, void; Duffel: order, cancellation, an airline change) and checks each
/// response against its fixture on the way. Returns the events it delivered.
async fn drive_sandbox(api: &Api) -> usize {
    let pi_fx = Fixture::load("stripe/payment_intent.json");
    // Stripe: a hold, captured, refunded.
    let held = answer(api.stripe("/v1/payment_intents", "c-1", &hold_form("pm_card_visa"))).await;
    assert_eq!(held.status, 200, "{}", held.body);
    pi_fx.assert_shape(&held.body);
    let pi = held.body["id"].as_str().unwrap().to_owned();
    let captured =
        answer(api.stripe(&format!("/v1/payment_intents/{pi}/capture"), "c-2", &[])).await;
    pi_fx.assert_shape(&captured.body);
    let refund = answer(api.stripe("/v1/refunds", "c-3", &[("payment_intent", &pi)])).await;
    assert_eq!(refund.status, 200, "{}", refund.body);
    let refund_fx = Fixture::load("stripe/refund.json");
    refund_fx.assert_shape(&refund.body);
    // Days later the refund fails (the card was closed): `refund.updated` and `refund.failed`.
    let re = refund.body["id"].as_str().unwrap().to_owned();
    let failed = answer(
        api.c
            .post(format!("{}/_sandbox/refunds/{re}/settle", api.base))
            .json(&json!({"status": "failed", "failure_reason": "expired_or_canceled_card"})),
    )
    .await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    refund_fx.assert_shape(&failed.body);
    assert_eq!(failed.body["failure_reason"], "expired_or_canceled_card");
    // A decline: the documented 402 card_error carrying the PaymentIntent.
    let declined = answer(api.stripe(
        "/v1/payment_intents",
        "c-4",
        &hold_form("pm_card_chargeDeclinedInsufficientFunds"),
    ))
    .await;
    let card_declined = Fixture::load("stripe/error.card_declined.json");
    assert_eq!(declined.status, card_declined.status());
    card_declined.assert_shape(&declined.body);
    pi_fx.assert_shape(&declined.body["error"]["payment_intent"]);
    // The same key with other parameters: the documented idempotency_error.
    let reused = answer(api.stripe("/v1/payment_intents", "c-4", &hold_form("pm_card_visa"))).await;
    let idem = Fixture::load("stripe/error.idempotency_error.json");
    assert_eq!(reused.status, idem.status());
    idem.assert_shape(&reused.body);
    // A second hold, voided.
    let held = answer(api.stripe("/v1/payment_intents", "c-5", &hold_form("pm_card_visa"))).await;
    let pi2 = held.body["id"].as_str().unwrap().to_owned();
    let voided = answer(api.stripe(
        &format!("/v1/payment_intents/{pi2}/cancel"),
        "c-6",
        &[("cancellation_reason", "abandoned")],
    ))
    .await;
    pi_fx.assert_shape(&voided.body);

    // Duffel: search, re-read, order, cancel.
    let orq = answer(
        api.duffel(
            reqwest::Method::POST,
            "/air/offer_requests?return_offers=false",
        )
        .json(&json!({"data": {
            "slices": [{"origin": "LHR", "destination": "JFK", "departure_date": "2031-05-01"}],
            "passengers": [{"type": "adult"}], "cabin_class": "economy"}})),
    )
    .await;
    assert_eq!(orq.status, 201, "{}", orq.body);
    let orq_id = orq.body["data"]["id"].as_str().unwrap();
    let offers = answer(api.duffel(
        reqwest::Method::GET,
        &format!("/air/offers?offer_request_id={orq_id}&sort=total_amount&limit=2"),
    ))
    .await;
    assert_eq!(offers.body["meta"]["limit"], 2, "the page size asked for");
    let offer_fx = Fixture::load("duffel/offer.json");
    let listed = offers.body["data"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.len() <= 2, "{}", offers.body);
    for o in listed {
        offer_fx.assert_shape(o);
    }
    let offer_id = listed[0]["id"].as_str().unwrap();
    let offer = answer(api.duffel(reqwest::Method::GET, &format!("/air/offers/{offer_id}"))).await;
    offer_fx.assert_shape(&offer.body["data"]);
    let offer = offer.body["data"].clone();
    let order_body = |offer: &Value| {
        json!({"data": {
            "type": "instant",
            "selected_offers": [offer["id"]],
            "passengers": [{"id": offer["passengers"][0]["id"], "title": "ms", "gender": "f",
                "given_name": "Ada", "family_name": "Lovelace", "born_on": "1990-12-10",
                "email": "ada@example.com", "phone_number": "+442080160508"}],
            "payments": [{"type": "balance", "amount": offer["total_amount"], "currency": offer["total_currency"]}],
            "metadata": {"booking_id": "bk_contracts"},
        }})
    };
    let order = answer(
        api.duffel(reqwest::Method::POST, "/air/orders")
            .json(&order_body(&offer)),
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.body);
    Fixture::load("duffel/order.json").assert_shape(&order.body["data"]);
    let order_id = order.body["data"]["id"].as_str().unwrap();
    // The airline moves the flight: the change as Duffel lists it and as its accept answers.
    let aic_fx = Fixture::load("duffel/airline_initiated_change.json");
    let made = answer(
        api.c
            .post(format!(
                "{}/_sandbox/orders/{order_id}/airline_change",
                api.base
            ))
            .json(&json!({"shift_minutes": 90, "deliver": false})),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let listed = answer(api.duffel(
        reqwest::Method::GET,
        &format!("/air/airline_initiated_changes?order_id={order_id}"),
    ))
    .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let changes = listed.body["data"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{}", listed.body);
    aic_fx.assert_shape(&changes[0]);
    let aic = changes[0]["id"].as_str().unwrap();
    let accepted = answer(api.duffel(
        reqwest::Method::POST,
        &format!("/air/airline_initiated_changes/{aic}/actions/accept"),
    ))
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    aic_fx.assert_shape(&accepted.body["data"]);
    let cancellation_fx = Fixture::load("duffel/order_cancellation.json");
    let quote = answer(
        api.duffel(reqwest::Method::POST, "/air/order_cancellations")
            .json(&json!({"data": {"order_id": order_id}})),
    )
    .await;
    assert_eq!(quote.status, 201, "{}", quote.body);
    cancellation_fx.assert_shape(&quote.body["data"]);
    let ore = quote.body["data"]["id"].as_str().unwrap();
    let confirmed = answer(api.duffel(
        reqwest::Method::POST,
        &format!("/air/order_cancellations/{ore}/actions/confirm"),
    ))
    .await;
    cancellation_fx.assert_shape(&confirmed.body["data"]);
    // An airline-initiated change, in the documented object shape.
    let aic = Fixture::load("duffel/airline_initiated_change_event_object.json").example();
    let emitted = answer(
        api.c
            .post(format!("{}/_sandbox/webhooks/duffel", api.base))
            .json(&json!({"type": "order.airline_initiated_change_detected", "object": aic})),
    )
    .await;
    assert_eq!(emitted.status, 200);
    8 + 3
}

#[tokio::test]
async fn the_sandbox_emits_exactly_the_documented_event_shapes_and_the_router_accepts_them() {
    let (url, mut rx) = webhook_receiver(0).await;
    let cfg = SandboxConfig {
        webhook: Some(WebhookTarget {
            stripe_url: format!("{url}/stripe"),
            stripe_secret: STRIPE_SECRET.into(),
            duffel_url: format!("{url}/duffel"),
            duffel_secret: DUFFEL_SECRET.into(),
        }),
        ..SandboxConfig::default()
    };
    let sb = Sandbox::start(cfg, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let api = Api {
        base: sb.base_url.clone(),
        c: Client::new(),
    };
    let expected = drive_sandbox(&api).await;
    let mut deliveries = Vec::new();
    while deliveries.len() < expected {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {expected} events delivered", deliveries.len()))
            .unwrap();
        deliveries.push(d);
    }

    let stripe_event = Fixture::load("stripe/event.json");
    let object_fixture = |provider: &str, kind: &str| -> &'static str {
        match (provider, kind) {
            ("stripe", k) if k.starts_with("payment_intent.") => "stripe/payment_intent.json",
            ("stripe", "charge.refunded") => "stripe/charge.json",
            ("stripe", "refund.updated" | "refund.failed") => "stripe/refund.json",
            ("duffel", "order.created") => "duffel/order.json",
            ("duffel", "order_cancellation.confirmed") => "duffel/order_cancellation.json",
            ("duffel", "order.airline_initiated_change_detected") => {
                "duffel/airline_initiated_change_event_object.json"
            }
            other => panic!("no fixture for {other:?}"),
        }
    };
    let mut kinds = BTreeMap::new();
    let now = chrono::Utc::now().timestamp();
    for (provider, headers, body) in &deliveries {
        let e: Value = serde_json::from_slice(body).unwrap();
        let kind = e["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no top-level type: {e}"));
        *kinds.entry(format!("{provider} {kind}")).or_insert(0) += 1;
        let (header, secret) = if provider == "stripe" {
            ("stripe-signature", STRIPE_SECRET)
        } else {
            ("x-duffel-signature", DUFFEL_SECRET)
        };
        let sig = headers[header].to_str().unwrap();
        signature::verify(Some(sig), &[secret.to_owned()], body, now, 300)
            .unwrap_or_else(|err| panic!("{provider} {kind}: {err}"));
        if provider == "stripe" {
            stripe_event.assert_shape(&e);
            assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        } else {
            let fx = format!("duffel/webhook_event.{}.json", kind.replace('.', "_"));
            Fixture::load(&fx).assert_shape(&e);
            assert!(e["id"].as_str().unwrap().starts_with("wev_"));
            // "the related object's id"
            let object = &e["data"]["object"];
            let related = object.get("aic_id").unwrap_or(&object["id"]);
            assert_eq!(e["idempotency_key"], *related, "{kind}");
        }
        Fixture::load(object_fixture(provider, kind)).assert_shape(&e["data"]["object"]);
    }
    let want: BTreeMap<String, i32> = [
        ("stripe payment_intent.amount_capturable_updated", 2),
        ("stripe payment_intent.succeeded", 1),
        ("stripe charge.refunded", 1),
        ("stripe refund.updated", 1),
        ("stripe refund.failed", 1),
        ("stripe payment_intent.payment_failed", 1),
        ("stripe payment_intent.canceled", 1),
        ("duffel order.created", 1),
        ("duffel order_cancellation.confirmed", 1),
        ("duffel order.airline_initiated_change_detected", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(kinds, want);

    // The same bodies, delivered to the real ingress, are all accepted.
    let db = db().await;
    let (base, stop) = ingress(&db.pool).await;
    for (provider, _, body) in &deliveries {
        let e: Value = serde_json::from_slice(body).unwrap();
        let (status, v) = deliver(&base, provider, &e).await;
        assert_eq!(status, 200, "{provider} {}: {v}", e["type"]);
    }
    assert_eq!(counts(&db.pool).await.0, expected as i64);
    stop.cancel();
    sb.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_sandbox_answers_errors_in_the_documented_shapes_and_statuses() {
    let sb = Sandbox::start(
        SandboxConfig::default(),
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    )
    .await
    .unwrap();
    let api = Api {
        base: sb.base_url.clone(),
        c: Client::new(),
    };
    // Duffel: a refused order (offer gone) and a rate limit.
    let search = |route: (&str, &str)| {
        api.duffel(
            reqwest::Method::POST,
            "/air/offer_requests?return_offers=false",
        )
        .json(&json!({"data": {
            "slices": [{"origin": route.0, "destination": route.1, "departure_date": "2031-05-01"}],
            "passengers": [{"type": "adult"}], "cabin_class": "economy"}}))
    };
    let gone = answer(search(("LHR", "AMS"))).await;
    let orq = gone.body["data"]["id"].as_str().unwrap();
    let offers = answer(api.duffel(
        reqwest::Method::GET,
        &format!("/air/offers?offer_request_id={orq}"),
    ))
    .await;
    let offer = &offers.body["data"][0];
    let refused = answer(api.duffel(reqwest::Method::POST, "/air/orders").json(&json!({"data": {
        "type": "instant", "selected_offers": [offer["id"]], "passengers": [],
        "payments": [{"type": "balance", "amount": offer["total_amount"], "currency": offer["total_currency"]}],
    }})))
    .await;
    let fx = Fixture::load("duffel/error.offer_no_longer_available.json");
    assert_eq!(refused.status, fx.status(), "{}", refused.body);
    fx.assert_shape(&refused.body);
    assert_eq!(
        refused.body["errors"][0]["code"],
        "offer_no_longer_available"
    );
    let limited = answer(search(("LHR", "FRA"))).await;
    let fx = Fixture::load("duffel/error.rate_limit_exceeded.json");
    assert_eq!(limited.status, fx.status());
    fx.assert_shape(&limited.body);
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(limited.headers.contains_key(h), "{h}");
    }
    let reset = limited.headers["ratelimit-reset"].to_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc2822(reset).is_ok(),
        "ratelimit-reset is an HTTP date: {reset}"
    );

    // Resend: each error name with its documented status and body.
    let email = json!({"from": "Parker Flight <b@parkerflight.example>", "to": ["t@example.com"],
        "subject": "Booked", "html": "<p>Booked</p>", "text": "Booked"});
    let sent = answer(
        api.resend(Some(RESEND_KEY))
            .header("Idempotency-Key", "k-1")
            .json(&email),
    )
    .await;
    let fx = Fixture::load("resend/send_email.response.json");
    assert_eq!(sent.status, fx.status());
    fx.assert_shape(&sent.body);
    let mut other = email.clone();
    other["subject"] = json!("Something else");
    let mut missing_to = email.clone();
    missing_to.as_object_mut().unwrap().remove("to");
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("missing_api_key", api.resend(None).json(&email)),
        (
            "invalid_api_key",
            api.resend(Some("sk_not_resend")).json(&email),
        ),
        (
            "validation_error",
            api.resend(Some(RESEND_KEY))
                .header("content-type", "application/json")
                .body("{not json"),
        ),
        (
            "missing_required_field",
            api.resend(Some(RESEND_KEY)).json(&missing_to),
        ),
        (
            "invalid_idempotent_request",
            api.resend(Some(RESEND_KEY))
                .header("Idempotency-Key", "k-1")
                .json(&other),
        ),
        (
            "invalid_idempotency_key",
            api.resend(Some(RESEND_KEY))
                .header("Idempotency-Key", "k".repeat(257))
                .json(&email),
        ),
    ];
    for (name, req) in cases {
        let got = answer(req).await;
        let fx = Fixture::load(&format!("resend/error.{name}.json"));
        assert_eq!(got.status, fx.status(), "{name}: {}", got.body);
        fx.assert_shape(&got.body);
        assert_eq!(got.body["name"], name);
        assert_eq!(got.body["statusCode"], got.status);
    }
    sb.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// (c) The clients classify the documented error bodies

/// A server on a free port that answers every request with `status`, `headers` and `body`.
async fn answering(status: u16, headers: Vec<(String, String)>, body: Value) -> String {
    let reply = Arc::new(Mutex::new((status, headers, body)));
    let app = Router::new().fallback(move || {
        let reply = reply.clone();
        async move {
            let (status, headers, body) = reply.lock().unwrap().clone();
            let mut resp =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The fixture's documented status, headers and body, served over loopback.
async fn serving(fx: &Fixture, body: Value) -> String {
    let headers = fx.v["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    answering(fx.status(), headers, body).await
}

#[tokio::test]
async fn the_stripe_client_classifies_stripes_documented_errors() {
    use FailureClass::*;
    let pi = Fixture::load("stripe/payment_intent.json").example();
    let cases = [
        ("card_declined", Rejected),
        ("idempotency_error", Invalid),
        ("rate_limit", RateLimited),
        ("lock_timeout", RateLimited),
        ("idempotency_key_in_use", Transient),
        ("api_error", Ambiguous),
    ];
    for (case, class) in cases {
        let fx = Fixture::load(&format!("stripe/error.{case}.json"));
        let mut body = fx.example();
        if case == "card_declined" {
            body["error"]["payment_intent"] = pi.clone();
        }
        let client = StripePayments::new(&StripeConfig {
            base_url: serving(&fx, body).await,
            secret_key: ApiKey::new("sk_test_contracts"),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let err = client
            .authorize_payment(
                &AuthorizePayment {
                    customer_id: "cus_1".into(),
                    payment_method_id: "pm_1".into(),
                    amount_minor: 2000,
                    currency: "USD".into(),
                    booking_id: "b-1".into(),
                    campaign_id: "c-1".into(),
                },
                "booking:b-1:pi",
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, class, "{case}: {err}");
        assert_eq!(err.status, Some(fx.status()), "{case}");
        let job = JobError::from(err.clone());
        match class {
            Rejected | Invalid => assert!(matches!(job, JobError::Fatal(_)), "{case}"),
            // A 429 empties the fleet's Stripe budget until the reset (docs/limits.md).
            RateLimited => assert!(
                matches!(&job, JobError::RateLimited { budget, .. } if budget == "stripe"),
                "{case}: {job:?}"
            ),
            Transient | Ambiguous => assert!(matches!(job, JobError::Retryable(_)), "{case}"),
        }
        if case == "card_declined" {
            assert!(err.is_decline());
            assert_eq!(err.decline_code.as_deref(), Some("insufficient_funds"));
            assert_eq!(
                err.payment_intent_id.as_deref(),
                Some("pi_3MtwBwLkdIwHu7ix28a3tqPa")
            );
        }
        assert!(
            !err.to_string()
                .contains(fx.v["example"]["error"]["message"].as_str().unwrap()),
            "{case}: Stripe's message stays out of the error text"
        );
    }
}

fn passenger() -> OrderPassenger {
    OrderPassenger {
        id: "pas_00009hj8USM7Ncg31cBCLL".into(),
        title: "ms".into(),
        gender: "f".into(),
        given_name: "Amelia".into(),
        family_name: "Earhart".into(),
        born_on: chrono::NaiveDate::from_ymd_opt(1987, 7, 24).unwrap(),
        email: "amelia@example.com".into(),
        phone_number: "+442080160508".into(),
        identity_documents: vec![],
    }
}

/// The documented change (the official SDK's example), served as Duffel's list and accept
/// answer it, is read by the real client: ids, the legs before and after with their local
/// times, what can be done, and the action once taken.
#[tokio::test]
async fn the_duffel_client_reads_the_documented_airline_initiated_change() {
    let fx = Fixture::load("duffel/airline_initiated_change.json");
    let example = fx.example();
    let client = |body: Value| async move {
        DuffelClient::new(&DuffelConfig {
            base_url: answering(200, vec![], body).await,
            access_token: ApiKey::new("duffel_test_contracts"),
            timeout: Duration::from_secs(5),
            ..DuffelConfig::default()
        })
        .unwrap()
    };
    let order = example["order_id"].as_str().unwrap();
    let listed = client(json!({"data": [example.clone()]}))
        .await
        .list_airline_changes(order)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!(
        (c.id.as_str(), c.order_id.as_str()),
        (example["id"].as_str().unwrap(), order)
    );
    let at = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
    assert_eq!(
        (c.removed[0].origin.as_str(), c.removed[0].departing_at),
        ("LHR", Some(at("2023-03-26T06:15:00")))
    );
    assert_eq!(c.added[0].departing_at, Some(at("2023-03-28T11:00:00")));
    assert_eq!(c.added[0].arriving_at, Some(at("2023-03-28T14:15:00")));
    assert_eq!(c.available_actions, ["accept", "cancel", "change"]);
    assert_eq!((c.action_taken.as_deref(), c.action_taken_at), (None, None));
    assert!(c.created_at.is_some());
    // A list that names another order's change is not taken for this order's.
    let other = client(json!({"data": [example.clone()]}))
        .await
        .list_airline_changes("ord_0000SomeoneElse")
        .await
        .unwrap();
    assert!(other.is_empty(), "{other:?}");
    let mut accepted = example.clone();
    accepted["action_taken"] = json!("accepted");
    accepted["action_taken_at"] = json!("2022-01-17T10:12:14.545Z");
    let a = client(json!({"data": accepted}))
        .await
        .accept_airline_change(example["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(a.action_taken.as_deref(), Some("accepted"));
    assert!(a.action_taken_at.is_some());
}

#[tokio::test]
async fn the_duffel_client_classifies_duffels_documented_errors() {
    use FailureClass::*;
    let cases = [
        ("offer_no_longer_available", Rejected, false),
        ("order_not_created", Rejected, false),
        ("internal_server_error", Ambiguous, true),
        ("rate_limit_exceeded", RateLimited, false),
    ];
    for (case, class, may_exist) in cases {
        let fx = Fixture::load(&format!("duffel/error.{case}.json"));
        let reset = chrono::Utc::now() + chrono::Duration::seconds(5);
        let mut served = fx.v.clone();
        if let Some(h) = served["headers"].as_object_mut() {
            h.insert(
                "ratelimit-reset".into(),
                json!(reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
            );
        }
        let served = Fixture {
            name: fx.name.clone(),
            v: served,
        };
        let client = DuffelClient::new(&DuffelConfig {
            base_url: serving(&served, fx.example()).await,
            access_token: ApiKey::new("duffel_test_contracts"),
            timeout: Duration::from_secs(5),
            ..DuffelConfig::default()
        })
        .unwrap();
        let err = client
            .create_order(&CreateOrder {
                offer_id: "off_00009htYpSCXrwaB9DnUm0".into(),
                passengers: vec![passenger()],
                amount_minor: 4500,
                currency: "GBP".into(),
                metadata: BTreeMap::from([("booking_id".into(), "b-1".into())]),
            })
            .await
            .unwrap_err();
        assert_eq!(err.class, class, "{case}: {err}");
        assert_eq!(err.order_may_exist(), may_exist, "{case}");
        assert!(err.is_code(case), "{case}");
        assert_eq!(
            err.request_id.as_deref(),
            Some("FZW0H3HdJwKk5HMAAKxB"),
            "{case}"
        );
        if class == RateLimited {
            assert_eq!(err.reset_at.map(|t| t.timestamp()), Some(reset.timestamp()));
        }
    }
}

#[tokio::test]
async fn the_resend_client_classifies_resends_documented_errors() {
    use FailureClass::*;
    let cases = [
        ("validation_error", Invalid, None),
        ("missing_required_field", Invalid, None),
        ("missing_api_key", Invalid, None),
        ("invalid_api_key", Invalid, None),
        ("invalid_idempotency_key", Invalid, None),
        ("invalid_idempotent_request", Invalid, None),
        ("concurrent_idempotent_requests", Transient, None),
        (
            "rate_limit_exceeded",
            RateLimited,
            Some(Duration::from_secs(2)),
        ),
        ("daily_quota_exceeded", RateLimited, Some(QUOTA_SNOOZE)),
        ("application_error", Ambiguous, None),
    ];
    for (case, class, snooze) in cases {
        let fx = Fixture::load(&format!("resend/error.{case}.json"));
        let client = ResendClient::new(&EmailConfig {
            base_url: serving(&fx, fx.example()).await,
            api_key: ApiKey::new("re_contracts"),
            from: "Parker Flight <bookings@parkerflight.example>".into(),
            timeout: Duration::from_secs(5),
            ..EmailConfig::default()
        })
        .unwrap();
        let email = OutgoingEmail {
            to: vec!["traveler@example.com".into()],
            subject: "Booked".into(),
            html: "<p>Booked</p>".into(),
            text: "Booked".into(),
            attachments: Vec::new(),
        };
        let err = client
            .send(&email, "booking-confirmed/b-1")
            .await
            .unwrap_err();
        assert_eq!(err.class, class, "{case}: {err}");
        assert_eq!(err.name.as_deref(), Some(case));
        assert_eq!(err.retry_after, snooze, "{case}");
        if let Some(after) = snooze {
            assert_eq!(
                JobError::from(err),
                JobError::RateLimited {
                    budget: "resend".into(),
                    after,
                    reason: format!("resend send rate_limited: HTTP 429 {case}"),
                }
            );
        }
    }
}
