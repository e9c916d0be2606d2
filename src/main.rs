//! The `fleet` binary: parses the command line, loads settings, sets up logging, and hands
//! off to one role.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fleet::{
    bench, config::Settings, database, fleet_registry, ops::Ops, queue, queue::JobState, telemetry,
    Queue, Worker,
};
use jobs::NewJob;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet", version, about = "Parker Flight worker fleet")]
struct Cli {
    /// Settings file layered over the embedded defaults (FLEET_* variables override both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet end to end on a fresh scratch database and print a summary.
    Demo {
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Apply database migrations.
    Migrate,
    /// Run a worker until SIGTERM/SIGINT (first: drain; second: exit at once).
    Worker {
        /// Handlers at once (overrides worker.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Queues to serve, comma-separated (overrides worker.queues; default all).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Also serve /health and /metrics on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
    },
    /// Serve /health, /metrics and the webhook ingress (/webhooks/stripe, /webhooks/duffel).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
    },
    /// Fire the `[schedules.*]` cron schedules until SIGTERM/SIGINT (any number may run).
    Scheduler,
    /// Enqueue one job (operators' smoke test).
    Enqueue {
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
    },
    /// Pause, resume or list paused kinds (the kill switch).
    Queue {
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Serve the provider sandbox (Stripe, Duffel and Resend subset) on loopback.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:12111")]
        bind: std::net::SocketAddr,
        /// Seed of the deterministic fares.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Insert synthetic users with profiles, cards and campaigns (staging and local runs only:
    /// refuses a database that already has users). PII is sealed with FLEET_PII_KEYS.
    Seed {
        /// How many users.
        #[arg(long, default_value_t = 100)]
        users: usize,
    },
    /// Check the invariants (BRIEF §6); print each violation with ids; exit 1 on any.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Start or inspect backfills (resumable, checkpointed passes over a table).
    Backfill {
        #[command(subcommand)]
        action: BackfillAction,
    },
    /// Burn-down benchmark on a fresh scratch database.
    Bench {
        /// Jobs to burn down.
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// Worker concurrency.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Claims beyond free slots (default: 3 × --concurrency, so the worker holds 4 × C jobs,
        /// like the Graphile Worker peer's local queue of max(4 × C, 100)).
        #[arg(long)]
        prefetch: Option<usize>,
        /// Finished jobs inserted before the run.
        #[arg(long, default_value_t = 0)]
        history: u64,
        /// Jobs trickled one at a time into the idle queue to measure pickup latency.
        #[arg(long, default_value_t = 300)]
        latency_jobs: usize,
        /// Only the latency phase's jobs (skip most of the burn-down: --jobs 1).
        #[arg(long)]
        latency: bool,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
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

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d)
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor a duration like \"2h\""))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The OTLP batch exporter spawns onto the runtime: initialise inside it.
    let tracer = rt.block_on(async { telemetry::init(settings.log_format, "info,sqlx=warn") });
    let result = rt.block_on(run(cli.command, settings));
    if let Some(t) = tracer {
        let _ = t.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn pool_for(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let url =
        database::resolve_server_url(settings.database_url.as_ref().map(|s| s.0.as_str())).await?;
    database::connect(&url, settings.database.max_connections).await
}

async fn run(command: Command, mut settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Demo { json } => {
            let s = fleet::demo::run(&settings).await?;
            eprintln!(
                "demo summary\n  campaigns            {}\n  campaigns searched   {}\n  bookings ticketed    {}\n  bookings failed      {} (holds voided, searches rescheduled)\n  refunds              {}\n  reminders sent       {}\n  retries              {}\n  dead jobs            {}\n  PaymentIntents       {} (at most {} per booking)\n  invariant violations {}\n  elapsed              {} ms",
                s.campaigns, s.campaigns_searched, s.bookings_ticketed, s.bookings_failed, s.refunds,
                s.reminders_sent, s.retries, s.dead_jobs, s.payment_intents, s.max_payment_intents_per_booking,
                s.invariant_violations, s.elapsed_ms
            );
            if json {
                println!("{}", serde_json::to_string(&s)?);
            }
            if s.invariant_violations > 0 || s.max_payment_intents_per_booking > 1 {
                bail!("demo: {} invariant violation(s)", s.invariant_violations);
            }
        }
        Command::Migrate => {
            let pool = pool_for(&settings).await?;
            database::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Serve { bind } => {
            let secrets = fleet::webhooks::WebhookSecrets::from_env()?;
            let registry = Arc::new(fleet_registry(&settings)?);
            let pool = pool_for(&settings).await?;
            database::migrate(&pool).await?;
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            let router = fleet::serve::router(pool.clone()).merge(fleet::webhooks::router(
                pool.clone(),
                Queue::new(pool, registry),
                secrets,
            ));
            fleet::serve::run(bind, router, shutdown, None).await?;
        }
        Command::Worker {
            concurrency,
            queues,
            metrics_bind,
        } => {
            if let Some(c) = concurrency {
                if c == 0 {
                    bail!("--concurrency must be >= 1");
                }
                settings.worker.concurrency = c;
            }
            if let Some(q) = queues {
                settings.worker.queues = q;
            }
            let registry = Arc::new(fleet_registry(&settings)?);
            let deps = fleet::fleet_deps(&settings)?;
            let pool = pool_for(&settings).await?;
            database::migrate(&pool).await?;
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            if let Some(bind) = metrics_bind {
                let (router, stop) = (fleet::serve::router(pool.clone()), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = fleet::serve::run(bind, router, stop, None).await {
                        tracing::error!(error = %e, "metrics endpoint failed");
                    }
                });
            }
            let report = Worker::new(pool, registry, settings.worker.clone())
                .with_deps(deps)
                .run(shutdown)
                .await;
            if report.unwritten > 0 {
                bail!(
                    "{} outcomes could not be written; their jobs will be rescued after their leases expire",
                    report.unwritten
                );
            }
        }
        Command::Sandbox { bind, seed } => {
            if !bind.ip().is_loopback() {
                bail!("--bind {bind}: the sandbox only listens on loopback addresses");
            }
            let cfg = sandbox::SandboxConfig {
                seed,
                ..Default::default()
            };
            let running = sandbox::Sandbox::start(cfg, bind).await?;
            println!("sandbox listening on {}", running.base_url);
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            shutdown.cancelled().await;
            running.shutdown().await?;
        }
        Command::Seed { users } => {
            let keyring = jobs::pii::Keyring::from_env()?;
            let pool = pool_for(&settings).await?;
            database::migrate(&pool).await?;
            let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&pool)
                .await?;
            if existing > 0 {
                bail!("the database already has {existing} users: fleet seed only fills empty (staging/local) databases");
            }
            for n in 0..users {
                fleet::seed::seed_campaign(&pool, &keyring, &fleet::seed::CampaignSeed::new(n))
                    .await?;
            }
            println!(
                "seeded {users} users (key version v{})",
                keyring.newest_version()
            );
        }
        Command::Check { json } => {
            let pool = pool_for(&settings).await?;
            let violations = fleet::check::run(&pool).await?;
            if json {
                println!("{}", serde_json::json!({ "violations": violations }));
            } else if violations.is_empty() {
                println!("all invariants hold");
            } else {
                for v in &violations {
                    println!("VIOLATED: {} — ids: {}", v.invariant, v.ids.join(", "));
                }
            }
            if !violations.is_empty() {
                bail!("{} invariant(s) violated", violations.len());
            }
        }
        Command::Backfill { action } => {
            let pool = pool_for(&settings).await?;
            let mut conn = pool.acquire().await?;
            match action {
                BackfillAction::Start {
                    name,
                    batch_size,
                    pause_ms,
                } => {
                    if jobs::backfill::by_name(&name).is_none() {
                        let known: Vec<&str> =
                            jobs::backfill::all().iter().map(|b| b.name()).collect();
                        bail!("unknown backfill {name:?} (known: {})", known.join(", "));
                    }
                    if !(1..=50_000).contains(&batch_size) {
                        bail!("--batch-size must be 1..=50000, got {batch_size}");
                    }
                    let reset = jobs::backfill::reset_if_finished(&mut conn, &name).await?;
                    let registry = Arc::new(fleet_registry(&settings)?);
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
        }
        Command::Scheduler => {
            let registry = Arc::new(fleet_registry(&settings)?);
            let schedules = fleet::scheduler::validate(&settings.schedules, &registry)?;
            if schedules.is_empty() {
                tracing::warn!("no [schedules.*] are enabled: the scheduler will idle");
            }
            let pool = pool_for(&settings).await?;
            database::migrate(&pool).await?;
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            fleet::scheduler::Scheduler::new(pool, registry, schedules)
                .run(shutdown)
                .await?;
        }
        Command::Enqueue {
            kind,
            args,
            key,
            delay,
        } => {
            let args: serde_json::Value =
                serde_json::from_str(&args).context("--args is not valid JSON")?;
            let registry = Arc::new(fleet_registry(&settings)?);
            if registry.get(&kind).is_none() {
                bail!(
                    "unknown job kind {kind:?} (known: {})",
                    registry.kind_names().join(", ")
                );
            }
            let pool = pool_for(&settings).await?;
            let mut job = NewJob::raw(kind, args);
            job.opts.idempotency_key = key;
            if let Some(d) = delay {
                job = job.run_at(chrono::Utc::now() + chrono::Duration::from_std(d)?);
            }
            let r = Queue::new(pool, registry).enqueue_new(job).await?;
            println!(
                "{}",
                serde_json::json!({ "id": r.id, "duplicate": r.duplicate })
            );
        }
        Command::Queue { json, action } => {
            let registry = fleet_registry(&settings)?;
            let pool = pool_for(&settings).await?;
            queue_command(pool, registry.kind_names(), action, json).await?;
        }
        Command::Bench {
            jobs,
            concurrency,
            prefetch,
            history,
            latency_jobs,
            latency,
            json,
        } => {
            let params = bench::BenchParams {
                jobs: if latency { 1 } else { jobs },
                concurrency,
                prefetch: prefetch.unwrap_or(3 * concurrency),
                history,
                latency_jobs,
                latency_gap: Duration::from_millis(20),
            };
            let r = bench::run(params).await?;
            eprintln!(
                "burn-down: {} jobs, concurrency {}, prefetch {}, history {}\n  enqueue  {:>10.0} jobs/s\n  work     {:>10.0} jobs/s\n  completed {} (ran more than once: {})\n  pickup p50 {:.3} ms, p99 {:.3} ms over {} trickled jobs\n  load average (1m) at start: {:.2}",
                r.jobs, r.concurrency, r.prefetch, r.history, r.enqueue_jobs_per_s, r.work_jobs_per_s,
                r.completed, r.ran_more_than_once, r.pickup_p50_ms, r.pickup_p99_ms, r.latency_jobs,
                r.loadavg_1m
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            if r.completed != r.jobs as u64 || r.ran_more_than_once > 0 {
                bail!(
                    "benchmark verification failed: {} of {} completed, {} ran more than once",
                    r.completed,
                    r.jobs,
                    r.ran_more_than_once
                );
            }
        }
    }
    Ok(())
}

async fn queue_command(
    pool: sqlx::PgPool,
    kinds: Vec<String>,
    action: QueueAction,
    json: bool,
) -> anyhow::Result<()> {
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

/// First SIGTERM/SIGINT: drain. Second: exit at once (leases expire; the rescuer takes over).
fn spawn_signal_handler(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: draining (send again to exit at once)");
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("fleet: second signal: exiting without draining; held jobs are rescued when their leases expire");
        std::process::exit(130);
    });
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid:{}", unsafe { libc::getuid() }))
}
