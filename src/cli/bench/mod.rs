//! `fleet bench`: reproducible benchmarks that print their figures (stderr) and, with
//! `--json`, one JSON object (stdout). Each mode verifies its own result and fails when the
//! work was not done exactly as asked: a fast wrong answer is not a figure.
//! - no mode: the queue's burn-down ([`burn_down`]);
//! - `ceiling`: the claim and outcome statements with no runtime around them, beside the
//!   engine in the same run ([`ceiling`]);
//! - `soak`: a steady rate for a while with retention beside it, printing rates, purge batch
//!   times and the table's and indexes' sizes at intervals ([`soak`]);
//! - `webhooks`: the webhook ingress under load, and the cost of the worst accepted request
//!   next to a normal one ([`webhooks`]);
//! - `processes`: the burn-down with 1, 2, 4 worker processes, with the CPU each side used
//!   ([`processes`]);
//! - `fanout`: one campaign scan over 100,000+ due campaigns, and its re-run ([`fanout`]);
//! - `booking`: fare found → ticketed under provider latency, at a steady rate, with worker
//!   processes and the search fan-out beside it ([`booking`]);
//! - `apalis`: the burn-down by the engine's worker, an apalis worker on the fleet's queue and
//!   an apalis worker on apalis-postgres's own storage, interleaved ([`apalis`]);
//! - `backlog`: a million jobs enqueued, then drained, with the rate of each tenth of the
//!   drain and the table's size before and after ([`backlog`]).

mod apalis;
mod backlog;
mod booking;
mod burn_down;
mod ceiling;
mod fanout;
mod processes;
mod soak;
mod webhooks;

/// `fleet bench [MODE]`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    burn_down: burn_down::BurnDownArgs,
}

#[derive(clap::Subcommand)]
enum BenchMode {
    /// The queue's statements alone, back to back, against the engine in the same run.
    Ceiling(ceiling::CeilingArgs),
    /// A steady rate for a while with retention beside it: rates, purge batch times, sizes.
    Soak(soak::SoakArgs),
    /// The webhook ingress: concurrent clients posting signed events plus invalid ones.
    Webhooks(webhooks::WebhookBenchArgs),
    /// The burn-down worked by N worker processes (default 1, 2, 4), interleaved over rounds.
    Processes(processes::ProcessesArgs),
    /// One worker process of `bench processes` (started by it).
    #[command(hide = true)]
    ProcessesChild(processes::ChildArgs),
    /// One campaign scan over N due campaigns: time to enqueue every search, and its re-run.
    Fanout(fanout::FanoutArgs),
    /// Booking latency (fare found → ticketed) at a steady rate under provider latency.
    Booking(booking::BookingBenchArgs),
    /// The burn-down by the native worker, an apalis worker on the fleet's queue, and an
    /// apalis worker on apalis-postgres 1.0's storage, interleaved over rounds.
    Apalis(apalis::ApalisBenchArgs),
    /// A deep backlog (default 1,000,000 jobs) enqueued, then drained: the rate of each tenth
    /// of the drain, so a claim that slows as finished rows pile up shows.
    Backlog(backlog::BacklogArgs),
}

/// Runs the chosen benchmark.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.mode {
        None => burn_down::run(a.burn_down).await,
        Some(BenchMode::Ceiling(c)) => ceiling::run(c).await,
        Some(BenchMode::Soak(s)) => soak::run(s).await,
        Some(BenchMode::Webhooks(w)) => webhooks::run(w).await,
        Some(BenchMode::Processes(p)) => processes::run(p).await,
        Some(BenchMode::ProcessesChild(c)) => processes::child(c).await,
        Some(BenchMode::Fanout(f)) => fanout::run(f).await,
        Some(BenchMode::Booking(b)) => booking::run(b).await,
        Some(BenchMode::Apalis(a)) => apalis::run(a).await,
        Some(BenchMode::Backlog(b)) => backlog::run(b).await,
    }
}

/// The `q` quantile (0..=1) of `sorted` (ascending), nearest rank, rounded to 3 decimals;
/// NaN when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[idx] * 1000.0).round() / 1000.0
}

/// The 1-minute load average (NaN where /proc is not there): printed with every figure, so a
/// busy machine shows in the record.
fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
