//! apalis 1.0 workers on the fleet's queue (`fleet::apalis::FleetBackend`), against real
//! Postgres: outcomes, persisted retries, apalis's error types, panics, bad payloads, timeouts,
//! pause, a fleet-wide limit shared with a fleet worker, interop both ways, and a SIGKILL.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use apalis::prelude::*;
use common::*;
use fleet::{
    apalis::{FleetBackend, FleetJob},
    config::WorkerSettings,
    queue::{ErrorClass, JobState},
    Queue, Registry,
};
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// What every test's apalis jobs carry: a label the handler acts on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    label: String,
}

fn step(label: &str) -> Step {
    Step {
        label: label.to_owned(),
    }
}

/// What the handlers saw, shared with the test through apalis's `Data`.
#[derive(Default)]
struct Seen {
    /// Calls per label.
    calls: Mutex<HashMap<String, usize>>,
    /// FleetJob ids per label.
    job_ids: Mutex<HashMap<String, i64>>,
    /// Handlers running now, and the most ever at once.
    running: AtomicUsize,
    most: AtomicUsize,
    /// Tasks the engine dropped mid-run (their guard's drop ran before the end).
    dropped: AtomicUsize,
}

impl Seen {
    fn call(&self, label: &str, job: &FleetJob) -> usize {
        self.job_ids
            .lock()
            .unwrap()
            .insert(label.to_owned(), job.job_id);
        let mut c = self.calls.lock().unwrap();
        let n = c.entry(label.to_owned()).or_default();
        *n += 1;
        *n
    }
    fn calls(&self, label: &str) -> usize {
        self.calls.lock().unwrap().get(label).copied().unwrap_or(0)
    }
}

/// Counts a running handler, and a drop before its end.
struct Running<'a> {
    seen: &'a Seen,
    finished: bool,
}

impl<'a> Running<'a> {
    fn new(seen: &'a Seen) -> Self {
        let now = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
        seen.most.fetch_max(now, Ordering::SeqCst);
        Self {
            seen,
            finished: false,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.seen.running.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.seen.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The handler of every test: what it does is in the label.
async fn act(s: Step, job: FleetJob, seen: Data<Arc<Seen>>) -> Result<(), BoxDynError> {
    let n = seen.call(&s.label, &job);
    let mut guard = Running::new(&seen);
    let label = s.label.split(':').next().unwrap_or_default();
    let r: Result<(), BoxDynError> = match label {
        "ok" => Ok(()),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(())
        }
        "fail" => Err("boom".into()),
        "abort" => Err(AbortError::new("not worth retrying").into()),
        "retry_after" => Err(RetryAfterError::new("provider busy", SECS(5)).into()),
        "defer_once" if n == 1 => Err(DeferredError::new("not yet").into()),
        "defer_once" => Ok(()),
        "panic_once" if n == 1 => panic!("handler blew up"),
        "panic_once" => Ok(()),
        "hang_once" if n == 1 => {
            tokio::time::sleep(SECS(60)).await;
            Ok(())
        }
        "hang_once" => Ok(()),
        other => panic!("unknown label {other}"),
    };
    guard.finished = true;
    drop(guard);
    r
}

/// An apalis worker (apalis's own `WorkerBuilder`) on `backend`, running [`act`].
struct ApalisWorker {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl ApalisWorker {
    fn start(backend: FleetBackend<Step>, seen: &Arc<Seen>) -> Self {
        let worker = WorkerBuilder::new(format!("apalis-test-{}", uuid::Uuid::new_v4()))
            .backend(backend)
            .data(seen.clone())
            .build(act);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(worker.run_until(async move {
            s.cancelled().await;
            Ok::<(), std::io::Error>(())
        }));
        Self { stop, handle }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(SECS(15), self.handle)
            .await
            .expect("the apalis worker stops within 15 s")
            .expect("worker task")
            .expect("the apalis worker ends without an error");
    }
}

/// A backend for `kind` with fast cadences and `settings`.
fn backend(pool: &PgPool, kind: &str, settings: KindDefaults) -> FleetBackend<Step> {
    FleetBackend::new(pool.clone(), kind)
        .with_kind_settings(settings)
        .with_worker_settings(fast_settings())
}

fn quick_kind() -> KindDefaults {
    KindDefaults {
        max_attempts: 3,
        backoff_base: Duration::from_millis(300),
        backoff_cap: SECS(1),
        ..KindDefaults::default()
    }
}

/// Pushes `steps` through apalis's sink on a clone of `b`; returns their job ids in order.
async fn push(pool: &PgPool, b: &FleetBackend<Step>, steps: &[Step]) -> Vec<i64> {
    let before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM fleet_jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut sink = b.clone();
    sink.push_bulk(steps.to_vec()).await.unwrap();
    sqlx::query_scalar("SELECT id FROM fleet_jobs WHERE id > $1 ORDER BY id")
        .bind(before)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_apalis_worker_completes_jobs_pushed_through_its_sink_as_fleet_jobs() {
    let db = db().await;
    let b = backend(&db.pool, "test.apalis_ok", quick_kind());
    let ids = push(&db.pool, &b, &[step("ok:1"), step("ok:2"), step("slow:3")]).await;
    // A keyed push twice is one job: the engine's idempotency key.
    let mut sink = b.clone();
    for _ in 0..2 {
        sink.push_task(
            TaskBuilder::new(step("ok:keyed"))
                .idempotency_key("order-7")
                .build(),
        )
        .await
        .unwrap();
    }
    let keyed: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM fleet_jobs WHERE idempotency_key = 'order-7'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(keyed.len(), 1, "one job per key");

    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    for id in ids.iter().chain(&keyed) {
        let j = wait_state(&db.pool, *id, JobState::Completed, SECS(10)).await;
        assert_eq!((j.kind.as_str(), j.attempt), ("test.apalis_ok", 1));
        assert!(j.lease_owner.is_none() && j.finished_at.is_some());
    }
    // The handler's FleetJob is the job's row.
    assert_eq!(seen.job_ids.lock().unwrap()["ok:1"], ids[0]);
    assert_eq!(seen.calls("ok:keyed"), 1);
    // The engine's metrics count them like any kind's (the completer counts after its commit).
    wait_until(SECS(5), "completions counted", || async {
        fleet::metrics::metrics()
            .completed
            .with_label_values(&["test.apalis_ok"])
            .get()
            == 4
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn an_error_retries_after_the_kinds_backoff_kept_in_the_database_then_is_dead() {
    let db = db().await;
    let b = backend(&db.pool, "test.apalis_fail", quick_kind());
    let id = push(&db.pool, &b, &[step("fail")]).await[0];
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    // The first failure: retryable, the next run_at written to the row (backoff 300 ms,
    // jittered to [150, 300] ms).
    let j = wait_for(&db.pool, id, SECS(10), "first retry", |j| {
        j.state == JobState::Retryable || j.attempt >= 2
    })
    .await;
    if j.state == JobState::Retryable {
        let wait = (j.run_at - j.attempted_at.unwrap()).num_milliseconds();
        assert!(
            (100..=400).contains(&wait),
            "run_at {wait} ms after the attempt"
        );
        assert_eq!(j.errors[0].class, ErrorClass::Retryable);
        assert!(j.errors[0].message.contains("boom"), "{:?}", j.errors);
    }
    let j = wait_state(&db.pool, id, JobState::Dead, SECS(15)).await;
    assert_eq!(j.attempt, 3, "dead after max_attempts");
    assert_eq!(j.errors.len(), 3);
    assert!(j.errors.iter().all(|e| e.class == ErrorClass::Retryable));
    assert_eq!(seen.calls("fail"), 3);
    w.stop().await;
}

#[tokio::test]
async fn abort_is_dead_at_once_retry_after_waits_its_delay_and_deferred_charges_no_attempt() {
    let db = db().await;
    let b = backend(&db.pool, "test.apalis_errors", quick_kind());
    let ids = push(
        &db.pool,
        &b,
        &[step("abort"), step("retry_after"), step("defer_once")],
    )
    .await;
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);

    let j = wait_state(&db.pool, ids[0], JobState::Dead, SECS(10)).await;
    assert_eq!((j.attempt, j.errors[0].class), (1, ErrorClass::Fatal));
    assert!(j.errors[0].message.contains("not worth retrying"));

    let j = wait_state(&db.pool, ids[1], JobState::Retryable, SECS(10)).await;
    let wait = (j.run_at - j.attempted_at.unwrap()).num_milliseconds();
    assert!(
        (4_900..=5_500).contains(&wait),
        "RetryAfter(5 s): run_at {wait} ms after"
    );
    assert_eq!((j.attempt, j.errors[0].class), (1, ErrorClass::Retryable));

    let j = wait_state(&db.pool, ids[2], JobState::Completed, SECS(10)).await;
    assert_eq!(j.attempt, 1, "the deferral charged no attempt");
    assert_eq!(j.errors[0].class, ErrorClass::Snoozed);
    assert_eq!(seen.calls("defer_once"), 2);
    w.stop().await;
}

#[tokio::test]
async fn a_panic_is_the_engines_panic_outcome_and_the_apalis_worker_goes_on() {
    let db = db().await;
    let b = backend(&db.pool, "test.apalis_panic", quick_kind());
    let ids = push(&db.pool, &b, &[step("panic_once"), step("ok:after")]).await;
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    let j = wait_state(&db.pool, ids[0], JobState::Completed, SECS(10)).await;
    assert_eq!(j.attempt, 2);
    assert_eq!(j.errors[0].class, ErrorClass::Panic);
    assert!(
        j.errors[0].message.contains("handler blew up"),
        "{:?}",
        j.errors
    );
    wait_state(&db.pool, ids[1], JobState::Completed, SECS(10)).await;
    w.stop().await;
}

#[tokio::test]
async fn a_payload_that_does_not_fit_is_dead_at_once_and_the_worker_goes_on() {
    let db = db().await;
    let b = backend(&db.pool, "test.apalis_args", quick_kind());
    let bad = insert_unchecked(
        &db.pool,
        "test.apalis_args",
        serde_json::json!({"lable": "P-12345678"}),
    )
    .await;
    let good = push(&db.pool, &b, &[step("ok")]).await[0];
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    let j = wait_state(&db.pool, bad, JobState::Dead, SECS(10)).await;
    assert_eq!((j.attempt, j.errors[0].class), (1, ErrorClass::BadArgs));
    assert!(
        !j.errors[0].message.contains("P-12345678"),
        "values stay out"
    );
    wait_state(&db.pool, good, JobState::Completed, SECS(10)).await;
    w.stop().await;
}

#[tokio::test]
async fn the_kinds_timeout_drops_the_task_and_retries_the_job() {
    let db = db().await;
    let kind = KindDefaults {
        timeout: Duration::from_millis(500),
        ..quick_kind()
    };
    let b = backend(&db.pool, "test.apalis_timeout", kind);
    let id = push(&db.pool, &b, &[step("hang_once")]).await[0];
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    let j = wait_state(&db.pool, id, JobState::Completed, SECS(15)).await;
    assert_eq!(j.attempt, 2);
    assert_eq!(j.errors[0].class, ErrorClass::Timeout);
    // The hung task was dropped (after the engine's grace), not left running beside the retry.
    assert_eq!(seen.dropped.load(Ordering::SeqCst), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_paused_or_drained_kind_is_held_back_from_the_apalis_worker() {
    let db = db().await;
    let kind = "test.apalis_paused";
    let ops = fleet::Ops::new(db.pool.clone(), vec![kind.to_owned()], "test");
    ops.pause(kind, "deploy", false).await.unwrap();
    let b = backend(&db.pool, kind, quick_kind());
    let b_sink = b.clone();
    let ids = push(&db.pool, &b, &[step("ok:1"), step("ok:2")]).await;
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    // Several polls of the worker (100 ms) go by: nothing is claimed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for id in &ids {
        let j = job(&db.pool, *id).await;
        assert_eq!((j.state, j.attempt), (JobState::Available, 0));
    }
    ops.resume(kind, false).await.unwrap();
    for id in &ids {
        wait_state(&db.pool, *id, JobState::Completed, SECS(10)).await;
    }

    // A drain lets what is queued finish, then holds what comes after it.
    let queued = push(&db.pool, &b_sink, &[step("slow:1"), step("slow:2")]).await;
    let drained = ops
        .drain(&[kind.to_owned()], SECS(10), false, |_| {})
        .await
        .unwrap();
    assert!(drained.result.drained, "{:?}", drained.result);
    for id in &queued {
        assert_eq!(job(&db.pool, *id).await.state, JobState::Completed);
    }
    let after = push(&db.pool, &b_sink, &[step("ok:after-drain")]).await[0];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(job(&db.pool, after).await.state, JobState::Available);
    w.stop().await;
}

/// The same kind as a native job, for the tests where a fleet worker runs it too.
#[derive(Debug, Serialize, Deserialize)]
struct SharedKind {
    label: String,
}

/// Gates the native handler of [`SharedKind`] labelled "hold" until the test opens it.
static HOLD: tokio::sync::Notify = tokio::sync::Notify::const_new();
static NATIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Job for SharedKind {
    const KIND: &'static str = "test.apalis_shared";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        NATIVE_RUNS.fetch_add(1, Ordering::SeqCst);
        if self.label == "hold" {
            HOLD.notified().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_fleet_wide_limit_counts_a_fleet_workers_job_against_the_apalis_worker() {
    let db = db().await;
    let limited = KindDefaults {
        global_concurrency: Some(2),
        ..quick_kind()
    };
    // A fleet worker that runs the kind too, one job at a time: it holds a job open.
    let mut reg = Registry::default();
    reg.register_with::<SharedKind>(limited.clone());
    let reg = Arc::new(reg);
    let q = Queue::new(db.pool.clone(), reg.clone());
    let hold = q
        .enqueue(
            &SharedKind {
                label: "hold".into(),
            },
            None,
        )
        .await
        .unwrap()
        .id;
    let native = start_worker(
        &db.pool,
        reg,
        WorkerSettings {
            concurrency: 1,
            ..fast_settings()
        },
    );
    wait_state(&db.pool, hold, JobState::Running, SECS(10)).await;

    // The apalis worker could run 4 at once; the limit (2) leaves it one, as the fleet
    // worker's job counts.
    let b = backend(&db.pool, SharedKind::KIND, limited);
    let steps: Vec<Step> = (0..6).map(|i| step(&format!("slow:{i}"))).collect();
    let ids = push(&db.pool, &b, &steps).await;
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b, &seen);
    for id in &ids {
        wait_state(&db.pool, *id, JobState::Completed, SECS(20)).await;
    }
    assert_eq!(
        seen.most.load(Ordering::SeqCst),
        1,
        "one slot of the limit was the fleet worker's"
    );
    assert_eq!(job(&db.pool, hold).await.state, JobState::Running);
    HOLD.notify_one();
    wait_state(&db.pool, hold, JobState::Completed, SECS(10)).await;
    w.stop().await;
    native.stop().await;
}

#[tokio::test]
async fn jobs_cross_between_the_engines_enqueue_and_apalis_both_ways() {
    let db = db().await;
    let kind = SharedKind::KIND;
    // The engine's Queue, with the kind declared external (what `[kinds.*] external = true`
    // does in a fleet process), → the apalis worker.
    let mut reg = Registry::default();
    reg.declare_external(kind, quick_kind());
    let q = Queue::new(db.pool.clone(), Arc::new(reg));
    let from_queue = q
        .enqueue_new(NewJob::raw(
            kind,
            serde_json::json!({"label": "ok:from-queue"}),
        ))
        .await
        .unwrap()
        .id;
    let b = backend(&db.pool, kind, quick_kind());
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(b.clone(), &seen);
    wait_state(&db.pool, from_queue, JobState::Completed, SECS(10)).await;
    assert_eq!(seen.calls("ok:from-queue"), 1);
    w.stop().await;

    // apalis's sink → a fleet worker that registers the kind natively.
    let from_apalis = push(&db.pool, &b, &[step("ok:from-apalis")]).await[0];
    let before = NATIVE_RUNS.load(Ordering::SeqCst);
    let mut native = Registry::default();
    native.register_with::<SharedKind>(quick_kind());
    let n = start_worker(&db.pool, Arc::new(native), fast_settings());
    wait_state(&db.pool, from_apalis, JobState::Completed, SECS(10)).await;
    assert!(NATIVE_RUNS.load(Ordering::SeqCst) > before);
    n.stop().await;
}

#[tokio::test]
async fn a_fleet_worker_never_claims_a_kind_declared_external() {
    let db = db().await;
    let mut reg = Registry::default();
    reg.register_with::<Flaky>(quick_kind());
    reg.declare_external("test.apalis_external", quick_kind());
    let reg = Arc::new(reg);
    let q = Queue::new(db.pool.clone(), reg.clone());
    let external = q
        .enqueue_new(NewJob::raw(
            "test.apalis_external",
            serde_json::json!({"label": "ok"}),
        ))
        .await
        .unwrap()
        .id;
    let native = q.enqueue(&Flaky { succeed_on: 1 }, None).await.unwrap().id;
    let w = start_worker(&db.pool, reg, fast_settings());
    wait_state(&db.pool, native, JobState::Completed, SECS(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let j = job(&db.pool, external).await;
    assert_eq!((j.state, j.attempt), (JobState::Available, 0));
    w.stop().await;

    // The fleet's own registry learns it from config; a kind of its own cannot be external.
    let env = |k: &str| vec![(format!("FLEET_KINDS__{k}__EXTERNAL"), "true".to_owned())];
    let s = fleet::config::Settings::from_sources(None, &env("THUMBNAIL")).unwrap();
    let r = fleet::fleet_registry(&s).unwrap();
    assert_eq!(r.external_kinds(), vec!["thumbnail".to_owned()]);
    let s = fleet::config::Settings::from_sources(None, &env("CAMPAIGN_SCAN")).unwrap();
    let e = fleet::fleet_registry(&s)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("kinds.campaign_scan.external"), "{e}");
}

#[tokio::test]
async fn fleet_enqueue_of_an_external_kind_is_worked_by_the_apalis_worker() {
    let db = db().await;
    let out = std::process::Command::new(BIN)
        .args(["enqueue", "thumbnail", "--args", r#"{"label": "ok:cli"}"#])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("FLEET_KINDS__THUMBNAIL__EXTERNAL", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = sqlx::query_scalar("SELECT id FROM fleet_jobs WHERE kind = 'thumbnail'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let w = ApalisWorker::start(backend(&db.pool, "thumbnail", quick_kind()), &seen);
    wait_state(&db.pool, id, JobState::Completed, SECS(10)).await;
    assert_eq!(seen.calls("ok:cli"), 1);
    w.stop().await;
}

/// The example's binary, built now: `cargo test` builds the examples, but a run of this test
/// target alone (`--test apalis`) does not, and a stale one would test old code.
fn example_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--example",
                    "apalis_worker",
                    "--message-format=short",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building the example: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let exe = std::env::current_exe().unwrap();
            let target = exe.parent().unwrap().parent().unwrap();
            target.join("examples").join("apalis_worker")
        })
        .clone()
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_example(url: &str, args: &[&str], work_ms: &str) -> std::process::Child {
    std::process::Command::new(example_binary())
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("THUMBNAIL_WORK_MS", work_ms)
        .env("FLEET_WORKER__LEASE", "2s")
        .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "500ms")
        .env("FLEET_WORKER__RESCUE_INTERVAL", "300ms")
        .env("FLEET_WORKER__POLL_INTERVAL", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the example")
}

#[tokio::test]
async fn a_sigkilled_apalis_workers_job_is_rescued_and_its_keyed_effect_happens_once() {
    let db = db().await;
    // The example enqueues one thumbnail and works it slowly: its effect is written, then it
    // is killed before it finishes.
    let mut first = KillOnDrop(spawn_example(&db.url, &["--enqueue", "1"], "30000"));
    let pool = db.pool.clone();
    wait_until(SECS(30), "the effect of the first run", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM example_thumbnails")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n == 1)
        }
    })
    .await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM fleet_jobs WHERE kind = 'thumbnail'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(job(&db.pool, id).await.state, JobState::Running);
    signal(&first.0, libc::SIGKILL);
    first.0.wait().unwrap();

    // A new worker's rescuer takes the job back once its lease lapses; the rerun's effect is
    // the same key, so it is not written twice.
    let mut second = KillOnDrop(spawn_example(&db.url, &["--exit-when-idle"], "10"));
    let status = wait_exit(&mut second.0, SECS(30));
    assert!(status.success(), "{status:?}");
    let j = job(&db.pool, id).await;
    assert_eq!((j.state, j.attempt), (JobState::Completed, 2));
    assert_eq!(
        j.errors[0].class,
        ErrorClass::LeaseExpired,
        "{:?}",
        j.errors
    );
    let (effects, finished): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(finished_runs), 0) FROM example_thumbnails")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((effects, finished), (1, 1), "one effect, one finished run");
}
