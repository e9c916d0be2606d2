//! Operating the fleet as a new operator would: explicit databases, migrations as a deploy
//! step (and rollbacks), the workers registry across a SIGKILL, drain's warning, and an outcome
//! whose acknowledgement was lost to a dropped connection.

mod common;

use std::{
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use fleet::{
    queue::{self, JobState},
    Queue, Registry,
};
use jobs::NewJob;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs the binary with `args`, `DATABASE_URL` set to `url` (or unset), nothing else of ours.
fn fleet(url: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("FLEET_STRIPE_WEBHOOK_SECRET", "whsec_x")
        .env("FLEET_DUFFEL_WEBHOOK_SECRET", "whsec_y");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLEET_DATABASE")) {
        c.env_remove(k);
    }
    if let Some(u) = url {
        c.env("DATABASE_URL", u);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run fleet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_role_refuses_to_start_without_a_database_url_and_names_it() {
    for args in [
        &["worker"][..],
        &["serve"],
        &["scheduler"],
        &["queue", "stats"],
        &["check"],
        &["backfill", "status"],
        &["seed", "--users", "1"],
        &["migrate"],
        &["workers"],
    ] {
        let out = fleet(None, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("DATABASE_URL") && err.contains("database.url"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_refused_port_fails_within_the_connect_timeout_naming_host_and_port_not_the_password() {
    let t = Instant::now();
    let out = fleet(
        Some("postgres://fleet:hunter2@127.0.0.1:1/fleet"),
        &["queue", "stats"],
        &[],
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("refused"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // `check` that cannot run is not a finding: 3, not 1.
    let out = fleet(Some("postgres://fleet@127.0.0.1:1/fleet"), &["check"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[tokio::test]
async fn an_unknown_role_is_named_once_and_exits_three() {
    let db = db().await;
    let url = db
        .url
        .replacen("postgres://postgres@", "postgres://nobody@", 1);
    let out = fleet(Some(&url), &["queue", "stats"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert_eq!(
        err.matches("role \"nobody\" does not exist").count(),
        1,
        "{err}"
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_a_hint_to_migrate_then_migrate_applies_it() {
    let server = fleet::testkit::server_url().await;
    let name = format!("fleet_unmigrated_{}", std::process::id());
    let mut admin: sqlx::PgConnection =
        <sqlx::PgConnection as sqlx::Connection>::connect(server.as_str())
            .await
            .unwrap();
    use sqlx::Executor;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let url = fleet::testkit::url_with_database(&server, &name);
    let out = fleet(Some(&url), &["queue", "stats"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("fleet migrate"), "{}", stderr(&out));

    let out = fleet(
        Some(&url),
        &["migrate", "--json", "--actor", "deployer"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["applied"].as_array().unwrap().len(),
        fleet::database::MIGRATOR.iter().count()
    );
    let out = fleet(Some(&url), &["queue", "stats"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pool = fleet::database::connect(&url, 2).await.unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_audit WHERE action = 'schema.migrate' AND actor = 'deployer'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    pool.close().await;
    let _ = fleet::testkit::drop_database(&server, &name).await;
}

#[tokio::test]
async fn a_role_refuses_a_schema_behind_it_and_says_to_run_fleet_migrate() {
    let db = db().await;
    let newest = fleet::database::MIGRATOR.iter().last().unwrap().version;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&db.pool)
        .await
        .unwrap();
    let out = fleet(Some(&db.url), &["worker"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("behind")
            && err.contains(&newest.to_string())
            && err.contains("fleet migrate"),
        "{err}"
    );
    let out = fleet(Some(&db.url), &["migrate", "--status"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));
}

#[tokio::test]
async fn after_a_rollback_a_worker_starts_on_a_schema_ahead_of_it_and_logs_the_unknown_migration() {
    let db = db().await;
    // What a newer binary's migration leaves behind.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'from the future', true, '\\x00', 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = stderr_of_a_worker_run(&db).await;
    assert!(err.contains("29991231000001"), "{err}");
    // fleet migrate leaves the unknown migration alone and succeeds.
    let out = fleet(Some(&db.url), &["migrate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fleet(Some(&db.url), &["migrate", "--status"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown"));
}

/// What a worker logs (at warn) from its start until a SIGTERM after it registered; it must
/// exit cleanly.
async fn stderr_of_a_worker_run(db: &fleet::testkit::ScratchDb) -> String {
    let mut w = spawn_worker_logging(&db.url, &[]);
    wait_until(Duration::from_secs(15), "the worker registers", || async {
        live_workers(&db.pool).await == 1
    })
    .await;
    signal(&w, libc::SIGTERM);
    assert!(wait_exit(&mut w, Duration::from_secs(15)).success());
    let mut err = String::new();
    use std::io::Read;
    w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    err
}

/// Like `spawn_worker`, with its stderr captured.
fn spawn_worker_logging(url: &str, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(BIN);
    c.arg("worker")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("FLEET_WORKER__LEASE", "2s")
        .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "400ms")
        .env("FLEET_WORKER__RESCUE_INTERVAL", "300ms")
        .env("FLEET_WORKER__POLL_INTERVAL", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

async fn registry_rows(pool: &sqlx::PgPool) -> Vec<queue::WorkerRow> {
    let mut conn = pool.acquire().await.unwrap();
    queue::worker_list(&mut *conn, Duration::from_secs(2), None)
        .await
        .unwrap()
}

async fn live_workers(pool: &sqlx::PgPool) -> usize {
    registry_rows(pool).await.iter().filter(|w| w.alive).count()
}

#[tokio::test]
async fn the_workers_registry_shows_a_sigkilled_worker_as_stale_and_another_worker_forgets_it() {
    let db = db().await;
    let mut a = spawn_worker(&db.url, &[]);
    wait_until(Duration::from_secs(15), "worker A registers", || async {
        live_workers(&db.pool).await == 1
    })
    .await;
    let a_row = registry_rows(&db.pool).await.remove(0);
    assert_eq!(a_row.pid, a.id() as i32);
    assert!(a_row.kinds.iter().any(|k| k == "booking_attempt"));
    signal(&a, libc::SIGKILL);
    let _ = wait_exit(&mut a, Duration::from_secs(5));
    // Its row stays, and reads as stale once a lease has passed without a heartbeat.
    wait_until(
        Duration::from_secs(10),
        "worker A reads as stale",
        || async {
            let rows = registry_rows(&db.pool).await;
            rows.len() == 1 && !rows[0].alive
        },
    )
    .await;
    let out = fleet(
        Some(&db.url),
        &["workers", "--json"],
        &[
            ("FLEET_WORKER__LEASE", "2s"),
            ("FLEET_WORKER__HEARTBEAT_INTERVAL", "500ms"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], a_row.id.as_str());
    assert_eq!(v[0]["alive"], false);
    // Worker B forgets A after forget_after, and keeps its own row fresh.
    let mut b = spawn_worker(&db.url, &[("FLEET_WORKER__FORGET_AFTER", "3s")]);
    wait_until(Duration::from_secs(20), "worker B forgets A", || async {
        let rows = registry_rows(&db.pool).await;
        rows.len() == 1 && rows[0].id != a_row.id && rows[0].alive
    })
    .await;
    // A clean stop removes the row at once.
    signal(&b, libc::SIGTERM);
    assert!(wait_exit(&mut b, Duration::from_secs(15)).success());
    assert!(registry_rows(&db.pool).await.is_empty());
}

#[tokio::test]
async fn drain_warns_at_once_when_no_live_worker_serves_the_kind() {
    let db = db().await;
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    Queue::new(db.pool.clone(), Arc::new(r))
        .enqueue_new(NewJob::raw("fleet.sleep", serde_json::json!({"ms": 1})))
        .await
        .unwrap();
    let out = fleet(
        Some(&db.url),
        &[
            "queue",
            "drain",
            "fleet.sleep",
            "--timeout",
            "1s",
            "--actor",
            "ops",
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(
        err.contains("no live worker serves fleet.sleep"),
        "the warning comes first: {err}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a timed-out drain is a finding: {err}"
    );
}

/// A loopback TCP proxy in front of Postgres that, once armed, lets one outcome write reach
/// the server and then cuts the connection before its reply: the write commits, its
/// acknowledgement is lost.
struct AckDropper {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
}

impl AckDropper {
    async fn start(server: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let (a, d) = (armed.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
                tokio::spawn(Self::pipe(client, upstream, a.clone(), d.clone()));
            }
        });
        Self {
            addr,
            armed,
            dropped,
        }
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        armed: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    ) {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_up = cut.clone();
        let up = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // The completer's Bind carries the outcome states as a binary text[]: each
                // element is its length (4 bytes) and its bytes. (The statement's own text,
                // sent once in a Parse, quotes 'completed' and does not match.)
                if armed.load(Ordering::SeqCst)
                    && buf[..n]
                        .windows(13)
                        .any(|w| w == b"\x00\x00\x00\x09completed")
                {
                    armed.store(false, Ordering::SeqCst);
                    cut_up.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    // Swallow the reply up to ReadyForQuery ('Z', length 5): by then the
                    // server has committed. Then hang up on the client.
                    if buf[..n].windows(5).any(|w| w == [b'Z', 0, 0, 0, 5]) {
                        dropped.store(true, Ordering::SeqCst);
                        let _ = cw.shutdown().await;
                        return;
                    }
                    continue;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! { _ = up => {}, _ = down => {} }
    }
}

#[tokio::test]
async fn an_outcome_whose_acknowledgement_was_lost_is_counted_written_not_refused() {
    let db = db().await;
    let opts: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", opts.get_port()).parse().unwrap();
    let proxy = AckDropper::start(server).await;
    // The proxy reads the protocol, so the path through it is plain TCP.
    let via_proxy = opts
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let worker_pool = fleet::database::pool_options()
        .max_connections(8)
        .connect_with(via_proxy)
        .await
        .unwrap();
    let mut r = Registry::default();
    r.register::<Flaky>();
    let reg = Arc::new(r);
    let id = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Flaky { succeed_on: 1 }, None)
        .await
        .unwrap()
        .id;
    proxy.armed.store(true, Ordering::SeqCst);
    let w = fleet::Worker::new(worker_pool, reg, fast_settings());
    let counters = w.counters();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(w.run(stop.clone()));
    wait_until(
        Duration::from_secs(10),
        "the outcome is counted",
        || async {
            counters.completed.load(Ordering::Relaxed) + counters.lost.load(Ordering::Relaxed) >= 1
        },
    )
    .await;
    assert!(
        proxy.dropped.load(Ordering::SeqCst),
        "the proxy cut the acknowledgement"
    );
    assert_eq!(counters.completed.load(Ordering::Relaxed), 1);
    assert_eq!(
        counters.lost.load(Ordering::Relaxed),
        0,
        "the worker's own completion is not a refusal"
    );
    let j = job(&db.pool, id).await;
    assert_eq!((j.state, j.claim_seq), (JobState::Completed, 1));
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_worker_warns_at_start_when_autovacuum_will_not_clean_the_jobs_table() {
    let db = db().await;
    sqlx::query("ALTER TABLE fleet_jobs SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = stderr_of_a_worker_run(&db).await;
    assert!(
        err.contains("autovacuum will not clean fleet_jobs"),
        "the worker says so: {err}"
    );
    // Whichever reason this server gives first (CI's runs with autovacuum = off), it is named.
    assert!(
        err.contains("autovacuum = off") || err.contains("autovacuum_enabled = false"),
        "{err}"
    );
}
