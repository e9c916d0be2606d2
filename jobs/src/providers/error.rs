//! The provider-independent label on a failed call, and what it means for a job.
//!
//! | class | meaning | did it take effect? | default [`JobError`] |
//! |---|---|---|---|
//! | [`Rejected`](FailureClass::Rejected) | the provider refused for a business reason (card declined, offer gone, price changed) | no | `Fatal` (the same request is refused again; the saga handles these *before* `?`) |
//! | [`Invalid`](FailureClass::Invalid) | our request or config is wrong (bad parameters, bad key, idempotency key reused with other parameters) | no | `Fatal` (needs a code or config fix; replay the dead job after it) |
//! | [`RateLimited`](FailureClass::RateLimited) | too many requests | no | `Snooze` until the reset (no attempt charged) |
//! | [`Transient`](FailureClass::Transient) | connection refused, request with the same key in flight | no | `Retryable` |
//! | [`Ambiguous`](FailureClass::Ambiguous) | timeout, connection reset, 5xx, unreadable success body | **maybe** | `Retryable` — safe for Stripe and Resend (the retry carries the same idempotency key and replays); for a Duffel order the next attempt must reconcile before any new POST |

use std::time::Duration;

use crate::JobError;

/// How long to snooze a rate-limited job when the provider gave no usable reset time.
pub const DEFAULT_RATE_LIMIT_SNOOZE: Duration = Duration::from_secs(30);
/// Shortest snooze after a rate limit (a reset in the past or within a second).
pub const MIN_RATE_LIMIT_SNOOZE: Duration = Duration::from_secs(1);
/// Longest snooze after a rate limit (guards against a wild reset date).
pub const MAX_RATE_LIMIT_SNOOZE: Duration = Duration::from_secs(3600);

/// The text of a failed call, the same for every client: `{head}: HTTP {status} {name}
/// k=v … : {detail}`. Only codes, ids and statuses go in (never a provider's message, which can
/// quote personal data); absent parts are left out.
pub(crate) fn describe(
    head: &str,
    status: Option<u16>,
    name: Option<&str>,
    fields: &[(&str, Option<&str>)],
    detail: Option<&str>,
) -> String {
    let mut s = head.to_owned();
    if let Some(status) = status {
        s.push_str(&format!(": HTTP {status}"));
    }
    if let Some(n) = name {
        s.push_str(&format!(" {n}"));
    }
    for (k, v) in fields {
        if let Some(v) = v {
            s.push_str(&format!(" {k}={v}"));
        }
    }
    if let Some(d) = detail {
        s.push_str(&format!(": {d}"));
    }
    s
}

/// What a failed provider call means, whatever the provider. See the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// A definite business refusal: nothing happened and the same request will be refused
    /// again (decline, `authentication_required`, offer expired, price changed, …).
    Rejected,
    /// Our request or configuration is wrong: nothing happened; a retry cannot help.
    Invalid,
    /// Rate limited: nothing happened; try again after the reset.
    RateLimited,
    /// Definitely not applied and likely to pass soon: retry as is.
    Transient,
    /// May or may not have been applied (the request may have reached the provider).
    Ambiguous,
}

impl FailureClass {
    /// Stable lower-case name, for error texts and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::Ambiguous => "ambiguous",
        }
    }

    /// Whether the provider may have acted on the request.
    pub fn may_have_taken_effect(self) -> bool {
        self == Self::Ambiguous
    }

    /// [`FailureClass::job_error`], except that a rate limit empties rate budget `budget` for
    /// the whole fleet until the reset ([`JobError::RateLimited`]) instead of snoozing only
    /// this job.
    pub fn job_error_on(
        self,
        budget: &str,
        retry_after: Option<Duration>,
        text: String,
    ) -> JobError {
        match self {
            Self::RateLimited => JobError::RateLimited {
                budget: budget.to_owned(),
                after: clamp_snooze(retry_after),
                reason: text,
            },
            other => other.job_error(retry_after, text),
        }
    }

    /// The default job outcome for this class; `retry_after` is used for rate limits (clamped
    /// to [`MIN_RATE_LIMIT_SNOOZE`]..=[`MAX_RATE_LIMIT_SNOOZE`], default
    /// [`DEFAULT_RATE_LIMIT_SNOOZE`]). `text` must already be free of PII and secrets.
    pub fn job_error(self, retry_after: Option<Duration>, text: String) -> JobError {
        match self {
            Self::Rejected | Self::Invalid => JobError::Fatal(text),
            Self::RateLimited => JobError::Snooze {
                after: clamp_snooze(retry_after),
                reason: text,
            },
            Self::Transient | Self::Ambiguous => JobError::Retryable(text),
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The snooze for a rate limit: the provider's delay clamped to sane bounds.
pub fn clamp_snooze(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(DEFAULT_RATE_LIMIT_SNOOZE)
        .clamp(MIN_RATE_LIMIT_SNOOZE, MAX_RATE_LIMIT_SNOOZE)
}

/// Labels a reqwest transport error (no HTTP status received). Never keeps its text: it names
/// the URL, which is harmless today but need not stay so.
pub(crate) fn transport_class(e: &reqwest::Error) -> (FailureClass, &'static str) {
    if e.is_builder() {
        (FailureClass::Invalid, "request could not be built")
    } else if e.is_connect() {
        // The connection was never established, so the request was never sent.
        (FailureClass::Transient, "connection failed")
    } else if e.is_timeout() {
        (FailureClass::Ambiguous, "timeout")
    } else if e.is_decode() || e.is_body() {
        (FailureClass::Ambiguous, "unreadable response")
    } else {
        (FailureClass::Ambiguous, "transport error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_job_outcomes() {
        let t = || "x".to_owned();
        assert_eq!(
            FailureClass::Rejected.job_error(None, t()),
            JobError::Fatal("x".into())
        );
        assert_eq!(
            FailureClass::Invalid.job_error(None, t()),
            JobError::Fatal("x".into())
        );
        assert_eq!(
            FailureClass::Transient.job_error(None, t()),
            JobError::Retryable("x".into())
        );
        assert_eq!(
            FailureClass::Ambiguous.job_error(None, t()),
            JobError::Retryable("x".into())
        );
        assert_eq!(
            FailureClass::RateLimited.job_error(Some(Duration::from_secs(12)), t()),
            JobError::snooze(Duration::from_secs(12), "x")
        );
    }

    #[test]
    fn rate_limit_snooze_is_clamped_and_defaulted() {
        assert_eq!(clamp_snooze(None), DEFAULT_RATE_LIMIT_SNOOZE);
        assert_eq!(clamp_snooze(Some(Duration::ZERO)), MIN_RATE_LIMIT_SNOOZE);
        assert_eq!(
            clamp_snooze(Some(Duration::from_secs(86_400))),
            MAX_RATE_LIMIT_SNOOZE
        );
    }
}
