//! `fleet demo`: the README's main command. On a fresh machine with no flags it finds or
//! provisions Postgres, migrates a fresh scratch database, starts the provider sandbox
//! in-process, seeds a deterministic mix of users, profiles, cards and campaigns that exercises
//! every sandbox scenario (plus cards about to expire), runs the scheduler and two workers, and
//! ends with a summary and the invariant check.
//!
//! The demo's keyring is the fixed test keyring (`testkit::TEST_PII_KEYS`): its data is
//! synthetic and its database is dropped at the end. Airline cancellations of a few ticketed
//! bookings are simulated by enqueueing `refund_compensation` jobs, as the Duffel
//! `order_cancellation.confirmed` webhook follow-up does.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use jobs::NewJob;
use sandbox::{Sandbox, SandboxConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{KindOverride, Settings},
    scheduler::{self, ScheduleSettings, Scheduler},
    seed::{seed_campaign, CampaignSeed},
    testkit::{sandbox_deps, ScratchDb, TEST_PII_KEYS},
    Queue, Worker,
};

/// The distinctive traveler whose passport and e-mail must appear in no log of a demo run.
pub const CANARY_PASSPORT: &str = "PZQX9931177";
/// See [`CANARY_PASSPORT`].
pub const CANARY_EMAIL: &str = "distinctive.traveler.7741@example.test";

/// Users seeded by the demo.
const USERS: usize = 300;
/// Give up after this long.
const DEADLINE: Duration = Duration::from_secs(55);

/// The summary. Field names are the `--json` contract.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Campaigns seeded.
    pub campaigns: i64,
    /// Campaigns searched at least once.
    pub campaigns_searched: i64,
    /// Bookings ticketed.
    pub bookings_ticketed: i64,
    /// Bookings failed (hold voided or never taken) and compensated.
    pub bookings_failed: i64,
    /// Refunds issued.
    pub refunds: i64,
    /// Card-expiry reminders sent.
    pub reminders_sent: i64,
    /// Failed attempts that were retried.
    pub retries: i64,
    /// Dead jobs.
    pub dead_jobs: i64,
    /// Invariant violations found by `fleet check`.
    pub invariant_violations: usize,
    /// PaymentIntents the sandbox created.
    pub payment_intents: u64,
    /// Most PaymentIntents created for one booking (must be 1).
    pub max_payment_intents_per_booking: u64,
    /// Wall time, ms.
    pub elapsed_ms: u128,
}

/// The deterministic mix: (route, card, max price) for user n.
fn mix(n: usize) -> CampaignSeed {
    let mut s = CampaignSeed::new(n);
    // Every sandbox route scenario, a normal majority, and a few campaigns priced below every fare.
    const ROUTES: [(&str, &str); 12] = [
        ("LHR", "JFK"),
        ("LHR", "CDG"),
        ("LHR", "AMS"),
        ("LHR", "DUB"),
        ("LHR", "MAD"),
        ("LHR", "FRA"),
        ("LHR", "BCN"),
        ("LHR", "LIS"),
        ("LHR", "ZRH"),
        ("MAN", "JFK"),
        ("EDI", "LAX"),
        ("LGW", "SFO"),
    ];
    let (o, d) = ROUTES[n % ROUTES.len()];
    s.origin = o.into();
    s.destination = d.into();
    s.max_price = if n % 17 == 5 {
        "20.00".into()
    } else {
        "2500.00".into()
    };
    s.payment_method = match n % 23 {
        3 => format!("pm_card_chargeDeclined__{n}"),
        7 => format!("pm_card_authenticationRequired__{n}"),
        11 => format!("pm_card_chargeDeclinedInsufficientFunds__{n}"),
        _ => format!("pm_card_visa__{n}"),
    };
    if n % 9 == 4 {
        // A card that expires before the campaign ends: reminder expected.
        let soon = chrono::Utc::now() + chrono::Duration::days(20);
        use chrono::Datelike;
        s.card_exp_month = soon.month() as i16;
        s.card_exp_year = soon.year() as i16;
    }
    if n == 0 {
        s.email = CANARY_EMAIL.into();
        s.passport = CANARY_PASSPORT.into();
    }
    s
}

/// Runs the demo.
pub async fn run(settings: &Settings) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let db = ScratchDb::new("fleet_demo").await?;
    let sandbox = Sandbox::start(
        SandboxConfig {
            slow_ms: 300,
            ..SandboxConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the sandbox")?;
    eprintln!("demo: database migrated, sandbox on {}", sandbox.base_url);

    let keyring = jobs::pii::Keyring::parse(TEST_PII_KEYS)?;
    for n in 0..USERS {
        seed_campaign(&db.pool, &keyring, &mix(n)).await?;
    }
    eprintln!("demo: seeded {USERS} users, profiles, cards and campaigns");

    // Demo pacing: short backoffs so retries finish inside the demo.
    let mut s = settings.clone();
    for kind in [
        "campaign_search",
        "booking_attempt",
        "refund_compensation",
        "card_expiry_reminder",
        "campaign_scan",
    ] {
        s.kinds.entry(kind.to_owned()).or_insert(KindOverride {
            backoff_base: Some(Duration::from_millis(200)),
            backoff_cap: Some(Duration::from_secs(2)),
            // A short budget so outage routes reach the saga's last-attempt path (void the hold,
            // fail the booking) inside the demo; production keeps its two-day budget.
            max_attempts: (kind == "booking_attempt").then_some(6),
            ..KindOverride::default()
        });
    }
    let registry = Arc::new(crate::fleet_registry(&s)?);
    let deps = sandbox_deps(&sandbox.base_url)?;
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut cfg = s.worker.clone();
        cfg.concurrency = 16;
        cfg.poll_interval = Duration::from_millis(200);
        cfg.drain_timeout = Duration::from_secs(5);
        let w = Worker::new(db.pool.clone(), registry.clone(), cfg).with_deps(deps.clone());
        workers.push(tokio::spawn(w.run(stop.clone())));
    }
    let schedules: BTreeMap<String, ScheduleSettings> = [
        ("campaign_scan", "*/2 * * * * *", "campaign_scan"),
        (
            "card_expiry_reminder",
            "*/5 * * * * *",
            "card_expiry_reminder",
        ),
    ]
    .into_iter()
    .map(|(name, cron, kind)| {
        (
            name.to_owned(),
            ScheduleSettings {
                cron: cron.into(),
                kind: kind.into(),
                args: serde_json::json!({}),
                enabled: true,
            },
        )
    })
    .collect();
    let sched = Scheduler::new(
        db.pool.clone(),
        registry.clone(),
        scheduler::validate(&schedules, &registry)?,
    );
    let sched_task = tokio::spawn(sched.run(stop.clone()));

    let bar = indicatif::ProgressBar::new(USERS as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} campaigns resolved  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let q = Queue::new(db.pool.clone(), registry.clone());
    let mut refunds_requested = false;
    loop {
        let (resolved, ticketed, busy): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM campaigns WHERE status <> 'active' OR next_search_at > $1),
                    (SELECT count(*) FROM bookings WHERE status = 'ticketed'),
                    (SELECT count(*) FROM fleet_jobs WHERE state IN ('available', 'running', 'retryable')
                        AND kind <> 'card_expiry_reminder' AND kind <> 'campaign_scan')",
        )
        .bind(chrono::Utc::now() - chrono::Duration::milliseconds(started.elapsed().as_millis() as i64))
        .fetch_one(&db.pool)
        .await?;
        bar.set_position(resolved as u64);
        bar.set_message(format!("{ticketed} ticketed, {busy} jobs in flight"));
        if resolved >= USERS as i64 && busy == 0 && refunds_requested {
            break;
        }
        if !refunds_requested && ticketed >= 10 {
            // The airline cancels a few ticketed bookings: refund them, as the Duffel
            // order_cancellation.confirmed webhook's follow-up does.
            let cancelled: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM bookings WHERE status = 'ticketed' ORDER BY id LIMIT 5",
            )
            .fetch_all(&db.pool)
            .await?;
            let jobs = cancelled
                .iter()
                .map(|id| {
                    NewJob::raw(
                        "refund_compensation",
                        serde_json::json!({"booking_id": id, "reason": "airline_cancelled"}),
                    )
                    .key(format!("booking:{id}:refund"))
                })
                .collect();
            q.enqueue_many(jobs).await?;
            refunds_requested = true;
        }
        if started.elapsed() > DEADLINE {
            bar.abandon_with_message("deadline reached");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    stop.cancel();
    for w in workers {
        w.await?;
    }
    sched_task.await??;

    let violations = crate::check::run(&db.pool).await?;
    for v in &violations {
        eprintln!("VIOLATED: {} — ids: {}", v.invariant, v.ids.join(", "));
    }
    let row: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM campaigns),
                (SELECT count(*) FROM campaigns WHERE status <> 'active' OR next_search_at > created_at + interval '1 second'),
                (SELECT count(*) FROM bookings WHERE status = 'ticketed'),
                (SELECT count(*) FROM bookings WHERE status = 'failed'),
                (SELECT count(*) FROM refunds WHERE status = 'succeeded'),
                (SELECT count(*) FROM notifications WHERE kind LIKE 'card%' AND sent_at IS NOT NULL),
                (SELECT COALESCE(sum(jsonb_array_length(errors)), 0)::bigint FROM fleet_jobs WHERE state <> 'dead'),
                (SELECT count(*) FROM fleet_jobs WHERE state = 'dead')",
    )
    .fetch_one(&db.pool)
    .await?;
    let counters = sandbox.sandbox.counters();
    let payment_intents = counters.payment_intents_created;
    let max_pi_per_booking = counters
        .payment_intents_by_booking
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    sandbox.shutdown().await?;
    Ok(DemoSummary {
        campaigns: row.0,
        campaigns_searched: row.1,
        bookings_ticketed: row.2,
        bookings_failed: row.3,
        refunds: row.4,
        reminders_sent: row.5,
        retries: row.6,
        dead_jobs: row.7,
        invariant_violations: violations.len(),
        payment_intents,
        max_payment_intents_per_booking: max_pi_per_booking,
        elapsed_ms: started.elapsed().as_millis(),
    })
}
