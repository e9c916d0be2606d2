//! Operator commands (`fleet queue …`) against real Postgres and real workers.

mod common;

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use fleet::{
    builtin::Sleep,
    ops::Ops,
    queue::{self, ErrorClass, JobFilter, JobState},
    Queue, Registry,
};
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Fails until the (test-local) provider outage is over.
static OUTAGE_OVER: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Serialize, Deserialize)]
struct NeedsProvider {}
impl Job for NeedsProvider {
    const KIND: &'static str = "test.needs_provider";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        if OUTAGE_OVER.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(JobError::retryable("provider unavailable (503)"))
        }
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::default();
    r.register_with::<NeedsProvider>(KindDefaults {
        max_attempts: 2,
        backoff_base: Duration::from_millis(50),
        ..KindDefaults::default()
    })
    .register_with::<Flaky>(KindDefaults::default())
    .register::<Sleep>();
    Arc::new(r)
}

fn ops(pool: &sqlx::PgPool, reg: &Registry) -> Ops {
    Ops::new(pool.clone(), reg.kind_names(), "alice")
}

/// The engine's audit rows of `action` (its own table: the domain's `audit_log` has none).
async fn audit_rows(pool: &sqlx::PgPool, action: &str) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as("SELECT actor, metadata FROM fleet_audit WHERE action = $1 ORDER BY created_at")
        .bind(action)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Enqueues a job that runs for a minute once claimed; its id.
async fn enqueue_minute_sleep(pool: &sqlx::PgPool, reg: &Arc<Registry>) -> i64 {
    let sleep = Sleep {
        ms: 60_000,
        key: None,
    };
    let q = Queue::new(pool.clone(), reg.clone());
    q.enqueue(&sleep, None).await.unwrap().id
}

/// The filter selecting job `id` alone.
fn by_id(id: i64) -> JobFilter {
    JobFilter {
        ids: Some(vec![id]),
        ..JobFilter::default()
    }
}

#[tokio::test]
async fn replay_dry_run_changes_nothing_and_the_real_replay_runs_the_jobs() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(q.enqueue(&NeedsProvider {}, None).await.unwrap().id);
    }
    let w = start_worker(&db.pool, reg.clone(), fast_settings());
    for &id in &ids {
        let j = wait_state(&db.pool, id, JobState::Dead, SECS(10)).await;
        assert_eq!(j.errors.len(), 2);
    }
    let o = ops(&db.pool, &reg);
    let filter = JobFilter {
        kind: Some("test.needs_provider".into()),
        states: Some(vec![JobState::Dead]),
        ..JobFilter::default()
    };

    let dry = o.replay(&filter, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.result.replayed, ids,
        "the dry run reports what would change"
    );
    // A replay would have made them available at once: no wait is needed to see it did not.
    for &id in &ids {
        assert_eq!(
            common::job(&db.pool, id).await.state,
            JobState::Dead,
            "dry run changed nothing"
        );
    }
    assert!(
        audit_rows(&db.pool, "job.replay").await.is_empty(),
        "a dry run writes no audit row"
    );

    OUTAGE_OVER.store(true, Ordering::SeqCst);
    let real = o.replay(&filter, false).await.unwrap();
    assert_eq!(real.result.replayed, ids);
    for &id in &ids {
        let j = wait_state(&db.pool, id, JobState::Completed, SECS(5)).await;
        assert_eq!(j.attempt, 1, "a fresh attempt budget");
        assert_eq!(j.errors.len(), 2, "the history of the dead run is kept");
    }
    let audit = audit_rows(&db.pool, "job.replay").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "alice");
    assert_eq!(audit[0].1["replayed"], 3);
    w.stop().await;
}

#[tokio::test]
async fn replay_skips_a_job_whose_key_another_job_now_holds() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let first = q
        .enqueue_new(NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1})).key("k"))
        .await
        .unwrap()
        .id;
    let o = ops(&db.pool, &reg);
    o.cancel(
        &JobFilter {
            ids: Some(vec![first]),
            ..JobFilter::default()
        },
        false,
    )
    .await
    .unwrap();
    let second = q
        .enqueue_new(NewJob::raw("test.flaky", serde_json::json!({"succeed_on": 1})).key("k"))
        .await
        .unwrap();
    assert!(!second.duplicate, "a cancelled job releases its key");
    let r = o
        .replay(
            &JobFilter {
                ids: Some(vec![first]),
                ..JobFilter::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(r.result.replayed.is_empty());
    assert_eq!(r.result.skipped.len(), 1);
    assert_eq!(
        common::job(&db.pool, first).await.state,
        JobState::Cancelled
    );
}

#[tokio::test]
async fn cancel_stops_a_running_job_at_once_and_the_worker_cannot_overwrite_it() {
    let db = db().await;
    let reg = registry();
    let id = enqueue_minute_sleep(&db.pool, &reg).await;
    // A heartbeat far slower than the assertion window: only the cancel notification can stop
    // the handler in time.
    let cfg = fleet::config::WorkerSettings {
        lease: SECS(120),
        heartbeat_interval: SECS(60),
        ..fast_settings()
    };
    let w = Worker::spawn(&db.pool, reg.clone(), cfg);
    wait_state(&db.pool, id, JobState::Running, SECS(5)).await;

    let o = ops(&db.pool, &reg);
    let dry = o.cancel(&by_id(id), true).await.unwrap();
    assert_eq!(
        dry.result,
        vec![fleet::queue::CancelledJob {
            id,
            was: "running".to_owned()
        }]
    );
    assert_eq!(
        common::job(&db.pool, id).await.state,
        JobState::Running,
        "dry run changed nothing"
    );

    let r = o.cancel(&by_id(id), false).await.unwrap();
    assert_eq!(
        r.result,
        vec![fleet::queue::CancelledJob {
            id,
            was: "running".to_owned()
        }]
    );
    // The handler stops: the worker's refused outcome shows up well before any heartbeat.
    let counters = w.counters.clone();
    let deadline = std::time::Instant::now() + SECS(5);
    while counters.lost.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "handler was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let j = common::job(&db.pool, id).await;
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.errors.last().unwrap().class, ErrorClass::Cancelled);
    assert!(j.errors.last().unwrap().message.contains("alice"));
    assert_eq!(audit_rows(&db.pool, "job.cancel").await.len(), 1);
    w.stop().await;
}

/// Drain = hold new intake, finish what is queued and running, then stay paused: the backlog
/// (more jobs than the worker has slots) all completes, a job enqueued during the drain is
/// held, another kind keeps flowing, and only `resume` lets the held job run.
#[tokio::test]
async fn drain_finishes_the_backlog_holds_new_intake_and_other_kinds_keep_running() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let w = start_worker(&db.pool, reg.clone(), fast_settings()); // 4 slots
    let backlog: Vec<i64> = q
        .enqueue_many(
            (0..10)
                .map(|_| NewJob::of(&Sleep { ms: 400, key: None }).unwrap())
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    wait_state(&db.pool, backlog[0], JobState::Running, SECS(5)).await;
    let o = Arc::new(ops(&db.pool, &reg));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let drain = {
        let (o, seen) = (o.clone(), seen.clone());
        tokio::spawn(async move {
            o.drain(&["fleet.sleep".to_owned()], SECS(30), false, |c| {
                seen.lock().unwrap().push(*c)
            })
            .await
        })
    };
    let pool = db.pool.clone();
    common::wait_until(SECS(5), "the drain to begin", move || {
        let pool = pool.clone();
        async move { !queue::kind_list_paused(&pool).await.unwrap().is_empty() }
    })
    .await;
    let late = q
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    // Another kind keeps flowing during the drain.
    let other = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    wait_state(&db.pool, other, JobState::Completed, SECS(3)).await;

    let r = drain.await.unwrap().unwrap();
    assert!(r.result.drained);
    assert_eq!(
        (r.result.backlog, r.result.running, r.result.held),
        (0, 0, 1)
    );
    for &id in &backlog {
        let j = common::job(&db.pool, id).await;
        assert_eq!(j.state, JobState::Completed, "backlog job {id} ran");
        assert_eq!(j.claim_seq, 1, "backlog job {id} ran once");
    }
    let first = seen.lock().unwrap()[0];
    assert!(
        first.backlog > 0,
        "the drain saw a backlog to finish: {first:?}"
    );
    assert_eq!(
        common::job(&db.pool, late).await.state,
        JobState::Available,
        "intake during the drain is held, durable"
    );
    // After the drain the kind is fully paused, so nothing more of it starts.
    let paused = queue::kind_list_paused(&db.pool).await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].draining_through_id, None);
    let audit = audit_rows(&db.pool, "kind.drain").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "alice");
    let stepped = fleet::Worker::new(db.pool.clone(), reg.clone(), fast_settings());
    assert!(
        stepped.work_until_idle().await.unwrap().is_empty(),
        "nothing of it is claimed"
    );
    assert_eq!(common::job(&db.pool, late).await.state, JobState::Available);
    o.resume("fleet.sleep", false).await.unwrap();
    wait_state(&db.pool, late, JobState::Completed, SECS(3)).await;
    w.stop().await;
}

/// A drain must not loosen the kill switch: a fully paused kind's queue is held, not run, and
/// the drain only waits for what is running.
#[tokio::test]
async fn drain_of_a_paused_kind_holds_its_queue_instead_of_running_it() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let o = ops(&db.pool, &reg);
    o.pause("fleet.sleep", "incident 7", false).await.unwrap();
    let queued = q
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    let w = start_worker(&db.pool, reg.clone(), fast_settings());
    let dry = o
        .drain(&["fleet.sleep".to_owned()], SECS(10), true, |_| {})
        .await
        .unwrap();
    assert_eq!((dry.result.backlog, dry.result.held), (0, 1));
    let r = o
        .drain(&["fleet.sleep".to_owned()], SECS(10), false, |_| {})
        .await
        .unwrap();
    assert!(r.result.drained);
    assert_eq!(r.result.already_paused, vec!["fleet.sleep".to_owned()]);
    assert_eq!(r.result.held, 1);
    let stepped = fleet::Worker::new(db.pool.clone(), reg.clone(), fast_settings());
    assert!(
        stepped.work_until_idle().await.unwrap().is_empty(),
        "nothing of it is claimed"
    );
    assert_eq!(
        common::job(&db.pool, queued).await.state,
        JobState::Available
    );
    let paused = queue::kind_list_paused(&db.pool).await.unwrap();
    assert_eq!(paused[0].reason, "incident 7", "the pause is untouched");
    w.stop().await;
}

/// Pausing a draining kind stops its backlog at once (the kill switch wins over a drain), and
/// a drain that times out leaves its kinds fully paused.
#[tokio::test]
async fn pause_overrides_a_drain_and_a_timed_out_drain_leaves_the_kind_paused() {
    let db = db().await;
    let reg = registry();
    let q = Queue::new(db.pool.clone(), reg.clone());
    let mut conn = db.pool.acquire().await.unwrap();
    let before = q
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    let cutoff = queue::kind_drain_start(&mut *conn, "fleet.sleep", "bob")
        .await
        .unwrap();
    assert_eq!(cutoff, Some(before));
    assert!(
        queue::kind_pause(&mut *conn, "fleet.sleep", "carol", "stop it")
            .await
            .unwrap()
    );
    let stepped = fleet::Worker::new(db.pool.clone(), reg.clone(), fast_settings());
    assert!(stepped.work_until_idle().await.unwrap().is_empty());
    assert_eq!(
        common::job(&db.pool, before).await.state,
        JobState::Available,
        "a paused kind's backlog does not run"
    );
    assert!(queue::kind_resume(&mut *conn, "fleet.sleep").await.unwrap());

    // No worker at all: the backlog cannot finish, so the drain times out, fully paused.
    let o = ops(&db.pool, &reg);
    let err = o
        .drain(
            &["fleet.sleep".to_owned()],
            Duration::from_millis(600),
            false,
            |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timed out") && err.contains("1 queued"),
        "{err}"
    );
    let paused = queue::kind_list_paused(&mut *conn).await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].draining_through_id, None);
}

#[tokio::test]
async fn prune_deletes_only_finished_jobs_older_than_asked_and_audits_each_batch() {
    let db = db().await;
    let reg = registry();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::job_insert_finished_history(&mut conn, "test.flaky", 25_000)
        .await
        .unwrap(); // finished a day ago
    let fresh = Queue::new(db.pool.clone(), reg.clone())
        .enqueue(&Flaky { succeed_on: 1 }, None)
        .await
        .unwrap()
        .id;
    let o = ops(&db.pool, &reg);
    let dry = o
        .prune(SECS(3600), &[JobState::Completed], true)
        .await
        .unwrap();
    assert_eq!(dry.result, 25_000);
    let n = job_count(&db.pool).await;
    assert_eq!(n, 25_001, "dry run deleted nothing");
    let real = o
        .prune(SECS(3600), &[JobState::Completed], false)
        .await
        .unwrap();
    assert_eq!(real.result, 25_000);
    let n = job_count(&db.pool).await;
    assert_eq!(n, 1);
    assert_eq!(
        common::job(&db.pool, fresh).await.state,
        JobState::Available
    );
    // One audit row per committed batch, each written in that batch's transaction.
    let rows = audit_rows(&db.pool, "job.prune").await;
    let per_batch: Vec<i64> = rows
        .iter()
        .map(|r| r.1["deleted"].as_i64().unwrap())
        .collect();
    assert_eq!(per_batch, [10_000, 10_000, 5_000]);
}

#[tokio::test]
async fn bad_filters_and_unknown_kinds_are_clear_errors() {
    let db = db().await;
    let reg = registry();
    let o = ops(&db.pool, &reg);
    let e = o
        .pause("no.such.kind", "", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown job kind") && e.contains("no.such.kind"),
        "{e}"
    );
    let e = o
        .cancel(&JobFilter::default(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs job ids or a filter"), "{e}");
    let e = o
        .replay(
            &JobFilter {
                states: Some(vec![JobState::Completed]),
                ..JobFilter::default()
            },
            false,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("state completed is not one of them"), "{e}");
    let now = chrono::Utc::now();
    let e = o
        .list(
            &JobFilter {
                since: Some(now),
                until: Some(now - chrono::Duration::hours(1)),
                ..JobFilter::default()
            },
            10,
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("created since"), "{e}");
    let e = o
        .prune(SECS(3600), &[JobState::Running], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not final"), "{e}");
    let e = o.show(987_654).await.unwrap_err().to_string();
    assert!(e.contains("987654"), "{e}");
}

#[tokio::test]
async fn cli_speaks_json_and_names_bad_flags() {
    let db = db().await;
    let reg = registry();
    let id = Queue::new(db.pool.clone(), reg)
        .enqueue(&Sleep { ms: 1, key: None }, None)
        .await
        .unwrap()
        .id;
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("queue")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("USER", "bob")
            .output()
            .unwrap()
    };
    let out = run(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats[0]["kind"], "fleet.sleep");
    assert_eq!(stats[0]["states"]["available"], 1);

    let out = run(&["list", "--kind", "fleet.sleep", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id);

    let out = run(&["cancel", "--id", &id.to_string(), "--dry-run", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["actor"], "bob");
    assert_eq!(common::job(&db.pool, id).await.state, JobState::Available);

    let out = run(&["list", "--state", "bogus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("--state"), "{err}");

    let out = run(&["list", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last tuesday"));

    let out = run(&["pause", "no.such.kind"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job kind"));
}

/// A worker with direct access to its counters.
struct Worker {
    inner: RunningWorker,
    counters: Arc<fleet::worker::WorkerCounters>,
}

impl Worker {
    fn spawn(pool: &sqlx::PgPool, reg: Arc<Registry>, cfg: fleet::config::WorkerSettings) -> Self {
        let w = fleet::Worker::new(pool.clone(), reg, cfg);
        let counters = w.counters();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(w.run(shutdown.clone()));
        Self {
            inner: RunningWorker {
                handle,
                shutdown,
                id: String::new(),
            },
            counters,
        }
    }
    async fn stop(self) {
        self.inner.stop().await;
    }
}

/// Operators read one trail: the engine's rows (`fleet_audit`) and the domain's (`audit_log`)
/// merged newest first, and a page cursor taken from either table continues the merge.
#[tokio::test]
async fn the_audit_merges_the_engines_and_the_domains_trails_by_time_across_pages() {
    let db = db().await;
    let reg = registry();
    // Six rows, alternating tables, a minute apart (t0 - 1 min … t0 - 6 min).
    for i in 1..=6 {
        let table = if i % 2 == 0 {
            "fleet_audit"
        } else {
            "audit_log"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (actor, action, resource_type, created_at)
             VALUES ('alice', 'test.{i}', 'x', now() - $1 * interval '1 minute')"
        )))
        .bind(i as f64)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let o = ops(&db.pool, &reg);
    let mut f = jobs::audit::AuditFilter {
        action_prefix: Some("test.".into()),
        limit: 4,
        ..Default::default()
    };
    let first = o.audit(&f).await.unwrap();
    let actions: Vec<&str> = first.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["test.1", "test.2", "test.3", "test.4"]);
    f.before_id = Some(first.last().unwrap().id); // a row of the engine's table
    let second = o.audit(&f).await.unwrap();
    let actions: Vec<&str> = second.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["test.5", "test.6"]);
    f.before_id = Some(second[0].id); // a row of the domain's table
    let third = o.audit(&f).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].action, "test.6");
}

/// The overview's figures are one moment of the database: a job that starts while the
/// overview is being read is counted as running and listed as running, or neither. Read one
/// statement after another, a job that started between the counts and the list was listed
/// and not counted (the console showed a running job under a "0 running" card).
#[tokio::test]
async fn the_overview_counts_and_lists_running_jobs_as_of_one_moment() {
    let db = db().await;
    let reg = registry();
    let id = enqueue_minute_sleep(&db.pool, &reg).await;
    // Hold the overview's read in its middle: the workers registry is read after the counts
    // and before the running jobs.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE fleet_workers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let o = ops(&db.pool, &reg);
    let read = {
        let reg = reg.clone();
        let o = ops(&db.pool, &reg);
        tokio::spawn(async move { o.overview(&reg, 15, SECS(30), 50).await })
    };
    wait_until(SECS(10), "the overview waits for the registry", || async {
        lock_waiters(&db.pool, "%fleet_workers%").await == 1
    })
    .await;
    // The job starts (a worker's claim) while the overview waits, then the registry is free.
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(claim_one(&mut conn, SECS(60)).await.id, id);
    holder.commit().await.unwrap();

    let running_counted = |ov: &fleet::ops::Overview| -> i64 {
        ov.stats
            .iter()
            .map(|k| k.states.get("running").copied().unwrap_or(0))
            .sum()
    };
    let during = read.await.unwrap().unwrap();
    assert_eq!(running_counted(&during), 0, "the moment the read began");
    assert!(during.running.is_empty(), "listed as of the same moment");
    let after = o.overview(&reg, 15, SECS(30), 50).await.unwrap();
    assert_eq!(running_counted(&after), 1);
    assert_eq!(
        after.running.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![id]
    );
}
