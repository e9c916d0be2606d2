//! A job's error history: the entries of `fleet_jobs.errors`, one per failed attempt, written
//! by the outcome of a claim ([`super::job_set_outcome_many`]), the rescuer
//! ([`super::job_rescue_expired`]) and an operator's cancel ([`super::job_cancel`]), and read
//! by the operator views. Each entry names its [`ErrorClass`]; messages never carry PII.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why an attempt failed, as kept in the job's `errors` history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler discarded the job (fatal error).
    Fatal,
    /// The handler ran past the kind's timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The worker stopped heartbeating (crash, kill) and the rescuer took the job back.
    LeaseExpired,
    /// No handler for the kind in this worker.
    UnknownKind,
    /// The payload did not deserialize into the kind's args.
    BadArgs,
    /// The handler asked to run later without charging an attempt.
    Snoozed,
    /// The handler or an operator cancelled the job.
    Cancelled,
    /// The worker's drain deadline interrupted the handler.
    Interrupted,
}

impl ErrorClass {
    /// The stored and displayed name (also the `class` label of `fleet_jobs_failed_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Fatal => "fatal",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::LeaseExpired => "lease_expired",
            Self::UnknownKind => "unknown_kind",
            Self::BadArgs => "bad_args",
            Self::Snoozed => "snoozed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One entry of a job's error history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt that failed.
    pub attempt: i32,
    /// Failure class.
    pub class: ErrorClass,
    /// Reason (never PII).
    pub message: String,
    /// When (database time); absent before the row is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}
