//! The executor: the second step of a job's life inside a worker. It runs one claim handed over
//! by the [fetch loop](super::fetcher) (or by [`super::Worker::work_one`]) and returns its
//! [`Outcome`], which the [completer](super::completer) writes.
//!
//! Contract:
//! - a claim waits for a slot (its kind's, then the worker's); a drain that begins first gives
//!   it back unstarted, its attempt not charged;
//! - a limited kind's claim waits behind at most one plain claim for the worker's slot, not
//!   behind the whole prefetch: while it waits it holds a share of a fleet-wide limit (its
//!   lease counts against the kind's global or per-key concurrency, its token is spent), so
//!   queued behind `prefetch` plain claims it would throttle the kind fleet-wide to a fraction
//!   of its limit (the steady bench's limited kind fell behind this way). Plain claims keep
//!   their order among themselves;
//! - the handler runs in a task of its own, so a panic is caught and the timeout can abort it;
//!   cancellation (timeout, lost lease, operator cancel, drain deadline) is signalled on the
//!   handler's token first and the handler gets [`CANCEL_GRACE`] to return on its own;
//! - the attempt's result is the handler's result **and** the budgets its provider clients
//!   reported used up ([`jobs::RateLimits`]); each such budget, and the budget of a
//!   [`JobError::RateLimited`], is emptied for the whole fleet until the provider's reset
//!   before the outcome is decided;
//! - what the result does to the job is decided in one place, [`super::outcome::decide`].

use std::{
    panic::AssertUnwindSafe,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures::FutureExt;
use jobs::{JobContext, JobError, RateLimits};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    outcome::{self, Ended, NextState, Outcome},
    Shared,
};
use crate::queue::{self, ClaimedJob, ErrorClass};

/// How long a cancelled handler gets to return on its own before it is aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// One claim's life inside the worker: wait for a slot, run, decide. The claim must be held.
pub(crate) async fn execute(s: Arc<Shared>, job: ClaimedJob) -> Outcome {
    let cancel = match s.held.lock().unwrap().get(&job.id) {
        Some(h) => h.cancel.clone(),
        None => s.hard_stop.child_token(),
    };
    let kind_slot = s.kind_slots.get(&job.kind).cloned();
    let limited = s.limited.iter().any(|l| l.kind == job.kind);
    let permits = async {
        let k = match kind_slot {
            Some(sem) => Some(sem.acquire_owned().await.expect("never closed")),
            None => None,
        };
        let g = if limited {
            s.slots.clone().acquire_owned().await
        } else {
            let _turn = s.plain_turn.lock().await;
            s.slots.clone().acquire_owned().await
        };
        (k, g.expect("never closed"))
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
    Outcome {
        id: job.id,
        claim_seq: job.claim_seq,
        next,
    }
}

/// Runs the handler of one attempt and decides the job's next state.
async fn run_attempt(s: &Shared, job: &ClaimedJob, cancel: CancellationToken) -> NextState {
    let Some(kind) = s.registry.get(&job.kind) else {
        tracing::error!("unknown job kind: dead at once");
        return outcome::unknown_kind(
            job,
            format!(
                "no handler for kind {:?} in this worker (known: {}); replay it once a worker knows it",
                job.kind,
                s.registry.kind_names().join(", ")
            ),
        );
    };
    let settings = &kind.settings;
    let rate_limits = RateLimits::default();
    let ctx = JobContext {
        job_id: job.id,
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        db: s.domain_db.clone(),
        cancel: cancel.clone(),
        enqueuer: Arc::new(s.queue.child_of_in(job.id, s.db_name.clone())),
        extensions: s.extensions.clone(),
        rate_limits: rate_limits.clone(),
    };
    let fut = match kind.start(job.args.clone(), ctx) {
        Some(Ok(f)) => f,
        // Never claimed here (the fetcher skips external kinds); a row claimed by hand is
        // treated like an unknown kind's.
        None => {
            tracing::error!("external job kind claimed by a fleet worker: dead at once");
            return outcome::unknown_kind(
                job,
                format!(
                    "kind {:?} is external here: it runs on an apalis worker, not this one; \
                     replay it for one",
                    job.kind
                ),
            );
        }
        Some(Err(msg)) => {
            tracing::error!(reason = %msg, "bad payload: dead at once");
            return outcome::decide(job, settings, Ended::BadArgs(msg));
        }
    };
    let ended = run_handler(s, fut, settings.timeout, &cancel).await;
    // The attempt's rate-limit findings, whatever the handler returned.
    for e in rate_limits.take() {
        block_budget(s, &e.budget, e.after, &e.reason).await;
    }
    if let Ended::Returned(Err(JobError::RateLimited {
        budget,
        after,
        reason,
    })) = &ended
    {
        block_budget(s, budget, *after, reason).await;
    }
    if let Ended::Stopped { class, message } = &ended {
        tracing::warn!(error.class = class.as_str(), "{message}");
    }
    outcome::decide(job, settings, ended)
}

/// Runs a handler's future to its end: returned, panicked, or stopped by its token or
/// `timeout`.
async fn run_handler(
    s: &Shared,
    fut: jobs::BoxFuture<'static, Result<(), JobError>>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Ended {
    let mut handle = tokio::spawn(AssertUnwindSafe(fut).catch_unwind().in_current_span());
    // Cancellation is checked first: a cooperative handler returns its own error the moment
    // its token fires, and that must be recorded as the cancellation (interrupted, timeout),
    // not as an ordinary failure with backoff.
    let timed_out = tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(timeout) => true,
        r = &mut handle => return ended(r),
    };
    cancel.cancel();
    // Give the handler a moment to return on its own; a success inside the grace counts.
    let finished = tokio::time::timeout(CANCEL_GRACE, &mut handle).await;
    handle.abort();
    if let Ok(Ok(Ok(Ok(())))) = finished {
        return Ended::Returned(Ok(()));
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
            format!("handler exceeded its timeout of {timeout:?}"),
        )
    } else {
        // The heartbeat found the claim lost (rescued or cancelled by an operator); the fence
        // refuses whatever we write, so this only documents the attempt in our logs.
        (
            ErrorClass::Interrupted,
            "claim lost while running (rescued or cancelled)".to_owned(),
        )
    };
    Ended::Stopped { class, message }
}

type Joined =
    Result<Result<Result<(), JobError>, Box<dyn std::any::Any + Send>>, tokio::task::JoinError>;

/// How a handler's task that finished on its own ended.
fn ended(r: Joined) -> Ended {
    match r {
        Ok(Ok(result)) => {
            if let Err(e) = &result {
                tracing::warn!(error = %e, "attempt failed");
            }
            Ended::Returned(result)
        }
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(panic = %msg, "handler panicked");
            Ended::Panicked(format!("handler panicked: {msg}"))
        }
        Err(join) => Ended::Panicked(format!("handler task failed: {join}")),
    }
}

/// A provider said budget `budget` is empty until `after` from now: it is emptied for the
/// whole fleet, so no worker claims a job that spends it before the provider's reset. A failed
/// write is logged and the job still waits (the budget then only holds its own rate).
async fn block_budget(s: &Shared, budget: &str, after: Duration, reason: &str) {
    crate::metrics::metrics()
        .budget_blocks
        .with_label_values(&[budget])
        .inc();
    let written = queue::budget_block(&s.db, budget, after, reason, s.clock.now()).await;
    match written {
        Ok(until) => tracing::warn!(budget, blocked_until = %until.to_rfc3339(),
            "provider rate limit: budget emptied fleet-wide until its reset"),
        Err(e) => tracing::warn!(budget, error = %e, "recording a provider rate limit failed"),
    }
}
