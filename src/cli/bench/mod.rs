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
//!   drain and the table's size before and after ([`backlog`]);
//! - `steady`: a realistic mix of kinds offered at a fixed share of its measured capacity for
//!   a while: pickup, table growth and CPU per job at intervals ([`steady`]).

mod apalis;
mod backlog;
mod booking;
mod burn_down;
mod ceiling;
mod fanout;
mod processes;
mod soak;
mod steady;
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
    /// A realistic mix (two queues, a limited kind, slow handlers, a tenth failing once)
    /// offered at a fixed share of its measured capacity: pickup, table growth, CPU per job.
    Steady(steady::SteadyArgs),
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
        Some(BenchMode::Steady(s)) => steady::run(s).await,
    }
}

/// The claims a bench worker at concurrency `c` holds beyond the `c` it runs, unless told
/// otherwise: what the Graphile Worker peer holds. Its local queue keeps up to
/// `max(4 × C, 100)` fetched jobs waiting for a worker, besides the C its workers are running
/// (a worker's `getJob` shifts its job out of the queue, and the queue fetches a full batch
/// again once it is empty: graphile/worker `src/localQueue.ts`). So a worker that holds
/// `c + max(4c, 100)` claims holds at most what the peer does. (Until 2026-12-08 this was
/// `3c`, which counted the peer's running jobs inside its queue: 64 claims fewer at C = 64.)
fn peer_prefetch(c: usize) -> usize {
    (4 * c).max(100)
}

/// What one of the process's histograms has observed so far (the worker's claim rounds, its
/// outcome writes): a bench reads it before and after a stretch and takes the difference.
#[derive(Debug, Clone, Copy)]
struct Observed {
    count: u64,
    seconds: f64,
    over_10ms: u64,
    over_50ms: u64,
}

impl Observed {
    fn of(h: &prometheus::Histogram) -> Self {
        use prometheus::core::Collector;
        let families = h.collect();
        let proto = families[0].get_metric()[0].get_histogram();
        let count = proto.get_sample_count();
        // Buckets are cumulative: observations above `le` are the count less the bucket's.
        let above = |le: f64| {
            let within = proto
                .get_bucket()
                .iter()
                .find(|b| (b.upper_bound() - le).abs() < 1e-9)
                .expect("the histogram has a bucket bound at 10 and at 50 ms")
                .cumulative_count();
            count - within
        };
        Self {
            count,
            seconds: proto.get_sample_sum(),
            over_10ms: above(0.01),
            over_50ms: above(0.05),
        }
    }

    /// What was observed since `before`.
    fn since(self, before: Self) -> Self {
        Self {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            over_10ms: self.over_10ms - before.over_10ms,
            over_50ms: self.over_50ms - before.over_50ms,
        }
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

/// User + system CPU seconds of process `pid` (0 when it is gone).
pub(super) fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub(super) fn procs_cpu_s(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| proc_cpu_s(p)).sum()
}

/// CPU seconds of the Postgres backends connected to database `db` (their process title
/// is `postgres: USER DB HOST(PORT) STATE`).
pub(super) fn backend_cpu_s(db: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    let needle = format!(" {db} ");
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("postgres:") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .map(proc_cpu_s)
        .sum()
}

/// `VACUUM fleet_jobs` every `every` (if given) until `stop` is cancelled, as autovacuum does
/// on a server that runs it (this machine's does not).
pub(super) fn spawn_vacuum(
    pool: sqlx::PgPool,
    every: Option<std::time::Duration>,
    stop: tokio_util::sync::CancellationToken,
) -> VacuumTask {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = every.map(|every| {
        let n = ran.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if crate::queue::job_table_vacuum(&pool).await.is_ok() {
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    });
    VacuumTask { task, ran }
}

/// What [`spawn_vacuum`] started.
pub(super) struct VacuumTask {
    task: Option<tokio::task::JoinHandle<()>>,
    ran: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl VacuumTask {
    /// Waits for the task to end (its `stop` must be cancelled) and returns how many VACUUMs
    /// ran (0 when none was asked for).
    pub(super) async fn finish(self) -> u64 {
        if let Some(task) = self.task {
            let _ = task.await;
        }
        self.ran.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Ready (`available`) jobs, from the queue's gauges: the backlog a sample line reports.
pub(super) async fn ready_jobs(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    Ok(crate::queue::job_gauges(conn, None)
        .await?
        .iter()
        .filter(|g| g.state == "available")
        .map(|g| g.count)
        .sum())
}

/// Waits until `done` reaches `target`, or fails after `within` naming `what` and how far it got.
pub(super) async fn wait_until_done(
    done: &std::sync::atomic::AtomicU64,
    target: u64,
    within: std::time::Duration,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        if n >= target {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what} stalled: {n} of {target} jobs finished");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
