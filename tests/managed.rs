//! The fleet as a managed Postgres runs it: an owner role that migrates and a runtime role that
//! can alter nothing (neither a superuser), the fleet's tables in a schema of their own, the
//! domain tables under row-level security, and limits set on the role. The SQL the tests run
//! is docs/operations.md's own ("Managed Postgres"), read from the file. Each test starts its
//! own server on loopback.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use fleet::testkit::{LocalCluster, PgBouncer, PoolMode};
use sqlx::{AssertSqlSafe, Executor};

/// The SQL block of docs/operations.md headed `-- fleet: {name}`.
fn docs_sql(name: &str) -> String {
    let docs = include_str!("../docs/operations.md");
    let marker = format!("-- fleet: {name}");
    let start = docs
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/operations.md has no block {marker:?}"));
    let block = &docs[start..];
    block[..block.find("```").expect("the block ends")].to_owned()
}

/// A server with a database `fleet` set up as the docs say: the two roles, the schema `fleet`
/// owned by `fleet_owner`, migrated by `fleet_owner`, the grants given.
struct Managed {
    cluster: LocalCluster,
    /// As the administrator (`postgres`, a superuser here: what a managed service keeps).
    admin: sqlx::PgPool,
}

impl Managed {
    async fn start() -> Self {
        let cluster = LocalCluster::start_primary("managed").expect("a server");
        let server = fleet::database::connect(&cluster.url("postgres"), 2)
            .await
            .unwrap();
        server.execute("CREATE DATABASE fleet").await.unwrap();
        let admin = fleet::database::connect(&cluster.url("fleet"), 2)
            .await
            .unwrap();
        admin
            .execute(sqlx::raw_sql(AssertSqlSafe(docs_sql(
                "roles (administrator)",
            ))))
            .await
            .expect("the docs' roles block runs");
        let m = Self { cluster, admin };
        let (code, out, err) = m.fleet("fleet_owner", &[], &["migrate"]);
        assert_eq!(code, 0, "fleet migrate as the owner: {out}{err}");
        m.as_role(
            "fleet_owner",
            &docs_sql("grants (fleet_owner, after fleet migrate)"),
        )
        .await
        .expect("the docs' grants block runs as the owner");
        m
    }

    fn url(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/fleet", self.cluster.port)
    }

    /// Runs `sql` (several statements) as `role`.
    async fn as_role(&self, role: &str, sql: &str) -> Result<(), sqlx::Error> {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url(role)).await?;
        c.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(|_| ())
    }

    /// `fleet args` as `role` on the schema `fleet`: (exit code, stdout, stderr).
    fn fleet(&self, role: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", self.url(role))
            .env("FLEET_DATABASE__SCHEMA", "fleet")
            .env("FLEET_PII_KEYS", TEST_PII_KEYS)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run fleet");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `fleet enqueue --file` of `n` one-millisecond `fleet.sleep` jobs, as the runtime role.
    fn enqueue_sleeps(&self, n: usize) {
        let file = std::env::temp_dir().join(format!(
            "fleet-managed-jobs-{}-{}.jsonl",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let lines: String = (0..n)
            .map(|_| "{\"kind\":\"fleet.sleep\",\"args\":{\"ms\":1}}\n")
            .collect();
        std::fs::write(&file, lines).unwrap();
        let (code, out, err) = self.fleet(
            "fleet_app",
            &[],
            &["enqueue", "--file", file.to_str().unwrap()],
        );
        let _ = std::fs::remove_file(&file);
        assert_eq!(code, 0, "{out}{err}");
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.admin)
            .await
            .unwrap()
    }

    /// A `fleet worker` as `fleet_app` with short cadences and `env`, its stderr in a file.
    fn start_worker(&self, env: &[(&str, &str)]) -> AppWorker {
        let log = std::env::temp_dir().join(format!(
            "fleet-managed-{}-{}.log",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let child = Command::new(BIN)
            .arg("worker")
            .env("DATABASE_URL", self.url("fleet_app"))
            .env("FLEET_DATABASE__SCHEMA", "fleet")
            .env("FLEET_PII_KEYS", TEST_PII_KEYS)
            .env("FLEET_WORKER__POLL_INTERVAL", "200ms")
            .env("FLEET_WORKER__LEASE", "4s")
            .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "1s")
            .env("FLEET_WORKER__RESCUE_INTERVAL", "1s")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        AppWorker { child, log }
    }

    /// Waits until `done` counts `at_least` (failing with the worker's log after `within`).
    async fn wait_count(&self, w: &AppWorker, done: &'static str, at_least: i64, within: Duration) {
        let started = Instant::now();
        loop {
            let n = self.count(done).await;
            if n >= at_least {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{done}: {n} < {at_least} after {within:?}; worker log:\n{}",
                w.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A worker run until `done` counts `at_least`, then drained: its log.
    async fn work_until(
        &self,
        env: &[(&str, &str)],
        done: &'static str,
        at_least: i64,
        within: Duration,
    ) -> String {
        let w = self.start_worker(env);
        self.wait_count(&w, done, at_least, within).await;
        w.stop()
    }
}

/// A `fleet worker` process; killed on drop.
struct AppWorker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl AppWorker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Drains it (SIGTERM), checks it exits 0, and returns its log.
    fn stop(mut self) -> String {
        signal(&self.child, libc::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(30));
        let text = self.log();
        assert!(status.success(), "the worker drains and exits 0:\n{text}");
        text
    }
}

impl Drop for AppWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

const SLEEPS_DONE: &str =
    "SELECT count(*) FROM fleet.fleet_jobs WHERE kind = 'fleet.sleep' AND state = 'completed'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_migrates_and_the_runtime_role_works_the_queue_but_can_alter_nothing() {
    let m = Managed::start().await;
    let supers: Vec<(String, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolsuper FROM pg_roles WHERE rolname IN ('fleet_owner', 'fleet_app')
         ORDER BY 1",
    )
    .fetch_all(&m.admin)
    .await
    .unwrap();
    assert_eq!(
        supers,
        [("fleet_app".into(), false), ("fleet_owner".into(), false)],
        "neither role is a superuser"
    );
    // Every table the migrations made is in the schema `fleet`, none in `public`.
    assert!(
        m.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'fleet'")
            .await
            >= 17
    );
    assert_eq!(
        m.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .await,
        0
    );

    // The runtime role enqueues, works and inspects the queue...
    m.enqueue_sleeps(300);
    m.work_until(&[], SLEEPS_DONE, 300, Duration::from_secs(60))
        .await;
    for args in [
        &["queue", "stats"][..],
        &[
            "queue",
            "pause",
            "fleet.sleep",
            "--reason",
            "least privilege",
        ],
        &["queue", "resume", "fleet.sleep"],
        &["queue", "prune", "--older-than", "1m", "--dry-run"],
        &["workers"],
        &["check"],
        &["audit"],
    ] {
        let (code, out, err) = m.fleet("fleet_app", &[], args);
        assert_eq!(code, 0, "fleet {args:?} as the runtime role: {out}{err}");
    }

    // ...and can create, alter, truncate or drop nothing, nor touch the migrations.
    for (sql, refusal) in [
        ("DROP TABLE fleet_jobs", "must be owner of table fleet_jobs"),
        (
            "ALTER TABLE fleet_jobs ADD COLUMN x int",
            "must be owner of table fleet_jobs",
        ),
        (
            "TRUNCATE fleet_jobs",
            "permission denied for table fleet_jobs",
        ),
        (
            "CREATE TABLE fleet.x (id int)",
            "permission denied for schema fleet",
        ),
        (
            "CREATE TABLE public.x (id int)",
            "permission denied for schema public",
        ),
        (
            "CREATE INDEX ON fleet_jobs (kind)",
            "must be owner of table fleet_jobs",
        ),
        (
            "CREATE EXTENSION pgcrypto",
            "permission denied to create extension",
        ),
        (
            "DELETE FROM _sqlx_migrations",
            "permission denied for table _sqlx_migrations",
        ),
        ("ALTER SYSTEM SET work_mem = '1GB'", "permission denied"),
    ] {
        let e = m
            .as_role("fleet_app", sql)
            .await
            .expect_err(&format!("the runtime role may not: {sql}"));
        assert!(e.to_string().contains(refusal), "{sql}: {e}");
    }
    // Through PgBouncer in transaction mode no session can set the search path: the role's
    // own setting (the docs' roles block) puts the schema first, and the fleet checks it.
    if tool_available(
        "pgbouncer",
        PgBouncer::executable().is_some(),
        "apt-get install -y pgbouncer",
    ) {
        let stats_through_a_new_pooler = || {
            let bouncer = PgBouncer::start(
                m.cluster.port,
                PoolMode::Transaction,
                &["fleet_app"],
                4,
                &[],
            )
            .unwrap();
            let url = bouncer.url("fleet_app", "fleet");
            m.fleet(
                "fleet_app",
                &[
                    ("DATABASE_URL", url.as_str()),
                    ("FLEET_DATABASE__POOLER", "transaction"),
                ],
                &["queue", "stats"],
            )
        };
        let (code, out, err) = stats_through_a_new_pooler();
        assert_eq!(code, 0, "through the pooler: {out}{err}");
        // Without it (a new pooler: the old one's server sessions started with it), refused.
        m.as_role("fleet_app", "ALTER ROLE fleet_app RESET search_path")
            .await
            .unwrap();
        let (code, _, err) = stats_through_a_new_pooler();
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("search_path")
                && err.contains("ALTER ROLE fleet_app SET search_path = fleet, public"),
            "the refusal says what to run: {err}"
        );
    }
    // The owner may not do what only a superuser may either: the migrations never needed it.
    let e = m
        .as_role("fleet_owner", "CREATE EXTENSION pgcrypto")
        .await
        .expect_err("no extension for the owner");
    assert!(e.to_string().contains("permission denied"), "{e}");
    // Migrating as the runtime role fails, and says what was refused.
    let (code, _, err) = m.fleet("fleet_app", &[], &["migrate", "--status"]);
    assert_eq!(code, 0, "reading the migrations is allowed: {err}");
    m.as_role(
        "fleet_owner",
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .await
    .unwrap();
    let (code, _, err) = m.fleet("fleet_app", &[], &["migrate"]);
    assert_ne!(code, 0, "the runtime role cannot migrate");
    assert!(
        err.contains("permission denied") || err.contains("must be owner"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_tables_under_row_level_security_are_reached_through_the_documented_policies() {
    let m = Managed::start().await;
    m.as_role(
        "fleet_owner",
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY;
         ALTER TABLE traveler_profiles ENABLE ROW LEVEL SECURITY;
         ALTER TABLE payment_methods ENABLE ROW LEVEL SECURITY;
         ALTER TABLE campaigns ENABLE ROW LEVEL SECURITY;
         ALTER TABLE bookings ENABLE ROW LEVEL SECURITY;
         ALTER TABLE refunds ENABLE ROW LEVEL SECURITY;
         ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;",
    )
    .await
    .unwrap();
    // Without policies the runtime role sees none of their rows: it says so at start...
    let (_, _, err) = m.fleet("fleet_app", &[("RUST_LOG", "warn")], &["check"]);
    assert!(
        err.contains("row-level security is on")
            && err.contains("campaigns")
            && err.contains("users"),
        "the fleet names the tables it cannot see: {err}"
    );
    // ...and cannot write them either.
    let (code, _, err) = m.fleet("fleet_app", &[], &["seed", "--users", "3", "--mix", "demo"]);
    assert_ne!(code, 0);
    assert!(err.contains("row-level security"), "{err}");

    m.as_role(
        "fleet_owner",
        &docs_sql("row-level security policies (the domain tables' owner)"),
    )
    .await
    .expect("the docs' policies block runs as the owner");
    let (code, out, err) = m.fleet("fleet_app", &[], &["seed", "--users", "3", "--mix", "demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, _, err) = m.fleet("fleet_app", &[("RUST_LOG", "warn")], &["check"]);
    assert!(!err.contains("row-level security"), "{err}");
    // The runtime role's scan reads the campaigns through the policies and fans out.
    let (code, out, err) = m.fleet("fleet_app", &[], &["enqueue", "campaign_scan"]);
    assert_eq!(code, 0, "{out}{err}");
    m.work_until(
        &[],
        "SELECT count(*) FROM fleet.fleet_jobs WHERE kind = 'campaign_scan' AND state = 'completed'",
        1,
        Duration::from_secs(60),
    )
    .await;
    let searches = m
        .count("SELECT count(*) FROM fleet.fleet_jobs WHERE kind = 'campaign_search'")
        .await;
    assert!(searches >= 1, "the scan found the seeded campaigns");
    assert_eq!(
        searches,
        m.count("SELECT count(*) FROM fleet.campaigns WHERE status = 'active' AND next_search_at <= now()")
            .await,
        "one search per due campaign, read under row-level security"
    );
    assert!(m.count("SELECT count(*) FROM fleet.campaigns").await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_in_public_moves_to_its_own_schema_with_the_documented_script() {
    let cluster = LocalCluster::start_primary("schema-move").expect("a server");
    let server = fleet::database::connect(&cluster.url("postgres"), 2)
        .await
        .unwrap();
    server.execute("CREATE DATABASE fleet").await.unwrap();
    let url = cluster.url("fleet");
    let run = |schema: &str, args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &url)
            .env("FLEET_DATABASE__SCHEMA", schema)
            .env("FLEET_PII_KEYS", TEST_PII_KEYS)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // An existing deployment: everything in public, a job waiting.
    assert_eq!(run("public", &["migrate"]).0, 0);
    let (code, out) = run(
        "public",
        &["enqueue", "fleet.sleep", "--args", "{\"ms\":1}"],
    );
    assert_eq!(code, 0, "{out}");
    // The new setting before the move: refused, saying why and what to do.
    let (code, out) = run("fleet", &["queue", "stats"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("no such schema") && out.contains("fleet migrate"),
        "{out}"
    );
    // The docs' move, then the new setting: the job is where it was and gets worked.
    let db = fleet::database::connect(&url, 2).await.unwrap();
    db.execute(sqlx::raw_sql(AssertSqlSafe(docs_sql(
        "move to schema (the tables' owner, the fleet stopped)",
    ))))
    .await
    .expect("the docs' move block runs");
    let (code, out) = run("fleet", &["migrate", "--status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("pending"),
        "every migration still applied: {out}"
    );
    let (code, out) = run("fleet", &["queue", "stats"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fleet.sleep"), "{out}");
    let mut worker = spawn_worker(
        &url,
        &[("FLEET_DATABASE__SCHEMA", "fleet"), ("RUST_LOG", "warn")],
    );
    let started = Instant::now();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM fleet.fleet_jobs WHERE state = 'completed'")
                .fetch_one(&db)
                .await
                .unwrap();
        if done == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the moved job runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&worker, libc::SIGTERM);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    let public: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(public, 0, "nothing left behind in public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_the_role_sets_do_not_wedge_a_worker() {
    let m = Managed::start().await;
    // What a managed service (or a cautious DBA) sets on an application role: statements,
    // lock waits and idle transactions cut short, idle sessions closed.
    m.admin
        .execute(
            "ALTER ROLE fleet_app SET statement_timeout = '2s';
             ALTER ROLE fleet_app SET lock_timeout = '500ms';
             ALTER ROLE fleet_app SET idle_in_transaction_session_timeout = '1s';
             ALTER ROLE fleet_app SET idle_session_timeout = '1500ms';",
        )
        .await
        .unwrap();
    m.enqueue_sleeps(400);
    // A limited kind takes an advisory lock and counts under it in its claim: give
    // fleet.sleep a fleet-wide limit so that path runs under the lock timeout too.
    let w = m.start_worker(&[
        ("FLEET_KINDS__FLEET_DOT_SLEEP__GLOBAL_CONCURRENCY", "4"),
        ("FLEET_WORKER__CONCURRENCY", "8"),
    ]);
    m.wait_count(&w, SLEEPS_DONE, 400, Duration::from_secs(90))
        .await;
    // An idle spell: the server closes every idle session of the worker's (its pool's, its
    // LISTEN connection, its claim session)... Real time is the claim: the server's own
    // idle_session_timeout runs on the server's clock.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet_app'")
            .fetch_one(&m.admin)
            .await
            .unwrap();
    let cut: i64 = sqlx::query_scalar(
        "SELECT sessions_fatal + sessions_killed FROM pg_stat_database WHERE datname = 'fleet'",
    )
    .fetch_one(&m.admin)
    .await
    .unwrap();
    eprintln!("fleet_app sessions open after the idle spell: {closed}; cut by the server: {cut}");
    assert!(cut > 0, "the server did cut idle sessions");
    // ...and the same worker picks new work up by itself.
    let (code, out, err) = m.fleet(
        "fleet_app",
        &[],
        &["enqueue", "fleet.sleep", "--args", "{\"ms\":1}"],
    );
    assert_eq!(code, 0, "{out}{err}");
    m.wait_count(&w, SLEEPS_DONE, 401, Duration::from_secs(30))
        .await;
    let log = w.stop();
    assert!(
        !log.contains("panicked"),
        "no worker task died of a server-side timeout:\n{log}"
    );
}
