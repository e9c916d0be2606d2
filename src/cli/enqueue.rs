//! `fleet enqueue`: one job, from the command line.

use std::{sync::Arc, time::Duration};

use fleet::{config::Settings, fleet_registry, Queue};
use jobs::NewJob;

use super::pool_for;

#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// Job kind.
    kind: String,
    /// JSON args.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Idempotency key.
    #[arg(long)]
    key: Option<String>,
    /// Delay before it may run, e.g. "30s".
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
}

pub async fn run(a: EnqueueArgs, settings: &Settings) -> anyhow::Result<()> {
    let args: serde_json::Value = serde_json::from_str(&a.args)
        .map_err(|e| fleet::ops::UsageError(format!("--args is not valid JSON: {e}")))?;
    let registry = Arc::new(fleet_registry(settings)?);
    let mut job = NewJob::raw(a.kind, args);
    // Checked before connecting: an unknown kind or bad args is a usage error, not a
    // database one.
    registry.check(&job).map_err(fleet::ops::UsageError)?;
    let pool = pool_for(settings).await?;
    job.opts.idempotency_key = a.key;
    if let Some(d) = a.delay {
        job = job.run_at(chrono::Utc::now() + chrono::Duration::from_std(d)?);
    }
    let r = Queue::new(pool, registry).enqueue_new(job).await?;
    println!(
        "{}",
        serde_json::json!({ "id": r.id, "duplicate": r.duplicate })
    );
    Ok(())
}
