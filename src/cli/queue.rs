//! `fleet queue …`: the operators' commands over the queue (stats, list, show, replay,
//! cancel, pause, resume, paused, drain, prune), through [`fleet::ops::Ops`].

use std::time::Duration;

use clap::Subcommand;
use fleet::{
    config::Settings,
    fleet_registry,
    ops::Ops,
    queue::{self, JobState},
};

use super::{os_user, pool_for};

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: QueueAction,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Counts per kind and state, oldest available age, completions in the last minute.
    Stats,
    /// Jobs matching a filter, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Next page: ids below this one.
        #[arg(long)]
        before_id: Option<i64>,
    },
    /// One job with its args and every attempt's error.
    Show { id: i64 },
    /// Dead or cancelled jobs → available, with a fresh attempt budget.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        m: MutArgs,
    },
    /// Cancel unfinished jobs; running handlers are signalled and stop.
    Cancel {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        m: MutArgs,
    },
    /// Stop every worker from claiming jobs of KIND (running ones finish): the kill switch.
    Pause {
        kind: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        m: MutArgs,
    },
    /// Let workers claim jobs of KIND again.
    Resume {
        kind: String,
        #[command(flatten)]
        m: MutArgs,
    },
    /// List paused kinds.
    Paused,
    /// Drain KINDs before a deploy: hold new intake, finish the queued backlog and the running
    /// jobs, then leave the kinds paused until `resume`.
    Drain {
        #[arg(required = true)]
        kinds: Vec<String>,
        /// Give up after this long (the kinds are then fully paused).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        m: MutArgs,
    },
    /// Delete finished jobs older than a duration.
    Prune {
        /// e.g. 30d, 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Final states to delete.
        #[arg(long, value_delimiter = ',', default_value = "completed,cancelled")]
        state: Vec<JobState>,
        #[command(flatten)]
        m: MutArgs,
    },
}

#[derive(clap::Args)]
struct FilterArgs {
    /// Job ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    id: Vec<i64>,
    /// Job kind.
    #[arg(long)]
    kind: Option<String>,
    /// States, comma-separated.
    #[arg(long, value_delimiter = ',')]
    state: Vec<JobState>,
    /// Created at or after: RFC 3339 time or a duration ago ("2h").
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before: RFC 3339 time or a duration ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Idempotency key.
    #[arg(long)]
    key: Option<String>,
}

impl FilterArgs {
    fn into_filter(self) -> queue::JobFilter {
        queue::JobFilter {
            ids: (!self.id.is_empty()).then_some(self.id),
            kind: self.kind,
            states: (!self.state.is_empty()).then_some(self.state),
            since: self.since,
            until: self.until,
            idempotency_key: self.key,
        }
    }
}

#[derive(clap::Args)]
struct MutArgs {
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Who is acting (recorded in audit_log; default: the OS user).
    #[arg(long)]
    actor: Option<String>,
}

pub(crate) fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d)
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor a duration like \"2h\""))
}

pub async fn run(a: QueueArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = fleet_registry(settings)?;
    let pool = pool_for(settings).await?;
    let (kinds, action, json) = (registry.kind_names(), a.action, a.json);
    let actor_of = |m: &MutArgs| m.actor.clone().unwrap_or_else(os_user);
    let print = |v: serde_json::Value, text: String| {
        if json {
            println!("{v}");
        } else {
            println!("{text}");
        }
    };
    match action {
        QueueAction::Stats => {
            let stats = Ops::new(pool, kinds, os_user()).stats().await?;
            let mut text = format!(
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}\n",
                "kind",
                "scheduled",
                "available",
                "running",
                "retryable",
                "completed",
                "cancelled",
                "dead",
                "oldest_ready",
                "done/1m"
            );
            for k in &stats {
                let n = |s: &str| k.states.get(s).copied().unwrap_or(0);
                text.push_str(&format!(
                    "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}\n",
                    k.kind,
                    n("scheduled"),
                    n("available"),
                    n("running"),
                    n("retryable"),
                    n("completed"),
                    n("cancelled"),
                    n("dead"),
                    k.oldest_available_age_s
                        .map(|a| format!("{a:.1}s"))
                        .unwrap_or_else(|| "-".into()),
                    k.completed_last_minute
                ));
            }
            print(serde_json::to_value(&stats)?, text.trim_end().to_owned());
        }
        QueueAction::List {
            filter,
            limit,
            before_id,
        } => {
            let rows = Ops::new(pool, kinds, os_user())
                .list(&filter.into_filter(), limit, before_id)
                .await?;
            let mut text = String::new();
            for r in &rows {
                text.push_str(&format!(
                    "{:>10} {:<24} {:<10} {}/{} run_at={} key={} {}\n",
                    r.id,
                    r.kind,
                    r.state,
                    r.attempt,
                    r.max_attempts,
                    r.run_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    r.idempotency_key.as_deref().unwrap_or("-"),
                    r.last_error.as_deref().unwrap_or("")
                ));
            }
            if let Some(last) = rows.last() {
                text.push_str(&format!("(next page: --before-id {})", last.id));
            } else {
                text.push_str("(no jobs)");
            }
            print(serde_json::to_value(&rows)?, text);
        }
        QueueAction::Show { id } => {
            let j = Ops::new(pool, kinds, os_user()).show(id).await?;
            print(serde_json::to_value(&j)?, serde_json::to_string_pretty(&j)?);
        }
        QueueAction::Replay { filter, m } => {
            let r = Ops::new(pool, kinds, actor_of(&m))
                .replay(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            let mut text = format!(
                "{verb} {} job(s): {:?}",
                r.result.replayed.len(),
                r.result.replayed
            );
            for (id, why) in &r.result.skipped {
                text.push_str(&format!("\nskipped {id}: {why}"));
            }
            print(serde_json::to_value(&r)?, text);
        }
        QueueAction::Cancel { filter, m } => {
            let r = Ops::new(pool, kinds, actor_of(&m))
                .cancel(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run {
                "would cancel"
            } else {
                "cancelled"
            };
            let list: Vec<String> = r
                .result
                .iter()
                .map(|(id, was)| format!("{id} (was {was})"))
                .collect();
            print(
                serde_json::to_value(&r)?,
                format!("{verb} {} job(s): {}", r.result.len(), list.join(", ")),
            );
        }
        QueueAction::Pause { kind, reason, m } => {
            let r = Ops::new(pool, kinds, actor_of(&m))
                .pause(&kind, &reason, m.dry_run)
                .await?;
            let what = match (r.dry_run, r.result) {
                (true, true) => "would pause",
                (false, true) => "paused",
                (_, false) => "already paused",
            };
            print(serde_json::to_value(&r)?, format!("{kind}: {what}"));
        }
        QueueAction::Resume { kind, m } => {
            let r = Ops::new(pool, kinds, actor_of(&m))
                .resume(&kind, m.dry_run)
                .await?;
            let what = match (r.dry_run, r.result) {
                (true, true) => "would resume",
                (false, true) => "resumed",
                (_, false) => "was not paused",
            };
            print(serde_json::to_value(&r)?, format!("{kind}: {what}"));
        }
        QueueAction::Paused => {
            let mut conn = pool.acquire().await?;
            let paused = queue::kind_list_paused(&mut conn).await?;
            let text = paused
                .iter()
                .map(|p| {
                    let how = match p.draining_through_id {
                        Some(id) => format!("draining (jobs up to id {id} still run)"),
                        None => "paused".to_owned(),
                    };
                    format!(
                        "{}\t{how}\tsince {} by {}{}",
                        p.kind,
                        p.paused_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        p.paused_by,
                        if p.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", p.reason)
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(serde_json::to_value(&paused)?, text);
        }
        QueueAction::Drain {
            kinds: drain,
            timeout,
            m,
        } => {
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} draining {prefix} [{bar:30}] {pos}/{len} done; {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(drain.join(", "));
            if json || m.dry_run {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            // The bar's length is the most work seen left at once, so it never runs backwards.
            let mut most_left = 0u64;
            let r = Ops::new(pool, kinds, actor_of(&m))
                .drain(&drain, timeout, m.dry_run, |c| {
                    let left = (c.backlog + c.running) as u64;
                    most_left = most_left.max(left);
                    bar.set_length(most_left);
                    bar.set_position(most_left - left);
                    bar.set_message(format!(
                        "{} queued, {} running, {} held for resume",
                        c.backlog, c.running, c.held
                    ));
                })
                .await;
            bar.finish_and_clear();
            let r = r?;
            let d = &r.result;
            let kept = if d.already_paused.is_empty() {
                String::new()
            } else {
                format!(
                    "; already paused, queue held not run: {}",
                    d.already_paused.join(", ")
                )
            };
            let text = if r.dry_run {
                format!(
                    "would drain {}: run {} queued and wait for {} running job(s); {} held{kept}",
                    drain.join(", "),
                    d.backlog,
                    d.running,
                    d.held
                )
            } else {
                format!(
                    "drained {} in {} ms: backlog done, nothing running; now paused, {} job(s) held for `fleet queue resume`{kept}",
                    drain.join(", "),
                    d.waited_ms,
                    d.held
                )
            };
            print(serde_json::to_value(&r)?, text);
        }
        QueueAction::Prune {
            older_than,
            state,
            m,
        } => {
            let r = Ops::new(pool, kinds, actor_of(&m))
                .prune(older_than, &state, m.dry_run)
                .await?;
            let verb = if r.dry_run { "would delete" } else { "deleted" };
            print(
                serde_json::to_value(&r)?,
                format!(
                    "{verb} {} finished job(s) older than {}",
                    r.result,
                    humantime::format_duration(older_than)
                ),
            );
        }
    }
    Ok(())
}
