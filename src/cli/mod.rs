//! The `fleet` command line. `main.rs` parses it, loads settings and starts telemetry; [`run`]
//! dispatches to one file per command group, which does its work through the library and
//! formats its own output.

mod backfill;
mod bench;
mod check;
mod demo;
mod enqueue;
mod queue;
mod roles;
mod sandbox;
mod seed;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleet::{config::Settings, database};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet", version, about = "Parker Flight worker fleet")]
pub struct Cli {
    /// Settings file layered over the embedded defaults (FLEET_* variables override both).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the fleet end to end on a fresh scratch database and print a summary.
    Demo(demo::DemoArgs),
    /// Apply database migrations.
    Migrate,
    /// Run a worker until SIGTERM/SIGINT (first: drain; second: exit at once).
    Worker(roles::WorkerArgs),
    /// Serve /health, /metrics and the webhook ingress (/webhooks/stripe, /webhooks/duffel).
    Serve(roles::ServeArgs),
    /// Fire the `[schedules.*]` cron schedules until SIGTERM/SIGINT (any number may run).
    Scheduler,
    /// Enqueue one job (operators' smoke test).
    Enqueue(enqueue::EnqueueArgs),
    /// Pause, resume or list paused kinds (the kill switch).
    Queue(queue::QueueArgs),
    /// Serve the provider sandbox (Stripe, Duffel and Resend subset) on loopback.
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

/// Runs one command to its end.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => demo::run(a, &settings).await,
        Command::Migrate => roles::migrate(&settings).await,
        Command::Worker(a) => roles::worker(a, settings).await,
        Command::Serve(a) => roles::serve(a, &settings).await,
        Command::Scheduler => roles::scheduler(&settings).await,
        Command::Enqueue(a) => enqueue::run(a, &settings).await,
        Command::Queue(a) => queue::run(a, &settings).await,
        Command::Sandbox(a) => sandbox::run(a).await,
        Command::Seed(a) => seed::run(a, &settings).await,
        Command::Check(a) => check::run(a, &settings).await,
        Command::Backfill(a) => backfill::run(a, &settings).await,
        Command::Bench(a) => bench::run(a).await,
    }
}

/// A pool on the configured database.
pub(crate) async fn pool_for(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let url =
        database::resolve_server_url(settings.database_url.as_ref().map(|s| s.0.as_str())).await?;
    database::connect(&url, settings.database.max_connections).await
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
