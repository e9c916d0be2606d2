//! The worker runtime, in process, against real Postgres: outcomes, backoff, timeouts,
//! panics, scheduling, pause/resume and heartbeats.

mod common;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use common::*;
use fleet::{
    builtin::Sleep,
    queue::{self, ErrorClass, JobState},
    Queue, Registry,
};
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn registry() -> Arc<Registry> {
    let quick = KindDefaults {
        backoff_base: Duration::from_millis(100),
        backoff_cap: SECS(1),
        ..KindDefaults::default()
    };
    let mut r = Registry::default();
    r.register_with::<Flaky>(KindDefaults {
        backoff_base: SECS(1),
        backoff_cap: SECS(10),
        max_attempts: 5,
        ..KindDefaults::default()
    })
    .register_with::<AlwaysFails>(KindDefaults {
        max_attempts: 3,
        ..quick.clone()
    })
    .register_with::<Panics>(KindDefaults {
        max_attempts: 2,
        ..quick.clone()
    })
    .register_with::<Discards>(quick.clone())
    .register_with::<Snoozes>(quick.clone())
    .register_with::<Strict>(quick.clone())
    .register_with::<Stubborn>(KindDefaults {
        timeout: Duration::from_millis(300),
        max_attempts: 1,
        ..quick.clone()
    })
    .register::<Sleep>();
    Arc::new(r)
}

#[tokio::test]
async fn retry_then_succeed_writes_exponential_backoff_into_run_at() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let id = q.enqueue(&Flaky { succeed_on: 3 }, None).await.unwrap().id;
    let w = start_worker(&db.pool, reg, fast_settings());

    // After attempt 1 fails: retryable, run_at = failure time + backoff in [0.5s, 1s].
    let j = wait_for(&db.pool, id, SECS(5), "first failure", |j| {
        j.errors.len() == 1
    })
    .await;
    assert_eq!(j.state, JobState::Retryable, "{j:#?}");
    let gap = (j.run_at - j.errors[0].at.unwrap()).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(500) && gap <= SECS(1),
        "backoff after attempt 1: {gap:?}"
    );

    // After attempt 2 fails: backoff in [1s, 2s].
    let j = wait_for(&db.pool, id, SECS(5), "second failure", |j| {
        j.errors.len() == 2
    })
    .await;
    if j.state == JobState::Retryable {
        let gap = (j.run_at - j.errors[1].at.unwrap()).to_std().unwrap();
        assert!(
            gap >= SECS(1) && gap <= SECS(2),
            "backoff after attempt 2: {gap:?}"
        );
    }
    let j = wait_state(&db.pool, id, JobState::Completed, SECS(6)).await;
    assert_eq!(j.attempt, 3);
    assert_eq!(
        j.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Retryable));
    // The retry did not run before its run_at.
    assert!(j.attempted_at.unwrap() >= j.errors[1].at.unwrap() + chrono::Duration::seconds(1));
    w.stop().await;
}

#[tokio::test]
async fn dead_after_max_attempts_keeps_every_attempts_error() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let id = q
        .enqueue(&AlwaysFails {}, Some("only-once"))
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(10)).await;
    assert_eq!(j.attempt, 3);
    assert_eq!(j.errors.len(), 3);
    for (i, e) in j.errors.iter().enumerate() {
        assert_eq!(e.attempt, i as i32 + 1);
        assert_eq!(e.class, ErrorClass::Retryable);
        assert_eq!(e.message, format!("boom on attempt {}", i + 1));
    }
    assert!(j.finished_at.is_some());
    assert!(!j.key_held, "a dead job releases its key");
    w.stop().await;
}

#[tokio::test]
async fn unknown_kind_and_bad_payload_are_dead_at_once_not_retried() {
    let db = db().await;
    let reg = registry();
    // What an older or buggy producer left behind: the enqueue API itself refuses both.
    let unknown = insert_unchecked(&db.pool, "test.no_such_kind", serde_json::json!({})).await;
    let bad = insert_unchecked(
        &db.pool,
        "test.strict",
        serde_json::json!({"n": "P-12345678"}),
    )
    .await;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_state(&db.pool, unknown, JobState::Dead, SECS(5)).await;
    assert_eq!((j.attempt, j.errors.len()), (1, 1));
    assert_eq!(j.errors[0].class, ErrorClass::UnknownKind);
    assert!(
        j.errors[0].message.contains("test.no_such_kind"),
        "{}",
        j.errors[0].message
    );

    let j = wait_state(&db.pool, bad, JobState::Dead, SECS(5)).await;
    assert_eq!((j.attempt, j.errors.len()), (1, 1));
    assert_eq!(j.errors[0].class, ErrorClass::BadArgs);
    assert!(
        j.errors[0].message.contains("test.strict"),
        "{}",
        j.errors[0].message
    );
    assert!(
        !j.errors[0].message.contains("P-12345678"),
        "payload values stay out of errors"
    );
    w.stop().await;
}

#[tokio::test]
async fn handler_discard_is_dead_at_once_with_its_reason() {
    let db = db().await;
    let reg = registry();
    let id = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Discards {}, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(5)).await;
    assert_eq!(j.attempt, 1);
    assert_eq!(j.errors[0].class, ErrorClass::Fatal);
    assert_eq!(j.errors[0].message, "campaign no longer exists");
    w.stop().await;
}

#[tokio::test]
async fn panic_is_caught_recorded_and_treated_as_a_failure() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let id = q.enqueue(&Panics {}, None).await.unwrap().id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(8)).await;
    assert_eq!(j.errors.len(), 2);
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Panic));
    assert!(
        j.errors[0].message.contains("index out of range"),
        "{}",
        j.errors[0].message
    );
    // The worker survived its handlers' panics and keeps working.
    let ok = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    wait_state(&db.pool, ok, JobState::Completed, SECS(5)).await;
    w.stop().await;
}

#[tokio::test]
async fn per_kind_timeout_cancels_the_handler_and_fails_the_attempt() {
    let db = db().await;
    let reg = registry();
    let id = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Stubborn { ms: 60_000 }, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let started = std::time::Instant::now();
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(10)).await;
    assert_eq!(j.errors[0].class, ErrorClass::Timeout);
    assert!(
        j.errors[0].message.contains("300ms"),
        "{}",
        j.errors[0].message
    );
    assert!(
        started.elapsed() < SECS(8),
        "the 60 s handler was aborted, not awaited"
    );
    w.stop().await;
}

#[tokio::test]
async fn snooze_retries_later_without_charging_an_attempt() {
    let db = db().await;
    let reg = registry();
    let id = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Snoozes {}, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_for(&db.pool, id, SECS(5), "snoozed", |j| !j.errors.is_empty()).await;
    assert_eq!(j.state, JobState::Retryable);
    assert_eq!(j.attempt, 0, "a snooze gives the attempt back");
    assert_eq!(j.errors[0].class, ErrorClass::Snoozed);
    let gap = (j.run_at - j.errors[0].at.unwrap()).to_std().unwrap();
    assert!(gap >= SECS(29) && gap <= SECS(31), "{gap:?}");
    w.stop().await;
}

#[tokio::test]
async fn job_scheduled_two_seconds_ahead_runs_two_seconds_later_give_or_take_one() {
    let db = db().await;
    let reg = registry();
    let w = start_worker(
        &db.pool,
        reg.clone(),
        fleet::config::WorkerSettings::default(),
    );
    let q = Queue::new(db.pool.clone(), reg);
    let t0 = Utc::now();
    let id = q
        .enqueue_new(
            NewJob::of(&Flaky { succeed_on: 1 })
                .unwrap()
                .run_at(t0 + chrono::Duration::seconds(2)),
        )
        .await
        .unwrap()
        .id;
    assert_eq!(common::job(&db.pool, id).await.state, JobState::Scheduled);
    let j = wait_state(&db.pool, id, JobState::Completed, SECS(6)).await;
    let ran_after = (j.attempted_at.unwrap() - t0).to_std().unwrap();
    assert!(
        ran_after >= SECS(1) && ran_after <= SECS(3),
        "ran {ran_after:?} after enqueue"
    );
    assert!(j.attempted_at.unwrap() >= j.run_at, "never before run_at");
    w.stop().await;
}

#[tokio::test]
async fn paused_kind_is_not_claimed_by_any_worker_until_resumed() {
    let db = db().await;
    let reg = registry();
    let w1 = start_worker(&db.pool, reg.clone(), fast_settings());
    let w2 = start_worker(&db.pool, reg.clone(), fast_settings());
    let q = Queue::new(db.pool.clone(), reg);
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(
        queue::kind_pause(&mut *conn, "test.flaky", "tester", "incident 12")
            .await
            .unwrap()
    );
    assert!(
        !queue::kind_pause(&mut *conn, "test.flaky", "tester", "again")
            .await
            .unwrap()
    );
    let paused = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    let other = q
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    // Other kinds keep running while one is paused.
    wait_state(&db.pool, other, JobState::Completed, SECS(3)).await;
    tokio::time::sleep(SECS(2)).await;
    assert_eq!(
        common::job(&db.pool, paused).await.state,
        JobState::Available
    );

    let resumed_at = Utc::now();
    assert!(queue::kind_resume(&mut *conn, "test.flaky").await.unwrap());
    let j = wait_state(&db.pool, paused, JobState::Completed, SECS(3)).await;
    let lag = (j.attempted_at.unwrap() - resumed_at)
        .to_std()
        .unwrap_or_default();
    assert!(lag <= SECS(2), "claimed {lag:?} after resume");
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test]
async fn pause_is_obeyed_within_two_seconds_by_a_busy_worker() {
    let db = db().await;
    let reg = registry();
    let w = start_worker(&db.pool, reg.clone(), fast_settings());
    let q = Queue::new(db.pool.clone(), reg);
    // Keep the kind flowing, then pause it mid-stream.
    for _ in 0..20 {
        q.enqueue(&Sleep { ms: 5, key: None }, None).await.unwrap();
    }
    let mut conn = db.pool.acquire().await.unwrap();
    queue::kind_pause(&mut *conn, "fleet.sleep", "tester", "")
        .await
        .unwrap();
    let paused_at = Utc::now();
    let ids: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(
                q.enqueue(&Sleep { ms: 5, key: None }, None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        v
    };
    tokio::time::sleep(SECS(2)).await;
    let late_claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' AND attempted_at > $1 + interval '2 seconds'",
    )
    .bind(paused_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(late_claims, 0);
    for id in ids {
        assert_eq!(common::job(&db.pool, id).await.state, JobState::Available);
    }
    w.stop().await;
}

/// The apalis failure mode: a worker holding more claimed jobs than slots must keep every
/// claim's lease alive, so nothing is re-run by another worker.
#[tokio::test]
async fn heartbeat_keeps_a_ten_second_job_and_waiting_claims_alive() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let long = q
        .enqueue(
            &Sleep {
                ms: 10_000,
                key: None,
            },
            None,
        )
        .await
        .unwrap()
        .id;
    let waiting: Vec<i64> = vec![
        q.enqueue(&Sleep { ms: 50, key: None }, None)
            .await
            .unwrap()
            .id,
        q.enqueue(&Sleep { ms: 50, key: None }, None)
            .await
            .unwrap()
            .id,
    ];
    let cfg = fleet::config::WorkerSettings {
        concurrency: 1,
        prefetch: 2,
        ..fast_settings() // lease 2 s, heartbeat 400 ms, rescue every 300 ms
    };
    let w = start_worker(&db.pool, reg.clone(), cfg);
    // All three are claimed by the first worker while only one runs. The thief starts only
    // after that, so it can get a job solely by stealing a lapsed lease.
    for id in std::iter::once(long).chain(waiting.iter().copied()) {
        let j = common::wait_state(&db.pool, id, JobState::Running, SECS(5)).await;
        assert_eq!(j.lease_owner.as_deref(), Some(w.id.as_str()), "job {id}");
    }
    let thief = start_worker(&db.pool, reg, fast_settings());
    for id in std::iter::once(long).chain(waiting.iter().copied()) {
        let j = wait_state(&db.pool, id, JobState::Completed, SECS(15)).await;
        assert_eq!(
            j.claim_seq, 1,
            "job {id} was claimed more than once: {j:#?}"
        );
        assert_eq!(j.attempt, 1);
        assert!(j.errors.is_empty(), "{:?}", j.errors);
    }
    w.stop().await;
    thief.stop().await;
}

/// Enqueues a follow-up of a kind nobody registered: a bug no retry can fix.
#[derive(Debug, Serialize, Deserialize)]
struct FollowsUpWithAnUnknownKind {}
impl Job for FollowsUpWithAnUnknownKind {
    const KIND: &'static str = "test.follows_up_with_an_unknown_kind";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut conn = ctx.db.begin().await?;
        let follow_up = NewJob::raw("test.never_registered", serde_json::json!({}));
        ctx.enqueuer
            .enqueue_many(&mut conn, vec![follow_up])
            .await?;
        conn.commit().await?;
        Ok(())
    }
}

#[tokio::test]
async fn an_invalid_follow_up_makes_the_job_dead_at_once_with_the_reason() {
    let db = db().await;
    let mut r = Registry::default();
    r.register::<FollowsUpWithAnUnknownKind>();
    let reg = Arc::new(r);
    let id = Queue::new(db.pool.clone(), reg.clone())
        .enqueue_new(
            NewJob::of(&FollowsUpWithAnUnknownKind {})
                .unwrap()
                .max_attempts(5),
        )
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(5)).await;
    assert_eq!((j.attempt, j.errors.len()), (1, 1), "not retried: {j:#?}");
    assert_eq!(j.errors[0].class, ErrorClass::Fatal);
    assert!(
        j.errors[0].message.contains("test.never_registered"),
        "{}",
        j.errors[0].message
    );
    w.stop().await;
}

/// Enqueues one `test.flaky` follow-up.
#[derive(Debug, Serialize, Deserialize)]
struct FollowsUp {}
impl Job for FollowsUp {
    const KIND: &'static str = "test.follows_up";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut conn = ctx.db.begin().await?;
        let follow_up = NewJob::of(&Flaky { succeed_on: 1 }).map_err(JobError::fatal)?;
        ctx.enqueuer
            .enqueue_many(&mut conn, vec![follow_up])
            .await?;
        conn.commit().await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_follow_up_records_the_job_that_enqueued_it() {
    let db = db().await;
    let mut r = Registry::default();
    r.register::<FollowsUp>().register::<Flaky>();
    let reg = Arc::new(r);
    let parent = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&FollowsUp {}, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    wait_state(&db.pool, parent, JobState::Completed, SECS(5)).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let children = queue::job_list_children(&mut *conn, parent).await.unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].kind, "test.flaky");
    assert_eq!(
        common::job(&db.pool, children[0].id).await.parent_id,
        Some(parent)
    );
    assert_eq!(common::job(&db.pool, parent).await.parent_id, None);
    w.stop().await;
}

#[tokio::test]
async fn the_first_claim_on_a_never_analyzed_table_walks_the_ready_index_not_the_backlog() {
    let db = db().await;
    let q = Queue::new(db.pool.clone(), registry());
    let backlog: Vec<NewJob> = (0..20_000)
        .map(|_| NewJob::of(&Sleep { ms: 1, key: None }).unwrap())
        .collect();
    q.enqueue_many(backlog).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let analyzed: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables
         WHERE relname = 'fleet_jobs'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(analyzed.is_none(), "the table must be fresh for this claim");
    // Index tuples the claim reads: ~64 for the ordered walk, the whole backlog for a bitmap
    // scan plus sort.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    let params = queue::FetchParams {
        queues: None,
        skip_kinds: &[],
        limited_kinds: &[],
        limit: 64,
        owner: "plan-test",
        lease: SECS(60),
        now: None,
    };
    let before = ready_index_tuples_read(&mut conn).await;
    let claimed = queue::job_fetch_available(&mut conn, &params)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    // The flush happens at the end of the transaction that asked for it; this is the next one.
    let after = ready_index_tuples_read(&mut conn).await;
    assert!(
        after - before < 1_000,
        "the claim read {} index tuples for 64 jobs",
        after - before
    );

    // The workers' claim session: its plans are pinned for the whole session, so its
    // one-statement claim (no transaction of its own) walks the same index.
    let mut session = queue::ClaimSession::open(&db.db()).await.unwrap();
    let before = ready_index_tuples_read(&mut conn).await;
    let claimed = queue::job_fetch_available_on(&mut session, &params)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    for flush in ["SELECT pg_stat_force_next_flush()", "SELECT 1"] {
        sqlx::query(flush).execute(session.conn()).await.unwrap();
    }
    let after = ready_index_tuples_read(&mut conn).await;
    assert!(
        after - before < 1_000,
        "the session's claim read {} index tuples for 64 jobs",
        after - before
    );
    // The session's settings stay on its own connection: the pool's are untouched.
    let pool_seqscan: String = sqlx::query_scalar("SHOW enable_seqscan")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pool_seqscan, "on");
}
