//! `fleet schedules …`: the `[schedules.*]` cron schedules as the scheduler runs them — each
//! one's last ticks and what they enqueued, its next tick — and the switch that pauses one.

use crate::{config::Settings, fleet_registry, ops::Ops, scheduler};

use super::{
    db_for, os_user,
    output::{ago, emit, table, when},
};

#[derive(clap::Args)]
pub struct SchedulesArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Option<ScheduleAction>,
}

#[derive(clap::Subcommand)]
enum ScheduleAction {
    /// Each schedule: pattern, kind, paused or not, last tick and its job, next tick (the
    /// default).
    List,
    /// Stop NAME from enqueueing: its ticks are recorded as skipped, and not replayed on
    /// resume.
    Pause {
        name: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Let NAME enqueue again from its next tick.
    Resume {
        name: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
}

pub async fn run(a: SchedulesArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = fleet_registry(settings)?;
    let schedules = scheduler::validate(&settings.schedules, &registry)?;
    let db = db_for(settings).await?;
    let ops = |actor: String| Ops::new(db.clone(), registry.kind_names(), actor);
    match a.action.unwrap_or(ScheduleAction::List) {
        ScheduleAction::List => {
            let r = ops(os_user()).schedules(&schedules).await?;
            let mut t = table(&[
                "schedule",
                "cron",
                "kind",
                "paused",
                "last tick",
                "its job",
                "next tick",
            ]);
            for s in &r {
                let last = s.ticks.first();
                t.add_row(vec![
                    s.name.clone(),
                    s.cron.clone(),
                    s.kind.clone(),
                    match &s.paused {
                        Some(p) => format!("paused by {} {}", p.paused_by, ago(p.paused_at)),
                        None => String::new(),
                    },
                    last.map(|t| when(t.tick_at)).unwrap_or_else(|| "-".into()),
                    last.map(tick_outcome).unwrap_or_default(),
                    match (&s.paused, s.next_tick) {
                        (Some(_), Some(n)) => format!("{} (skipped while paused)", when(n)),
                        (None, Some(n)) => when(n),
                        (_, None) => "never".into(),
                    },
                ]);
            }
            let text = if r.is_empty() {
                "no [schedules.*] are enabled in this configuration".to_owned()
            } else {
                t.to_string()
            };
            emit(a.json, &r, &text)
        }
        ScheduleAction::Pause {
            name,
            reason,
            dry_run,
            actor,
        } => {
            let r = ops(actor.unwrap_or_else(os_user))
                .schedule_pause(&schedules, &name, &reason, dry_run)
                .await?;
            let text = match (r.dry_run, r.result) {
                (true, true) => format!("{name}: would pause"),
                (false, true) => format!(
                    "{name}: paused: its ticks enqueue nothing until `fleet schedules resume {name}`"
                ),
                (_, false) => format!("{name}: already paused; nothing changed"),
            };
            emit(a.json, &r, &text)
        }
        ScheduleAction::Resume {
            name,
            dry_run,
            actor,
        } => {
            let r = ops(actor.unwrap_or_else(os_user))
                .schedule_resume(&schedules, &name, dry_run)
                .await?;
            let text = match (r.dry_run, r.result) {
                (true, true) => format!("{name}: would resume"),
                (false, true) => format!("{name}: resumed: its next tick enqueues its job"),
                (_, false) => format!("{name}: not paused; nothing changed"),
            };
            emit(a.json, &r, &text)
        }
    }
}

/// What a tick became: its job and that job's state, or why it was skipped.
fn tick_outcome(t: &crate::queue::CronTick) -> String {
    match (&t.skipped, t.job_id, &t.job_state) {
        (Some(why), _, _) => format!("skipped ({why})"),
        (None, Some(id), Some(state)) => format!("{id} {state}"),
        (None, Some(id), None) => format!("{id} (pruned)"),
        (None, None, _) => "-".to_owned(),
    }
}
