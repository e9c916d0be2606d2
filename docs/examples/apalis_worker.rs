//! An apalis worker with tower layers (tracing, a concurrency limit, a timeout) on the fleet's
//! queue, beside `fleet worker` on one database.
//!
//! ```text
//! # config of every fleet process on the database: fleet worker leaves the kind alone
//! #   [kinds.thumbnail]
//! #   external = true
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/fleet \
//!   cargo run --example apalis_worker -- --enqueue 100
//! ```
//!
//! It runs the database's migrations, enqueues `--enqueue N` thumbnails through apalis's
//! `TaskSink`, and works kind `thumbnail` until SIGINT or SIGTERM (then drains), or, with
//! `--exit-when-idle`, until no thumbnail job is left unfinished. The worker's lease, heartbeat
//! and rescue cadence come from the fleet's config (`FLEET_WORKER__LEASE=2s` and so on).
//!
//! Each thumbnail's side effect is a row keyed by the job (`JobContext::side_effect_key`): a
//! run repeated after a crash writes nothing twice. `THUMBNAIL_WORK_MS` makes each job take
//! that long (the SIGKILL test kills the worker mid-job with it).

use std::time::Duration;

use apalis::prelude::*;
use fleet::apalis::{FleetBackend, FleetJob};
use serde::{Deserialize, Serialize};

/// What a thumbnail job carries (ids, never personal data).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Thumbnail {
    image_id: i64,
    width: i32,
}

const KIND: &str = "thumbnail";

async fn make_thumbnail(t: Thumbnail, job: FleetJob) -> Result<(), BoxDynError> {
    // The side effect, once per job whatever the attempts: keyed by the job and the step.
    let key = job.side_effect_key("render");
    sqlx::query(
        "INSERT INTO example_thumbnails (effect_key, image_id, width) VALUES ($1, $2, $3)
         ON CONFLICT (effect_key) DO NOTHING",
    )
    .bind(&key)
    .bind(t.image_id)
    .bind(t.width)
    .execute(&job.db)
    .await?;
    let work_ms: u64 = std::env::var("THUMBNAIL_WORK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    tokio::time::sleep(Duration::from_millis(work_ms)).await;
    // How many runs got this far (more than one only if a run was lost after it).
    sqlx::query(
        "UPDATE example_thumbnails SET finished_runs = finished_runs + 1 WHERE effect_key = $1",
    )
    .bind(&key)
    .execute(&job.db)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let enqueue: usize = match args.iter().position(|a| a == "--enqueue") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or("--enqueue needs a number of jobs")?,
        None => 0,
    };
    let exit_when_idle = args.iter().any(|a| a == "--exit-when-idle");

    let settings = fleet::config::Settings::load(None)?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let pool = fleet::database::connect(&url, 8).await?;
    fleet::database::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_thumbnails (
             effect_key text PRIMARY KEY, image_id bigint NOT NULL, width int NOT NULL,
             finished_runs int NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await?;

    let backend = FleetBackend::<Thumbnail>::new(pool.clone(), KIND)
        .with_kind_settings(jobs::KindDefaults {
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            ..Default::default()
        })
        // The engine holds as many claims as the apalis worker runs at once: a claim waiting
        // for a free apalis slot is held (its lease renewed), so keep the two equal.
        .with_worker_settings(fleet::config::WorkerSettings {
            concurrency: 4,
            prefetch: 0,
            ..settings.worker.clone()
        });

    if enqueue > 0 {
        let mut sink = backend.clone();
        let thumbnails = (0..enqueue as i64)
            .map(|image_id| Thumbnail {
                image_id,
                width: 320,
            })
            .collect();
        sink.push_bulk(thumbnails).await?;
        tracing::info!(
            jobs = enqueue,
            kind = KIND,
            "enqueued through apalis's sink"
        );
    }

    let worker = WorkerBuilder::new("thumbnailer")
        .backend(backend)
        .concurrency(4)
        .timeout(Duration::from_secs(30))
        .enable_tracing()
        .build(make_thumbnail);

    let stop = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        if exit_when_idle {
            loop {
                let left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM fleet_jobs WHERE kind = $1
                     AND state NOT IN ('completed', 'cancelled', 'dead')",
                )
                .bind(KIND)
                .fetch_one(&pool)
                .await
                .map_err(std::io::Error::other)?;
                if left == 0 {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = term.recv() => return Ok(()),
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<(), std::io::Error>(())
    };
    worker.run_until(stop).await?;
    tracing::info!("thumbnailer stopped");
    Ok(())
}
