//! The queue's storage: every SQL statement that touches the engine's tables (`fleet_jobs`,
//! `fleet_paused_kinds`, `fleet_cron_ticks`, `fleet_workers`, `fleet_budgets`, `fleet_audit`) lives in this module and nowhere else, as inline
//! statements (no SQL functions, so every plan is visible and index-driven), named noun-first
//! after what they do. One file per role:
//!
//! | file | what |
//! |---|---|
//! | [`job`] | every transition of a job row: insert, claim, lease, outcome, promote, rescue, replay, cancel |
//! | [`history`] | a job's error history (`errors`): one entry per failed attempt, with its class |
//! | [`limits`] | the claim of limited kinds (fleet-wide concurrency, per-key limits, fairness) and the rate budgets (`fleet_budgets`) |
//! | [`inspect`] | operator reads: one job, lists, per-kind stats, checks, table sizes |
//! | [`pause`] | the kill switch and drains (`fleet_paused_kinds`) |
//! | [`retention`] | deleting finished jobs past their retention; freeing elapsed key windows |
//! | [`cron`] | cron ticks claimed by schedulers (`fleet_cron_ticks`) |
//! | [`workers`] | the live-worker registry (`fleet_workers`) |
//! | [`filter`] | the operator filter shared by lists, replay and cancel |
//! | [`audit`] | the engine's operator audit (`fleet_audit`) |
//! | [`fixtures`] | bulk history and table settings for benchmarks |
//!
//! **Time.** Every statement whose effect depends on the clock takes `now: Option<DateTime<Utc>>`
//! ([`Now`]): `None` is the database's `now()` (what the runtime always passes); `Some(t)` lets
//! a test state "as if it were `t`" instead of sleeping until it is.
//!
//! Invariants the statements keep together (docs/architecture.md draws the state machine):
//! - a job leaves `running` only through a write fenced on `(id, claim_seq)` and
//!   `state = 'running'`: [`job_set_outcome_many`], [`job_rescue_expired`]. A fenced write that
//!   misses reports [`QueueError::LostLease`], never success;
//! - `claim_seq` only ever grows, one per claim, so a late write from an earlier claim can never
//!   match again;
//! - the fenced batch writes ([`job_set_outcome_many`], [`job_extend_leases`]) test the state as
//!   `state::text = 'running'` on purpose: it keeps the planner from driving the join with the
//!   `running` partial index (statistics say few rows are running) and re-scanning the
//!   `unnest` once per running row — an O(held × batch) plan measured at 4× the cost with a
//!   million finished jobs. The join then goes through the primary key, one lookup per row;
//! - an idempotency key is *held* (`key_held`) by at most one job per kind, enforced by a unique
//!   partial index, so concurrent enqueuers of one key create exactly one job.

// The statements serve the roles and operator tools of the `fleet` binary as well as the
// engine: a build of the engine alone (no `cli`, no `testkit`) leaves some of them unused.
#![cfg_attr(not(any(feature = "cli", feature = "testkit")), allow(dead_code))]

pub mod audit;
pub mod cron;
pub mod filter;
#[cfg(any(feature = "cli", feature = "testkit"))]
pub mod fixtures;
pub mod history;
pub mod inspect;
pub mod job;
pub mod limits;
pub mod pause;
pub mod retention;
pub mod workers;

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use audit::*;
pub use cron::*;
pub use filter::*;
#[cfg(any(feature = "cli", feature = "testkit"))]
pub use fixtures::*;
pub use history::*;
pub use inspect::*;
pub use job::*;
pub use limits::*;
pub use pause::*;
pub use retention::*;
pub use workers::*;

/// The clock a statement runs at: `None` is the database's `now()`; tests pass a fixed time.
pub type Now = Option<DateTime<Utc>>;

/// The notification channel that wakes idle workers: payload is the queue name.
pub const JOBS_CHANNEL: &str = "fleet_jobs";

/// Channel that tells workers to stop the handlers of cancelled jobs (payload: comma-separated ids).
pub const CANCEL_CHANNEL: &str = "fleet_cancel";

/// Errors of the queue's storage.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A post-claim write found the job no longer held by that claim: it was rescued,
    /// cancelled or already finished. The write did nothing.
    #[error("job {id} is no longer held by claim {claim_seq}: the write was refused")]
    LostLease {
        /// Job id.
        id: i64,
        /// The claim that tried to write.
        claim_seq: i32,
    },
    /// A job to enqueue is invalid; nothing was written.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// An idempotency key kept changing hands (its holders finishing and new ones inserted
    /// between the statement's rounds) until the insert gave up; the same enqueue may succeed
    /// later. The statements before it in the call are written.
    #[error("idempotency key of kind {kind:?} kept changing hands; giving up after {rounds} rounds")]
    KeyContended {
        /// The kind.
        kind: String,
        /// How many rounds it tried.
        rounds: usize,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Mirror of the database's `fleet_job_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at` before its first attempt.
    Scheduled,
    /// Ready to be claimed now.
    Available,
    /// Claimed by a worker under a lease.
    Running,
    /// Failed; waiting for its backoff to elapse.
    Retryable,
    /// Final: the handler succeeded.
    Completed,
    /// Final: cancelled by a handler or an operator.
    Cancelled,
    /// Final: out of attempts or not runnable; replayable by an operator.
    Dead,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 7] = [
        Self::Scheduled,
        Self::Available,
        Self::Running,
        Self::Retryable,
        Self::Completed,
        Self::Cancelled,
        Self::Dead,
    ];

    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Available => "available",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    /// Whether the state is final (the job will not run again unless replayed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?} (expected one of: {})",
                    Self::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}
