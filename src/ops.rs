//! Operator commands behind `fleet queue …`: inspect, replay, cancel, pause, resume, drain,
//! prune. Every mutating command can run as a dry run (the change is made inside a
//! transaction and rolled back, so the report shows exactly what would change) and otherwise
//! commits its change together with an `audit_log` row naming the actor.

use std::time::{Duration, Instant};

use jobs::Db;

use crate::scheduler::Schedule;
use serde::Serialize;
use serde_json::json;

use jobs::audit;

use crate::queue::{
    self, DrainCounts, JobFilter, JobRecord, JobState, JobSummary, KindStats, ReplayResult,
};

/// Rows deleted per prune statement (keeps each transaction short).
const PRUNE_BATCH: i64 = 10_000;

/// Why an operator command did not do what it was asked. Whatever the variant, a command
/// that fails changed nothing, except a timed-out drain (its kinds are left fully paused, as
/// the message says). The CLI maps each variant to an exit code and the console to an HTTP
/// status, each in one place (`cli::exit_code`, the console's `PageError`).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The command cannot be done as asked: a missing filter, a bad limit, an unknown kind, a
    /// booking that does not exist or cannot be refunded. The message says what to change.
    #[error("{0}")]
    Usage(String),
    /// The job asked for does not exist.
    #[error("no job with id {0}")]
    NoSuchJob(i64),
    /// A drain ran out of time with work left; its kinds are now fully paused.
    #[error(transparent)]
    DrainTimedOut(#[from] DrainTimedOut),
    /// The read replica (`database.read_url`) could not be read; `target` names it (host,
    /// port, database, user; never the password).
    #[error("cannot read from the read replica at {target} (read_url)")]
    Replica {
        /// Where the replica is.
        target: String,
        /// What the read failed with.
        #[source]
        source: sqlx::Error,
    },
    /// A domain command failed (the database or the enqueue under it).
    #[error(transparent)]
    Domain(#[from] jobs::JobError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an operator command returns.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// Returns an [`OpsError::Usage`] from the enclosing function.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(OpsError::Usage(format!($($t)*)))
    };
}

/// What a mutating command changed, or would change with `dry_run`.
#[derive(Debug, Clone, Serialize)]
pub struct Mutation<T: Serialize> {
    /// The command (`replay`, `cancel`, `pause`, …).
    pub action: &'static str,
    /// Nothing was committed.
    pub dry_run: bool,
    /// Who acted, as written to the audit row.
    pub actor: String,
    /// What changed (in a dry run: what would have).
    pub result: T,
}

/// What [`Ops::limits`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitsReport {
    /// One per limited kind.
    pub kinds: Vec<KindLimitState>,
    /// Every declared budget.
    pub budgets: Vec<queue::BudgetState>,
}

impl LimitsReport {
    /// Fills `waiting_on_limit` and `limited_by` of `stats` (a kind on several queues: on its
    /// first row, at most that row's ready count).
    pub fn annotate(&self, stats: &mut [KindStats]) {
        let mut seen = std::collections::HashSet::new();
        for s in stats.iter_mut() {
            let Some(k) = self.kinds.iter().find(|k| k.kind == s.kind) else {
                continue;
            };
            if !seen.insert(s.kind.clone()) {
                continue;
            }
            let ready = s.states.get("available").copied().unwrap_or(0);
            s.waiting_on_limit = k.waiting_on_limit.min(ready);
            s.limited_by = k.reason.clone().filter(|_| s.waiting_on_limit > 0);
        }
    }
}

/// What [`Ops::overview`] read, as one moment.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Per-kind counts, annotated with what the limits hold.
    pub stats: Vec<KindStats>,
    /// The limited kinds and the budgets.
    pub limits: LimitsReport,
    /// Completions per kind per minute, oldest first.
    pub completions: Vec<queue::CompletionMinute>,
    /// The workers registry.
    pub workers: Vec<queue::WorkerRow>,
    /// Jobs running now, newest first.
    pub running: Vec<JobSummary>,
    /// Paused and draining kinds.
    pub paused: Vec<queue::PausedKind>,
}

/// A limited kind as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct KindLimitState {
    /// The kind.
    pub kind: String,
    /// Running under a live lease, fleet-wide.
    pub running: i64,
    /// Its fleet-wide limit.
    pub global_concurrency: Option<i64>,
    /// Its per-key limit.
    pub key_concurrency: Option<i64>,
    /// The budgets it spends.
    pub budgets: Vec<String>,
    /// Ready jobs.
    pub ready: i64,
    /// Of those, held back by a limit or a budget (the rest wait for a worker).
    pub waiting_on_limit: i64,
    /// What holds them.
    pub reason: Option<String>,
}

/// Operator commands over one database. Reads go to [`Ops::with_reads`]'s database (a read
/// replica) when one is given; every write, dry run and the drain's own counting go to the
/// primary.
pub struct Ops {
    db: Db,
    reads: Db,
    replica: bool,
    known_kinds: Vec<String>,
    actor: String,
}

impl Ops {
    /// `known_kinds`: the kinds this binary registers (others are accepted only if stored).
    pub fn new(db: impl Into<Db>, known_kinds: Vec<String>, actor: impl Into<String>) -> Self {
        let db = db.into();
        Self {
            reads: db.clone(),
            db,
            replica: false,
            known_kinds,
            actor: actor.into(),
        }
    }

    /// These commands over `db`: reads on its replica when it has one.
    pub fn on(db: &crate::databases::Database, known_kinds: Vec<String>, actor: &str) -> Self {
        let ops = Self::new(db.db.clone(), known_kinds, actor);
        if db.replica.is_some() {
            ops.with_reads(db.reads.clone())
        } else {
            ops
        }
    }

    /// Sends the reads (stats, lists, one job, paused kinds, workers, bookings, audit) to
    /// `reads`, a hot standby of the primary: they show the replica's state, up to its lag.
    pub fn with_reads(mut self, reads: Db) -> Self {
        self.reads = reads;
        self.replica = true;
        self
    }

    /// How far the read replica is behind the primary; `None` without a replica.
    pub async fn replica_lag(&self) -> Result<Option<crate::databases::ReplicaLag>> {
        if !self.replica {
            return Ok(None);
        }
        let lag = crate::databases::replica_lag(
            &self.db,
            &self.reads,
            crate::databases::LAG_PROBE_BUDGET,
        )
        .await
        .map_err(|source| self.replica_error(source))?;
        Ok(Some(lag))
    }

    /// Fails unless `kind` is registered here or has jobs stored.
    pub async fn check_kind(&self, kind: &str) -> Result<()> {
        if self.known_kinds.iter().any(|k| k == kind) {
            return Ok(());
        }
        if self.read(queue::kind_exists(&self.reads, kind)).await? {
            return Ok(());
        }
        usage!(
            "unknown job kind {kind:?}: not registered and no jobs stored (known: {})",
            self.known_kinds.join(", ")
        )
    }

    async fn check_filter(&self, f: &JobFilter) -> Result<()> {
        if let Some(k) = &f.kind {
            self.check_kind(k).await?;
        }
        if let (Some(a), Some(b)) = (f.since, f.until) {
            if a >= b {
                usage!("created since ({a}) must be before created until ({b})");
            }
        }
        Ok(())
    }

    /// The paused and draining kinds.
    pub async fn paused(&self) -> Result<Vec<queue::PausedKind>> {
        self.read(queue::kind_list_paused(&self.reads)).await
    }

    /// Registered workers; `alive` when the last heartbeat is within `alive_within`.
    pub async fn workers(&self, alive_within: Duration) -> Result<Vec<queue::WorkerRow>> {
        self.read(queue::worker_list(&self.reads, alive_within, None))
            .await
    }

    /// Of `kinds`, those no live worker claims (by kind and by the kind's queue, from
    /// `queue_of`; a kind this binary does not know counts as served by any worker running it).
    pub async fn unserved_kinds(
        &self,
        kinds: &[String],
        queue_of: impl Fn(&str) -> Option<String>,
        alive_within: Duration,
    ) -> Result<Vec<String>> {
        let live: Vec<queue::WorkerRow> = self
            .workers(alive_within)
            .await?
            .into_iter()
            .filter(|w| w.alive)
            .collect();
        Ok(kinds
            .iter()
            .filter(|k| {
                !live.iter().any(|w| match queue_of(k) {
                    Some(q) => w.serves(k, &q),
                    None => w.kinds.contains(k),
                })
            })
            .cloned()
            .collect())
    }

    /// What waits on a fleet-wide limit or a rate budget (separately from what waits for a
    /// worker), per limited kind of `registry`, and every declared budget's level.
    pub async fn limits(&self, registry: &crate::Registry) -> Result<LimitsReport> {
        let specs = limit_specs(registry);
        let counts = self
            .read(queue::kind_limit_counts(&self.reads, &specs, None))
            .await?;
        let budgets = self
            .read(queue::budget_list(&self.reads, &registry.budgets(), None))
            .await?;
        Ok(limits_report(registry, &specs, counts, budgets))
    }

    /// Everything the console's overview shows but the replica's lag, read in one
    /// `REPEATABLE READ READ ONLY` transaction, so all of it is one moment of the database:
    /// a job listed as running is counted as running, a worker listed holds what it is shown
    /// holding. (Read one statement after another, a job that started between the counts and
    /// the list showed in the list and not in the count.)
    pub async fn overview(
        &self,
        registry: &crate::Registry,
        chart_minutes: i32,
        alive_within: Duration,
        running_shown: i64,
    ) -> Result<Overview> {
        check_minutes(chart_minutes)?;
        check_page(running_shown)?;
        let specs = limit_specs(registry);
        let running = JobFilter {
            states: Some(vec![JobState::Running]),
            ..JobFilter::default()
        };
        self.read(async {
            let mut tx = self.begin_snapshot().await?;
            let mut stats = queue::job_stats(&mut tx, None).await?;
            let counts = queue::kind_limit_counts(&mut *tx, &specs, None).await?;
            let budgets = queue::budget_list(&mut *tx, &registry.budgets(), None).await?;
            let limits = limits_report(registry, &specs, counts, budgets);
            limits.annotate(&mut stats);
            let overview = Overview {
                stats,
                limits,
                completions: queue::job_count_completed_by_minute(&mut *tx, chart_minutes, None)
                    .await?,
                workers: queue::worker_list(&mut *tx, alive_within, None).await?,
                running: queue::job_list(&mut *tx, &running, running_shown, None).await?,
                paused: queue::kind_list_paused(&mut *tx).await?,
            };
            tx.commit().await?;
            Ok(overview)
        })
        .await
    }

    /// A read-only transaction on the reads' database whose statements all see one snapshot,
    /// each bounded (by the server) by the handle's statement timeout: statements in a
    /// transaction are not bounded by the handle itself.
    async fn begin_snapshot(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut tx = self.reads.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        if let Some(limit) = self.reads.statement_timeout() {
            sqlx::query("SELECT set_config('statement_timeout', $1, true)")
                .bind(format!("{}ms", limit.as_millis()))
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
    /// Per-kind counts.
    pub async fn stats(&self) -> Result<Vec<KindStats>> {
        self.read(async {
            let mut tx = self.begin_snapshot().await?;
            let stats = queue::job_stats(&mut tx, None).await?;
            tx.commit().await?;
            Ok(stats)
        })
        .await
    }

    /// Per kind, completions in each of the last `minutes` minutes (1..=60), oldest first.
    pub async fn completions(&self, minutes: i32) -> Result<Vec<queue::CompletionMinute>> {
        check_minutes(minutes)?;
        self.read(queue::job_count_completed_by_minute(
            &self.reads,
            minutes,
            None,
        ))
        .await
    }

    /// Per kind, completions, deaths and failed attempts in each of the last `buckets` hours
    /// or days (1..=400).
    pub async fn activity(
        &self,
        bucket: queue::Bucket,
        buckets: i32,
    ) -> Result<Vec<queue::ActivityBucket>> {
        if !(1..=400).contains(&buckets) {
            usage!("activity covers 1 to 400 buckets, not {buckets}");
        }
        self.read(queue::job_count_activity(
            &self.reads,
            bucket,
            buckets,
            None,
        ))
        .await
    }

    /// A page of jobs, newest first.
    pub async fn list(
        &self,
        f: &JobFilter,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<JobSummary>> {
        self.check_filter(f).await?;
        check_page(limit)?;
        self.read(queue::job_list(&self.reads, f, limit, before_id))
            .await
    }

    /// [`OpsError::NoSuchJob`] for the first of the filter's ids that no job has: an id that
    /// matched nothing because it does not exist is told apart from one whose job is in
    /// another state.
    async fn check_ids(&self, f: &JobFilter) -> Result<()> {
        if let Some(ids) = &f.ids {
            if let Some(&id) = queue::job_ids_missing(&self.db, ids).await?.first() {
                return Err(OpsError::NoSuchJob(id));
            }
        }
        Ok(())
    }

    /// One job with its error history.
    pub async fn show(&self, id: i64) -> Result<JobRecord> {
        self.read(queue::job_get(&self.reads, id))
            .await?
            .ok_or(OpsError::NoSuchJob(id))
    }

    /// The jobs job `id`'s handlers enqueued.
    pub async fn children(&self, id: i64) -> Result<Vec<JobSummary>> {
        self.read(queue::job_list_children(&self.reads, id)).await
    }

    /// Dead or cancelled jobs → available with a fresh attempt budget. A filter without
    /// `states` and without ids replays **dead** jobs only: a job an operator cancelled was
    /// stopped on purpose, and comes back only when asked for (`--state cancelled`, or its id).
    /// An id no job has is [`OpsError::NoSuchJob`].
    pub async fn replay(&self, f: &JobFilter, dry_run: bool) -> Result<Mutation<ReplayResult>> {
        self.check_filter(f).await?;
        if f.is_empty() {
            usage!("replay needs job ids or a filter (kind, state, queue, created since or until, key, args)");
        }
        self.check_ids(f).await?;
        let dead_only;
        let f = if f.states.is_none() && f.ids.is_none() {
            dead_only = JobFilter {
                states: Some(vec![JobState::Dead]),
                ..f.clone()
            };
            &dead_only
        } else {
            f
        };
        if let Some(states) = &f.states {
            if let Some(s) = states
                .iter()
                .find(|s| !matches!(s, JobState::Dead | JobState::Cancelled))
            {
                usage!("only dead or cancelled jobs can be replayed; state {s} is not one of them");
            }
        }
        let mut tx = self.db.begin().await?;
        let result = queue::job_replay(&mut tx, f, None).await?;
        self.finish(tx, dry_run, "job.replay", json!({ "filter": f, "replayed": result.replayed.len(), "ids": capped(&result.replayed) }))
            .await?;
        Ok(self.mutation("replay", dry_run, result))
    }

    /// Unfinished jobs → cancelled; running handlers are told to stop.
    pub async fn cancel(
        &self,
        f: &JobFilter,
        dry_run: bool,
    ) -> Result<Mutation<Vec<queue::CancelledJob>>> {
        self.check_filter(f).await?;
        if f.is_empty() {
            usage!("cancel needs job ids or a filter (kind, state, queue, created since or until, key, args)");
        }
        self.check_ids(f).await?;
        let mut tx = self.db.begin().await?;
        let result = queue::job_cancel(&mut tx, f, &self.actor, None).await?;
        let ids: Vec<i64> = result.iter().map(|c| c.id).collect();
        self.finish(
            tx,
            dry_run,
            "job.cancel",
            json!({ "filter": f, "cancelled": ids.len(), "ids": capped(&ids) }),
        )
        .await?;
        Ok(self.mutation("cancel", dry_run, result))
    }

    /// Scheduled or retrying jobs → available now (a retry's attempt stays charged): "retry
    /// now" after the cause of a backoff is fixed, or "run now" for a job scheduled later.
    pub async fn run_now(&self, f: &JobFilter, dry_run: bool) -> Result<Mutation<Vec<i64>>> {
        self.check_filter(f).await?;
        if f.is_empty() {
            usage!("run-now needs job ids or a filter (kind, state, queue, created since or until, key, args)");
        }
        self.check_ids(f).await?;
        if let Some(s) = f
            .states
            .iter()
            .flatten()
            .find(|s| !matches!(s, JobState::Scheduled | JobState::Retryable))
        {
            usage!("only scheduled or retrying jobs can be run now; state {s} is not one of them");
        }
        let mut tx = self.db.begin().await?;
        let ids = queue::job_run_now(&mut tx, f, None).await?;
        self.finish(
            tx,
            dry_run,
            "job.run_now",
            json!({ "filter": f, "moved": ids.len(), "ids": capped(&ids) }),
        )
        .await?;
        Ok(self.mutation("run_now", dry_run, ids))
    }

    /// Finished jobs (completed, cancelled, dead) → deleted with their history, unless their
    /// idempotency key is still held. Unlike `prune` it takes a filter and ids, for the one
    /// job an operator wants gone (a payload sent by mistake).
    pub async fn delete(
        &self,
        f: &JobFilter,
        dry_run: bool,
    ) -> Result<Mutation<queue::DeleteResult>> {
        self.check_filter(f).await?;
        if f.is_empty() {
            usage!("delete needs job ids or a filter (kind, state, queue, created since or until, key, args)");
        }
        self.check_ids(f).await?;
        if let Some(s) = f.states.iter().flatten().find(|s| !s.is_final()) {
            usage!("only finished jobs (completed, cancelled, dead) can be deleted; state {s} is not one of them: cancel it first");
        }
        let mut tx = self.db.begin().await?;
        let result = queue::job_delete_finished(&mut tx, f, None).await?;
        self.finish(
            tx,
            dry_run,
            "job.delete",
            json!({ "filter": f, "deleted": result.deleted.len(), "ids": capped(&result.deleted) }),
        )
        .await?;
        Ok(self.mutation("delete", dry_run, result))
    }

    /// Each of `schedules` (the `[schedules.*]` this process was configured with): its
    /// pattern, kind and args, whether it is paused, its next tick and its latest
    /// [`TICKS_SHOWN`] recorded ticks with what became of their jobs.
    pub async fn schedules(&self, schedules: &[Schedule]) -> Result<Vec<ScheduleReport>> {
        let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
        let paused = self.read(queue::schedule_list_paused(&self.reads)).await?;
        let ticks = self
            .read(queue::cron_tick_list_latest(
                &self.reads,
                &names,
                TICKS_SHOWN,
            ))
            .await?;
        let now = chrono::Utc::now();
        Ok(schedules
            .iter()
            .map(|s| ScheduleReport {
                name: s.name.clone(),
                cron: s.expr.clone(),
                kind: s.kind.clone(),
                args: s.args.clone(),
                paused: paused.iter().find(|p| p.schedule == s.name).cloned(),
                next_tick: s.next_tick(now),
                ticks: ticks
                    .iter()
                    .filter(|t| t.schedule == s.name)
                    .cloned()
                    .collect(),
            })
            .collect())
    }

    /// Stops `name` (one of `schedules`) from enqueueing: its ticks are recorded as skipped
    /// until `schedule_resume`; they are not replayed. Result: whether it changed anything.
    pub async fn schedule_pause(
        &self,
        schedules: &[Schedule],
        name: &str,
        reason: &str,
        dry_run: bool,
    ) -> Result<Mutation<bool>> {
        check_schedule(schedules, name)?;
        let mut tx = self.db.begin().await?;
        let changed = queue::schedule_pause(&mut *tx, name, &self.actor, reason).await?;
        self.finish_audited(
            tx,
            dry_run,
            "schedule.pause",
            "schedule",
            Some(name),
            json!({ "changed": changed, "reason": reason }),
        )
        .await?;
        Ok(self.mutation("schedule_pause", dry_run, changed))
    }

    /// Lets `name` enqueue again from its next tick.
    pub async fn schedule_resume(
        &self,
        schedules: &[Schedule],
        name: &str,
        dry_run: bool,
    ) -> Result<Mutation<bool>> {
        check_schedule(schedules, name)?;
        let mut tx = self.db.begin().await?;
        let changed = queue::schedule_resume(&mut *tx, name).await?;
        self.finish_audited(
            tx,
            dry_run,
            "schedule.resume",
            "schedule",
            Some(name),
            json!({ "changed": changed }),
        )
        .await?;
        Ok(self.mutation("schedule_resume", dry_run, changed))
    }

    /// What `kind` has waiting and running: queued (split into a drain's backlog and held),
    /// waiting to retry, running. What a pause would hold or a resume release.
    pub async fn waiting(&self, kind: &str) -> Result<DrainCounts> {
        self.check_kind(kind).await?;
        Ok(queue::job_count_draining(&self.db, &[kind.to_owned()]).await?)
    }

    /// Stops every worker from claiming `kind`. Result: whether it changed anything.
    pub async fn pause(&self, kind: &str, reason: &str, dry_run: bool) -> Result<Mutation<bool>> {
        self.check_kind(kind).await?;
        let mut tx = self.db.begin().await?;
        let changed = queue::kind_pause(&mut *tx, kind, &self.actor, reason).await?;
        self.finish_on(
            tx,
            dry_run,
            "kind.pause",
            kind,
            json!({ "changed": changed, "reason": reason }),
        )
        .await?;
        Ok(self.mutation("pause", dry_run, changed))
    }

    /// Lets workers claim `kind` again.
    pub async fn resume(&self, kind: &str, dry_run: bool) -> Result<Mutation<bool>> {
        self.check_kind(kind).await?;
        let mut tx = self.db.begin().await?;
        let changed = queue::kind_resume(&mut *tx, kind).await?;
        self.finish_on(
            tx,
            dry_run,
            "kind.resume",
            kind,
            json!({ "changed": changed }),
        )
        .await?;
        Ok(self.mutation("resume", dry_run, changed))
    }

    /// Drains `kinds` (before a deploy): holds their new intake, lets the backlog that is
    /// already queued and the jobs already running finish, then leaves the kinds fully paused
    /// until `resume`. Done when none of their jobs is available (apart from held intake) or
    /// running. A kind that is already fully paused stays so: its queue is held, not run, and
    /// only its running jobs are waited for. `progress` gets the counts after every poll.
    ///
    /// On timeout the kinds are fully paused as well and the error says what is left.
    pub async fn drain(
        &self,
        kinds: &[String],
        timeout: Duration,
        dry_run: bool,
        mut progress: impl FnMut(&DrainCounts),
    ) -> Result<Mutation<DrainResult>> {
        if kinds.is_empty() {
            usage!("drain needs at least one kind");
        }
        for k in kinds {
            self.check_kind(k).await?;
        }
        let started = Instant::now();
        let conn = &self.db;
        let result = |counts: DrainCounts,
                      already_paused: &[String],
                      drained: bool,
                      waited_ms: u64| DrainResult {
            kinds: kinds.to_vec(),
            already_paused: already_paused.to_vec(),
            backlog: counts.backlog,
            held: counts.held,
            running: counts.running,
            retrying: counts.retrying,
            next_retry_at: counts.next_retry_at,
            money: Vec::new(),
            drained,
            waited_ms,
        };
        if dry_run {
            let already_paused: Vec<String> = queue::kind_list_paused(conn)
                .await?
                .into_iter()
                .filter(|p| p.draining_through_id.is_none() && kinds.contains(&p.kind))
                .map(|p| p.kind)
                .collect();
            let counts = queue::job_count_draining(conn, kinds).await?;
            let mut r = result(counts, &already_paused, false, 0);
            r.money = self.money_moved_by(kinds).await?;
            return Ok(self.mutation("drain", true, r));
        }
        // Kinds whose drain did not start are fully paused: the statement that refused to
        // set their cutoff is the one that decides, so no separate read can race with a pause.
        let mut already_paused = Vec::new();
        {
            let mut tx = self.db.begin().await?;
            let mut cutoffs = serde_json::Map::new();
            for k in kinds {
                let cutoff = queue::kind_drain_start(&mut *tx, k, &self.actor).await?;
                if cutoff.is_none() {
                    already_paused.push(k.clone());
                }
                cutoffs.insert(k.clone(), json!(cutoff));
            }
            queue::audit_record(
                &mut *tx,
                &self.actor,
                "kind.drain",
                "kind",
                Some(&kinds.join(",")),
                &json!({
                    "timeout_ms": timeout.as_millis() as u64,
                    "draining_through_id": cutoffs,
                    "already_paused": already_paused,
                }),
            )
            .await?;
            tx.commit().await?;
        }
        loop {
            let counts = queue::job_count_draining(conn, kinds).await?;
            progress(&counts);
            if counts.backlog == 0 && counts.running == 0 {
                // End the drain, then look once more: a backlog retry that came due between
                // the count and this statement may have been claimed. Anything still queued is
                // now held, so only running jobs can remain to wait for.
                queue::kind_drain_end(conn, kinds).await?;
                let after = queue::job_count_draining(conn, kinds).await?;
                if after.running == 0 {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    let mut r = result(after, &already_paused, true, waited_ms);
                    r.money = self.money_moved_by(kinds).await?;
                    return Ok(self.mutation("drain", false, r));
                }
            } else if started.elapsed() >= timeout {
                queue::kind_drain_end(conn, kinds).await?;
                return Err(OpsError::DrainTimedOut(DrainTimedOut {
                    kinds: kinds.join(", "),
                    timeout,
                    backlog: counts.backlog,
                    running: counts.running,
                }));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The money the unfinished jobs of `kinds` still move (card holds their booking attempts
    /// took, refunds they owe), oldest first: what "nothing running" does not say. At most
    /// [`MONEY_SHOWN`] bookings are looked at.
    pub async fn money_moved_by(&self, kinds: &[String]) -> Result<Vec<MoneyHeld>> {
        let mut out = Vec::new();
        for (m, jobs) in money_and_unfinished_jobs(&self.db, MONEY_SHOWN, Some(kinds)).await? {
            for j in jobs {
                out.push(MoneyHeld {
                    booking_id: m.booking.id,
                    what: m.what,
                    amount: m.booking.total_amount.clone(),
                    currency: m.booking.currency.clone(),
                    since: m.booking.since,
                    job_id: j.id,
                    job_state: j.state.clone(),
                    job_run_at: j.run_at,
                });
            }
        }
        Ok(out)
    }

    /// Deletes finished jobs in `states` older than `older_than`, in batches.
    pub async fn prune(
        &self,
        older_than: Duration,
        states: &[JobState],
        dry_run: bool,
    ) -> Result<Mutation<u64>> {
        if let Some(s) = states.iter().find(|s| !s.is_final()) {
            usage!("only finished jobs can be pruned; state {s} is not final");
        }
        if older_than < Duration::from_secs(60) {
            usage!("older than must be at least 1m (got {older_than:?})");
        }
        let deleted = if dry_run {
            queue::job_count_prunable(&self.db, states, older_than, None).await? as u64
        } else {
            // Each batch commits with its own audit row: a prune interrupted half-way leaves
            // exactly the deletions it audited.
            let mut total = 0;
            let mut after_id = 0;
            for batch in 1.. {
                let mut tx = self.db.begin().await?;
                let b = queue::job_prune_finished(
                    &mut *tx,
                    states,
                    older_than,
                    PRUNE_BATCH,
                    after_id,
                    None,
                )
                .await?;
                let n = b.deleted;
                if n > 0 || batch == 1 {
                    queue::audit_record(
                        &mut *tx,
                        &self.actor,
                        "job.prune",
                        "job",
                        None,
                        &json!({
                        "deleted": n, "batch": batch, "older_than_s": older_than.as_secs(),
                        "states": states.iter().map(|s| s.as_str()).collect::<Vec<_>>() }),
                    )
                    .await?;
                }
                tx.commit().await?;
                total += n;
                match b.next_after_id {
                    Some(next) => after_id = next,
                    None => break,
                }
            }
            total
        };
        Ok(self.mutation("prune", dry_run, deleted))
    }

    /// A booking for operators: its domain record (steps, provider ids, refunds, emails, audit;
    /// no PII, from the domain's [`jobs::operator::booking_show`]) and the jobs behind it.
    pub async fn booking(&self, id: uuid::Uuid) -> Result<BookingReport> {
        let Some((view, selectors)) = self
            .read(jobs::operator::booking_show(&self.reads, id))
            .await?
        else {
            usage!("no booking with id {id}");
        };
        let mut found: Vec<JobSummary> = Vec::new();
        for sel in selectors {
            let f = JobFilter {
                kind: Some(sel.kind.to_owned()),
                idempotency_key: sel.key,
                args_contain: sel.args,
                ..JobFilter::default()
            };
            for j in self
                .read(queue::job_list(&self.reads, &f, 50, None))
                .await?
            {
                if !found.iter().any(|x| x.id == j.id) {
                    found.push(j);
                }
            }
        }
        found.sort_by_key(|j| j.id);
        Ok(BookingReport {
            booking: view,
            jobs: found,
        })
    }

    /// Requests a refund of booking `id` for `reason` (a code), under this actor: the domain's
    /// command ([`jobs::operator::booking_refund`]), which audits it in the domain's trail. A
    /// dry run makes the change and rolls it back, reporting what would happen.
    pub async fn booking_refund(
        &self,
        id: uuid::Uuid,
        reason: &str,
        queue: &crate::Queue,
        dry_run: bool,
    ) -> Result<Mutation<jobs::kinds::refund_compensation::OperatorRefund>> {
        use jobs::kinds::refund_compensation::RefundRefused;
        let r =
            match jobs::operator::booking_refund(&self.db, queue, &self.actor, id, reason, dry_run)
                .await
            {
                Ok(r) => r,
                Err(RefundRefused::Failed(e)) => return Err(OpsError::Domain(e)),
                Err(refused) => usage!("{refused}"),
            };
        Ok(self.mutation("booking_refund", dry_run, r))
    }

    /// Decides booking `id`'s open airline-initiated change before its deadline: accept the
    /// new schedule (queued at Duffel), or cancel the booking and refund it.
    pub async fn airline_change_decide(
        &self,
        id: uuid::Uuid,
        choice: jobs::operator::ChangeChoice,
        queue: &crate::Queue,
        dry_run: bool,
    ) -> Result<Mutation<jobs::operator::ChangeDecision>> {
        use jobs::operator::ChangeRefused;
        let r = match jobs::operator::airline_change_decide(
            &self.db,
            queue,
            &self.actor,
            id,
            choice,
            dry_run,
        )
        .await
        {
            Ok(r) => r,
            Err(ChangeRefused::Failed(e)) => return Err(OpsError::Domain(e)),
            Err(refused) => usage!("{refused}"),
        };
        Ok(self.mutation("airline_change_decide", dry_run, r))
    }

    /// Opens a traveler's erasure or export request (or returns the one open) and queues its
    /// job: [`jobs::data_rights::open`], which audits it in the domain's trail. A dry run
    /// rolls everything back and reports what would happen (an erasure's preview).
    pub async fn data_request(
        &self,
        kind: jobs::data_rights::RequestKind,
        user_id: uuid::Uuid,
        queue: &crate::Queue,
        dry_run: bool,
    ) -> Result<Mutation<jobs::data_rights::Opened>> {
        use jobs::data_rights::{open, Asker, RequestRefused, Source};
        let asker = Asker {
            source: Source::Operator,
            name: &self.actor,
            external_id: None,
        };
        let r = match open(&self.db, queue, kind, user_id, &asker, dry_run).await {
            Ok(r) => r,
            Err(RequestRefused::Failed(e)) => return Err(OpsError::Domain(e)),
            Err(refused) => usage!("{refused}"),
        };
        let action = match kind {
            jobs::data_rights::RequestKind::Erasure => "traveler_erase",
            jobs::data_rights::RequestKind::Export => "traveler_export",
        };
        Ok(self.mutation(action, dry_run, r))
    }

    /// Open erasure and export requests, oldest first, with their age against the deadline.
    pub async fn data_requests_open(
        &self,
        limit: i64,
    ) -> Result<Vec<jobs::data_rights::DataRequest>> {
        self.read(jobs::data_rights::list_open(&self.reads, limit))
            .await
    }

    /// Every request of one traveler, newest first (kept after an erasure).
    pub async fn data_requests_of(
        &self,
        user_id: uuid::Uuid,
    ) -> Result<Vec<jobs::data_rights::DataRequest>> {
        self.read(jobs::data_rights::of_user(&self.reads, user_id))
            .await
    }

    /// Records that booking `id`'s failed refund was paid back another way (`how`, with a
    /// `reference` that is an id: `^[A-Za-z0-9_.:-]{1,64}$`), so its money is no longer owed.
    pub async fn booking_paid_out(
        &self,
        id: uuid::Uuid,
        how: &str,
        reference: &str,
        dry_run: bool,
    ) -> Result<Mutation<jobs::kinds::refund_compensation::PaidOut>> {
        use jobs::kinds::refund_compensation::PayoutRefused;
        let ok_ref = !reference.is_empty()
            && reference.len() <= 64
            && reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !ok_ref {
            usage!(
                "--reference must be the finance ticket's id (letters, digits, _ . : -, at most \
                 64), not free text: it is kept in the audit trail"
            );
        }
        let r = match jobs::operator::booking_paid_out(
            &self.db,
            &self.actor,
            id,
            how,
            reference,
            dry_run,
        )
        .await
        {
            Ok(r) => r,
            Err(PayoutRefused::Failed(e)) => return Err(OpsError::Database(e)),
            Err(refused) => usage!("{refused}"),
        };
        Ok(self.mutation("booking_paid_out", dry_run, r))
    }

    /// Money today (since 00:00 UTC) and over the last 7 days, with what is owed now.
    pub async fn money(&self) -> Result<MoneyReport> {
        let now = chrono::Utc::now();
        let midnight = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        Ok(MoneyReport {
            today: self
                .read(jobs::report::money(&self.reads, midnight))
                .await?,
            week: self
                .read(jobs::report::money(
                    &self.reads,
                    now - chrono::Duration::days(7),
                ))
                .await?,
            refunds_now: self.read(jobs::report::refund_gauges(&self.reads)).await?,
        })
    }

    /// Bookings newest first, of `status` if given (a booking status: `failed`,
    /// `authorized`, …), older than `before`, at most `limit` (1..=500).
    pub async fn bookings(
        &self,
        status: Option<&str>,
        before: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>,
        limit: i64,
    ) -> Result<Vec<jobs::booking::BookingListRow>> {
        use jobs::booking::BookingStatus;
        let status = match status {
            None => None,
            Some(s) => match BookingStatus::try_from(s.to_owned()) {
                Ok(st) => Some(st),
                Err(_) => usage!(
                    "status {s:?} is not a booking status (one of {})",
                    BookingStatus::ALL.map(BookingStatus::as_str).join(", ")
                ),
            },
        };
        if !(1..=500).contains(&limit) {
            usage!("a page holds 1 to 500 bookings, not {limit}");
        }
        self.read(jobs::operator::bookings_list(
            &self.reads,
            status,
            before,
            limit,
        ))
        .await
    }

    /// Audit rows, newest first: the engine's own (`fleet_audit`: queue and schema actions)
    /// and the domain's (`audit_log`: bookings, refunds, backfills, purges), merged by time.
    /// `f.before_id` may name a row of either.
    pub async fn audit(&self, f: &audit::AuditFilter) -> Result<Vec<audit::AuditEntry>> {
        if !(1..=10_000).contains(&f.limit) {
            usage!("a page holds 1 to 10000 rows, not {}", f.limit);
        }
        let before = match f.before_id {
            None => None,
            Some(id) => {
                let at = match self.read(queue::audit_position(&self.reads, id)).await? {
                    Some(at) => Some(at),
                    None => self.read(audit::position(&self.reads, id)).await?,
                };
                match at {
                    Some(at) => Some((at, id)),
                    // A cursor past every row (or a row since purged): nothing older.
                    None => return Ok(Vec::new()),
                }
            }
        };
        let engine = self.read(queue::audit_list(&self.reads, f, before)).await?;
        let domain = self
            .read(audit::list_before(&self.reads, f, before))
            .await?;
        Ok(newest_first(engine, domain, f.limit as usize))
    }

    /// Runs a read (on [`Ops::reads`]): a failure on the replica names it.
    async fn read<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        if !self.replica {
            return Ok(read.await?);
        }
        read.await.map_err(|source| self.replica_error(source))
    }

    fn replica_error(&self, source: sqlx::Error) -> OpsError {
        OpsError::Replica {
            target: crate::database::describe_target(
                &self.reads.session_independent_pool().connect_options(),
            ),
            source,
        }
    }

    fn mutation<T: Serialize>(
        &self,
        action: &'static str,
        dry_run: bool,
        result: T,
    ) -> Mutation<T> {
        Mutation {
            action,
            dry_run,
            actor: self.actor.clone(),
            result,
        }
    }

    async fn finish(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        dry_run: bool,
        action: &str,
        meta: serde_json::Value,
    ) -> Result<()> {
        self.finish_audited(tx, dry_run, action, "job", None, meta)
            .await
    }

    async fn finish_on(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        dry_run: bool,
        action: &str,
        kind: &str,
        meta: serde_json::Value,
    ) -> Result<()> {
        self.finish_audited(tx, dry_run, action, "kind", Some(kind), meta)
            .await
    }

    async fn finish_audited(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        dry_run: bool,
        action: &str,
        resource_type: &str,
        resource_id: Option<&str>,
        meta: serde_json::Value,
    ) -> Result<()> {
        if dry_run {
            tx.rollback().await?;
            return Ok(());
        }
        queue::audit_record(
            &mut *tx,
            &self.actor,
            action,
            resource_type,
            resource_id,
            &meta,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A booking and the jobs behind it.
#[derive(Debug, Clone, Serialize)]
pub struct BookingReport {
    /// The domain's record.
    pub booking: jobs::booking::BookingView,
    /// Its campaign's searches and attempts, its refund, its webhook follow-ups; by id.
    pub jobs: Vec<JobSummary>,
}

/// A drain that ran out of time: the kinds are now fully paused, with work left.
#[derive(Debug, thiserror::Error)]
#[error(
    "drain of {kinds} timed out after {}: {backlog} queued and {running} running job(s) left; \
     the kinds are now fully paused (`fleet queue resume KIND` to lift)",
    humantime::format_duration(*timeout)
)]
pub struct DrainTimedOut {
    /// The drained kinds.
    pub kinds: String,
    /// How long it waited.
    pub timeout: Duration,
    /// Queued jobs it would still have run.
    pub backlog: i64,
    /// Jobs still running.
    pub running: i64,
}

/// What `drain` saw when it stopped waiting.
#[derive(Debug, Clone, Serialize)]
pub struct DrainResult {
    /// The drained kinds (left fully paused).
    pub kinds: Vec<String>,
    /// Of those, the kinds that were fully paused already: their queue was held, not run.
    pub already_paused: Vec<String>,
    /// Queued jobs the drain lets run that are still queued (0 when drained; in a dry run,
    /// what a drain would run).
    pub backlog: i64,
    /// Queued jobs held until `resume` (enqueued after the drain began, or of an already
    /// paused kind).
    pub held: i64,
    /// Jobs still running (0 when drained).
    pub running: i64,
    /// Jobs waiting out a retry's backoff, held by the pause until resume: not "nothing in
    /// flight", for they may be mid-work (a booking between its payment hold and its order).
    pub retrying: i64,
    /// When the first of them is due.
    pub next_retry_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The money the kinds' unfinished jobs (queued, held, retrying or running) still move:
    /// card holds taken, refunds owed ([`Ops::money_moved_by`]).
    pub money: Vec<MoneyHeld>,
    /// Whether the backlog is done and nothing runs.
    pub drained: bool,
    /// How long it waited.
    pub waited_ms: u64,
}

/// A usage error unless `name` is one of `schedules`.
fn check_schedule(schedules: &[Schedule], name: &str) -> Result<()> {
    if schedules.iter().any(|s| s.name == name) {
        return Ok(());
    }
    let known: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    usage!(
        "no schedule named {name:?} (configured: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}

/// What [`Ops::money`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct MoneyReport {
    /// Since 00:00 UTC today.
    pub today: jobs::report::MoneyWindow,
    /// The last 7 days.
    pub week: jobs::report::MoneyWindow,
    /// Refunds now: by status, owed, oldest pending.
    pub refunds_now: jobs::report::RefundGauges,
}

/// How many of a schedule's latest ticks [`Ops::schedules`] shows.
pub const TICKS_SHOWN: i64 = 10;

/// A cron schedule as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleReport {
    /// Its name (`[schedules.NAME]`).
    pub name: String,
    /// The pattern (sec min hour day-of-month month day-of-week).
    pub cron: String,
    /// The kind each tick enqueues.
    pub kind: String,
    /// With these args.
    pub args: serde_json::Value,
    /// Set while it is paused.
    pub paused: Option<queue::PausedSchedule>,
    /// Its next tick.
    pub next_tick: Option<chrono::DateTime<chrono::Utc>>,
    /// Its latest recorded ticks, newest first.
    pub ticks: Vec<queue::CronTick>,
}

/// Every booking whose money is still moving (at most `limit`, oldest first) — only those moved
/// by a job of `only_kinds` when given — with the unfinished jobs (at most 5) that move it:
/// none means nothing will settle it.
pub(crate) async fn money_and_unfinished_jobs(
    db: &Db,
    limit: i64,
    only_kinds: Option<&[String]>,
) -> std::result::Result<Vec<(jobs::kinds::MoneyAtStake, Vec<JobSummary>)>, sqlx::Error> {
    let unfinished: Vec<JobState> = JobState::ALL
        .into_iter()
        .filter(|s| !s.is_final())
        .collect();
    let mut out = Vec::new();
    for m in jobs::kinds::money_at_stake(db, limit).await? {
        if only_kinds.is_some_and(|ks| !ks.iter().any(|k| k == m.job.kind)) {
            continue;
        }
        let f = JobFilter {
            kind: Some(m.job.kind.to_owned()),
            idempotency_key: m.job.key.clone(),
            args_contain: m.job.args.clone(),
            states: Some(unfinished.clone()),
            ..JobFilter::default()
        };
        let jobs = queue::job_list(db, &f, 5, None).await?;
        out.push((m, jobs));
    }
    Ok(out)
}

/// The most bookings [`Ops::money_moved_by`] looks at.
pub const MONEY_SHOWN: i64 = 200;

/// A booking's money that an unfinished job still moves.
#[derive(Debug, Clone, Serialize)]
pub struct MoneyHeld {
    /// The booking (`fleet booking show ID`).
    pub booking_id: uuid::Uuid,
    /// `"card hold"` (the card is held; the job books or voids it) or `"refund owed"`
    /// (captured; the job refunds it).
    pub what: &'static str,
    /// Decimal amount.
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    /// Since when it is held or owed.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The job that moves it.
    pub job_id: i64,
    /// Its state.
    pub job_state: String,
    /// When it runs next.
    pub job_run_at: chrono::DateTime<chrono::Utc>,
}

/// The newest `limit` of two lists each newest first by `(created_at, id)`.
fn newest_first(
    a: Vec<audit::AuditEntry>,
    b: Vec<audit::AuditEntry>,
    limit: usize,
) -> Vec<audit::AuditEntry> {
    let mut all: Vec<audit::AuditEntry> = a.into_iter().chain(b).collect();
    all.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
    all.truncate(limit);
    all
}

/// At most 1,000 ids in an audit row.
fn capped(ids: &[i64]) -> &[i64] {
    &ids[..ids.len().min(1000)]
}

/// The fleet-wide limits of `registry`'s limited kinds.
fn limit_specs(registry: &crate::Registry) -> Vec<queue::KindLimitSpec> {
    registry
        .limited_kinds()
        .into_iter()
        .map(|k| {
            let st = registry.settings(&k).expect("registered");
            queue::KindLimitSpec {
                global_concurrency: st.global_concurrency.map(|n| n as i64),
                key_concurrency: st.key_concurrency.map(|n| n as i64),
                kind: k,
            }
        })
        .collect()
}

/// What holds each limited kind's ready jobs, from its counts and the budgets' levels.
fn limits_report(
    registry: &crate::Registry,
    specs: &[queue::KindLimitSpec],
    counts: Vec<queue::KindLimitCounts>,
    budgets: Vec<queue::BudgetState>,
) -> LimitsReport {
    let kinds = specs
        .iter()
        .zip(counts)
        .map(|(spec, c)| {
            let spent: Vec<String> = registry
                .budgets_of(&spec.kind)
                .into_iter()
                .map(|b| b.name)
                .collect();
            let empty = budgets
                .iter()
                .find(|b| spent.contains(&b.name) && b.level < 1.0);
            let (waiting, reason) = if c.ready == 0 {
                (0, None)
            } else if let Some(g) = spec.global_concurrency.filter(|g| c.running >= *g) {
                (
                    c.ready,
                    Some(format!("global_concurrency {}/{g}", c.running)),
                )
            } else if let Some(b) = empty {
                let why = match b.blocked_until {
                    Some(t) => format!("budget {} blocked until {}", b.name, t.to_rfc3339()),
                    None => format!("budget {} empty (refills {}/s)", b.name, b.per_second),
                };
                (c.ready, Some(why))
            } else if c.ready_key_at_limit > 0 {
                (
                    c.ready_key_at_limit,
                    Some(format!(
                        "key_concurrency {} reached for some keys",
                        spec.key_concurrency.unwrap_or_default()
                    )),
                )
            } else {
                (0, None)
            };
            KindLimitState {
                kind: spec.kind.clone(),
                running: c.running,
                global_concurrency: spec.global_concurrency,
                key_concurrency: spec.key_concurrency,
                budgets: spent,
                ready: c.ready,
                waiting_on_limit: waiting,
                reason,
            }
        })
        .collect();
    LimitsReport { kinds, budgets }
}

/// Fails unless `minutes` is a chart's span: 1 to 60.
fn check_minutes(minutes: i32) -> Result<()> {
    if !(1..=60).contains(&minutes) {
        usage!("minutes must be 1..=60, got {minutes}");
    }
    Ok(())
}

/// Fails unless `limit` is a page's size: 1 to 10,000 jobs.
fn check_page(limit: i64) -> Result<()> {
    if !(1..=10_000).contains(&limit) {
        usage!("a page holds 1 to 10000 jobs, not {limit}");
    }
    Ok(())
}
