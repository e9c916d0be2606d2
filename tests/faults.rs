//! The network to the database fails silently, and the database runs out of connections:
//! workers say so once, within seconds, stop claiming, come back by themselves, and run no job
//! twice. The network faults come from a TCP proxy of the test's own ([`FaultyProxy`]) between
//! two in-process workers and Postgres; every check of the test's own goes straight to the
//! server.
//!
//! And a pooled connection whose server session ended: checked before it is lent once it sat
//! idle past `database::RECENTLY_CHECKED`, not before (decision 61).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use common::*;
use fleet::{
    database::health::NOTICE_WITHIN,
    testkit::{ClusterConfig, LocalCluster},
    Registry, Worker,
};
use jobs::{Db, Job, JobContext, JobError};
use serde::{Deserialize, Serialize};
use sqlx::Executor;
use tokio_util::sync::CancellationToken;

/// Each run of every [`Counted`] job: how many times its handler ran.
fn runs() -> &'static Mutex<HashMap<i64, u32>> {
    static RUNS: OnceLock<Mutex<HashMap<i64, u32>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

/// Counts its runs (in this process), then sleeps `ms`.
#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    ms: u64,
}
impl Job for Counted {
    const KIND: &'static str = "test.counted";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        *runs().lock().unwrap().entry(ctx.job_id).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

/// Log events at info and above, as `LEVEL message fields`, captured for the whole binary.
fn logs() -> &'static Mutex<Vec<String>> {
    static LOGS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        struct Capture;
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *e.metadata().level() > tracing::Level::INFO {
                    return;
                }
                struct Fields(String);
                impl tracing::field::Visit for Fields {
                    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                        self.0.push_str(&format!(" {}={v:?}", f.name()));
                    }
                }
                let mut fields = Fields(String::new());
                e.record(&mut fields);
                if let Some(l) = LOGS.get() {
                    l.lock().unwrap().push(format!(
                        "{} {}{}",
                        e.metadata().level(),
                        e.metadata().target(),
                        fields.0
                    ));
                }
            }
        }
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
        Mutex::new(Vec::new())
    })
}

fn log_count(needle: &str) -> usize {
    logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// The fleet's own warnings (not the driver's slow-statement notes, which a held statement
/// adds once each when the path heals).
fn warnings() -> Vec<String> {
    logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("WARN fleet") || l.starts_with("WARN jobs"))
        .cloned()
        .collect()
}

/// One test at a time: they share the log capture and the run counts (job ids start at 1 in
/// each test's database, so under `cargo test`, where both run in one process, the second
/// test would count the first one's runs as its own). Holds the lock and clears both.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    let guard = SERIAL.get_or_init(Default::default).lock().await;
    logs().lock().unwrap().clear();
    runs().lock().unwrap().clear();
    guard
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

const DONE: &str =
    "SELECT count(*) FROM fleet_jobs WHERE kind = 'test.counted' AND state = 'completed'";

/// Waits for `cond` (checked every 50 ms) up to `within`; how long it took.
async fn within<F: FnMut() -> bool>(within: Duration, what: &str, mut cond: F) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn readyz(addr: &str) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_black_hole_a_reset_and_a_slow_path_workers_say_so_once_and_run_no_job_twice() {
    let _serial = one_at_a_time().await;
    let db = db().await;
    let opts: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", opts.get_port()).parse().unwrap();
    let proxy = FaultyProxy::start(server).await;
    let via_proxy = opts
        .clone()
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let mut registry = Registry::default();
    registry.register::<Counted>();
    let registry = Arc::new(registry);
    let n = 2_000;
    let queue = fleet::Queue::new(db.pool.clone(), registry.clone());
    let jobs: Vec<jobs::NewJob> = (0..n)
        .map(|_| jobs::NewJob::of(&Counted { ms: 40 }).unwrap())
        .collect();
    queue.enqueue_many(jobs).await.unwrap();

    // Two workers, each with its own pool through the proxy, bounded as the fleet's are.
    let cfg = fleet::config::WorkerSettings {
        concurrency: 8,
        lease: Duration::from_secs(4),
        heartbeat_interval: Duration::from_secs(1),
        rescue_interval: Duration::from_secs(1),
        poll_interval: Duration::from_millis(200),
        ..fleet::config::WorkerSettings::default()
    };
    let stop = CancellationToken::new();
    let mut dbs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        // Pools as the fleet builds them: a connection is pinged before lending only after
        // RECENTLY_CHECKED idle (decision 61).
        let pool = fleet::database::pool_options()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(via_proxy.clone())
            .await
            .unwrap();
        let wdb = Db::direct(pool).with_statement_timeout(Some(Duration::from_secs(10)));
        dbs.push(wdb.clone());
        let w = Worker::new(wdb, registry.clone(), cfg.clone());
        handles.push(tokio::spawn(w.run(stop.clone())));
    }
    // The first worker's admin endpoints, as `fleet worker --metrics-bind` serves them.
    let (admin, admin_stop) = serve(fleet::serve::admin_router(dbs[0].clone())).await;
    let admin = admin.trim_start_matches("http://").to_owned();
    assert_eq!(readyz(&admin).await, 200);
    let started = Instant::now();
    while count(&db.pool, DONE).await < 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "work starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A black hole, longer than two leases.
    proxy.set(Fault::BlackHole);
    let noticed = within(
        NOTICE_WITHIN + Duration::from_secs(2),
        "both workers notice",
        || log_count("the database does not answer") >= 2,
    )
    .await;
    eprintln!("black hole noticed after {noticed:?}");
    assert!(dbs.iter().all(|d| !d.health().is_up()));
    assert_eq!(readyz(&admin).await, 503, "/readyz says so");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fleet_database_reachable{database=\"main\"} 0"),
        "{metrics}"
    );
    let claimed_before: i64 = count(
        &db.pool,
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'test.counted' AND attempted_at IS NOT NULL",
    )
    .await;
    // Real time is the claim (here and in the faults below): a network outage lasts wall-clock
    // seconds, through the monitors', pools' and leases' own timers, none of which a test
    // clock can stand in for.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let claimed_during: i64 = count(
        &db.pool,
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'test.counted' AND attempted_at IS NOT NULL",
    )
    .await;
    assert_eq!(
        claimed_before, claimed_during,
        "nothing claimed while cut off"
    );
    proxy.set(Fault::None);
    let back = within(Duration::from_secs(10), "both workers see it back", || {
        log_count("the database answers again") >= 2
    })
    .await;
    eprintln!("heal seen after {back:?}");
    within(Duration::from_secs(5), "/readyz recovers", || true).await;
    assert_eq!(readyz(&admin).await, 200);

    // Resets, then a slow path, while the work goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Fault::None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Fault::Slow(Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Fault::None);

    let started = Instant::now();
    while count(&db.pool, DONE).await < n as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "every job completes; warnings: {:#?}",
            warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    admin_stop.cancel();

    // No job lost, none run twice (a claim whose acknowledgement a reset lost may be rescued
    // and claimed again, but it never ran: the runs say so).
    let runs = runs().lock().unwrap().clone();
    assert_eq!(runs.len(), n, "every job ran");
    let twice: Vec<(&i64, &u32)> = runs.iter().filter(|(_, r)| **r > 1).collect();
    assert!(twice.is_empty(), "jobs that ran twice: {twice:?}");
    // The outages were said once each (per worker), not once per failed statement.
    let w = warnings();
    eprintln!("{} warnings:\n{}", w.len(), w.join("\n"));
    assert_eq!(log_count("the database does not answer"), 4, "{w:#?}");
    assert!(w.len() < 40, "a handful of warnings, not thousands: {w:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_connections_is_said_once_and_the_fleet_recovers_losing_no_job() {
    let _serial = one_at_a_time().await;
    // A server of the test's own with few connections; the fleet runs as a non-superuser
    // (superusers get the reserved slots).
    let cluster = LocalCluster::start_configured(
        "full",
        ClusterConfig {
            settings: vec![("max_connections".into(), "24".into())],
            ..ClusterConfig::default()
        },
    )
    .expect("a server");
    let admin = fleet::database::connect(&cluster.url("postgres"), 2)
        .await
        .unwrap();
    admin
        .execute("CREATE ROLE app LOGIN; CREATE ROLE hog LOGIN")
        .await
        .unwrap();
    admin
        .execute("CREATE DATABASE fleet OWNER app")
        .await
        .unwrap();
    let url = format!("postgres://app@127.0.0.1:{}/fleet", cluster.port);
    let app_pool = fleet::database::connect(&url, 2).await.unwrap();
    fleet::database::migrate(&app_pool).await.unwrap();
    let check = fleet::database::connect(&cluster.url("fleet"), 2)
        .await
        .unwrap();
    let mut registry = Registry::default();
    registry.register::<Counted>();
    let registry = Arc::new(registry);
    let queue = fleet::Queue::new(app_pool.clone(), registry.clone());
    let enqueue = |n: usize| {
        let queue = queue.clone();
        async move {
            let jobs: Vec<jobs::NewJob> = (0..n)
                .map(|_| jobs::NewJob::of(&Counted { ms: 5 }).unwrap())
                .collect();
            queue.enqueue_many(jobs).await.unwrap();
        }
    };
    enqueue(300).await;
    app_pool.close().await;
    let pool = fleet::database::pool_options()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap();
    let wdb = Db::direct(pool).with_statement_timeout(Some(Duration::from_secs(10)));
    let stop = CancellationToken::new();
    let cfg = fleet::config::WorkerSettings {
        concurrency: 4,
        lease: Duration::from_secs(4),
        heartbeat_interval: Duration::from_secs(1),
        rescue_interval: Duration::from_secs(1),
        poll_interval: Duration::from_millis(200),
        ..fleet::config::WorkerSettings::default()
    };
    let worker = tokio::spawn(Worker::new(wdb.clone(), registry.clone(), cfg).run(stop.clone()));
    let started = Instant::now();
    while count(&check, DONE).await < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first jobs run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another client takes every connection the server gives non-superusers, after cutting
    // the fleet's: the fleet must reconnect, and cannot.
    let hog_url = format!("postgres://hog@127.0.0.1:{}/postgres", cluster.port);
    let mut hogs = Vec::new();
    let hog_started = Instant::now();
    loop {
        admin
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
            .await
            .unwrap();
        match <sqlx::PgConnection as sqlx::Connection>::connect(&hog_url).await {
            Ok(c) => hogs.push(c),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("too many clients") || text.contains("reserved"),
                    "{text}"
                );
                let app_left = count(
                    &admin,
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                )
                .await;
                if app_left == 0 {
                    break;
                }
            }
        }
        assert!(
            hog_started.elapsed() < Duration::from_secs(20),
            "the hog fills the server"
        );
    }
    // Jobs keep coming (enqueued by a superuser's connection, as another service would).
    let more_queue = fleet::Queue::new(check.clone(), registry.clone());
    let more: Vec<jobs::NewJob> = (0..200)
        .map(|_| jobs::NewJob::of(&Counted { ms: 5 }).unwrap())
        .collect();
    more_queue.enqueue_many(more).await.unwrap();
    within(
        NOTICE_WITHIN + Duration::from_secs(2),
        "the worker notices",
        || !wdb.health().is_up(),
    )
    .await;
    let said = logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("the database does not answer"))
        .cloned()
        .collect::<Vec<_>>();
    eprintln!("{said:#?}");
    // Real time is the claim: an outage of five leases, through the pools' and the monitor's
    // own timers, named once and survived.
    tokio::time::sleep(Duration::from_secs(20) - hog_started.elapsed().min(Duration::from_secs(5)))
        .await;
    drop(hogs);
    let started = Instant::now();
    while count(&check, DONE).await < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the fleet recovers by itself; warnings: {:#?}",
            warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(count(&check, DONE).await, 500, "no job lost");
    let w = warnings();
    eprintln!("{} warnings:\n{}", w.len(), w.join("\n"));
    assert!(
        w.iter().any(|l| l.contains("does not answer")
            && (l.contains("too many clients") || l.contains("reserved"))),
        "the reason is named: {w:#?}"
    );
    assert!(w.len() < 20, "said once, not thousands of times: {w:#?}");
}

/// A pool of one connection to `url` whose connection is pinged before it is lent only after
/// `window` idle; and that connection's server process.
async fn one_connection_checking_after(url: &str, window: Duration) -> (sqlx::PgPool, i32) {
    let pool = fleet::database::pool_options_checking_idle_over(window)
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Back in the pool (sqlx returns it, ping and all, on a task of its own) before the test
    // ends its server process: ended first, that ping would close it.
    wait_until(
        Duration::from_secs(10),
        "the connection idle in its pool",
        || async { pool.num_idle() == 1 },
    )
    .await;
    (pool, pid)
}

#[tokio::test]
async fn a_pooled_connection_idle_past_the_window_is_checked_and_replaced_before_it_is_lent() {
    let _serial = one_at_a_time().await;
    let db = db().await;
    let (pool, pid) = one_connection_checking_after(&db.url, Duration::from_millis(50)).await;
    end_backend(&db.pool, pid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    logs().lock().unwrap().clear();
    // Its ping fails, so the pool closes it and lends a new connection: the caller never
    // sees the dead one.
    let now: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a live connection");
    assert_ne!(now, pid, "a new server process");
    // Quietly: after an outage every idle connection of every pool fails its ping, and the
    // health monitor alone says the database went.
    let warned: Vec<String> = logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("WARN"))
        .cloned()
        .collect();
    assert!(
        warned.is_empty(),
        "no warning per closed connection: {warned:#?}"
    );
}

#[tokio::test]
async fn a_connection_lent_again_within_the_window_is_not_pinged_first_and_is_closed_after_failing()
{
    let db = db().await;
    let (pool, pid) = one_connection_checking_after(&db.url, Duration::from_secs(3600)).await;
    end_backend(&db.pool, pid).await;
    // No ping before lending (a ping would have found it dead and opened another): the first
    // statement meets the ended session, as a statement in flight when a server dies does.
    let first = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await;
    assert!(
        first.is_err(),
        "the ended session was lent without a ping: {first:?}"
    );
    // Its ping on the way back fails, so it is closed: the next caller gets a new one.
    let next: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a new connection");
    assert_ne!(next, pid);
}
