//! The fleet behind PgBouncer (Debian's package), as managed Postgres puts it behind
//! Supavisor: in transaction mode the worker, `serve` (webhooks and the console) and the
//! scheduler run through it, jobs complete exactly once, and nothing a fleet client did is left
//! on the server connections the next client gets; in session mode everything just works, and
//! so does a direct IPv6 address. Each test starts its own server and pooler on loopback.

mod common;

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use fleet::{
    config::TlsSettings,
    database::{self, Endpoint, Reach},
    testkit::{ClusterConfig, LocalCluster, PgBouncer, PoolMode},
};
use jobs::{Db, Pooler};
use serde_json::json;

/// A server of the test's own with a migrated `fleet` database, and a PgBouncer in front of
/// it; `None` (the test skips) when pgbouncer is not installed.
struct Setup {
    _cluster: LocalCluster,
    bouncer: PgBouncer,
    /// The fleet database, directly.
    direct: String,
    /// The fleet database through the pooler.
    pooled: String,
    /// A pool on it, directly, for the test's own checks.
    check: sqlx::PgPool,
}

/// Server connections the pooler keeps per database and user.
const POOL_SIZE: u32 = 8;

async fn setup(mode: PoolMode, ipv6: bool) -> Option<Setup> {
    if !tool_available(
        "pgbouncer",
        PgBouncer::executable().is_some(),
        "apt-get install -y pgbouncer",
    ) {
        return None;
    }
    let cluster = LocalCluster::start_configured(
        "pooler",
        ClusterConfig {
            ipv6,
            ..ClusterConfig::default()
        },
    )
    .expect("a server");
    let direct = fleet::testkit::create_database(&cluster.url("postgres"), "fleet")
        .await
        .expect("a migrated database");
    let bouncer =
        PgBouncer::start(cluster.port, mode, &["postgres"], POOL_SIZE, &[]).expect("pgbouncer");
    let pooled = bouncer.url("postgres", "fleet");
    let check = database::connect(&direct, 4).await.unwrap();
    Some(Setup {
        _cluster: cluster,
        bouncer,
        direct,
        pooled,
        check,
    })
}

/// The fleet database through the pooler as the engine opens it behind a transaction pooler
/// (statement cache off, every statement in a transaction), without a direct connection.
async fn pooled_db(s: &Setup) -> Db {
    Reach {
        primary: Endpoint::parse(
            "database.url",
            "database",
            &s.pooled,
            &TlsSettings::default(),
        )
        .unwrap(),
        pooler: Pooler::Transaction,
        direct: None,
        max_connections: 8,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(30),
        schema: "public".to_owned(),
    }
    .open()
    .await
    .unwrap()
}

/// A `fleet` role as a process, its stderr in a file; killed on drop.
struct Role {
    child: Child,
    log: std::path::PathBuf,
}

impl Role {
    fn spawn(args: &[&str], env: &[(String, String)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "fleet-pooler-{}-{}-{}.log",
            args[0],
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn fleet");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit status within 30 s.
    fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The environment of every role: the pooled URL, the direct one if given, short cadences.
fn role_env(s: &Setup, direct: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL", s.pooled.clone()),
        ("FLEET_DATABASE__POOLER", "transaction".into()),
        ("FLEET_PII_KEYS", TEST_PII_KEYS.into()),
        ("FLEET_STRIPE_WEBHOOK_SECRET", "whsec_pooler".into()),
        ("FLEET_DUFFEL_WEBHOOK_SECRET", "whsec_pooler".into()),
        ("FLEET_WORKER__CONCURRENCY", "16".into()),
        ("FLEET_WORKER__POLL_INTERVAL", "1s".into()),
        ("FLEET_WORKER__LEASE", "10s".into()),
        ("FLEET_WORKER__HEARTBEAT_INTERVAL", "2s".into()),
        ("FLEET_WORKER__RESCUE_INTERVAL", "2s".into()),
    ];
    if direct {
        env.push(("DATABASE_DIRECT_URL", s.direct.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn wait_until_count(pool: &sqlx::PgPool, sql: &'static str, at_least: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let n = count(pool, sql).await;
        if n >= at_least {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{sql}: {n} after {within:?}, expected {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One job enqueued through `db` while the worker is idle: how long until a worker claimed it
/// (the database's own clock, `attempted_at - created_at`).
async fn pickup(db: &Db, check: &sqlx::PgPool) -> Duration {
    let registry = std::sync::Arc::new(fleet_registry());
    let id = fleet::Queue::new(db.clone(), registry)
        .enqueue(&fleet::builtin::Sleep { ms: 0, key: None }, None)
        .await
        .unwrap()
        .id;
    let started = Instant::now();
    loop {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM attempted_at - created_at)::float8 * 1000
             FROM fleet_jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(check)
        .await
        .unwrap();
        if let Some(ms) = ms {
            return Duration::from_micros((ms * 1000.0) as u64);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "job {id} was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every server connection the pooler holds, each seen by a fresh client inside a
/// transaction (held open together, so each gets a different one): the settings a client
/// gets, and what is left on the connection.
async fn what_fresh_clients_see(s: &Setup) -> Vec<serde_json::Value> {
    let mut conns = Vec::new();
    let mut txs = Vec::new();
    for _ in 0..POOL_SIZE {
        conns.push(
            <sqlx::PgConnection as sqlx::Connection>::connect(
                format!("{}?statement-cache-capacity=0", s.pooled).as_str(),
            )
            .await
            .unwrap(),
        );
    }
    let mut seen = Vec::new();
    for c in conns.iter_mut() {
        txs.push(sqlx::Connection::begin(c).await.unwrap());
    }
    for tx in txs.iter_mut() {
        // One simple-protocol statement: nothing of this client's own is prepared.
        let row: (i32, String, String, String, String, String, i64, i64) = sqlx::query_as(
            "SELECT pg_backend_pid(), current_setting('enable_seqscan'),
                    current_setting('enable_bitmapscan'), current_setting('synchronous_commit'),
                    current_setting('search_path'), current_setting('statement_timeout'),
                    (SELECT count(*) FROM pg_prepared_statements),
                    (SELECT count(*) FROM pg_listening_channels())",
        )
        .fetch_one(&mut **tx)
        .await
        .unwrap();
        seen.push(json!({
            "backend": row.0, "enable_seqscan": row.1, "enable_bitmapscan": row.2,
            "synchronous_commit": row.3, "search_path": row.4, "statement_timeout": row.5,
            "prepared_statements": row.6, "listening": row.7,
        }));
    }
    for tx in txs {
        tx.commit().await.unwrap();
    }
    seen
}

fn assert_server_defaults(seen: &[serde_json::Value]) {
    let backends: std::collections::BTreeSet<i64> = seen
        .iter()
        .map(|s| s["backend"].as_i64().unwrap())
        .collect();
    assert_eq!(
        backends.len(),
        POOL_SIZE as usize,
        "every server connection of the pool was looked at: {seen:?}"
    );
    for s in seen {
        assert_eq!(s["enable_seqscan"], "on", "{s}");
        assert_eq!(s["enable_bitmapscan"], "on", "{s}");
        assert_eq!(s["synchronous_commit"], "on", "{s}");
        assert_eq!(s["search_path"], "\"$user\", public", "{s}");
        assert_eq!(s["statement_timeout"], "0", "{s}");
        assert_eq!(
            s["prepared_statements"], 0,
            "no named statement left behind: {s}"
        );
        assert_eq!(s["listening"], 0, "no LISTEN left behind: {s}");
    }
}

/// Sleeps not completed (yet), the scheduler's ticks included.
const UNDONE_SLEEPS: &str =
    "SELECT count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' AND state <> 'completed'";

const COMPLETED_ONCE: &str = "SELECT count(*) FROM fleet_jobs
     WHERE kind = 'fleet.sleep' AND state = 'completed' AND attempt = 1 AND claim_seq = 1
       AND idempotency_key IS NULL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_in_transaction_mode_every_role_works_and_20000_jobs_complete_once() {
    let Some(s) = setup(PoolMode::Transaction, false).await else {
        return;
    };
    let db = pooled_db(&s).await;
    let registry = std::sync::Arc::new(fleet_registry());
    let queue = fleet::Queue::new(db.clone(), registry.clone());
    // 20,000 jobs enqueued through the pooler (one transaction: its statements must share a
    // server connection).
    let jobs: Vec<jobs::NewJob> = (0..20_000)
        .map(|_| jobs::NewJob::of(&fleet::builtin::Sleep { ms: 0, key: None }).unwrap())
        .collect();
    let out = queue.enqueue_many(jobs).await.unwrap();
    assert_eq!(out.iter().filter(|e| !e.duplicate).count(), 20_000);

    let mut env = role_env(&s, true);
    let (bind, admin) = (free_addr(), free_addr());
    let alice_hash = fleet::console::hash_password("pooler-pw").unwrap();
    env.extend(
        [
            ("FLEET_SERVE__BIND", bind.clone()),
            ("FLEET_SERVE__ADMIN_BIND", admin.clone()),
            ("FLEET_CONSOLE__USERS__ALICE__ROLE", "operator".into()),
            ("FLEET_CONSOLE__USERS__ALICE__PASSWORD_HASH", alice_hash),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let schedules = std::env::temp_dir().join(format!("fleet-pooler-{}.toml", std::process::id()));
    std::fs::File::create(&schedules)
        .unwrap()
        .write_all(b"[schedules.canary]\ncron = \"* * * * * *\"\nkind = \"fleet.sleep\"\nargs = { ms = 0 }\n")
        .unwrap();
    let schedules_arg = schedules.display().to_string();
    let worker = Role::spawn(&["worker"], &env);
    let serve = Role::spawn(&["serve"], &env);
    let scheduler = Role::spawn(&["--config", &schedules_arg, "scheduler"], &env);

    wait_until_count(&s.check, COMPLETED_ONCE, 20_000, Duration::from_secs(120)).await;

    // The webhook ingress through the pooler: recorded once, its follow-up enqueued.
    let body = serde_json::to_vec(&json!({
        "id": "evt_pooler_1", "object": "event", "api_version": "2026-09-30.endive",
        "created": chrono::Utc::now().timestamp(), "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": "payment_intent.canceled",
        "data": {"object": {"id": "pi_pooler_1", "object": "payment_intent"}},
    }))
    .unwrap();
    let wait_for_port = |addr: &str| {
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve on {addr}: {}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_port(&bind);
    wait_for_port(&admin);
    let sig = sandbox::webhooks::stripe_signature_header(
        "whsec_pooler",
        chrono::Utc::now().timestamp(),
        &body,
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = http
            .post(format!("http://{bind}/webhooks/stripe"))
            .header("stripe-signature", &sig)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", serve.log());
    }
    assert_eq!(
        count(
            &s.check,
            "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_pooler_1'"
        )
        .await,
        1
    );

    // The console through the pooler: sign in, read the overview, pause and resume a kind.
    let base = format!("http://{admin}");
    let page = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let login_cookie = cookie_of(&page, fleet::console::auth::LOGIN_COOKIE);
    let csrf = csrf_of(&page.text().await.unwrap());
    let r = http
        .post(format!("{base}/ui/login"))
        .header(
            "cookie",
            format!("{}={login_cookie}", fleet::console::auth::LOGIN_COOKIE),
        )
        .form(&[
            ("username", "alice"),
            ("password", "pooler-pw"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed in");
    let session = format!(
        "{}={}",
        fleet::console::auth::SESSION_COOKIE,
        cookie_of(&r, fleet::console::auth::SESSION_COOKIE)
    );
    let overview = http
        .get(format!("{base}/ui/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    let overview = overview.text().await.unwrap();
    assert!(
        overview.contains("fleet.sleep"),
        "the overview lists the kind"
    );
    let csrf = csrf_of(&overview);
    for action in ["pause", "resume"] {
        let r = http
            .post(format!("{base}/ui/actions/{action}"))
            .header("cookie", &session)
            .form(&[
                ("kind", "card_update"),
                ("confirm", "yes"),
                ("csrf", &csrf),
                ("reason", "pooler test"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{action}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    assert_eq!(
        count(
            &s.check,
            "SELECT count(*) FROM fleet_audit WHERE action IN ('kind.pause', 'kind.resume')"
        )
        .await,
        2,
        "both actions audited"
    );

    // The scheduler through the pooler: its ticks are enqueued (and worked).
    wait_until_count(
        &s.check,
        "SELECT count(*) FROM fleet_cron_ticks WHERE schedule = 'canary'",
        2,
        Duration::from_secs(20),
    )
    .await;

    // LISTEN on the direct connection: an idle worker picks a job up long before its 1 s poll.
    let mut pickups = Vec::new();
    for _ in 0..5 {
        pickups.push(pickup(&db, &s.check).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pickups.sort();
    eprintln!("pickup through the pooler, LISTEN direct: {pickups:?}");
    assert!(
        pickups[2] < Duration::from_millis(500),
        "LISTEN wakes the worker: median pickup {:?} (poll 1 s)",
        pickups[2]
    );

    // The scheduler stops first and the worker last, once it has worked the scheduler's last
    // tick: stopped the other way round, a tick enqueued after the worker stopped (one a
    // second) would be left undone.
    let stopped = |name: &str, role: Role| {
        let log = role.log();
        let status = role.stop();
        assert!(status.success(), "{name} stops cleanly: {status:?}\n{log}");
        assert!(
            !log.contains("prepared statement") && !log.contains("ERROR"),
            "{name}'s log has no statement errors:\n{log}"
        );
    };
    stopped("scheduler", scheduler);
    let _ = std::fs::remove_file(&schedules);
    let started = Instant::now();
    while count(&s.check, UNDONE_SLEEPS).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "every job done, the scheduler's included"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stopped("serve", serve);
    stopped("worker", worker);
    assert_eq!(count(&s.check, COMPLETED_ONCE).await, 20_005);
    assert_eq!(count(&s.check, UNDONE_SLEEPS).await, 0);
    assert_eq!(
        count(
            &s.check,
            "SELECT count(*) FROM fleet_jobs WHERE kind = 'payment_reconcile'"
        )
        .await,
        1,
        "the webhook's follow-up was enqueued once"
    );
    assert_server_defaults(&what_fresh_clients_see(&s).await);
    assert!(!s.bouncer.log().contains("ERROR"), "{}", s.bouncer.log());
}

fn cookie_of(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_direct_connection_the_worker_polls_through_the_pooler_and_loses_nothing() {
    let Some(s) = setup(PoolMode::Transaction, false).await else {
        return;
    };
    let db = pooled_db(&s).await;
    let queue = fleet::Queue::new(db.clone(), std::sync::Arc::new(fleet_registry()));
    let jobs: Vec<jobs::NewJob> = (0..2_000)
        .map(|_| jobs::NewJob::of(&fleet::builtin::Sleep { ms: 0, key: None }).unwrap())
        .collect();
    queue.enqueue_many(jobs).await.unwrap();
    let mut env = role_env(&s, false);
    env.push(("FLEET_WORKER__POLL_INTERVAL".into(), "200ms".into()));
    // A fleet-wide limit: the worker re-files the jobs as limited and claims them with the
    // limited claim, whose lock then lives in each round's transaction (no session here).
    env.push((
        "FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY".into(),
        "4".into(),
    ));
    let worker = Role::spawn(&["worker"], &env);
    wait_until_count(&s.check, COMPLETED_ONCE, 2_000, Duration::from_secs(60)).await;
    let limited: i64 = count(
        &s.check,
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' AND limited",
    )
    .await;
    assert_eq!(limited, 2_000, "every job went through the limited claim");
    let pickup = pickup(&db, &s.check).await;
    eprintln!("pickup through the pooler by polling every 200 ms: {pickup:?}");
    assert!(pickup < Duration::from_secs(2), "{pickup:?}");
    let log = worker.log();
    assert!(worker.stop().success());
    assert!(
        log.contains("no direct connection") && log.contains("polling instead"),
        "the worker says it polls: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(count(&s.check, COMPLETED_ONCE).await, 2_001);
    assert_server_defaults(&what_fresh_clients_see(&s).await);
}

#[tokio::test]
async fn enqueue_in_the_callers_transaction_through_the_pooler_commits_or_rolls_back_with_it() {
    let Some(s) = setup(PoolMode::Transaction, false).await else {
        return;
    };
    let db = pooled_db(&s).await;
    let queue = fleet::Queue::new(db.clone(), std::sync::Arc::new(fleet_registry()));
    let job = |key: &str| {
        jobs::NewJob::of(&fleet::builtin::Sleep { ms: 0, key: None })
            .unwrap()
            .key(key.to_owned())
    };
    // The caller's own statements and the enqueue share its transaction.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO audit_log (actor, action, resource_type) VALUES ('app', 'app.write', 'x')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let rolled_back = queue
        .enqueue_many_in(&mut tx, vec![job("rolled-back")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let kept = queue
        .enqueue_many_in(&mut tx, vec![job("kept")])
        .await
        .unwrap();
    let again = queue
        .enqueue_many_in(&mut tx, vec![job("kept")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        again[0].duplicate && again[0].id == kept[0].id,
        "the key holds inside the transaction"
    );
    let ids: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, idempotency_key FROM fleet_jobs ORDER BY id")
            .fetch_all(&s.check)
            .await
            .unwrap();
    assert_eq!(
        ids,
        vec![(kept[0].id, "kept".to_owned())],
        "rolled back: {:?}",
        rolled_back
    );
    assert_eq!(
        count(
            &s.check,
            "SELECT count(*) FROM audit_log WHERE action = 'app.write'"
        )
        .await,
        0,
        "the caller's write rolled back with its job"
    );
    // And on the handle, outside any transaction of the caller's: one job, many, a duplicate.
    let one = queue
        .enqueue(&fleet::builtin::Sleep { ms: 0, key: None }, Some("alone"))
        .await
        .unwrap();
    let dup = queue
        .enqueue(&fleet::builtin::Sleep { ms: 0, key: None }, Some("alone"))
        .await
        .unwrap();
    assert!(!one.duplicate && dup.duplicate && dup.id == one.id);
    let many: Vec<jobs::NewJob> = (0..3_000)
        .map(|_| jobs::NewJob::of(&fleet::builtin::Sleep { ms: 0, key: None }).unwrap())
        .collect();
    assert_eq!(queue.enqueue_many(many).await.unwrap().len(), 3_000);
    assert_eq!(
        count(&s.check, "SELECT count(*) FROM fleet_jobs").await,
        3_002
    );
    // Reads and operator commands through the pooler too.
    let ops = fleet::ops::Ops::new(db.clone(), fleet_registry().kind_names(), "test");
    let stats = ops.stats().await.unwrap();
    assert!(stats.iter().any(|k| k.kind == "fleet.sleep"), "{stats:?}");
    assert!(ops.pause("fleet.sleep", "t", false).await.unwrap().result);
    assert_server_defaults(&what_fresh_clients_see(&s).await);
}

#[tokio::test]
async fn migrate_needs_the_direct_connection_behind_a_transaction_pooler_and_says_so() {
    let Some(s) = setup(PoolMode::Transaction, false).await else {
        return;
    };
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(["migrate", "--status"])
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        ("DATABASE_URL", &s.pooled),
        ("FLEET_DATABASE__POOLER", "transaction"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("direct_url") && err.contains("DATABASE_URL"),
        "{err}"
    );
    let (code, err) = run(&[
        ("DATABASE_URL", &s.pooled),
        ("FLEET_DATABASE__POOLER", "transaction"),
        ("DATABASE_DIRECT_URL", &s.direct),
    ]);
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_pooler_and_a_direct_ipv6_address_just_work() {
    let Some(s) = setup(PoolMode::Session, true).await else {
        return;
    };
    // Direct over IPv6: the URL brackets the address.
    let v6 = s.direct.replace("127.0.0.1", "[::1]");
    let out = Command::new(BIN)
        .args(["queue", "stats"])
        .env("DATABASE_URL", &v6)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v6_pool = database::connect(&v6, 2).await.unwrap();
    let addr: String = sqlx::query_scalar("SELECT host(inet_client_addr())")
        .fetch_one(&v6_pool)
        .await
        .unwrap();
    assert_eq!(addr, "::1", "connected over IPv6");
    // A session-mode pooler: sessions are real, so the worker listens and pins its claim
    // session as it does directly.
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), s.pooled.clone()),
        ("FLEET_DATABASE__POOLER".into(), "session".into()),
        ("FLEET_PII_KEYS".into(), TEST_PII_KEYS.into()),
        ("FLEET_WORKER__POLL_INTERVAL".into(), "1s".into()),
    ];
    let worker = Role::spawn(&["worker"], &env);
    let db: Db = database::connect(&s.pooled, 4).await.unwrap().into();
    let queue = fleet::Queue::new(db.clone(), std::sync::Arc::new(fleet_registry()));
    let jobs: Vec<jobs::NewJob> = (0..1_000)
        .map(|_| jobs::NewJob::of(&fleet::builtin::Sleep { ms: 0, key: None }).unwrap())
        .collect();
    queue.enqueue_many(jobs).await.unwrap();
    wait_until_count(&s.check, COMPLETED_ONCE, 1_000, Duration::from_secs(60)).await;
    // Let the worker go idle, so the pickup measured is a NOTIFY's wake-up, not the tail of
    // the busy loop: an idle spell in real time is the condition of the claim.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pickup(&db, &s.check).await;
    assert!(
        p < Duration::from_millis(500),
        "LISTEN through a session pooler: {p:?}"
    );
    let log = worker.log();
    assert!(worker.stop().success(), "{log}");
    assert!(!log.contains("polling instead"), "{log}");
}
