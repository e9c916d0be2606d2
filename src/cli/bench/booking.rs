//! `fleet bench booking`: how long a booking takes from "fare found under the price" to
//! "ticketed", at a steady rate, with provider latency, worker processes and the search
//! fan-out beside it (issue 12, "Domain scale"; the product asks for < 3 s end to end).
//!
//! **What is measured, per booked campaign:** `bookings.captured_at − fleet_jobs.created_at`
//! of its `booking_attempt`.
//! - *fare found* is the `booking_attempt` job's `created_at`: the `now()` of the search's
//!   outbox transaction, which locks the campaign, enqueues the attempt for the cheapest offer
//!   under `max_price` and reschedules the campaign, right after Duffel's offers came back;
//! - *ticketed* is `bookings.captured_at`: written by the statement that moves the booking to
//!   `ticketed` (order created and the hold captured).
//!
//! So it covers the outbox commit, the worker's wake-up and claim, and the whole saga: re-read
//! the offer, the PaymentIntent, the order and the capture, four provider calls each paying the
//! sandbox's `--latency`. The confirmation email after it is not counted.
//!
//! **The load.** On a fresh database: `rate × duration` *booking* campaigns (every offer is
//! under their price), due `1/rate` apart, and `search-rate × duration` *background* campaigns
//! (priced below every fare: searched, never booked), due `1/search-rate` apart, over the same
//! window. A `fleet scheduler` process fires `campaign_scan` every second, and `--workers`
//! `fleet worker` processes run everything: the scan's fan-out, both kinds of search, the
//! sagas, the emails. The provider sandbox runs in this process with `--latency` per Stripe and
//! Duffel call. The run checks afterwards that every booking campaign was ticketed once and
//! that `fleet check` finds no violated invariant.

use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use jobs::{
    kinds::{booking_attempt::BookingAttempt, campaign_search::CampaignSearch},
    seed::{copy_campaigns, seed_campaign, CampaignSeed},
    Job as _,
};
use sandbox::{LatencyRange, Sandbox, SandboxConfig};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    database::scratch::ScratchDb,
    queue::{self, JobState},
};

#[derive(clap::Args)]
pub struct BookingBenchArgs {
    /// Bookings per second offered (booking campaigns coming due per second).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Background searches per second beside them (campaigns due that never book).
    #[arg(long, default_value_t = 80.0)]
    search_rate: f64,
    /// How long the load is offered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `fleet worker` processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Handlers per worker process (`worker.concurrency`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Searches at once per worker process (`kinds.campaign_search.concurrency`).
    #[arg(long, default_value_t = 32)]
    search_concurrency: usize,
    /// Latency of every Stripe and Duffel call, drawn uniformly per call.
    #[arg(long, default_value = "100ms..400ms")]
    latency: LatencyRange,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Template users (each with a profile and a card) the campaigns of one kind are copied from.
const TEMPLATES: usize = 20;

/// How long after the offered window the run waits for the last bookings.
const DRAIN: Duration = Duration::from_secs(60);

/// The product's target.
const TARGET_P95_S: f64 = 3.0;

/// The credentials the worker processes present to the in-process sandbox.
const SANDBOX_KEYS: (&str, &str, &str) = ("sk_test_bench", "duffel_test_bench", "re_test_bench");

#[derive(Debug, Serialize)]
struct Report {
    rate: f64,
    search_rate: f64,
    duration_s: f64,
    workers: usize,
    latency: String,
    booking_campaigns: u64,
    ticketed: usize,
    /// Fare-found events per second over the span in which they happened.
    achieved_rate: f64,
    p50_s: f64,
    p95_s: f64,
    p99_s: f64,
    max_s: f64,
    /// Searches completed in all (booking and background).
    searches_completed: i64,
    invariant_violations: usize,
    max_payment_intents_per_booking: u64,
    loadavg_1m_start: f64,
    loadavg_1m_end: f64,
}

/// Seeds `TEMPLATES` users with campaigns priced at `max_price` that are not due, and returns
/// the campaigns to copy.
async fn templates(
    pool: &jobs::Db,
    keyring: &jobs::pii::Keyring,
    first_seed: usize,
    max_price: &str,
) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(TEMPLATES);
    for n in first_seed..first_seed + TEMPLATES {
        let s = CampaignSeed {
            max_price: max_price.into(),
            first_search_in: Duration::from_secs(24 * 3600),
            ..CampaignSeed::new(n)
        };
        ids.push(seed_campaign(pool, keyring, &s).await?.campaign_id);
    }
    Ok(ids)
}

/// `fleet` with `args` as a child process on the bench's database and sandbox.
fn spawn_role(
    args: &[&str],
    env: &[(String, String)],
    log: &std::fs::File,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the fleet binary")?;
    let mut c = tokio::process::Command::new(exe);
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .kill_on_drop(true);
    Ok(c.spawn()?)
}

/// SIGTERM to each child (they drain), then waits; kills what has not exited after `grace`.
async fn stop_all(children: &mut [tokio::process::Child], grace: Duration) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            // SAFETY: a plain kill(2) on a child this process started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(grace, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}

/// Runs the bench and prints its figures.
pub async fn run(a: BookingBenchArgs) -> anyhow::Result<()> {
    if !(a.rate > 0.0 && a.rate <= 1000.0 && (0.0..=5000.0).contains(&a.search_rate)) {
        bail!("--rate must be in (0, 1000] and --search-rate in [0, 5000]");
    }
    if a.workers == 0 || a.concurrency == 0 || a.search_concurrency == 0 {
        bail!("--workers, --concurrency and --search-concurrency must be >= 1");
    }
    if a.duration < Duration::from_secs(1) || a.duration > Duration::from_secs(3600) {
        bail!("--duration must be 1s..=1h");
    }
    let loadavg_1m_start = super::loadavg_1m();
    let db = ScratchDb::new("fleet_bench_booking").await?;
    let pool = jobs::Db::from(crate::database::connect(&db.url, 8).await?);
    let keys = jobs::pii::Keyring::fresh_spec();
    let keyring = jobs::pii::Keyring::parse(&keys)?;
    let sb = Sandbox::start(
        SandboxConfig {
            provider_latency: Some(a.latency),
            ..SandboxConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the sandbox")?;

    // Every offer on the default route is under 99,999.00; none is under 5.00.
    let bookers = templates(&pool, &keyring, 0, "99999.00").await?;
    let background = templates(&pool, &keyring, TEMPLATES, "5.00").await?;

    let log_path = std::env::temp_dir().join(format!(
        "fleet-bench-booking-{}.log",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let log = std::fs::File::create(&log_path)?;
    eprintln!(
        "booking bench: worker and scheduler logs go to {}",
        log_path.display()
    );
    let (sk, duffel, email) = SANDBOX_KEYS;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.as_str()),
        ("FLEET_PII_KEYS", keys.as_str()),
        ("RUST_LOG", "warn"),
        ("FLEET_PROVIDERS__STRIPE__BASE_URL", sb.base_url.as_str()),
        ("FLEET_PROVIDERS__STRIPE__SECRET_KEY", sk),
        ("FLEET_PROVIDERS__DUFFEL__BASE_URL", sb.base_url.as_str()),
        ("FLEET_PROVIDERS__DUFFEL__ACCESS_TOKEN", duffel),
        ("FLEET_PROVIDERS__EMAIL__BASE_URL", sb.base_url.as_str()),
        ("FLEET_PROVIDERS__EMAIL__API_KEY", email),
        (
            "FLEET_PROVIDERS__EMAIL__FROM",
            "Parker Flight <bookings@parkerflight.example>",
        ),
        ("FLEET_SCHEDULES__CAMPAIGN_SCAN__CRON", "* * * * * *"),
        ("FLEET_SCHEDULES__CARD_EXPIRY_REMINDER__ENABLED", "false"),
        ("FLEET_SCHEDULES__RETENTION_PURGE__ENABLED", "false"),
        // Handlers hold no connection across a provider call: 16 each keeps the shared server
        // well under its connection limit.
        ("FLEET_DATABASE__MAX_CONNECTIONS", "16"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([
        (
            "FLEET_WORKER__CONCURRENCY".to_owned(),
            a.concurrency.to_string(),
        ),
        (
            "FLEET_KINDS__CAMPAIGN_SEARCH__CONCURRENCY".to_owned(),
            a.search_concurrency.to_string(),
        ),
    ])
    // The code's provider budgets are sized for a default account (Duffel search 5/s, order
    // 2/s, Stripe 20/s: docs/limits.md) and would hold the offered load back; this bench
    // measures the fleet, so it sizes the account to the load: 4 × the offered rate, each.
    .chain(budget_env(
        a.rate,
        a.search_rate,
        a.workers * a.search_concurrency,
    ))
    .collect();
    let mut children = Vec::new();
    for _ in 0..a.workers {
        children.push(spawn_role(&["worker"], &env, &log)?);
    }
    children.push(spawn_role(&["scheduler"], &env, &log)?);
    let result = measure(&a, &pool, &bookers, &background).await;
    stop_all(&mut children, Duration::from_secs(20)).await;
    let (booking_campaigns, window_started) = result?;

    // Figures.
    let mut conn = db.pool.acquire().await?;
    let found: HashMap<Uuid, DateTime<Utc>> =
        queue::job_list_created(&mut *conn, BookingAttempt::KIND)
            .await?
            .into_iter()
            .filter_map(|(args, at)| {
                let id = args.get("campaign_id")?.as_str()?.parse().ok()?;
                Some((id, at))
            })
            .collect();
    let ticketed = jobs::booking::ticketed_at_by_campaign(&pool).await?;
    let mut latencies: Vec<f64> = ticketed
        .iter()
        .filter_map(|(c, at)| Some((*at - *found.get(c)?).num_microseconds()? as f64 / 1e6))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (first, last) = (
        found.values().min().copied().unwrap_or(window_started),
        found.values().max().copied().unwrap_or(window_started),
    );
    let span = (last - first).num_milliseconds().max(1) as f64 / 1000.0;
    let searches_completed = queue::job_count_by_state(&mut *conn, Some(CampaignSearch::KIND))
        .await?
        .get(&JobState::Completed)
        .copied()
        .unwrap_or(0);
    drop(conn);
    let violations = crate::check::run(&pool).await?;
    for v in &violations {
        eprintln!("VIOLATED: {} — ids: {}", v.invariant, v.ids.join(", "));
    }
    let counters = sb.sandbox.counters();
    let max_pi = counters
        .payment_intents_by_booking
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    sb.shutdown().await?;
    let r = Report {
        rate: a.rate,
        search_rate: a.search_rate,
        duration_s: a.duration.as_secs_f64(),
        workers: a.workers,
        latency: format!("{:?}..{:?}", a.latency.min, a.latency.max),
        booking_campaigns,
        ticketed: latencies.len(),
        achieved_rate: ((found.len() as f64 - 1.0).max(0.0) / span * 10.0).round() / 10.0,
        p50_s: super::percentile(&latencies, 0.50),
        p95_s: super::percentile(&latencies, 0.95),
        p99_s: super::percentile(&latencies, 0.99),
        max_s: latencies.last().copied().unwrap_or(f64::NAN),
        searches_completed,
        invariant_violations: violations.len(),
        max_payment_intents_per_booking: max_pi,
        loadavg_1m_start,
        loadavg_1m_end: super::loadavg_1m(),
    };
    eprintln!(
        "booking: {} bookings/s offered for {:.0} s beside {} background searches/s; {} worker processes; provider latency {}\n  fare found → ticketed: p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s over {} of {} campaigns (fare found at {:.1}/s)\n  searches completed {}; invariant violations {}; most PaymentIntents per booking {}\n  load average (1m) {:.2} at start, {:.2} at end\n  target p95 < {TARGET_P95_S} s: {}",
        r.rate, r.duration_s, r.search_rate, r.workers, r.latency, r.p50_s, r.p95_s, r.p99_s,
        r.max_s, r.ticketed, r.booking_campaigns, r.achieved_rate, r.searches_completed,
        r.invariant_violations, r.max_payment_intents_per_booking, r.loadavg_1m_start,
        r.loadavg_1m_end,
        if r.p95_s < TARGET_P95_S { "met" } else { "NOT met" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if r.ticketed as u64 != r.booking_campaigns || r.invariant_violations > 0 || max_pi > 1 {
        bail!(
            "benchmark verification failed: {} of {} booking campaigns ticketed, {} invariant violation(s), at most {} PaymentIntents per booking",
            r.ticketed, r.booking_campaigns, r.invariant_violations, max_pi
        );
    }
    Ok(())
}

/// Seeds the due campaigns once the roles are up, then waits until every booking campaign is
/// ticketed (or the drain time is over). Returns the booking campaigns and when the window
/// began.
async fn measure(
    a: &BookingBenchArgs,
    pool: &jobs::Db,
    bookers: &[Uuid],
    background: &[Uuid],
) -> anyhow::Result<(u64, DateTime<Utc>)> {
    // Give the processes a moment to start and migrate-check, so the window starts warm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n_book = (a.rate * a.duration.as_secs_f64()).round() as u64;
    let n_bg = (a.search_rate * a.duration.as_secs_f64()).round() as u64;
    let start = Utc::now() + chrono::Duration::seconds(2);
    let per = |rate: f64| Duration::from_secs_f64(1.0 / rate);
    copy_campaigns(pool, bookers, n_book, start, per(a.rate)).await?;
    if n_bg > 0 {
        copy_campaigns(pool, background, n_bg, start, per(a.search_rate)).await?;
    }
    let deadline = Instant::now() + a.duration + Duration::from_secs(4) + DRAIN;
    let mut last_print = Instant::now();
    loop {
        let ticketed = jobs::booking::ticketed_at_by_campaign(pool).await?.len() as u64;
        if ticketed >= n_book {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("booking bench: drain time over with {ticketed} of {n_book} ticketed");
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("  … {ticketed} of {n_book} ticketed");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((n_book, start))
}

/// `FLEET_*` settings that give the bench's provider account room for the offered load: every
/// budget at 4 × the calls per second the load makes of it, and the fleet-wide search limit at
/// the bench's workers' search slots together.
fn budget_env(rate: f64, search_rate: f64, search_slots: usize) -> Vec<(String, String)> {
    let per_s = |calls: f64| format!("{}/s", (4.0 * calls).ceil().max(1.0));
    let burst = |calls: f64| ((4.0 * calls).ceil().max(1.0) as u64).to_string();
    let mut v = Vec::new();
    // A booking search and a background search each make one Duffel search; a booking makes
    // one Duffel order and a few Stripe calls (create/confirm, capture).
    for (name, calls) in [
        ("DUFFEL_SEARCH", rate + search_rate),
        ("DUFFEL_ORDER", rate),
        ("STRIPE", 3.0 * rate),
    ] {
        v.push((format!("FLEET_BUDGETS__{name}__RATE"), per_s(calls)));
        v.push((format!("FLEET_BUDGETS__{name}__BURST"), burst(calls)));
    }
    v.push((
        "FLEET_KINDS__CAMPAIGN_SEARCH__GLOBAL_CONCURRENCY".to_owned(),
        search_slots.to_string(),
    ));
    v
}
