//! `fleet bench` (no mode): the burn-down benchmark (after River's `river bench`).
//!
//! 1. a fresh database on the resolved server, optionally pre-filled with `history` finished jobs;
//! 2. **enqueue**: `jobs` no-op jobs in one bulk call, timed;
//! 3. **work**: one worker (this process) at `concurrency` works them until every outcome is
//!    written, timed; each job counts its runs, so "completed exactly once" is checked, not
//!    assumed, and the database must agree (every row `completed`, claimed once);
//! 4. **pickup latency**: `latency_jobs` jobs trickled one at a time into the now idle queue;
//!    pickup = handler start − the moment the enqueue call began (so it includes the insert's
//!    own round trip, the commit, NOTIFY delivery and the claim).

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerSettings, database::scratch::ScratchDb, queue, registry::Registry, Queue, Worker,
};

#[derive(clap::Args)]
pub struct BurnDownArgs {
    /// Jobs to burn down.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Claims beyond free slots (default: max(4 × --concurrency, 100), what the Graphile
    /// Worker peer holds beside its running jobs: its local queue of max(4 × C, 100)).
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
    /// Claim the jobs under a fleet-wide limit of N running (the limited claim:
    /// docs/limits.md); compare with the run without it for the limit's cost.
    #[arg(long)]
    global_concurrency: Option<usize>,
    /// Before the burn-down, enqueue N jobs of a second kind whose rate budget (1/s) keeps
    /// them waiting, ahead of the burn-down's jobs: does a throttled kind slow the others?
    #[arg(long, default_value_t = 0)]
    throttled_jobs: usize,
    /// The burn-down's jobs spend a rate budget of this many tokens per second (burst the
    /// same): the cost of the budget row every claim locks and debits.
    #[arg(long)]
    budget_rate: Option<f64>,
    /// Workers (in this process, each with its own fetch loop, sharing the pool): claims of a
    /// limited kind contend for its lock and budget row.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// A storage parameter of `fleet_jobs` for this run, `name=value` (`value` = `default`
    /// resets it), e.g. `fillfactor=100`; repeatable. Set before the history is inserted.
    #[arg(long = "table-setting", value_parser = queue::parse_table_setting)]
    table_settings: Vec<(String, Option<String>)>,
    /// How the worker and the enqueue reach Postgres: `direct`; or through a PgBouncer of the
    /// bench's own (Debian's `pgbouncer`) in `session` mode, in `transaction` mode with the
    /// direct connection beside it (LISTEN, the claim session), or in `transaction` mode with
    /// no direct connection at all (`transaction-only`: polling, a claim transaction per round).
    #[arg(long, value_enum, default_value = "direct")]
    through: Through,
    /// Connections the bulk enqueue may use: 2, as the library does with a pool that gives a
    /// second one (a batch past one statement is split over two), or 1 (a pool of one
    /// connection of its own, direct only).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    enqueue_connections: u8,
    /// How long the worker's completer waits for more outcomes before it writes a small batch
    /// (`worker.completer_linger`; default: the embedded setting's).
    #[arg(long, value_parser = humantime::parse_duration)]
    completer_linger: Option<Duration>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// What the benchmark's connections go through (`--through`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Through {
    /// Postgres itself.
    Direct,
    /// PgBouncer in session mode.
    Session,
    /// PgBouncer in transaction mode, the direct connection beside it.
    Transaction,
    /// PgBouncer in transaction mode, no direct connection.
    TransactionOnly,
}

/// `fleet bench`: one run, its figures on stderr (and JSON on stdout), verified.
pub async fn run(a: BurnDownArgs) -> anyhow::Result<()> {
    let params = BenchParams {
        jobs: if a.latency { 1 } else { a.jobs },
        concurrency: a.concurrency,
        prefetch: a.prefetch.unwrap_or(super::peer_prefetch(a.concurrency)),
        history: a.history,
        latency_jobs: a.latency_jobs,
        latency_gap: Duration::from_millis(20),
        global_concurrency: a.global_concurrency,
        throttled_jobs: a.throttled_jobs,
        budget_rate: a.budget_rate,
        workers: a.workers.max(1),
        table_settings: a.table_settings,
        through: a.through,
        enqueue_connections: a.enqueue_connections,
        completer_linger: a
            .completer_linger
            .unwrap_or(WorkerSettings::default().completer_linger),
    };
    if a.enqueue_connections == 1 && a.through != Through::Direct {
        bail!("--enqueue-connections 1 opens a direct connection: use it with --through direct");
    }
    let r = burn_down(params).await?;
    eprintln!(
        "burn-down through {:?}: {} jobs, {} worker(s) at concurrency {}, prefetch {}, history {}, global_concurrency {:?}, budget {:?}/s, throttled jobs ahead {}\n  enqueue  {:>10.0} jobs/s over {} connection(s) at most\n  work     {:>10.0} jobs/s\n  claim loop busy {:.0} % of the work ({} rounds, {:.0} jobs a round); completer busy {:.0} % ({} writes, {:.0} outcomes a write)\n  completed {} (ran more than once: {})\n  pickup p50 {:.3} ms, p99 {:.3} ms over {} trickled jobs\n  load average (1m) at start: {:.2}",
        r.through, r.jobs, r.workers, r.concurrency, r.prefetch, r.history, r.global_concurrency,
        r.budget_rate, r.throttled_jobs,
        r.enqueue_jobs_per_s, r.enqueue_connections, r.work_jobs_per_s,
        r.claim_busy_share * 100.0, r.claim_rounds, r.jobs as f64 / r.claim_rounds.max(1) as f64,
        r.outcome_write_busy_share * 100.0, r.outcome_writes,
        r.jobs as f64 / r.outcome_writes.max(1) as f64,
        r.completed, r.ran_more_than_once, r.pickup_p50_ms, r.pickup_p99_ms, r.latency_jobs,
        r.loadavg_1m
    );
    if a.json {
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
    Ok(())
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
struct BenchParams {
    /// Jobs to burn down.
    pub jobs: usize,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Claims beyond free slots.
    pub prefetch: usize,
    /// Finished jobs inserted before the run.
    pub history: u64,
    /// Jobs trickled for the pickup-latency phase (0 = skip).
    pub latency_jobs: usize,
    /// Pause between trickled jobs, so the queue is idle each time.
    pub latency_gap: Duration,
    /// The burn-down kind's fleet-wide limit (the limited claim), if any.
    pub global_concurrency: Option<usize>,
    /// Throttled jobs of another kind waiting ahead of the burn-down.
    pub throttled_jobs: usize,
    /// The burn-down kind's budget, tokens per second.
    pub budget_rate: Option<f64>,
    /// Workers sharing the burn-down.
    pub workers: usize,
    /// Storage parameters of `fleet_jobs` for this run.
    pub table_settings: Vec<(String, Option<String>)>,
    /// What the connections go through.
    pub through: Through,
    /// Connections the bulk enqueue may use (1 or 2).
    pub enqueue_connections: u8,
    /// The worker's `completer_linger`.
    pub completer_linger: Duration,
}

/// Figures of one run. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct BenchReport {
    /// Jobs enqueued for the burn-down.
    pub jobs: usize,
    /// Jobs the database shows completed after the burn-down.
    pub completed: u64,
    /// Jobs whose handler ran more than once (must be 0).
    pub ran_more_than_once: u64,
    /// Bulk enqueue rate.
    pub enqueue_jobs_per_s: f64,
    /// Burn-down rate (first claim possible → last outcome written).
    pub work_jobs_per_s: f64,
    /// Share of the burn-down the fetch loop spent in claim rounds (summed over the workers:
    /// up to one per worker). Near 1, the claim loop is the worker's bottleneck.
    pub claim_busy_share: f64,
    /// Claim rounds during the burn-down.
    pub claim_rounds: u64,
    /// Share of the burn-down the completer spent writing outcomes (summed over the workers).
    pub outcome_write_busy_share: f64,
    /// Outcome writes during the burn-down.
    pub outcome_writes: u64,
    /// Median pickup latency of trickled jobs.
    pub pickup_p50_ms: f64,
    /// 99th percentile pickup latency.
    pub pickup_p99_ms: f64,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Prefetch.
    pub prefetch: usize,
    /// Finished jobs in history.
    pub history: u64,
    /// Trickled jobs measured.
    pub latency_jobs: usize,
    /// 1-minute load average when the run started.
    pub loadavg_1m: f64,
    /// The burn-down kind's fleet-wide limit, if any.
    pub global_concurrency: Option<usize>,
    /// Throttled jobs of another kind that waited ahead of the burn-down.
    pub throttled_jobs: usize,
    /// The burn-down kind's budget, tokens per second, if any.
    pub budget_rate: Option<f64>,
    /// Workers sharing the burn-down.
    pub workers: usize,
    /// What the connections went through.
    pub through: Through,
    /// Connections the bulk enqueue could use (1 or 2).
    pub enqueue_connections: u8,
}

struct BenchState {
    runs: Vec<AtomicU32>,
    /// Nanoseconds since `epoch` at which each trickled job's handler started.
    started_ns: Vec<AtomicU64>,
    epoch: Instant,
    done: AtomicU64,
    /// Signalled after every run, so the latency phase waits without spinning: a spinning
    /// waiter would take one of the two cores away from the worker and Postgres it measures.
    ran: tokio::sync::Notify,
}

static STATE: OnceLock<BenchState> = OnceLock::new();

/// The benchmark's job: counts its runs, records its start time, does nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchNoop {
    /// Slot in the run counters.
    pub i: usize,
}

impl Job for BenchNoop {
    const KIND: &'static str = "fleet.bench_noop";

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        let st = STATE
            .get()
            .ok_or_else(|| JobError::fatal("bench state not initialised"))?;
        let slot = st
            .runs
            .get(self.i)
            .ok_or_else(|| JobError::fatal("slot out of range"))?;
        slot.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = st.started_ns.get(self.i) {
            t.store(st.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        st.done.fetch_add(1, Ordering::Relaxed);
        st.ran.notify_one();
        Ok(())
    }
}

/// A job of a kind whose budget keeps it waiting (`--throttled-jobs`); does nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchThrottled {}

impl Job for BenchThrottled {
    const KIND: &'static str = "fleet.bench_throttled";

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Runs the benchmark once (a process can run it only once: its counters are static).
async fn burn_down(p: BenchParams) -> anyhow::Result<BenchReport> {
    if p.jobs == 0 || p.concurrency == 0 {
        bail!("--jobs and --concurrency must be >= 1");
    }
    let total = p.jobs + p.latency_jobs;
    let st = BenchState {
        runs: (0..total).map(|_| AtomicU32::new(0)).collect(),
        started_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
        done: AtomicU64::new(0),
        ran: tokio::sync::Notify::new(),
    };
    if STATE.set(st).is_err() {
        bail!("the benchmark can run once per process");
    }
    let st = STATE.get().expect("set");
    let loadavg_1m = super::loadavg_1m();

    let db = ScratchDb::new("fleet_bench").await?;
    let pool = crate::database::connect(
        &db.url,
        ((p.concurrency as u32 + 10) * p.workers as u32).max(16),
    )
    .await?;
    {
        let mut conn = pool.acquire().await?;
        queue::job_table_set_storage(&mut conn, &p.table_settings)
            .await
            .map_err(|e| anyhow::anyhow!("--table-setting: {e}"))?;
    }
    if p.history > 0 {
        eprintln!("inserting {} finished jobs of history…", p.history);
        let t = Instant::now();
        let mut conn = pool.acquire().await?;
        queue::job_insert_finished_history(&mut conn, "fleet.bench_history", p.history as i64)
            .await
            .context("inserting history")?;
        eprintln!("  history ready in {:.1} s", t.elapsed().as_secs_f64());
    }

    let mut registry = Registry::default();
    if let Some(rate) = p.budget_rate {
        registry.declare_budget(
            "bench_budget",
            jobs::BudgetDefaults {
                per_second: rate,
                burst: rate.ceil().max(1.0) as u32,
            },
        );
    }
    registry.register_with::<BenchNoop>(KindDefaults {
        max_attempts: 1,
        global_concurrency: p.global_concurrency,
        budgets: p
            .budget_rate
            .map(|_| vec!["bench_budget".to_owned()])
            .unwrap_or_default(),
        ..KindDefaults::default()
    });
    // Registered only when asked for: a limited kind in the registry adds the limited
    // claim's probe to every fetch round, which the plain run must not pay.
    if p.throttled_jobs > 0 {
        registry.declare_budget(
            "bench_throttle",
            jobs::BudgetDefaults {
                per_second: 1.0,
                burst: 1,
            },
        );
        registry.register_with::<BenchThrottled>(KindDefaults {
            budgets: vec!["bench_throttle".to_owned()],
            ..KindDefaults::default()
        });
    }
    let registry = Arc::new(registry);
    // The worker's and the enqueue's database, opened as the roles open theirs (statement
    // bound included), through the path asked for.
    let pool_size = ((p.concurrency as u32 + 10) * p.workers as u32).max(16);
    let (_bouncer, db_handle) = open_through(&db.url, p.through, pool_size).await?;
    let q = Queue::new(db_handle.clone(), registry.clone());
    if p.throttled_jobs > 0 {
        let ahead: Vec<NewJob> = (0..p.throttled_jobs)
            .map(|_| NewJob::of(&BenchThrottled {}).expect("serializable"))
            .collect();
        q.enqueue_many(ahead).await?;
    }

    // Enqueue.
    let batch: Vec<NewJob> = (0..p.jobs)
        .map(|i| NewJob::of(&BenchNoop { i }).expect("serializable"))
        .collect();
    // One connection: a pool of one of its own, opened as the others are, so the enqueue
    // cannot take a second.
    let one = match p.enqueue_connections {
        1 => Some(open_through(&db.url, Through::Direct, 1).await?.1),
        _ => None,
    };
    let eq = match &one {
        Some(single) => Queue::new(single.clone(), registry.clone()),
        None => q.clone(),
    };
    let t0 = Instant::now();
    let ids = eq.enqueue_many(batch).await?;
    let enqueue_s = t0.elapsed().as_secs_f64();
    if let Some(single) = one {
        single.close().await;
    }
    if ids.len() != p.jobs {
        bail!("enqueued {} of {} jobs", ids.len(), p.jobs);
    }

    // Work.
    let cfg = WorkerSettings {
        concurrency: p.concurrency,
        prefetch: p.prefetch,
        completer_linger: p.completer_linger,
        ..WorkerSettings::default()
    };
    let shutdown = CancellationToken::new();
    let mut counters = Vec::new();
    let mut handles = Vec::new();
    // Where the work phase's time went inside the workers: the claim rounds' and the outcome
    // writes' wall time, from the process's histograms (summed over the workers).
    let m = crate::metrics::metrics();
    let busy = || {
        (
            super::Observed::of(&m.claim_round_seconds),
            super::Observed::of(&m.outcome_write_seconds),
        )
    };
    let busy_before = busy();
    let t1 = Instant::now();
    for _ in 0..p.workers {
        let worker = Worker::new(db_handle.clone(), registry.clone(), cfg.clone());
        counters.push(worker.counters());
        handles.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    let completed = || -> u64 {
        counters
            .iter()
            .map(|c| c.completed.load(Ordering::Relaxed))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while completed() < p.jobs as u64 {
        if Instant::now() > deadline || handles.iter().any(|h| h.is_finished()) {
            bail!(
                "burn-down stalled at {} of {} completions",
                completed(),
                p.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let work_s = t1.elapsed().as_secs_f64();
    let (claims, writes) = {
        let after = busy();
        (after.0.since(busy_before.0), after.1.since(busy_before.1))
    };

    // Pickup latency, queue idle between jobs.
    let mut pickups = Vec::with_capacity(p.latency_jobs);
    for k in 0..p.latency_jobs {
        tokio::time::sleep(p.latency_gap).await;
        let i = p.jobs + k;
        let before = st.done.load(Ordering::Relaxed);
        let began = st.epoch.elapsed().as_nanos() as u64;
        q.enqueue(&BenchNoop { i }, None).await?;
        let wait_until = tokio::time::Instant::now() + Duration::from_secs(10);
        // A permit left by an earlier run only causes one extra check of `done`.
        while st.done.load(Ordering::Relaxed) == before {
            if tokio::time::timeout_at(wait_until, st.ran.notified())
                .await
                .is_err()
            {
                bail!("trickled job {k} was not picked up within 10 s");
            }
        }
        let started = st.started_ns[i].load(Ordering::Relaxed);
        pickups.push(started.saturating_sub(began) as f64 / 1e6);
    }
    shutdown.cancel();
    for h in handles {
        let _ = h.await;
    }

    // Verify against the database, not just our counters.
    let mut conn = pool.acquire().await?;
    let (completed, claimed_twice) =
        queue::job_count_completed_once(&mut *conn, BenchNoop::KIND, p.jobs as i64).await?;
    drop(conn);
    pool.close().await;
    let ran_twice = st.runs[..p.jobs]
        .iter()
        .filter(|r| r.load(Ordering::Relaxed) > 1)
        .count() as u64;
    pickups.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| super::percentile(&pickups, q);
    let round = |x: f64| x.round();
    Ok(BenchReport {
        jobs: p.jobs,
        completed: completed as u64,
        ran_more_than_once: ran_twice.max(claimed_twice as u64),
        enqueue_jobs_per_s: round(p.jobs as f64 / enqueue_s),
        work_jobs_per_s: round(p.jobs as f64 / work_s),
        claim_busy_share: claims.seconds / work_s,
        claim_rounds: claims.count,
        outcome_write_busy_share: writes.seconds / work_s,
        outcome_writes: writes.count,
        pickup_p50_ms: pct(0.50),
        pickup_p99_ms: pct(0.99),
        concurrency: p.concurrency,
        prefetch: p.prefetch,
        history: p.history,
        latency_jobs: p.latency_jobs,
        loadavg_1m,
        global_concurrency: p.global_concurrency,
        throttled_jobs: p.throttled_jobs,
        budget_rate: p.budget_rate,
        workers: p.workers,
        through: p.through,
        enqueue_connections: p.enqueue_connections,
    })
}

/// The benchmark's handle on `url`'s database through `through` (and the PgBouncer it started
/// for it, kept alive by the caller).
async fn open_through(
    url: &str,
    through: Through,
    max_connections: u32,
) -> anyhow::Result<(Option<crate::local_cluster::PgBouncer>, jobs::Db)> {
    use crate::{
        config::TlsSettings,
        database::{Endpoint, Reach},
        local_cluster::{PgBouncer, PoolMode},
    };
    let direct = Endpoint::parse("database.url", "database", url, &TlsSettings::default())?;
    let mode = match through {
        Through::Direct => None,
        Through::Session => Some(PoolMode::Session),
        Through::Transaction | Through::TransactionOnly => Some(PoolMode::Transaction),
    };
    let bouncer = match mode {
        None => None,
        Some(mode) => {
            let opts = &direct.options;
            if opts.get_host() != "127.0.0.1" && opts.get_host() != "localhost" {
                bail!("--through pgbouncer needs a server on this machine (127.0.0.1)");
            }
            // As many server connections as a direct run would open: the pooler's cost, not
            // a smaller pool's.
            Some(PgBouncer::start(
                opts.get_port(),
                mode,
                &[opts.get_username()],
                max_connections,
                &[],
            )?)
        }
    };
    let primary = match &bouncer {
        None => direct.clone(),
        Some(b) => Endpoint::parse(
            "database.url",
            "database",
            &b.url(
                direct.options.get_username(),
                direct.options.get_database().unwrap_or("postgres"),
            ),
            &TlsSettings::default(),
        )?,
    };
    let reach = Reach {
        primary,
        pooler: match through {
            Through::Direct => jobs::Pooler::None,
            Through::Session => jobs::Pooler::Session,
            _ => jobs::Pooler::Transaction,
        },
        direct: (through == Through::Transaction).then_some(direct),
        max_connections,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(30),
        schema: "public".to_owned(),
    };
    Ok((bouncer, reach.open().await?))
}
