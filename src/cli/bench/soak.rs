//! `fleet bench soak`: the queue at a steady rate for a while, with retention running beside
//! it, printing the work rate, pickup latency, the purge's batch times and the table's and
//! indexes' sizes at every interval.
//!
//! 1. a fresh database, optionally pre-filled with `history` jobs that completed a day ago
//!    (more than `retention`), so the first cleaner pass purges all of them *while* the load
//!    runs: that is "retention of a day's worth of history beside the work";
//! 2. a producer enqueues `rate` jobs per second (one bulk call every 100 ms), each with its
//!    own idempotency key held for `key_window` after completion, as domain jobs are;
//! 3. one worker at `concurrency` runs them; each handler records its pickup latency
//!    (handler start − the producer's enqueue call);
//! 4. every `clean_every`, the cleaner's statements run (keys whose window elapsed are freed,
//!    completed jobs older than `retention` purged batch by batch), each statement timed: a
//!    batch's duration is how long it holds its row locks;
//! 5. every second, the backends of this database waiting on a lock are counted;
//! 6. every `every`: one line (and one JSON object in the `--json` report) with all of that
//!    plus `fleet_jobs`' heap and index sizes, dead rows and autovacuum runs.
//!
//! Verified at the end: every job enqueued before the producer stopped completed exactly once.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
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
pub struct SoakArgs {
    /// Jobs per second the producer enqueues.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long the load runs (e.g. `12m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between report lines.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Jobs that completed a day ago, inserted before the run (purged by the first cleaner pass).
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Completed jobs are purged this long after they finished (keep it well under --duration,
    /// so the soak reaches its steady state).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Time between cleaner passes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    clean_every: Duration,
    /// Rows per purge statement (the cleaner's default is 10,000).
    #[arg(long, default_value_t = 10_000)]
    purge_batch: i64,
    /// How long each job's idempotency key stays held after it completed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    key_window: Duration,
    /// Do not free elapsed key windows in the cleaner passes (the behaviour before the cleaner
    /// did it: finished keyed jobs stay in the unique key index until purged).
    #[arg(long)]
    keep_elapsed_keys: bool,
    /// A storage parameter of `fleet_jobs` for this run, `name=value` (`value` = `default`
    /// resets it), e.g. `fillfactor=100`; repeatable.
    #[arg(long = "table-setting", value_parser = queue::parse_table_setting)]
    table_settings: Vec<(String, Option<String>)>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// One report interval. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct SoakSample {
    /// Seconds since the load started (end of the interval).
    t_s: f64,
    /// Completions per second over the interval.
    work_jobs_per_s: f64,
    /// Lowest one-second completion count in the interval (a dip shows here).
    min_jobs_in_a_second: u64,
    /// Ready jobs at the end of the interval.
    backlog: i64,
    /// Pickup latency of the interval's jobs.
    pickup_p50_ms: f64,
    /// 99th percentile.
    pickup_p99_ms: f64,
    /// Worst.
    pickup_max_ms: f64,
    /// Jobs the cleaner deleted in the interval.
    purged: u64,
    /// Purge statements in the interval.
    purge_batches: u64,
    /// The longest purge statement (its row locks are held this long).
    purge_batch_max_ms: f64,
    /// Keys whose window had elapsed, freed in the interval.
    keys_released: u64,
    /// Most backends of this database seen waiting on a lock at one time (sampled each second).
    lock_waiters_max: i64,
    /// `fleet_jobs` storage at the end of the interval.
    sizes: queue::JobTableSizes,
    /// 1-minute load average at the end of the interval.
    loadavg_1m: f64,
}

/// The whole soak. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct SoakReport {
    rate: u64,
    duration_s: f64,
    concurrency: usize,
    history: u64,
    retention_s: f64,
    key_window_s: f64,
    keys_released_by_cleaner: bool,
    table_settings: Vec<(String, Option<String>)>,
    enqueued: u64,
    completed: u64,
    ran_more_than_once: u64,
    samples: Vec<SoakSample>,
}

struct SoakState {
    epoch: Instant,
    runs: Mutex<Vec<AtomicU32>>,
    /// Pickup latencies (ms) since the last sample.
    pickups: Mutex<Vec<f64>>,
    done: AtomicU64,
}

static STATE: OnceLock<SoakState> = OnceLock::new();

/// The soak's job: counts its run and records its pickup latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakNoop {
    /// Sequence number.
    pub i: u64,
    /// Nanoseconds since the soak's epoch at which the producer's enqueue call began.
    pub t: u64,
}

impl Job for SoakNoop {
    const KIND: &'static str = "fleet.bench_soak";

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        let st = STATE
            .get()
            .ok_or_else(|| JobError::fatal("soak state not initialised"))?;
        let now = st.epoch.elapsed().as_nanos() as u64;
        {
            let runs = st.runs.lock().expect("runs");
            if let Some(r) = runs.get(self.i as usize) {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
        st.pickups
            .lock()
            .expect("pickups")
            .push(now.saturating_sub(self.t) as f64 / 1e6);
        st.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What the cleaner task did since the last sample.
#[derive(Default)]
struct PurgeTally {
    purged: u64,
    batches: u64,
    batch_max_ms: f64,
    keys_released: u64,
}

pub async fn run(a: SoakArgs) -> anyhow::Result<()> {
    if a.rate == 0 || a.concurrency == 0 || a.purge_batch < 1 {
        bail!("--rate, --concurrency and --purge-batch must be >= 1");
    }
    if a.every.is_zero() || a.clean_every.is_zero() || a.duration < a.every {
        bail!("--every and --clean-every must be > 0 and --duration at least --every");
    }
    STATE
        .set(SoakState {
            epoch: Instant::now(),
            runs: Mutex::new(Vec::new()),
            pickups: Mutex::new(Vec::new()),
            done: AtomicU64::new(0),
        })
        .map_err(|_| anyhow::anyhow!("the soak can run once per process"))?;
    let st = STATE.get().expect("set");

    let db = ScratchDb::new("fleet_soak").await?;
    let pool = crate::database::connect(&db.url, (a.concurrency as u32 + 12).max(20)).await?;
    {
        let mut conn = pool.acquire().await?;
        queue::job_table_set_storage(&mut conn, &a.table_settings)
            .await
            .map_err(|e| anyhow::anyhow!("--table-setting: {e}"))?;
        if a.history > 0 {
            eprintln!("inserting {} finished jobs of history…", a.history);
            queue::job_insert_finished_history(&mut conn, "fleet.bench_history", a.history as i64)
                .await
                .context("inserting history")?;
        }
    }

    let mut registry = Registry::default();
    registry.register_with::<SoakNoop>(KindDefaults {
        max_attempts: 1,
        idempotency_window: a.key_window,
        ..KindDefaults::default()
    });
    let registry = Arc::new(registry);
    let q = Queue::new(pool.clone(), registry.clone());
    let cfg = WorkerSettings {
        concurrency: a.concurrency,
        // The bench's own cleaner task (below) purges, timed; the worker's would race it.
        clean_interval: Duration::from_secs(365 * 24 * 3600),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(pool.clone(), registry.clone(), cfg);
    let counters = worker.counters();
    let stop_worker = CancellationToken::new();
    let worker_handle = tokio::spawn(worker.run(stop_worker.clone()));

    let stop_load = CancellationToken::new();
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = {
        let (q, stop, enqueued) = (q.clone(), stop_load.clone(), enqueued.clone());
        let per_tick = a.rate.div_ceil(10);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<_, anyhow::Error>(()),
                }
                let t = st.epoch.elapsed().as_nanos() as u64;
                {
                    let mut runs = st.runs.lock().expect("runs");
                    runs.extend((0..per_tick).map(|_| AtomicU32::new(0)));
                }
                let batch: Vec<NewJob> = (i..i + per_tick)
                    .map(|k| {
                        NewJob::of(&SoakNoop { i: k, t })
                            .expect("serializable")
                            .key(format!("soak:{k}"))
                    })
                    .collect();
                q.enqueue_many(batch).await?;
                i += per_tick;
                enqueued.store(i, Ordering::Relaxed);
            }
        })
    };

    let tally = Arc::new(Mutex::new(PurgeTally::default()));
    let cleaner = {
        let (pool, stop, tally) = (pool.clone(), stop_load.clone(), tally.clone());
        let (retention, batch, every) = (a.retention, a.purge_batch, a.clean_every);
        let release_keys = !a.keep_elapsed_keys;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<_, anyhow::Error>(()),
                }
                let mut conn = pool.acquire().await?;
                if release_keys {
                    loop {
                        let n = queue::job_release_elapsed_keys(
                            &jobs::Db::from(pool.clone()),
                            batch,
                            None,
                        )
                        .await?;
                        tally.lock().expect("tally").keys_released += n;
                        if n < batch as u64 {
                            break;
                        }
                    }
                }
                let mut after_id = Some(0);
                while let Some(after) = after_id {
                    if stop.is_cancelled() {
                        break;
                    }
                    let t0 = Instant::now();
                    let b = queue::job_prune_finished(
                        &mut *conn,
                        &[queue::JobState::Completed],
                        retention,
                        batch,
                        after,
                        None,
                    )
                    .await?;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    let mut t = tally.lock().expect("tally");
                    t.purged += b.deleted;
                    t.batches += 1;
                    t.batch_max_ms = t.batch_max_ms.max(ms);
                    after_id = b.next_after_id;
                }
            }
        })
    };

    // Sampler: one-second completion counts and lock waiters; a report line every `every`.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    let (mut last_done, mut interval_start_done) = (0u64, 0u64);
    let mut interval_start = Instant::now();
    let mut min_in_second = u64::MAX;
    let mut lock_waiters_max = 0i64;
    let mut conn = pool.acquire().await?;
    while started.elapsed() < a.duration {
        second.tick().await;
        let done = counters.completed.load(Ordering::Relaxed);
        min_in_second = min_in_second.min(done - last_done);
        last_done = done;
        let waiters: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *conn)
        .await?;
        lock_waiters_max = lock_waiters_max.max(waiters);
        if interval_start.elapsed() + Duration::from_millis(500) < a.every {
            continue;
        }
        let mut pickups = std::mem::take(&mut *st.pickups.lock().expect("pickups"));
        pickups.sort_by(|x, y| x.total_cmp(y));
        let tallied = std::mem::take(&mut *tally.lock().expect("tally"));
        let backlog = super::ready_jobs(&mut conn).await?;
        let sizes = queue::job_table_sizes(&pool).await?;
        let s = SoakSample {
            t_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            work_jobs_per_s: ((done - interval_start_done) as f64
                / interval_start.elapsed().as_secs_f64())
            .round(),
            min_jobs_in_a_second: min_in_second,
            backlog,
            pickup_p50_ms: super::percentile(&pickups, 0.50),
            pickup_p99_ms: super::percentile(&pickups, 0.99),
            pickup_max_ms: super::percentile(&pickups, 1.0),
            purged: tallied.purged,
            purge_batches: tallied.batches,
            purge_batch_max_ms: (tallied.batch_max_ms * 10.0).round() / 10.0,
            keys_released: tallied.keys_released,
            lock_waiters_max,
            sizes,
            loadavg_1m: super::loadavg_1m(),
        };
        eprintln!("{}", sample_line(&s));
        samples.push(s);
        interval_start = Instant::now();
        interval_start_done = done;
        min_in_second = u64::MAX;
        lock_waiters_max = 0;
    }
    drop(conn);

    stop_load.cancel();
    producer.await??;
    cleaner.await??;
    let enqueued = enqueued.load(Ordering::Relaxed);
    super::wait_until_done(&st.done, enqueued, Duration::from_secs(120), "soak").await?;
    stop_worker.cancel();
    let _ = worker_handle.await;
    let ran_twice = st
        .runs
        .lock()
        .expect("runs")
        .iter()
        .filter(|r| r.load(Ordering::Relaxed) > 1)
        .count() as u64;
    let completed = counters.completed.load(Ordering::Relaxed);
    pool.close().await;
    let r = SoakReport {
        rate: a.rate,
        duration_s: a.duration.as_secs_f64(),
        concurrency: a.concurrency,
        history: a.history,
        retention_s: a.retention.as_secs_f64(),
        key_window_s: a.key_window.as_secs_f64(),
        keys_released_by_cleaner: !a.keep_elapsed_keys,
        table_settings: a.table_settings.clone(),
        enqueued,
        completed,
        ran_more_than_once: ran_twice,
        samples,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if r.completed != r.enqueued || r.ran_more_than_once > 0 {
        bail!(
            "soak verification failed: {} of {} completed, {} ran more than once",
            r.completed,
            r.enqueued,
            r.ran_more_than_once
        );
    }
    Ok(())
}

fn sample_line(s: &SoakSample) -> String {
    let mb = |b: i64| b as f64 / (1024.0 * 1024.0);
    let idx: Vec<String> = s
        .sizes
        .indexes
        .iter()
        .map(|(n, b)| {
            let short = n.trim_start_matches("fleet_jobs_").trim_end_matches("_idx");
            format!("{short} {:.1}", mb(*b))
        })
        .collect();
    format!(
        "t={:>6.0}s work {:>6.0}/s (min {}/s) backlog {} pickup p50 {:.1} p99 {:.1} max {:.1} ms | purged {} in {} batches (max {:.1} ms), keys freed {}, lock waiters {} | heap {:.1} MB, idx MB: {} | live {} dead {} autovac {} | load {:.2}",
        s.t_s, s.work_jobs_per_s, s.min_jobs_in_a_second, s.backlog, s.pickup_p50_ms,
        s.pickup_p99_ms, s.pickup_max_ms, s.purged, s.purge_batches, s.purge_batch_max_ms,
        s.keys_released, s.lock_waiters_max, mb(s.sizes.heap_bytes), idx.join(", "),
        s.sizes.live_rows, s.sizes.dead_rows, s.sizes.autovacuum_count, s.loadavg_1m
    )
}
