//! `fleet queue …`: the operators' commands over the queue (stats, list, show, replay,
//! cancel, pause, resume, paused, drain, prune), through [`crate::ops::Ops`].

use std::time::Duration;

use crate::{
    config::Settings,
    fleet_registry,
    ops::Ops,
    queue::{self, JobState},
};
use clap::Subcommand;

use super::{
    databases_for, os_user,
    output::{ago, clip, emit, figures_table, short, table, when},
    usage,
};

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The database to act on: `main` (default) or a `[databases.*]` name. `stats` without it
    /// shows every database.
    #[arg(long, global = true)]
    database: Option<String>,
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
    /// Scheduled or retrying jobs → available now ("retry now" once a backoff's cause is
    /// fixed); a retry keeps the attempt it charged.
    RunNow {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        m: MutArgs,
    },
    /// Delete finished jobs (completed, cancelled, dead) with their history; a job whose
    /// idempotency key is still held is left alone.
    Delete {
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
        /// Give up after this long (the kinds are then fully paused); at most 24h.
        #[arg(long, default_value = "5m", value_parser = parse_drain_timeout)]
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
    /// Queue.
    #[arg(long)]
    queue: Option<String>,
    /// Args containing this JSON object, e.g. '{"booking_id":"…"}'.
    #[arg(long, value_parser = parse_json_object)]
    args: Option<serde_json::Value>,
    /// Text anywhere in the args or the error history, case-insensitive (no index: narrow
    /// by --kind, --state or --since on a big queue).
    #[arg(long, value_parser = queue::parse_search)]
    search: Option<String>,
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
            queue: self.queue,
            args_contain: self.args,
            search: self.search,
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

use crate::queue::parse_json_object;
pub(crate) use crate::queue::parse_time;

pub async fn run(a: QueueArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = fleet_registry(settings)?;
    let dbs = databases_for(settings).await?;
    let (kinds, action, json) = (registry.kind_names(), a.action, a.json);
    let db = match &a.database {
        None => &dbs.main,
        Some(name) => match dbs.get(name) {
            Some(d) => d,
            None => usage!(
                "--database {name:?} is not configured (databases: {})",
                dbs.names().join(", ")
            ),
        },
    };
    // A kind's jobs, keys and pause switch live in its own database only.
    let homed_here = |kind: &str| -> anyhow::Result<()> {
        let home = &dbs.home_of(kind).name;
        if *home != db.name {
            usage!(
                "kind {kind:?} lives in database {home:?}, not {:?}: add --database {home}",
                db.name
            );
        }
        Ok(())
    };
    let actor_of = |m: &MutArgs| m.actor.clone().unwrap_or_else(os_user);
    let ops = |actor: String| Ops::on(db, kinds.clone(), &actor);
    match action {
        QueueAction::Stats => {
            let shown: Vec<&crate::databases::Database> = match &a.database {
                Some(_) => vec![db],
                None => dbs.all().collect(),
            };
            let mut rows = Vec::new();
            let mut text = String::new();
            for d in &shown {
                let o = Ops::on(d, kinds.clone(), &os_user());
                let mut stats = o.stats().await?;
                let mut limits = o.limits(&registry).await?;
                // Each limited kind, and each budget, lives in its kinds' one database.
                limits.kinds.retain(|k| dbs.home_of(&k.kind).name == d.name);
                limits.budgets.retain(|b| {
                    registry.kind_names().iter().any(|k| {
                        dbs.home_of(k).name == d.name
                            && registry.budgets_of(k).iter().any(|s| s.name == b.name)
                    })
                });
                limits.annotate(&mut stats);
                let lag = o.replica_lag().await?;
                if shown.len() > 1 {
                    text.push_str(&format!("database {}\n", d.name));
                }
                text.push_str(&stats_text(&stats, &limits));
                if let (Some(lag), Some(replica)) = (&lag, &d.replica) {
                    text.push_str(&format!(
                        "\nread from the replica at {replica}: {}",
                        lag.describe()
                    ));
                }
                text.push_str(if shown.len() > 1 { "\n\n" } else { "" });
                rows.extend(stats.into_iter().map(|s| StatsRow {
                    stats: s,
                    database: d.name.clone(),
                }));
            }
            emit(json, &rows, text.trim_end())
        }
        QueueAction::List {
            filter,
            limit,
            before_id,
        } => {
            let rows = ops(os_user())
                .list(&filter.into_filter(), limit, before_id)
                .await?;
            let mut t = table(&["id", "kind", "state", "try", "run at", "key", "last error"]);
            for r in &rows {
                t.add_row(vec![
                    r.id.to_string(),
                    r.kind.clone(),
                    r.state.clone(),
                    format!("{}/{}", r.attempt, r.max_attempts),
                    ago(r.run_at),
                    r.idempotency_key
                        .as_deref()
                        .map(|k| clip(k, 24))
                        .unwrap_or_else(|| "-".into()),
                    r.last_error
                        .as_deref()
                        .map(|e| clip(e, 40))
                        .unwrap_or_default(),
                ]);
            }
            let text = match rows.last() {
                None => "no jobs match".to_owned(),
                Some(last) if rows.len() as i64 == limit => {
                    format!("{t}\nnext page: --before-id {}", last.id)
                }
                Some(_) => t.to_string(),
            };
            emit(json, &rows, &text)
        }
        QueueAction::Show { id } => {
            let o = ops(os_user());
            let j = o.show(id).await?;
            let children = o.children(id).await?;
            let value =
                serde_json::json!({ "job": j, "trace_id": j.trace_id(), "enqueued": children });
            emit(json, &value, &show_text(&j, &children))
        }
        QueueAction::Replay { filter, m } => {
            if let Some(k) = &filter.kind {
                homed_here(k)?;
            }
            let state_given = !filter.state.is_empty();
            let r = ops(actor_of(&m))
                .replay(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            let mut text = if r.result.replayed.is_empty() {
                if state_given {
                    format!("{verb} no job: none of the matching jobs is dead or cancelled")
                } else {
                    format!(
                        "{verb} no job: none of the matching jobs is dead (cancelled jobs are \
                         replayed only with --state cancelled or their --id)"
                    )
                }
            } else {
                format!(
                    "{verb} {} job(s): {}",
                    r.result.replayed.len(),
                    ids(&r.result.replayed)
                )
            };
            for sk in &r.result.skipped {
                text.push_str(&format!("\nskipped {}: {}", sk.id, sk.reason));
            }
            emit(json, &r, &text)?;
            nothing_matched(r.result.replayed.is_empty(), "replay")
        }
        QueueAction::Cancel { filter, m } => {
            if let Some(k) = &filter.kind {
                homed_here(k)?;
            }
            let r = ops(actor_of(&m))
                .cancel(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run {
                "would cancel"
            } else {
                "cancelled"
            };
            let text = if r.result.is_empty() {
                format!("{verb} no job: none of the matching jobs is unfinished")
            } else {
                let list: Vec<String> = r
                    .result
                    .iter()
                    .map(|c| format!("{} (was {})", c.id, c.was))
                    .collect();
                format!("{verb} {} job(s): {}", r.result.len(), list.join(", "))
            };
            emit(json, &r, &text)?;
            nothing_matched(r.result.is_empty(), "cancel")
        }
        QueueAction::RunNow { filter, m } => {
            if let Some(k) = &filter.kind {
                homed_here(k)?;
            }
            let r = ops(actor_of(&m))
                .run_now(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run {
                "would run now"
            } else {
                "runs now"
            };
            let text = if r.result.is_empty() {
                format!("{verb}: no job; none of the matching jobs is scheduled or retrying")
            } else {
                format!("{verb}: {} job(s): {}", r.result.len(), ids(&r.result))
            };
            emit(json, &r, &text)?;
            nothing_matched(r.result.is_empty(), "run-now")
        }
        QueueAction::Delete { filter, m } => {
            if let Some(k) = &filter.kind {
                homed_here(k)?;
            }
            let r = ops(actor_of(&m))
                .delete(&filter.into_filter(), m.dry_run)
                .await?;
            let verb = if r.dry_run { "would delete" } else { "deleted" };
            let mut text = if r.result.deleted.is_empty() {
                format!("{verb} no job: none of the matching jobs is finished and free to go")
            } else {
                format!(
                    "{verb} {} job(s) with their history: {}",
                    r.result.deleted.len(),
                    ids(&r.result.deleted)
                )
            };
            for sk in &r.result.skipped {
                text.push_str(&format!("\nskipped {}: {}", sk.id, sk.reason));
            }
            emit(json, &r, &text)?;
            nothing_matched(r.result.deleted.is_empty(), "delete")
        }
        QueueAction::Pause { kind, reason, m } => {
            homed_here(&kind)?;
            let r = ops(actor_of(&m)).pause(&kind, &reason, m.dry_run).await?;
            let what = match (r.dry_run, r.result) {
                (true, true) => "would pause",
                (false, true) => "paused: no worker claims it until `fleet queue resume`",
                (_, false) => "already paused",
            };
            emit(json, &r, &format!("{kind}: {what}"))
        }
        QueueAction::Resume { kind, m } => {
            homed_here(&kind)?;
            let r = ops(actor_of(&m)).resume(&kind, m.dry_run).await?;
            let what = match (r.dry_run, r.result) {
                (true, true) => "would resume",
                (false, true) => "resumed",
                (_, false) => "was not paused",
            };
            emit(json, &r, &format!("{kind}: {what}"))
        }
        QueueAction::Paused => {
            let paused = ops(os_user()).paused().await?;
            let mut t = table(&["kind", "how", "since", "by", "reason"]);
            for p in &paused {
                t.add_row(vec![
                    p.kind.clone(),
                    match p.draining_through_id {
                        Some(id) => format!("draining (jobs up to id {id} still run)"),
                        None => "paused".to_owned(),
                    },
                    when(p.paused_at),
                    p.paused_by.clone(),
                    p.reason.clone(),
                ]);
            }
            let text = if paused.is_empty() {
                "no kind is paused".to_owned()
            } else {
                t.to_string()
            };
            emit(json, &paused, &text)
        }
        QueueAction::Drain {
            kinds: drain,
            timeout,
            m,
        } => {
            for k in &drain {
                homed_here(k)?;
            }
            let o = ops(actor_of(&m));
            // Say at once if nobody would run the backlog: the drain would only time out.
            let unserved = o
                .unserved_kinds(
                    &drain,
                    |k| registry.settings(k).map(|s| s.queue.clone()),
                    settings.worker.lease,
                )
                .await?;
            if !unserved.is_empty() && !m.dry_run {
                eprintln!(
                    "fleet: warning: no live worker serves {} (see `fleet workers`): their \
                     backlog waits for one, or for --timeout",
                    unserved.join(", ")
                );
            }
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
            let r = o
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
            let r = r.map_err(|e| match e {
                crate::ops::OpsError::DrainTimedOut(t) => {
                    anyhow::Error::new(super::Finding(t.to_string()))
                }
                e => e.into(),
            })?;
            let d = &r.result;
            let kept = if d.already_paused.is_empty() {
                String::new()
            } else {
                format!(
                    "; already paused, queue held not run: {}",
                    d.already_paused.join(", ")
                )
            };
            // Jobs waiting to retry are not "nothing in flight": they may be mid-work.
            let retrying = match (d.retrying, d.next_retry_at) {
                (0, _) => String::new(),
                (n, next) => format!(
                    "\n{n} job(s) waiting to retry{}: they may be mid-work (a saga between its \
                     steps); the pause holds them and they run after `fleet queue resume`",
                    next.map(|t| format!(" (the first due {})", when(t)))
                        .unwrap_or_default()
                ),
            };
            // Which of them move money: a card hold or a refund owed stays in flight across
            // the deploy; the operator must know it, and which booking to look at.
            let money = if d.money.is_empty() {
                String::new()
            } else {
                let mut m = format!(
                    "\nmoney their unfinished jobs still move ({} booking(s); `fleet booking show ID`):",
                    d.money.len()
                );
                for h in &d.money {
                    m.push_str(&format!(
                        "\n  {:<11}  {} {}  booking {}  job {} {}{}",
                        h.what,
                        h.amount,
                        h.currency,
                        h.booking_id,
                        h.job_id,
                        h.job_state,
                        if h.job_state == "retryable" || h.job_state == "scheduled" {
                            format!(" (due {})", when(h.job_run_at))
                        } else {
                            String::new()
                        }
                    ));
                }
                m
            };
            let text = if r.dry_run {
                format!(
                    "would drain {}: run {} queued and wait for {} running job(s); {} held{kept}{retrying}{money}",
                    drain.join(", "),
                    d.backlog,
                    d.running,
                    d.held
                )
            } else {
                format!(
                    "drained {} in {}: backlog done, nothing running; now paused, {} job(s) held \
                     for `fleet queue resume`{kept}{retrying}{money}",
                    drain.join(", "),
                    short(Duration::from_millis(d.waited_ms)),
                    d.held
                )
            };
            emit(json, &r, &text)
        }
        QueueAction::Prune {
            older_than,
            state,
            m,
        } => {
            let r = ops(actor_of(&m))
                .prune(older_than, &state, m.dry_run)
                .await?;
            let verb = if r.dry_run { "would delete" } else { "deleted" };
            emit(
                json,
                &r,
                &format!(
                    "{verb} {} finished job(s) older than {}",
                    r.result,
                    short(older_than)
                ),
            )
        }
    }
}

/// Rows of `fleet queue stats --json`: each kind's figures and the database they live in.
#[derive(serde::Serialize)]
struct StatsRow {
    #[serde(flatten)]
    stats: queue::KindStats,
    database: String,
}

/// The stats table of one database, for people.
fn stats_text(stats: &[queue::KindStats], limits: &crate::ops::LimitsReport) -> String {
    let mut t = figures_table(&[
        "kind", "queue", "paused", "ready", "limited", "due", "later", "running", "dead/24h",
        "done/1m", "oldest",
    ]);
    for k in stats {
        let n = |s: &str| k.states.get(s).copied().unwrap_or(0);
        let limited = k.waiting_on_limit;
        t.add_row(vec![
            k.kind.clone(),
            k.queue.clone(),
            k.paused.unwrap_or("").to_owned(),
            (n("available") - limited).to_string(),
            limited.to_string(),
            k.due_now.to_string(),
            k.later.to_string(),
            n("running").to_string(),
            k.dead_last_day.to_string(),
            k.completed_last_minute.to_string(),
            k.oldest_available_age_s
                .map(|a| short(Duration::from_secs_f64(a.max(0.0))))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut lt = table(&[
        "limited kind",
        "running",
        "limit",
        "per key",
        "budgets",
        "held by",
    ]);
    for k in &limits.kinds {
        lt.add_row(vec![
            k.kind.clone(),
            k.running.to_string(),
            k.global_concurrency
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            k.key_concurrency
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            k.budgets.join(","),
            k.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut bt = figures_table(&[
        "budget",
        "tokens",
        "burst",
        "rate/s",
        "blocked until",
        "blocks",
    ]);
    for b in &limits.budgets {
        bt.add_row(vec![
            b.name.clone(),
            format!("{:.1}", b.level),
            format!("{}", b.burst),
            format!("{}", b.per_second),
            b.blocked_until.map(when).unwrap_or_else(|| "-".into()),
            b.blocks.to_string(),
        ]);
    }
    if stats.is_empty() {
        "no jobs, and no kind is paused".to_owned()
    } else {
        format!(
            "{t}\nready: claimable now, waiting for a worker · limited: ready but held by a \
             fleet-wide limit or an empty rate budget · due: scheduled or retrying, claimable \
             at the next promotion · later: waiting for its time · oldest: age of the oldest \
             ready job\n\n{lt}\n\n{bt}"
        )
    }
}

/// `1, 2, 3` (at most 20, then `… and N more`).
fn ids(v: &[i64]) -> String {
    let shown: Vec<String> = v.iter().take(20).map(i64::to_string).collect();
    if v.len() > 20 {
        format!("{} … and {} more", shown.join(", "), v.len() - 20)
    } else {
        shown.join(", ")
    }
}

/// One job for people: what it is, where it is in its life, and every failed attempt.
fn show_text(j: &queue::JobRecord, children: &[queue::JobSummary]) -> String {
    let mut out = format!(
        "job {}  {}  (queue {}, priority {})\n",
        j.id, j.kind, j.queue, j.priority
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<10} {v}\n"));
    line(
        "state",
        format!(
            "{}, attempt {} of {}, claim {}",
            j.state, j.attempt, j.max_attempts, j.claim_seq
        ),
    );
    line("run at", when(j.run_at));
    line("created", when(j.created_at));
    if let Some(t) = j.attempted_at {
        line("claimed", when(t));
    }
    if let Some(t) = j.finished_at {
        line("finished", when(t));
    }
    if let (Some(owner), Some(until)) = (&j.lease_owner, j.lease_expires_at) {
        line("lease", format!("{owner}, until {}", when(until)));
    }
    if let Some(k) = &j.idempotency_key {
        line(
            "key",
            format!("{k} ({})", if j.key_held { "held" } else { "released" }),
        );
    }
    line("args", j.args.to_string());
    if let Some(p) = j.parent_id {
        line("enqueued by", format!("job {p}"));
    }
    if let Some(t) = j.trace_id() {
        line("trace", t.to_owned());
    }
    if !children.is_empty() {
        let ids: Vec<String> = children
            .iter()
            .map(|c| format!("{} ({}, {})", c.id, c.kind, c.state))
            .collect();
        line("enqueued", ids.join(", "));
    }
    if j.errors.is_empty() {
        out.push_str("  no failed attempt\n");
    } else {
        out.push_str("  attempts that failed:\n");
        let mut t = table(&["attempt", "at", "class", "message"]);
        for e in &j.errors {
            t.add_row(vec![
                e.attempt.to_string(),
                e.at.map(when).unwrap_or_else(|| "-".into()),
                e.class.as_str().to_owned(),
                e.message.clone(),
            ]);
        }
        out.push_str(&t.to_string());
    }
    out
}

/// A drain's `--timeout`: at most [`crate::config::MAX_DRAIN_TIMEOUT`].
fn parse_drain_timeout(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration_within(text, crate::config::MAX_DRAIN_TIMEOUT)
}

/// A replay or cancel that changed no job is a finding (exit 1): the operator asked for work
/// that did not happen. (An id no job has is a usage error, exit 2, before this.)
fn nothing_matched(nothing: bool, what: &str) -> anyhow::Result<()> {
    if nothing {
        return Err(super::Finding(format!("{what}: no job matched")).into());
    }
    Ok(())
}
