//! `fleet scheduler`: fires the cron schedules of `[schedules.*]` and enqueues one job per tick.
//!
//! Contract:
//! - every tick is enqueued with the idempotency key `cron:{schedule}:{tick time, RFC 3339}`
//!   and recorded in `fleet_cron_ticks` in the **same transaction**; the table's primary key
//!   `(schedule, tick_at)` makes any number of scheduler processes produce exactly one job
//!   per tick, however long ago the previous tick's job finished;
//! - on start, each schedule's latest tick at or before now is enqueued if no scheduler
//!   enqueued it: a tick missed while every scheduler was down runs once, and only the latest
//!   one (older missed ticks are not replayed: a scan or a purge only needs its latest run);
//! - timing comes from tokio-cron-scheduler; tick times from croner with the same parser
//!   settings (seconds field required, day-of-month *and* day-of-week must match), so the tick
//!   we record is the tick that fired.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use croner::{parser::CronParser, Cron};
use jobs::Db;
use jobs::NewJob;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    config::{ConfigError, ScheduleSettings},
    queue,
    registry::Registry,
    Queue,
};

/// Why a scheduler could not enqueue a tick or run its timer.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The database failed (the tick is enqueued by the next firing or the next start's
    /// catch-up).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The tick's job could not be enqueued.
    #[error(transparent)]
    Enqueue(#[from] crate::enqueue::EnqueueError),
    /// The cron timer (tokio-cron-scheduler) failed to start or stop.
    #[error("the cron timer failed: {0}")]
    Timer(#[from] tokio_cron_scheduler::JobSchedulerError),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Name (the config key).
    pub name: String,
    /// The pattern as written.
    pub expr: String,
    cron: Cron,
    /// Kind to enqueue.
    pub kind: String,
    /// Args.
    pub args: serde_json::Value,
}

/// Parses a pattern exactly as tokio-cron-scheduler does.
pub fn parse_cron(expr: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
}

impl Schedule {
    /// The latest tick at or before `now`.
    pub fn latest_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.trunc_subsecs(0), true)
            .ok()
    }

    /// The first tick after `now`.
    pub fn next_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.trunc_subsecs(0), false)
            .ok()
    }

    /// The idempotency key of a tick's job.
    pub fn key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "cron:{}:{}",
            self.name,
            tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// Validates `[schedules.*]` against the registered kinds; errors name the key and value.
pub fn validate(
    settings: &BTreeMap<String, ScheduleSettings>,
    registry: &Registry,
) -> Result<Vec<Schedule>, ConfigError> {
    let mut out = Vec::new();
    for (name, s) in settings {
        if !s.enabled {
            continue;
        }
        let fields = s.cron.split_whitespace().count();
        if fields != 6 {
            return Err(ConfigError::new(format!("schedules.{name}.cron"), format!(
                "schedules.{name}.cron = {:?} has {fields} field(s); a schedule has 6: sec min \
                 hour day-of-month month day-of-week (e.g. \"0 */10 * * * *\" for every 10 minutes)",
                s.cron
            )));
        }
        let cron = parse_cron(&s.cron).map_err(|e| {
            ConfigError::new(
                format!("schedules.{name}.cron"),
                format!(
                    "schedules.{name}.cron = {:?} is invalid: {e} (fields: sec min hour \
                 day-of-month month day-of-week)",
                    s.cron
                ),
            )
        })?;
        if registry.get(&s.kind).is_none() {
            return Err(ConfigError::new(
                format!("schedules.{name}.kind"),
                format!(
                    "schedules.{name}.kind = {:?} is not a registered job kind (known: {})",
                    s.kind,
                    registry.kind_names().join(", ")
                ),
            ));
        }
        if !s.args.is_object() {
            return Err(ConfigError::new(
                format!("schedules.{name}.args"),
                format!("schedules.{name}.args must be a table"),
            ));
        }
        registry
            .check(&NewJob::raw(s.kind.clone(), s.args.clone()))
            .map_err(|why| {
                ConfigError::new(
                    format!("schedules.{name}.args"),
                    format!("schedules.{name}.args: {why}"),
                )
            })?;
        out.push(Schedule {
            name: name.clone(),
            expr: s.cron.clone(),
            cron,
            kind: s.kind.clone(),
            args: s.args.clone(),
        });
    }
    Ok(out)
}

/// Enqueues cron ticks.
#[derive(Clone)]
pub struct Scheduler {
    db: Db,
    queue: Queue,
    schedules: Arc<Vec<Schedule>>,
    clock: Clock,
}

impl Scheduler {
    /// A scheduler for validated `schedules`.
    pub fn new(db: impl Into<Db>, registry: Arc<Registry>, schedules: Vec<Schedule>) -> Self {
        let db = db.into();
        Self {
            queue: Queue::new(db.clone(), registry),
            db,
            schedules: Arc::new(schedules),
            clock: Clock::System,
        }
    }

    /// This scheduler, reading which tick is due from `clock` (a test's
    /// [`crate::clock::ManualClock`]) and enqueueing at its time.
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self.queue = self.queue.with_clock(self.clock.clone());
        self
    }

    /// Enqueues through `queue` (on the same database as the scheduler's), e.g. one that
    /// routes kinds to their own databases ([`Queue::of_fleet`]).
    pub fn with_queue(mut self, queue: Queue) -> Self {
        self.queue = queue.with_clock(self.clock.clone());
        self
    }

    /// The schedules.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Enqueues `schedule`'s job for `tick` unless some scheduler already did. Returns the job
    /// id when this call enqueued it.
    pub async fn enqueue_tick(
        &self,
        schedule: &Schedule,
        tick: DateTime<Utc>,
    ) -> Result<Option<i64>, SchedulerError> {
        let mut tx = self.db.begin().await?;
        if !queue::cron_tick_claim(&mut *tx, &schedule.name, tick).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        // A paused schedule's tick is decided like any other (claimed once, by one
        // scheduler) and recorded as skipped: resuming does not replay it.
        if queue::schedule_paused(&mut *tx, &schedule.name).await? {
            queue::cron_tick_set_skipped(&mut *tx, &schedule.name, tick, "paused").await?;
            tx.commit().await?;
            tracing::info!(schedule = %schedule.name, tick = %tick, "cron tick skipped: the schedule is paused");
            return Ok(None);
        }
        let job = NewJob::raw(schedule.kind.clone(), schedule.args.clone()).key(schedule.key(tick));
        let enqueued = self.queue.enqueue_many_in(&mut tx, vec![job]).await?;
        queue::cron_tick_set_job(&mut *tx, &schedule.name, tick, enqueued[0].id).await?;
        tx.commit().await?;
        tracing::info!(schedule = %schedule.name, tick = %tick, job.id = enqueued[0].id, job.kind = %schedule.kind, "cron tick enqueued");
        Ok(Some(enqueued[0].id))
    }

    /// Enqueues each schedule's latest tick at or before `now` if nobody did (missed while
    /// every scheduler was down). Returns what this call enqueued.
    pub async fn catch_up(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>, i64)>, SchedulerError> {
        let out = self.fire_latest(now).await?;
        for (name, tick, _) in &out {
            tracing::warn!(schedule = %name, tick = %tick, "enqueued a tick missed while no scheduler ran");
        }
        Ok(out)
    }

    async fn fire_latest(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>, i64)>, SchedulerError> {
        let mut out = Vec::new();
        for s in self.schedules.iter() {
            if let Some(tick) = s.latest_tick(now) {
                if let Some(id) = self.enqueue_tick(s, tick).await? {
                    out.push((s.name.clone(), tick, id));
                }
            }
        }
        Ok(out)
    }

    /// What one firing of every schedule at the clock's time does, as [`Scheduler::run`]
    /// does when the cron timer fires: enqueues each schedule's latest tick at or before the
    /// clock's time unless some scheduler did. Returns what this call enqueued. A test steps a
    /// scheduler with it (advance a manual clock, call `tick`) instead of waiting for the
    /// timer.
    pub async fn tick(&self) -> Result<Vec<(String, DateTime<Utc>, i64)>, SchedulerError> {
        self.fire_latest(self.clock.wall()).await
    }

    /// Catches up, then fires every schedule until `shutdown`. The timer runs in real time
    /// (tokio-cron-scheduler); the tick it records is read from the scheduler's clock.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SchedulerError> {
        self.catch_up(self.clock.wall()).await?;
        let mut sched = tokio_cron_scheduler::JobScheduler::new().await?;
        for (i, s) in self.schedules.iter().enumerate() {
            let me = self.clone();
            let stopped = shutdown.clone();
            let job = tokio_cron_scheduler::Job::new_async(s.expr.as_str(), move |_id, _lock| {
                let me = me.clone();
                let stopped = stopped.clone();
                Box::pin(async move {
                    // The library can still fire a tick it had scheduled after shutdown.
                    if stopped.is_cancelled() {
                        return;
                    }
                    let s = &me.schedules[i];
                    let Some(tick) = s.latest_tick(me.clock.wall()) else {
                        return;
                    };
                    // A failure here (database down) is retried by the next scheduler start's
                    // catch-up at the latest; log it loudly.
                    if let Err(e) = me.enqueue_tick(s, tick).await {
                        tracing::error!(schedule = %s.name, tick = %tick, error = %e, "enqueueing a cron tick failed");
                    }
                })
            })?;
            sched.add(job).await?;
        }
        sched.start().await?;
        tracing::info!(schedules = self.schedules.len(), "scheduler started");
        shutdown.cancelled().await;
        sched.shutdown().await?;
        tracing::info!("scheduler stopped");
        Ok(())
    }
}
