//! The engine's own job kinds: diagnostics every worker runs, so operators can smoke-test a
//! fleet (`fleet enqueue fleet.sleep --args '{"ms":100}'`) without touching domain data.

use std::time::Duration;

use jobs::{Job, JobContext, JobError, KindDefaults};
use serde::{Deserialize, Serialize};

/// Sleeps `ms` milliseconds, stopping early (as a retryable failure) when cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long to sleep.
    pub ms: u64,
    /// A key for per-key limits and fairness, when config sets
    /// `[kinds."fleet.sleep"] limit_key = "key"` (smoke-testing limits; docs/limits.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Job for Sleep {
    const KIND: &'static str = "fleet.sleep";

    fn defaults() -> KindDefaults {
        KindDefaults {
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(self.ms)) => Ok(()),
            _ = ctx.cancel.cancelled() => Err(JobError::retryable("cancelled while sleeping")),
        }
    }
}

/// Registers the engine's own kinds.
pub fn register(r: &mut crate::registry::Registry) {
    r.register::<Sleep>();
}
