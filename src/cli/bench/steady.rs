//! `fleet bench steady`: the queue under a realistic load, held for a while (issue 22).
//!
//! The mix, deterministic by sequence number:
//!
//! | kind | queue | share | handler |
//! |---|---|---:|---|
//! | `fleet.bench_steady_quick` | `steady_a` | 65 % | sleeps 1–5 ms |
//! | `fleet.bench_steady_other` | `steady_b` | 20 % | sleeps 1–5 ms |
//! | `fleet.bench_steady_slow` | `steady_b` | 5 % | sleeps 50 ms |
//! | `fleet.bench_steady_limited` | `steady_a` | 10 % | sleeps 1–5 ms, at most [`LIMITED_AT_ONCE`] running fleet-wide |
//!
//! One job in ten, of every kind, fails its first attempt (retryable) and runs again after
//! its backoff. Every job carries an idempotency key held `--key-window` after it completed,
//! as domain jobs do.
//!
//! 1. **Drain**: `--probe-jobs` jobs of the mix (none failing) are enqueued at once and
//!    drained by the worker (jobs / drain time). It leaves out what a held load adds (small
//!    enqueues, retries, key releases, purges, vacuum), so it overstates what the worker holds:
//!    on a 2-core machine the worker fell behind at 70 % of it.
//! 2. **Capacity** (unless `--rate` is given): the producer offers rates from 40 % of the drain
//!    upward in steps of 5 % of it, each for `--search-step`; a step holds when, after its
//!    first quarter, the worker completed at least 97 % of what was offered, and the backlog at
//!    its end is at most half a second of the rate (and 200 jobs) and grew by at most a
//!    twentieth of a second's (and 100 jobs) over the step. The capacity is the highest
//!    rate that held. The search's jobs are jobs of the load: verified like the rest, left out
//!    of the load's figures.
//! 3. **Load**: a producer offers `--rate` jobs/s (default `--load` × the capacity), one bulk
//!    enqueue every `--tick`, for `--duration`. The worker's own cleaner purges completed jobs
//!    `--retention` after they finished (the production default is 7 days: say which in a
//!    figure), every `--clean-every`.
//! 4. Every `--every`: one line (and one JSON object in `--json`) with the offered and worked
//!    rates, pickup latency of first attempts (handler start − the producer's enqueue call),
//!    retries, the backlog, `fleet_jobs`' heap and index sizes and dead rows, and CPU per job
//!    of this process (the producer included) and of this database's Postgres backends; and
//!    two more lines placing where pickups went ([`PickupStages`]): the enqueue call, the wait
//!    for a claim, and the claim to the handler's start, for the interval's slowest 1 % and for
//!    one first attempt in a hundred, each with how many of its jobs are of the limited kind.
//! 5. The summary: the worst interval's pickup percentiles, pickup by kind over the whole run,
//!    the time from a failed first attempt to its retry's start, the growth of the heap and the
//!    indexes after the first minute, and CPU per job.
//!
//! Verified at the end: every job ran exactly once, or exactly twice for those failing once;
//! none died and no outcome was refused. Targets are printed, not enforced: a figure is a
//! figure.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, OnceLock,
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

/// Most `fleet.bench_steady_limited` jobs running at once, fleet-wide.
pub const LIMITED_AT_ONCE: usize = 8;

#[derive(clap::Args)]
pub struct SteadyArgs {
    /// Jobs per second offered; default: `--load` × the capacity searched first.
    #[arg(long)]
    rate: Option<u64>,
    /// The share of the searched capacity offered when `--rate` is not given.
    #[arg(long, default_value_t = 0.7)]
    load: f64,
    /// Jobs of the mix drained first (where the capacity search starts from).
    #[arg(long, default_value_t = 20_000)]
    probe_jobs: u64,
    /// How long each rate of the capacity search is offered (not searched with `--rate`).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    search_step: Duration,
    /// How long the load is held (e.g. `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between report lines.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Time between the producer's enqueue calls.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Claims beyond free slots (default: `--concurrency`). With 1–5 ms handlers a slot
    /// otherwise waits a claim's round trip each time it frees: at prefetch 0 the worker fell
    /// behind at 3,000 jobs/s where prefetch 64 held it (docs/benchmarks.md).
    #[arg(long)]
    prefetch: Option<usize>,
    /// How long the worker's completer waits for more outcomes before it writes a small batch
    /// (`worker.completer_linger`; default: the embedded setting's).
    #[arg(long, value_parser = humantime::parse_duration)]
    completer_linger: Option<Duration>,
    /// Completed jobs are purged this long after they finished.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Time between the worker's cleaner passes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    clean_every: Duration,
    /// How long each job's idempotency key stays held after it completed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    key_window: Duration,
    /// Run `VACUUM fleet_jobs` every this often, as autovacuum would on a server that runs it.
    #[arg(long, value_parser = humantime::parse_duration)]
    vacuum_every: Option<Duration>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// One report interval. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct SteadySample {
    /// Seconds since the load started (end of the interval).
    t_s: f64,
    /// Jobs enqueued per second over the interval.
    offered_jobs_per_s: f64,
    /// Completions per second over the interval.
    work_jobs_per_s: f64,
    /// Lowest one-second completion count in the interval.
    min_jobs_in_a_second: u64,
    /// First attempts failed and scheduled again, in the interval.
    retries: u64,
    /// Ready jobs at the end of the interval.
    backlog: i64,
    /// Pickup latency of the interval's first attempts, ms.
    pickup_p50_ms: f64,
    /// 99th percentile.
    pickup_p99_ms: f64,
    /// Worst.
    pickup_max_ms: f64,
    /// `fleet_jobs` heap, bytes.
    heap_bytes: i64,
    /// All its indexes, bytes.
    index_bytes: i64,
    /// Dead row versions (estimate).
    dead_rows: i64,
    /// Live rows (estimate).
    live_rows: i64,
    /// Autovacuum runs on the table so far.
    autovacuums: i64,
    /// This process's CPU (worker, producer, sampler) per completed job, ms.
    fleet_cpu_ms_per_job: f64,
    /// This database's Postgres backends' CPU per completed job, ms.
    postgres_cpu_ms_per_job: f64,
    /// 1-minute load average at the end of the interval.
    loadavg_1m: f64,
    /// The worker's claim rounds in the interval (`fleet_worker_claim_round_seconds`).
    claim_rounds: u64,
    /// Share of the interval the fetch loop spent in claim rounds.
    claim_busy_share: f64,
    /// Claim rounds that took over 10 ms: a slow pickup that waited for a claim waited for
    /// one of these, or for a round that did not start (a late wake).
    claim_rounds_over_10ms: u64,
    /// Over 50 ms.
    claim_rounds_over_50ms: u64,
    /// Where the interval's slowest 1 % of first attempts spent their pickup.
    slowest: PickupStages,
    /// The same for one first attempt in a hundred, for comparison.
    sampled: PickupStages,
}

/// A pickup cut in three at the producer's enqueue call's return and at the claim statement's
/// start (its `attempted_at`), medians and maxima of a group of first attempts, ms. Jobs
/// failing their first attempt are left out (their `attempted_at` is their retry's).
#[derive(Debug, Clone, Serialize)]
struct PickupStages {
    /// First attempts in the group whose row was still there to read.
    jobs: usize,
    /// Of them, jobs of the limited kind (a tenth of the mix): whether the group's waits are
    /// the limited kind's queue for its fleet-wide slots or everyone's.
    limited_jobs: usize,
    pickup_p50_ms: f64,
    /// The producer's enqueue call: the job is not visible before its commit.
    enqueue_call_p50_ms: f64,
    enqueue_call_max_ms: f64,
    /// The call's return → the start of the claim that took it (waiting for a claim round).
    to_claim_p50_ms: f64,
    to_claim_max_ms: f64,
    /// The claim's start → the handler's start (the claim itself, its commit, the hand-off
    /// to a task and a free slot).
    claim_to_start_p50_ms: f64,
    claim_to_start_max_ms: f64,
}

/// Whole-run figures of one kind.
#[derive(Debug, Clone, Serialize)]
struct KindPickup {
    kind: &'static str,
    first_attempts: usize,
    pickup_p50_ms: f64,
    pickup_p99_ms: f64,
    pickup_max_ms: f64,
}

/// One rate of the capacity search.
#[derive(Debug, Clone, Serialize)]
struct SearchStep {
    rate: u64,
    /// Offered and completed per second after the step's first quarter.
    offered_jobs_per_s: f64,
    work_jobs_per_s: f64,
    /// Ready jobs at the step's end.
    backlog: i64,
    holds: bool,
}

/// The whole run. Field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
struct SteadyReport {
    concurrency: usize,
    prefetch: usize,
    /// The worker's `completer_linger`, in milliseconds.
    completer_linger_ms: f64,
    /// Jobs/s of the mix drained from a backlog (`--probe-jobs`).
    drain_jobs_per_s: f64,
    /// The highest offered rate that held in the search (none with `--rate`).
    capacity_jobs_per_s: Option<f64>,
    /// The search's steps.
    search: Vec<SearchStep>,
    /// Offered rate asked for.
    rate: u64,
    duration_s: f64,
    retention_s: f64,
    key_window_s: f64,
    vacuum_every_s: Option<f64>,
    vacuums: u64,
    /// Jobs enqueued, completed and retried over the search and the load.
    enqueued: u64,
    completed: u64,
    retried: u64,
    /// Worst interval's pickup p50 and p99 (ms), every interval and after the first minute.
    worst_pickup_p50_ms: f64,
    worst_pickup_p99_ms: f64,
    worst_pickup_p50_after_1m_ms: f64,
    worst_pickup_p99_after_1m_ms: f64,
    by_kind: Vec<KindPickup>,
    /// A failed first attempt's end → its retry's start (backoff + promotion), ms.
    retry_gap_p50_ms: f64,
    retry_gap_p99_ms: f64,
    /// Heap and index bytes at the first sample at or after 60 s, and the most after it.
    heap_bytes_at_1m: i64,
    heap_bytes_max_after_1m: i64,
    index_bytes_at_1m: i64,
    index_bytes_max_after_1m: i64,
    /// CPU per completed job over the load, ms.
    fleet_cpu_ms_per_job: f64,
    postgres_cpu_ms_per_job: f64,
    samples: Vec<SteadySample>,
}

/// What one job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// Sequence number (slot in the run counters); probe jobs are not counted.
    pub i: u64,
    /// Nanoseconds since the bench's epoch at which the producer's enqueue call began.
    pub t: u64,
    /// How long the handler takes, ms.
    pub ms: u64,
    /// Fails its first attempt.
    pub fail_once: bool,
    /// Part of the capacity probe.
    pub probe: bool,
}

/// The kinds, in the order of [`KIND_NAMES`].
const KIND_NAMES: [&str; 4] = [
    SteadyQuick::KIND,
    SteadyOther::KIND,
    SteadySlow::KIND,
    SteadyLimited::KIND,
];

struct SteadyState {
    epoch: Instant,
    runs: Mutex<Vec<AtomicU8>>,
    /// [`Self::epoch`] on the wall clock, µs since 1970 (to place the rows' `attempted_at`).
    epoch_unix_us: i64,
    /// First attempts since the last sample: (pickup ms, sequence number, job id, handler
    /// start in ns since the epoch).
    firsts: Mutex<Vec<(f64, u64, i64, u64)>>,
    /// When the producer's enqueue call of each sequence number returned, ns since the epoch.
    enqueue_returned: Mutex<Vec<u64>>,
    /// First attempts' pickups (ms) of the whole load, by kind.
    by_kind: Mutex<[Vec<f64>; 4]>,
    /// When each failed first attempt ended (ns since the epoch), by sequence number.
    failed_at: Mutex<HashMap<u64, u64>>,
    /// Failed first attempt's end → its retry's start, ms.
    retry_gaps: Mutex<Vec<f64>>,
    done: AtomicU64,
    probe_done: AtomicU64,
}

static STATE: OnceLock<SteadyState> = OnceLock::new();

impl Task {
    async fn run(self, kind: usize, attempt: i32, job_id: i64) -> Result<(), JobError> {
        let st = STATE
            .get()
            .ok_or_else(|| JobError::fatal("steady bench state not initialised"))?;
        let started = st.epoch.elapsed().as_nanos() as u64;
        if !self.probe {
            if attempt == 1 {
                let ms = started.saturating_sub(self.t) as f64 / 1e6;
                st.firsts
                    .lock()
                    .expect("firsts")
                    .push((ms, self.i, job_id, started));
                st.by_kind.lock().expect("by kind")[kind].push(ms);
            } else if let Some(failed) = st.failed_at.lock().expect("failed").remove(&self.i) {
                let gap = started.saturating_sub(failed) as f64 / 1e6;
                st.retry_gaps.lock().expect("gaps").push(gap);
            }
            if let Some(r) = st.runs.lock().expect("runs").get(self.i as usize) {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        if self.probe {
            st.probe_done.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.fail_once && attempt == 1 {
            let at = st.epoch.elapsed().as_nanos() as u64;
            st.failed_at.lock().expect("failed").insert(self.i, at);
            return Err(JobError::retryable("steady bench: the first attempt fails"));
        }
        st.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

macro_rules! steady_kind {
    ($name:ident, $kind:literal, $idx:expr) => {
        /// One kind of the mix (see the module's table).
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name(pub Task);

        impl Job for $name {
            const KIND: &'static str = $kind;

            async fn run(self, ctx: JobContext) -> Result<(), JobError> {
                self.0.run($idx, ctx.attempt, ctx.job_id).await
            }
        }
    };
}

steady_kind!(SteadyQuick, "fleet.bench_steady_quick", 0);
steady_kind!(SteadyOther, "fleet.bench_steady_other", 1);
steady_kind!(SteadySlow, "fleet.bench_steady_slow", 2);
steady_kind!(SteadyLimited, "fleet.bench_steady_limited", 3);

/// Whether job `i` of the mix is of the limited kind (two in twenty).
fn is_limited(i: u64) -> bool {
    matches!(i % 20, 17 | 18)
}

/// Job `i` of the mix, as enqueued at `t` (ns since the epoch), with an idempotency key if
/// `keyed`.
fn job_of(i: u64, t: u64, probe: bool, keyed: bool) -> NewJob {
    let fail_once = !probe && job_fail_once(i);
    let quick_ms = 1 + (i * 7) % 5;
    let task = |ms| Task {
        i,
        t,
        ms,
        fail_once,
        probe,
    };
    let job = match i % 20 {
        _ if is_limited(i) => NewJob::of(&SteadyLimited(task(quick_ms))),
        0..=12 => NewJob::of(&SteadyQuick(task(quick_ms))),
        13..=15 | 19 => NewJob::of(&SteadyOther(task(quick_ms))),
        _ => NewJob::of(&SteadySlow(task(50))),
    }
    .expect("serializable");
    if keyed {
        job.key(format!("steady:{i}"))
    } else {
        job
    }
}

fn registry(key_window: Duration) -> Registry {
    let base = |queue: &str| KindDefaults {
        queue: queue.into(),
        max_attempts: 3,
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(1),
        idempotency_window: key_window,
        ..KindDefaults::default()
    };
    let mut r = Registry::default();
    r.register_with::<SteadyQuick>(base("steady_a"));
    r.register_with::<SteadyOther>(base("steady_b"));
    r.register_with::<SteadySlow>(base("steady_b"));
    r.register_with::<SteadyLimited>(KindDefaults {
        global_concurrency: Some(LIMITED_AT_ONCE),
        ..base("steady_a")
    });
    r
}

/// CPU seconds of this process and of the database's backends.
fn cpu_now(db: &str) -> (f64, f64) {
    (
        super::proc_cpu_s(std::process::id()),
        super::backend_cpu_s(db),
    )
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub async fn run(a: SteadyArgs) -> anyhow::Result<()> {
    if a.concurrency == 0 || a.probe_jobs < 100 || !(0.0..=2.0).contains(&a.load) || a.load == 0.0 {
        bail!("--concurrency must be >= 1, --probe-jobs >= 100 and --load in (0, 2]");
    }
    if a.every.is_zero() || a.tick.is_zero() || a.clean_every.is_zero() || a.duration < a.every {
        bail!("--every, --tick and --clean-every must be > 0 and --duration at least --every");
    }
    if a.search_step < Duration::from_secs(2) {
        bail!(
            "--search-step must be at least 2s (its first quarter settles, the rest is measured)"
        );
    }
    if a.rate == Some(0) {
        bail!("--rate must be >= 1");
    }
    STATE
        .set(SteadyState {
            epoch: Instant::now(),
            epoch_unix_us: chrono::Utc::now().timestamp_micros(),
            firsts: Mutex::new(Vec::new()),
            enqueue_returned: Mutex::new(Vec::new()),
            runs: Mutex::new(Vec::new()),
            by_kind: Mutex::new(Default::default()),
            failed_at: Mutex::new(HashMap::new()),
            retry_gaps: Mutex::new(Vec::new()),
            done: AtomicU64::new(0),
            probe_done: AtomicU64::new(0),
        })
        .map_err(|_| anyhow::anyhow!("the steady bench can run once per process"))?;
    let st = STATE.get().expect("set");

    let db = ScratchDb::new("fleet_steady").await?;
    let pool = crate::database::connect(&db.url, (a.concurrency as u32 + 12).max(20)).await?;
    let registry = Arc::new(registry(a.key_window));
    let q = Queue::new(pool.clone(), registry.clone());
    let defaults = WorkerSettings::default();
    let prefetch = a.prefetch.unwrap_or(a.concurrency);
    let completer_linger = a.completer_linger.unwrap_or(defaults.completer_linger);
    let cfg = WorkerSettings {
        concurrency: a.concurrency,
        prefetch,
        completer_linger,
        retention_completed: a.retention,
        clean_interval: a.clean_every,
        ..defaults
    };
    let worker = Worker::new(pool.clone(), registry.clone(), cfg);
    let counters = worker.counters();
    let stop_worker = CancellationToken::new();
    let worker_handle = tokio::spawn(worker.run(stop_worker.clone()));
    let stop_load = CancellationToken::new();
    let vacuum = super::spawn_vacuum(pool.clone(), a.vacuum_every, stop_load.clone());

    // 1. Capacity: the mix drained from a backlog, by the same worker.
    let probe: Vec<NewJob> = (0..a.probe_jobs)
        .map(|i| job_of(i, 0, true, false))
        .collect();
    q.enqueue_many(probe).await?;
    let t0 = Instant::now();
    while st.probe_done.load(Ordering::Relaxed) < a.probe_jobs {
        if t0.elapsed() > Duration::from_secs(600) || worker_handle.is_finished() {
            bail!(
                "the capacity probe stalled at {} of {} jobs",
                st.probe_done.load(Ordering::Relaxed),
                a.probe_jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain = a.probe_jobs as f64 / t0.elapsed().as_secs_f64();
    // Let the probe's outcomes land before the counters' baseline is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "drain of the mix at concurrency {} (prefetch {prefetch}): {drain:.0} jobs/s",
        a.concurrency
    );
    let completed_all0 = counters.completed.load(Ordering::Relaxed);
    let retried_all0 = counters.retried.load(Ordering::Relaxed);

    // 2. The producer, at the rate `offered` says (the search's, then the load's).
    let offered = Arc::new(AtomicU64::new(
        a.rate
            .unwrap_or_else(|| search_rates(drain).next().expect("endless")),
    ));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = {
        let (q, stop, enqueued) = (q.clone(), stop_load.clone(), enqueued.clone());
        let offered = offered.clone();
        let (tick_every, keyed) = (a.tick, !a.key_window.is_zero());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tick_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut last = Instant::now();
            // Jobs owed at the current rate, fractions carried from tick to tick.
            let mut owed = 0.0f64;
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<_, anyhow::Error>(()),
                }
                let now = Instant::now();
                owed +=
                    now.duration_since(last).as_secs_f64() * offered.load(Ordering::Relaxed) as f64;
                last = now;
                let n = owed as u64;
                if n == 0 {
                    continue;
                }
                owed -= n as f64;
                let due = i + n;
                let t = st.epoch.elapsed().as_nanos() as u64;
                st.runs
                    .lock()
                    .expect("runs")
                    .extend((i..due).map(|_| AtomicU8::new(0)));
                let batch: Vec<NewJob> = (i..due).map(|k| job_of(k, t, false, keyed)).collect();
                q.enqueue_many(batch).await?;
                let returned = st.epoch.elapsed().as_nanos() as u64;
                st.enqueue_returned
                    .lock()
                    .expect("returned")
                    .extend((i..due).map(|_| returned));
                i = due;
                enqueued.store(i, Ordering::Relaxed);
            }
        })
    };

    let mut conn = pool.acquire().await?;
    // 3. The capacity: the highest rate that holds.
    let (capacity, search, rate) = match a.rate {
        Some(rate) => (None, Vec::new(), rate),
        None => {
            let (c, steps) =
                search_capacity(&a, drain, &offered, &counters, &enqueued, &mut conn).await?;
            (Some(c), steps, (c * a.load).round().max(1.0) as u64)
        }
    };
    offered.store(rate, Ordering::Relaxed);
    if capacity.is_some() {
        // The last step fell behind: its backlog goes before the load is measured.
        let settled = Instant::now();
        while super::ready_jobs(&mut conn).await? > (rate as i64 / 10).max(100) {
            if settled.elapsed() > Duration::from_secs(120) {
                bail!("the backlog of the capacity search did not drain at {rate} jobs/s within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        st.firsts.lock().expect("firsts").clear();
        st.by_kind
            .lock()
            .expect("by kind")
            .iter_mut()
            .for_each(Vec::clear);
        st.retry_gaps.lock().expect("gaps").clear();
    }
    eprintln!(
        "offering {rate} jobs/s for {:?}{}",
        a.duration,
        capacity.map_or(String::new(), |c| format!(
            " ({:.0} % of the searched capacity, {c:.0} jobs/s)",
            rate as f64 * 100.0 / c
        ))
    );

    // 4. The load.
    let started = Instant::now();
    let mut samples: Vec<SteadySample> = Vec::new();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    let completed0 = counters.completed.load(Ordering::Relaxed);
    let retried0 = counters.retried.load(Ordering::Relaxed);
    let cpu0 = cpu_now(db.name());
    let (mut last_done, mut interval_done) = (completed0, completed0);
    let (mut interval_retried, mut interval_enqueued) =
        (retried0, enqueued.load(Ordering::Relaxed));
    let mut interval_cpu = cpu0;
    let claim_rounds = || super::Observed::of(&crate::metrics::metrics().claim_round_seconds);
    let mut interval_rounds = claim_rounds();
    let mut interval_start = Instant::now();
    let mut min_in_second = u64::MAX;
    while started.elapsed() < a.duration {
        second.tick().await;
        let done = counters.completed.load(Ordering::Relaxed);
        min_in_second = min_in_second.min(done - last_done);
        last_done = done;
        if interval_start.elapsed() + Duration::from_millis(500) < a.every {
            continue;
        }
        let dt = interval_start.elapsed().as_secs_f64();
        let firsts = std::mem::take(&mut *st.firsts.lock().expect("firsts"));
        let mut pickups: Vec<f64> = firsts.iter().map(|f| f.0).collect();
        pickups.sort_by(|x, y| x.total_cmp(y));
        let (slowest, sampled) = pickup_stages(st, firsts, &mut conn).await?;
        let backlog = super::ready_jobs(&mut conn).await?;
        let sizes = queue::job_table_sizes(&pool).await?;
        let cpu = cpu_now(db.name());
        let (enq, retried) = (
            enqueued.load(Ordering::Relaxed),
            counters.retried.load(Ordering::Relaxed),
        );
        let jobs = (done - interval_done).max(1) as f64;
        let rounds = claim_rounds();
        let in_interval = rounds.since(interval_rounds);
        let s = SteadySample {
            t_s: round1(started.elapsed().as_secs_f64()),
            offered_jobs_per_s: ((enq - interval_enqueued) as f64 / dt).round(),
            work_jobs_per_s: ((done - interval_done) as f64 / dt).round(),
            min_jobs_in_a_second: min_in_second,
            retries: retried - interval_retried,
            backlog,
            pickup_p50_ms: super::percentile(&pickups, 0.50),
            pickup_p99_ms: super::percentile(&pickups, 0.99),
            pickup_max_ms: super::percentile(&pickups, 1.0),
            heap_bytes: sizes.heap_bytes,
            index_bytes: sizes.indexes.iter().map(|(_, b)| b).sum(),
            dead_rows: sizes.dead_rows,
            live_rows: sizes.live_rows,
            autovacuums: sizes.autovacuum_count,
            fleet_cpu_ms_per_job: round3((cpu.0 - interval_cpu.0) * 1e3 / jobs),
            postgres_cpu_ms_per_job: round3((cpu.1 - interval_cpu.1) * 1e3 / jobs),
            loadavg_1m: super::loadavg_1m(),
            claim_rounds: in_interval.count,
            claim_busy_share: round3(in_interval.seconds / dt),
            claim_rounds_over_10ms: in_interval.over_10ms,
            claim_rounds_over_50ms: in_interval.over_50ms,
            slowest,
            sampled,
        };
        eprintln!("{}", sample_line(&s));
        eprintln!("{}", stages_line("slowest 1 %", &s.slowest));
        eprintln!("{}", stages_line("1 in 100", &s.sampled));
        samples.push(s);
        interval_start = Instant::now();
        (interval_done, interval_retried, interval_enqueued) = (done, retried, enq);
        interval_cpu = cpu;
        interval_rounds = rounds;
        min_in_second = u64::MAX;
    }
    drop(conn);
    let cpu1 = cpu_now(db.name());
    let completed_in_load = counters.completed.load(Ordering::Relaxed) - completed0;

    stop_load.cancel();
    producer.await??;
    let vacuums = vacuum.finish().await;
    let enqueued = enqueued.load(Ordering::Relaxed);
    super::wait_until_done(&st.done, enqueued, Duration::from_secs(120), "steady bench").await?;
    // Let the last outcomes land before the counters are read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_worker.cancel();
    let _ = worker_handle.await;
    pool.close().await;

    let wrong_runs = st
        .runs
        .lock()
        .expect("runs")
        .iter()
        .enumerate()
        .filter(|(i, r)| r.load(Ordering::Relaxed) != 1 + u8::from(job_fail_once(*i as u64)))
        .count();
    let r = report(
        &a,
        st,
        &samples,
        Summary {
            prefetch,
            completer_linger,
            drain,
            capacity,
            search,
            rate,
            vacuums,
            enqueued,
            completed: counters.completed.load(Ordering::Relaxed) - completed_all0,
            retried: counters.retried.load(Ordering::Relaxed) - retried_all0,
            cpu: (
                (cpu1.0 - cpu0.0) * 1e3 / completed_in_load.max(1) as f64,
                (cpu1.1 - cpu0.1) * 1e3 / completed_in_load.max(1) as f64,
            ),
        },
    );
    print_summary(&r);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    let (dead, lost) = (
        counters.dead.load(Ordering::Relaxed),
        counters.lost.load(Ordering::Relaxed),
    );
    if wrong_runs > 0 || dead > 0 || lost > 0 || r.completed != enqueued {
        bail!(
            "steady bench verification failed: {} of {enqueued} completed, {wrong_runs} ran a wrong number of times, {dead} dead, {lost} outcomes refused",
            r.completed
        );
    }
    Ok(())
}

/// Where the pickups of an interval's first attempts went: its slowest 1 % and one in a
/// hundred (by sequence number), each cut in three ([`PickupStages`]). The rows' claim times
/// are read before the cleaner purges them (`--retention` after they finished); a row already
/// gone is left out.
async fn pickup_stages(
    st: &SteadyState,
    mut firsts: Vec<(f64, u64, i64, u64)>,
    conn: &mut sqlx::PgConnection,
) -> anyhow::Result<(PickupStages, PickupStages)> {
    firsts.retain(|f| !job_fail_once(f.1));
    firsts.sort_by(|x, y| y.0.total_cmp(&x.0));
    let slow_n = firsts.len().div_ceil(100);
    let slowest: Vec<_> = firsts[..slow_n].to_vec();
    let sampled: Vec<_> = firsts.iter().filter(|f| f.1 % 100 == 0).copied().collect();
    let ids: Vec<i64> = slowest.iter().chain(&sampled).map(|f| f.2).collect();
    let claimed: HashMap<i64, i64> = queue::fixtures::attempted_at_us(conn, &ids)
        .await?
        .into_iter()
        .collect();
    let returned = st.enqueue_returned.lock().expect("returned");
    let stages = |group: &[(f64, u64, i64, u64)]| {
        let (mut pickup, mut call, mut wait, mut start) = (vec![], vec![], vec![], vec![]);
        let mut limited_jobs = 0;
        for &(ms, i, id, started) in group {
            let (Some(&at_us), Some(&ret)) = (claimed.get(&id), returned.get(i as usize)) else {
                continue;
            };
            if is_limited(i) {
                limited_jobs += 1;
            }
            let claim_ns = (at_us - st.epoch_unix_us) as f64 * 1e3;
            // The enqueue call's start: the pickup is measured from it.
            let t = started as f64 - ms * 1e6;
            pickup.push(ms);
            call.push((ret as f64 - t) / 1e6);
            wait.push((claim_ns - ret as f64) / 1e6);
            start.push((started as f64 - claim_ns) / 1e6);
        }
        for v in [&mut pickup, &mut call, &mut wait, &mut start] {
            v.sort_by(|x, y| x.total_cmp(y));
        }
        PickupStages {
            jobs: pickup.len(),
            limited_jobs,
            pickup_p50_ms: super::percentile(&pickup, 0.5),
            enqueue_call_p50_ms: super::percentile(&call, 0.5),
            enqueue_call_max_ms: super::percentile(&call, 1.0),
            to_claim_p50_ms: super::percentile(&wait, 0.5),
            to_claim_max_ms: super::percentile(&wait, 1.0),
            claim_to_start_p50_ms: super::percentile(&start, 0.5),
            claim_to_start_max_ms: super::percentile(&start, 1.0),
        }
    };
    Ok((stages(&slowest), stages(&sampled)))
}

/// The capacity search's rates: from 40 % of the drain rate upward in steps of 5 % of it.
fn search_rates(drain: f64) -> impl Iterator<Item = u64> {
    let step = (drain * 0.05).max(10.0);
    (0u32..).map(move |k| (drain * 0.4 + step * k as f64).round().max(1.0) as u64)
}

/// Offers the [`search_rates`] one `--search-step` each until one falls behind; returns the
/// highest that held (and every step). A step holds when, after its first quarter, completions
/// kept within 3 % of the offered rate, the backlog at its end is at most half a second of the
/// rate (and 200 jobs), and it grew by at most a twentieth of a second's (and 100 jobs) over
/// the step: a worker falling behind, or one kind of it (the limited kind), grows a backlog
/// that the worked rate alone hides for a while.
async fn search_capacity(
    a: &SteadyArgs,
    drain: f64,
    offered: &AtomicU64,
    counters: &crate::worker::WorkerCounters,
    enqueued: &AtomicU64,
    conn: &mut sqlx::PgConnection,
) -> anyhow::Result<(f64, Vec<SearchStep>)> {
    let mut steps: Vec<SearchStep> = Vec::new();
    for rate in search_rates(drain) {
        offered.store(rate, Ordering::Relaxed);
        tokio::time::sleep(a.search_step / 4).await;
        let backlog0 = super::ready_jobs(conn).await?;
        let (d0, e0, t0) = (
            counters.completed.load(Ordering::Relaxed),
            enqueued.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(a.search_step * 3 / 4).await;
        let dt = t0.elapsed().as_secs_f64();
        let step = {
            let offered_per_s = (enqueued.load(Ordering::Relaxed) - e0) as f64 / dt;
            let work_per_s = (counters.completed.load(Ordering::Relaxed) - d0) as f64 / dt;
            let backlog = super::ready_jobs(conn).await?;
            SearchStep {
                rate,
                offered_jobs_per_s: offered_per_s.round(),
                work_jobs_per_s: work_per_s.round(),
                backlog,
                holds: work_per_s >= 0.97 * offered_per_s
                    && backlog <= (rate as i64 / 2).max(200)
                    && backlog - backlog0 <= (rate as i64 / 20).max(100),
            }
        };
        eprintln!(
            "search: offered {:>6.0}/s work {:>6.0}/s backlog {}: {}",
            step.offered_jobs_per_s,
            step.work_jobs_per_s,
            step.backlog,
            if step.holds { "holds" } else { "falls behind" }
        );
        let holds = step.holds;
        steps.push(step);
        if !holds {
            break;
        }
    }
    match steps.iter().rev().find(|s| s.holds) {
        Some(s) => Ok((s.rate as f64, steps)),
        None => bail!(
            "the worker fell behind at the capacity search's first rate ({} jobs/s, 40 % of the drain rate)",
            steps[0].rate
        ),
    }
}

/// Whether job `i` of the load fails its first attempt: one in ten, spread over every kind by
/// a multiplicative hash.
fn job_fail_once(i: u64) -> bool {
    (i.wrapping_mul(2_654_435_761) >> 8).is_multiple_of(10)
}

/// Run-wide figures gathered by [`run`].
struct Summary {
    prefetch: usize,
    completer_linger: Duration,
    drain: f64,
    capacity: Option<f64>,
    search: Vec<SearchStep>,
    rate: u64,
    vacuums: u64,
    enqueued: u64,
    completed: u64,
    retried: u64,
    /// CPU ms per job: this process, the database's backends.
    cpu: (f64, f64),
}

fn report(a: &SteadyArgs, st: &SteadyState, samples: &[SteadySample], s: Summary) -> SteadyReport {
    let worst = |f: fn(&SteadySample) -> f64, after: f64| {
        samples
            .iter()
            .filter(|x| x.t_s > after)
            .map(f)
            .fold(f64::NAN, f64::max)
    };
    let by_kind = {
        let mut all = st.by_kind.lock().expect("by kind");
        KIND_NAMES
            .iter()
            .zip(all.iter_mut())
            .map(|(kind, v)| {
                v.sort_by(|x, y| x.total_cmp(y));
                KindPickup {
                    kind,
                    first_attempts: v.len(),
                    pickup_p50_ms: super::percentile(v, 0.50),
                    pickup_p99_ms: super::percentile(v, 0.99),
                    pickup_max_ms: super::percentile(v, 1.0),
                }
            })
            .collect()
    };
    let mut gaps = std::mem::take(&mut *st.retry_gaps.lock().expect("gaps"));
    gaps.sort_by(|x, y| x.total_cmp(y));
    let after_1m: Vec<&SteadySample> = samples.iter().filter(|x| x.t_s >= 59.5).collect();
    let at_1m = after_1m.first();
    SteadyReport {
        concurrency: a.concurrency,
        prefetch: s.prefetch,
        completer_linger_ms: s.completer_linger.as_secs_f64() * 1e3,
        drain_jobs_per_s: s.drain.round(),
        capacity_jobs_per_s: s.capacity.map(f64::round),
        search: s.search,
        rate: s.rate,
        duration_s: a.duration.as_secs_f64(),
        retention_s: a.retention.as_secs_f64(),
        key_window_s: a.key_window.as_secs_f64(),
        vacuum_every_s: a.vacuum_every.map(|d| d.as_secs_f64()),
        vacuums: s.vacuums,
        enqueued: s.enqueued,
        completed: s.completed,
        retried: s.retried,
        worst_pickup_p50_ms: worst(|x| x.pickup_p50_ms, -1.0),
        worst_pickup_p99_ms: worst(|x| x.pickup_p99_ms, -1.0),
        worst_pickup_p50_after_1m_ms: worst(|x| x.pickup_p50_ms, 60.5),
        worst_pickup_p99_after_1m_ms: worst(|x| x.pickup_p99_ms, 60.5),
        by_kind,
        retry_gap_p50_ms: super::percentile(&gaps, 0.50),
        retry_gap_p99_ms: super::percentile(&gaps, 0.99),
        heap_bytes_at_1m: at_1m.map_or(0, |x| x.heap_bytes),
        heap_bytes_max_after_1m: after_1m.iter().map(|x| x.heap_bytes).max().unwrap_or(0),
        index_bytes_at_1m: at_1m.map_or(0, |x| x.index_bytes),
        index_bytes_max_after_1m: after_1m.iter().map(|x| x.index_bytes).max().unwrap_or(0),
        fleet_cpu_ms_per_job: round3(s.cpu.0),
        postgres_cpu_ms_per_job: round3(s.cpu.1),
        samples: samples.to_vec(),
    }
}

fn mb(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn sample_line(s: &SteadySample) -> String {
    format!(
        "t={:>5.0}s offered {:>6.0}/s work {:>6.0}/s (min {}/s) retries {} backlog {} | pickup p50 {:.2} p99 {:.2} max {:.1} ms | heap {:.1} MB, indexes {:.1} MB, live {} dead {} autovac {} | CPU/job: fleet {:.3} ms, postgres {:.3} ms | load {:.2}\n         claim rounds {} (busy {:.0} %), over 10 ms {}, over 50 ms {}",
        s.t_s, s.offered_jobs_per_s, s.work_jobs_per_s, s.min_jobs_in_a_second, s.retries,
        s.backlog, s.pickup_p50_ms, s.pickup_p99_ms, s.pickup_max_ms, mb(s.heap_bytes),
        mb(s.index_bytes), s.live_rows, s.dead_rows, s.autovacuums, s.fleet_cpu_ms_per_job,
        s.postgres_cpu_ms_per_job, s.loadavg_1m, s.claim_rounds, s.claim_busy_share * 100.0,
        s.claim_rounds_over_10ms, s.claim_rounds_over_50ms
    )
}

fn stages_line(group: &str, g: &PickupStages) -> String {
    format!(
        "         {group:<11} ({} jobs, {} limited, pickup p50 {:.2} ms): enqueue call p50 {:.2} max {:.1} | → claim p50 {:.2} max {:.1} | claim → handler p50 {:.2} max {:.1} ms",
        g.jobs,
        g.limited_jobs,
        g.pickup_p50_ms,
        g.enqueue_call_p50_ms,
        g.enqueue_call_max_ms,
        g.to_claim_p50_ms,
        g.to_claim_max_ms,
        g.claim_to_start_p50_ms,
        g.claim_to_start_max_ms
    )
}

fn print_summary(r: &SteadyReport) {
    let growth = |at: i64, max: i64| {
        if at == 0 {
            f64::NAN
        } else {
            round1((max - at) as f64 * 100.0 / at as f64)
        }
    };
    let yes = |ok: bool| if ok { "met" } else { "NOT met" };
    let share = match r.capacity_jobs_per_s {
        Some(c) => format!(
            "{:.0} % of the searched capacity {c:.0} jobs/s, {:.0} % of the drain {:.0} jobs/s",
            r.rate as f64 * 100.0 / c,
            r.rate as f64 * 100.0 / r.drain_jobs_per_s,
            r.drain_jobs_per_s
        ),
        None => format!(
            "{:.0} % of the drain {:.0} jobs/s, capacity not searched",
            r.rate as f64 * 100.0 / r.drain_jobs_per_s,
            r.drain_jobs_per_s
        ),
    };
    eprintln!(
        "steady: offered {} jobs/s ({share}) for {:.0} s at concurrency {} (prefetch {}, completer linger {} ms), retention {:.0} s, key window {:.0} s, VACUUM every {:?} s ({} ran)",
        r.rate, r.duration_s, r.concurrency, r.prefetch, r.completer_linger_ms, r.retention_s, r.key_window_s,
        r.vacuum_every_s, r.vacuums
    );
    eprintln!(
        "  {} enqueued, {} completed, {} retried (the search's and the load's)",
        r.enqueued, r.completed, r.retried
    );
    eprintln!(
        "  worst interval pickup p50 {:.2} ms ({} ≤ 3), p99 {:.2} ms ({} ≤ 10); after the first minute {:.2} / {:.2} ms",
        r.worst_pickup_p50_ms,
        yes(r.worst_pickup_p50_ms <= 3.0),
        r.worst_pickup_p99_ms,
        yes(r.worst_pickup_p99_ms <= 10.0),
        r.worst_pickup_p50_after_1m_ms,
        r.worst_pickup_p99_after_1m_ms
    );
    for k in &r.by_kind {
        eprintln!(
            "  {:<28} {:>8} first attempts, pickup p50 {:.2} p99 {:.2} max {:.1} ms",
            k.kind, k.first_attempts, k.pickup_p50_ms, k.pickup_p99_ms, k.pickup_max_ms
        );
    }
    eprintln!(
        "  a failed attempt → its retry's start: p50 {:.0} ms, p99 {:.0} ms (backoff 100–200 ms, then promotion)",
        r.retry_gap_p50_ms, r.retry_gap_p99_ms
    );
    let (hg, ig) = (
        growth(r.heap_bytes_at_1m, r.heap_bytes_max_after_1m),
        growth(r.index_bytes_at_1m, r.index_bytes_max_after_1m),
    );
    eprintln!(
        "  after the first minute: heap {:.1} → max {:.1} MB ({hg:+.1} %), indexes {:.1} → max {:.1} MB ({ig:+.1} %): {}",
        mb(r.heap_bytes_at_1m),
        mb(r.heap_bytes_max_after_1m),
        mb(r.index_bytes_at_1m),
        mb(r.index_bytes_max_after_1m),
        if hg <= 0.0 && ig <= 0.0 { "no growth" } else { "GREW" }
    );
    eprintln!(
        "  CPU per job: fleet process {:.3} ms, postgres backends {:.3} ms",
        r.fleet_cpu_ms_per_job, r.postgres_cpu_ms_per_job
    );
}
