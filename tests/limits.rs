//! Fleet-wide limits (docs/limits.md), proven with several real `fleet worker` processes on one
//! database: a kind's global concurrency and a per-key limit are never exceeded (the running
//! count is sampled every 10 ms under load), a rate budget holds its rate, a provider's 429
//! empties a budget for every worker until the reset, and one key's burst does not delay
//! another key's job. Plus the configuration's errors.
//!
//! The rate test across processes holds a budget of 50/s for 7 s of real time; its arithmetic
//! is proven on a stepped clock.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::*;
use fleet::{config::Settings, queue::JobState, Queue, Registry};
use jobs::{
    providers::duffel::{CabinClass, OfferSearch, PassengerSpec, SliceSpec},
    BudgetDefaults, Job, JobContext, JobError, KindDefaults, NewJob,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

/// `FLEET_*` pairs as the settings loader takes them.
fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The registry a `fleet worker` started with `pairs` runs: the enqueuer must resolve keys the
/// same way.
fn registry_with(pairs: &[(&str, &str)]) -> Arc<Registry> {
    let settings = Settings::from_sources(None, &env(pairs)).unwrap();
    Arc::new(fleet::fleet_registry(&settings).unwrap())
}

/// `n` worker processes with `pairs` on top of the tests' fast cadences, few connections each.
fn workers(url: &str, n: usize, pairs: &[(&str, &str)]) -> Vec<std::process::Child> {
    let mut all = vec![("FLEET_DATABASE__MAX_CONNECTIONS", "6")];
    all.extend_from_slice(pairs);
    (0..n).map(|_| spawn_worker(url, &all)).collect()
}

fn stop(children: Vec<std::process::Child>) {
    for mut c in children {
        signal(&c, libc::SIGTERM);
        wait_exit(&mut c, Duration::from_secs(15));
    }
}

async fn enqueue_sleeps(q: &Queue, jobs: impl IntoIterator<Item = serde_json::Value>) -> Vec<i64> {
    let jobs: Vec<NewJob> = jobs
        .into_iter()
        .map(|args| NewJob::raw("fleet.sleep", args))
        .collect();
    q.enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// How many `kind` jobs are in `state`.
async fn count_of(pool: &PgPool, kind: &str, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fleet_jobs WHERE kind = $1 AND state::text = $2")
        .bind(kind)
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count_in(pool: &PgPool, state: &str) -> i64 {
    count_of(pool, "fleet.sleep", state).await
}

/// Samples `sql` (one bigint) every 10 ms until every `fleet.sleep` job completed; returns the
/// samples' maximum and the time it took.
async fn sample_until_done(
    pool: &PgPool,
    sql: &'static str,
    total: i64,
    within: Duration,
) -> (i64, usize) {
    let started = Instant::now();
    let mut max = 0;
    let mut samples = 0;
    loop {
        let v: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        max = max.max(v);
        samples += 1;
        if count_in(pool, "completed").await == total {
            return (max, samples);
        }
        assert!(
            started.elapsed() < within,
            "the jobs did not finish within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three worker processes of four slots each (twelve could run at once without the limit),
/// with `fleet.sleep` limited to 3 running fleet-wide, work the 60 enqueued sleeps: the most
/// that ran at once (sampled every 10 ms), and how many samples were taken.
async fn most_running_with_a_limit_of_3(db: &fleet::testkit::ScratchDb) -> (i64, usize) {
    let limit = ("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "3");
    let procs = workers(&db.url, 3, &[limit, ("FLEET_WORKER__CONCURRENCY", "4")]);
    let seen = sample_until_done(
        &db.pool,
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' AND state = 'running'",
        60,
        Duration::from_secs(60),
    )
    .await;
    stop(procs);
    seen
}

/// The limited claim of `fleet.sleep` as a worker would run it, owned by "test".
fn sleep_claim(
    budgets: &[fleet::registry::BudgetSpec],
    global_concurrency: Option<i64>,
    limit: i64,
) -> fleet::queue::LimitedFetch<'_> {
    fleet::queue::LimitedFetch {
        kind: "fleet.sleep",
        queues: None,
        global_concurrency,
        key_concurrency: None,
        budgets,
        limit,
        owner: "test",
        lease: Duration::from_secs(60),
        now: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_global_concurrency_is_never_exceeded_across_worker_processes() {
    let db = db().await;
    let limit = [("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "3")];
    let q = Queue::new(db.pool.clone(), registry_with(&limit));
    enqueue_sleeps(&q, (0..60).map(|_| json!({"ms": 120}))).await;
    let (max, samples) = most_running_with_a_limit_of_3(&db).await;
    assert!(
        max <= 3,
        "at most 3 running at once fleet-wide, saw {max} ({samples} samples)"
    );
    assert_eq!(
        max, 3,
        "the limit was reached: the load was real ({samples} samples)"
    );
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet_jobs WHERE claim_seq <> 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(twice, 0, "every job ran once");
}

/// A limited claim with nothing ready of its kind answers at once: it neither waits for the
/// kind's lock, held here by another claimer's open transaction, nor counts the kind's running
/// jobs (at the steady state most rounds' limited claims find nothing ready).
#[tokio::test]
async fn a_limited_claim_with_nothing_ready_answers_without_waiting_for_the_kinds_lock() {
    let db = db().await;
    // Another claimer, mid-claim: it holds the kind's lock until it commits.
    let mut holder = db.pool.begin().await.unwrap();
    fleet::queue::kind_lock_hold(&mut holder, "fleet.sleep")
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let params = sleep_claim(&[], Some(3), 3);
    let claim = fleet::queue::job_fetch_limited(&mut conn, &params);
    let answered = tokio::time::timeout(Duration::from_secs(5), claim)
        .await
        .expect("answered without waiting for the holder's lock")
        .unwrap();
    assert!(answered.jobs.is_empty());
    assert!(answered.budget_wait.is_none());
    holder.commit().await.unwrap();
}

/// The race the kind's lock exists for, made deterministic: a claim that had to wait for
/// the lock must count what the holder claimed. Its count runs in a statement of its own
/// after the lock (inside `fleet_job_fetch_limited`); counted with a snapshot taken before the
/// lock, it would see none of the holder's claims running and claim past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_claim_that_waited_on_the_kinds_lock_counts_what_the_holder_claimed() {
    let db = db().await;
    let limit = [("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "3")];
    let q = Queue::new(db.pool.clone(), registry_with(&limit));
    enqueue_sleeps(&q, (0..6).map(|_| json!({"ms": 1}))).await;
    // The holder claims the limit's three inside a transaction it keeps open: the kind's
    // lock is held until it commits.
    let mut holder = db.pool.begin().await.unwrap();
    let held = fleet::queue::job_fetch_limited(&mut holder, &sleep_claim(&[], Some(3), 3))
        .await
        .unwrap();
    assert_eq!(held.jobs.len(), 3, "the holder claims up to the limit");
    let pool = db.pool.clone();
    let waiter = tokio::spawn(async move {
        let mut conn = pool.acquire().await.unwrap();
        fleet::queue::job_fetch_limited(&mut conn, &sleep_claim(&[], Some(3), 3))
            .await
            .unwrap()
    });
    wait_until(
        Duration::from_secs(10),
        "the second claim waits on the kind's advisory lock",
        || async { lock_waiters(&db.pool, "%fleet_job_fetch_limited%").await == 1 },
    )
    .await;
    holder.commit().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the second claim ends once the lock is released")
        .unwrap();
    assert_eq!(
        waited.jobs.len(),
        0,
        "the holder's three count as running: none is left under the limit"
    );
    assert_eq!(count_in(&db.pool, "running").await, 3);
    assert_eq!(count_in(&db.pool, "available").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_limit_holds_across_worker_processes_while_keys_run_side_by_side() {
    let db = db().await;
    let cfg = [
        ("FLEET_KINDS__FLEET_DOT_SLEEP__KEY_CONCURRENCY", "1"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__LIMIT_KEY", "key"),
    ];
    let q = Queue::new(db.pool.clone(), registry_with(&cfg));
    enqueue_sleeps(
        &q,
        // Each key's jobs one after another: the plain claim would take them together.
        (0..32).map(|i| json!({"ms": 60, "key": format!("campaign-{}", i / 8)})),
    )
    .await;
    let procs = workers(
        &db.url,
        3,
        &[cfg[0], cfg[1], ("FLEET_WORKER__CONCURRENCY", "4")],
    );
    let started = Instant::now();
    let mut max_per_key = 0;
    let mut max_keys = 0;
    loop {
        let (per_key, keys): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(max(n), 0), count(*) FROM (
                 SELECT count(*) AS n FROM fleet_jobs
                 WHERE kind = 'fleet.sleep' AND state = 'running' GROUP BY limit_key) r",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        max_per_key = max_per_key.max(per_key);
        max_keys = max_keys.max(keys);
        if count_in(&db.pool, "completed").await == 32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop(procs);
    assert_eq!(max_per_key, 1, "never two jobs of one key at once");
    assert!(
        max_keys >= 2,
        "different keys ran side by side (saw at most {max_keys})"
    );
}

/// Three workers stepped on one clock share a budget of 20/s with a burst of 5: whatever the
/// number of workers, the claims in the first t seconds are the burst plus 20 × t, to the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_budget_refills_at_its_rate_on_the_clock_whatever_the_number_of_workers() {
    let db = db().await;
    let cfg = [
        ("FLEET_BUDGETS__PROBE__RATE", "20/s"),
        ("FLEET_BUDGETS__PROBE__BURST", "5"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__BUDGETS", "probe"),
    ];
    let reg = registry_with(&cfg);
    let (w1, q, clock) = stepped_worker(&db.pool, reg.clone());
    let others: Vec<fleet::Worker> = (0..2)
        .map(|_| {
            fleet::Worker::new(db.pool.clone(), reg.clone(), fast_settings())
                .with_clock(clock.clone())
        })
        .collect();
    enqueue_sleeps(&q, (0..400).map(|_| json!({"ms": 0}))).await;
    let mut claimed = 0;
    for w in std::iter::once(&w1).chain(&others) {
        claimed += w.work_until_idle().await.unwrap().len();
    }
    assert_eq!(claimed, 5, "the burst at once");
    for tenth in 1..=100u32 {
        clock.advance(Duration::from_millis(100));
        // The workers take turns, as processes racing for the same tokens would.
        let w = [&w1, &others[0], &others[1]][tenth as usize % 3];
        claimed += w.work_until_idle().await.unwrap().len();
        assert_eq!(claimed, 5 + 2 * tenth as usize, "after {} ms", tenth * 100);
    }
}

/// The same budget held by three `fleet worker` processes in real time, which is the claim
/// here (their waits for the next token): 50/s over 6 s, measured from the claims' times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_budget_holds_its_rate_across_worker_processes() {
    let db = db().await;
    let cfg = [
        ("FLEET_BUDGETS__PROBE__RATE", "50/s"),
        ("FLEET_BUDGETS__PROBE__BURST", "5"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__BUDGETS", "probe"),
    ];
    let q = Queue::new(db.pool.clone(), registry_with(&cfg));
    // More than the 8 s the workers run can take: the first burst (5) plus 50/s.
    enqueue_sleeps(&q, (0..800).map(|_| json!({"ms": 1}))).await;
    let procs = workers(&db.url, 3, &[cfg[0], cfg[1], cfg[2]]);
    wait_until(Duration::from_secs(20), "7 s of claims", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(max(attempted_at) - min(attempted_at) > interval '7 seconds', false)
             FROM fleet_jobs",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    stop(procs);
    let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT attempted_at FROM fleet_jobs WHERE attempted_at IS NOT NULL ORDER BY attempted_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let first = times[0];
    let within = |secs: f64| {
        times
            .iter()
            .filter(|t| (**t - first).num_milliseconds() as f64 / 1000.0 < secs)
            .count() as f64
    };
    // Over the 6 s after the first second: 300 claims at 50/s.
    let steady = within(7.0) - within(1.0);
    assert!(
        (285.0..=315.0).contains(&steady),
        "50/s held within 5 %: {steady} claims in 6 s"
    );
    for t in [1.0, 3.0, 5.0, 7.0] {
        assert!(
            within(t) <= 5.0 + 50.0 * t + 1.0,
            "never above burst + rate × t: {} claims in the first {t} s",
            within(t)
        );
    }
}

/// A handler whose provider said, on a successful answer, that a budget is used up reports it
/// in its result (`ctx.rate_limits`), and the engine empties the budget for every worker until
/// the reset: nothing of the budget is claimed before it, anywhere.
#[derive(Debug, Serialize, Deserialize)]
struct SpendsTheLastToken {}
impl Job for SpendsTheLastToken {
    const KIND: &'static str = "test.spends_the_last_token";
    fn defaults() -> KindDefaults {
        KindDefaults {
            budgets: vec!["probe".to_owned()],
            ..KindDefaults::default()
        }
    }
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        ctx.rate_limits.report(jobs::Exhausted {
            budget: "probe".into(),
            after: Duration::from_secs(30),
            reason: "search: ratelimit-remaining 0".into(),
        });
        Ok(())
    }
}

#[tokio::test]
async fn a_budget_a_handler_reports_used_up_is_empty_for_every_worker_until_its_reset() {
    let db = db().await;
    let mut r = Registry::default();
    r.declare_budget(
        "probe",
        BudgetDefaults {
            per_second: 100.0,
            burst: 100,
        },
    );
    r.register::<SpendsTheLastToken>();
    let r = Arc::new(r);
    let (w1, q, clock) = stepped_worker(&db.pool, r.clone());
    let w2 = fleet::Worker::new(db.pool.clone(), r, fast_settings()).with_clock(clock.clone());
    q.enqueue(&SpendsTheLastToken {}, None).await.unwrap();
    let ran = w1.work_one().await.unwrap().unwrap();
    assert_eq!(ran.next.state(), JobState::Completed, "the call worked");
    let until: DateTime<Utc> =
        sqlx::query_scalar("SELECT blocked_until FROM fleet_budgets WHERE name = 'probe'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(until, clock.get() + chrono::Duration::seconds(30));
    for _ in 0..3 {
        q.enqueue(&SpendsTheLastToken {}, None).await.unwrap();
    }
    clock.advance(Duration::from_secs(29));
    assert!(w1.work_until_idle().await.unwrap().is_empty(), "blocked");
    assert!(
        w2.work_until_idle().await.unwrap().is_empty(),
        "blocked for every worker"
    );
    // The budget refills from zero at the reset: 100/s is a token each 10 ms after it.
    clock.advance(Duration::from_millis(1_010));
    assert_eq!(
        w2.work_one().await.unwrap().unwrap().next.state(),
        JobState::Completed
    );
}

/// Records when each probe started and searches Duffel (the sandbox) for its route.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProbeSearch {
    route: (String, String),
}

static PROBE_STARTS: Mutex<Vec<(String, DateTime<Utc>)>> = Mutex::new(Vec::new());

impl Job for ProbeSearch {
    const KIND: &'static str = "test.probe_search";

    fn defaults() -> KindDefaults {
        KindDefaults {
            budgets: vec![jobs::job::budgets::DUFFEL_SEARCH.to_owned()],
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        PROBE_STARTS
            .lock()
            .unwrap()
            .push((format!("{}-{}", self.route.0, self.route.1), Utc::now()));
        let search = OfferSearch {
            slices: vec![SliceSpec {
                origin: self.route.0.clone(),
                destination: self.route.1.clone(),
                departure_date: (Utc::now() + chrono::Duration::days(30)).date_naive(),
            }],
            passengers: vec![PassengerSpec::Adult],
            cabin_class: CabinClass::Economy,
        };
        let deps = ctx.extension::<jobs::Deps>()?;
        deps.flights()?.create_offer_request(&search).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_the_provider_empties_the_budget_for_every_worker_until_its_reset() {
    let db = db().await;
    let sb = sandbox::Sandbox::start(
        sandbox::SandboxConfig {
            rate_limit_burst: 1,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sb.sandbox
        .set_scenario("LHR-FRA", sandbox::Scenario::RateLimited);
    let mut r = Registry::default();
    r.declare_budget(
        jobs::job::budgets::DUFFEL_SEARCH,
        BudgetDefaults {
            per_second: 100.0,
            burst: 100,
        },
    );
    r.register::<ProbeSearch>();
    let r = Arc::new(r);
    let ext = extensions_of(sandbox_deps(&sb.base_url).unwrap());
    // Two workers: the fleet.
    let w1 = start_worker_with(&db.pool, r.clone(), fast_settings(), ext.clone());
    let w2 = start_worker_with(&db.pool, r.clone(), fast_settings(), ext);
    let q = Queue::new(db.pool.clone(), r.clone());
    let blocked = q
        .enqueue(
            &ProbeSearch {
                route: ("LHR".into(), "FRA".into()),
            },
            None,
        )
        .await
        .unwrap()
        .id;
    wait_for(
        &db.pool,
        blocked,
        Duration::from_secs(10),
        "the 429's snooze",
        |j| !j.errors.is_empty(),
    )
    .await;
    let (until, blocks): (DateTime<Utc>, i64) =
        sqlx::query_as("SELECT blocked_until, blocks FROM fleet_budgets WHERE name = $1")
            .bind(jobs::job::budgets::DUFFEL_SEARCH)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(blocks, 1);
    let left = until - Utc::now();
    assert!(
        left > chrono::Duration::milliseconds(500) && left <= chrono::Duration::seconds(4),
        "blocked until the sandbox's ratelimit-reset (2-3 s ahead): {left:?}"
    );
    // Jobs of another route, which Duffel would not refuse, wait for the reset all the same.
    let others: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let job = ProbeSearch {
                route: ("LHR".into(), "CDG".into()),
            };
            v.push(q.enqueue(&job, None).await.unwrap().id);
        }
        v
    };
    for id in &others {
        wait_state(
            &db.pool,
            *id,
            fleet::queue::JobState::Completed,
            Duration::from_secs(15),
        )
        .await;
    }
    wait_state(
        &db.pool,
        blocked,
        fleet::queue::JobState::Completed,
        Duration::from_secs(15),
    )
    .await;
    w1.stop().await;
    w2.stop().await;
    let starts = PROBE_STARTS.lock().unwrap().clone();
    let cdg: Vec<DateTime<Utc>> = starts
        .iter()
        .filter(|(r, _)| r == "LHR-CDG")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(cdg.len(), 4, "each ran once: {starts:?}");
    for t in &cdg {
        // The sandbox's reset is whole seconds: allow the clock's rounding, not a claim.
        assert!(
            *t >= until - chrono::Duration::milliseconds(20),
            "no worker claimed a job of the blocked budget before its reset: started {t}, blocked until {until}"
        );
    }
    let text = fleet::metrics::render_text();
    assert!(
        text.contains("fleet_budget_blocks_total{budget=\"duffel_search\"} 1"),
        "the block is counted"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueued_before_their_kind_got_a_limit_are_held_to_it() {
    let db = db().await;
    // Enqueued by a fleet without the limit: filed for the plain claim.
    let q = Queue::new(db.pool.clone(), registry_with(&[]));
    enqueue_sleeps(&q, (0..60).map(|_| json!({"ms": 120}))).await;
    // The workers know the limit: their plain claims re-file the rows instead of running
    // them, and the limited claims run them 3 at a time. Without the re-filing they would
    // either run 12 at once (claimed plain) or never (claimed by nobody).
    let (max, samples) = most_running_with_a_limit_of_3(&db).await;
    assert!(
        max <= 3,
        "at most 3 running at once fleet-wide, saw {max} ({samples} samples)"
    );
    let plain: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet_jobs WHERE NOT limited")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(plain, 0, "every job was re-filed as limited before it ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueued_while_their_kind_had_a_limit_still_run_once_it_has_none() {
    let db = db().await;
    let limit = [("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "1")];
    let q = Queue::new(db.pool.clone(), registry_with(&limit));
    let ids = enqueue_sleeps(&q, (0..40).map(|_| json!({"ms": 1}))).await;
    // A worker without the limit never runs the limited claim for the kind: it re-files
    // the rows for its plain claim.
    let procs = workers(&db.url, 1, &[]);
    for id in &ids {
        wait_state(
            &db.pool,
            *id,
            fleet::queue::JobState::Completed,
            Duration::from_secs(30),
        )
        .await;
    }
    stop(procs);
}

/// Plain handler starts so far (the limited test's own kinds alone touch it).
static PREFETCHED_PLAIN_STARTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
/// How many plain handlers had started when the limited handler started.
static PLAIN_STARTS_BEFORE_LIMITED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// A plain job that holds the worker's one slot for 100 ms.
#[derive(Debug, Serialize, Deserialize)]
struct PrefetchedPlain {}
impl Job for PrefetchedPlain {
    const KIND: &'static str = "test.prefetched_plain";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        PREFETCHED_PLAIN_STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

/// A job of a kind limited to one running fleet-wide.
#[derive(Debug, Serialize, Deserialize)]
struct ScarceLimited {}
impl Job for ScarceLimited {
    const KIND: &'static str = "test.scarce_limited";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        let seen = PREFETCHED_PLAIN_STARTS.load(std::sync::atomic::Ordering::SeqCst);
        PLAIN_STARTS_BEFORE_LIMITED.store(seen, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// `concurrency` slots, no prefetch, and a poll longer than any test here: only a
/// notification or a freed slot starts a claim round.
fn woken_rounds_only(concurrency: usize) -> fleet::config::WorkerSettings {
    fleet::config::WorkerSettings {
        concurrency,
        prefetch: 0,
        poll_interval: Duration::from_secs(30),
        ..fast_settings()
    }
}

/// A registry of plain kind `P` and kind `L`, limited to one running fleet-wide.
fn plain_and_limited_to_one<P: Job, L: Job>() -> Arc<Registry> {
    let mut r = Registry::default();
    r.register::<P>();
    r.register_with::<L>(KindDefaults {
        global_concurrency: Some(1),
        ..L::defaults()
    });
    Arc::new(r)
}

/// A prefetched claim of a limited kind holds its share of the fleet-wide limit while it
/// waits for a slot; behind a deep prefetch of plain claims, the kind would run at a fraction
/// of its limit fleet-wide. It waits behind the running plain job alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_kinds_claim_starts_ahead_of_prefetched_plain_claims() {
    let db = db().await;
    let reg = plain_and_limited_to_one::<PrefetchedPlain, ScarceLimited>();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let plain = (0..12)
        .map(|_| NewJob::of(&PrefetchedPlain {}).unwrap())
        .collect::<Vec<_>>();
    q.enqueue_many(plain).await.unwrap();
    // One slot, eleven prefetched: all twelve plain jobs are claimed at once.
    let cfg = fleet::config::WorkerSettings {
        concurrency: 1,
        prefetch: 11,
        ..fast_settings()
    };
    let w = start_worker(&db.pool, reg, cfg);
    wait_for_count(&db.pool, PrefetchedPlain::KIND, "running", 12).await;
    // Claimed once a quarter of the capacity is free (after about 3 plain jobs), it starts
    // once the running plain job ends; queued behind the prefetch, after all twelve.
    let limited = q.enqueue(&ScarceLimited {}, None).await.unwrap().id;
    wait_state(
        &db.pool,
        limited,
        JobState::Completed,
        Duration::from_secs(10),
    )
    .await;
    let before = PLAIN_STARTS_BEFORE_LIMITED.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        before <= 8,
        "the limited claim waited for {before} of the 12 plain jobs to start"
    );
    // The plain jobs still all run (a drain would give the unstarted ones back).
    wait_for_count(&db.pool, PrefetchedPlain::KIND, "completed", 12).await;
    w.stop().await;
}

/// A plain job that holds a slot for 4 s.
#[derive(Debug, Serialize, Deserialize)]
struct LongPlain {}
impl Job for LongPlain {
    const KIND: &'static str = "test.long_plain";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Ok(())
    }
}

/// A quick job of a kind limited to one running fleet-wide.
#[derive(Debug, Serialize, Deserialize)]
struct QuickLimited {}
impl Job for QuickLimited {
    const KIND: &'static str = "test.quick_limited";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A limited kind's fleet-wide slot is free again once its outcome is written, and only a
/// claim round fills it: the worker claims the limited kinds as soon as that happens, not once
/// a quarter of its capacity is free. Here seven 4-second plain jobs hold seven of eight
/// slots (a quarter is two), and five quick jobs limited to one at a time must run one after
/// the other meanwhile; waiting for the quarter, they would wait for the plain jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_kinds_freed_slot_is_claimed_again_without_waiting_for_a_quarter_of_the_capacity()
{
    let db = db().await;
    let reg = plain_and_limited_to_one::<LongPlain, QuickLimited>();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let mut jobs: Vec<NewJob> = (0..7).map(|_| NewJob::of(&LongPlain {}).unwrap()).collect();
    jobs.extend((0..5).map(|_| NewJob::of(&QuickLimited {}).unwrap()));
    q.enqueue_many(jobs).await.unwrap();
    let w = start_worker(&db.pool, reg, woken_rounds_only(8));
    wait_until(
        Duration::from_secs(2),
        "the five limited jobs completed one after the other",
        || async { count_of(&db.pool, QuickLimited::KIND, "completed").await == 5 },
    )
    .await;
    assert_eq!(
        count_of(&db.pool, LongPlain::KIND, "running").await,
        7,
        "the plain jobs still hold their slots: no quarter of the capacity was free"
    );
    w.stop().await;
}

/// A plain job that ends at once.
#[derive(Debug, Serialize, Deserialize)]
struct QuickPlain {}
impl Job for QuickPlain {
    const KIND: &'static str = "test.quick_plain";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A round whose room holds the limited kinds' most beside its plain claim claims the plain
/// jobs first and starts them as soon as that claim answers: they do not wait for the limited
/// claims' round trips. Made visible by another claimer holding the limited kind's lock: the
/// round's limited claim waits on it, and the plain jobs run to completion meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rounds_plain_jobs_start_before_its_limited_claim_answers() {
    let db = db().await;
    let reg = plain_and_limited_to_one::<QuickPlain, QuickLimited>();
    let q = Queue::new(db.pool.clone(), reg.clone());
    // The other claimer, mid-claim: it holds the kind's lock until it commits.
    let mut holder = db.pool.begin().await.unwrap();
    fleet::queue::kind_lock_hold(&mut holder, QuickLimited::KIND)
        .await
        .unwrap();
    let mut jobs: Vec<NewJob> = (0..3)
        .map(|_| NewJob::of(&QuickPlain {}).unwrap())
        .collect();
    jobs.push(NewJob::of(&QuickLimited {}).unwrap());
    q.enqueue_many(jobs).await.unwrap();
    // Eight slots: room for the plain three beside the limited kind's one.
    let w = start_worker(&db.pool, reg, woken_rounds_only(8));
    wait_until(
        Duration::from_secs(5),
        "the three plain jobs completed while the round's limited claim waits",
        || async { count_of(&db.pool, QuickPlain::KIND, "completed").await == 3 },
    )
    .await;
    assert_eq!(
        lock_waiters(&db.pool, "%fleet_job_fetch_limited%").await,
        1,
        "the round's limited claim still waits on the kind's lock"
    );
    holder.commit().await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the limited job ran once the lock was released",
        || async { count_of(&db.pool, QuickLimited::KIND, "completed").await == 1 },
    )
    .await;
    w.stop().await;
}

/// A plain claim that runs before the limited kinds gets the room less theirs; when it fills
/// that and they leave theirs unused, the same round claims the plain rest. Here four slots,
/// a limited kind that may run one, and four 4-second plain jobs: all four run at once, not
/// three and the fourth after one of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_claim_that_filled_its_share_claims_the_room_the_limited_kinds_left_in_the_same_round(
) {
    let db = db().await;
    let reg = plain_and_limited_to_one::<LongPlain, QuickLimited>();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let w = start_worker(&db.pool, reg, woken_rounds_only(4));
    // The worker listens, and the round its listener's first wake started is over.
    wait_until(Duration::from_secs(5), "the worker listens", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let jobs: Vec<NewJob> = (0..4).map(|_| NewJob::of(&LongPlain {}).unwrap()).collect();
    q.enqueue_many(jobs).await.unwrap();
    wait_until(
        Duration::from_secs(2),
        "all four plain jobs running, claimed by the notified round",
        || async { count_of(&db.pool, LongPlain::KIND, "running").await == 4 },
    )
    .await;
    w.stop().await;
}

/// Waits (at most 5 s) until `n` jobs of `kind` are in `state`.
async fn wait_for_count(pool: &PgPool, kind: &str, state: &str, n: i64) {
    let what = format!("{n} {kind} jobs {state}");
    wait_until(Duration::from_secs(5), &what, || async {
        count_of(pool, kind, state).await >= n
    })
    .await;
}

#[tokio::test]
async fn the_plain_claim_reads_none_of_a_throttled_backlog_of_limited_jobs() {
    let db = db().await;
    // 5,000 jobs of a limited kind (held back by its limit, or its budget), ahead of 64
    // plain ones in claim order.
    let throttled = [("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "1")];
    let limited_q = Queue::new(db.pool.clone(), registry_with(&throttled));
    enqueue_sleeps(&limited_q, (0..5_000).map(|_| json!({"ms": 1}))).await;
    let plain_q = Queue::new(db.pool.clone(), registry_with(&[]));
    let plain = enqueue_sleeps(&plain_q, (0..64).map(|_| json!({"ms": 1}))).await;
    let mut conn = db.pool.acquire().await.unwrap();
    flush_stats(&mut conn).await;
    let before = ready_index_tuples_read(&mut conn).await;
    let claimed = fleet::queue::job_fetch_available(
        &mut conn,
        &fleet::queue::FetchParams {
            only_kinds: None,
            queues: None,
            skip_kinds: &[],
            limited_kinds: &[],
            limit: 64,
            owner: "plan-test",
            lease: Duration::from_secs(60),
            now: None,
        },
    )
    .await
    .unwrap();
    let mut got: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    got.sort();
    assert_eq!(
        got, plain,
        "the plain claim takes the plain jobs, none of the limited"
    );
    flush_stats(&mut conn).await;
    // The flush happens at the end of the transaction that asked for it; this is the next one.
    let read = ready_index_tuples_read(&mut conn).await - before;
    // Walking past the backlog (the claim before `limited` was filed) reads 5,064.
    assert!(
        read < 1_000,
        "the claim read {read} index tuples for 64 jobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_burst_does_not_delay_another_keys_job() {
    let db = db().await;
    let cfg = [
        ("FLEET_KINDS__FLEET_DOT_SLEEP__LIMIT_KEY", "key"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "2"),
    ];
    let q = Queue::new(db.pool.clone(), registry_with(&cfg));
    // One user's burst of 200 searches, then another user's one.
    enqueue_sleeps(&q, (0..200).map(|_| json!({"ms": 50, "key": "user-a"}))).await;
    let b = enqueue_sleeps(&q, [json!({"ms": 50, "key": "user-b"})]).await[0];
    let procs = workers(&db.url, 2, &[cfg[0], cfg[1]]);
    let done = wait_state(
        &db.pool,
        b,
        fleet::queue::JobState::Completed,
        Duration::from_secs(20),
    )
    .await;
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs WHERE limit_key = 'user-a' AND attempted_at < $1",
    )
    .bind(done.attempted_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    stop(procs);
    // Without fairness all 200 would go first (about 5 s at 2 at a time).
    assert!(
        ahead <= 2,
        "user-b's job waited for {ahead} of user-a's burst"
    );
}

/// The fair rank counts a key's backlog only up to the cap, so enqueueing for a key with a
/// long backlog costs a bounded walk; a short-backlog key still ranks ahead of it.
#[tokio::test]
async fn a_fair_rank_counts_a_keys_backlog_up_to_the_cap_and_a_new_key_still_ranks_first() {
    let db = db().await;
    let cfg = [
        ("FLEET_KINDS__FLEET_DOT_SLEEP__LIMIT_KEY", "key"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "2"),
    ];
    let q = Queue::new(db.pool.clone(), registry_with(&cfg));
    let cap = fleet::queue::FAIR_RANK_BACKLOG_CAP as usize;
    enqueue_sleeps(&q, (0..cap + 50).map(|_| json!({"ms": 1, "key": "user-a"}))).await;
    let later = enqueue_sleeps(&q, (0..2).map(|_| json!({"ms": 1, "key": "user-a"}))).await;
    let b = enqueue_sleeps(&q, [json!({"ms": 1, "key": "user-b"})]).await[0];
    let max_first: i32 = sqlx::query_scalar(
        "SELECT max(fair_rank) FROM fleet_jobs WHERE limit_key = 'user-a' AND id < $1",
    )
    .bind(later[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // One call ranks its own jobs of a key 1..n, whatever the cap.
    assert_eq!(max_first as usize, cap + 50);
    // Ids grow in enqueue order: user-a's two later jobs, then user-b's.
    let ranks: Vec<i32> =
        sqlx::query_scalar("SELECT fair_rank FROM fleet_jobs WHERE id = ANY($1) ORDER BY id")
            .bind([later[0], later[1], b])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // The next call counts user-a's 150 unfinished jobs as the cap.
    assert_eq!(ranks, [cap as i32 + 1, cap as i32 + 2, 1]);
}

#[test]
fn a_bad_rate_is_an_error_naming_the_key_and_value() {
    let e = Settings::from_sources(
        None,
        &env(&[("FLEET_BUDGETS__STRIPE__RATE", "10 per second")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("budgets.stripe.rate") && e.contains("10 per second") && e.contains("10/s"),
        "{e}"
    );
    let e = Settings::from_sources(None, &env(&[("FLEET_BUDGETS__STRIPE__RATE", "0/s")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("budgets.stripe.rate"), "{e}");
}

#[test]
fn a_kind_listing_an_unknown_budget_is_an_error_naming_both() {
    let settings = Settings::from_sources(
        None,
        &env(&[("FLEET_KINDS__BOOKING_ATTEMPT__BUDGETS", "stripe,strpie")]),
    )
    .unwrap();
    let e = fleet::fleet_registry(&settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("kinds.booking_attempt.budgets")
            && e.contains("\"strpie\"")
            && e.contains("stripe"),
        "{e}"
    );
    let settings =
        Settings::from_sources(None, &env(&[("FLEET_BUDGETS__PROBE__BURST", "3")])).unwrap();
    let e = fleet::fleet_registry(&settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("budgets.probe") && e.contains("rate"), "{e}");
}

#[test]
fn a_budget_spent_by_kinds_homed_in_two_databases_is_refused_naming_both() {
    let search = [
        (
            "FLEET_DATABASES__SEARCH__URL",
            "postgres://fleet@127.0.0.1:1/search",
        ),
        ("FLEET_DATABASES__SEARCH__KINDS", "campaign_search"),
    ];
    // The documented split: the searches (the only spender of duffel_search) on their own.
    let settings = Settings::from_sources(None, &env(&search)).unwrap();
    fleet::fleet_registry(&settings).expect("the documented split is accepted");
    // A main-database kind spending the search database's budget would get a second bucket.
    let mut vars = search.to_vec();
    vars.push((
        "FLEET_KINDS__BOOKING_ATTEMPT__BUDGETS",
        "stripe,duffel_order,duffel_search",
    ));
    let settings = Settings::from_sources(None, &env(&vars)).unwrap();
    let e = fleet::fleet_registry(&settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("\"duffel_search\"")
            && e.contains("booking_attempt in database main")
            && e.contains("campaign_search in database search"),
        "{e}"
    );
}

#[test]
fn the_domain_declares_its_limits_and_budgets_in_code() {
    let r = fleet_registry();
    let b = r.settings("booking_attempt").unwrap();
    assert_eq!(
        b.key_concurrency,
        Some(1),
        "one booking attempt per campaign at a time"
    );
    assert_eq!(b.limit_key.as_deref(), Some("campaign_id"));
    assert!(
        b.budgets.contains(&"stripe".to_owned()) && b.budgets.contains(&"duffel_order".to_owned())
    );
    let s = r.settings("campaign_search").unwrap();
    assert!(s.global_concurrency.is_some());
    assert_eq!(
        s.limit_key.as_deref(),
        Some("user_id"),
        "searches take turns by user"
    );
    assert_eq!(s.budgets, vec!["duffel_search".to_owned()]);
    for name in ["duffel_search", "duffel_order", "stripe", "resend"] {
        assert!(r.budget_spec(name).is_some(), "{name} is declared");
    }
    assert_eq!(
        r.settings("card_expiry_reminder").unwrap().budgets,
        vec!["resend".to_owned()]
    );
}

#[tokio::test]
async fn queue_stats_shows_jobs_held_by_a_limit_apart_from_jobs_waiting_for_a_worker() {
    let db = db().await;
    let cfg = [
        ("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "1"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__BUDGETS", "stripe"),
    ];
    let r = registry_with(&cfg);
    let q = Queue::new(db.pool.clone(), r.clone());
    enqueue_sleeps(&q, (0..3).map(|_| json!({"ms": 1}))).await;
    // One runs (a claim under the limit); the other two are held by the limit of 1.
    let mut conn = db.pool.acquire().await.unwrap();
    let budgets = r.budgets_of("fleet.sleep");
    let claimed = fleet::queue::job_fetch_limited(&mut conn, &sleep_claim(&budgets, Some(1), 3))
        .await
        .unwrap();
    assert_eq!(
        claimed.jobs.len(),
        1,
        "the limit of 1 holds in the claim itself"
    );
    fleet::queue::budget_block(
        &mut *conn,
        "stripe",
        Duration::from_secs(120),
        "stripe create_payment_intent rate_limited: HTTP 429",
        None,
    )
    .await
    .unwrap();
    let run = |json: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["queue", "stats"]).env("DATABASE_URL", &db.url);
        if json {
            c.arg("--json");
        }
        for (k, v) in cfg {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let stats: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let sleep = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "fleet.sleep")
        .unwrap();
    assert_eq!(sleep["states"]["available"], 2);
    assert_eq!(sleep["waiting_on_limit"], 2, "{sleep}");
    assert_eq!(sleep["limited_by"], "global_concurrency 1/1", "{sleep}");
    let text = run(false);
    assert!(text.contains("limited"), "{text}");
    let row = text
        .lines()
        .map(|l| {
            l.split(|c: char| c.is_whitespace() || "│|┃".contains(c))
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|t| t.first() == Some(&"stripe"))
        .unwrap_or_else(|| panic!("a row for the stripe budget: {text}"));
    assert_eq!(row[1], "0.0", "emptied by the 429: {row:?}");
    assert!(row.contains(&"(in"), "blocked until a time ahead: {row:?}");
}

#[tokio::test]
async fn a_claim_that_empties_a_budget_says_when_its_next_token_is_due() {
    let db = db().await;
    let cfg = [
        ("FLEET_BUDGETS__PROBE__RATE", "2/s"),
        ("FLEET_BUDGETS__PROBE__BURST", "3"),
        ("FLEET_KINDS__FLEET_DOT_SLEEP__BUDGETS", "probe"),
    ];
    let r = registry_with(&cfg);
    let q = Queue::new(db.pool.clone(), r.clone());
    enqueue_sleeps(&q, (0..10).map(|_| json!({"ms": 1}))).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let budgets = r.budgets_of("fleet.sleep");
    let fetch = |limit: i64| sleep_claim(&budgets, None, limit);
    let some_left = fleet::queue::job_fetch_limited(&mut conn, &fetch(1))
        .await
        .unwrap();
    assert_eq!(some_left.jobs.len(), 1);
    assert_eq!(
        some_left.budget_wait, None,
        "two tokens are left: nothing to wait for"
    );
    let emptied = fleet::queue::job_fetch_limited(&mut conn, &fetch(5))
        .await
        .unwrap();
    assert_eq!(emptied.jobs.len(), 2, "the burst's last two tokens");
    let wait = emptied.budget_wait.expect("the budget is empty");
    assert!(
        wait > Duration::from_millis(300) && wait <= Duration::from_millis(500),
        "a whole token at 2/s is at most 500 ms away: {wait:?}"
    );
    fleet::queue::budget_block(
        &mut *conn,
        "probe",
        Duration::from_secs(120),
        "test 429",
        None,
    )
    .await
    .unwrap();
    let blocked = fleet::queue::job_fetch_limited(&mut conn, &fetch(5))
        .await
        .unwrap();
    assert!(blocked.jobs.is_empty(), "a blocked budget claims nothing");
    let wait = blocked.budget_wait.expect("the budget is blocked");
    assert!(
        wait > Duration::from_secs(119) && wait <= Duration::from_millis(120_500),
        "the block's end plus one token's refill: {wait:?}"
    );
}
