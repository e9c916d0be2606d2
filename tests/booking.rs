//! The booking saga (`booking_attempt`) and its compensation (`refund_compensation`) end to
//! end: real Postgres, the provider sandbox in process, the real provider clients, an
//! in-process worker — and, for the crash case, a `fleet worker` process killed with SIGKILL.

mod common;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::NaiveDate;
use common::*;
use fleet::{
    queue::{JobRecord, JobState},
    testkit::ScratchDb,
    Queue, Registry,
};
use jobs::{
    kinds::{
        airline_change::AirlineChangeDetected,
        airline_change_action::{AirlineChangeAction, DEADLINE_ACTOR},
        booking_attempt::BookingAttempt,
        refund_compensation::{cancel_and_request_refund, RefundCompensation},
        refund_reconcile::{RefundReconcile, RefundSweep},
    },
    pii::Keyring,
    providers::{CabinClass, FlightsApi, Offer, OfferSearch, PassengerSpec, SliceSpec},
    seed::{seed_campaign, CampaignSeed, Seeded},
    Job, KindDefaults,
};
use sandbox::{scenarios::Provider, RunningSandbox, Sandbox, SandboxConfig, Scenario};
use serde_json::{json, Value};
use uuid::Uuid;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Attempts the in-process registry gives the saga (the server-error case uses them all).
const TEST_ATTEMPTS: i32 = 4;

fn registry() -> Arc<Registry> {
    registry_with(TEST_ATTEMPTS, MS(100), MS(400))
}

/// The saga's kinds with `max_attempts` and a backoff from `base` to `cap`.
fn registry_with(max_attempts: i32, base: Duration, cap: Duration) -> Arc<Registry> {
    let quick = |d: KindDefaults| KindDefaults {
        max_attempts,
        backoff_base: base,
        backoff_cap: cap,
        timeout: SECS(30),
        ..d
    };
    let mut r = Registry::default();
    r.register_with::<BookingAttempt>(quick(BookingAttempt::defaults()))
        .register_with::<RefundCompensation>(quick(RefundCompensation::defaults()))
        .register_with::<RefundReconcile>(quick(RefundReconcile::defaults()))
        .register_with::<RefundSweep>(quick(RefundSweep::defaults()))
        .register_with::<AirlineChangeDetected>(quick(AirlineChangeDetected::defaults()))
        .register_with::<AirlineChangeAction>(quick(AirlineChangeAction::defaults()));
    Arc::new(r)
}

struct Harness {
    registry: Arc<Registry>,
    db: ScratchDb,
    sandbox: RunningSandbox,
    queue: Queue,
    deps: jobs::Deps,
    keyring: Keyring,
}

impl Harness {
    async fn new(cfg: SandboxConfig) -> Self {
        Self::with_registry(cfg, registry()).await
    }

    async fn with_registry(cfg: SandboxConfig, registry: Arc<Registry>) -> Self {
        let db = db().await;
        let sandbox = Sandbox::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("sandbox starts");
        let deps = sandbox_deps(&sandbox.base_url).expect("sandbox deps");
        Self {
            queue: Queue::new(db.pool.clone(), registry.clone()),
            registry,
            keyring: Keyring::parse(TEST_PII_KEYS).unwrap(),
            db,
            sandbox,
            deps,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    fn flights(&self) -> &dyn FlightsApi {
        self.deps.flights.as_deref().unwrap()
    }

    fn start_worker(&self) -> RunningWorker {
        let settings = fleet::config::WorkerSettings {
            concurrency: 16,
            ..fast_settings()
        };
        start_worker_with(
            &self.db.pool,
            self.registry.clone(),
            settings,
            extensions_of(self.deps.clone()),
        )
    }

    /// A campaign on `origin-destination` charging `card` (a sandbox card, made unique), with
    /// a bookable traveler (the seed's gender `X` is not bookable at Duffel).
    async fn campaign(&self, n: usize, origin: &str, destination: &str, card: &str) -> Seeded {
        let mut s = CampaignSeed::new(n);
        s.origin = origin.into();
        s.destination = destination.into();
        s.payment_method = format!("{card}__{n}");
        s.max_price = "5000.00".into();
        let seeded = seed_campaign(&self.db.db(), &self.keyring, &s)
            .await
            .expect("seed");
        sqlx::query("UPDATE traveler_profiles SET gender = 'F' WHERE id = $1")
            .bind(seeded.profile_id)
            .execute(self.pool())
            .await
            .unwrap();
        seeded
    }

    /// A campaign `n` on LHR-JFK (`normal`) booked to the end by the running worker: its
    /// ticketed booking.
    async fn ticketed(&self, n: usize) -> BookingView {
        let seeded = self.campaign(n, "LHR", "JFK", VISA).await;
        let offer = self.offer_for(seeded.campaign_id).await;
        let key = format!("booking_attempt:{}", seeded.campaign_id);
        let id = self
            .enqueue_attempt(seeded.campaign_id, &offer.id, &key)
            .await;
        wait_finished(self.pool(), id, SECS(20)).await;
        let b = self.bookings(seeded.campaign_id).await.remove(0);
        assert_eq!(b.status, "ticketed");
        b
    }

    /// Cancels ticketed booking `id` and requests its refund in one transaction, as the
    /// order-cancellation webhook does; the refund job's id.
    async fn cancel_and_refund(&self, id: Uuid) -> i64 {
        let mut tx = self.pool().begin().await.unwrap();
        assert!(
            cancel_and_request_refund(&mut tx, &self.queue, id, "order_cancelled")
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        sqlx::query_scalar(
            "SELECT id FROM fleet_jobs WHERE kind = 'refund_compensation' AND idempotency_key = $1",
        )
        .bind(format!("booking:{id}:refund"))
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    /// The cheapest offer for the campaign's route on the first day of its window.
    async fn offer_for(&self, campaign_id: Uuid) -> Offer {
        let (origin, destination, date): (String, String, NaiveDate) = sqlx::query_as(
            "SELECT origin::text, destination::text, departure_date_start FROM campaigns
             WHERE id = $1",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .unwrap();
        let search = OfferSearch {
            slices: vec![SliceSpec {
                origin,
                destination,
                departure_date: date,
            }],
            passengers: vec![PassengerSpec::Adult],
            cabin_class: CabinClass::Economy,
        };
        let request = self.flights().create_offer_request(&search).await.unwrap();
        let offers = self.flights().list_offers(&request).await.unwrap();
        offers
            .into_iter()
            .min_by_key(|o| o.total_amount_minor)
            .expect("the sandbox always offers something")
    }

    async fn set_max_price(&self, campaign_id: Uuid, minor: i64) {
        sqlx::query("UPDATE campaigns SET max_price = $2::numeric / 100 WHERE id = $1")
            .bind(campaign_id)
            .bind(minor)
            .execute(self.pool())
            .await
            .unwrap();
    }

    async fn enqueue_attempt(&self, campaign_id: Uuid, offer_id: &str, key: &str) -> i64 {
        self.queue
            .enqueue(
                &BookingAttempt {
                    campaign_id,
                    offer_id: offer_id.to_owned(),
                },
                Some(key),
            )
            .await
            .unwrap()
            .id
    }

    async fn bookings(&self, campaign_id: Uuid) -> Vec<BookingView> {
        sqlx::query_as(
            "SELECT id, status, failure_code, stripe_payment_intent_id, duffel_order_id, pnr,
                    total_amount::text AS total_amount, captured_at IS NOT NULL AS captured,
                    canceled_at IS NOT NULL AS canceled
             FROM bookings WHERE campaign_id = $1 ORDER BY created_at",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    async fn bookings_by_id(&self, id: Uuid) -> BookingView {
        sqlx::query_as(
            "SELECT id, status, failure_code, stripe_payment_intent_id, duffel_order_id, pnr,
                    total_amount::text AS total_amount, captured_at IS NOT NULL AS captured,
                    canceled_at IS NOT NULL AS canceled
             FROM bookings WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    async fn campaign_state(&self, campaign_id: Uuid) -> (String, bool) {
        sqlx::query_as(
            "SELECT status, coalesce(next_search_at > now() + interval '50 minutes', false)
             FROM campaigns WHERE id = $1",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    async fn assert_invariants(&self) {
        let violations = fleet::check::run(&self.db.db()).await.unwrap();
        assert!(
            violations.is_empty(),
            "invariants violated: {violations:#?}"
        );
    }

    /// Every booking, campaign, refund and notification row, for before/after comparisons.
    async fn snapshot(&self) -> Value {
        sqlx::query_scalar(
            "SELECT jsonb_build_object(
                'bookings', (SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY b.id), '[]') FROM bookings b),
                'campaigns', (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.id), '[]') FROM campaigns c),
                'refunds', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.id), '[]') FROM refunds r),
                'notifications', (SELECT coalesce(jsonb_agg(to_jsonb(n) ORDER BY n.id), '[]') FROM notifications n))",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct BookingView {
    id: Uuid,
    status: String,
    failure_code: Option<String>,
    stripe_payment_intent_id: Option<String>,
    duffel_order_id: Option<String>,
    pnr: Option<String>,
    total_amount: String,
    captured: bool,
    canceled: bool,
}

fn finished(j: &JobRecord) -> bool {
    matches!(
        j.state,
        JobState::Completed | JobState::Cancelled | JobState::Dead
    )
}

async fn wait_finished(pool: &sqlx::PgPool, id: i64, within: Duration) -> JobRecord {
    wait_for(pool, id, within, "a final state", finished).await
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// What one scenario must end in.
struct Case {
    name: &'static str,
    route: (&'static str, &'static str),
    card: &'static str,
    /// Campaign max_price = the searched offer's price (else generous).
    max_at_search_price: bool,
    booking: &'static str,
    failure: Option<&'static str>,
    campaign: &'static str,
    /// next_search_at pushed about an hour ahead.
    rescheduled: bool,
    payment_intents: u64,
    orders: u64,
    email: Option<&'static str>,
}

const VISA: &str = "pm_card_visa";

fn cases() -> Vec<Case> {
    let ticketed = |name, route| Case {
        name,
        route,
        card: VISA,
        max_at_search_price: false,
        booking: "ticketed",
        failure: None,
        campaign: "booked",
        rescheduled: false,
        payment_intents: 1,
        orders: 1,
        email: Some("booking-confirmed"),
    };
    let failed = |name, route, code, payment_intents| Case {
        name,
        route,
        card: VISA,
        max_at_search_price: false,
        booking: "failed",
        failure: Some(code),
        campaign: "active",
        rescheduled: true,
        payment_intents,
        orders: 0,
        email: None,
    };
    let declined = |name, card, code| Case {
        name,
        route: ("LHR", "JFK"),
        card,
        max_at_search_price: false,
        booking: "failed",
        failure: Some(code),
        campaign: "action_required",
        rescheduled: false,
        payment_intents: 1,
        orders: 0,
        email: Some("action-required"),
    };
    vec![
        ticketed("normal", ("LHR", "JFK")),
        Case {
            max_at_search_price: true,
            ..failed(
                "price_rises above max",
                ("LHR", "CDG"),
                "price_above_max",
                0,
            )
        },
        ticketed("price_rises within max", ("LHR", "CDG")),
        failed("offer_gone", ("LHR", "AMS"), "offer_no_longer_available", 0),
        Case {
            email: Some("hold-voided"),
            ..failed(
                "insufficient_balance",
                ("LHR", "DUB"),
                "insufficient_balance",
                1,
            )
        },
        Case {
            email: Some("hold-voided"),
            ..failed("price_changed", ("LHR", "MAD"), "price_changed", 1)
        },
        ticketed("rate_limited", ("LHR", "FRA")),
        Case {
            email: Some("hold-voided"),
            ..failed("server_error", ("LHR", "BCN"), "order_not_created", 1)
        },
        ticketed("slow", ("LHR", "LIS")),
        ticketed("order_created_then_500", ("LHR", "ZRH")),
        declined("declined card", "pm_card_chargeDeclined", "card_declined"),
        declined(
            "authentication_required card",
            "pm_card_authenticationRequired",
            "authentication_required",
        ),
    ]
}

#[tokio::test]
async fn every_sandbox_scenario_ends_in_the_right_state_with_one_payment_intent_per_booking() {
    let h = Harness::new(SandboxConfig {
        slow_ms: 500,
        rate_limit_burst: 1,
        ..Default::default()
    })
    .await;
    // Search the rate-limited route while it behaves, so the 429 falls on the saga.
    h.sandbox.sandbox.set_scenario("LHR-FRA", Scenario::Normal);

    let cases = cases();
    let mut runs = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let seeded = h.campaign(n, case.route.0, case.route.1, case.card).await;
        let offer = h.offer_for(seeded.campaign_id).await;
        if case.max_at_search_price {
            h.set_max_price(seeded.campaign_id, offer.total_amount_minor)
                .await;
        }
        runs.push((seeded, offer));
    }
    h.sandbox
        .sandbox
        .set_scenario("LHR-FRA", Scenario::RateLimited);

    let w = h.start_worker();
    let mut jobs = Vec::new();
    for (seeded, offer) in &runs {
        let key = format!("booking_attempt:{}", seeded.campaign_id);
        jobs.push(h.enqueue_attempt(seeded.campaign_id, &offer.id, &key).await);
    }
    for id in &jobs {
        wait_finished(h.pool(), *id, SECS(30)).await;
    }
    w.stop().await;

    let counters = h.sandbox.sandbox.counters();
    for ((case, (seeded, offer)), job_id) in cases.iter().zip(&runs).zip(&jobs) {
        let name = case.name;
        let job = common::job(h.pool(), *job_id).await;
        assert_eq!(job.state, JobState::Completed, "{name}: {job:#?}");
        let bookings = h.bookings(seeded.campaign_id).await;
        assert_eq!(bookings.len(), 1, "{name}: one booking: {bookings:#?}");
        let b = &bookings[0];
        assert_eq!(b.status, case.booking, "{name}: {b:#?}");
        assert_eq!(b.failure_code.as_deref(), case.failure, "{name}: {b:#?}");
        let (campaign, rescheduled) = h.campaign_state(seeded.campaign_id).await;
        assert_eq!(campaign, case.campaign, "{name}");
        assert_eq!(rescheduled, case.rescheduled, "{name}: next search pushed");

        let booking_id = b.id.to_string();
        assert_eq!(
            count(&counters.payment_intents_by_booking, &booking_id),
            case.payment_intents,
            "{name}: PaymentIntents for the booking"
        );
        assert_eq!(
            count(&counters.orders_by_booking, &booking_id),
            case.orders,
            "{name}: orders for the booking"
        );
        if case.payment_intents == 1 {
            let pi = b.stripe_payment_intent_id.as_deref().expect("pi recorded");
            let declined = matches!(
                case.failure,
                Some("card_declined" | "authentication_required")
            );
            if case.booking == "ticketed" {
                assert!(b.captured && !b.canceled, "{name}: {b:#?}");
                assert_eq!(count(&counters.captures_by_payment_intent, pi), 1, "{name}");
                assert!(b.duffel_order_id.is_some() && b.pnr.is_some(), "{name}");
            } else if !declined {
                // A hold existed and was voided.
                assert!(b.canceled && !b.captured, "{name}: {b:#?}");
                assert_eq!(count(&counters.cancels_by_payment_intent, pi), 1, "{name}");
            }
        }
        match case.email {
            Some(kind) => {
                let key = format!("{kind}/{}", b.id);
                assert_eq!(
                    count(&counters.emails_by_idempotency_key, &key),
                    1,
                    "{name}: one {kind} email"
                );
                let sent: bool = sqlx::query_scalar(
                    "SELECT sent_at IS NOT NULL FROM notifications WHERE dedupe_key = $1",
                )
                .bind(&key)
                .fetch_one(h.pool())
                .await
                .unwrap();
                assert!(sent, "{name}: outbox row marked sent");
            }
            None => assert!(
                !counters
                    .emails_by_idempotency_key
                    .keys()
                    .any(|k| k.ends_with(&booking_id)),
                "{name}: no email"
            ),
        }
        if name == "price_rises within max" {
            // The saga charged the re-read (raised) price, not the search price.
            let charged = jobs::providers::money::decimal_to_minor(&b.total_amount, "USD").unwrap();
            assert!(charged > offer.total_amount_minor, "{name}: {b:#?}");
        }
        if name == "rate_limited" {
            assert!(counters.rate_limited_responses >= 1, "the saga met a 429");
            assert!(
                job.errors
                    .iter()
                    .any(|e| e.message.contains("rate_limited")),
                "{name}: snoozed on the 429: {job:#?}"
            );
        }
    }
    assert_eq!(
        counters.payment_intents_by_booking.values().max().copied(),
        Some(1),
        "never two PaymentIntents for one booking"
    );
    assert!(counters.orders_by_booking.values().all(|n| *n == 1));
    // The server-error booking was tried once per attempt, reconciling in between.
    assert!(counters.order_attempts >= TEST_ATTEMPTS as u64);
    // Each outcome was counted by the worker that moved the row (other tests of this binary
    // share the process's metrics: at least, never fewer).
    // Access audit: the passport was opened once per order placed (by that attempt's job,
    // shown on the campaign), and never to check a profile's completeness.
    for ((case, (seeded, _)), job_id) in cases.iter().zip(&runs).zip(&jobs) {
        let reads: Vec<(String, Value)> = sqlx::query_as(
            "SELECT resource_type, metadata FROM audit_log
             WHERE action = 'pii.read' AND resource_id = $1",
        )
        .bind(seeded.campaign_id.to_string())
        .fetch_all(h.pool())
        .await
        .unwrap();
        // An order was tried: ticketed, or failed at the order (the hold voided).
        let ordered = case.orders > 0 || case.email == Some("hold-voided");
        assert_eq!(!reads.is_empty(), ordered, "{}: {reads:?}", case.name);
        let n = cases.iter().position(|c| c.name == case.name).unwrap();
        let passport = jobs::seed::CampaignSeed::new(n).passport;
        for (resource, meta) in &reads {
            assert_eq!(resource, "campaign");
            assert_eq!(meta["purpose"], "booking_order");
            assert_eq!(meta["job_id"], json!(job_id));
            assert_eq!(meta["profile_id"], json!(seeded.profile_id));
            assert!(
                !meta.to_string().contains(&passport),
                "no passport in the row: {meta}"
            );
        }
    }
    let scraped = fleet::metrics::render_text();
    for case in &cases {
        let outcome = if case.booking == "ticketed" {
            "ticketed"
        } else {
            "failed"
        };
        let reason = case.failure.unwrap_or("none");
        let wanted = cases
            .iter()
            .filter(|c| c.booking == case.booking && c.failure == case.failure)
            .count() as f64;
        let seen = sum_of(
            &scraped,
            "fleet_bookings_total{",
            &[("outcome", outcome), ("reason", reason)],
        );
        assert!(
            seen >= wanted,
            "{}: {seen} counted of {wanted}\n{scraped}",
            case.name
        );
    }
    let held: u64 = cases.iter().map(|c| c.payment_intents).sum();
    assert!(sum_of(&scraped, "fleet_booking_payment_intents_total{", &[]) >= held as f64);
    assert!(
        sum_of(&scraped, "fleet_card_declines_total{", &[]) >= 2.0,
        "{scraped}"
    );
    assert!(
        sum_of(
            &scraped,
            "fleet_booking_seconds_count{",
            &[("outcome", "ticketed")]
        ) >= 4.0,
        "{scraped}"
    );
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn order_created_then_500_is_reconciled_and_books_exactly_once() {
    let h = Harness::new(SandboxConfig {
        slow_ms: 500,
        ..Default::default()
    })
    .await;
    let seeded = h.campaign(1, "LHR", "ZRH", VISA).await;
    let offer = h.offer_for(seeded.campaign_id).await;
    let w = h.start_worker();
    let key = format!("booking_attempt:{}", seeded.campaign_id);
    let id = h.enqueue_attempt(seeded.campaign_id, &offer.id, &key).await;
    let job = wait_finished(h.pool(), id, SECS(20)).await;
    w.stop().await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");

    let b = &h.bookings(seeded.campaign_id).await[0];
    assert_eq!(b.status, "ticketed");
    let c = h.sandbox.sandbox.counters();
    assert_eq!(
        c.order_attempts, 1,
        "the 500 was reconciled, never re-POSTed"
    );
    assert_eq!(c.orders_created, 1);
    assert_eq!(count(&c.orders_by_booking, &b.id.to_string()), 1);
    assert_eq!(count(&c.payment_intents_by_booking, &b.id.to_string()), 1);
    assert_eq!(c.captures, 1);
    let reconciled: bool = sqlx::query_scalar(
        "SELECT (metadata->>'reconciled')::boolean FROM audit_log
         WHERE action = 'booking.ordered' AND resource_id = $1",
    )
    .bind(b.id.to_string())
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert!(reconciled, "the order was found by reconciliation");
    assert_eq!(
        b.duffel_order_id.as_deref(),
        Some(offer_order_id(&h, &offer.id).await.as_str())
    );
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// The id of the one order the sandbox holds for `offer_id`.
async fn offer_order_id(h: &Harness, offer_id: &str) -> String {
    let found = h
        .flights()
        .find_orders(&jobs::providers::OrderLookup {
            booking_id: None,
            offer_id: Some(offer_id.to_owned()),
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "one order for the offer");
    found[0].id.clone()
}

#[tokio::test]
async fn rerunning_a_finished_booking_attempt_changes_nothing_and_charges_nothing() {
    let h = Harness::new(SandboxConfig {
        slow_ms: 500,
        ..Default::default()
    })
    .await;
    // Ticketed, failed after a hold (voided), and declined.
    let setups = [
        (("LHR", "JFK"), VISA),
        (("LHR", "DUB"), VISA),
        (("LHR", "JFK"), "pm_card_chargeDeclined"),
    ];
    let mut runs = Vec::new();
    for (n, ((o, d), card)) in setups.iter().enumerate() {
        let seeded = h.campaign(n, o, d, card).await;
        let offer = h.offer_for(seeded.campaign_id).await;
        runs.push((seeded, offer));
    }
    let w = h.start_worker();
    for (seeded, offer) in &runs {
        let key = format!("booking_attempt:{}", seeded.campaign_id);
        let id = h.enqueue_attempt(seeded.campaign_id, &offer.id, &key).await;
        let j = wait_finished(h.pool(), id, SECS(20)).await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    let before = h.snapshot().await;
    let counters_before = h.sandbox.sandbox.counters();
    let statuses: Vec<String> = before["bookings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.len(), 3);

    // The same jobs again under other keys, and the ticketed campaign with another offer.
    let mut again = Vec::new();
    for (seeded, offer) in &runs {
        let key = format!("rerun:{}", seeded.campaign_id);
        again.push(h.enqueue_attempt(seeded.campaign_id, &offer.id, &key).await);
    }
    let ticketed_campaign = runs[0].0.campaign_id;
    again.push(
        h.enqueue_attempt(
            ticketed_campaign,
            "off_another0000000000000",
            "rerun:other-offer",
        )
        .await,
    );
    for id in again {
        let j = wait_finished(h.pool(), id, SECS(20)).await;
        assert!(
            matches!(j.state, JobState::Completed | JobState::Cancelled),
            "{j:#?}"
        );
    }
    w.stop().await;

    assert_eq!(h.snapshot().await, before, "no row changed");
    let c = h.sandbox.sandbox.counters();
    assert_eq!(
        c.payment_intents_created,
        counters_before.payment_intents_created
    );
    assert_eq!(c.orders_created, counters_before.orders_created);
    assert_eq!(c.order_attempts, counters_before.order_attempts);
    assert_eq!(c.captures, counters_before.captures);
    assert_eq!(c.cancels, counters_before.cancels);
    assert_eq!(c.emails_sent, counters_before.emails_sent);
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn refund_compensation_run_twice_refunds_once_and_cancels_the_order_once() {
    let h = Harness::new(SandboxConfig {
        slow_ms: 500,
        ..Default::default()
    })
    .await;
    let w = h.start_worker();
    let b = h.ticketed(1).await;
    let pi = b.stripe_payment_intent_id.clone().unwrap();

    // The order is cancelled after capture: state change and refund job in one transaction.
    let first = h.cancel_and_refund(b.id).await;
    // A second compensation for the same booking under another key (operator, webhook).
    let second = h
        .queue
        .enqueue(
            &RefundCompensation {
                booking_id: b.id,
                reason: "operator".into(),
            },
            Some("operator-refund"),
        )
        .await
        .unwrap()
        .id;
    for id in [first, second] {
        let j = wait_finished(h.pool(), id, SECS(20)).await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    // And once more after both finished.
    let third = h
        .queue
        .enqueue(
            &RefundCompensation {
                booking_id: b.id,
                reason: "order_cancelled".into(),
            },
            Some(&format!("booking:{}:refund", b.id)),
        )
        .await
        .unwrap();
    assert!(!third.duplicate, "the key is free once the job is done");
    let j = wait_finished(h.pool(), third.id, SECS(20)).await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    w.stop().await;

    let c = h.sandbox.sandbox.counters();
    assert_eq!(count(&c.refunds_by_payment_intent, &pi), 1, "refunded once");
    assert_eq!(c.refunds, 1);
    assert_eq!(c.order_cancellations_confirmed, 1, "order cancelled once");
    assert_eq!(
        count(&c.emails_by_idempotency_key, &format!("refund/{}", b.id)),
        1,
        "one refund email"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(b.id)
        .fetch_one(h.pool())
        .await
        .unwrap();
    assert_eq!(status, "refunded");
    let refunds: Vec<(Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT stripe_refund_id, status, amount::text, reason FROM refunds WHERE booking_id = $1",
    )
    .bind(b.id)
    .fetch_all(h.pool())
    .await
    .unwrap();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert!(refunds[0].0.as_deref().unwrap().starts_with("re_"));
    assert_eq!(refunds[0].1, "succeeded");
    assert_eq!(refunds[0].2, b.total_amount, "the whole charge");
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

// ─── a real worker process, killed between the charge and the order ──────────────────────

/// A `fleet worker` child process, killed when dropped (also when an assertion fails).
struct WorkerProcess(Option<Child>);

impl WorkerProcess {
    fn spawn(db_url: &str, sandbox_url: &str) -> Self {
        let child = Command::new(BIN)
            .arg("worker")
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "warn")
            .env("FLEET_PII_KEYS", TEST_PII_KEYS)
            .env("FLEET_PROVIDERS__STRIPE__BASE_URL", sandbox_url)
            .env("FLEET_PROVIDERS__STRIPE__SECRET_KEY", "sk_test_fleet")
            .env("FLEET_PROVIDERS__DUFFEL__BASE_URL", sandbox_url)
            .env("FLEET_PROVIDERS__DUFFEL__ACCESS_TOKEN", "duffel_test_fleet")
            .env("FLEET_PROVIDERS__EMAIL__BASE_URL", sandbox_url)
            .env("FLEET_PROVIDERS__EMAIL__API_KEY", "re_test_fleet")
            .env("FLEET_WORKER__LEASE", "2s")
            .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "500ms")
            .env("FLEET_WORKER__RESCUE_INTERVAL", "500ms")
            .env("FLEET_WORKER__POLL_INTERVAL", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleet worker");
        Self(Some(child))
    }

    /// Sends `sig` and waits (up to 15 s, then SIGKILL) for the process to exit.
    fn stop(mut self, sig: libc::c_int) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + SECS(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(MS(20));
        }
        let _ = child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Panics with the fix if the `fleet worker` binary does not run the saga's kinds.
fn assert_not_unknown_kind(j: &JobRecord) {
    assert!(
        !(j.state == JobState::Dead && j.errors.iter().any(|e| e.message.contains("kind"))),
        "the fleet worker binary does not run booking_attempt: add \
         register it in jobs::kinds::register_all. {j:#?}"
    );
}

#[tokio::test]
async fn worker_process_killed_during_the_order_call_is_reconciled_and_books_once() {
    // The order response is held back 3 s: long enough to kill the worker while it waits.
    let h = Harness::new(SandboxConfig {
        slow_ms: 3_000,
        ..Default::default()
    })
    .await;
    let seeded = h.campaign(1, "LHR", "LIS", VISA).await;
    let offer = h.offer_for(seeded.campaign_id).await;
    let key = format!("booking_attempt:{}", seeded.campaign_id);
    let id = h.enqueue_attempt(seeded.campaign_id, &offer.id, &key).await;

    let a = WorkerProcess::spawn(&h.db.url, &h.sandbox.base_url);
    // Charged, order POST received by Duffel and not yet answered: kill.
    let deadline = Instant::now() + SECS(20);
    loop {
        if h.sandbox.sandbox.counters().order_attempts >= 1 {
            break;
        }
        let j = common::job(h.pool(), id).await;
        assert_not_unknown_kind(&j);
        assert!(
            Instant::now() < deadline,
            "worker never reached the order: {j:#?}"
        );
        tokio::time::sleep(MS(10)).await;
    }
    a.stop(libc::SIGKILL);
    let b = h.bookings(seeded.campaign_id).await.remove(0);
    assert_eq!(
        b.status, "authorized",
        "killed between the charge and the order: {b:#?}"
    );
    assert!(b.duffel_order_id.is_none());
    let counters = h.sandbox.sandbox.counters();
    assert_eq!(counters.payment_intents_created, 1);
    assert_eq!(counters.captures, 0);

    // Another worker takes the job back after the lease expires, reconciles, captures.
    let second = WorkerProcess::spawn(&h.db.url, &h.sandbox.base_url);
    let j = wait_finished(h.pool(), id, SECS(30)).await;
    second.stop(libc::SIGTERM);
    assert_not_unknown_kind(&j);
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert!(j.attempt >= 2, "a second attempt finished the saga");

    let b = h.bookings(seeded.campaign_id).await.remove(0);
    assert_eq!(b.status, "ticketed", "{b:#?}");
    let c = h.sandbox.sandbox.counters();
    let booking_id = b.id.to_string();
    assert_eq!(
        count(&c.payment_intents_by_booking, &booking_id),
        1,
        "one PaymentIntent"
    );
    assert_eq!(c.order_attempts, 1, "never re-POSTed");
    assert_eq!(count(&c.orders_by_booking, &booking_id), 1, "one order");
    assert_eq!(c.captures, 1);
    assert_eq!(
        count(
            &c.emails_by_idempotency_key,
            &format!("booking-confirmed/{}", b.id)
        ),
        1
    );
    let (campaign, _) = h.campaign_state(seeded.campaign_id).await;
    assert_eq!(campaign, "booked");
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// Stripe down between the order and the capture (the sandbox's outage, every Stripe call a
/// 503 `api_error`): the booking waits `authorized` with the card held and its job retrying; a
/// drain's dry run counts the job as retrying and names the booking, its hold and the job; when
/// Stripe is back the hold is captured once, and nothing was created twice.
#[tokio::test]
async fn a_stripe_outage_mid_saga_leaves_the_hold_retrying_and_a_drain_names_it() {
    let h = Harness::with_registry(
        SandboxConfig {
            slow_ms: 1500,
            ..Default::default()
        },
        registry_with(25, MS(300), SECS(1)),
    )
    .await;
    // LHR-LIS plays `slow`: the order answers after 1.5 s, time to take Stripe down.
    let seeded = h.campaign(0, "LHR", "LIS", VISA).await;
    let offer = h.offer_for(seeded.campaign_id).await;
    let w = h.start_worker();
    let id = h
        .enqueue_attempt(seeded.campaign_id, &offer.id, "outage")
        .await;
    let deadline = Instant::now() + SECS(15);
    let booking = loop {
        if let Some(b) = h.bookings(seeded.campaign_id).await.into_iter().next() {
            if b.status == "authorized" {
                break b;
            }
        }
        assert!(Instant::now() < deadline, "no card hold within 15 s");
        tokio::time::sleep(MS(20)).await;
    };
    h.sandbox.sandbox.set_outage(Provider::Stripe, SECS(4), 503);

    let ops = fleet::ops::Ops::new(h.pool().clone(), h.registry.kind_names(), "test");
    let kinds = vec![BookingAttempt::KIND.to_owned()];
    let deadline = Instant::now() + SECS(15);
    let dry = loop {
        let r = ops.drain(&kinds, SECS(1), true, |_| {}).await.unwrap();
        if r.result.retrying == 1 {
            break r.result;
        }
        assert!(Instant::now() < deadline, "the capture never failed: {r:?}");
        tokio::time::sleep(MS(20)).await;
    };
    assert_eq!((dry.backlog, dry.running), (0, 0), "{dry:?}");
    assert_eq!(dry.money.len(), 1, "{dry:?}");
    let m = &dry.money[0];
    assert_eq!(
        (m.booking_id, m.what, m.job_id, m.job_state.as_str()),
        (booking.id, "card hold", id, "retryable")
    );
    assert_eq!(m.amount, booking.total_amount);
    assert_eq!(h.bookings(seeded.campaign_id).await[0].status, "authorized");

    let j = wait_finished(h.pool(), id, SECS(30)).await;
    w.stop().await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert!(j.attempt >= 2, "the capture was retried: {j:#?}");
    let after = &h.bookings(seeded.campaign_id).await[0];
    assert_eq!((after.status.as_str(), after.captured), ("ticketed", true));
    let c = h.sandbox.sandbox.counters();
    assert!(count(&c.outage_responses, "stripe") >= 1, "{c:?}");
    assert_eq!(
        (c.payment_intents_created, c.captures, c.orders_created),
        (1, 1, 1)
    );
    // The provider calls were timed and classified: the capture's 503s as `ambiguous`, then
    // its success.
    let scraped = fleet::snapshot::render(None).await.unwrap();
    let calls = |outcome: &str| -> f64 {
        scraped
            .lines()
            .filter(|l| {
                l.starts_with("fleet_provider_call_seconds_count{")
                    && l.contains("provider=\"stripe\"")
                    && l.contains("endpoint=\"capture_payment_intent\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(calls("ambiguous") >= 1.0, "{scraped}");
    assert!(calls("ok") >= 1.0, "{scraped}");
    // Once it settled, a drain names no money.
    let r = ops.drain(&kinds, SECS(1), true, |_| {}).await.unwrap();
    assert!(r.result.money.is_empty(), "{r:?}");
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// Duffel down when a fare is found: the attempt retries; when Duffel is back the offer is
/// gone. The traveler, who would otherwise never hear a fare was found, is told once that
/// it could not be booked in time; nothing was held, the campaign searches again. A fare that
/// is simply gone at the first try (no outage) sends nothing (the scenario test's offer_gone).
#[tokio::test]
async fn a_fare_lost_to_a_provider_outage_is_told_to_the_traveler_once() {
    let h = Harness::with_registry(
        SandboxConfig::default(),
        registry_with(25, MS(300), SECS(1)),
    )
    .await;
    let seeded = h.campaign(0, "LHR", "JFK", VISA).await;
    let offer = h.offer_for(seeded.campaign_id).await;
    h.sandbox
        .sandbox
        .set_outage(Provider::Duffel, SECS(60), 503);
    let w = h.start_worker();
    let id = h
        .enqueue_attempt(seeded.campaign_id, &offer.id, "outage")
        .await;
    let deadline = Instant::now() + SECS(15);
    while common::job(h.pool(), id).await.attempt < 2 {
        assert!(Instant::now() < deadline, "the offer check never failed");
        tokio::time::sleep(MS(20)).await;
    }
    // Meanwhile the fare went; then Duffel is back.
    h.sandbox
        .sandbox
        .set_scenario("LHR-JFK", Scenario::OfferGone);
    h.sandbox.sandbox.set_outage(Provider::Duffel, SECS(0), 503);
    let j = wait_finished(h.pool(), id, SECS(20)).await;
    w.stop().await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    let b = h.bookings(seeded.campaign_id).await.remove(0);
    assert_eq!(
        (b.status.as_str(), b.failure_code.as_deref()),
        ("failed", Some("offer_no_longer_available"))
    );
    let c = h.sandbox.sandbox.counters();
    assert_eq!(c.payment_intents_created, 0, "nothing was held");
    let key = format!("fare-unbookable/{}", b.id);
    assert_eq!(count(&c.emails_by_idempotency_key, &key), 1, "{c:?}");
    let (campaign, rescheduled) = h.campaign_state(seeded.campaign_id).await;
    assert_eq!((campaign.as_str(), rescheduled), ("active", true));
    // Run again (a replay): the outbox's key holds, no second email.
    let again = h
        .enqueue_attempt(seeded.campaign_id, &offer.id, "outage-again")
        .await;
    let w = h.start_worker();
    wait_finished(h.pool(), again, SECS(20)).await;
    w.stop().await;
    let c = h.sandbox.sandbox.counters();
    assert_eq!(count(&c.emails_by_idempotency_key, &key), 1);
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// A traveler profile the airline cannot book (gender X) stops the attempt before any hold:
/// the campaign is put to its user (`action_required`, audited as noticed by the saga) and they
/// are emailed once, however often the attempt runs; nothing is held or ordered.
#[tokio::test]
async fn a_profile_the_airline_cannot_book_is_put_to_its_user_once_before_any_hold() {
    let h = Harness::new(SandboxConfig::default()).await;
    let seeded = h.campaign(0, "LHR", "JFK", VISA).await;
    let offer = h.offer_for(seeded.campaign_id).await;
    sqlx::query("UPDATE traveler_profiles SET gender = 'X' WHERE id = $1")
        .bind(seeded.profile_id)
        .execute(h.pool())
        .await
        .unwrap();
    let w = h.start_worker();
    for n in 0..2 {
        let id = h
            .enqueue_attempt(seeded.campaign_id, &offer.id, &format!("attempt-{n}"))
            .await;
        // Not eligible: the job is cancelled, with the reason.
        let j = wait_finished(h.pool(), id, SECS(20)).await;
        assert_eq!(j.state, JobState::Cancelled, "{j:#?}");
    }
    w.stop().await;
    let (status, _) = h.campaign_state(seeded.campaign_id).await;
    assert_eq!(status, "action_required");
    let key = format!(
        "campaign-action-required/{}/profile_gender_unsupported",
        seeded.campaign_id
    );
    let c = h.sandbox.sandbox.counters();
    assert_eq!(count(&c.emails_by_idempotency_key, &key), 1, "{c:?}");
    assert_eq!((c.payment_intents_created, c.order_attempts), (0, 0));
    let noticed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'campaign.action_required'
         AND metadata->>'noticed_by' = 'booking_attempt'
         AND metadata->>'reason' = 'profile_gender_unsupported'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(noticed, 1);
    assert!(h.bookings(seeded.campaign_id).await.is_empty());
    h.sandbox.shutdown().await.unwrap();
}

/// A refund Stripe accepted fails days later (the card was closed): the events ask for a
/// reconcile, which records `failed` and its code once, audits it once and emails the traveler
/// once however many events arrive; an event about a refund we never made changes nothing and
/// is not retried; a malformed id is dead at once; a refund left pending is read again by the
/// sweep.
#[tokio::test]
async fn a_refund_that_fails_later_is_recorded_and_its_traveler_told_once() {
    let h = Harness::new(SandboxConfig::default()).await;
    let w = h.start_worker();
    let b = h.ticketed(3).await;
    let refund_job = h.cancel_and_refund(b.id).await;
    assert_eq!(
        wait_finished(h.pool(), refund_job, SECS(20)).await.state,
        JobState::Completed
    );
    let (refund_id, re): (Uuid, String) =
        sqlx::query_as("SELECT id, stripe_refund_id FROM refunds WHERE booking_id = $1")
            .bind(b.id)
            .fetch_one(h.pool())
            .await
            .unwrap();
    let emails_before = h.sandbox.sandbox.counters().emails_sent;

    // Days later the card network sends the money back; Stripe says so twice.
    h.sandbox
        .sandbox
        .settle_refund(&re, "failed", Some("expired_or_canceled_card"))
        .unwrap();
    let mut jobs = Vec::new();
    for (n, event) in ["refund.updated", "refund.failed", "refund.failed"]
        .iter()
        .enumerate()
    {
        let job = RefundReconcile {
            stripe_refund_id: re.clone(),
            event_type: (*event).into(),
        };
        jobs.push(
            h.queue
                .enqueue(&job, Some(&format!("stripe:evt_{n}:0")))
                .await
                .unwrap()
                .id,
        );
    }
    for j in jobs {
        assert_eq!(
            wait_finished(h.pool(), j, SECS(20)).await.state,
            JobState::Completed
        );
    }
    let (status, why): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_reason FROM refunds WHERE id = $1")
            .bind(refund_id)
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), why.as_deref()),
        ("failed", Some("expired_or_canceled_card"))
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'refund.failed' AND resource_id = $1",
    )
    .bind(b.id.to_string())
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(audited, 1, "one change, one audit row");
    let told: Vec<(String, bool)> =
        sqlx::query_as("SELECT kind, sent_at IS NOT NULL FROM notifications WHERE dedupe_key = $1")
            .bind(format!("refund-failed/{refund_id}"))
            .fetch_all(h.pool())
            .await
            .unwrap();
    assert_eq!(told, vec![("refund_failed".to_owned(), true)]);
    assert_eq!(
        h.sandbox.sandbox.counters().emails_sent,
        emails_before + 1,
        "told once"
    );

    // An event about a refund we never made: completed, nothing changed; a malformed id: dead.
    let before = h.snapshot().await;
    let unknown = RefundReconcile {
        stripe_refund_id: "re_neverours000".into(),
        event_type: "refund.failed".into(),
    };
    let j = h.queue.enqueue(&unknown, None).await.unwrap().id;
    let done = wait_finished(h.pool(), j, SECS(20)).await;
    assert_eq!((done.state, done.attempt), (JobState::Completed, 1));
    let bad = RefundReconcile {
        stripe_refund_id: "ch_notarefund".into(),
        event_type: "refund.failed".into(),
    };
    let j = h.queue.enqueue(&bad, None).await.unwrap().id;
    assert_eq!(
        wait_finished(h.pool(), j, SECS(20)).await.state,
        JobState::Dead
    );
    assert_eq!(h.snapshot().await, before, "no row changed");

    // The money is owed: `fleet check` names the booking until an operator records that it
    // was paid back another way (dry run first; a second payout is refused).
    let named = |v: &[jobs::invariants::Violation]| {
        v.iter().any(|x| {
            x.invariant.starts_with("every captured PaymentIntent")
                && x.ids.contains(&b.id.to_string())
        })
    };
    assert!(named(&fleet::check::run(&h.db.db()).await.unwrap()));
    // The metrics say so, and the alert on them fires.
    let scraped = fleet::snapshot::render(Some(&h.db.db())).await.unwrap();
    assert!(
        scraped.contains("fleet_refunds{status=\"failed\"} 1"),
        "{scraped}"
    );
    assert_eq!(gauge(&scraped, "fleet_refunds_owed"), 1.0);
    assert!(alert_fires("FleetRefundOwed", &scraped));
    let ops = fleet::ops::Ops::new(h.pool().clone(), h.registry.kind_names(), "ops-alice");
    let dry = ops
        .booking_paid_out(b.id, "bank_transfer", "FIN-42", true)
        .await
        .unwrap();
    assert_eq!(dry.result.amount, b.total_amount);
    assert!(
        named(&fleet::check::run(&h.db.db()).await.unwrap()),
        "a dry run changes nothing"
    );
    ops.booking_paid_out(b.id, "bank_transfer", "FIN-42", false)
        .await
        .unwrap();
    assert!(!named(&fleet::check::run(&h.db.db()).await.unwrap()));
    let scraped = fleet::snapshot::render(Some(&h.db.db())).await.unwrap();
    assert_eq!(gauge(&scraped, "fleet_refunds_owed"), 0.0);
    assert!(!alert_fires("FleetRefundOwed", &scraped));
    let again = ops
        .booking_paid_out(b.id, "bank_transfer", "FIN-43", false)
        .await;
    assert!(
        matches!(&again, Err(fleet::ops::OpsError::Usage(m)) if m.contains("nothing to pay out")),
        "{again:?}"
    );
    for (how, reference) in [("paypal", "FIN-44"), ("cheque", "Jane Doe, IBAN FR76")] {
        let bad = ops.booking_paid_out(b.id, how, reference, false).await;
        assert!(
            matches!(bad, Err(fleet::ops::OpsError::Usage(_))),
            "{how} {reference}: {bad:?}"
        );
    }
    let paid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'refund.paid_out' AND actor = 'ops-alice'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(paid, 1);

    // A refund whose events were lost stays pending here while Stripe has it succeeded: the
    // sweep reads it again.
    sqlx::query(
        "UPDATE refunds SET status = 'pending', failure_reason = NULL,
                updated_at = now() - interval '2 days' WHERE id = $1",
    )
    .bind(refund_id)
    .execute(h.pool())
    .await
    .unwrap();
    {
        // Stripe's side, as it would be: succeeded (no event delivered).
        h.sandbox
            .sandbox
            .settle_refund(&re, "succeeded", None)
            .unwrap();
    }
    let sweep = h
        .queue
        .enqueue(
            &RefundSweep {
                older_than_secs: 86_400,
            },
            None,
        )
        .await
        .unwrap()
        .id;
    assert_eq!(
        wait_finished(h.pool(), sweep, SECS(20)).await.state,
        JobState::Completed
    );
    let deadline = Instant::now() + SECS(20);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM refunds WHERE id = $1")
            .bind(refund_id)
            .fetch_one(h.pool())
            .await
            .unwrap();
        if status == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep never reconciled it: {status}"
        );
        tokio::time::sleep(MS(100)).await;
    }
    w.stop().await;
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// The sum of the series of `family` (`name{`) in a text exposition whose labels include
/// every `(label, value)` of `with`.
fn sum_of(scraped: &str, family: &str, with: &[(&str, &str)]) -> f64 {
    scraped
        .lines()
        .filter(|l| l.starts_with(family))
        .filter(|l| {
            with.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of an unlabelled gauge in a text exposition.
fn gauge(scraped: &str, name: &str) -> f64 {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether docs/alerts/fleet.rules.yml's `alert` would fire on `scraped`: its rule must read
/// `max(<gauge>) > <threshold>` (the shape of the money alerts), evaluated on the gauge.
fn alert_fires(alert: &str, scraped: &str) -> bool {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts/fleet.rules.yml"),
    )
    .unwrap();
    let after = rules
        .split(&format!("alert: {alert}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no alert {alert}"));
    let expr = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .unwrap();
    let (lhs, threshold) = expr.split_once(" > ").unwrap();
    let name = lhs
        .strip_prefix("max(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{alert}: {expr} is not max(gauge) > n"));
    gauge(scraped, name) > threshold.trim().parse::<f64>().unwrap()
}

// ─── airline-initiated changes ───────────────────────────────────────────────────────────────

/// An airline change of booking `b`'s order, made at the sandbox (Duffel's side) and detected
/// by the job its webhook enqueues; the change's id.
async fn airline_change_detected(h: &Harness, b: &BookingView, shift_minutes: i64) -> String {
    let order = b
        .duffel_order_id
        .clone()
        .expect("ticketed bookings have an order");
    let change = h
        .sandbox
        .sandbox
        .airline_change(&order, shift_minutes, None, false)
        .unwrap();
    let aic = change["id"].as_str().unwrap().to_owned();
    // The webhook's job, delivered twice (Duffel delivers at least once).
    for n in 0..2 {
        let job = jobs::NewJob::of(&AirlineChangeDetected {
            order_id: order.clone(),
            aic_id: Some(aic.clone()),
            event_id: format!("wev_{aic}"),
        })
        .unwrap()
        .key(format!("detect-{aic}-{n}"));
        let id = h.queue.enqueue_new(job).await.unwrap().id;
        let j = wait_finished(h.pool(), id, SECS(20)).await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    aic
}

/// `airline_changes`' row: (status, decided_by, respond_by in the future).
async fn change_row(h: &Harness, aic: &str) -> (String, Option<String>, bool) {
    sqlx::query_as(
        "SELECT status, decided_by, respond_by > now() FROM airline_changes WHERE id = $1",
    )
    .bind(aic)
    .fetch_one(h.pool())
    .await
    .unwrap()
}

async fn wait_change(h: &Harness, aic: &str, status: &str) -> (String, Option<String>, bool) {
    let deadline = Instant::now() + SECS(20);
    loop {
        let row = change_row(h, aic).await;
        if row.0 == status {
            return row;
        }
        assert!(Instant::now() < deadline, "{aic} never {status}: {row:?}");
        tokio::time::sleep(MS(50)).await;
    }
}

/// The airline moves a booked flight by 90 minutes: the detection (delivered twice) records the
/// change once with its deadline, moves the booking's itinerary to the new times, tells the
/// traveler once by email and, as they chose, by text, and schedules the deadline's default; an operator's dry run changes nothing,
/// the accept (during a Duffel outage) is accepted at Duffel exactly once, a second request is
/// the same job, and a decided change refuses a new decision; the deadline job then finds it
/// decided and does nothing.
#[tokio::test]
async fn an_airline_change_is_recorded_once_told_once_and_accepted_once_by_an_operator() {
    let h = Harness::with_registry(
        SandboxConfig::default(),
        registry_with(25, MS(300), SECS(1)),
    )
    .await;
    let w = h.start_worker();
    let b = h.ticketed(0).await;
    let before: Value = sqlx::query_scalar("SELECT flight_details FROM bookings WHERE id = $1")
        .bind(b.id)
        .fetch_one(h.pool())
        .await
        .unwrap();
    // The traveler chose text messages for airline changes, as well as email.
    sqlx::query(
        "UPDATE users SET phone = '+14155550142',
                notification_preferences = '{\"airline-change\": [\"email\", \"sms\"]}'
         WHERE id = (SELECT c.user_id FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
                     WHERE b.id = $1)",
    )
    .bind(b.id)
    .execute(h.pool())
    .await
    .unwrap();
    let aic = airline_change_detected(&h, &b, 90).await;

    let (status, by, future) = change_row(&h, &aic).await;
    assert_eq!((status.as_str(), by, future), ("open", None, true));
    let after: Value = sqlx::query_scalar("SELECT flight_details FROM bookings WHERE id = $1")
        .bind(b.id)
        .fetch_one(h.pool())
        .await
        .unwrap();
    let departs = |v: &Value| {
        chrono::NaiveDateTime::parse_from_str(
            v["slices"][0]["departing_at"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S",
        )
        .unwrap()
    };
    assert_eq!(
        departs(&after) - departs(&before),
        chrono::Duration::minutes(90)
    );
    let c = h.sandbox.sandbox.counters();
    let email = format!("airline-change/{aic}");
    assert_eq!(count(&c.emails_by_idempotency_key, &email), 1, "{c:?}");
    assert_eq!(
        c.sms_by_to.get("+14155550142"),
        Some(&1),
        "one text too: {c:?}"
    );
    let (detected, refreshed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE action = 'booking.airline_change_detected'),
                count(*) FILTER (WHERE action = 'booking.itinerary_changed')
         FROM audit_log WHERE resource_id = $1",
    )
    .bind(b.id.to_string())
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!((detected, refreshed), (1, 1));
    let deadline_job: (String, bool) = sqlx::query_as(
        "SELECT state::text, run_at > now() + interval '1 hour' FROM fleet_jobs
         WHERE idempotency_key = $1",
    )
    .bind(format!("airline_change_deadline:{aic}"))
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(deadline_job, ("scheduled".to_owned(), true));

    let ops = fleet::ops::Ops::new(h.pool().clone(), h.registry.kind_names(), "ops-alice");
    let accept = jobs::operator::ChangeChoice::Accept;
    let dry = ops
        .airline_change_decide(b.id, accept, &h.queue, true)
        .await
        .unwrap();
    assert_eq!(
        (dry.result.change_id.as_str(), dry.result.job_id),
        (aic.as_str(), None)
    );
    assert_eq!(
        change_row(&h, &aic).await.0,
        "open",
        "a dry run changes nothing"
    );
    // Duffel is down when the accept runs: it waits and retries.
    h.sandbox.sandbox.set_outage(Provider::Duffel, SECS(2), 503);
    let real = ops
        .airline_change_decide(b.id, accept, &h.queue, false)
        .await
        .unwrap();
    let again = ops
        .airline_change_decide(b.id, accept, &h.queue, false)
        .await
        .unwrap();
    assert!(again.result.duplicate && again.result.job_id == real.result.job_id);
    let j = wait_finished(h.pool(), real.result.job_id.unwrap(), SECS(20)).await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    let (status, by, _) = change_row(&h, &aic).await;
    assert_eq!(
        (status.as_str(), by.as_deref()),
        ("accepted", Some("ops-alice"))
    );
    let c = h.sandbox.sandbox.counters();
    assert_eq!(count(&c.airline_change_accepts_by_id, &aic), 1, "{c:?}");
    assert!(
        count(&c.outage_responses, "duffel") >= 1,
        "the outage was met: {c:?}"
    );

    let decided = ops
        .airline_change_decide(b.id, accept, &h.queue, false)
        .await;
    assert!(
        matches!(&decided, Err(fleet::ops::OpsError::Usage(m)) if m.contains("already accepted by ops-alice")),
        "{decided:?}"
    );
    // The deadline's job, run now, finds it decided: no second accept.
    let f = fleet::queue::JobFilter {
        idempotency_key: Some(format!("airline_change_deadline:{aic}")),
        ..Default::default()
    };
    let moved = ops.run_now(&f, false).await.unwrap();
    let j = wait_finished(h.pool(), moved.result[0], SECS(20)).await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert_eq!(
        count(
            &h.sandbox.sandbox.counters().airline_change_accepts_by_id,
            &aic
        ),
        1
    );
    let accepted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'airline_change.accepted' AND actor = 'ops-alice'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(accepted, 1);
    w.stop().await;
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}

/// Three changes, three ends: an operator cancels one (the booking is cancelled, its order
/// cancelled and the traveler refunded once; Duffel then lists the change cancelled); nobody
/// answers another and at its deadline the fleet keeps the new schedule (accepted once, by
/// `fleet:deadline`), after which an operator's decision is refused as too late; the third was
/// accepted at Duffel by a run that crashed before recording it, and the re-run reads Duffel's
/// record instead of accepting again. A change of an order we never booked is recorded and
/// completes.
#[tokio::test]
async fn an_airline_change_is_cancelled_and_refunded_or_kept_at_its_deadline_and_never_accepted_twice(
) {
    let h = Harness::with_registry(
        SandboxConfig::default(),
        registry_with(25, MS(300), SECS(1)),
    )
    .await;
    let w = h.start_worker();
    let cancelled = h.ticketed(0).await;
    let lapsed = h.ticketed(1).await;
    let crashed = h.ticketed(2).await;
    let aic_c = airline_change_detected(&h, &cancelled, -45).await;
    let aic_l = airline_change_detected(&h, &lapsed, 180).await;
    let aic_x = airline_change_detected(&h, &crashed, 30).await;
    let ops = fleet::ops::Ops::new(h.pool().clone(), h.registry.kind_names(), "ops-bob");

    // Cancel and refund.
    let cancel = jobs::operator::ChangeChoice::CancelAndRefund;
    let d = ops
        .airline_change_decide(cancelled.id, cancel, &h.queue, false)
        .await
        .unwrap();
    let refund_job = d.result.refund.as_ref().and_then(|r| r.job_id).unwrap();
    let j = wait_finished(h.pool(), refund_job, SECS(20)).await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    let b = h.bookings_by_id(cancelled.id).await;
    assert_eq!(b.status, "refunded", "{b:#?}");
    let (status, by, _) = change_row(&h, &aic_c).await;
    assert_eq!(
        (status.as_str(), by.as_deref()),
        ("cancelled", Some("ops-bob"))
    );
    let c = h.sandbox.sandbox.counters();
    let pi = cancelled.stripe_payment_intent_id.clone().unwrap();
    assert_eq!(count(&c.refunds_by_payment_intent, &pi), 1);
    assert_eq!(count(&c.airline_change_accepts_by_id, &aic_c), 0);
    let listed = h
        .flights()
        .list_airline_changes(cancelled.duffel_order_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(listed[0].action_taken.as_deref(), Some("cancelled"));

    // Nobody answers: the deadline passes, the new schedule is kept.
    sqlx::query(
        "UPDATE airline_changes SET respond_by = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&aic_l)
    .execute(h.pool())
    .await
    .unwrap();
    let late = ops
        .airline_change_decide(lapsed.id, cancel, &h.queue, false)
        .await;
    assert!(
        matches!(&late, Err(fleet::ops::OpsError::Usage(m)) if m.contains("deadline")),
        "{late:?}"
    );
    let f = fleet::queue::JobFilter {
        idempotency_key: Some(format!("airline_change_deadline:{aic_l}")),
        ..Default::default()
    };
    let moved = ops.run_now(&f, false).await.unwrap();
    wait_finished(h.pool(), moved.result[0], SECS(20)).await;
    let (status, by, _) = wait_change(&h, &aic_l, "accepted").await;
    assert_eq!(by.as_deref(), Some(DEADLINE_ACTOR), "{status}");
    assert_eq!(h.bookings_by_id(lapsed.id).await.status, "ticketed");
    assert_eq!(
        count(
            &h.sandbox.sandbox.counters().airline_change_accepts_by_id,
            &aic_l
        ),
        1
    );

    // Accepted at Duffel by a run that died before recording it.
    jobs::airline_change::note_request(&h.db.db(), &aic_x, "accept")
        .await
        .unwrap();
    h.flights().accept_airline_change(&aic_x).await.unwrap();
    let job = AirlineChangeAction::accept(&aic_x, "ops-bob").unwrap();
    let id = h.queue.enqueue_new(job).await.unwrap().id;
    let j = wait_finished(h.pool(), id, SECS(20)).await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert_eq!(change_row(&h, &aic_x).await.0, "accepted");
    assert_eq!(
        count(
            &h.sandbox.sandbox.counters().airline_change_accepts_by_id,
            &aic_x
        ),
        1
    );

    // An order we never booked.
    let stray = jobs::NewJob::of(&AirlineChangeDetected {
        order_id: "ord_0000NotOurs".into(),
        aic_id: Some("aic_0000NotOurs".into()),
        event_id: "wev_stray".into(),
    })
    .unwrap();
    let id = h.queue.enqueue_new(stray).await.unwrap().id;
    assert_eq!(
        wait_finished(h.pool(), id, SECS(20)).await.state,
        JobState::Completed
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'airline_change.unknown_order'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    w.stop().await;
    h.assert_invariants().await;
    h.sandbox.shutdown().await.unwrap();
}
