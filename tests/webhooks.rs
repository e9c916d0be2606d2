//! Webhook ingress: the bad-webhook corpus writes nothing; valid events record and enqueue
//! their follow-ups in one transaction; duplicates and unknown types change nothing.

mod common;

use std::sync::Arc;

use common::*;
use fleet::{
    webhooks::{signature, WebhookSecrets},
    Queue,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const STRIPE_SECRET: &str = "whsec_test_stripe";
const DUFFEL_SECRET: &str = "whsec_test_duffel";

async fn start(pool: &PgPool) -> (String, CancellationToken) {
    let secrets = WebhookSecrets {
        stripe: vec!["whsec_old".into(), STRIPE_SECRET.into()],
        duffel: vec![DUFFEL_SECRET.into()],
        product: Vec::new(),
    };
    // The kinds `fleet serve` knows: its follow-ups must fit them.
    let router = fleet::webhooks::router(
        pool.clone(),
        Queue::new(pool.clone(), Arc::new(fleet_registry())),
        secrets,
        fleet::serve::Limits::default().max_body_bytes,
    );
    serve(router).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post(url: &str, header: Option<(&str, String)>, body: Vec<u8>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some((h, v)) = header {
        r = r.header(h, v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn counts(pool: &PgPool) -> (i64, i64) {
    webhook_and_job_counts(pool).await
}

/// A Stripe event in the documented delivered shape ("The Event object",
/// tests/contracts/stripe/event.json).
fn stripe_event(id: &str, kind: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive", "created": now(),
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
    }))
    .unwrap()
}

/// A Duffel event in the documented delivered shape: every field at the top level, the object
/// in `data.object` (Duffel's webhooks page, tests/contracts/duffel/webhook_event.*.json).
fn duffel_event(id: &str, kind: &str, object: Value) -> Vec<u8> {
    let related = object["id"].as_str().unwrap_or("obj_1").to_owned();
    serde_json::to_vec(&json!({
        "id": id, "api_version": "v2", "type": kind, "data": {"object": object},
        "live_mode": false, "idempotency_key": related,
        "created_at": "2020-04-11T15:48:11.642000Z",
        "identity_organisation_id": "org_0000APMFjhs4X2rJ6k7UIE",
    }))
    .unwrap()
}

#[tokio::test]
async fn bad_webhooks_get_a_4xx_with_a_reason_and_write_nothing() {
    let db = db().await;
    let (base, stop) = start(&db.pool).await;
    let url = format!("{base}/webhooks/stripe");
    let body = stripe_event("evt_1", "payment_intent.canceled", json!({"id": "pi_1"}));
    let sig = |secret: &str, t: i64, b: &[u8]| {
        Some(("stripe-signature", signature::header(secret, t, b)))
    };
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let oversized = vec![b' '; fleet::serve::Limits::default().max_body_bytes + 1];
    // Signed, well-formed, but with a NUL in the object: Postgres cannot store it, so it used to
    // answer 503 and the provider retried it for days.
    let with_nul = stripe_event(
        "evt_2",
        "payment_intent.canceled",
        json!({"id": "pi_2", "description": "a\u{0}b"}),
    );
    type Case<'a> = (&'a str, Option<(&'a str, String)>, Vec<u8>, u16, &'a str);
    // Clearly outside the 300 s window: the exact boundary is the unit tests' (fixed clock).
    let cases: Vec<Case> = vec![
        ("unsigned", None, body.clone(), 401, "missing_signature"),
        (
            "stale",
            sig(STRIPE_SECRET, now() - 360, &body),
            body.clone(),
            400,
            "stale_timestamp",
        ),
        (
            "future-dated",
            sig(STRIPE_SECRET, now() + 360, &body),
            body.clone(),
            400,
            "future_timestamp",
        ),
        (
            "tampered body",
            sig(STRIPE_SECRET, now(), &body),
            tampered,
            400,
            "bad_signature",
        ),
        (
            "wrong secret",
            sig("whsec_attacker", now(), &body),
            body.clone(),
            400,
            "bad_signature",
        ),
        (
            "garbage header",
            Some(("stripe-signature", "t=soon,v1=nope".into())),
            body.clone(),
            400,
            "malformed_signature",
        ),
        (
            "malformed json",
            sig(STRIPE_SECRET, now(), b"{not json"),
            b"{not json".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "no event id",
            sig(STRIPE_SECRET, now(), br#"{"type":"x"}"#),
            br#"{"type":"x"}"#.to_vec(),
            400,
            "missing_event_id",
        ),
        (
            "NUL in the object",
            sig(STRIPE_SECRET, now(), &with_nul),
            with_nul.clone(),
            400,
            "nul_character",
        ),
        (
            "oversized",
            sig(STRIPE_SECRET, now(), &oversized),
            oversized.clone(),
            413,
            "body_too_large",
        ),
    ];
    for (name, header, body, status, reason) in cases {
        let (got, v) = post(&url, header, body).await;
        assert_eq!(got, status, "{name}: {v}");
        if status != 413 {
            assert_eq!(v["error"], reason, "{name}");
        }
        assert_eq!(
            counts(&db.pool).await,
            (0, 0),
            "{name}: nothing written, nothing enqueued"
        );
    }
    let text = fleet::snapshot::render(None).await.unwrap();
    for reason in [
        "missing_signature",
        "stale_timestamp",
        "future_timestamp",
        "bad_signature",
        "malformed_json",
        "body_too_large",
    ] {
        assert!(
            text.contains(&format!("reason=\"{reason}\"")),
            "rejection {reason} counted"
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn a_valid_event_records_and_enqueues_once_and_duplicates_and_unknown_types_add_nothing() {
    let db = db().await;
    let (base, stop) = start(&db.pool).await;
    let url = format!("{base}/webhooks/stripe");
    let body = stripe_event(
        "evt_dup",
        "payment_intent.payment_failed",
        json!({"id": "pi_42"}),
    );
    // Signed with the old secret while rotating: still accepted.
    let h = Some((
        "stripe-signature",
        signature::header("whsec_old", now(), &body),
    ));
    let (status, v) = post(&url, h.clone(), body.clone()).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")));
    assert_eq!(counts(&db.pool).await, (1, 1));
    let (status, v) = post(&url, h, body).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(counts(&db.pool).await, (1, 1), "a duplicate adds nothing");

    let body = stripe_event("evt_unknown", "customer.created", json!({"id": "cus_1"}));
    let (status, v) = post(
        &url,
        Some((
            "stripe-signature",
            signature::header(STRIPE_SECRET, now(), &body),
        )),
        body,
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ignored")));
    assert_eq!(counts(&db.pool).await, (2, 1), "recorded, no job");
    stop.cancel();
}

#[tokio::test]
async fn each_handled_event_type_maps_to_its_follow_up_job() {
    let db = db().await;
    let p = &db.pool;
    // A ticketed booking whose order the airline cancels.
    let keys = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let seeded = jobs::seed::seed_campaign(
        &jobs::Db::from(p.clone()),
        &keys,
        &jobs::seed::CampaignSeed::new(1),
    )
    .await
    .unwrap();
    let booking: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id, stripe_payment_intent_id, total_amount, currency,
                               status, authorized_at, order_attempted_at, ordered_at, captured_at)
         VALUES ($1, 'off_9', 'ord_9', 'pi_9', 300, 'USD', 'ticketed', now(), now(), now(), now()) RETURNING id",
    )
    .bind(seeded.campaign_id)
    .fetch_one(p)
    .await
    .unwrap();
    let (base, stop) = start(p).await;
    let cases: Vec<(&str, Vec<u8>, &str, Value)> = vec![
        (
            "stripe",
            stripe_event(
                "evt_a",
                "payment_intent.payment_failed",
                json!({"id": "pi_9"}),
            ),
            "payment_reconcile",
            json!({"payment_intent_id": "pi_9", "event_type": "payment_intent.payment_failed"}),
        ),
        (
            "stripe",
            stripe_event("evt_b", "payment_intent.canceled", json!({"id": "pi_9"})),
            "payment_reconcile",
            json!({"payment_intent_id": "pi_9", "event_type": "payment_intent.canceled"}),
        ),
        (
            "stripe",
            stripe_event(
                "evt_c",
                "charge.refunded",
                json!({"id": "ch_1", "payment_intent": "pi_9"}),
            ),
            "payment_reconcile",
            json!({"payment_intent_id": "pi_9", "event_type": "charge.refunded"}),
        ),
        (
            "stripe",
            stripe_event(
                "evt_d",
                "charge.expired",
                json!({"id": "ch_1", "payment_intent": "pi_9"}),
            ),
            "payment_reconcile",
            json!({"payment_intent_id": "pi_9", "event_type": "charge.expired"}),
        ),
        (
            "stripe",
            stripe_event(
                "evt_e",
                "charge.dispute.created",
                json!({"id": "dp_1", "payment_intent": "pi_9"}),
            ),
            "payment_reconcile",
            json!({"payment_intent_id": "pi_9", "event_type": "charge.dispute.created"}),
        ),
        (
            "stripe",
            stripe_event(
                "evt_f",
                "payment_method.automatically_updated",
                json!({"id": "pm_card_visa__1", "card": {"exp_month": 3, "exp_year": 2031}}),
            ),
            "card_update",
            json!({"stripe_payment_method_id": "pm_card_visa__1", "exp_month": 3, "exp_year": 2031}),
        ),
        (
            "stripe",
            stripe_event(
                "evt_g",
                "payment_method.detached",
                json!({"id": "pm_card_visa__1", "object": "payment_method", "customer": null}),
            ),
            "card_detached",
            json!({"stripe_payment_method_id": "pm_card_visa__1"}),
        ),
        (
            "duffel",
            duffel_event(
                "wev_a",
                "order.created",
                json!({"id": "ord_9", "metadata": {"booking_id": booking}}),
            ),
            "order_reconcile",
            json!({"order_id": "ord_9", "booking_id": booking, "event_type": "order.created", "event_id": "wev_a"}),
        ),
        (
            "duffel",
            duffel_event(
                "wev_b",
                "order.creation_failed",
                json!({"id": null, "metadata": {"booking_id": booking}}),
            ),
            "order_reconcile",
            json!({"order_id": null, "booking_id": booking, "event_type": "order.creation_failed", "event_id": "wev_b"}),
        ),
        (
            "duffel",
            duffel_event(
                "wev_c",
                "order.airline_initiated_change_detected",
                json!({"id": "ord_9", "aic_id": "aic_1"}),
            ),
            "airline_change",
            json!({"order_id": "ord_9", "aic_id": "aic_1", "event_id": "wev_c"}),
        ),
        (
            "duffel",
            duffel_event(
                "wev_d",
                "order_cancellation.confirmed",
                json!({"id": "ore_1", "order_id": "ord_9"}),
            ),
            "refund_compensation",
            json!({"booking_id": booking, "reason": "order_cancelled"}),
        ),
    ];
    for (provider, body, kind, args) in cases {
        let (header, secret) = if provider == "stripe" {
            ("stripe-signature", STRIPE_SECRET)
        } else {
            ("x-duffel-signature", DUFFEL_SECRET)
        };
        let (status, v) = post(
            &format!("{base}/webhooks/{provider}"),
            Some((header, signature::header(secret, now(), &body))),
            body,
        )
        .await;
        assert_eq!((status, v["jobs"].as_u64()), (200, Some(1)), "{kind}: {v}");
        let (got_kind, got_args, key): (String, Value, String) = sqlx::query_as(
            "SELECT kind, args, idempotency_key FROM fleet_jobs ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(p)
        .await
        .unwrap();
        assert_eq!((got_kind.as_str(), &got_args), (kind, &args));
        if kind == "refund_compensation" {
            assert_eq!(
                key,
                format!("booking:{booking}:refund"),
                "dedupes with the saga's own refund"
            );
        } else {
            assert!(key.starts_with(provider), "{key}");
        }
    }
    stop.cancel();
}

#[test]
fn missing_webhook_secrets_stop_fleet_serve_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env_remove("FLEET_STRIPE_WEBHOOK_SECRET")
        .env("FLEET_DUFFEL_WEBHOOK_SECRET", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEET_STRIPE_WEBHOOK_SECRET"));
}
