//! Backfills: checkpointed resume after a kill, every row done once; PII key rotation.

mod common;

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::*;
use fleet::{queue::JobState, Queue, Registry};
use jobs::{backfill, pii::Keyring, Deps, JobContext, NewJob};
use sqlx::{PgPool, Row};
use uuid::Uuid;

const K1: &str = "v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const K2_K1: &str = "v2:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=,v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Inserts `n` profiles whose passports are sealed with `keys`; returns (id, passport).
/// A trigger counts every update of each row into `touches`.
async fn seed_profiles(pool: &PgPool, keys: &Keyring, n: usize) -> Vec<(Uuid, String)> {
    sqlx::query("CREATE TABLE touches (id uuid PRIMARY KEY, n int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE FUNCTION count_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           INSERT INTO touches VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET n = touches.n + 1;
           RETURN NEW; END $$",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let user: Uuid = sqlx::query_scalar("INSERT INTO users (email) VALUES ($1) RETURNING id")
            .bind(format!("traveler{i}@example.test"))
            .fetch_one(pool)
            .await
            .unwrap();
        let id = Uuid::new_v4();
        let passport = format!("P{:08}", 31_000_000 + i);
        let sealed = keys.encrypt(id, &passport).unwrap();
        sqlx::query(
            "INSERT INTO traveler_profiles (id, user_id, full_name, passport_number_enc, encryption_key_version, passport_country)
             VALUES ($1, $2, 'Test Traveler', $3, $4, 'GB')",
        )
        .bind(id)
        .bind(user)
        .bind(&sealed.bytes)
        .bind(sealed.key_version)
        .execute(pool)
        .await
        .unwrap();
        out.push((id, passport));
    }
    sqlx::query("CREATE TRIGGER count_touch AFTER UPDATE ON traveler_profiles FOR EACH ROW EXECUTE FUNCTION count_touch()")
        .execute(pool)
        .await
        .unwrap();
    out
}

async fn assert_rotated_once(pool: &PgPool, keys: &Keyring, rows: &[(Uuid, String)]) {
    let touched: Vec<(Uuid, i32)> = sqlx::query_as("SELECT id, n FROM touches")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(touched.len(), rows.len(), "every row was re-sealed");
    assert!(
        touched.iter().all(|(_, n)| *n == 1),
        "a row was re-sealed more than once: {:?}",
        touched.iter().filter(|t| t.1 != 1).collect::<Vec<_>>()
    );
    for (id, passport) in rows {
        let r = sqlx::query("SELECT passport_number_enc, encryption_key_version FROM traveler_profiles WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        let version: i32 = r.get(1);
        assert_eq!(version, 2, "on the newest key");
        assert_eq!(
            keys.decrypt(*id, version, &r.get::<Vec<u8>, _>(0))
                .unwrap()
                .expose(),
            passport
        );
    }
    let (done, finished): (i64, bool) = sqlx::query_as(
        "SELECT done_rows, finished_at IS NOT NULL FROM backfills WHERE name = 'pii_reencrypt'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((done, finished), (rows.len() as i64, true));
    // Each re-seal opened the passport once: one access-audit row per row, naming the purpose.
    let reads: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT resource_id) FROM audit_log
         WHERE action = 'pii.read' AND metadata->>'purpose' = 'key_rotation'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(reads, rows.len() as i64);
}

async fn done_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT done_rows FROM backfills WHERE name = 'pii_reencrypt'), 0)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn ctx(pool: &PgPool, keys: Keyring) -> JobContext {
    JobContext {
        job_id: 1,
        kind: "backfill".into(),
        attempt: 1,
        max_attempts: 1,
        db: pool.clone().into(),
        cancel: tokio_util::sync::CancellationToken::new(),
        enqueuer: Arc::new(Queue::new(pool.clone(), Arc::new(Registry::default()))),
        extensions: jobs::Extensions::new().with(Deps {
            keys: Some(Arc::new(jobs::pii_keys::KeyService::Env(Arc::new(keys)))),
            ..Deps::default()
        }),
        rate_limits: Default::default(),
    }
}

#[tokio::test]
async fn backfill_aborted_midway_resumes_from_its_checkpoint_and_does_every_row_once() {
    let db = db().await;
    let old = Keyring::parse(K1).unwrap();
    let rows = seed_profiles(&db.pool, &old, 240).await;
    let b = backfill::by_name("pii_reencrypt").unwrap();

    // First run: aborted (like a crash) somewhere after a few batches.
    let c = ctx(&db.pool, Keyring::parse(K2_K1).unwrap());
    let first = tokio::spawn(async move {
        let b = backfill::by_name("pii_reencrypt").unwrap();
        backfill::run(b.as_ref(), &c, 20, Duration::from_millis(30)).await
    });
    while done_rows(&db.pool).await < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let _ = first.await;
    let midway = done_rows(&db.pool).await;
    assert!((60..240).contains(&midway), "aborted midway at {midway}");

    // Second run resumes from the checkpoint.
    backfill::run(
        b.as_ref(),
        &ctx(&db.pool, Keyring::parse(K2_K1).unwrap()),
        20,
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_rotated_once(&db.pool, &Keyring::parse(K2_K1).unwrap(), &rows).await;
}

#[tokio::test]
async fn key_rotation_backfill_survives_a_sigkilled_worker_and_finishes_in_another() {
    let db = db().await;
    let rows = seed_profiles(&db.pool, &Keyring::parse(K1).unwrap(), 200).await;
    let spawn = || {
        Command::new(BIN)
            .arg("worker")
            .env("DATABASE_URL", &db.url)
            .env("FLEET_PII_KEYS", K2_K1)
            .env("RUST_LOG", "warn")
            .env("FLEET_WORKER__LEASE", "2s")
            .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "500ms")
            .env("FLEET_WORKER__RESCUE_INTERVAL", "500ms")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let job = NewJob::of(&backfill::RunBackfill {
        name: "pii_reencrypt".into(),
        batch_size: 10,
        pause_ms: 50,
    })
    .unwrap()
    .key("backfill:pii_reencrypt");
    let mut r = Registry::default();
    r.register::<backfill::RunBackfill>();
    let id = Queue::new(db.pool.clone(), Arc::new(r))
        .enqueue_new(job)
        .await
        .unwrap()
        .id;
    let mut a = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done_rows(&db.pool).await < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "backfill did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let at_kill = done_rows(&db.pool).await;
    assert!(at_kill < 200, "killed midway, at {at_kill}");
    let mut b = spawn();
    let j = wait_state(&db.pool, id, JobState::Completed, Duration::from_secs(40)).await;
    assert_eq!(j.attempt, 2, "rescued after the kill, then resumed");
    assert_rotated_once(&db.pool, &Keyring::parse(K2_K1).unwrap(), &rows).await;
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    assert!(b.wait().unwrap().success());
}

#[tokio::test]
async fn profile_completeness_backfill_scores_present_fields() {
    let db = db().await;
    let rows = seed_profiles(&db.pool, &Keyring::parse(K1).unwrap(), 3).await;
    let b = backfill::by_name("profile_completeness").unwrap();
    backfill::run(
        b.as_ref(),
        &ctx(&db.pool, Keyring::parse(K1).unwrap()),
        2,
        Duration::ZERO,
    )
    .await
    .unwrap();
    // full_name, passport and passport_country present: 3 of 8 fields.
    let scores: Vec<i32> =
        sqlx::query_scalar("SELECT profile_completeness_score FROM traveler_profiles")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(scores, vec![38; rows.len()]);
}

#[test]
fn worker_without_a_keyring_refuses_to_start_naming_the_variable() {
    for (value, expect) in [
        (None, "FLEET_PII_KEYS"),
        (Some("v1:not-base64!"), "FLEET_PII_KEYS"),
    ] {
        let mut c = Command::new(BIN);
        c.arg("worker")
            .env_remove("FLEET_PII_KEYS")
            .env("DATABASE_URL", "postgres://127.0.0.1:1/x");
        if let Some(v) = value {
            c.env("FLEET_PII_KEYS", v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
        assert!(
            !err.contains("not-base64"),
            "no key material in errors: {err}"
        );
    }
}
