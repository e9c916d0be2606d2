//! `fleet backfill start|status`: resumable, checkpointed passes over a table.

use super::usage;
use std::sync::Arc;

use crate::{config::Settings, fleet_registry, Queue};
use clap::Subcommand;
use jobs::NewJob;

use super::{db_for, os_user, output};

#[derive(clap::Args)]
pub struct BackfillArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
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
        /// Stay and show the progress until the run finishes (a worker runs it).
        #[arg(long)]
        wait: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Progress of every backfill.
    Status,
}

pub async fn run(a: BackfillArgs, settings: &Settings) -> anyhow::Result<()> {
    let db = db_for(settings).await?;
    match a.action {
        BackfillAction::Start {
            name,
            batch_size,
            pause_ms,
            wait,
            actor,
        } => {
            if jobs::backfill::by_name(&name).is_none() {
                let known: Vec<&str> = jobs::backfill::all().iter().map(|b| b.name()).collect();
                usage!("unknown backfill {name:?} (known: {})", known.join(", "));
            }
            if !(1..=50_000).contains(&batch_size) {
                usage!("--batch-size must be 1..=50000, got {batch_size}");
            }
            let registry = Arc::new(fleet_registry(settings)?);
            let job = NewJob::of(&jobs::backfill::RunBackfill {
                name: name.clone(),
                batch_size,
                pause_ms,
            })?
            .key(format!("backfill:{name}"));
            // The reset, the job and the audit row commit together.
            let mut tx = db.begin().await?;
            let reset = jobs::backfill::reset_if_finished(&mut tx, &name).await?;
            let r = Queue::new(db.clone(), registry)
                .enqueue_many_in(&mut tx, vec![job])
                .await?[0];
            let meta = serde_json::json!({
                "backfill": name, "job_id": r.id, "already_running": r.duplicate,
                "new_run": reset, "batch_size": batch_size, "pause_ms": pause_ms,
            });
            jobs::audit::record(
                &mut *tx,
                &actor.unwrap_or_else(os_user),
                "backfill.start",
                "backfill",
                Some(&name),
                &meta,
            )
            .await?;
            tx.commit().await?;
            let text = if r.duplicate {
                format!(
                    "{name} is already running as job {}; follow it with `fleet backfill status`",
                    r.id
                )
            } else {
                format!(
                    "started {name} as job {} (a worker runs it); follow it with `fleet backfill status`{}",
                    r.id,
                    if wait { "" } else { " or --wait" }
                )
            };
            output::emit(a.json, &meta, &text)?;
            if wait {
                follow(&db, &name, a.json).await?;
            }
        }
        BackfillAction::Status => {
            let p = jobs::backfill::progress(&db).await?;
            let mut t = output::table(&["backfill", "rows", "state", "started", "last checkpoint"]);
            for b in &p {
                t.add_row(vec![
                    b.name.clone(),
                    format!("{}/{}", b.done_rows, b.total_rows),
                    if b.finished_at.is_some() {
                        "finished"
                    } else {
                        "running"
                    }
                    .to_owned(),
                    output::ago(b.started_at),
                    output::ago(b.finished_at.unwrap_or(b.updated_at)),
                ]);
            }
            let text = if p.is_empty() {
                "no backfill has run".to_owned()
            } else {
                t.to_string()
            };
            output::emit(a.json, &p, &text)?;
        }
    }
    Ok(())
}

/// Shows `name`'s progress until its run finishes.
async fn follow(db: &jobs::Db, name: &str, json: bool) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} rows")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let p = jobs::backfill::progress(db).await?;
        if let Some(b) = p.iter().find(|b| b.name == name) {
            bar.set_length(b.total_rows.max(0) as u64);
            bar.set_position(b.done_rows.max(0) as u64);
            if b.finished_at.is_some() {
                bar.finish_and_clear();
                if !json {
                    println!("{name} finished: {}/{} rows", b.done_rows, b.total_rows);
                }
                return Ok(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
