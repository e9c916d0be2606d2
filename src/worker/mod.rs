//! A worker process's runtime: claims jobs, runs their handlers, writes their outcomes, keeps
//! their leases alive, and drains on request.
//!
//! A claim goes forward through four files, each with its contract in its module doc:
//! 1. the **fetch loop** (`worker/fetcher.rs`) claims ready jobs in batches when woken by `NOTIFY`
//!    (`worker/listener.rs`), a freed slot, or the poll, and spawns one task per claimed job;
//! 2. that task is the **executor** (`worker/executor.rs`): it waits for a slot (the kind's and the
//!    worker's), runs the handler under its timeout with panics caught, and
//! 3. turns how the attempt ended into the job's next state (`worker/outcome.rs`), which
//! 4. the **completer** (`worker/completer.rs`) writes in batches, fenced on the claim.
//!
//! Beside them:
//! - the **heartbeat** (`worker/heartbeat.rs`) renews the lease of *every* held job — running or still
//!   waiting for a slot — and cancels handlers whose claim was lost;
//! - **maintenance** (`maintenance/`) promotes due jobs and rescues expired leases
//!   (never the claims this worker holds);
//! - the **health monitor** ([`crate::database::health`]) checks once a second that the
//!   database answers: while it does not, nothing is claimed and the loops stop logging each
//!   failed statement.
//!
//! A job is *held* from its claim until its outcome is written; `held` is the single source of
//! what this worker owns. Delivery is at least once: an outcome lost to a crash is redone by
//! the rescuer, and a late outcome from a lost claim is refused by the fence.
//!
//! [`Worker::work_one`] and [`Worker::work_until_idle`] run the same steps one claim at a time
//! in the caller's task, at the worker's [`Clock`]: what a test uses instead of starting a
//! worker and waiting.

mod completer;
mod executor;
mod fetcher;
mod heartbeat;
mod listener;
mod outcome;

#[cfg(feature = "apalis")]
pub(crate) use executor::CANCEL_GRACE;
pub use outcome::{backoff, NextState};
// What a claim's outcome is, as the completer writes it: the engine's own, and the tests' and
// the ceiling benchmark's (which write outcomes without running handlers).
#[cfg(feature = "testkit")]
pub use outcome::Outcome;
#[cfg(not(feature = "testkit"))]
pub(crate) use outcome::Outcome;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use jobs::Db;

use crate::{
    clock::Clock,
    config::WorkerSettings,
    enqueue::Queue,
    queue::{self, ClaimedJob},
    registry::Registry,
};

/// A claim this worker holds until its outcome is written.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub claim_seq: i32,
    pub kind: String,
    /// Cancelled when the handler must stop (lost lease, timeout, drain deadline).
    pub cancel: CancellationToken,
    /// The handler is done and its outcome waits for the completer: a lease that no longer
    /// renews is the outcome landing, not a lost claim.
    pub outcome_queued: bool,
}

/// Counters of what a worker did.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Jobs claimed.
    pub claimed: AtomicU64,
    /// Outcomes written as completed.
    pub completed: AtomicU64,
    /// Outcomes written as retryable (retry or snooze).
    pub retried: AtomicU64,
    /// Outcomes written as dead.
    pub dead: AtomicU64,
    /// Outcomes written as cancelled.
    pub cancelled: AtomicU64,
    /// Claims given back unstarted on drain.
    pub returned: AtomicU64,
    /// Outcomes refused because the claim was lost.
    pub lost: AtomicU64,
}

/// What [`Worker::run`] did by the time it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs completed over the worker's life.
    pub completed: u64,
    /// Claims given back unstarted during the drain.
    pub returned_unstarted: u64,
    /// Handlers cancelled by the drain deadline.
    pub interrupted: u64,
    /// Outcomes that could not be written before the worker gave up (their jobs will be
    /// rescued once their leases expire).
    pub unwritten: u64,
}

pub(crate) struct Shared {
    /// The database this worker claims from (and heartbeats, rescues, promotes in).
    pub db: Db,
    /// Its name (`main`, or a `[databases.*]` name).
    pub db_name: Arc<str>,
    /// What handlers get as [`jobs::JobContext::db`]: the main database, home of the domain
    /// tables (the same as `db` unless this worker serves another database).
    pub domain_db: Db,
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub cfg: WorkerSettings,
    pub worker_id: String,
    pub held: Mutex<HashMap<i64, Held>>,
    /// Wakes the fetch loop: a notification, a freed slot, a resume.
    pub wake: Notify,
    /// Set when an outcome of a limited kind is written (its row no longer counts against
    /// the kind's fleet-wide limit); taken by the fetch loop, which then claims the limited
    /// kinds without waiting for a quarter of its capacity to be free.
    pub limited_freed: AtomicBool,
    /// The worker's `concurrency` slots. Claims of limited kinds queue for one directly; plain
    /// claims queue behind [`Shared::plain_turn`] first (see [`super::executor`]).
    pub slots: Arc<Semaphore>,
    /// Held by the one plain claim that waits in `slots`' queue: at most one plain claim is
    /// ever ahead of a limited kind's claim there, however deep the prefetch.
    pub plain_turn: tokio::sync::Mutex<()>,
    pub kind_slots: HashMap<String, Arc<Semaphore>>,
    /// The kinds claimed one at a time under their fleet-wide limits, budgets or fairness
    /// ([`crate::queue::job_fetch_limited`]); their rows are filed apart (`limited`), so the
    /// plain claim never reads them.
    pub limited: Vec<LimitedKind>,
    /// Drain begun: claims that have not started go back.
    pub stop_starting: CancellationToken,
    /// Drain deadline passed: running handlers are cancelled.
    pub hard_stop: CancellationToken,
    pub counters: Arc<WorkerCounters>,
    pub interrupted: AtomicU64,
    pub extensions: jobs::Extensions,
    /// The time claims, leases, outcomes, budgets and maintenance act at.
    pub clock: Clock,
    /// The only kinds this worker claims; `None` = any (a kind it has no handler for is dead
    /// as unknown, decision 7). An apalis backend's runtime claims its own kind alone.
    pub only_kinds: Option<Vec<String>>,
}

/// A limited kind's settings, resolved once for the fetch loop.
#[derive(Debug, Clone)]
pub(crate) struct LimitedKind {
    pub kind: String,
    pub global_concurrency: Option<i64>,
    pub key_concurrency: Option<i64>,
    pub budgets: Vec<crate::registry::BudgetSpec>,
}

/// A worker: build it, then [`Worker::run`] it until its shutdown token is cancelled.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker over `db` running `registry`'s kinds with `cfg`.
    pub fn new(db: impl Into<Db>, registry: Arc<Registry>, cfg: WorkerSettings) -> Self {
        // The handlers' provider calls and money signals feed the metrics (fleet_provider_call_seconds, fleet_bookings_total, …).
        crate::metrics::observe_domain();
        let db = db.into();
        let kind_slots = registry
            .kind_names()
            .into_iter()
            .filter_map(|k| {
                let c = registry.settings(&k)?.concurrency?;
                Some((k, Arc::new(Semaphore::new(c))))
            })
            .collect();
        let worker_id = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let queue = Queue::new(db.clone(), registry.clone());
        let limited = registry
            .limited_kinds()
            .into_iter()
            .filter(|k| registry.get(k).is_some_and(|r| r.runs_here()))
            .map(|k| {
                let st = registry.settings(&k).expect("registered");
                LimitedKind {
                    global_concurrency: st.global_concurrency.map(|n| n as i64),
                    key_concurrency: st.key_concurrency.map(|n| n as i64),
                    budgets: registry.budgets_of(&k),
                    kind: k,
                }
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(cfg.concurrency)),
                plain_turn: tokio::sync::Mutex::new(()),
                domain_db: db.clone(),
                db_name: crate::config::MAIN_DATABASE.into(),
                db,
                registry,
                queue,
                cfg,
                worker_id,
                held: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                limited_freed: AtomicBool::new(false),
                kind_slots,
                limited,
                stop_starting: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                counters: Arc::new(WorkerCounters::default()),
                interrupted: AtomicU64::new(0),
                extensions: jobs::Extensions::default(),
                clock: Clock::System,
                only_kinds: None,
            }),
        }
    }

    /// Gives handlers `extensions` (what the domain registered: keyring, provider clients),
    /// reached through [`jobs::JobContext::extension`]. Call before [`Worker::run`].
    pub fn with_extensions(mut self, extensions: jobs::Extensions) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("with_extensions is called before run")
            .extensions = extensions;
        self
    }

    /// Makes this worker one of a fleet with several databases: it claims from its own
    /// database (`db_name`), while its handlers get `domain_db` (the main database, home of the
    /// domain tables) and enqueue follow-ups through `queue` (on the main database, routing
    /// each kind to its own). Call before [`Worker::run`].
    pub fn serving_database(mut self, db_name: &str, domain_db: Db, queue: Queue) -> Self {
        let s = Arc::get_mut(&mut self.shared).expect("serving_database is called before run");
        s.db_name = db_name.into();
        s.domain_db = domain_db;
        s.queue = queue;
        self
    }

    /// Runs claims, leases, outcomes, budgets and maintenance at `clock`'s time (a test's
    /// [`crate::clock::ManualClock`]) instead of the database's. Call before [`Worker::run`].
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> Self {
        let s = Arc::get_mut(&mut self.shared).expect("with_clock is called before run");
        s.clock = clock.into();
        // Follow-ups its handlers enqueue are due at the same time.
        s.queue = s.queue.clone().with_clock(s.clock.clone());
        self
    }

    /// Restricts the worker to claiming `kinds` alone (an apalis backend's runtime, whose
    /// registry holds its own kind). Call before [`Worker::run`].
    #[cfg_attr(not(feature = "apalis"), allow(dead_code))]
    pub(crate) fn claiming_only(mut self, kinds: Vec<String>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("claiming_only is called before run")
            .only_kinds = Some(kinds);
        self
    }

    /// This worker's id, as written to `lease_owner`.
    pub fn id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Live counters (shared; readable while the worker runs).
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.shared.counters.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains: stops claiming, gives back claims that
    /// have not started (attempt not charged), lets running handlers finish until
    /// `drain_timeout`, then cancels them (recorded as `interrupted`, retried at once), writes
    /// every outcome and returns.
    pub async fn run(self, shutdown: CancellationToken) -> DrainReport {
        let s = self.shared;
        let queues = if s.cfg.queues.is_empty() {
            "all".to_owned()
        } else {
            s.cfg.queues.join(",")
        };
        tracing::info!(worker.id = %s.worker_id, concurrency = s.cfg.concurrency,
            prefetch = s.cfg.prefetch, queues = %queues,
            kinds = %s.registry.kind_names().join(","), "worker started");
        heartbeat::register(&s).await;
        let (tx, rx) = mpsc::unbounded_channel::<Outcome>();
        let background = CancellationToken::new();
        let completer = tokio::spawn(completer::run(s.clone(), rx));
        let heartbeat = tokio::spawn(heartbeat::run(s.clone(), background.clone()));
        let listener = tokio::spawn(listener::run(s.clone(), background.clone()));
        let monitor = tokio::spawn(crate::database::health::watch(
            s.db.clone(),
            s.db_name.to_string(),
            background.clone(),
        ));
        // This worker's own claims are alive: its rescuer never takes them back.
        let held_claims: crate::maintenance::HeldClaims = {
            let s = s.clone();
            Arc::new(move || s.held.lock().unwrap().keys().copied().collect())
        };
        let maintenance = tokio::spawn(crate::maintenance::run(
            s.db.clone(),
            crate::maintenance::MaintenanceSettings::from(&s.cfg),
            Some(held_claims),
            s.clock.clone(),
            background.clone(),
        ));
        let tasks = TaskTracker::new();

        fetcher::run(s.clone(), tx.clone(), &tasks, shutdown).await;

        // Drain.
        tracing::info!(worker.id = %s.worker_id, held = s.held.lock().unwrap().len(), "draining");
        s.stop_starting.cancel();
        tasks.close();
        if tokio::time::timeout(s.cfg.drain_timeout, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(worker.id = %s.worker_id, "drain deadline passed: cancelling running handlers");
            s.hard_stop.cancel();
            // Handlers get a grace period to observe cancellation, then are aborted.
            let _ = tokio::time::timeout(executor::CANCEL_GRACE * 2, tasks.wait()).await;
        }
        drop(tx);
        // The completer returns once every outcome is written; if the database stays down
        // past this wait, what it still holds is unwritten (rescued after the leases expire).
        let _ = tokio::time::timeout(Duration::from_secs(30), completer).await;
        let unwritten = s.held.lock().unwrap().len() as u64;
        background.cancel();
        let _ = tokio::join!(heartbeat, listener, maintenance, monitor);
        let c = &s.counters;
        let report = DrainReport {
            completed: c.completed.load(Ordering::Relaxed),
            returned_unstarted: c.returned.load(Ordering::Relaxed),
            interrupted: s.interrupted.load(Ordering::Relaxed),
            unwritten,
        };
        heartbeat::deregister(&s).await;
        tracing::info!(worker.id = %s.worker_id, completed = report.completed,
            returned_unstarted = report.returned_unstarted, interrupted = report.interrupted,
            unwritten = report.unwritten, "worker stopped");
        report
    }
}

/// One claim [`Worker::work_one`] ran to its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Worked {
    /// The job.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// The attempt that ran (1-based).
    pub attempt: i32,
    /// What the attempt decided for the job: its state ([`NextState::state`]), its delay, its
    /// error.
    pub next: NextState,
    /// Whether the outcome was written; `false` when the fence refused it (the claim was
    /// rescued or cancelled while it ran).
    pub written: bool,
}

impl Worker {
    /// Runs one job to its outcome in the caller's task, the way [`Worker::run`] runs each of
    /// its claims, at the worker's [`Clock`]: promotes the jobs that are due, claims one ready
    /// job (a limited kind's, under its limits and budgets, or a plain one), runs its
    /// handler under the kind's timeout with panics caught, writes the outcome fenced on the
    /// claim, and returns what happened. `None` when nothing is due.
    ///
    /// No heartbeat, listener or maintenance runs meanwhile: a handler must finish within the
    /// lease unless the test means it not to, and a test runs the rescuer itself
    /// (the rescuer's pass, under the `testkit` feature).
    pub async fn work_one(&self) -> Result<Option<Worked>, sqlx::Error> {
        let s = &self.shared;
        crate::maintenance::JobPromoter::new(s.db.clone(), Default::default())
            .run_once(s.clock.now())
            .await?;
        let room = fetcher::Room {
            free: 1,
            limited_only: false,
            skip_kinds: Vec::new(),
            held_by_kind: HashMap::new(),
        };
        let mut claimed = Vec::new();
        fetcher::Fetcher::new(s)
            .claim(s, &room, &mut |jobs| claimed.extend(jobs))
            .await?;
        let Some(job) = claimed.pop() else {
            return Ok(None);
        };
        fetcher::hold(s, std::slice::from_ref(&job));
        let ClaimedJob {
            id, kind, attempt, ..
        } = job.clone();
        let outcome = executor::execute(s.clone(), job).await;
        let written = queue::job_set_outcome_many(&s.db, &[outcome.row()], s.clock.now()).await?;
        completer::record(s, std::slice::from_ref(&outcome), &written);
        Ok(Some(Worked {
            id,
            kind,
            attempt,
            next: outcome.next,
            written: !written.is_empty(),
        }))
    }

    /// [`Worker::work_one`] until nothing is due at the worker's clock; returns every claim
    /// run, in order. A retry whose backoff has not elapsed on the clock is not due: advance a
    /// manual clock and call again to run it.
    pub async fn work_until_idle(&self) -> Result<Vec<Worked>, sqlx::Error> {
        let mut worked = Vec::new();
        while let Some(w) = self.work_one().await? {
            worked.push(w);
        }
        Ok(worked)
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
