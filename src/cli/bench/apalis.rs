//! `fleet bench apalis`: the burn-down of N no-op jobs by three workers on one database,
//! interleaved over rounds (each round a fresh database, the order rotating):
//! - **native**: the engine's own [`Worker`] running a registered kind;
//! - **fleet-apalis**: an apalis worker (apalis-core's `WorkerBuilder`) on
//!   [`crate::apalis::FleetBackend`], the engine claiming and finishing for it;
//! - **apalis-postgres**: an apalis worker on apalis-postgres 1.0's own storage (its
//!   `apalis.jobs` table, same database), under a tower concurrency limit of C.
//!
//! Enqueue: one bulk call each (the engine's `enqueue_many`; apalis's `push_bulk` through the
//! fleet backend's sink; apalis-postgres's `push_bulk`). Work: from the worker's start to the
//! moment the database shows every job finished (completed / `Done`). Each job counts its runs:
//! the engine's two must run every job exactly once (the run fails otherwise); the peer's
//! duplicates are reported.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use apalis_core::{error::BoxDynError, task::data::Data, worker::builder::WorkerBuilder};
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    apalis::FleetBackend, config::WorkerSettings, database::scratch::ScratchDb, registry::Registry,
    Queue, Worker,
};

#[derive(clap::Args)]
pub struct ApalisBenchArgs {
    /// Jobs per burn-down.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs run at once by each worker.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Jobs held beyond those running: the engine's prefetch (both engine workers), and
    /// apalis-postgres's fetch batch (default max(4 × --concurrency, 100), as the
    /// burn-down).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// The three workers measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Contender {
    Native,
    FleetApalis,
    ApalisPostgres,
}

const CONTENDERS: [Contender; 3] = [
    Contender::Native,
    Contender::FleetApalis,
    Contender::ApalisPostgres,
];

/// One burn-down's figures.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    contender: Contender,
    enqueue_jobs_per_s: f64,
    work_jobs_per_s: f64,
    /// Jobs the database shows finished.
    finished: u64,
    /// Jobs whose handler ran more than once.
    ran_more_than_once: u64,
}

/// Runs per job, shared with the handlers.
struct Counter {
    runs: Vec<AtomicU32>,
    total: AtomicU64,
}

impl Counter {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            runs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            total: AtomicU64::new(0),
        })
    }
    fn ran(&self, i: u32) {
        if let Some(r) = self.runs.get(i as usize) {
            r.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
    }
    fn more_than_once(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) > 1)
            .count() as u64
    }
}

/// The native worker's counter (a kind's handler reaches no per-run state but a static).
static NATIVE: Mutex<Option<Arc<Counter>>> = Mutex::new(None);

/// The native contender's no-op kind.
#[derive(Debug, Serialize, Deserialize)]
struct NativeNoop {
    i: u32,
}

impl Job for NativeNoop {
    const KIND: &'static str = "bench.apalis_native";
    fn defaults() -> KindDefaults {
        KindDefaults::default()
    }
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        let c = NATIVE.lock().unwrap().clone();
        if let Some(c) = c {
            c.ran(self.i);
        }
        Ok(())
    }
}

/// The apalis contenders' handler.
async fn noop(i: u32, counter: Data<Arc<Counter>>) -> Result<(), BoxDynError> {
    counter.ran(i);
    Ok(())
}

const FLEET_APALIS_KIND: &str = "bench.apalis_fleet";
const APALIS_PG_QUEUE: &str = "bench.apalis_postgres";

/// `fleet bench apalis`.
pub async fn run(a: ApalisBenchArgs) -> anyhow::Result<()> {
    let prefetch = a.prefetch.unwrap_or(super::peer_prefetch(a.concurrency));
    let mut runs = Vec::new();
    eprintln!(
        "apalis burn-down: {} no-op jobs, concurrency {}, held beyond it {}, {} interleaved rounds, load average (1m) {:.2}",
        a.jobs, a.concurrency, prefetch, a.rounds, super::loadavg_1m()
    );
    for round in 0..a.rounds {
        let db = ScratchDb::new("fleet_bench_apalis").await?;
        for k in 0..CONTENDERS.len() {
            let contender = CONTENDERS[(round + k) % CONTENDERS.len()];
            let r = match contender {
                Contender::Native => native(&db.pool, a.jobs, a.concurrency, prefetch).await?,
                Contender::FleetApalis => {
                    fleet_apalis(&db.pool, a.jobs, a.concurrency, prefetch).await?
                }
                Contender::ApalisPostgres => {
                    apalis_postgres(&db.pool, a.jobs, a.concurrency, prefetch).await?
                }
            };
            let r = Run { round, ..r };
            eprintln!(
                "  round {round} {:<16} enqueue {:>8.0} jobs/s  work {:>8.0} jobs/s  finished {}  ran more than once {}",
                format!("{:?}", r.contender),
                r.enqueue_jobs_per_s,
                r.work_jobs_per_s,
                r.finished,
                r.ran_more_than_once
            );
            runs.push(r);
        }
    }
    for round in 0..a.rounds {
        let rate = |c: Contender| {
            runs.iter()
                .find(|r| r.round == round && r.contender == c)
                .map_or(f64::NAN, |r| r.work_jobs_per_s)
        };
        eprintln!(
            "  round {round}: fleet-apalis / native {:.2}×, fleet-apalis / apalis-postgres {:.2}×",
            rate(Contender::FleetApalis) / rate(Contender::Native),
            rate(Contender::FleetApalis) / rate(Contender::ApalisPostgres)
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "jobs": a.jobs, "concurrency": a.concurrency, "prefetch": prefetch,
                "rounds": runs,
            })
        );
    }
    for r in &runs {
        if r.contender != Contender::ApalisPostgres
            && (r.finished != a.jobs as u64 || r.ran_more_than_once > 0)
        {
            bail!(
                "benchmark verification failed: {:?} in round {} finished {} of {}, {} ran more than once",
                r.contender,
                r.round,
                r.finished,
                a.jobs,
                r.ran_more_than_once
            );
        }
    }
    Ok(())
}

fn settings(concurrency: usize, prefetch: usize) -> WorkerSettings {
    WorkerSettings {
        concurrency,
        prefetch,
        ..WorkerSettings::default()
    }
}

/// Waits until `counter` saw `n` runs, then until `finished` (a count from the database)
/// reaches `n`; gives up after a minute without progress.
async fn wait_finished(
    pool: &PgPool,
    counter: &Counter,
    n: u64,
    finished: &'static str,
    key: &str,
) -> anyhow::Result<u64> {
    let mut last = (0, Instant::now());
    loop {
        let ran = counter.total.load(Ordering::Relaxed);
        if ran >= n {
            let done: i64 = sqlx::query_scalar(finished)
                .bind(key)
                .fetch_one(pool)
                .await?;
            if done as u64 >= n {
                return Ok(done as u64);
            }
        }
        let progress = ran + 1;
        if progress != last.0 {
            last = (progress, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("no progress for a minute: {ran} of {n} runs");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

const FLEET_FINISHED: &str =
    "SELECT count(*) FROM fleet_jobs WHERE kind = $1 AND state = 'completed'";

async fn native(pool: &PgPool, n: usize, c: usize, prefetch: usize) -> anyhow::Result<Run> {
    let mut reg = Registry::default();
    reg.register::<NativeNoop>();
    let reg = Arc::new(reg);
    let counter = Counter::new(n);
    *NATIVE.lock().unwrap() = Some(counter.clone());
    let jobs: Vec<NewJob> = (0..n as u32)
        .map(|i| NewJob::of(&NativeNoop { i }).expect("serializable"))
        .collect();
    let t = Instant::now();
    Queue::new(pool.clone(), reg.clone())
        .enqueue_many(jobs)
        .await
        .context("native enqueue")?;
    let enqueue = t.elapsed();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let w = tokio::spawn(Worker::new(pool.clone(), reg, settings(c, prefetch)).run(stop.clone()));
    let finished =
        wait_finished(pool, &counter, n as u64, FLEET_FINISHED, NativeNoop::KIND).await?;
    let work = t.elapsed();
    stop.cancel();
    w.await?;
    *NATIVE.lock().unwrap() = None;
    Ok(run_of(
        Contender::Native,
        n,
        enqueue,
        work,
        finished,
        &counter,
    ))
}

async fn fleet_apalis(pool: &PgPool, n: usize, c: usize, prefetch: usize) -> anyhow::Result<Run> {
    use apalis_core::backend::TaskSink;
    let backend = FleetBackend::<u32>::new(pool.clone(), FLEET_APALIS_KIND)
        .with_worker_settings(settings(c, prefetch));
    let counter = Counter::new(n);
    let t = Instant::now();
    backend
        .clone()
        .push_bulk((0..n as u32).collect())
        .await
        .context("fleet-apalis enqueue")?;
    let enqueue = t.elapsed();
    let worker = WorkerBuilder::new("bench-fleet-apalis")
        .backend(backend)
        .data(counter.clone())
        .build(noop);
    let stop = CancellationToken::new();
    let t = Instant::now();
    let w = tokio::spawn(worker.run_until(cancelled(stop.clone())));
    let finished =
        wait_finished(pool, &counter, n as u64, FLEET_FINISHED, FLEET_APALIS_KIND).await?;
    let work = t.elapsed();
    stop.cancel();
    w.await?.context("fleet-apalis worker")?;
    Ok(run_of(
        Contender::FleetApalis,
        n,
        enqueue,
        work,
        finished,
        &counter,
    ))
}

async fn apalis_postgres(
    pool: &PgPool,
    n: usize,
    c: usize,
    prefetch: usize,
) -> anyhow::Result<Run> {
    use apalis_core::backend::TaskSink;
    use apalis_postgres::{Config, PostgresStorage};
    PostgresStorage::setup(pool)
        .await
        .context("apalis-postgres migrations")?;
    let config = Config::default()
        .queue(APALIS_PG_QUEUE)
        .batch_size(prefetch.max(1));
    let storage = PostgresStorage::<u32>::new(pool).with_config(config);
    let counter = Counter::new(n);
    let t = Instant::now();
    storage
        .clone()
        .push_bulk((0..n as u32).collect())
        .await
        .context("apalis-postgres enqueue")?;
    let enqueue = t.elapsed();
    let worker = WorkerBuilder::new("bench-apalis-postgres")
        .backend(storage)
        .layer(tower::limit::ConcurrencyLimitLayer::new(c))
        .data(counter.clone())
        .build(noop);
    let stop = CancellationToken::new();
    let t = Instant::now();
    let w = tokio::spawn(worker.run_until(cancelled(stop.clone())));
    let finished = wait_finished(
        pool,
        &counter,
        n as u64,
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
        APALIS_PG_QUEUE,
    )
    .await?;
    let work = t.elapsed();
    stop.cancel();
    w.await?.context("apalis-postgres worker")?;
    Ok(run_of(
        Contender::ApalisPostgres,
        n,
        enqueue,
        work,
        finished,
        &counter,
    ))
}

/// What ends an apalis worker's `run_until`: `stop` cancelled.
async fn cancelled(stop: CancellationToken) -> Result<(), std::io::Error> {
    stop.cancelled().await;
    Ok(())
}

fn run_of(
    contender: Contender,
    n: usize,
    enqueue: Duration,
    work: Duration,
    finished: u64,
    counter: &Counter,
) -> Run {
    Run {
        round: 0,
        contender,
        enqueue_jobs_per_s: n as f64 / enqueue.as_secs_f64(),
        work_jobs_per_s: n as f64 / work.as_secs_f64(),
        finished,
        ran_more_than_once: counter.more_than_once(),
    }
}
