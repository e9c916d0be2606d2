//! Read replicas (docs/scaling.md): with `database.read_url` set, operator reads come from a
//! real hot standby, which this test makes itself: a scratch primary (`initdb`), a standby
//! cloned from it with `pg_basebackup -R` streaming on another loopback port, both stopped and
//! deleted when the test ends ([`fleet::testkit::LocalCluster`]). Replay on the standby
//! is paused (`pg_wal_replay_pause()`) to make the lag visible and deterministic.

mod common;

use std::{process::Command, time::Duration};

use common::{BIN, TEST_PII_KEYS};
use fleet::{
    databases::{Database, ReplicaLag},
    queue,
    testkit::LocalCluster,
};
use serde_json::Value;

/// `fleet queue ARGS --json`-or-text against the primary, reads from the replica.
fn fleet_queue(primary: &str, replica: &str, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(BIN);
    c.arg("queue").args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLEET_DATABASE")) {
        c.env_remove(k);
    }
    let out = c
        .env_remove("DATABASE_READ_URL")
        .env("DATABASE_URL", primary)
        .env("FLEET_DATABASE__READ_URL", replica)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("USER", "ops-test")
        .output()
        .expect("run fleet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Ready `fleet.sleep` jobs as `fleet queue stats --json` reports them (from the replica).
fn ready_sleeps(primary: &str, replica: &str) -> i64 {
    let (ok, out, err) = fleet_queue(primary, replica, &["stats", "--json"]);
    assert!(ok, "queue stats failed: {err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "fleet.sleep")
        .map(|r| r["states"]["available"].as_i64().unwrap_or(0))
        .sum()
}

/// The console's live overview, read through a console whose pages read `reads`, as a
/// signed-in viewer (plain HTTP: the login form's token and cookie, then the session cookie).
async fn console_overview(primary: &sqlx::PgPool, reads: &sqlx::PgPool) -> String {
    const PW: &str = "correct horse battery staple";
    let hash = fleet::console::hash_password(PW).unwrap();
    let env: Vec<(String, String)> = [
        ("FLEET_CONSOLE__USERS__VIV__ROLE", "viewer"),
        ("FLEET_CONSOLE__USERS__VIV__PASSWORD_HASH", hash.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = fleet::config::Settings::from_sources(None, &env).unwrap();
    let console = fleet::console::Console::new(
        primary.clone(),
        std::sync::Arc::new(common::fleet_registry()),
        settings.console.clone(),
        Duration::from_secs(15),
    )
    .with_reads(reads.clone().into());
    let (base, stop) = common::serve(fleet::serve::admin_router_with_console(
        primary.clone(),
        console,
    ))
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie_of = |r: &reqwest::Response, name: &str| -> String {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|c| c.to_str().ok())
            .find(|c| c.starts_with(&format!("{name}=")))
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("no {name} cookie"))
            .to_owned()
    };
    let page = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let login_cookie = cookie_of(&page, fleet::console::auth::LOGIN_COOKIE);
    let token = login_cookie.split_once('=').unwrap().1.to_owned();
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("username", "viv")
        .append_pair("password", PW)
        .append_pair("csrf", &token)
        .finish();
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let session = cookie_of(&signed_in, fleet::console::auth::SESSION_COOKIE);
    let live = http
        .get(format!("{base}/ui/overview/live"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let text = live.text().await.unwrap();
    stop.cancel();
    text
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reads_come_from_the_hot_standby_with_its_lag_shown_while_writes_go_to_the_primary(
) {
    let primary = LocalCluster::start_primary("replica-primary").expect("scratch primary");
    let url_p = fleet::testkit::create_database(&primary.url("postgres"), "fleet")
        .await
        .expect("migrated database on the primary");
    let standby = LocalCluster::start_standby_of(&primary, "replica-standby").expect("standby");
    let url_r = standby.url("fleet");
    let pool_p = fleet::database::connect(&url_p, 4).await.unwrap();
    let pool_r = fleet::database::connect(&url_r, 2).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool_r)
        .await
        .unwrap();
    assert!(in_recovery, "the standby is a standby");

    // A job enqueued on the primary shows in the stats read on the replica, once replayed.
    let registry = std::sync::Arc::new(common::fleet_registry());
    let q = fleet::Queue::new(pool_p.clone(), registry);
    q.enqueue(
        &fleet::builtin::Sleep { ms: 1, key: None },
        Some("replica-1"),
    )
    .await
    .unwrap();
    wait_for(
        "the first job reaching the replica",
        Duration::from_secs(10),
        || ready_sleeps(&url_p, &url_r) == 1,
    )
    .await;
    let (ok, text, err) = fleet_queue(&url_p, &url_r, &["stats"]);
    assert!(ok, "{err}");
    let caught_up = format!("read from the replica at 127.0.0.1:{}/fleet", standby.port);
    assert!(
        text.contains(&caught_up) && text.contains(" s behind") && !text.contains("at least"),
        "a caught-up replica's lag is shown: {text}"
    );

    // Replay paused: the primary moves on, the replica (and so the stats) does not.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&pool_r)
        .await
        .unwrap();
    q.enqueue(
        &fleet::builtin::Sleep { ms: 1, key: None },
        Some("replica-2"),
    )
    .await
    .unwrap();
    // Real time is the claim: a standby replaying normally would have the row within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ready_sleeps(&url_p, &url_r),
        1,
        "the stats are read on the replica, which has not replayed the second job"
    );
    let (ok, text, err) = fleet_queue(&url_p, &url_r, &["stats"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("at least") && text.contains("KiB of WAL still to replay"),
        "a replica that stopped replaying is shown behind: {text}"
    );
    let db = Database {
        name: "main".into(),
        db: pool_p.clone().into(),
        reads: pool_r.clone().into(),
        replica: Some(format!("127.0.0.1:{}/fleet as postgres", standby.port)),
    };
    let lag: ReplicaLag = db.replica_lag().await.unwrap().expect("a replica");
    assert!(
        lag.is_standby && lag.bytes_behind > 0 && lag.seconds.is_some_and(|s| s >= 1.0),
        "{lag:?}"
    );
    let overview = console_overview(&pool_p, &pool_r).await;
    assert!(
        overview.contains("Read from a replica: at least")
            && overview.contains("Actions go to the primary"),
        "the console's overview shows the replica's lag: {overview}"
    );
    fleet::snapshot::refresh_snapshot_of(std::slice::from_ref(&db))
        .await
        .unwrap();
    let text = fleet::metrics::render_text();
    let gauge = text
        .lines()
        .find(|l| l.starts_with("fleet_database_replica_lag_seconds{database=\"main\"}"))
        .unwrap_or_else(|| panic!("the lag gauge is exported: {text}"));
    let value: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 1.0, "{gauge}");

    // A write goes to the primary: the replica could not take it (read-only), and shows it
    // only once it replays again.
    let (ok, out, err) = fleet_queue(&url_p, &url_r, &["pause", "fleet.sleep", "--reason", "t"]);
    assert!(ok, "pause goes to the primary: {err}");
    assert!(out.contains("paused"), "{out}");
    let mut conn = pool_p.acquire().await.unwrap();
    let on_primary = queue::kind_list_paused(&mut *conn).await.unwrap();
    drop(conn);
    assert!(on_primary.iter().any(|p| p.kind == "fleet.sleep"));
    let (_, out, _) = fleet_queue(&url_p, &url_r, &["paused"]);
    assert!(
        out.contains("no kind is paused"),
        "read on the paused replica: {out}"
    );

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&pool_r)
        .await
        .unwrap();
    wait_for("the replica catching up", Duration::from_secs(10), || {
        ready_sleeps(&url_p, &url_r) == 2
    })
    .await;
    let (_, out, _) = fleet_queue(&url_p, &url_r, &["paused"]);
    assert!(out.contains("fleet.sleep"), "{out}");
    let lag = db.replica_lag().await.unwrap().unwrap();
    assert_eq!(lag.bytes_behind, 0, "{lag:?}");
    assert!(lag.seconds.is_some_and(|s| s < 1.0), "{lag:?}");

    pool_p.close().await;
    pool_r.close().await;
    let (mut primary, mut standby) = (primary, standby);
    standby.stop().expect("standby stops");
    primary.stop().expect("primary stops");
}
