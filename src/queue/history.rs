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
    /// A class this binary does not know: an entry written by a newer or older binary, or by
    /// hand. Read so the job stays readable; never written.
    #[serde(other)]
    Other,
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
            Self::Other => "other",
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

/// A job's stored `errors`, read entry by entry: an entry this binary cannot read (written by
/// another version, or by hand) is kept as class [`ErrorClass::Other`] with what could be read,
/// so one bad entry never makes the job unreadable (a 500 on its console page).
pub fn history_from_stored(stored: serde_json::Value) -> Vec<AttemptError> {
    use serde_json::Value;
    let entries = match stored {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    };
    entries
        .into_iter()
        .map(|e| {
            serde_json::from_value::<AttemptError>(e.clone()).unwrap_or_else(|_| AttemptError {
                attempt: e["attempt"].as_i64().and_then(|a| i32::try_from(a).ok()).unwrap_or(0),
                class: ErrorClass::Other,
                message: match &e["message"] {
                    Value::String(m) => m.clone(),
                    _ => {
                        let raw = e.to_string();
                        let cut: String = raw.chars().take(200).collect();
                        format!("unreadable history entry: {cut}")
                    }
                },
                at: e["at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_entry_this_binary_cannot_read_is_kept_as_other_not_an_error() {
        let stored = serde_json::json!([
            {"attempt": 1, "class": "retryable", "message": "boom"},
            {"attempt": 2, "class": "from_a_newer_binary", "message": "new"},
            {"attempt": "three", "class": 7},
            42
        ]);
        let h = history_from_stored(stored);
        assert_eq!(h.len(), 4);
        assert_eq!((h[0].class, h[0].message.as_str()), (ErrorClass::Retryable, "boom"));
        assert_eq!((h[1].attempt, h[1].class, h[1].message.as_str()), (2, ErrorClass::Other, "new"));
        assert_eq!((h[2].attempt, h[2].class), (0, ErrorClass::Other));
        assert!(h[2].message.starts_with("unreadable history entry:"), "{}", h[2].message);
        assert_eq!(h[3].class, ErrorClass::Other);
    }
}
