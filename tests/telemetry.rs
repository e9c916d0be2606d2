//! The admin endpoints (`/metrics`, `/livez`, `/readyz`, `/health`), against real Postgres and
//! a real worker. The queue gauges are process-wide, so the tests that refresh them take
//! [`SNAPSHOT`] first.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use fleet::{builtin::Sleep, queue::JobState, Queue, Registry};
use jobs::NewJob;

/// Serialises the tests that refresh the process-wide snapshot.
static SNAPSHOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition")
}

fn unreachable_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres:secret-password@127.0.0.1:1/nowhere")
        .unwrap()
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_exposition_and_count_outcomes() {
    let _snapshot = SNAPSHOT.lock().await;
    let db = db().await;
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    let reg = Arc::new(r);
    let q = Queue::new(db.pool.clone(), reg.clone());
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            q.enqueue(&Sleep { ms: 1, key: None }, None)
                .await
                .unwrap()
                .id,
        );
    }
    let dead = insert_unchecked(&db.pool, "test.metrics_unknown_kind", serde_json::json!({})).await;
    q.enqueue_new(
        NewJob::raw("fleet.sleep", serde_json::json!({"ms": 1}))
            .run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    let w = start_worker(&db.pool, reg, fast_settings());
    for id in ids {
        wait_state(&db.pool, id, JobState::Completed, Duration::from_secs(5)).await;
    }
    wait_state(&db.pool, dead, JobState::Dead, Duration::from_secs(5)).await;
    // The completer counts an outcome just after its commit, which the test saw: let it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What the serve role's snapshot task does every serve.metrics_refresh.
    fleet::snapshot::refresh_snapshot(&db.db()).await.unwrap();

    let (base, stop) = serve(fleet::serve::admin_router(db.pool.clone())).await;
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let scrape = parse(&resp.text().await.unwrap());

    // Process counters (the test binary is one process: at least our outcomes).
    assert!(
        value(
            sample(
                &scrape,
                "fleet_jobs_completed_total",
                &[("kind", "fleet.sleep")]
            )
            .unwrap()
        ) >= 5.0
    );
    assert!(
        value(
            sample(
                &scrape,
                "fleet_jobs_dead_total",
                &[("kind", "test.metrics_unknown_kind")]
            )
            .unwrap()
        ) >= 1.0
    );
    assert!(
        value(
            sample(
                &scrape,
                "fleet_jobs_enqueued_total",
                &[("kind", "fleet.sleep")]
            )
            .unwrap()
        ) >= 6.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "fleet_job_run_seconds_count"),
        "run-time histogram present"
    );
    // The worker timed its claim rounds and its outcome writes.
    for h in [
        "fleet_worker_claim_round_seconds",
        "fleet_worker_outcome_write_seconds",
    ] {
        let count = value(sample(&scrape, &format!("{h}_count"), &[]).unwrap());
        let sum = value(sample(&scrape, &format!("{h}_sum"), &[]).unwrap());
        assert!(
            count >= 1.0 && sum > 0.0,
            "{h}: {count} observations, {sum} s"
        );
    }
    // Database gauges are this database's exact state, over unfinished jobs only: finished
    // work is the counters' (a gauge over history would scan it every refresh).
    assert!(
        sample(&scrape, "fleet_queue_depth", &[("state", "completed")]).is_none(),
        "no gauge over finished jobs"
    );
    assert_eq!(
        value(sample(&scrape, "fleet_database_up", &[]).unwrap()),
        1.0
    );
    assert!(value(sample(&scrape, "fleet_queue_snapshot_age_seconds", &[]).unwrap()) < 60.0);
    assert_eq!(
        value(
            sample(
                &scrape,
                "fleet_queue_depth",
                &[("kind", "fleet.sleep"), ("state", "scheduled")]
            )
            .unwrap()
        ),
        1.0
    );
    assert!(sample(&scrape, "fleet_lease_rescues_total", &[]).is_some());
    stop.cancel();
    w.stop().await;
}

#[tokio::test]
async fn health_reports_database_and_lag_and_503_when_the_database_is_gone() {
    let db = db().await;
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    let q = Queue::new(db.pool.clone(), Arc::new(r));
    q.enqueue_new(NewJob::raw("fleet.sleep", serde_json::json!({"ms": 1})))
        .await
        .unwrap();
    // Real time is the claim: the lag of a ready job is how long it has waited.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (base, stop) = serve(fleet::serve::admin_router(db.pool.clone())).await;
    let resp = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert!(v["queue_lag_seconds"]["fleet.sleep"].as_f64().unwrap() > 0.0);
    stop.cancel();

    let (base, stop) = serve(fleet::serve::admin_router(unreachable_pool())).await;
    let resp = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("unavailable"), "{body}");
    assert!(
        !body.contains("secret-password") && !body.contains("127.0.0.1:1"),
        "no connection details: {body}"
    );
    stop.cancel();
}

#[tokio::test]
async fn with_the_database_down_livez_answers_readyz_refuses_and_metrics_serve_the_last_snapshot() {
    let _snapshot = SNAPSHOT.lock().await;
    let db = db().await;
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    let q = Queue::new(db.pool.clone(), Arc::new(r));
    q.enqueue_new(NewJob::raw("fleet.sleep", serde_json::json!({"ms": 1})).queue("snapshot_q"))
        .await
        .unwrap();
    fleet::snapshot::refresh_snapshot(&db.db()).await.unwrap();
    let failures_before = fleet::metrics::metrics().snapshot_failures.get();

    let gone = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy("postgres://postgres:secret-password@127.0.0.1:1/nowhere")
        .unwrap();
    assert!(
        fleet::snapshot::refresh_snapshot(&jobs::Db::from(gone.clone()))
            .await
            .is_err()
    );
    let (base, stop) = serve(fleet::serve::admin_router(gone)).await;

    let live = reqwest::get(format!("{base}/livez")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness never depends on the database");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(
        !why.contains("secret-password") && !why.contains("127.0.0.1:1"),
        "{why}"
    );

    let started = std::time::Instant::now();
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "metrics answer while the database is down"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a scrape never waits for the database (its pool would wait 5 s)"
    );
    let scrape = parse(&resp.text().await.unwrap());
    assert_eq!(
        value(sample(&scrape, "fleet_database_up", &[]).unwrap()),
        0.0
    );
    assert!(
        value(sample(&scrape, "fleet_queue_snapshot_failures_total", &[]).unwrap())
            > failures_before as f64
    );
    assert!(
        value(
            sample(
                &scrape,
                "fleet_jobs_enqueued_total",
                &[("kind", "fleet.sleep")]
            )
            .unwrap()
        ) >= 1.0,
        "process counters survive"
    );
    assert_eq!(
        value(
            sample(
                &scrape,
                "fleet_queue_depth",
                &[("kind", "fleet.sleep"), ("state", "available")]
            )
            .expect("the last snapshot's gauges are still served")
        ),
        1.0
    );
    stop.cancel();
}
