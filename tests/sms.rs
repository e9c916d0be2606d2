//! Travelers told in their channels (`jobs::notify::tell`) through the real Resend and Twilio
//! clients pointed at the sandbox: text messages go to those who chose them, once per
//! notification however often the job runs; an invalid number fails its text alone; a Twilio
//! outage or rate limit delays the text without doubling it; and a text whose answer was lost
//! is found at Twilio instead of being sent again.

mod common;

use common::*;
use jobs::{notify, JobError};
use sandbox::{scenarios::Provider, RunningSandbox, Sandbox, SandboxConfig};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

async fn user(pool: &sqlx::PgPool, n: usize, phone: Option<&str>, prefs: Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO users (email, phone, notification_preferences) VALUES ($1, $2, $3)
         RETURNING id",
    )
    .bind(format!("sms{n}@example.test"))
    .bind(phone)
    .bind(prefs)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn start() -> (fleet::testkit::ScratchDb, RunningSandbox, jobs::Deps) {
    let db = db().await;
    let sb = Sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let deps = sandbox_deps(&sb.base_url).unwrap();
    (db, sb, deps)
}

/// `(channel, sent, failure_code)` of the outbox row of `key`.
async fn outbox(pool: &sqlx::PgPool, key: &str) -> Option<(String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT channel, sent_at IS NOT NULL, failure_code FROM notifications WHERE dedupe_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn tell(db: &jobs::Db, deps: &jobs::Deps, user: Uuid, key: &str) -> Result<(), JobError> {
    notify::tell(
        db,
        deps,
        user,
        "booking-confirmed",
        key,
        "Your flight LHR to JFK is booked",
        "Your flight is booked.",
    )
    .await
}

#[tokio::test]
async fn a_traveler_who_chose_sms_gets_one_text_and_one_email_however_often_told() {
    let (db, sb, deps) = start().await;
    let both = json!({"default": ["email", "sms"]});
    let texter = user(&db.pool, 1, Some("+14155550123"), both.clone()).await;
    for _ in 0..3 {
        tell(&db.db(), &deps, texter, "booking-confirmed/b1")
            .await
            .unwrap();
    }
    let c = sb.sandbox.counters();
    assert_eq!(c.sms_by_to.get("+14155550123"), Some(&1), "{c:?}");
    assert_eq!(
        c.emails_by_idempotency_key.get("booking-confirmed/b1"),
        Some(&1)
    );
    assert_eq!(
        outbox(&db.pool, "booking-confirmed/b1/sms").await,
        Some(("sms".to_owned(), true, None))
    );
    assert_eq!(
        outbox(&db.pool, "booking-confirmed/b1").await,
        Some(("email".to_owned(), true, None))
    );

    // No choice made: email only. SMS chosen but no mobile given: the email instead.
    let emailer = user(&db.pool, 2, Some("+14155550124"), json!({})).await;
    tell(&db.db(), &deps, emailer, "booking-confirmed/b2")
        .await
        .unwrap();
    let no_phone = user(&db.pool, 3, None, json!({"booking-confirmed": ["sms"]})).await;
    tell(&db.db(), &deps, no_phone, "booking-confirmed/b3")
        .await
        .unwrap();
    let c = sb.sandbox.counters();
    assert_eq!(c.sms_created, 1, "{c:?}");
    assert!(outbox(&db.pool, "booking-confirmed/b2/sms").await.is_none());
    assert!(outbox(&db.pool, "booking-confirmed/b3/sms").await.is_none());
    assert_eq!(
        c.emails_by_idempotency_key.get("booking-confirmed/b3"),
        Some(&1)
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_number_fails_its_text_alone_and_outages_delay_texts_without_doubling() {
    let (db, sb, deps) = start().await;
    let both = json!({"default": ["email", "sms"]});

    // Twilio's test number for "invalid": the text fails for good, the email goes.
    let invalid = user(&db.pool, 1, Some("+15005550001"), both.clone()).await;
    tell(&db.db(), &deps, invalid, "k-invalid").await.unwrap();
    tell(&db.db(), &deps, invalid, "k-invalid").await.unwrap();
    assert_eq!(
        outbox(&db.pool, "k-invalid/sms").await,
        Some(("sms".to_owned(), false, Some("twilio_21211".to_owned())))
    );
    let c = sb.sandbox.counters();
    assert_eq!(
        (c.sms_created, c.sms_refused),
        (0, 1),
        "refused once, not retried: {c:?}"
    );
    assert_eq!(c.emails_by_idempotency_key.get("k-invalid"), Some(&1));

    // Twilio down (503): the job fails (retryable), nothing was created; once it is back the
    // text goes out once.
    let texter = user(&db.pool, 2, Some("+14155550125"), both.clone()).await;
    sb.sandbox
        .set_outage(Provider::Twilio, Duration::from_secs(60), 503);
    let err = tell(&db.db(), &deps, texter, "k-outage").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        !outbox(&db.pool, "k-outage/sms").await.unwrap().1,
        "not sent"
    );
    sb.sandbox.set_outage(Provider::Twilio, Duration::ZERO, 503);
    tell(&db.db(), &deps, texter, "k-outage").await.unwrap();
    tell(&db.db(), &deps, texter, "k-outage").await.unwrap();
    let c = sb.sandbox.counters();
    assert_eq!(c.sms_by_to.get("+14155550125"), Some(&1), "{c:?}");

    // Rate limited (429, never processed): the job waits on the twilio budget.
    let limited = user(&db.pool, 3, Some("+14155550126"), both.clone()).await;
    sb.sandbox
        .set_outage(Provider::Twilio, Duration::from_secs(60), 429);
    let err = tell(&db.db(), &deps, limited, "k-429").await.unwrap_err();
    assert!(
        matches!(&err, JobError::RateLimited { budget, .. } if budget == "twilio"),
        "{err:?}"
    );
    sb.sandbox.set_outage(Provider::Twilio, Duration::ZERO, 429);
    tell(&db.db(), &deps, limited, "k-429").await.unwrap();
    assert_eq!(
        sb.sandbox.counters().sms_by_to.get("+14155550126"),
        Some(&1)
    );

    // The earlier attempt's text went out but its answer was lost (a timeout): the re-run
    // finds it at Twilio and records it, sending nothing.
    let lost = user(&db.pool, 4, Some("+14155550127"), both.clone()).await;
    sqlx::query(
        "INSERT INTO notifications (user_id, kind, dedupe_key, channel, attempted_at)
         VALUES ($1, 'booking-confirmed', 'k-lost/sms', 'sms', now())",
    )
    .bind(lost)
    .execute(&db.pool)
    .await
    .unwrap();
    let body = notify::sms_text("Your flight LHR to JFK is booked");
    let earlier = deps
        .sms()
        .unwrap()
        .send("+14155550127", &body)
        .await
        .unwrap();
    tell(&db.db(), &deps, lost, "k-lost").await.unwrap();
    assert_eq!(
        sb.sandbox.counters().sms_by_to.get("+14155550127"),
        Some(&1)
    );
    let sid: Option<String> = sqlx::query_scalar(
        "SELECT provider_message_id FROM notifications WHERE dedupe_key = 'k-lost/sms'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sid, Some(earlier.sid));
    sb.shutdown().await.unwrap();
}
