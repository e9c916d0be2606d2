//! `fleet bench processes`: workers are stateless, so the fleet scales out by adding worker
//! processes; this measures how far that goes on one machine. For each process count (default
//! 1, 2, 4), interleaved over `--rounds`:
//!
//! 1. a fresh database holding `--jobs` no-op jobs of a paused kind;
//! 2. that many `fleet bench processes-child` processes (each one worker at `--concurrency`,
//!    prefetch max(4 × C, 100), as the burn-down), started and connected while nothing is
//!    claimable;
//! 3. the kind is resumed (which wakes every worker) and the clock runs until the children's
//!    completion counts add up to `--jobs`; the database must agree (every job completed,
//!    claimed once);
//! 4. CPU time over the run, from `/proc`: of the Postgres backends serving this database
//!    (the shared walwriter and checkpointer are not in it) and of the worker processes; and
//!    the table's size per job once burnt down.
//!
//! The children report on stdout (`ready`, then `completed N`); closing their stdin drains and
//! stops them, so a parent that dies leaves no worker behind.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
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
pub struct ProcessesArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Worker processes per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    processes: Vec<usize>,
    /// Handlers per worker process.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds; each runs every process count once, in order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Print one JSON object per run on stdout.
    #[arg(long)]
    json: bool,
}

/// `fleet bench processes-child` (internal): one worker process of the benchmark.
#[derive(clap::Args)]
pub struct ChildArgs {
    /// The benchmark's database.
    #[arg(long)]
    url: String,
    /// Handlers.
    #[arg(long)]
    concurrency: usize,
}

/// The benchmark's job: nothing but its claim and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcNoop {
    /// Its number (the database check counts jobs below `--jobs`).
    pub i: usize,
}

impl Job for ProcNoop {
    const KIND: &'static str = "fleet.bench_proc_noop";

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::default();
    r.register_with::<ProcNoop>(KindDefaults {
        max_attempts: 1,
        ..KindDefaults::default()
    });
    Arc::new(r)
}

/// Figures of one run. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct RunReport {
    round: usize,
    processes: usize,
    concurrency_per_process: usize,
    jobs: usize,
    work_jobs_per_s: f64,
    /// CPU seconds of this database's Postgres backends during the run.
    postgres_cpu_s: f64,
    /// CPU seconds of the worker processes during the run.
    workers_cpu_s: f64,
    /// Jobs per CPU second of Postgres and workers together: jobs/s per busy core.
    jobs_per_cpu_s: f64,
    /// WAL written server-wide during the run, per job (other databases' writes included).
    wal_bytes_per_job: f64,
    /// The jobs table once burnt down.
    table: queue::JobTableSize,
    /// 1-minute load average when the run started.
    loadavg_1m: f64,
}

pub async fn run(a: ProcessesArgs) -> anyhow::Result<()> {
    if a.jobs == 0 || a.concurrency == 0 || a.rounds == 0 || a.processes.contains(&0) {
        bail!("--jobs, --concurrency, --rounds and every --processes count must be >= 1");
    }
    let mut all = Vec::new();
    for round in 1..=a.rounds {
        for &n in &a.processes {
            let r = one_run(round, n, &a).await?;
            eprintln!(
                "round {round}, {n} process(es) × C {}: {:>7.0} jobs/s · CPU: postgres {:.2} s, \
                 workers {:.2} s → {:.0} jobs per CPU-second · WAL {:.0} B/job · table {:.0} \
                 B/job ({} rows) · load {:.2}",
                a.concurrency,
                r.work_jobs_per_s,
                r.postgres_cpu_s,
                r.workers_cpu_s,
                r.jobs_per_cpu_s,
                r.wal_bytes_per_job,
                r.table.total_bytes as f64 / r.table.rows.max(1) as f64,
                r.table.rows,
                r.loadavg_1m
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            all.push(r);
        }
    }
    eprintln!("\nbest of {} round(s):", a.rounds);
    for &n in &a.processes {
        let best = all
            .iter()
            .filter(|r| r.processes == n)
            .map(|r| r.work_jobs_per_s)
            .fold(0.0, f64::max);
        eprintln!("  {n} process(es): {best:>7.0} jobs/s");
    }
    Ok(())
}

async fn one_run(round: usize, n: usize, a: &ProcessesArgs) -> anyhow::Result<RunReport> {
    let loadavg_1m = super::loadavg_1m();
    let db = ScratchDb::new("fleet_bench_proc").await?;
    let registry = registry();
    let q = Queue::new(db.pool.clone(), registry.clone());
    let mut conn = db.pool.acquire().await?;
    queue::kind_pause(
        &mut *conn,
        ProcNoop::KIND,
        "bench",
        "held until the workers are up",
    )
    .await?;
    let batch: Vec<NewJob> = (0..a.jobs)
        .map(|i| NewJob::of(&ProcNoop { i }).expect("serializable"))
        .collect();
    q.enqueue_many(batch).await?;

    let exe = std::env::current_exe().context("the fleet binary")?;
    let (tx, rx) = mpsc::channel::<(usize, Line)>();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for k in 0..n {
        let mut c = Command::new(&exe)
            .args(["bench", "processes-child", "--url", &db.url])
            .args(["--concurrency", &a.concurrency.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let out = c.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let parsed = match line.strip_prefix("completed ") {
                    Some(n) => Line::Completed(n.trim().parse().unwrap_or(0)),
                    None if line == "ready" => Line::Ready,
                    None => continue,
                };
                if tx.send((k, parsed)).is_err() {
                    return;
                }
            }
        });
        children.push(c);
    }
    drop(tx);
    let mut ready = 0;
    while ready < n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((_, Line::Ready)) => ready += 1,
            Ok(_) => {}
            Err(_) => bail!("the worker processes did not start within 30 s"),
        }
    }
    // Let every worker finish its first (empty) fetch and register.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let cpu_before = (super::backend_cpu_s(db.name()), super::procs_cpu_s(&pids));
    let wal_before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *conn)
        .await?;
    let t0 = Instant::now();
    queue::kind_resume(&mut *conn, ProcNoop::KIND).await?;
    let mut done = vec![0u64; n];
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.iter().sum::<u64>() < a.jobs as u64 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((k, Line::Completed(c))) => done[k] = c,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => bail!(
                "the run stalled at {} of {} completions",
                done.iter().sum::<u64>(),
                a.jobs
            ),
        }
    }
    let work_s = t0.elapsed().as_secs_f64();
    let cpu_after = (super::backend_cpu_s(db.name()), super::procs_cpu_s(&pids));
    let wal_bytes: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&wal_before)
            .fetch_one(&mut *conn)
            .await?;
    for c in &mut children {
        drop(c.stdin.take());
    }
    for mut c in children {
        let _ = c.wait();
    }
    let (completed, claimed_twice) =
        queue::job_count_completed_once(&mut *conn, ProcNoop::KIND, a.jobs as i64).await?;
    if completed != a.jobs as i64 || claimed_twice != 0 {
        bail!(
            "verification failed: {completed} of {} completed, {claimed_twice} claimed more than once",
            a.jobs
        );
    }
    let table = queue::job_table_size(&mut *conn).await?;
    drop(conn);
    let postgres_cpu_s = cpu_after.0 - cpu_before.0;
    let workers_cpu_s = cpu_after.1 - cpu_before.1;
    Ok(RunReport {
        round,
        processes: n,
        concurrency_per_process: a.concurrency,
        jobs: a.jobs,
        work_jobs_per_s: (a.jobs as f64 / work_s).round(),
        postgres_cpu_s: round2(postgres_cpu_s),
        workers_cpu_s: round2(workers_cpu_s),
        jobs_per_cpu_s: (a.jobs as f64 / (postgres_cpu_s + workers_cpu_s).max(1e-9)).round(),
        wal_bytes_per_job: (wal_bytes / a.jobs as f64).round(),
        table,
        loadavg_1m,
    })
}

enum Line {
    Ready,
    Completed(u64),
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One worker process: works the benchmark's kind until its stdin closes, printing `ready`
/// once connected and `completed N` whenever its count moves (at most every 5 ms).
pub async fn child(a: ChildArgs) -> anyhow::Result<()> {
    let pool = crate::database::connect(&a.url, (a.concurrency as u32 / 2 + 8).max(12)).await?;
    let cfg = WorkerSettings {
        concurrency: a.concurrency,
        prefetch: super::peer_prefetch(a.concurrency),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(pool, registry(), cfg);
    let counters = worker.counters();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let closed = stop.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        closed.cancel();
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let last = AtomicU64::new(0);
    while !stop.is_cancelled() {
        let c = counters.completed.load(Ordering::Relaxed);
        if c != last.swap(c, Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            writeln!(out, "completed {c}")?;
            out.flush()?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = handle.await;
    Ok(())
}
