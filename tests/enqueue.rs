//! Enqueue, idempotency keys, fencing and the fetch plan, against real Postgres.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use fleet::{
    maintenance::{CleanerConfig, JobCleaner},
    queue::{self, ErrorClass, FetchParams, JobState, QueueError},
    Queue, Registry,
};
use jobs::{Job, KindDefaults, NewJob};
use sqlx::{Connection, PgConnection};

/// A `test.flaky` row ready to insert with idempotency key `key`.
fn flaky_insert(key: &str) -> queue::JobInsert {
    queue::JobInsert {
        kind: Flaky::KIND.to_owned(),
        queue: "default".to_owned(),
        args: serde_json::json!({"succeed_on": 1}),
        priority: 0,
        run_at: None,
        max_attempts: 10,
        idempotency_key: Some(key.to_owned()),
        trace_context: None,
        parent_id: None,
        limit_key: None,
        limited: false,
    }
}

fn queue_with(pool: &sqlx::PgPool, window: Duration) -> Queue {
    let mut r = Registry::default();
    r.register_with::<Flaky>(KindDefaults {
        idempotency_window: window,
        ..KindDefaults::default()
    });
    Queue::new(pool.clone(), Arc::new(r))
}

#[tokio::test]
async fn sixteen_concurrent_enqueuers_of_one_key_create_exactly_one_job() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (q, barrier, url) = (q.clone(), barrier.clone(), db.url.clone());
        tasks.push(tokio::spawn(async move {
            // Each enqueuer on its own connection, inside its own transaction.
            let mut conn = PgConnection::connect(&url).await.unwrap();
            barrier.wait().await;
            let mut tx = conn.begin().await.unwrap();
            let r = q
                .enqueue_many_in(
                    &mut tx,
                    vec![
                        NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1}))
                            .key("campaign:42:window:7"),
                    ],
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r[0]
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let first = results[0].id;
    assert!(results.iter().all(|r| r.id == first), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "{results:?}"
    );
    let n = job_count(&db.pool).await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn rolled_back_transactional_enqueue_leaves_no_job() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let mut conn = db.pool.acquire().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    let r = q
        .enqueue_many_in(
            &mut tx,
            vec![NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k1")],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(queue::job_get(&mut *conn, r[0].id).await.unwrap().is_none());

    let mut tx = conn.begin().await.unwrap();
    let r2 = q
        .enqueue_many_in(
            &mut tx,
            vec![NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k1")],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        !r2[0].duplicate,
        "the rolled-back job must not hold the key"
    );
    let j = queue::job_get(&mut *conn, r2[0].id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Available);
}

#[tokio::test]
async fn one_duplicate_never_fails_a_bulk_insert() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let holder = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("dup"))
        .await
        .unwrap();
    let mut batch: Vec<NewJob> = (0..3000)
        .map(|i| {
            NewJob::of(&Flaky { succeed_on: 1 })
                .unwrap()
                .key(format!("k{i}"))
        })
        .collect();
    batch.insert(
        1000,
        NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("dup"),
    ); // held already
    batch.push(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k5")); // duplicate inside the batch
    batch.push(NewJob::of(&Flaky { succeed_on: 1 }).unwrap()); // no key
    let r = q.enqueue_many(batch).await.unwrap();
    assert_eq!(r.len(), 3003);
    assert_eq!(r[1000].id, holder.id);
    assert!(r[1000].duplicate);
    assert_eq!(r[3001].id, r[5].id, "in-batch duplicate returns the first");
    assert!(r[3001].duplicate);
    assert!(!r[3002].duplicate);
    assert_eq!(r.iter().filter(|e| !e.duplicate).count(), 3001);
    let n = job_count(&db.pool).await;
    assert_eq!(n, 3002, "3000 keyed + 1 keyless + the original holder");
}

#[tokio::test]
async fn key_is_free_again_once_the_job_completes_without_a_window() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let a = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let c = claim_one(&mut conn, Duration::from_secs(30)).await;
    // Still running: the key is taken.
    let dup = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    assert_eq!((dup.id, dup.duplicate), (a.id, true));
    complete(&mut conn, &c).await.unwrap();
    let b = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    assert!(!b.duplicate);
    assert_ne!(b.id, a.id);
}

#[tokio::test]
async fn key_stays_taken_for_the_window_after_completion_then_frees() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::from_millis(1500));
    let a = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let c = claim_one(&mut conn, Duration::from_secs(30)).await;
    queue::job_set_outcome(&mut conn, completion(&c, Duration::from_millis(1500)), None)
        .await
        .unwrap();
    let completed_at = db_now(&db.pool).await;
    let dup = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    assert_eq!(
        (dup.id, dup.duplicate),
        (a.id, true),
        "inside the window the completed job holds the key"
    );
    // 1.7 s later: insert at that time instead of sleeping until it.
    let later = completed_at + chrono::Duration::milliseconds(1700);
    let b = queue::job_insert_many(&mut conn, &[flaky_insert("k")], Some(later))
        .await
        .unwrap()[0];
    assert!(!b.duplicate, "after the window a new job is created");
    let old = common::job(&db.pool, a.id).await;
    assert!(!old.key_held);
}

#[tokio::test]
async fn late_completion_after_rescue_is_refused() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let a = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let stale = claim_one(&mut conn, Duration::from_millis(1)).await;
    // Rescue as of 20 ms later: the 1 ms lease has expired by then.
    let later = db_now(&db.pool).await + chrono::Duration::milliseconds(20);
    let rescued = queue::job_rescue_expired(&mut *conn, 100, &[], Some(later))
        .await
        .unwrap();
    assert_eq!(rescued.retried, 1);
    let j = common::job(&db.pool, a.id).await;
    assert_eq!(j.state, JobState::Retryable);
    assert_eq!(j.errors[0].class, ErrorClass::LeaseExpired);

    // The stale claim may not complete, fail or heartbeat the job.
    let late = complete(&mut conn, &stale).await;
    assert!(
        matches!(late, Err(QueueError::LostLease { .. })),
        "{late:?}"
    );
    let hb = queue::job_extend_leases(
        &mut *conn,
        &[(stale.id, stale.claim_seq)],
        Duration::from_secs(30),
        None,
    )
    .await
    .unwrap();
    assert!(hb.is_empty());

    // A new claim gets a new fencing token, and the old one stays refused even while running.
    queue::job_promote_due(&mut *conn, 100, Some(later))
        .await
        .unwrap();
    let fresh = claim_one(&mut conn, Duration::from_secs(30)).await;
    assert_eq!(fresh.claim_seq, stale.claim_seq + 1);
    assert_eq!(fresh.attempt, 2);
    let late = complete(&mut conn, &stale).await;
    assert!(matches!(late, Err(QueueError::LostLease { .. })));
    complete(&mut conn, &fresh).await.unwrap();
    assert_eq!(common::job(&db.pool, a.id).await.state, JobState::Completed);
}

#[tokio::test]
async fn invalid_jobs_are_rejected_with_a_reason_and_nothing_is_written() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let e = q
        .enqueue_many(vec![
            NewJob::of(&Flaky { succeed_on: 1 }).unwrap(),
            NewJob::raw("", serde_json::json!({})),
        ])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("kind must be"), "{e}");
    let e = q
        .enqueue_new(
            NewJob::of(&Flaky { succeed_on: 1 })
                .unwrap()
                .max_attempts(0),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_attempts"), "{e}");
    let n = job_count(&db.pool).await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn enqueue_refuses_an_unknown_kind_or_args_that_do_not_fit_and_writes_nothing() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let e = q
        .enqueue_many(vec![
            NewJob::of(&Flaky { succeed_on: 1 }).unwrap(),
            NewJob::raw("test.no_such_kind", serde_json::json!({})),
        ])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown job kind \"test.no_such_kind\""),
        "{e}"
    );
    assert!(
        matches!(&e, fleet::EnqueueError::UnknownKind { kind, known }
            if kind == "test.no_such_kind" && known.iter().any(|k| k == "test.flaky")),
        "the error says which kind, as a field: {e:?}"
    );
    let e = q
        .enqueue_new(NewJob::raw(
            "test.flaky",
            serde_json::json!({"succeed_on": "P-12345678"}),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("test.flaky"), "{e}");
    assert!(
        matches!(&e, fleet::EnqueueError::BadArgs { kind, .. } if kind == "test.flaky"),
        "{e:?}"
    );
    assert!(
        !format!("{e:?}").contains("P-12345678"),
        "values stay out: {e:?}"
    );
    let n = job_count(&db.pool).await;
    assert_eq!(n, 0);
}

/// The fetch must stay on the partial index with a million finished jobs in history, also
/// under a generic plan (what a prepared statement gets after five executions).
#[tokio::test]
async fn fetch_plan_stays_on_the_ready_index_with_a_million_finished_jobs() {
    let db = db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    queue::job_insert_finished_history(&mut conn, "test.history", 1_000_000)
        .await
        .unwrap();
    let q = queue_with(&db.pool, Duration::ZERO);
    q.enqueue_many(
        (0..100)
            .map(|_| NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
            .collect(),
    )
    .await
    .unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        r#"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT)
        WITH picked AS (
            SELECT id FROM fleet_jobs j
            WHERE state = 'available' AND ($1::text[] IS NULL OR queue = ANY($1))
              AND kind <> ALL($2::text[])
              AND NOT EXISTS (
                  SELECT 1 FROM fleet_paused_kinds p
                  WHERE p.kind = j.kind AND (p.drain_through_id IS NULL OR j.id > p.drain_through_id))
            ORDER BY priority, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
        SELECT id FROM picked"#,
    )
    .bind(None::<Vec<String>>)
    .bind(Vec::<String>::new())
    .bind(64i64)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let text = plan.join("\n");
    assert!(text.contains("fleet_jobs_fetch_available_idx"), "{text}");
    assert!(!text.contains("Seq Scan on fleet_jobs"), "{text}");
    // And the real fetch claims only ready jobs, quickly.
    let t = std::time::Instant::now();
    let c = queue::job_fetch_available(
        &mut conn,
        &FetchParams {
            only_kinds: None,
            queues: None,
            skip_kinds: &[],
            limited_kinds: &[],
            limit: 64,
            owner: "t",
            lease: Duration::from_secs(30),
            now: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(c.len(), 64);
    eprintln!("fetch of 64 with 1M history took {:?}\n{text}", t.elapsed());
}

#[tokio::test]
async fn cleaner_deletes_only_finished_jobs_past_their_states_retention() {
    let db = db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    queue::job_insert_finished_history(&mut conn, "test.old", 2_500)
        .await
        .unwrap(); // completed a day ago
    let q = queue_with(&db.pool, Duration::ZERO);
    let pending = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    let c = claim_one(&mut conn, Duration::from_secs(30)).await;
    complete(&mut conn, &c).await.unwrap();
    let recent = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    let hour = Duration::from_secs(3600);
    let cleaner = JobCleaner::new(
        db.pool.clone(),
        CleanerConfig {
            retention_completed: hour,
            retention_cancelled: hour,
            retention_dead: hour,
            ..CleanerConfig::default()
        },
    );
    let deleted = cleaner.run_once(None).await.unwrap();
    assert_eq!(deleted, 2_500);
    assert!(
        queue::job_get(&mut *conn, pending).await.unwrap().is_some(),
        "recently completed job kept"
    );
    assert!(
        queue::job_get(&mut *conn, recent).await.unwrap().is_some(),
        "unfinished job kept"
    );
}

/// A dead job of `test.flaky`, created and finished now.
async fn dead_job(q: &Queue, conn: &mut PgConnection) -> i64 {
    let id = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    let c = claim_one(conn, Duration::from_secs(30)).await;
    assert_eq!(c.id, id);
    let error = queue::AttemptError {
        attempt: c.attempt,
        class: ErrorClass::Fatal,
        message: "gave up".to_owned(),
        at: None,
    };
    let next = fleet::worker::NextState::Dead { error };
    let o = fleet::worker::Outcome {
        id,
        claim_seq: c.claim_seq,
        next,
    };
    queue::job_set_outcome(conn, o.row(), None).await.unwrap();
    id
}

#[tokio::test]
async fn purge_keeps_a_completed_job_whose_key_window_is_still_open() {
    let db = db().await;
    let hour = Duration::from_secs(3600);
    let q = queue_with(&db.pool, hour);
    let a = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("k"))
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let c = claim_one(&mut conn, Duration::from_secs(30)).await;
    queue::job_set_outcome(&mut conn, completion(&c, hour), None)
        .await
        .unwrap();
    let done = db_now(&db.pool).await;
    // Ten minutes on, retention of one minute: past retention, but inside the key's window.
    let at = Some(done + chrono::Duration::minutes(10));
    let minute = Duration::from_secs(60);
    let b = queue::job_prune_finished(&mut *conn, &[JobState::Completed], minute, 1000, 0, at)
        .await
        .unwrap();
    assert_eq!(b.deleted, 0, "deleting it would free the key early");
    let n = queue::job_count_prunable(&mut *conn, &[JobState::Completed], minute, at)
        .await
        .unwrap();
    assert_eq!(n, 0, "the dry run agrees");
    let dup = queue::job_insert_many(&mut conn, &[flaky_insert("k")], at)
        .await
        .unwrap()[0];
    assert_eq!(
        (dup.id, dup.duplicate),
        (a.id, true),
        "the key is still taken"
    );
    // Two hours on, the window has elapsed: the job goes.
    let later = Some(done + chrono::Duration::hours(2));
    let b = queue::job_prune_finished(&mut *conn, &[JobState::Completed], minute, 1000, 0, later)
        .await
        .unwrap();
    assert_eq!(b.deleted, 1);
}

#[tokio::test]
async fn the_key_release_reads_the_open_windows_alone_not_every_held_key() {
    let db = db().await;
    let minute = Duration::from_secs(60);
    let q = queue_with(&db.pool, minute);
    let mut conn = db.pool.acquire().await.unwrap();
    for i in 0..3 {
        q.enqueue_new(
            NewJob::of(&Flaky { succeed_on: 1 })
                .unwrap()
                .key(format!("done-{i}")),
        )
        .await
        .unwrap();
        let c = claim_one(&mut conn, Duration::from_secs(30)).await;
        queue::job_set_outcome(&mut conn, completion(&c, minute), None)
            .await
            .unwrap();
    }
    // 5,000 unfinished keyed jobs: their keys are held, with no window to end.
    q.enqueue_many(
        (0..5_000)
            .map(|i| {
                NewJob::of(&Flaky { succeed_on: 1 })
                    .unwrap()
                    .key(format!("waiting-{i}"))
            })
            .collect(),
    )
    .await
    .unwrap();
    drop(conn);
    // One connection, so the release's statistics are flushed by this test's next statement.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let (window, held) = (
        "fleet_jobs_key_window_idx",
        "fleet_jobs_idempotency_key_held_idx",
    );
    let mut c = one.acquire().await.unwrap();
    flush_stats(&mut c).await;
    let before = (
        index_tuples_read(&mut c, window).await,
        index_tuples_read(&mut c, held).await,
    );
    drop(c);
    let after_window = Some(db_now(&db.pool).await + chrono::Duration::minutes(2));
    let freed = queue::job_release_elapsed_keys(&jobs::Db::from(one.clone()), 100, after_window)
        .await
        .unwrap();
    assert_eq!(freed, 3);
    let mut c = one.acquire().await.unwrap();
    flush_stats(&mut c).await;
    let (window_reads, held_reads) = (
        index_tuples_read(&mut c, window).await - before.0,
        index_tuples_read(&mut c, held).await - before.1,
    );
    assert!(
        window_reads <= 10 && held_reads <= 10,
        "freeing 3 windows read {window_reads} window entries and {held_reads} held-key entries \
         (5,003 keys are held)"
    );
}

#[tokio::test]
async fn cleaner_frees_elapsed_key_windows_and_only_those() {
    let db = db().await;
    let minute = Duration::from_secs(60);
    let q = queue_with(&db.pool, minute);
    let mut conn = db.pool.acquire().await.unwrap();
    let done = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("done"))
        .await
        .unwrap()
        .id;
    let c = claim_one(&mut conn, Duration::from_secs(30)).await;
    queue::job_set_outcome(&mut conn, completion(&c, minute), None)
        .await
        .unwrap();
    let waiting = q
        .enqueue_new(NewJob::of(&Flaky { succeed_on: 1 }).unwrap().key("waiting"))
        .await
        .unwrap()
        .id;
    let now = db_now(&db.pool).await;
    let inside = Some(now + chrono::Duration::seconds(30));
    assert_eq!(
        queue::job_release_elapsed_keys(&db.db(), 100, inside)
            .await
            .unwrap(),
        0,
        "inside the window nothing is freed"
    );
    let after = Some(now + chrono::Duration::minutes(2));
    assert_eq!(
        queue::job_release_elapsed_keys(&db.db(), 100, after)
            .await
            .unwrap(),
        1
    );
    assert!(!common::job(&db.pool, done).await.key_held);
    assert!(
        common::job(&db.pool, waiting).await.key_held,
        "an unfinished job keeps its key"
    );
    let again = queue::job_insert_many(&mut conn, &[flaky_insert("done")], after)
        .await
        .unwrap()[0];
    assert!(!again.duplicate, "the freed key is taken by a new job");
}

#[tokio::test]
async fn purge_stops_at_the_first_window_created_after_the_cutoff() {
    let db = db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    queue::job_insert_finished_history(&mut conn, "test.old", 1_000)
        .await
        .unwrap(); // created and completed a day ago
    let q = queue_with(&db.pool, Duration::ZERO);
    let fresh: Vec<NewJob> = (0..3_000)
        .map(|_| NewJob::of(&Flaky { succeed_on: 1 }).unwrap())
        .collect();
    q.enqueue_many(fresh).await.unwrap();
    let hour = Duration::from_secs(3600);
    let first = queue::job_prune_finished(&mut *conn, &[JobState::Completed], hour, 1_000, 0, None)
        .await
        .unwrap();
    assert_eq!(first.deleted, 1_000);
    let after = first
        .next_after_id
        .expect("the first window was old: go on");
    let second =
        queue::job_prune_finished(&mut *conn, &[JobState::Completed], hour, 1_000, after, None)
            .await
            .unwrap();
    assert_eq!(
        (second.deleted, second.next_after_id),
        (0, None),
        "a window created after the cutoff ends the walk: the 2,000 jobs behind it are not read"
    );
    assert_eq!(job_count(&db.pool).await, 3_000);
}

#[tokio::test]
async fn a_dead_job_replayed_while_a_purge_waits_for_its_row_is_kept() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let mut conn = db.pool.acquire().await.unwrap();
    let id = dead_job(&q, &mut conn).await;
    // The operator's replay holds the row, uncommitted.
    let mut replay = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = replay.begin().await.unwrap();
    let filter = queue::JobFilter {
        ids: Some(vec![id]),
        ..queue::JobFilter::default()
    };
    let r = queue::job_replay(&mut tx, &filter, None).await.unwrap();
    assert_eq!(r.replayed, [id]);
    // A purge two days on (retention one day) finds the job dead in its snapshot and waits.
    let later = Some(db_now(&db.pool).await + chrono::Duration::days(2));
    let url = db.url.clone();
    let purge = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let day = Duration::from_secs(24 * 3600);
        queue::job_prune_finished(&mut conn, &[JobState::Dead], day, 1_000, 0, later)
            .await
            .unwrap()
    });
    wait_until(
        Duration::from_secs(10),
        "the purge waits on a lock",
        || async { lock_waiters(&db.pool, "%").await > 0 },
    )
    .await;
    assert!(
        !purge.is_finished(),
        "the purge waits for the replay's row lock"
    );
    tx.commit().await.unwrap();
    let b = purge.await.unwrap();
    assert_eq!(
        b.deleted, 0,
        "the replayed job is re-checked in its new version"
    );
    assert_eq!(common::job(&db.pool, id).await.state, JobState::Available);
}

/// A bulk enqueue of more than one statement's worth, without keys, is split over two
/// connections; its results still come back in input order, one job each, and a pool of one
/// connection still takes it (on that one).
#[tokio::test]
async fn a_bulk_enqueue_split_over_two_connections_returns_every_job_in_input_order() {
    let db = db().await;
    let n = fleet::queue::ENQUEUE_CHUNK * 2 + 1_234;
    for max_connections in [8, 1] {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&db.url)
            .await
            .unwrap();
        let q = queue_with(&pool, Duration::ZERO);
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1, "i": i})))
            .collect();
        let out = q.enqueue_many(jobs).await.unwrap();
        assert_eq!(out.len(), n);
        assert!(out.iter().all(|e| !e.duplicate));
        let ids: Vec<i64> = out.iter().map(|e| e.id).collect();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, (args->>'i')::bigint FROM fleet_jobs WHERE id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            rows.len(),
            n,
            "pool of {max_connections}: every job written once"
        );
        let position: std::collections::HashMap<i64, i64> = rows.into_iter().collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                position[id], i as i64,
                "pool of {max_connections}: result {i} names another job"
            );
        }
        pool.close().await;
    }
}

/// `n` jobs without keys that between them use every column an enqueue writes, with the
/// characters `COPY`'s text format must escape in each text and JSON field.
fn unkeyed_inserts(n: usize, at: chrono::DateTime<chrono::Utc>) -> Vec<queue::JobInsert> {
    (0..n)
        .map(|i| queue::JobInsert {
            kind: if i % 7 == 0 {
                "odd\tkind\\with\nbreaks".to_owned()
            } else {
                Flaky::KIND.to_owned()
            },
            queue: if i % 5 == 0 {
                "q\\N\r".to_owned()
            } else {
                "default".to_owned()
            },
            args: serde_json::json!({
                "i": i,
                "s": "back\\slash \t tab \n newline \r cr \"quote\" \\N \\. é 🚀 \u{1}",
                "nested": {"a": [1, null, true]},
            }),
            priority: (i % 3) as i16 - 1,
            run_at: match i % 4 {
                0 => None,
                1 => Some(at - chrono::Duration::seconds(30)),
                // Nanoseconds: stored truncated to the microsecond, as a bound value is.
                2 => Some(at + chrono::Duration::nanoseconds(3_600_000_000_999)),
                _ => Some(at),
            },
            max_attempts: 1 + (i % 9) as i32,
            idempotency_key: None,
            trace_context: (i % 2 == 0)
                .then(|| serde_json::json!({"traceparent": format!("00-{i:032x}-\t\\-01")})),
            parent_id: (i % 3 == 0).then_some(i as i64 + 1_000_000),
            limit_key: None,
            limited: i % 6 == 1,
        })
        .collect()
}

/// Every column a new job's row has but its id and created_at, in id order.
async fn rows_of(conn: &mut PgConnection, ids: &[i64]) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(j) - 'id' - 'created_at' FROM fleet_jobs j WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_chunk_without_keys_is_copied_into_the_same_rows_an_insert_writes() {
    let db = db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let at = chrono::Utc::now();
    let n = queue::COPY_MIN_ROWS * 2 + 5;
    let jobs = unkeyed_inserts(n, at);

    // On a pooled connection a chunk past the threshold goes by COPY; on the caller's
    // connection every chunk is an INSERT.
    let copied = queue::job_insert_many_pooled(&mut conn, &jobs, Some(at))
        .await
        .unwrap();
    let inserted = queue::job_insert_many(&mut conn, &jobs, Some(at))
        .await
        .unwrap();
    assert!(copied.iter().all(|e| !e.duplicate));
    let copied_ids: Vec<i64> = copied.iter().map(|e| e.id).collect();
    let inserted_ids: Vec<i64> = inserted.iter().map(|e| e.id).collect();
    assert!(
        copied_ids.windows(2).all(|w| w[0] < w[1]),
        "ids ascend in input order, so a queue's jobs are claimed in the order given"
    );
    let by_copy = rows_of(&mut conn, &copied_ids).await;
    let by_insert = rows_of(&mut conn, &inserted_ids).await;
    assert_eq!(by_copy.len(), n, "every copied job is written");
    for (i, (c, ins)) in by_copy.iter().zip(&by_insert).enumerate() {
        assert_eq!(
            c, ins,
            "job {i}: the copied row differs from the inserted one"
        );
    }
    let scheduled = by_copy.iter().filter(|r| r["state"] == "scheduled").count();
    assert_eq!(
        scheduled,
        (0..n).filter(|i| i % 4 == 2).count(),
        "only the jobs due after the clock are scheduled"
    );

    // On the database's own clock, a job without run_at runs at its transaction's time.
    let out = queue::job_insert_many_pooled(&mut conn, &jobs, None)
        .await
        .unwrap();
    let ids: Vec<i64> = out.iter().map(|e| e.id).collect();
    let off_clock: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs WHERE id = ANY($1) AND run_at <> created_at \
         AND (args->>'i')::int % 4 = 0",
    )
    .bind(&ids)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(off_clock, 0);
}

#[tokio::test]
async fn a_copied_chunk_with_one_bad_row_writes_nothing_wakes_no_one_and_leaves_the_connection_usable(
) {
    let db = db().await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen(queue::JOBS_CHANNEL).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let mut jobs = unkeyed_inserts(queue::COPY_MIN_ROWS * 3, chrono::Utc::now());
    // JSON allows it; jsonb refuses it.
    jobs[100].args = serde_json::json!({"s": "nul \u{0} inside"});
    let err = queue::job_insert_many_pooled(&mut conn, &jobs, None)
        .await
        .expect_err("jsonb refuses a NUL character");
    assert!(
        err.to_string()
            .contains("unsupported Unicode escape sequence"),
        "the error names what is wrong: {err}"
    );
    assert_eq!(
        job_count(&db.pool).await,
        0,
        "nothing of the chunk is written"
    );
    let woken = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        woken.is_err(),
        "a chunk rolled back wakes no worker: {woken:?}"
    );
    jobs[100].args = serde_json::json!({"s": "fine"});
    let out = queue::job_insert_many_pooled(&mut conn, &jobs, None)
        .await
        .unwrap();
    assert_eq!(
        out.len(),
        jobs.len(),
        "the same connection copies the next chunk"
    );
    assert_eq!(job_count(&db.pool).await, jobs.len() as i64);
}

#[tokio::test]
async fn a_copied_chunk_wakes_each_queue_with_a_due_job_once() {
    let db = db().await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen(queue::JOBS_CHANNEL).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let at = chrono::Utc::now();
    let n = queue::COPY_MIN_ROWS * 2;
    // Two queues: one with jobs due now, one whose jobs are all due in an hour.
    let jobs: Vec<queue::JobInsert> = unkeyed_inserts(n, at)
        .into_iter()
        .enumerate()
        .map(|(i, mut j)| {
            if i % 2 == 0 {
                j.queue = "due".to_owned();
                j.run_at = None;
            } else {
                j.queue = "later".to_owned();
                j.run_at = Some(at + chrono::Duration::hours(1));
            }
            j
        })
        .collect();
    let out = queue::job_insert_many_pooled(&mut conn, &jobs, None)
        .await
        .unwrap();
    assert_eq!(out.len(), n);
    assert_eq!(job_count(&db.pool).await, n as i64);
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the commit wakes the queue with due jobs")
        .unwrap();
    assert_eq!(woken.payload(), "due");
    let more = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        more.is_err(),
        "one wake-up per queue with due jobs, none for a queue due later: {more:?}"
    );
}

#[tokio::test]
async fn a_batch_in_a_callers_transaction_is_never_copied_and_goes_with_its_rollback() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs = || -> Vec<NewJob> {
        (0..queue::COPY_MIN_ROWS * 4)
            .map(|i| NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1, "i": i})))
            .collect()
    };
    let mut tx = conn.begin().await.unwrap();
    q.enqueue_many_in(&mut tx, jobs()).await.unwrap();
    // Dropped part way through a batch of its own, on the caller's connection.
    let dropped = tokio::time::timeout(
        Duration::from_micros(300),
        q.enqueue_many_in(&mut tx, jobs()),
    )
    .await;
    tx.rollback().await.unwrap();
    assert_eq!(
        job_count(&db.pool).await,
        0,
        "the rollback takes every job: {dropped:?}"
    );
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1, "the caller's connection is in step");
}

#[tokio::test]
async fn an_enqueue_dropped_mid_copy_leaves_whole_chunks_and_a_pool_that_still_works() {
    let db = db().await;
    let q = queue_with(&db.pool, Duration::ZERO);
    let n = fleet::queue::ENQUEUE_CHUNK * 4;
    let mut dropped = 0;
    for ms in (1..=60).step_by(3) {
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1, "i": i})))
            .collect();
        let before = job_count(&db.pool).await;
        // Dropped wherever it is when the time runs out: drawing ids, copying, committing.
        if tokio::time::timeout(Duration::from_millis(ms), q.enqueue_many(jobs))
            .await
            .is_err()
        {
            dropped += 1;
        }
        // Every connection the pool lends still answers.
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&db.pool));
        }
        for a in futures::future::join_all(answers).await {
            assert_eq!(a.expect("the pool lends only working connections"), 1);
        }
        // Whole chunks or nothing: a chunk is one transaction.
        let after = job_count(&db.pool).await;
        assert_eq!(
            (after - before) % fleet::queue::ENQUEUE_CHUNK as i64,
            0,
            "{ms} ms: {} jobs written, not whole chunks",
            after - before
        );
    }
    assert!(dropped > 0, "some enqueues were dropped part way");
}
