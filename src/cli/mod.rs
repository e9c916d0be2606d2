//! The `fleet` command line (the `cli` feature, on by default): [`main`] parses it, loads
//! settings and starts telemetry; `run` dispatches to one file per command group, which does
//! its work through the engine and formats its own output. `src/main.rs` only calls [`main`].
//!
//! It lives in the library so that the binary reaches the engine's internals (the benchmarks'
//! raw statements and scratch databases, the demo's throwaway cluster) without making them
//! public API; the library built without `cli` links none of it (nor the provider sandbox).

mod audit;
mod backfill;
mod bench;
mod booking;
mod check;
mod console;
mod demo;
mod enqueue;
pub(crate) mod output;
pub(crate) mod queue;
mod roles;
mod sandbox;
mod schedules;
mod seed;
mod settings;
mod traveler;
mod workers;

use std::path::PathBuf;

use crate::{config::Settings, database, databases::Databases, telemetry};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet", version, about = "Parker Flight worker fleet")]
pub(crate) struct Cli {
    /// Settings file layered over the embedded defaults (FLEET_* variables override both).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the fleet end to end on a fresh scratch database and print a summary.
    Demo(demo::DemoArgs),
    /// Apply the pending database migrations (the deploy step; roles never migrate), or list
    /// them with --status.
    Migrate(roles::MigrateArgs),
    /// Show the settings in effect and where each came from.
    Config(settings::ConfigArgs),
    /// Run a worker until SIGTERM/SIGINT (first: drain; second: exit at once).
    Worker(roles::WorkerArgs),
    /// Serve the webhook ingress (/webhooks/stripe, /webhooks/duffel) and, on the admin
    /// listener, /livez, /readyz, /metrics and the operator console (/ui/).
    Serve(roles::ServeArgs),
    /// The operator console's tools: hash-password.
    Console(console::ConsoleArgs),
    /// Fire the `[schedules.*]` cron schedules until SIGTERM/SIGINT (any number may run).
    Scheduler,
    /// The cron schedules: last and next ticks, what they enqueued; pause or resume one.
    Schedules(schedules::SchedulesArgs),
    /// Enqueue one job (operators' smoke test).
    Enqueue(enqueue::EnqueueArgs),
    /// Inspect and operate the queue: stats, list, show, replay, cancel, pause, resume, paused,
    /// drain, prune.
    Queue(queue::QueueArgs),
    /// A booking for operators (show), or its refund (refund).
    Booking(booking::BookingArgs),
    /// A traveler's data rights: erase or export their data (dry run first), list the open
    /// requests against their 30-day deadline.
    Traveler(traveler::TravelerArgs),
    /// Who did what: the audit trail, with filters.
    Audit(audit::AuditArgs),
    /// List the registered workers: alive or stale, their queues, what they hold.
    Workers(workers::WorkersArgs),
    /// Serve the provider sandbox (Stripe, Duffel, Resend and Twilio subset) on loopback.
    Sandbox(sandbox::SandboxArgs),
    /// Insert synthetic users with profiles, cards and campaigns (staging and local runs only:
    /// refuses a database that already has users). PII is sealed with FLEET_PII_KEYS.
    Seed(seed::SeedArgs),
    /// Check the invariants (docs/domain.md); print each violation with ids; exit 1 on any.
    Check(check::CheckArgs),
    /// Start or inspect backfills (resumable, checkpointed passes over a table).
    Backfill(backfill::BackfillArgs),
    /// Burn-down benchmark on a fresh scratch database.
    Bench(bench::BenchArgs),
}

/// The `fleet` binary: parses the command line, loads settings, starts telemetry, runs one
/// command and maps its error to the documented exit code (0 ok, 1 a finding, 2 usage or
/// configuration, 3 the database cannot be used).
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // With its cause (a file that cannot be read says why), as `{:#}` prints anyhow's.
            eprintln!("fleet: {:#}", anyhow::Error::new(e));
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The OTLP batch exporter spawns onto the runtime: initialise inside it.
    let log_file = log_file(&cli.command);
    let tracer = rt.block_on(async {
        telemetry::init(
            settings.log_format,
            default_log_filter(&cli.command),
            log_file.as_deref(),
        )
    });
    let result = rt.block_on(run(cli.command, settings, cli.config.as_deref()));
    if let Some(t) = tracer {
        let _ = t.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// Where the command's logs go: a file for the demo (unless `--verbose`), else stderr.
pub(crate) fn log_file(command: &Command) -> Option<std::path::PathBuf> {
    match command {
        Command::Demo(a) => a.log_file(),
        _ => None,
    }
}

/// The log filter when `RUST_LOG` is not set. A benchmark logs warnings only: a line per
/// request or job would be part of what it measures (and `bench steady`'s first attempts that
/// fail on purpose are not worth a warning each). The cron library logs its own start-up at
/// info ("Uninited", "Job creator created"): noise for operators, so only its warnings show.
pub(crate) fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Bench(_) => "warn,sqlx=warn,fleet::worker::executor=error",
        _ => "info,sqlx=warn,tokio_cron_scheduler=warn",
    }
}

/// Runs one command to its end. `file` is the `--config` file, if any.
pub(crate) async fn run(
    command: Command,
    settings: Settings,
    file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => demo::run(a, &settings).await,
        Command::Migrate(a) => roles::migrate(a, &settings).await,
        Command::Config(a) => settings::run(a, file),
        Command::Worker(a) => roles::worker(a, settings).await,
        Command::Serve(a) => roles::serve(a, &settings).await,
        Command::Console(a) => console::run(a),
        Command::Scheduler => roles::scheduler(&settings).await,
        Command::Schedules(a) => schedules::run(a, &settings).await,
        Command::Enqueue(a) => enqueue::run(a, &settings).await,
        Command::Queue(a) => queue::run(a, &settings).await,
        Command::Workers(a) => workers::run(a, &settings).await,
        Command::Booking(a) => booking::run(a, &settings).await,
        Command::Traveler(a) => traveler::run(a, &settings).await,
        Command::Audit(a) => audit::run(a, &settings).await,
        Command::Sandbox(a) => sandbox::run(a).await,
        Command::Seed(a) => seed::run(a, &settings).await,
        Command::Check(a) => check::run(a, &settings).await,
        Command::Backfill(a) => backfill::run(a, &settings).await,
        Command::Bench(a) => bench::run(a).await,
    }
}

/// The configured database (`DATABASE_URL`, else `database.url`; never a guess), its schema
/// checked: every role and operator command runs on it. A database behind this binary is
/// refused; one ahead of it (a rollback) is accepted and the unknown migrations are logged.
pub(crate) async fn db_for(settings: &Settings) -> anyhow::Result<jobs::Db> {
    let db = database::connect_configured(&settings.database).await?;
    database::require_schema(&db).await?;
    Ok(db)
}

/// Every configured database (`main` from [`db_for`], each `[databases.*]` one checked the
/// same way) with its read replica, if any.
pub(crate) async fn databases_for(settings: &Settings) -> anyhow::Result<Databases> {
    let main = db_for(settings).await?;
    Ok(Databases::connect(settings, main).await?)
}

/// The command line asked for something that cannot be done as asked (a bad flag value, a
/// missing argument, unreadable input): exit 2, nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// Returns a usage error (exit 2) from the enclosing function: the command was asked for
/// something it cannot do as asked.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err($crate::cli::UsageError(format!($($t)*)).into())
    };
}
pub(crate) use usage;

/// A result the command reports as a finding (exit 1): invariants violated, a drain that did
/// not finish. Distinct from a failure to run (exit 2 or 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Finding(pub String);

/// The documented exit codes: 0 ok, 1 a finding (or a failed operation), 2 usage or
/// configuration error, 3 the database cannot be reached or its schema does not fit. The one
/// place an error becomes an exit code: by its type, the first in the chain that decides.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    use crate::ops::OpsError;
    for cause in e.chain() {
        if cause.is::<Finding>() {
            return 1;
        }
        if cause.is::<crate::config::ConfigError>() || cause.is::<UsageError>() {
            return 2;
        }
        if let Some(op) = cause.downcast_ref::<OpsError>() {
            return match op {
                // An id no job has is the operator's input, not a finding about the queue.
                OpsError::Usage(_) | OpsError::NoSuchJob(_) => 2,
                OpsError::DrainTimedOut(_) | OpsError::Domain(_) => 1,
                OpsError::Replica { .. } | OpsError::Database(_) => 3,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::EnqueueError>() {
            return match e {
                crate::EnqueueError::Database(_) => 3,
                crate::EnqueueError::KeyContended { .. } => 1,
                _ => 2,
            };
        }
        if let Some(db) = cause.downcast_ref::<database::DatabaseError>() {
            return if db.is_configuration() { 2 } else { 3 };
        }
        if cause.is::<sqlx::Error>() {
            return 3;
        }
    }
    1
}

/// First SIGTERM/SIGINT: drain. Second: exit at once (leases expire; the rescuer takes over).
pub(crate) fn spawn_signal_handler(shutdown: CancellationToken) {
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

/// Who is acting, for audit rows: the OS user.
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid:{}", unsafe { libc::getuid() }))
}
