//! `fleet bench backlog`: a deep backlog (issue 22). `--jobs` no-op jobs (default 1,000,000)
//! are enqueued first, in batches, then one worker drains them; the drain is cut into tenths
//! by completions and each tenth's rate is reported. The claim (`ORDER BY priority, run_at,
//! id` on the partial index of available jobs) must not slow down as the finished rows pile up
//! behind it: the target is the last tenth within 10 % of the first. Table and index sizes are
//! read before and after. Every job is verified completed exactly once in the database.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerSettings, database::scratch::ScratchDb, queue, registry::Registry, Queue, Worker,
};

#[derive(clap::Args)]
pub struct BacklogArgs {
    /// Jobs in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Jobs per enqueue call (one statement each).
    #[arg(long, default_value_t = 20_000)]
    enqueue_batch: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Claims beyond free slots (default max(4 × --concurrency, 100), as the burn-down).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Run `VACUUM fleet_jobs` every this often during the drain, as autovacuum would with
    /// the per-table settings docs/operations.md recommends ("Vacuum"); a server whose
    /// autovacuum is off (like this machine's) shows the drain without it.
    #[arg(long, value_parser = humantime::parse_duration)]
    vacuum_every: Option<Duration>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Figures of one run (the `--json` contract).
#[derive(Debug, Clone, Serialize)]
struct BacklogReport {
    jobs: usize,
    concurrency: usize,
    prefetch: usize,
    /// `--vacuum-every`, seconds.
    vacuum_every_s: Option<f64>,
    /// VACUUMs run during the drain.
    vacuums: u32,
    enqueue_jobs_per_s: f64,
    /// Rate of each tenth of the drain (by completions), first to last.
    tenths_jobs_per_s: Vec<f64>,
    /// Whole drain.
    work_jobs_per_s: f64,
    /// Last tenth's rate over the first's.
    end_over_start: f64,
    /// `fleet_jobs` with its indexes and TOAST, MB, after the enqueue and after the drain.
    table_mb_before: f64,
    table_mb_after: f64,
    /// Its indexes alone, MB.
    indexes_mb_before: f64,
    indexes_mb_after: f64,
    completed: u64,
    ran_more_than_once: u64,
    loadavg_1m: f64,
}

struct State {
    runs: Vec<AtomicU8>,
    done: AtomicU64,
}

static STATE: OnceLock<State> = OnceLock::new();

/// The backlog's job: counts its runs, nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacklogNoop {
    /// Slot in the run counters.
    pub i: usize,
}

impl Job for BacklogNoop {
    const KIND: &'static str = "fleet.bench_backlog";

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        let st = STATE
            .get()
            .ok_or_else(|| JobError::fatal("bench state not initialised"))?;
        let slot = st
            .runs
            .get(self.i)
            .ok_or_else(|| JobError::fatal("slot out of range"))?;
        slot.fetch_add(1, Ordering::Relaxed);
        st.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `(total, indexes)` size of `fleet_jobs`, MB.
async fn sizes(pool: &sqlx::PgPool) -> anyhow::Result<(f64, f64)> {
    let mut conn = pool.acquire().await?;
    let s = queue::job_table_size(&mut *conn).await?;
    Ok((s.total_bytes as f64 / 1e6, s.index_bytes as f64 / 1e6))
}

/// Runs it once (its counters are static).
pub async fn run(a: BacklogArgs) -> anyhow::Result<()> {
    if a.jobs < 10 || a.concurrency == 0 || a.enqueue_batch == 0 {
        bail!("--jobs must be >= 10, --concurrency and --enqueue-batch >= 1");
    }
    let prefetch = a.prefetch.unwrap_or(super::peer_prefetch(a.concurrency));
    let st = State {
        runs: (0..a.jobs).map(|_| AtomicU8::new(0)).collect(),
        done: AtomicU64::new(0),
    };
    if STATE.set(st).is_err() {
        bail!("the benchmark can run once per process");
    }
    let st = STATE.get().expect("set");
    let loadavg_1m = super::loadavg_1m();
    let db = ScratchDb::new("fleet_bench").await?;
    let pool = crate::database::connect(&db.url, a.concurrency as u32 + 16).await?;
    let mut registry = Registry::default();
    registry.register_with::<BacklogNoop>(KindDefaults {
        max_attempts: 1,
        ..KindDefaults::default()
    });
    let registry = Arc::new(registry);
    let q = Queue::new(pool.clone(), registry.clone());

    eprintln!(
        "enqueueing {} jobs in batches of {}…",
        a.jobs, a.enqueue_batch
    );
    let t0 = Instant::now();
    let mut i = 0;
    while i < a.jobs {
        let end = (i + a.enqueue_batch).min(a.jobs);
        let batch: Vec<NewJob> = (i..end)
            .map(|i| NewJob::of(&BacklogNoop { i }).expect("serializable"))
            .collect();
        let n = q.enqueue_many(batch).await?.len();
        if n != end - i {
            bail!("enqueued {n} of {} jobs", end - i);
        }
        i = end;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    {
        // The drain starts on fresh statistics, as after an autovacuum's analyze.
        let mut conn = pool.acquire().await?;
        sqlx::query("ANALYZE fleet_jobs")
            .execute(&mut *conn)
            .await?;
    }
    let (table_mb_before, indexes_mb_before) = sizes(&pool).await?;
    eprintln!(
        "  enqueued in {enqueue_s:.1} s; fleet_jobs {table_mb_before:.0} MB ({indexes_mb_before:.0} MB of indexes); draining…"
    );

    let cfg = WorkerSettings {
        concurrency: a.concurrency,
        prefetch,
        ..WorkerSettings::default()
    };
    let worker = Worker::new(pool.clone(), registry.clone(), cfg);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let t1 = Instant::now();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let vacuum = super::spawn_vacuum(pool.clone(), a.vacuum_every, shutdown.clone());
    // The moment each tenth of the jobs had its outcome written.
    let tenth = a.jobs as u64 / 10;
    let mut marks = vec![0.0f64];
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let c = counters.completed.load(Ordering::Relaxed);
        while marks.len() <= 10 && c >= tenth * marks.len() as u64 {
            marks.push(t1.elapsed().as_secs_f64());
        }
        if marks.len() > 10 && c >= a.jobs as u64 {
            break;
        }
        if Instant::now() > deadline || handle.is_finished() {
            bail!("the drain stalled at {c} of {} completions", a.jobs);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let work_s = t1.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = handle.await;
    let vacuums = vacuum.finish().await;
    let (table_mb_after, indexes_mb_after) = sizes(&pool).await?;

    let mut conn = pool.acquire().await?;
    let (completed, claimed_twice) =
        queue::job_count_completed_once(&mut *conn, BacklogNoop::KIND, a.jobs as i64).await?;
    drop(conn);
    pool.close().await;
    let ran_twice = st
        .runs
        .iter()
        .filter(|r| r.load(Ordering::Relaxed) > 1)
        .count() as u64;
    let tenths: Vec<f64> = marks
        .windows(2)
        .map(|w| (tenth as f64 / (w[1] - w[0])).round())
        .collect();
    let r = BacklogReport {
        jobs: a.jobs,
        concurrency: a.concurrency,
        prefetch,
        vacuum_every_s: a.vacuum_every.map(|d| d.as_secs_f64()),
        vacuums: vacuums as u32,
        enqueue_jobs_per_s: (a.jobs as f64 / enqueue_s).round(),
        end_over_start: (tenths[9] / tenths[0] * 1000.0).round() / 1000.0,
        tenths_jobs_per_s: tenths,
        work_jobs_per_s: (a.jobs as f64 / work_s).round(),
        table_mb_before: table_mb_before.round(),
        table_mb_after: table_mb_after.round(),
        indexes_mb_before: indexes_mb_before.round(),
        indexes_mb_after: indexes_mb_after.round(),
        completed: completed as u64,
        ran_more_than_once: ran_twice.max(claimed_twice as u64),
        loadavg_1m,
    };
    eprintln!(
        "backlog: {} jobs, concurrency {}, prefetch {}, VACUUM every {:?} s ({} run)\n  enqueue {:>9.0} jobs/s\n  work    {:>9.0} jobs/s\n  by tenth of the drain: {}\n  last tenth / first: {:.3}\n  fleet_jobs {:.0} MB → {:.0} MB (indexes {:.0} → {:.0} MB)\n  completed {} (ran more than once: {})\n  load average (1m) at start: {:.2}",
        r.jobs, r.concurrency, r.prefetch, r.vacuum_every_s, r.vacuums, r.enqueue_jobs_per_s, r.work_jobs_per_s,
        r.tenths_jobs_per_s.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" "),
        r.end_over_start, r.table_mb_before, r.table_mb_after, r.indexes_mb_before,
        r.indexes_mb_after, r.completed, r.ran_more_than_once, r.loadavg_1m
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if r.completed != a.jobs as u64 || r.ran_more_than_once > 0 {
        bail!(
            "benchmark verification failed: {} of {} completed, {} ran more than once",
            r.completed,
            a.jobs,
            r.ran_more_than_once
        );
    }
    Ok(())
}
