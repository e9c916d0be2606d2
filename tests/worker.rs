//! The worker runtime, in process, against real Postgres: outcomes, backoff, timeouts,
//! panics, scheduling, pause/resume and heartbeats.

mod common;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use common::*;
use fleet::{
    builtin::Sleep,
    queue::{self, ErrorClass, JobState},
    Queue, Registry, Worker,
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
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let id = q.enqueue(&Flaky { succeed_on: 3 }, None).await.unwrap().id;

    // Attempt 1 fails: retryable, run_at = failure time + backoff in [0.5 s, 1 s] (base 1 s).
    let ran = w.work_one().await.unwrap().expect("due");
    assert_eq!(
        (ran.id, ran.attempt, ran.next.state()),
        (id, 1, JobState::Retryable)
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.state, JobState::Retryable, "{j:#?}");
    assert_eq!(
        j.errors[0].at,
        Some(clock.get()),
        "written at the clock's time"
    );
    let gap = (j.run_at - clock.get()).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(500) && gap <= SECS(1),
        "backoff after attempt 1: {gap:?}"
    );
    // Not due before its run_at…
    clock.set(j.run_at - chrono::Duration::milliseconds(1));
    assert!(w.work_until_idle().await.unwrap().is_empty(), "ran early");
    // …due at it. Attempt 2 fails: backoff in [1 s, 2 s].
    clock.set(j.run_at);
    assert_eq!(w.work_one().await.unwrap().unwrap().attempt, 2);
    let j = common::job(&db.pool, id).await;
    let gap = (j.run_at - clock.get()).to_std().unwrap();
    assert!(
        gap >= SECS(1) && gap <= SECS(2),
        "backoff after attempt 2: {gap:?}"
    );
    clock.advance(SECS(2));
    let ran = w.work_until_idle().await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(
        (ran[0].attempt, ran[0].next.state()),
        (3, JobState::Completed)
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(
        j.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Retryable));
}

#[tokio::test]
async fn dead_after_max_attempts_keeps_every_attempts_error() {
    let db = db().await;
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let id = q
        .enqueue(&AlwaysFails {}, Some("only-once"))
        .await
        .unwrap()
        .id;
    let mut nexts = Vec::new();
    for _ in 0..5 {
        nexts.extend(
            w.work_until_idle()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.next.state()),
        );
        clock.advance(SECS(1)); // the kind's backoff cap
    }
    assert_eq!(
        nexts,
        [JobState::Retryable, JobState::Retryable, JobState::Dead],
        "three attempts (max_attempts = 3), then nothing more is due"
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.attempt, 3);
    assert_eq!(j.errors.len(), 3);
    for (i, e) in j.errors.iter().enumerate() {
        assert_eq!(e.attempt, i as i32 + 1);
        assert_eq!(e.class, ErrorClass::Retryable);
        assert_eq!(e.message, format!("boom on attempt {}", i + 1));
    }
    assert!(j.finished_at.is_some());
    assert!(!j.key_held, "a dead job releases its key");
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
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let id = q.enqueue(&Panics {}, None).await.unwrap().id;
    assert_eq!(
        w.work_one().await.unwrap().unwrap().next.state(),
        JobState::Retryable
    );
    clock.advance(SECS(1));
    assert_eq!(
        w.work_one().await.unwrap().unwrap().next.state(),
        JobState::Dead
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.errors.len(), 2);
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Panic));
    assert!(
        j.errors[0].message.contains("index out of range"),
        "{}",
        j.errors[0].message
    );
    // The worker survived its handlers' panics and keeps working.
    let ok = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    let ran = w.work_one().await.unwrap().unwrap();
    assert_eq!((ran.id, ran.next.state()), (ok, JobState::Completed));
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
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let id = q.enqueue(&Snoozes {}, None).await.unwrap().id;
    assert_eq!(
        w.work_one().await.unwrap().unwrap().next.state(),
        JobState::Retryable
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.state, JobState::Retryable);
    assert_eq!(j.attempt, 0, "a snooze gives the attempt back");
    assert_eq!(j.errors[0].class, ErrorClass::Snoozed);
    assert_eq!(j.run_at, clock.get() + chrono::Duration::seconds(30));
    clock.advance(SECS(29));
    assert!(w.work_one().await.unwrap().is_none(), "snoozed for 30 s");
    clock.advance(SECS(1));
    let ran = w.work_one().await.unwrap().unwrap();
    assert_eq!(ran.attempt, 1, "the snoozed run is still the first attempt");
}

#[tokio::test]
async fn a_job_scheduled_ahead_is_claimed_at_its_run_at_and_not_before() {
    let db = db().await;
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let run_at = clock.get() + chrono::Duration::seconds(2);
    let id = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().run_at(run_at))
        .await
        .unwrap()
        .id;
    assert_eq!(common::job(&db.pool, id).await.state, JobState::Scheduled);
    clock.set(run_at - chrono::Duration::milliseconds(1));
    assert!(
        w.work_one().await.unwrap().is_none(),
        "claimed before run_at"
    );
    assert_eq!(common::job(&db.pool, id).await.state, JobState::Scheduled);
    clock.set(run_at);
    let ran = w.work_one().await.unwrap().expect("due at run_at");
    assert_eq!((ran.id, ran.next.state()), (id, JobState::Completed));
    assert_eq!(common::job(&db.pool, id).await.attempted_at, Some(run_at));
}

#[tokio::test]
async fn the_promoter_reports_when_the_next_job_comes_due_on_the_clock_it_runs_at() {
    let db = db().await;
    let (_w, q, clock) = stepped_worker(&db.pool, registry());
    let t0 = clock.get();
    let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
    for ms in [2_000, 5_000] {
        q.enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().run_at(at(ms)))
            .await
            .unwrap();
    }
    let pool = db.pool.clone();
    let promote_at = |ms| {
        let (pool, now) = (pool.clone(), Some(at(ms)));
        async move { queue::job_promote_due(&pool, 100, now).await.unwrap() }
    };
    let p = promote_at(0).await;
    assert_eq!(
        (p.moved, p.next_due_in),
        (0, Some(Duration::from_millis(2_000)))
    );
    let p = promote_at(3_000).await;
    assert_eq!(
        (p.moved, p.next_due_in),
        (1, Some(Duration::from_millis(2_000)))
    );
    let p = promote_at(6_000).await;
    assert_eq!((p.moved, p.next_due_in), (1, None), "none waits");
    let ready: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_jobs WHERE state = 'available'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(ready, 2);
}

/// The promoter's next pass runs when the next job comes due, not a poll interval after the
/// last: with a 1 s interval, jobs due 400 and 800 ms after the worker started run on time
/// (a pass per interval would have promoted both at 1 s, the first 600 ms late).
#[tokio::test]
async fn a_running_worker_promotes_a_scheduled_job_when_it_comes_due_not_at_its_next_poll() {
    let db = db().await;
    let q = Queue::new(db.pool.clone(), registry());
    let now = db_now(&db.pool).await;
    let mut due = Vec::new();
    for ms in [400, 800] {
        let run_at = now + chrono::Duration::milliseconds(ms);
        let id = q
            .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().run_at(run_at))
            .await
            .unwrap()
            .id;
        due.push((id, run_at));
    }
    let w = start_worker(
        &db.pool,
        registry(),
        fleet::config::WorkerSettings {
            poll_interval: SECS(1),
            ..fast_settings()
        },
    );
    for (id, run_at) in due {
        let j = wait_state(&db.pool, id, JobState::Completed, SECS(10)).await;
        let attempted = j.attempted_at.expect("claimed");
        let late = (attempted - run_at).num_milliseconds();
        assert!(attempted >= run_at, "claimed before its run_at");
        assert!(late < 300, "claimed {late} ms after its run_at");
    }
    w.stop().await;
}

/// The cleaner's pass does not hold up promotion: a job comes due and runs while a pass is
/// stuck on a finished job's row lock (a long purge stands in for it: at 3,000 jobs/s a
/// ten-minute pass is 180 statements). When the lock goes, the pass finishes and deletes it.
#[tokio::test]
async fn a_job_comes_due_and_runs_while_a_cleaner_pass_waits() {
    let db = db().await;
    let (stepped, q, _clock) = stepped_worker(&db.pool, registry());
    let finished = q
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    assert_eq!(stepped.work_until_idle().await.unwrap().len(), 1);
    // Holds the finished job's row, so the cleaner's delete of it waits.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM fleet_jobs WHERE id = $1 FOR UPDATE")
        .bind(finished)
        .execute(&mut *lock)
        .await
        .unwrap();
    let w = start_worker(
        &db.pool,
        registry(),
        fleet::config::WorkerSettings {
            poll_interval: SECS(1),
            retention_completed: Duration::from_millis(1),
            ..fast_settings()
        },
    );
    let cleaner_waits = || async { lock_waiters(&db.pool, "%DELETE FROM fleet_jobs%").await == 1 };
    wait_until(
        SECS(10),
        "the cleaner's pass waiting on the lock",
        cleaner_waits,
    )
    .await;
    let run_at = db_now(&db.pool).await + chrono::Duration::milliseconds(300);
    let due = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().run_at(run_at))
        .await
        .unwrap()
        .id;
    let j = wait_state(&db.pool, due, JobState::Completed, SECS(5)).await;
    let late = (j.attempted_at.expect("claimed") - run_at).num_milliseconds();
    assert!(late < 1_000, "claimed {late} ms after its run_at");
    assert!(
        cleaner_waits().await,
        "the pass was still waiting meanwhile"
    );
    lock.rollback().await.unwrap();
    wait_until(
        SECS(10),
        "the pass deleting the job after the lock went",
        || async {
            let mut c = db.pool.acquire().await.unwrap();
            queue::job_get(&mut *c, finished).await.unwrap().is_none()
        },
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn paused_kind_is_not_claimed_by_any_worker_until_resumed() {
    let db = db().await;
    let reg = registry();
    let (w1, q, _clock) = stepped_worker(&db.pool, reg.clone());
    let w2 = Worker::new(db.pool.clone(), reg, fast_settings());
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
    // Other kinds keep running while one is paused; no worker takes the paused one.
    let ran = w1.work_until_idle().await.unwrap();
    assert_eq!(ran.iter().map(|r| r.id).collect::<Vec<_>>(), [other]);
    assert!(w2.work_until_idle().await.unwrap().is_empty());
    assert_eq!(
        common::job(&db.pool, paused).await.state,
        JobState::Available
    );
    assert!(queue::kind_resume(&mut *conn, "test.flaky").await.unwrap());
    let ran = w2.work_until_idle().await.unwrap();
    assert_eq!(ran.iter().map(|r| r.id).collect::<Vec<_>>(), [paused]);
}

/// A running worker notices a resume on its own (the resume's NOTIFY or the next poll): real
/// time is the claim, so this waits, at most 2 s, for the claim.
#[tokio::test]
async fn a_running_worker_claims_a_resumed_kind_within_two_seconds() {
    let db = db().await;
    let reg = registry();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::kind_pause(&mut *conn, "test.flaky", "tester", "incident 12")
        .await
        .unwrap();
    let paused = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Flaky { succeed_on: 1 }, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg, fast_settings());
    let resumed_at = Utc::now();
    assert!(queue::kind_resume(&mut *conn, "test.flaky").await.unwrap());
    let j = wait_state(&db.pool, paused, JobState::Completed, SECS(3)).await;
    let lag = (j.attempted_at.unwrap() - resumed_at)
        .to_std()
        .unwrap_or_default();
    assert!(lag <= SECS(2), "claimed {lag:?} after resume");
    w.stop().await;
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
    // Real time is the claim (a busy worker obeys a pause within 2 s): no clock can stand in.
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

/// A claim whose lease lapses on the clock (its worker stopped renewing it) goes back to the
/// queue at the rescuer's next pass, runs again under a new claim, and the first claim's late
/// outcome is refused by the fence.
#[tokio::test]
async fn a_lapsed_lease_is_rescued_on_the_clock_and_the_late_outcome_is_fenced_off() {
    let db = db().await;
    let (w, q, clock) = stepped_worker(&db.pool, registry());
    let id = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    // A worker claims it (lease 2 s at the clock) and goes silent.
    let mut conn = db.pool.acquire().await.unwrap();
    let lost = queue::job_fetch_available(
        &mut conn,
        &queue::FetchParams {
            only_kinds: None,
            queues: None,
            skip_kinds: &[],
            limited_kinds: &[],
            limit: 1,
            owner: "silent-worker",
            lease: SECS(2),
            now: Some(clock.get()),
        },
    )
    .await
    .unwrap()
    .pop()
    .unwrap();
    let rescuer = fleet::maintenance::JobRescuer::new(db.pool.clone(), Default::default());
    clock.advance(SECS(2));
    assert_eq!(
        rescuer.run_once(Some(clock.get())).await.unwrap().retried,
        0,
        "lease still held"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        rescuer.run_once(Some(clock.get())).await.unwrap().retried,
        1,
        "lease lapsed"
    );
    // A rescued job is due at once.
    let ran = w.work_one().await.unwrap().expect("the rescued job is due");
    assert_eq!(
        (ran.id, ran.attempt, ran.next.state()),
        (id, 2, JobState::Completed)
    );
    // The silent worker comes back with its outcome: fenced off by claim_seq.
    let late = completion(&lost, Duration::ZERO);
    let refused = queue::job_set_outcome(&mut conn, late, Some(clock.get())).await;
    assert!(
        matches!(
            refused,
            Err(queue::QueueError::LostLease { claim_seq: 1, .. })
        ),
        "the first claim's outcome must not overwrite the second's: {refused:?}"
    );
    let j = common::job(&db.pool, id).await;
    assert_eq!((j.state, j.claim_seq), (JobState::Completed, 2));
}

/// The apalis failure mode: a worker holding more claimed jobs than slots must keep every
/// claim's lease alive, so nothing is re-run by another worker. Real time is the claim (the
/// heartbeat renews leases on its own timer while a handler runs 2.5 leases long).
#[tokio::test]
async fn heartbeat_keeps_a_long_job_and_waiting_claims_alive() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let long = q
        .enqueue(
            &Sleep {
                ms: 5_000,
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

/// `n` one-millisecond sleeps without keys, enqueued in one call.
async fn enqueue_sleeps(db: &fleet::database::scratch::ScratchDb, n: usize) {
    let q = Queue::new(db.pool.clone(), registry());
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| NewJob::of(&Sleep { ms: 1, key: None }).unwrap())
        .collect();
    q.enqueue_many(jobs).await.unwrap();
}

/// A plain claim of up to `limit` jobs of any kind by `owner`, on the database's clock.
fn claim_params(limit: i64, owner: &str) -> queue::FetchParams<'_> {
    queue::FetchParams {
        only_kinds: None,
        queues: None,
        skip_kinds: &[],
        limited_kinds: &[],
        limit,
        owner,
        lease: SECS(60),
        now: None,
    }
}

#[tokio::test]
async fn the_first_claim_on_a_never_analyzed_table_walks_the_ready_index_not_the_backlog() {
    let db = db().await;
    enqueue_sleeps(&db, 20_000).await;
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
    flush_stats(&mut conn).await;
    let params = claim_params(64, "plan-test");
    let before = ready_index_tuples_read(&mut conn).await;
    let claimed = queue::job_fetch_available(&mut conn, &params)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    flush_stats(&mut conn).await;
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

/// The plans of a session's prepared statements that match `like`: (generic, custom), as its
/// `pg_prepared_statements` counts them.
async fn plans_of(conn: &mut sqlx::PgConnection, like: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint
         FROM pg_prepared_statements WHERE statement LIKE $1",
    )
    .bind(like)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The outcome write, in `pg_prepared_statements`.
const OUTCOME_WRITE: &str = "%UPDATE fleet_jobs j SET%outcome_claim_seq%";

/// The plain claim, in `pg_prepared_statements`.
const PLAIN_CLAIM: &str = "%WITH picked AS%";

#[tokio::test]
async fn the_claim_session_plans_its_claim_once_per_session_whatever_the_batch_size() {
    let db = db().await;
    enqueue_sleeps(&db, 200).await;
    let mut session = queue::ClaimSession::open(&db.db()).await.unwrap();
    let mut calls = 0;
    for limit in [1, 3, 2, 1, 5, 2, 1, 100, 2, 1] {
        let claimed =
            queue::job_fetch_available_on(&mut session, &claim_params(limit, "plan-test"))
                .await
                .unwrap();
        assert_eq!(claimed.len(), limit as usize);
        calls += 1;
    }
    let (generic, custom) = plans_of(session.conn(), PLAIN_CLAIM).await;
    assert!(
        custom == 0 && generic >= calls,
        "every one of {calls} claims ran the session's generic plan: {generic} generic, {custom} custom"
    );
}

#[tokio::test]
async fn the_outcome_writer_plans_its_write_once_per_session_whatever_the_batch_size() {
    let db = db().await;
    enqueue_sleeps(&db, 3_000).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut writer = queue::OutcomeWriter::new(&db.db());
    let params = |limit| claim_params(limit, "outcome-plan-test");
    // Batches of a few rows, the steady state's, where `auto` kept re-planning; and one of
    // 2,000, where a custom plan could prefer another join.
    let (mut calls, mut done) = (0, 0);
    for limit in [1, 2, 3, 1, 5, 2, 3, 1, 4, 2, 3, 2, 1, 2_000, 3, 1] {
        let claimed = queue::job_fetch_available(&mut conn, &params(limit))
            .await
            .unwrap();
        assert_eq!(claimed.len(), limit as usize);
        let rows: Vec<_> = claimed.iter().map(|c| completion(c, SECS(0))).collect();
        let written = writer.set_outcome_many(&rows, None).await.unwrap();
        assert_eq!(written.len(), rows.len(), "every fenced outcome is written");
        calls += 1;
        done += rows.len() as i64;
    }
    let (generic, custom) = plans_of(
        writer.open_session().expect("a session of its own"),
        OUTCOME_WRITE,
    )
    .await;
    assert!(
        custom == 0 && generic >= calls,
        "every one of {calls} calls ran the session's generic plan: {generic} generic, {custom} custom"
    );
    // A refused write (the claim no longer holds the job) and the lost-acknowledgement check
    // still answer on that session.
    let claimed = queue::job_fetch_available(&mut conn, &params(2))
        .await
        .unwrap();
    let rows: Vec<_> = claimed.iter().map(|c| completion(c, SECS(0))).collect();
    writer.set_outcome_many(&rows, None).await.unwrap();
    assert!(writer
        .set_outcome_many(&rows, None)
        .await
        .unwrap()
        .is_empty());
    let claims: Vec<(i64, i32)> = claimed.iter().map(|c| (c.id, c.claim_seq)).collect();
    let mut ours = writer.outcome_written_by(&claims).await.unwrap();
    ours.sort_unstable();
    let mut ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    assert_eq!(ours, ids);
    // The settings stay on the writer's own connection: the pool's are untouched.
    let pool_mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pool_mode, "auto");
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_jobs WHERE state = 'completed'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(completed, done + 2);
}

#[tokio::test]
async fn an_outcome_writer_whose_session_is_killed_fails_that_write_and_the_next_opens_another() {
    let db = db().await;
    enqueue_sleeps(&db, 4).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let claimed = queue::job_fetch_available(&mut conn, &claim_params(4, "outcome-kill-test"))
        .await
        .unwrap();
    let rows: Vec<_> = claimed.iter().map(|c| completion(c, SECS(0))).collect();
    let mut writer = queue::OutcomeWriter::new(&db.db());
    assert_eq!(
        writer
            .set_outcome_many(&rows[..1], None)
            .await
            .unwrap()
            .len(),
        1
    );
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(writer.open_session().unwrap())
        .await
        .unwrap();
    end_backend(&db.pool, pid).await;
    writer
        .set_outcome_many(&rows[1..2], None)
        .await
        .expect_err("the write on the killed session fails");
    assert!(
        writer.open_session().is_none(),
        "the broken session is dropped"
    );
    let written = writer.set_outcome_many(&rows[1..], None).await.unwrap();
    assert_eq!(written.len(), 3, "the next write opens another session");
    let new_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(writer.open_session().unwrap())
        .await
        .unwrap();
    assert_ne!(new_pid, pid);
}

/// How many distinct outcome statements wrote `ids`: jobs written by one statement share its
/// transaction's `finished_at`.
async fn outcome_statements(pool: &sqlx::PgPool, ids: &[i64]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT finished_at) FROM fleet_jobs WHERE id = ANY($1) AND state = 'completed'",
    )
    .bind(ids)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Runs sleeps of `ms` at concurrency 64 with `linger`, `registry` saying how `Sleep` is
/// claimed; the ids, once all completed.
async fn run_sleeps_lingering(
    db: &fleet::database::scratch::ScratchDb,
    registry: Arc<Registry>,
    ms: &[u64],
    linger: Duration,
) -> Vec<i64> {
    let q = Queue::new(db.pool.clone(), registry.clone());
    let jobs: Vec<NewJob> = ms
        .iter()
        .map(|&ms| NewJob::of(&Sleep { ms, key: None }).unwrap())
        .collect();
    let ids: Vec<i64> = q
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let w = start_worker(
        &db.pool,
        registry,
        fleet::config::WorkerSettings {
            concurrency: 64,
            completer_linger: linger,
            ..fast_settings()
        },
    );
    let n = ids.len() as i64;
    wait_until(SECS(10), "every sleep completes", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM fleet_jobs WHERE id = ANY($1) AND state = 'completed'",
        )
        .bind(&ids)
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == n
    })
    .await;
    w.stop().await;
    ids
}

#[tokio::test]
async fn a_lingering_completer_writes_outcomes_finishing_apart_in_one_statement() {
    let db = db().await;
    // Four handlers finishing 0, 2, 4 and 6 ms apart: with a 50 ms linger (and a batch worth
    // a write at 64 / 8 = 8 outcomes) the first outcome waits for the other three.
    let ids = run_sleeps_lingering(&db, registry(), &[0, 2, 4, 6], Duration::from_millis(50)).await;
    assert_eq!(outcome_statements(&db.pool, &ids).await, 1);
    // Without a linger, outcomes finishing 150 ms apart are written as they come.
    let ids = run_sleeps_lingering(&db, registry(), &[0, 150, 300, 450], Duration::ZERO).await;
    assert!(outcome_statements(&db.pool, &ids).await >= 3);
}

#[tokio::test]
async fn a_limited_kinds_outcome_is_written_at_once_whatever_the_linger() {
    let db = db().await;
    // A fleet-wide limit: a finished job's row counts against it until its outcome is written.
    let mut r = Registry::default();
    r.register_with::<Sleep>(KindDefaults {
        global_concurrency: Some(64),
        ..KindDefaults::default()
    });
    // Finishing 15 ms apart, well within the 50 ms linger that would put them in one write.
    let ids = run_sleeps_lingering(
        &db,
        Arc::new(r),
        &[0, 15, 30, 45],
        Duration::from_millis(50),
    )
    .await;
    assert!(outcome_statements(&db.pool, &ids).await >= 3);
}
