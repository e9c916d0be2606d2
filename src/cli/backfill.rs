//! `fleet backfill start|status`: resumable, checkpointed passes over a table.

use super::usage;
use std::sync::Arc;

use clap::Subcommand;
use fleet::{config::Settings, fleet_registry, Queue};
use jobs::NewJob;

use super::pool_for;

#[derive(clap::Args)]
pub struct BackfillArgs {
    #[command(subcommand)]
    action: BackfillAction,
}

#[derive(Subcommand)]
enum BackfillAction {
    /// Enqueue a run of NAME (resumes an unfinished run; one run at a time).
    Start {
        /// profile_completeness | pii_reencrypt
        name: String,
        /// Rows per batch (one transaction each).
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Pause between batches, ms (throttle).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Progress of every backfill.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(a: BackfillArgs, settings: &Settings) -> anyhow::Result<()> {
    let pool = pool_for(settings).await?;
    let mut conn = pool.acquire().await?;
    match a.action {
        BackfillAction::Start {
            name,
            batch_size,
            pause_ms,
        } => {
            if jobs::backfill::by_name(&name).is_none() {
                let known: Vec<&str> = jobs::backfill::all().iter().map(|b| b.name()).collect();
                usage!("unknown backfill {name:?} (known: {})", known.join(", "));
            }
            if !(1..=50_000).contains(&batch_size) {
                usage!("--batch-size must be 1..=50000, got {batch_size}");
            }
            let reset = jobs::backfill::reset_if_finished(&mut conn, &name).await?;
            let registry = Arc::new(fleet_registry(settings)?);
            let job = NewJob::of(&jobs::backfill::RunBackfill {
                name: name.clone(),
                batch_size,
                pause_ms,
            })?
            .key(format!("backfill:{name}"));
            let r = Queue::new(pool.clone(), registry).enqueue_new(job).await?;
            println!(
                "{}",
                serde_json::json!({ "backfill": name, "job_id": r.id, "already_running": r.duplicate, "new_run": reset })
            );
        }
        BackfillAction::Status { json } => {
            let p = jobs::backfill::progress(&mut conn).await?;
            if json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                for b in p {
                    println!(
                        "{:<24} {:>10}/{:<10} {}",
                        b.name,
                        b.done_rows,
                        b.total_rows,
                        b.finished_at
                            .map(|t| format!("finished {t}"))
                            .unwrap_or_else(|| format!(
                                "running, last checkpoint {}",
                                b.updated_at
                            ))
                    );
                }
            }
        }
    }
    Ok(())
}
