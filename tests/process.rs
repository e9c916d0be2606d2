//! `fleet worker` as a real process: killed with SIGKILL, drained with SIGTERM, forced with a
//! second signal; and the binary's errors for bad configuration and flags.

mod common;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use fleet::{
    builtin::Sleep,
    queue::{self, ErrorClass, JobState, QueueError},
    worker::{NextState, Outcome},
    Queue, Registry,
};

fn queue(pool: &sqlx::PgPool) -> Queue {
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    Queue::new(pool.clone(), Arc::new(r))
}

#[tokio::test]
async fn killed_worker_process_job_is_rescued_and_completed_by_another_and_late_completion_refused()
{
    let db = db().await;
    let id = queue(&db.pool)
        .enqueue(
            &Sleep {
                ms: 4_000,
                key: None,
            },
            None,
        )
        .await
        .unwrap()
        .id;
    let mut a = spawn_worker(&db.url, &[]);
    let claimed = wait_state(&db.pool, id, JobState::Running, Duration::from_secs(15)).await;
    let owner_a = claimed.lease_owner.clone().unwrap();
    assert!(owner_a.contains(&format!(":{}:", a.id())), "{owner_a}");

    // SIGKILL mid-job: no drain, no outcome, the lease just stops being renewed.
    signal(&a, libc::SIGKILL);
    wait_exit(&mut a, Duration::from_secs(5));
    let killed_at = Instant::now();
    let mut b = spawn_worker(&db.url, &[]);

    let j = wait_for(&db.pool, id, Duration::from_secs(30), "rescued", |j| {
        j.claim_seq >= 2 || j.state != JobState::Running
    })
    .await;
    let rescued_after = killed_at.elapsed();
    assert!(
        rescued_after <= Duration::from_secs(30),
        "rescued {rescued_after:?} after the kill"
    );
    let j2 = wait_state(
        &db.pool,
        id,
        JobState::Completed,
        Duration::from_secs(2 + 30),
    )
    .await;
    eprintln!(
        "rescued {rescued_after:?} after SIGKILL; completed {:?} after",
        killed_at.elapsed()
    );
    assert_eq!(j2.attempt, 2);
    assert_eq!(j2.claim_seq, 2);
    assert_eq!(j2.errors.len(), 1, "{:?}", j2.errors);
    assert_eq!(j2.errors[0].class, ErrorClass::LeaseExpired);
    assert!(j2.errors[0].message.contains(&owner_a));
    let _ = j;

    // The dead worker's late completion (claim 1) is refused and changes nothing.
    let mut conn = db.pool.acquire().await.unwrap();
    let late = queue::job_set_outcome(
        &mut conn,
        Outcome {
            id,
            claim_seq: claimed.claim_seq,
            next: NextState::Completed {
                key_window: Duration::ZERO,
            },
        }
        .row(),
        None,
    )
    .await;
    assert!(
        matches!(late, Err(QueueError::LostLease { .. })),
        "{late:?}"
    );
    let after = common::job(&db.pool, id).await;
    assert_eq!(after.finished_at, j2.finished_at);

    signal(&b, libc::SIGTERM);
    assert!(wait_exit(&mut b, Duration::from_secs(15)).success());
}

#[tokio::test]
async fn sigterm_drains_finishes_running_job_returns_unstarted_claims_and_exits_zero() {
    let db = db().await;
    let q = queue(&db.pool);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            q.enqueue(
                &Sleep {
                    ms: 1_500,
                    key: None,
                },
                None,
            )
            .await
            .unwrap()
            .id,
        );
    }
    let mut w = spawn_worker(
        &db.url,
        &[
            ("FLEET_WORKER__CONCURRENCY", "1"),
            ("FLEET_WORKER__PREFETCH", "2"),
        ],
    );
    // All three claimed by the one worker, which has a single slot.
    for &id in &ids {
        wait_state(&db.pool, id, JobState::Running, Duration::from_secs(15)).await;
    }
    // Real time is the claim: the drain must wait for a handler that is mid-run, so let one
    // get into its sleep (no row says a handler has started).
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&w, libc::SIGTERM);
    let status = wait_exit(&mut w, Duration::from_secs(15));
    assert!(status.success(), "drain exits 0: {status:?}");

    let mut jobs = Vec::new();
    for &id in &ids {
        jobs.push(common::job(&db.pool, id).await);
    }
    let completed: Vec<_> = jobs
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .collect();
    assert_eq!(completed.len(), 1, "the in-flight job finished: {jobs:#?}");
    assert_eq!(completed[0].attempt, 1);
    // The other two were claimed but never started: back, with their attempt given back.
    for j in jobs.iter().filter(|j| j.state != JobState::Completed) {
        assert_eq!(j.state, JobState::Available, "{j:#?}");
        assert_eq!(j.attempt, 0, "returned without using up an attempt");
        assert_eq!(j.claim_seq, 1);
        assert!(j.errors.is_empty());
        assert!(j.lease_owner.is_none());
    }
}

/// A job that sleeps a minute, running in a fresh worker process started with `env`.
async fn minute_long_job_running(
    db: &fleet::testkit::ScratchDb,
    env: &[(&str, &str)],
) -> (i64, std::process::Child) {
    let id = queue(&db.pool)
        .enqueue(
            &Sleep {
                ms: 60_000,
                key: None,
            },
            None,
        )
        .await
        .unwrap()
        .id;
    let w = spawn_worker(&db.url, env);
    wait_state(&db.pool, id, JobState::Running, Duration::from_secs(15)).await;
    (id, w)
}

#[tokio::test]
async fn drain_deadline_interrupts_a_handler_and_it_is_retried_at_once() {
    let db = db().await;
    let (id, mut w) =
        minute_long_job_running(&db, &[("FLEET_WORKER__DRAIN_TIMEOUT", "500ms")]).await;
    signal(&w, libc::SIGTERM);
    assert!(wait_exit(&mut w, Duration::from_secs(15)).success());
    let j = common::job(&db.pool, id).await;
    assert!(
        matches!(j.state, JobState::Retryable | JobState::Available),
        "{j:#?}"
    );
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].class, ErrorClass::Interrupted);
    assert!(
        j.run_at <= chrono::Utc::now(),
        "retried at once, no backoff"
    );
}

#[tokio::test]
async fn second_signal_exits_at_once_and_the_lease_is_left_to_the_rescuer() {
    let db = db().await;
    let (id, mut w) = minute_long_job_running(&db, &[]).await;
    signal(&w, libc::SIGTERM);
    // The second signal must reach a process already draining (the first handled), not two
    // signals coalesced into one: a pause in real time is the only way to order them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    signal(&w, libc::SIGTERM);
    let status = wait_exit(&mut w, Duration::from_secs(5));
    assert!(!status.success());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "forced exit took {:?}",
        t.elapsed()
    );
    assert_eq!(
        common::job(&db.pool, id).await.state,
        JobState::Running,
        "left for the rescuer"
    );
    let mut conn = db.pool.acquire().await.unwrap();
    // As of 2.1 s from now the 2 s lease (renewed by nobody) has run out.
    let later = db_now(&db.pool).await + chrono::Duration::milliseconds(2_100);
    let r = queue::job_rescue_expired(&mut *conn, 10, &[], Some(later))
        .await
        .unwrap();
    assert_eq!(r.retried, 1);
}

#[test]
fn bad_configuration_is_an_error_naming_key_and_value() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env("FLEET_WORKER__CONCURRENCY", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker.concurrency") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn bad_flag_is_an_error_naming_it() {
    let out = Command::new(BIN)
        .args(["worker", "--concurrency", "many"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--concurrency") && err.contains("many"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["enqueue", "no.such.kind"])
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown job kind") && err.contains("no.such.kind"),
        "{err}"
    );
}
