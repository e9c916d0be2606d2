//! What an attempt's end does to its job: the outcome vocabulary ([`NextState`], [`Outcome`])
//! and the one function that maps a finished attempt to it ([`decide`]), with the retry
//! policy ([`backoff`]). The [completer](super::completer) writes what this decides.
//!
//! Rules kept here and nowhere else:
//! - a handler's error decides: `Retryable` → retry after backoff, `RetryAfter` → retry after
//!   the handler's delay (both dead once the attempts are spent), `Fatal` → dead now, `Snooze` and `RateLimited` → later without charging the
//!   attempt, `Cancel` → cancelled;
//! - a panic is a retryable failure; a payload that does not deserialize or a kind this worker
//!   does not know is dead at once (retrying cannot help; an operator replays it);
//! - an attempt interrupted by the worker (drain deadline, lost claim) retries at once, with
//!   its attempt charged;
//! - every failure is recorded in the job's error history ([`AttemptError`]) with its class.

use std::time::Duration;

use jobs::JobError;
use rand::Rng;

use crate::queue::{AttemptError, ClaimedJob, ErrorClass, JobState, OutcomeRow};
use crate::registry::KindSettings;

/// What a claim's outcome does to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum NextState {
    /// Success; the key stays held for `key_window` (zero: released now).
    Completed {
        /// The kind's idempotency window.
        key_window: Duration,
    },
    /// Failed; run again after `delay` (attempt charged).
    Retry {
        /// Backoff.
        delay: Duration,
        /// What failed.
        error: AttemptError,
    },
    /// Run again after `delay` without charging the attempt.
    Snooze {
        /// Delay.
        delay: Duration,
        /// Why (class `snoozed`).
        error: AttemptError,
    },
    /// Final failure.
    Dead {
        /// Why.
        error: AttemptError,
    },
    /// Final cancellation.
    Cancelled {
        /// Why (class `cancelled`).
        error: AttemptError,
    },
    /// The claim never started its handler: back to `available`, attempt not charged.
    ReturnUnstarted,
}

/// One claim's outcome, fenced on the claim when written.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Job id.
    pub id: i64,
    /// The claim that produced it.
    pub claim_seq: i32,
    /// What to do.
    pub next: NextState,
}

impl NextState {
    /// The state it leaves the job in.
    pub fn state(&self) -> JobState {
        match self {
            Self::Completed { .. } => JobState::Completed,
            Self::Retry { .. } | Self::Snooze { .. } => JobState::Retryable,
            Self::Dead { .. } => JobState::Dead,
            Self::Cancelled { .. } => JobState::Cancelled,
            Self::ReturnUnstarted => JobState::Available,
        }
    }
}

impl Outcome {
    /// Claim `job` succeeded, its key held for `key_window` (the tests and the ceiling
    /// benchmark write outcomes without running handlers).
    #[cfg(any(feature = "cli", feature = "testkit"))]
    pub fn completed(job: &ClaimedJob, key_window: Duration) -> Self {
        Self {
            id: job.id,
            claim_seq: job.claim_seq,
            next: NextState::Completed { key_window },
        }
    }

    /// The row this outcome writes ([`crate::queue::job_set_outcome_many`]).
    pub fn row(&self) -> OutcomeRow {
        let (attempt_charged, run_in, error, key_window) = match &self.next {
            NextState::Completed { key_window } => (true, None, None, *key_window),
            NextState::Retry { delay, error } => {
                (true, Some(*delay), Some(error.clone()), Duration::ZERO)
            }
            NextState::Snooze { delay, error } => {
                (false, Some(*delay), Some(error.clone()), Duration::ZERO)
            }
            NextState::Dead { error } | NextState::Cancelled { error } => {
                (true, None, Some(error.clone()), Duration::ZERO)
            }
            NextState::ReturnUnstarted => (false, None, None, Duration::ZERO),
        };
        OutcomeRow {
            id: self.id,
            claim_seq: self.claim_seq,
            state: self.next.state(),
            attempt_charged,
            run_in,
            error,
            key_window,
        }
    }
}

/// How one attempt ended, as the executor saw it.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The handler returned.
    Returned(Result<(), JobError>),
    /// The handler panicked, or its task failed (why, for the error history).
    Panicked(String),
    /// The worker stopped the handler (its own cancel, timeout, drain deadline, lost claim).
    Stopped {
        /// The class recorded: `timeout` or `interrupted`.
        class: ErrorClass,
        /// Why, for the error history.
        message: String,
    },
    /// The handler never ran: its args do not deserialize into the kind's.
    BadArgs(String),
}

/// The next state of claim `job` whose attempt `ended`, under its kind's `settings`.
pub(crate) fn decide(job: &ClaimedJob, settings: &KindSettings, ended: Ended) -> NextState {
    let fail = |class: ErrorClass, message: String| attempt_error(job, class, message);
    match ended {
        Ended::Returned(Ok(())) => NextState::Completed {
            key_window: settings.idempotency_window,
        },
        Ended::Returned(Err(e)) => match e {
            JobError::Retryable(m) => {
                retry_or_dead(job, settings, fail(ErrorClass::Retryable, m), None)
            }
            JobError::RetryAfter { after, reason } => retry_or_dead(
                job,
                settings,
                fail(ErrorClass::Retryable, reason),
                Some(after),
            ),
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
            // The budget is already emptied fleet-wide (the executor did); the job waits for
            // the same reset.
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
        },
        Ended::Panicked(message) => {
            retry_or_dead(job, settings, fail(ErrorClass::Panic, message), None)
        }
        Ended::Stopped { class, message } => retry_or_dead(
            job,
            settings,
            fail(class, message),
            (class == ErrorClass::Interrupted).then_some(Duration::ZERO),
        ),
        Ended::BadArgs(message) => NextState::Dead {
            error: fail(ErrorClass::BadArgs, message),
        },
    }
}

/// Claim `job` cannot run here at all (no handler for its kind): dead at once, replayable by an
/// operator once a worker knows the kind.
pub(crate) fn unknown_kind(job: &ClaimedJob, message: String) -> NextState {
    NextState::Dead {
        error: attempt_error(job, ErrorClass::UnknownKind, message),
    }
}

/// The error-history entry of `job`'s current attempt (the database stamps its time).
fn attempt_error(job: &ClaimedJob, class: ErrorClass, message: String) -> AttemptError {
    AttemptError {
        attempt: job.attempt,
        class,
        message,
        at: None,
    }
}

/// A failed attempt: retry after `delay` when given (zero: at once), else after the kind's
/// backoff; dead when the attempts are spent.
fn retry_or_dead(
    job: &ClaimedJob,
    settings: &KindSettings,
    error: AttemptError,
    delay: Option<Duration>,
) -> NextState {
    if job.attempt >= job.max_attempts {
        NextState::Dead { error }
    } else {
        let delay = delay
            .unwrap_or_else(|| backoff(job.attempt, settings.backoff_base, settings.backoff_cap));
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
