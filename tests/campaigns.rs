//! The campaign kinds end to end: `campaign_scan`, `campaign_search`, `card_expiry_reminder`
//! and `retention_purge`, each run by an in-process worker against real Postgres and the
//! provider sandbox (real clients, loopback HTTP).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Datelike, Utc};
use common::*;
use fleet::{
    queue::{self, ErrorClass, JobState},
    testkit::ScratchDb,
    Queue, Registry, Worker,
};
use jobs::{
    kinds::{
        campaign_health_sweep::CampaignHealthSweep,
        campaign_scan::{self, search_key, CampaignScan},
        campaign_search::CampaignSearch,
        card_detached::CardDetached,
        card_expiry_reminder::{dedupe_key, CardExpiryReminder},
        retention_purge::RetentionPurge,
    },
    seed::{copy_campaigns, seed_campaign, CampaignSeed, Seeded},
    BoxFuture, EnqueueError, Enqueued, Enqueuer, Job, KindDefaults, NewJob,
};
use sandbox::{RunningSandbox, Sandbox};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// (dedupe_key, user_id, sent_at, provider_message_id).
type NotificationRow = (String, Uuid, Option<DateTime<Utc>>, Option<String>);

fn quick<J: Job>() -> KindDefaults {
    KindDefaults {
        backoff_base: Duration::from_millis(100),
        backoff_cap: SECS(1),
        ..J::defaults()
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::default();
    r.register_with::<CampaignScan>(quick::<CampaignScan>())
        .register_with::<CampaignSearch>(quick::<CampaignSearch>())
        .register_with::<CardExpiryReminder>(quick::<CardExpiryReminder>())
        .register_with::<RetentionPurge>(quick::<RetentionPurge>())
        .register_with::<CardDetached>(quick::<CardDetached>())
        .register_with::<CampaignHealthSweep>(quick::<CampaignHealthSweep>())
        // The search's follow-up: registered so it can be enqueued; paused in `Env::start`.
        .register::<jobs::kinds::booking_attempt::BookingAttempt>();
    Arc::new(r)
}

/// A scratch database, a sandbox, and a worker running the four kinds against both.
struct Env {
    db: ScratchDb,
    sandbox: RunningSandbox,
    queue: Queue,
    keyring: jobs::pii::Keyring,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<fleet::worker::DrainReport>,
}

impl Env {
    async fn start() -> Env {
        let db = db().await;
        let sandbox = Sandbox::start(Default::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let reg = registry();
        // booking_attempt is another module's kind: keep its jobs where the test can read them.
        let mut c = db.pool.acquire().await.unwrap();
        queue::kind_pause(&mut *c, "booking_attempt", "test", "not under test")
            .await
            .unwrap();
        let w = Worker::new(db.pool.clone(), reg.clone(), fast_settings())
            .with_extensions(extensions_of(sandbox_deps(&sandbox.base_url).unwrap()));
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(w.run(shutdown.clone()));
        Env {
            queue: Queue::new(db.pool.clone(), reg),
            keyring: jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap(),
            db,
            sandbox,
            shutdown,
            worker,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    async fn seed(&self, s: CampaignSeed) -> Seeded {
        seed_campaign(&self.db.db(), &self.keyring, &s)
            .await
            .unwrap()
    }

    /// Enqueues `job` and waits until it is finished; returns its final record.
    async fn run<J: Job>(&self, job: &J, key: &str) -> queue::JobRecord {
        let id = self.queue.enqueue(job, Some(key)).await.unwrap().id;
        wait_for(self.pool(), id, SECS(20), "a final state", |j| {
            j.state.is_final()
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.await.unwrap();
        self.sandbox.shutdown().await.unwrap();
    }
}

/// (id, args, state, key) of every job of `kind`, oldest first.
async fn jobs_of(pool: &PgPool, kind: &str) -> Vec<(i64, Value, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id, args, state::text, idempotency_key FROM fleet_jobs WHERE kind = $1 ORDER BY id",
    )
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn next_search_at(pool: &PgPool, campaign: Uuid) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT next_search_at FROM campaigns WHERE id = $1")
        .bind(campaign)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn exec(pool: &PgPool, sql: &'static str, id: Uuid) {
    sqlx::query(sql).bind(id).execute(pool).await.unwrap();
}

/// The engine's enqueuer, recording the size of every bulk call.
struct CountingEnqueuer {
    inner: Queue,
    calls: Mutex<Vec<usize>>,
}

impl Enqueuer for CountingEnqueuer {
    fn enqueue_many<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> BoxFuture<'a, Result<Vec<Enqueued>, EnqueueError>> {
        self.calls.lock().unwrap().push(jobs.len());
        Enqueuer::enqueue_many(&self.inner, conn, jobs)
    }
}

#[tokio::test]
async fn scan_fans_out_one_search_per_due_campaign_and_a_second_scan_enqueues_nothing() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    {
        let mut c = pool.acquire().await.unwrap();
        queue::kind_pause(&mut *c, "campaign_search", "test", "count, do not run")
            .await
            .unwrap();
    }
    let mut due = Vec::new();
    for n in 1..=3 {
        due.push(env.seed(CampaignSeed::new(n)).await.campaign_id);
    }
    let later = env.seed(CampaignSeed::new(4)).await.campaign_id;
    exec(
        &pool,
        "UPDATE campaigns SET next_search_at = now() + interval '1 hour' WHERE id = $1",
        later,
    )
    .await;
    let paused = env
        .seed(CampaignSeed {
            status: "paused".into(),
            ..CampaignSeed::new(5)
        })
        .await
        .campaign_id;
    let ended = env.seed(CampaignSeed::new(6)).await.campaign_id;
    exec(
        &pool,
        "UPDATE campaigns SET created_at = now() - interval '100 days',
                              expires_at = now() - interval '1 day' WHERE id = $1",
        ended,
    )
    .await;

    // First scan, batches of 2: every due campaign gets exactly one search, keyed by window.
    let j = env
        .run(
            &CampaignScan {
                batch_size: Some(2),
            },
            "scan-1",
        )
        .await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    let searches = jobs_of(&pool, "campaign_search").await;
    assert_eq!(searches.len(), 3, "{searches:#?}");
    for id in &due {
        let window = next_search_at(&pool, *id).await;
        let hit: Vec<_> = searches
            .iter()
            .filter(|(_, args, _, _)| args["campaign_id"] == json!(id))
            .collect();
        assert_eq!(hit.len(), 1, "one search for {id}");
        let owner: Uuid = sqlx::query_scalar("SELECT user_id FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            hit[0].1,
            json!({"campaign_id": id, "user_id": owner}),
            "ids only: the campaign, and its owner for fairness"
        );
        assert_eq!(hit[0].3.as_deref(), Some(search_key(*id, window).as_str()));
    }
    for id in [later, paused, ended] {
        assert!(
            !searches
                .iter()
                .any(|(_, a, _, _)| a["campaign_id"] == json!(id)),
            "no search for {id}"
        );
    }
    let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
        .bind(ended)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "expired");

    // Second scan over the same window: one bulk call, all duplicates, nothing new.
    let counting = CountingEnqueuer {
        inner: env.queue.clone(),
        calls: Mutex::new(Vec::new()),
    };
    let report = campaign_scan::scan(&jobs::Db::from(pool.clone()), &counting, 1000)
        .await
        .unwrap();
    assert_eq!(
        (
            report.due,
            report.enqueued,
            report.duplicates,
            report.batches,
            report.expired
        ),
        (3, 0, 3, 1, 0)
    );
    assert_eq!(
        *counting.calls.lock().unwrap(),
        vec![3],
        "one bulk enqueue for the batch"
    );
    assert_eq!(jobs_of(&pool, "campaign_search").await.len(), 3);
    env.stop().await;
}

/// The engine's enqueuer until `ok_calls` bulk calls went through; then every call fails as a
/// dropped database connection would (the scan's process dying between two batches).
struct FailingAfter {
    inner: Queue,
    ok_calls: usize,
    calls: Mutex<usize>,
}

impl Enqueuer for FailingAfter {
    fn enqueue_many<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> BoxFuture<'a, Result<Vec<Enqueued>, EnqueueError>> {
        let call = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        if call > self.ok_calls {
            return Box::pin(async { Err(EnqueueError::Database(sqlx::Error::PoolClosed)) });
        }
        Enqueuer::enqueue_many(&self.inner, conn, jobs)
    }
}

/// A scratch database with `n` active campaigns due in one and the same window (copies of one
/// template that is not due itself), so the scan's keyset must break ties on the id.
async fn due_in_one_window(n: u64) -> (ScratchDb, Queue, Vec<Uuid>) {
    let db = db().await;
    let keyring = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let template = seed_campaign(
        &db.db(),
        &keyring,
        &CampaignSeed {
            first_search_in: SECS(3600),
            ..CampaignSeed::new(1)
        },
    )
    .await
    .unwrap()
    .campaign_id;
    let window = Utc::now() - chrono::Duration::minutes(1);
    let copied = copy_campaigns(&db.db(), &[template], n, window, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(copied, n);
    let due: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM campaigns WHERE id <> $1")
        .bind(template)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let q = Queue::new(db.pool.clone(), registry());
    (db, q, due)
}

/// Every due campaign has exactly one search, keyed by its window; nothing else was enqueued.
async fn assert_one_search_each(pool: &PgPool, due: &[Uuid]) {
    let searches = jobs_of(pool, "campaign_search").await;
    assert_eq!(searches.len(), due.len(), "{searches:#?}");
    for id in due {
        let window = next_search_at(pool, *id).await;
        let hit: Vec<_> = searches
            .iter()
            .filter(|(_, args, _, _)| args["campaign_id"] == json!(id))
            .collect();
        assert_eq!(hit.len(), 1, "one search for {id}");
        assert_eq!(hit[0].3.as_deref(), Some(search_key(*id, window).as_str()));
    }
}

#[tokio::test]
async fn scan_that_died_after_some_batches_resumes_and_enqueues_only_the_missing_searches() {
    let (db, q, due) = due_in_one_window(25).await;
    let pool = db.pool.clone();
    // Batches of 4: three commit, the fourth dies.
    let dying = FailingAfter {
        inner: q.clone(),
        ok_calls: 3,
        calls: Mutex::new(0),
    };
    let err = campaign_scan::scan(&jobs::Db::from(pool.clone()), &dying, 4)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(jobs_of(&pool, "campaign_search").await.len(), 12);

    // The retry walks the same window: the 12 committed are duplicates, the 13 others new.
    let report = campaign_scan::scan(&jobs::Db::from(pool.clone()), &q, 4)
        .await
        .unwrap();
    assert_eq!(
        (report.due, report.enqueued, report.duplicates),
        (25, 13, 12)
    );
    assert_one_search_each(&pool, &due).await;

    // And a third run, as after a crash right at the end, enqueues nothing.
    let report = campaign_scan::scan(&jobs::Db::from(pool.clone()), &q, 1000)
        .await
        .unwrap();
    assert_eq!(
        (report.due, report.enqueued, report.duplicates),
        (25, 0, 25)
    );
    assert_one_search_each(&pool, &due).await;
}

#[tokio::test]
async fn two_scans_racing_over_one_window_enqueue_one_search_per_campaign() {
    let (db, q, due) = due_in_one_window(40).await;
    let pool = db.pool.clone();
    let db_handle = db.db();
    let (a, b) = tokio::join!(
        campaign_scan::scan(&db_handle, &q, 3),
        campaign_scan::scan(&db_handle, &q, 5)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.due, b.due), (40, 40));
    assert_eq!(a.enqueued + b.enqueued, 40, "{a:?} {b:?}");
    assert_eq!(a.duplicates + b.duplicates, 40, "{a:?} {b:?}");
    assert_one_search_each(&pool, &due).await;
}

#[tokio::test]
async fn search_under_a_max_price_above_the_cheapest_fare_enqueues_one_booking_attempt_and_pushes_the_next_search(
) {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let s = env
        .seed(CampaignSeed {
            max_price: "99999.00".into(),
            ..CampaignSeed::new(10)
        })
        .await;
    let id = s.campaign_id;
    let before = Utc::now();
    let j = env
        .run(
            &CampaignSearch {
                campaign_id: id,
                user_id: None,
            },
            "search-1",
        )
        .await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");

    let attempts = jobs_of(&pool, "booking_attempt").await;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let (_, args, state, key) = &attempts[0];
    assert_eq!(state, "available");
    assert_eq!(
        key.as_deref(),
        Some(format!("booking_attempt:{id}").as_str())
    );
    let offer_id = args["offer_id"].as_str().unwrap().to_owned();
    assert_eq!(args, &json!({"campaign_id": id, "offer_id": offer_id}));
    assert!(offer_id.starts_with("off_"));
    let next = next_search_at(&pool, id).await;
    assert!(
        next >= before + chrono::Duration::hours(4),
        "next search at {next}"
    );

    // The chosen offer meets the criteria (re-read from the sandbox).
    let deps = sandbox_deps(&env.sandbox.base_url).unwrap();
    let offer = deps.flights().unwrap().get_offer(&offer_id).await.unwrap();
    assert!(offer.total_amount_minor <= 9_999_900);
    assert_eq!(offer.currency, "USD");
    let (lo, hi): (chrono::NaiveDate, chrono::NaiveDate) = sqlx::query_as(
        "SELECT departure_date_start, departure_date_end FROM campaigns WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let dep = offer.slices[0].departing_at.unwrap().date();
    assert!(lo <= dep && dep <= hi, "{dep} in {lo}..={hi}");

    // Searching again (due again) while the attempt is unfinished adds no second attempt.
    exec(
        &pool,
        "UPDATE campaigns SET next_search_at = now() WHERE id = $1",
        id,
    )
    .await;
    let j = env
        .run(
            &CampaignSearch {
                campaign_id: id,
                user_id: None,
            },
            "search-2",
        )
        .await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert_eq!(jobs_of(&pool, "booking_attempt").await.len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn search_under_a_max_price_below_every_fare_only_reschedules() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let id = env
        .seed(CampaignSeed {
            max_price: "5.00".into(),
            ..CampaignSeed::new(11)
        })
        .await
        .campaign_id;
    let before = Utc::now();
    let j = env
        .run(
            &CampaignSearch {
                campaign_id: id,
                user_id: None,
            },
            "search-1",
        )
        .await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");
    assert!(jobs_of(&pool, "booking_attempt").await.is_empty());
    assert!(next_search_at(&pool, id).await >= before + chrono::Duration::hours(4));
    assert_eq!(env.sandbox.sandbox.counters().offer_requests, 1);
    env.stop().await;
}

#[tokio::test]
async fn search_on_a_rate_limited_route_snoozes_until_the_reset_without_charging_an_attempt_then_succeeds(
) {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let id = env
        .seed(CampaignSeed {
            destination: "FRA".into(),
            max_price: "99999.00".into(),
            ..CampaignSeed::new(12)
        })
        .await
        .campaign_id;
    let job = env
        .queue
        .enqueue(
            &CampaignSearch {
                campaign_id: id,
                user_id: None,
            },
            Some("search-1"),
        )
        .await
        .unwrap()
        .id;
    let j = wait_for(&pool, job, SECS(10), "first snooze", |j| {
        j.errors.len() == 1 && j.state == JobState::Retryable
    })
    .await;
    assert_eq!(j.attempt, 0, "a snooze gives the attempt back");
    assert_eq!(j.errors[0].class, ErrorClass::Snoozed);
    assert!(
        j.errors[0].message.contains("429"),
        "{}",
        j.errors[0].message
    );
    let gap = (j.run_at - j.errors[0].at.unwrap()).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(900) && gap <= SECS(4),
        "run_at follows ratelimit-reset (~2-3 s ahead): {gap:?}"
    );

    let j = wait_state(&pool, job, JobState::Completed, SECS(20)).await;
    assert_eq!(j.attempt, 1, "only the successful run is charged: {j:#?}");
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Snoozed));
    assert_eq!(
        env.sandbox.sandbox.counters().rate_limited_responses,
        j.errors.len() as u64
    );
    assert_eq!(jobs_of(&pool, "booking_attempt").await.len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn card_expiry_reminders_are_sent_once_per_card_across_reruns() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    // Expires in about two months, before the campaign's end (180 days): due.
    let soon = Utc::now() + chrono::Duration::days(60);
    let (y, m) = (soon.year() as i16, soon.month() as i16);
    let due = env
        .seed(CampaignSeed {
            card_exp_year: y,
            card_exp_month: m,
            ..CampaignSeed::new(20)
        })
        .await;
    // Far future card: not due. Due card but its only campaign is paused: not due.
    env.seed(CampaignSeed::new(21)).await;
    env.seed(CampaignSeed {
        card_exp_year: y,
        card_exp_month: m,
        status: "paused".into(),
        ..CampaignSeed::new(22)
    })
    .await;

    for run in ["reminders-day-1", "reminders-day-2"] {
        let j = env.run(&CardExpiryReminder::default(), run).await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    let key = dedupe_key(due.payment_method_id, y, m);
    let counters = env.sandbox.sandbox.counters();
    assert_eq!(counters.emails_sent, 1, "{counters:#?}");
    assert_eq!(
        counters
            .emails_by_idempotency_key
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(key.clone(), 1)]
    );
    assert_eq!(
        counters.idempotent_replays, 0,
        "the outbox, not Resend, stopped the rerun"
    );
    let rows: Vec<NotificationRow> = sqlx::query_as(
        "SELECT dedupe_key, user_id, sent_at, provider_message_id FROM notifications",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), (key.as_str(), due.user_id));
    assert!(rows[0].2.is_some() && rows[0].3.is_some());
    env.stop().await;
}

#[tokio::test]
async fn purge_erases_profiles_whose_campaigns_ended_long_ago_and_spares_live_ones() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let seed = |n: usize, status: &str| CampaignSeed {
        status: status.into(),
        ..CampaignSeed::new(n)
    };
    // Erased: expired 200 days ago; completed trip flown long ago (with a ticketed booking).
    let expired_long_ago = env.seed(seed(30, "expired")).await;
    exec(
        &pool,
        "UPDATE campaigns SET updated_at = now() - interval '200 days' WHERE id = $1",
        expired_long_ago.campaign_id,
    )
    .await;
    let flown = env
        .seed(CampaignSeed {
            departs_in_days: -200,
            ..seed(31, "completed")
        })
        .await;
    exec(
        &pool,
        "UPDATE campaigns SET updated_at = now() - interval '150 days' WHERE id = $1",
        flown.campaign_id,
    )
    .await;
    let booking: Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id, stripe_payment_intent_id,
                               pnr, total_amount, currency, status, flight_details, offer_checked_at,
                               payment_intent_status, authorized_at, order_attempted_at, ordered_at,
                               captured_at)
         VALUES ($1, 'off_purge1', 'ord_purge1', 'pi_purge1', 'ABC123', 500, 'USD', 'ticketed',
                 '{\"segments\": 1}', now(), 'succeeded', now(), now(), now(), now())
         RETURNING id",
    )
    .bind(flown.campaign_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    // Spared: ended recently; active; ended long ago but a paused campaign remains; ended long
    // ago but a booking is still in flight.
    let recent = env.seed(seed(32, "cancelled")).await;
    exec(
        &pool,
        "UPDATE campaigns SET updated_at = now() - interval '10 days' WHERE id = $1",
        recent.campaign_id,
    )
    .await;
    let active = env.seed(seed(33, "active")).await;
    let mixed = env.seed(seed(34, "expired")).await;
    exec(
        &pool,
        "UPDATE campaigns SET updated_at = now() - interval '200 days' WHERE id = $1",
        mixed.campaign_id,
    )
    .await;
    exec(
        &pool,
        "INSERT INTO campaigns (user_id, traveler_profile_id, payment_method_id, origin, destination,
                                departure_date_start, departure_date_end, max_price, currency, status,
                                consent_at, next_search_at, expires_at)
         SELECT user_id, traveler_profile_id, payment_method_id, origin, destination,
                departure_date_start, departure_date_end, max_price, currency, 'paused',
                now(), now(), now() + interval '100 days'
         FROM campaigns WHERE id = $1",
        mixed.campaign_id,
    )
    .await;
    let in_flight = env.seed(seed(35, "cancelled")).await;
    exec(
        &pool,
        "UPDATE campaigns SET updated_at = now() - interval '200 days' WHERE id = $1",
        in_flight.campaign_id,
    )
    .await;
    exec(
        &pool,
        "INSERT INTO bookings (campaign_id, duffel_offer_id, total_amount, currency, status)
         VALUES ($1, 'off_purge2', 500, 'USD', 'pending')",
        in_flight.campaign_id,
    )
    .await;
    // Webhook dedupe rows and audit rows: two past retention each, one recent each.
    sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, type, received_at, processed_at) VALUES
           ('stripe', 'evt_old1', 'charge.refunded', now() - interval '100 days', now() - interval '100 days'),
           ('duffel', 'evt_old2', 'order.created', now() - interval '91 days', NULL),
           ('stripe', 'evt_new', 'charge.refunded', now() - interval '2 days', now() - interval '2 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (actor, action, resource_type, created_at) VALUES
           ('op', 'old.one', 'x', now() - interval '500 days'),
           ('op', 'old.two', 'x', now() - interval '401 days'),
           ('op', 'recent', 'x', now() - interval '30 days')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let j = env.run(&RetentionPurge::default(), "purge-1").await;
    assert_eq!(j.state, JobState::Completed, "{j:#?}");

    let profile_left = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM traveler_profiles WHERE id = $1
                                AND passport_number_enc IS NOT NULL AND email IS NOT NULL)",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for erased in [expired_long_ago, flown] {
        assert!(!profile_left(erased.profile_id).await, "{erased:?} erased");
        let link: Option<Uuid> =
            sqlx::query_scalar("SELECT traveler_profile_id FROM campaigns WHERE id = $1")
                .bind(erased.campaign_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            link, None,
            "the ended campaign stays, detached from the profile"
        );
    }
    for spared in [recent, active, mixed, in_flight] {
        assert!(
            profile_left(spared.profile_id).await,
            "{spared:?} untouched"
        );
    }
    let (pnr, details, status): (Option<String>, Option<Value>, String) =
        sqlx::query_as("SELECT pnr, flight_details, status FROM bookings WHERE id = $1")
            .bind(booking)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((pnr, details, status.as_str()), (None, None, "ticketed"));

    let events: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM webhook_events ORDER BY event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(events, vec!["evt_new"]);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(actions, vec!["recent", "retention.purge"]);
    let (actor, resource_id, metadata): (String, Option<String>, Value) = sqlx::query_as(
        "SELECT actor, resource_id, metadata FROM audit_log WHERE action = 'retention.purge'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(actor, "fleet");
    assert_eq!(resource_id, Some(j.id.to_string()));
    assert_eq!(
        metadata,
        json!({
            "profiles_erased": 2, "bookings_scrubbed": 1,
            "webhook_events_deleted": 2, "audit_rows_deleted": 2,
            "pii_after_days": 90, "webhook_events_days": 90, "audit_days": 400,
        })
    );
    env.stop().await;
}

/// `(status, emails sent for campaign-action-required/{campaign}/{code})`.
async fn paused_and_told(env: &Env, campaign: Uuid, code: &str) -> (String, u64) {
    let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
        .bind(campaign)
        .fetch_one(env.pool())
        .await
        .unwrap();
    let key = format!("campaign-action-required/{campaign}/{code}");
    let sent = env
        .sandbox
        .sandbox
        .counters()
        .emails_by_idempotency_key
        .get(&key)
        .copied()
        .unwrap_or(0);
    (status, sent)
}

/// A campaign that cannot book is paused for its user before any search: a card that expired
/// before the travel window, a passport that runs out before the trip — each
/// moves to `action_required` and its user is emailed once per reason, and Duffel is never
/// asked; a healthy campaign is searched. Searching a paused one again does nothing.
#[tokio::test]
async fn a_campaign_that_cannot_book_is_paused_for_its_user_before_any_search() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let healthy = env.seed(CampaignSeed::new(30)).await;
    let last_month = Utc::now().date_naive().with_day(1).unwrap() - chrono::Days::new(1);
    let expired = env
        .seed(CampaignSeed {
            card_exp_year: last_month.year() as i16,
            card_exp_month: last_month.month() as i16,
            ..CampaignSeed::new(32)
        })
        .await;
    let passport = env.seed(CampaignSeed::new(33)).await;
    exec(
        &pool,
        "UPDATE traveler_profiles SET passport_expiry = current_date + 20
         WHERE id = (SELECT traveler_profile_id FROM campaigns WHERE id = $1)",
        passport.campaign_id,
    )
    .await;
    let all = [&healthy, &expired, &passport];
    for (n, s) in all.iter().enumerate() {
        let search = CampaignSearch {
            campaign_id: s.campaign_id,
            user_id: None,
        };
        let j = env.run(&search, &format!("search-{n}")).await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    assert_eq!(
        env.sandbox.sandbox.counters().offer_requests,
        1,
        "only the healthy one searched"
    );
    assert_eq!(
        paused_and_told(&env, healthy.campaign_id, "consent_missing")
            .await
            .0,
        "active"
    );
    for (s, code) in [
        (&expired, "card_expires_before_travel"),
        (&passport, "passport_expires_before_travel"),
    ] {
        assert_eq!(
            paused_and_told(&env, s.campaign_id, code).await,
            ("action_required".to_owned(), 1),
            "{code}"
        );
    }
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'campaign.action_required'
         AND metadata->>'noticed_by' = 'campaign_search'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    // Searching a paused campaign again: cancelled, no second email.
    let again = CampaignSearch {
        campaign_id: expired.campaign_id,
        user_id: None,
    };
    assert_eq!(
        env.run(&again, "search-again").await.state,
        JobState::Cancelled
    );
    assert_eq!(
        paused_and_told(&env, expired.campaign_id, "card_expires_before_travel")
            .await
            .1,
        1
    );
    env.stop().await;
}

/// Stripe detaches a saved card (`payment_method.detached`, delivered twice): the card is
/// marked detached once and its active campaign paused at once, its user emailed once; a card
/// we do not hold is a no-op. What no event announced (a consent withdrawn in the product, the
/// campaign paused without it) the daily sweep finds, once however often it runs; a passport
/// valid through the trip but not six months beyond gets one reminder; healthy campaigns are
/// left alone.
#[tokio::test]
async fn a_detached_card_pauses_its_campaigns_at_once_and_the_daily_sweep_catches_the_rest() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let detached = env.seed(CampaignSeed::new(40)).await;
    let withdrawn = env.seed(CampaignSeed::new(41)).await;
    let healthy = env.seed(CampaignSeed::new(42)).await;
    // Valid through the trip (which ends within 40 days) but not six months beyond it.
    let renew = env.seed(CampaignSeed::new(43)).await;
    exec(
        &pool,
        "UPDATE traveler_profiles SET passport_expiry = current_date + 100
         WHERE id = (SELECT traveler_profile_id FROM campaigns WHERE id = $1)",
        renew.campaign_id,
    )
    .await;
    let pm: String =
        sqlx::query_scalar("SELECT stripe_payment_method_id FROM payment_methods WHERE id = $1")
            .bind(detached.payment_method_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    for n in 0..2 {
        let job = CardDetached {
            stripe_payment_method_id: pm.clone(),
        };
        assert_eq!(
            env.run(&job, &format!("detached-{n}")).await.state,
            JobState::Completed
        );
    }
    assert_eq!(
        paused_and_told(&env, detached.campaign_id, "card_missing").await,
        ("action_required".to_owned(), 1)
    );
    let marked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'card.detached'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(marked, 1);
    let stranger = CardDetached {
        stripe_payment_method_id: "pm_not_ours".into(),
    };
    assert_eq!(
        env.run(&stranger, "detached-stranger").await.state,
        JobState::Completed
    );

    // The product withdraws consent: the schema requires it to take the campaign out of
    // `active` too (campaigns_active_has_consent), here by pausing it.
    exec(
        &pool,
        "UPDATE campaigns SET consent_at = NULL, status = 'paused' WHERE id = $1",
        withdrawn.campaign_id,
    )
    .await;
    for n in 0..2 {
        let j = env
            .run(&CampaignHealthSweep::default(), &format!("sweep-{n}"))
            .await;
        assert_eq!(j.state, JobState::Completed, "{j:#?}");
    }
    assert_eq!(
        paused_and_told(&env, withdrawn.campaign_id, "consent_missing").await,
        ("action_required".to_owned(), 1)
    );
    assert_eq!(
        paused_and_told(&env, healthy.campaign_id, "consent_missing")
            .await
            .0,
        "active"
    );
    // The passport reminder: once per profile and expiry, the campaign left active.
    let reminder = format!(
        "passport-expiry/{}/{}",
        renew.profile_id,
        (Utc::now() + chrono::Duration::days(100)).format("%Y-%m-%d")
    );
    let c = env.sandbox.sandbox.counters();
    assert_eq!(
        c.emails_by_idempotency_key.get(&reminder),
        Some(&1),
        "{c:#?}"
    );
    assert_eq!(
        paused_and_told(&env, renew.campaign_id, "passport_expires_before_travel").await,
        ("active".to_owned(), 0)
    );
    assert_eq!(
        c.emails_sent, 3,
        "one per paused campaign, one passport reminder"
    );
    env.stop().await;
}
