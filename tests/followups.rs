//! The webhook follow-up kinds run by a real worker against the sandbox.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use fleet::{queue::JobState, Queue, Registry};
use jobs::seed;
use jobs::{
    kinds::{
        card_update::CardUpdate, order_reconcile::OrderReconcile,
        payment_reconcile::PaymentReconcile,
    },
    providers::AuthorizePayment,
    Job, KindDefaults,
};
use sandbox::Sandbox;

fn registry() -> Arc<Registry> {
    let quick = KindDefaults {
        backoff_base: Duration::from_millis(100),
        max_attempts: 3,
        ..KindDefaults::default()
    };
    let mut r = Registry::default();
    r.register_with::<CardUpdate>(quick.clone())
        .register_with::<PaymentReconcile>(quick.clone())
        .register_with::<OrderReconcile>(quick)
        // What the follow-ups enqueue: registered so it can be enqueued, paused where a test
        // inspects it.
        .register::<jobs::kinds::booking_attempt::BookingAttempt>()
        .register::<jobs::kinds::refund_compensation::RefundCompensation>();
    Arc::new(r)
}

#[tokio::test]
async fn follow_ups_record_provider_state_and_notify_the_traveler_once() {
    let db = db().await;
    let p = &db.pool;
    let sb = Sandbox::start(Default::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let deps = sandbox_deps(&sb.base_url).unwrap();
    let keys = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let s = seed::seed_campaign(
        &jobs::Db::from(p.clone()),
        &keys,
        &seed::CampaignSeed::new(5),
    )
    .await
    .unwrap();
    let reg = registry();
    let q = Queue::new(p.clone(), reg.clone());
    let w = fleet::Worker::new(p.clone(), reg, fast_settings())
        .with_extensions(extensions_of(deps.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(w.run(stop.clone()));

    // card_update: the new expiry is stored and audited.
    let id = q
        .enqueue(
            &CardUpdate {
                stripe_payment_method_id: "pm_card_visa__5".into(),
                exp_month: 4,
                exp_year: 2033,
            },
            None,
        )
        .await
        .unwrap()
        .id;
    wait_state(p, id, JobState::Completed, Duration::from_secs(5)).await;
    let exp: (i16, i16) =
        sqlx::query_as("SELECT exp_month, exp_year FROM payment_methods WHERE id = $1")
            .bind(s.payment_method_id)
            .fetch_one(p)
            .await
            .unwrap();
    assert_eq!(exp, (4, 2033));

    // payment_reconcile: the PaymentIntent's status as Stripe has it lands on the booking.
    let booking = uuid::Uuid::new_v4();
    let pi = deps
        .payments()
        .unwrap()
        .authorize_payment(
            &AuthorizePayment {
                customer_id: "cus_x".into(),
                payment_method_id: "pm_card_visa__5".into(),
                amount_minor: 30_000,
                currency: "USD".into(),
                booking_id: booking.to_string(),
                campaign_id: s.campaign_id.to_string(),
            },
            &format!("booking:{booking}:pi"),
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO bookings (id, campaign_id, duffel_offer_id, stripe_payment_intent_id, total_amount, currency, status, authorized_at)
         VALUES ($1, $2, 'off_x', $3, 300, 'USD', 'authorized', now())",
    )
    .bind(booking)
    .bind(s.campaign_id)
    .bind(&pi.id)
    .execute(p)
    .await
    .unwrap();
    let id = q
        .enqueue(
            &PaymentReconcile {
                payment_intent_id: pi.id.clone(),
                event_type: "charge.dispute.created".into(),
            },
            None,
        )
        .await
        .unwrap()
        .id;
    wait_state(p, id, JobState::Completed, Duration::from_secs(5)).await;
    let status: Option<String> =
        sqlx::query_scalar("SELECT payment_intent_status FROM bookings WHERE id = $1")
            .bind(booking)
            .fetch_one(p)
            .await
            .unwrap();
    assert_eq!(status.as_deref(), Some("requires_capture"));
    let disputes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'payment.dispute_opened'",
    )
    .fetch_one(p)
    .await
    .unwrap();
    assert_eq!(disputes, 1);

    assert_eq!(OrderReconcile::KIND, "order_reconcile");

    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn order_creation_failed_for_a_held_booking_resumes_the_saga_to_compensate() {
    let db = db().await;
    let p = &db.pool;
    let keys = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let s = seed::seed_campaign(
        &jobs::Db::from(p.clone()),
        &keys,
        &seed::CampaignSeed::new(6),
    )
    .await
    .unwrap();
    let booking: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, stripe_payment_intent_id, total_amount, currency, status, authorized_at)
         VALUES ($1, 'off_held', 'pi_held', 300, 'USD', 'authorized', now()) RETURNING id",
    )
    .bind(s.campaign_id)
    .fetch_one(p)
    .await
    .unwrap();
    // Run the follow-up's handler with booking_attempt paused, so the attempt it enqueues
    // stays visible in the queue.
    let sb = Sandbox::start(Default::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let reg = registry();
    let q = Queue::new(p.clone(), reg.clone());
    let mut conn = p.acquire().await.unwrap();
    fleet::queue::kind_pause(&mut *conn, "booking_attempt", "test", "inspect")
        .await
        .unwrap();
    let w = fleet::Worker::new(p.clone(), reg, fast_settings())
        .with_extensions(extensions_of(sandbox_deps(&sb.base_url).unwrap()));
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(w.run(stop.clone()));
    let job = OrderReconcile {
        order_id: None,
        booking_id: Some(booking),
        event_type: "order.creation_failed".into(),
        event_id: "wev_fail".into(),
    };
    let id = q.enqueue(&job, None).await.unwrap().id;
    wait_state(p, id, JobState::Completed, Duration::from_secs(5)).await;
    let (args, key): (serde_json::Value, String) = sqlx::query_as(
        "SELECT args, idempotency_key FROM fleet_jobs WHERE kind = 'booking_attempt'",
    )
    .fetch_one(p)
    .await
    .unwrap();
    assert_eq!(
        args,
        serde_json::json!({"campaign_id": s.campaign_id, "offer_id": "off_held"})
    );
    assert_eq!(key, format!("booking_attempt:{}", s.campaign_id));
    stop.cancel();
    handle.await.unwrap();
}
