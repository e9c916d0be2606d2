//! `fleet check`: the docs/domain.md §6 invariants, run as the binary against real Postgres.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use fleet::queue;
use uuid::Uuid;

/// `fleet check --json`: whether every invariant held, and the report. Exit 0 means they
/// held and 1 that some did not (a finding); anything else fails the test.
fn check(url: &str) -> (bool, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["check", "--json"])
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    match out.status.code() {
        Some(0) => (true, v),
        Some(1) => (false, v),
        other => panic!(
            "check exits 0 or 1, not {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn ids_of<'a>(v: &'a serde_json::Value, invariant_prefix: &str) -> Vec<&'a str> {
    v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| {
            x["invariant"]
                .as_str()
                .unwrap()
                .starts_with(invariant_prefix)
        })
        .flat_map(|x| {
            x["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn check_passes_clean_data_and_names_each_violation_by_id() {
    let db = db().await;
    let (ok, v) = check(&db.url);
    assert!(ok, "{v}");
    assert_eq!(v["violations"], serde_json::json!([]));

    // A captured booking that is neither ticketed nor refunded.
    let p = &db.pool;
    let user: Uuid =
        sqlx::query_scalar("INSERT INTO users (email) VALUES ('a@example.test') RETURNING id")
            .fetch_one(p)
            .await
            .unwrap();
    let campaign: Uuid = sqlx::query_scalar(
        "INSERT INTO campaigns (user_id, origin, destination, departure_date_start, departure_date_end, max_price, currency,
                                status, consent_at, next_search_at, expires_at)
         VALUES ($1, 'LHR', 'JFK', current_date + 30, current_date + 40, 400, 'USD', 'active', now(), now(), now() + interval '90 days')
         RETURNING id",
    )
    .bind(user)
    .fetch_one(p)
    .await
    .unwrap();
    let booking: Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id, stripe_payment_intent_id, total_amount, currency,
                               status, authorized_at, order_attempted_at, ordered_at, captured_at)
         VALUES ($1, 'off_1', 'ord_1', 'pi_1', 350, 'USD', 'cancelled', now(), now(), now(), now()) RETURNING id",
    )
    .bind(campaign)
    .fetch_one(p)
    .await
    .unwrap();
    // A payload with personal data, and a running job nobody rescues.
    let leaky = insert_unchecked(
        p,
        "test.leaky",
        serde_json::json!({"user": "someone@example.test"}),
    )
    .await;
    let stranded =
        insert_unchecked(p, "test.stranded", serde_json::json!({"campaign_id": 7})).await;
    let mut conn = p.acquire().await.unwrap();
    queue::job_fetch_available(
        &mut conn,
        &queue::FetchParams {
            only_kinds: None,
            queues: None,
            skip_kinds: &["test.leaky".into()],
            limited_kinds: &[],
            limit: 1,
            owner: "gone",
            lease: Duration::from_secs(1),
            now: None,
        },
    )
    .await
    .unwrap();
    sqlx::query(
        "UPDATE fleet_jobs SET lease_expires_at = now() - interval '3 minutes' WHERE id = $1",
    )
    .bind(stranded)
    .execute(p)
    .await
    .unwrap();

    let (ok, v) = check(&db.url);
    assert!(!ok, "violations exit non-zero");
    assert_eq!(
        ids_of(&v, "every captured PaymentIntent"),
        vec![booking.to_string()]
    );
    assert_eq!(
        ids_of(&v, "job payloads carry ids"),
        vec![leaky.to_string()]
    );
    assert_eq!(ids_of(&v, "no job is lost"), vec![stranded.to_string()]);

    // The compensation's refund makes that booking consistent again.
    sqlx::query("INSERT INTO refunds (booking_id, stripe_refund_id, amount, currency, reason, status) VALUES ($1, 're_1', 350, 'USD', 'order_cancelled', 'succeeded')")
        .bind(booking)
        .execute(p)
        .await
        .unwrap();
    let (_, v) = check(&db.url);
    assert!(ids_of(&v, "every captured PaymentIntent").is_empty(), "{v}");
}

#[tokio::test]
async fn seeded_campaigns_satisfy_the_schema_and_the_invariants() {
    let db = db().await;
    let keys =
        jobs::pii::Keyring::parse("v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    for n in 0..3 {
        jobs::seed::seed_campaign(&db.db(), &keys, &jobs::seed::CampaignSeed::new(n))
            .await
            .unwrap();
    }
    let (ok, v) = check(&db.url);
    assert!(ok, "{v}");
}

#[tokio::test]
async fn a_card_hold_whose_booking_attempt_died_is_named_until_its_job_is_replayed() {
    let db = db().await;
    let (booking, job) = booking_holding_a_card(&db.pool).await;
    // While its attempt is unfinished (here: queued), the hold is in hand.
    let (ok, v) = check(&db.url);
    assert!(ok, "{v}");
    // Its attempt ran out of attempts during a Stripe outage: nothing will capture or void it.
    sqlx::query("UPDATE fleet_jobs SET state = 'dead', finished_at = now() WHERE id = $1")
        .bind(job)
        .execute(&db.pool)
        .await
        .unwrap();
    let (ok, v) = check(&db.url);
    assert!(!ok);
    assert_eq!(
        ids_of(&v, "money held or owed has a job to settle it"),
        vec![booking.to_string()]
    );
    // Replayed, it is in hand again.
    let out = Command::new(BIN)
        .args(["queue", "replay", "--id", &job.to_string()])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, v) = check(&db.url);
    assert!(ok, "{v}");
}
