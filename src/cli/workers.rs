//! `fleet workers`: the live (and recently dead) workers, from the registry every worker keeps
//! fresh with its heartbeat.

use crate::{config::Settings, ops::Ops};
use chrono::Utc;

use super::{
    databases_for, os_user,
    output::{ago, emit, short, table},
};

#[derive(clap::Args)]
pub struct WorkersArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: WorkersArgs, settings: &Settings) -> anyhow::Result<()> {
    let dbs = databases_for(settings).await?;
    // A worker renews its row every heartbeat; one silent for a lease is not running jobs.
    // Each database has its own registry: a worker serving two databases is listed in both.
    let mut workers = Vec::new();
    for db in dbs.all() {
        workers.extend(
            Ops::on(db, Vec::new(), &os_user())
                .workers(settings.worker.lease)
                .await?,
        );
    }
    let mut t = table(&[
        "worker", "status", "version", "queues", "conc.", "held", "done", "up", "seen",
    ]);
    for w in &workers {
        t.add_row(vec![
            w.id.clone(),
            if w.alive { "alive" } else { "stale" }.to_owned(),
            w.version.clone(),
            if w.queues.is_empty() {
                "all".to_owned()
            } else {
                w.queues.join(",")
            },
            w.concurrency.to_string(),
            w.held.to_string(),
            w.completed.to_string(),
            short((Utc::now() - w.started_at).to_std().unwrap_or_default()),
            ago(w.last_seen_at),
        ]);
    }
    let alive = workers.iter().filter(|w| w.alive).count();
    let text = if workers.is_empty() {
        "no worker is registered: none is running (start one with `fleet worker`)".to_owned()
    } else {
        format!(
            "{t}\n{alive} alive, {} stale (no heartbeat for a lease; forgotten after \
             worker.forget_after)",
            workers.len() - alive
        )
    };
    emit(a.json, &workers, &text)
}
