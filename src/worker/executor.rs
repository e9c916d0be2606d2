//! Claiming jobs and running their handlers.

use std::{
    panic::AssertUnwindSafe,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures::FutureExt;
use jobs::{JobContext, JobError};
use rand::Rng;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{Held, Shared};
use crate::database::health::FailureStreak;
use crate::queue::{
    self, AttemptError, ClaimedJob, ErrorClass, FetchParams, LimitedFetch, NextState, Outcome,
};

/// How long a cancelled handler gets to return on its own before it is aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Claims jobs until `shutdown`; spawns one task per claim onto `tasks`.
pub(crate) async fn fetch_loop(
    s: Arc<Shared>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    let capacity = s.cfg.concurrency + s.cfg.prefetch;
    // Refetch once a quarter of the capacity is free (or the worker is idle): fewer, fuller
    // claims under load, no wait when idle.
    let threshold = (capacity / 4).max(1);
    let queues = (!s.cfg.queues.is_empty()).then(|| s.cfg.queues.clone());
    let limited_names: Vec<String> = s.limited.iter().map(|l| l.kind.clone()).collect();
    // This worker's kinds without a limit: ready rows of theirs still filed as limited (the
    // kind had a limit when they were enqueued) are re-filed for the plain claim, at start
    // and then every REFILE_EVERY.
    let unlimited_names: Vec<String> = s
        .registry
        .kind_names()
        .into_iter()
        .filter(|k| !limited_names.contains(k))
        .collect();
    let mut refile_due = tokio::time::Instant::now();
    let mut db_backoff = Duration::from_millis(100);
    // Which limited kind is tried first this round: rotates, so no limited kind takes every
    // free slot round after round.
    let mut first_limited = 0usize;
    // Limited kinds whose budgets were empty at their last claim, and when they next hold a
    // token: not tried (nor probed for ready jobs) before then.
    let mut budget_wait: std::collections::HashMap<String, tokio::time::Instant> =
        Default::default();
    // The claims' own connection, opened on first use and dropped (closed) on any error, so
    // a broken session is never reused.
    let mut session: Option<queue::ClaimSession> = None;
    let mut fetch_failures = FailureStreak::new("fetching jobs failed");
    let mut refile_failures = FailureStreak::new("re-filing ready jobs failed");
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !s.db.health().is_up() {
            // The monitor said so once; nothing is claimed until the database answers (the
            // claims a round would start could not be run to an outcome anyway).
            session = None;
            tokio::select! {
                _ = s.db.health().wait_up() => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let (free, skip_kinds, held_by_kind) = {
            let held = s.held.lock().unwrap();
            let mut held_by_kind: std::collections::HashMap<String, usize> = Default::default();
            if !s.limited.is_empty() {
                for h in held.values() {
                    *held_by_kind.entry(h.kind.clone()).or_default() += 1;
                }
            }
            let free = capacity.saturating_sub(held.len());
            let full = if held.is_empty() || free < threshold {
                Vec::new()
            } else {
                kinds_at_limit(&s, &held)
            };
            let free = if held.is_empty() || free >= threshold {
                free
            } else {
                0
            };
            (free, full, held_by_kind)
        };
        if tokio::time::Instant::now() >= refile_due && !unlimited_names.is_empty() {
            match refile_unlimited(&s, &unlimited_names).await {
                Ok(0) => refile_failures.succeeded(),
                Ok(n) => {
                    refile_failures.succeeded();
                    tracing::info!(
                        jobs = n,
                        "re-filed ready jobs of kinds without a limit here for the plain claim"
                    )
                }
                Err(e) => refile_failures.failed(&s.db, &e),
            }
            refile_due = tokio::time::Instant::now() + REFILE_EVERY;
        }
        if free > 0 {
            first_limited = first_limited.wrapping_add(1);
            let now = tokio::time::Instant::now();
            budget_wait.retain(|_, until| *until > now);
            let due: Vec<String> = limited_names
                .iter()
                .filter(|k| !budget_wait.contains_key(*k) && !skip_kinds.contains(k))
                .cloned()
                .collect();
            // Taken out for the round and put back only when it succeeds: a failed round
            // drops (closes) it.
            let taken = session.take();
            let round = async {
                let mut session = match taken {
                    Some(c) => c,
                    None => queue::ClaimSession::open(&s.db).await?,
                };
                let mut jobs = Vec::new();
                // Limited kinds first, each under its fleet-wide limits. They are claimed into
                // prefetch like the others: a prefetched claim is `running`, so it counts
                // against the limit (and has spent its token): prefetch can hold slots back,
                // never exceed a limit.
                if !due.is_empty() {
                    // One due kind that spends no budget is claimed without the probe: its
                    // claim of nothing costs the same probe plus an advisory lock, and writes
                    // nothing. A kind that spends a budget keeps the probe: its claim locks the
                    // budget's row, which other workers' claims wait on.
                    let unprobed = due.len() == 1
                        && s.limited
                            .iter()
                            .any(|l| l.kind == due[0] && l.budgets.is_empty());
                    let ready = if unprobed {
                        due.clone()
                    } else {
                        queue::kind_list_ready(session.conn(), &due, queues.as_deref()).await?
                    };
                    let n = s.limited.len();
                    for i in 0..n {
                        let l = &s.limited[(first_limited + i) % n];
                        if !ready.contains(&l.kind) {
                            continue;
                        }
                        let mut room = free.saturating_sub(jobs.len());
                        if let Some(c) = s.registry.settings(&l.kind).and_then(|st| st.concurrency)
                        {
                            let held = held_by_kind.get(&l.kind).copied().unwrap_or(0);
                            room = room.min(c.saturating_sub(held));
                        }
                        if room == 0 {
                            continue;
                        }
                        let got = queue::job_fetch_limited(
                            session.conn(),
                            &LimitedFetch {
                                kind: &l.kind,
                                queues: queues.as_deref(),
                                global_concurrency: l.global_concurrency,
                                key_concurrency: l.key_concurrency,
                                budgets: &l.budgets,
                                limit: room as i64,
                                owner: &s.worker_id,
                                lease: s.cfg.lease,
                                now: None,
                            },
                        )
                        .await?;
                        if let Some(w) = got.budget_wait {
                            budget_wait.insert(
                                l.kind.clone(),
                                tokio::time::Instant::now() + w.min(BUDGET_WAIT_MAX),
                            );
                        }
                        jobs.extend(got.jobs);
                    }
                }
                let rest = free.saturating_sub(jobs.len());
                if rest > 0 {
                    jobs.extend(
                        queue::job_fetch_available_on(
                            &mut session,
                            &FetchParams {
                                queues: queues.as_deref(),
                                skip_kinds: &skip_kinds,
                                limited_kinds: &limited_names,
                                limit: rest as i64,
                                owner: &s.worker_id,
                                lease: s.cfg.lease,
                                now: None,
                            },
                        )
                        .await?,
                    );
                }
                // Claims count once the round's transaction (if any) has committed.
                let kept = session.end_round().await?;
                Ok::<_, sqlx::Error>((jobs, kept))
            };
            // Bounded like every engine statement: the claim session is a connection of its
            // own, outside the handle's bound. On a timeout it is dropped (closed) mid-round;
            // a claim that committed meanwhile is rescued after its lease, like a crash's.
            let fetched = match s.db.statement_timeout() {
                None => round.await,
                Some(limit) => tokio::time::timeout(limit, round)
                    .await
                    .unwrap_or_else(|_| {
                        Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer to the claim within database.statement_timeout",
                        )))
                    }),
            };
            match fetched {
                Ok((jobs, kept)) => {
                    fetch_failures.succeeded();
                    session = kept;
                    db_backoff = Duration::from_millis(100);
                    let n = jobs.len();
                    s.counters.claimed.fetch_add(n as u64, Ordering::Relaxed);
                    {
                        let mut held = s.held.lock().unwrap();
                        for j in &jobs {
                            held.insert(
                                j.id,
                                Held {
                                    claim_seq: j.claim_seq,
                                    kind: j.kind.clone(),
                                    cancel: s.hard_stop.child_token(),
                                    outcome_queued: false,
                                },
                            );
                        }
                    }
                    for j in jobs {
                        tasks.spawn(execute(s.clone(), j, outcomes.clone()));
                    }
                    if n == free {
                        // A full batch: there is probably more.
                        continue;
                    }
                }
                Err(e) => {
                    fetch_failures.failed(&s.db, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        // A kind waiting for a token is tried again as soon as one is due.
        let next_token = budget_wait.values().min().copied();
        let poll = tokio::time::Instant::now() + s.cfg.poll_interval;
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep_until(next_token.map_or(poll, |t| t.min(poll))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The longest a worker leaves a budget-throttled kind untried, whatever the budget said: a
/// budget's settings can change under it (another binary, a cleared block).
const BUDGET_WAIT_MAX: Duration = Duration::from_secs(1);

/// How often a worker looks for ready rows of its unlimited kinds still filed as limited.
const REFILE_EVERY: Duration = Duration::from_secs(5);

/// Re-files, in batches, the ready rows of `kinds` still filed as limited.
async fn refile_unlimited(s: &Shared, kinds: &[String]) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 1_000;
    let mut total = 0;
    loop {
        let n = queue::job_refile_unlimited(&s.db, kinds, BATCH).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Kinds whose held claims already fill their per-kind concurrency.
fn kinds_at_limit(s: &Shared, held: &std::collections::HashMap<i64, Held>) -> Vec<String> {
    if s.kind_slots.is_empty() {
        return Vec::new();
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for h in held.values() {
        *counts.entry(h.kind.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(k, n)| {
            s.registry
                .settings(k)
                .and_then(|st| st.concurrency)
                .is_some_and(|limit| *n >= limit)
        })
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// An operator cancelled these jobs (already `cancelled` in the database): stop the handlers
/// of any this worker holds. Their outcomes will be refused by the fence.
fn cancel_held(s: &Shared, payload: &str) {
    let held = s.held.lock().unwrap();
    for id in payload
        .split(',')
        .filter_map(|x| x.trim().parse::<i64>().ok())
    {
        if let Some(h) = held.get(&id) {
            tracing::warn!(
                job.id = id,
                "cancelled by an operator: stopping the handler"
            );
            h.cancel.cancel();
        }
    }
}

/// Keeps a `LISTEN` connection open: job notifications wake the fetch loop; cancel
/// notifications stop held handlers (the heartbeat would also notice, one interval later).
/// `LISTEN` needs a session: behind a transaction pooler with no direct connection the worker
/// only polls (every `poll_interval`), and says so once.
pub(crate) async fn listen(s: Arc<Shared>, stop: CancellationToken) {
    let Some(sessions) = s.db.session_pool().cloned() else {
        tracing::info!(
            poll_interval = %humantime::format_duration(s.cfg.poll_interval),
            "no direct connection behind the transaction pooler (database.direct_url): not \
             listening for new jobs, polling instead"
        );
        return;
    };
    let mut listen_failures =
        FailureStreak::new("LISTEN failed: polling until it is back (every poll_interval)");
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&sessions).await?;
            l.listen_all([queue::JOBS_CHANNEL, queue::CANCEL_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            r = listener => match r {
                Ok(l) => l,
                Err(e) => {
                    listen_failures.failed(&s.db, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            },
            _ = stop.cancelled() => return,
        };
        listen_failures.succeeded();
        // Anything notified while we were not listening is caught by this wake.
        s.wake.notify_one();
        loop {
            tokio::select! {
                n = l.try_recv() => match n {
                    Ok(Some(n)) if n.channel() == queue::CANCEL_CHANNEL => cancel_held(&s, n.payload()),
                    Ok(Some(_)) => s.wake.notify_one(),
                    Ok(None) => {
                        // Connection lost; try_recv reconnects on the next call.
                        s.wake.notify_one();
                    }
                    Err(e) => {
                        listen_failures.failed(&s.db, &e);
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// One claim's life inside the worker: wait for a slot, run, report.
async fn execute(s: Arc<Shared>, job: ClaimedJob, outcomes: mpsc::UnboundedSender<Outcome>) {
    let cancel = match s.held.lock().unwrap().get(&job.id) {
        Some(h) => h.cancel.clone(),
        None => return,
    };
    let kind_slot = s.kind_slots.get(&job.kind).cloned();
    let permits = async {
        let k = match kind_slot {
            Some(sem) => Some(sem.acquire_owned().await.expect("never closed")),
            None => None,
        };
        let g = s.slots.clone().acquire_owned().await.expect("never closed");
        (k, g)
    };
    let permits = tokio::select! {
        biased;
        _ = s.stop_starting.cancelled() => None,
        p = permits => Some(p),
    };
    let next = match permits {
        None => NextState::ReturnUnstarted,
        Some(_permits) => {
            let span = tracing::info_span!("job", job.id = job.id, job.kind = %job.kind, attempt = job.attempt);
            // Continue the trace of whoever enqueued the job (webhook, parent job).
            crate::telemetry::set_parent(&span, job.trace_context.as_ref());
            let started = std::time::Instant::now();
            let next = run_attempt(&s, &job, cancel).instrument(span).await;
            crate::metrics::metrics()
                .run_seconds
                .with_label_values(&[&job.kind])
                .observe(started.elapsed().as_secs_f64());
            next
        }
    };
    if let Some(h) = s.held.lock().unwrap().get_mut(&job.id) {
        h.outcome_queued = true;
    }
    // The receiver lives until every job task has finished.
    let _ = outcomes.send(Outcome {
        id: job.id,
        claim_seq: job.claim_seq,
        next,
    });
}

/// Runs the handler of one attempt and decides the job's next state.
async fn run_attempt(s: &Shared, job: &ClaimedJob, cancel: CancellationToken) -> NextState {
    let fail = |class: ErrorClass, message: String| AttemptError {
        attempt: job.attempt,
        class,
        message,
        at: None,
    };
    let Some(kind) = s.registry.get(&job.kind) else {
        tracing::error!("unknown job kind: dead at once");
        return NextState::Dead {
            error: fail(
                ErrorClass::UnknownKind,
                format!(
                    "no handler for kind {:?} in this worker (known: {}); replay it once a worker knows it",
                    job.kind,
                    s.registry.kind_names().join(", ")
                ),
            ),
        };
    };
    let settings = &kind.settings;
    let ctx = JobContext {
        job_id: job.id,
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        db: s.domain_db.clone(),
        cancel: cancel.clone(),
        enqueuer: Arc::new(s.queue.child_of_in(job.id, s.db_name.clone())),
        extensions: s.extensions.clone(),
    };
    let fut = match kind.start(job.args.clone(), ctx) {
        Ok(f) => f,
        Err(msg) => {
            tracing::error!(reason = %msg, "bad payload: dead at once");
            return NextState::Dead {
                error: fail(ErrorClass::BadArgs, msg),
            };
        }
    };
    // The handler runs in its own task so a panic is caught and the timeout can abort it.
    // Provider clients report exhausted budgets of successful answers into `feedback`.
    let feedback = jobs::rate_feedback::Sink::default();
    let mut handle = tokio::spawn(
        jobs::rate_feedback::scope(feedback.clone(), AssertUnwindSafe(fut).catch_unwind())
            .in_current_span(),
    );
    // Cancellation is checked first: a cooperative handler returns its own error the moment
    // its token fires, and that must be recorded as the cancellation (interrupted, timeout),
    // not as an ordinary failure with backoff.
    let timed_out = tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(settings.timeout) => true,
        r = &mut handle => {
            for e in jobs::rate_feedback::drain(&feedback) {
                block_budget(s, &e.budget, e.after, &e.reason).await;
            }
            if let Ok(Ok(Err(JobError::RateLimited { budget, after, reason }))) = &r {
                block_budget(s, budget, *after, reason).await;
            }
            return decide(job, settings, r, fail);
        }
    };
    cancel.cancel();
    // Give the handler a moment to return on its own; a success inside the grace counts.
    let finished = tokio::time::timeout(CANCEL_GRACE, &mut handle).await;
    handle.abort();
    if let Ok(Ok(Ok(Ok(())))) = finished {
        return NextState::Completed {
            key_window: settings.idempotency_window,
        };
    }
    let (class, message) = if s.hard_stop.is_cancelled() {
        s.interrupted.fetch_add(1, Ordering::Relaxed);
        (
            ErrorClass::Interrupted,
            "interrupted: worker drain deadline passed".to_owned(),
        )
    } else if timed_out {
        (
            ErrorClass::Timeout,
            format!("handler exceeded its timeout of {:?}", settings.timeout),
        )
    } else {
        // The heartbeat found the claim lost (rescued or cancelled by an operator); the fence
        // refuses whatever we write, so this only documents the attempt in our logs.
        (
            ErrorClass::Interrupted,
            "claim lost while running (rescued or cancelled)".to_owned(),
        )
    };
    tracing::warn!(error.class = class.as_str(), "{message}");
    retry_or_dead(
        job,
        settings,
        fail(class, message),
        class == ErrorClass::Interrupted,
    )
}

type HandlerResult =
    Result<Result<Result<(), JobError>, Box<dyn std::any::Any + Send>>, tokio::task::JoinError>;

/// Maps a finished handler to the job's next state.
fn decide(
    job: &ClaimedJob,
    settings: &crate::registry::KindSettings,
    result: HandlerResult,
    fail: impl Fn(ErrorClass, String) -> AttemptError,
) -> NextState {
    match result {
        Ok(Ok(Ok(()))) => NextState::Completed {
            key_window: settings.idempotency_window,
        },
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "attempt failed");
            match e {
                JobError::Retryable(m) => {
                    retry_or_dead(job, settings, fail(ErrorClass::Retryable, m), false)
                }
                JobError::Fatal(m) => NextState::Dead {
                    error: fail(ErrorClass::Fatal, m),
                },
                JobError::Snooze { after, reason } => NextState::Snooze {
                    delay: after,
                    error: fail(ErrorClass::Snoozed, reason),
                },
                JobError::Cancel(m) => NextState::Cancelled {
                    error: fail(ErrorClass::Cancelled, m),
                },
                // The budget is already emptied fleet-wide (`block_budget`); the job waits
                // for the same reset.
                JobError::RateLimited {
                    budget,
                    after,
                    reason,
                } => NextState::Snooze {
                    delay: after,
                    error: fail(
                        ErrorClass::Snoozed,
                        format!("rate limited on budget {budget}: {reason}"),
                    ),
                },
            }
        }
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(panic = %msg, "handler panicked");
            retry_or_dead(
                job,
                settings,
                fail(ErrorClass::Panic, format!("handler panicked: {msg}")),
                false,
            )
        }
        Err(join) => retry_or_dead(
            job,
            settings,
            fail(ErrorClass::Panic, format!("handler task failed: {join}")),
            false,
        ),
    }
}

/// A provider's 429: budget `budget` is empty for the whole fleet until `after` from now, so
/// no worker claims a job that spends it before the provider's reset. A failed write is
/// logged and the job still waits (the budget then only holds its own rate).
async fn block_budget(s: &Shared, budget: &str, after: Duration, reason: &str) {
    crate::metrics::metrics()
        .budget_blocks
        .with_label_values(&[budget])
        .inc();
    let written = queue::budget_block(&s.db, budget, after, reason, None).await;
    match written {
        Ok(until) => tracing::warn!(budget, blocked_until = %until.to_rfc3339(),
            "provider rate limit: budget emptied fleet-wide until its reset"),
        Err(e) => tracing::warn!(budget, error = %e, "recording a provider rate limit failed"),
    }
}

/// A failed attempt: retry after backoff, or dead when the budget is spent.
fn retry_or_dead(
    job: &ClaimedJob,
    settings: &crate::registry::KindSettings,
    error: AttemptError,
    immediate: bool,
) -> NextState {
    if job.attempt >= job.max_attempts {
        NextState::Dead { error }
    } else {
        let delay = if immediate {
            Duration::ZERO
        } else {
            backoff(job.attempt, settings.backoff_base, settings.backoff_cap)
        };
        NextState::Retry { delay, error }
    }
}

/// Delay before the retry that follows failed attempt `attempt` (1-based): exponential
/// `base · 2^(attempt-1)` capped at `cap`, with "equal jitter" — uniform in `[d/2, d]` — so
/// retries of jobs that failed together spread out while the delay still grows.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let d = base.saturating_mul(1u32 << exp).min(cap);
    let half = d / 2;
    let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64);
    (half + Duration::from_millis(jitter_ms)).min(d.max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 1..=10 {
            let full = (base * 2u32.pow(attempt as u32 - 1)).min(cap);
            for _ in 0..50 {
                let d = backoff(attempt, base, cap);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn backoff_saturates_for_huge_attempt_numbers() {
        let d = backoff(i32::MAX, Duration::from_secs(1), Duration::from_secs(3600));
        assert!(d <= Duration::from_secs(3600));
    }
}
