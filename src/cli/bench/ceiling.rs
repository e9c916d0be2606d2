//! `fleet bench ceiling`: what the queue's own statements can do with no runtime around them.
//!
//! The same claim ([`queue::job_fetch_available_on`], on a [`queue::ClaimSession`]) and outcome
//! ([`queue::job_set_outcome_many`], on a [`queue::OutcomeWriter`]) statements the worker uses,
//! called back to back: claim `batch` jobs, write them all completed, repeat, in one loop and
//! then in two in parallel (each loop claims on one connection and writes on another, as a
//! worker does), over `jobs` no-op jobs each time. No handler, no channel, no heartbeat, no task per job. Then, in the same run and
//! the same database server, the engine's burn-down (`fleet bench`'s work phase) at
//! `concurrency` with the bench's prefetch, so its rate can be read as a share of the ceiling.
//! Rounds alternate ceiling and engine, so a noisy machine hits both alike.

use std::{sync::Arc, time::Instant};

use anyhow::bail;
use jobs::{Job, JobContext, JobError, KindDefaults, NewJob};
use serde::{Deserialize, Serialize};

use crate::{
    config::WorkerSettings,
    database::scratch::ScratchDb,
    queue::{self, FetchParams},
    registry::Registry,
    Queue, Worker,
};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct CeilingArgs {
    /// Jobs per measurement.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs per claim (and so per outcome write) in the statement loop.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// The engine's concurrency in its run (prefetch max(4 × this, 100), as in `fleet bench`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds, alternating ceiling and engine.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// The no-op kind of the ceiling's jobs (never run by a handler in the statement loop).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CeilingNoop {}

impl Job for CeilingNoop {
    const KIND: &'static str = "fleet.bench_ceiling";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Round {
    one_connection_jobs_per_s: f64,
    two_connections_jobs_per_s: f64,
    engine_jobs_per_s: f64,
    /// Engine over the two-connection ceiling.
    engine_share: f64,
    loadavg_1m: f64,
}

async fn fresh(jobs: usize) -> anyhow::Result<(ScratchDb, sqlx::PgPool, Queue)> {
    let db = ScratchDb::new("fleet_bench_ceiling").await?;
    let pool = crate::database::connect(&db.url, 80).await?;
    let mut r = Registry::default();
    r.register_with::<CeilingNoop>(KindDefaults {
        max_attempts: 1,
        ..KindDefaults::default()
    });
    let q = Queue::new(pool.clone(), Arc::new(r));
    let batch: Vec<NewJob> = (0..jobs)
        .map(|_| NewJob::of(&CeilingNoop {}).expect("serializable"))
        .collect();
    q.enqueue_many(batch).await?;
    Ok((db, pool, q))
}

/// Claims and completes until nothing is left; returns the jobs this loop completed.
async fn statement_loop(pool: sqlx::PgPool, batch: usize, owner: String) -> anyhow::Result<usize> {
    // The engine's own claim path: a claim session, one statement per claim.
    let db = jobs::Db::from(pool.clone());
    let mut session = queue::ClaimSession::open(&db).await?;
    // And its outcome writer: a session of its own, its plans pinned.
    let mut writer = queue::OutcomeWriter::new(&db);
    let mut done = 0;
    loop {
        let claimed = queue::job_fetch_available_on(
            &mut session,
            &FetchParams {
                only_kinds: None,
                queues: None,
                skip_kinds: &[],
                limited_kinds: &[],
                limit: batch as i64,
                owner: &owner,
                lease: std::time::Duration::from_secs(60),
                now: None,
            },
        )
        .await?;
        if claimed.is_empty() {
            return Ok(done);
        }
        let outcomes: Vec<queue::OutcomeRow> = claimed
            .iter()
            .map(|c| crate::worker::Outcome::completed(c, std::time::Duration::ZERO).row())
            .collect();
        let written = writer.set_outcome_many(&outcomes, None).await?;
        if written.len() != outcomes.len() {
            bail!("{} of {} outcomes written", written.len(), outcomes.len());
        }
        done += written.len();
    }
}

async fn ceiling(jobs: usize, batch: usize, connections: usize) -> anyhow::Result<f64> {
    let (_db, pool, _) = fresh(jobs).await?;
    let t = Instant::now();
    let loops: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(statement_loop(pool.clone(), batch, format!("ceiling-{i}"))))
        .collect();
    let mut done = 0;
    for l in loops {
        done += l.await??;
    }
    let rate = jobs as f64 / t.elapsed().as_secs_f64();
    pool.close().await;
    if done != jobs {
        bail!("the statement loop completed {done} of {jobs}");
    }
    Ok(rate.round())
}

async fn engine(jobs: usize, concurrency: usize) -> anyhow::Result<f64> {
    let (_db, pool, _) = fresh(jobs).await?;
    let mut r = Registry::default();
    r.register_with::<CeilingNoop>(KindDefaults {
        max_attempts: 1,
        ..KindDefaults::default()
    });
    let worker = Worker::new(
        pool.clone(),
        Arc::new(r),
        WorkerSettings {
            concurrency,
            prefetch: super::peer_prefetch(concurrency),
            ..WorkerSettings::default()
        },
    );
    let counters = worker.counters();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let handle = tokio::spawn(worker.run(stop.clone()));
    while counters
        .completed
        .load(std::sync::atomic::Ordering::Relaxed)
        < jobs as u64
    {
        if handle.is_finished() || t.elapsed().as_secs() > 600 {
            bail!("the engine's burn-down stalled");
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let rate = jobs as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    let _ = handle.await;
    pool.close().await;
    Ok(rate.round())
}

/// Runs the rounds and prints them.
pub async fn run(a: CeilingArgs) -> anyhow::Result<()> {
    if a.jobs == 0 || a.batch == 0 || a.concurrency == 0 || a.rounds == 0 {
        bail!("--jobs, --batch, --concurrency and --rounds must be >= 1");
    }
    let mut rounds = Vec::new();
    for _ in 0..a.rounds {
        let loadavg_1m = super::loadavg_1m();
        let one = ceiling(a.jobs, a.batch, 1).await?;
        let engine_rate = engine(a.jobs, a.concurrency).await?;
        let two = ceiling(a.jobs, a.batch, 2).await?;
        let r = Round {
            one_connection_jobs_per_s: one,
            two_connections_jobs_per_s: two,
            engine_jobs_per_s: engine_rate,
            engine_share: (engine_rate / two.max(one) * 1000.0).round() / 1000.0,
            loadavg_1m,
        };
        eprintln!(
            "ceiling ({} jobs, batch {}): 1 connection {:>8.0} jobs/s, 2 connections {:>8.0} jobs/s; engine (c = {}) {:>8.0} jobs/s = {:.1} % of the ceiling; load {:.2}",
            a.jobs, a.batch, r.one_connection_jobs_per_s, r.two_connections_jobs_per_s,
            a.concurrency, r.engine_jobs_per_s, r.engine_share * 100.0, r.loadavg_1m
        );
        rounds.push(r);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "jobs": a.jobs, "batch": a.batch, "concurrency": a.concurrency, "rounds": rounds
            }))?
        );
    }
    Ok(())
}
