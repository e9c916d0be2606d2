//! `fleet enqueue`: one job from the command line, or many from a file of JSON lines (bulk: one
//! statement per chunk, all in one transaction, with a progress bar). Every job is checked
//! against its kind's type before anything is written, and the enqueue is audited.

use std::{io::BufRead, sync::Arc, time::Duration};

use super::UsageError;
use crate::{
    config::{Settings, MAX_ENQUEUE_DELAY},
    fleet_registry,
};
use jobs::NewJob;
use serde::Deserialize;

use super::{databases_for, os_user, output::emit, usage};

/// Jobs per insert statement in the bulk form.
const CHUNK: usize = 5_000;

#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// Job kind (one job). Omit with --file.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    kind: Option<String>,
    /// JSON args of the one job.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Idempotency key of the one job.
    #[arg(long)]
    key: Option<String>,
    /// Delay before the one job may run, e.g. "30s", "2h", "7d" (at most 366 days).
    #[arg(long, value_parser = parse_delay, allow_hyphen_values = true)]
    delay: Option<Duration>,
    /// Bulk: a file of JSON lines, `-` for stdin. Each line is
    /// {"kind": "…", "args": {…}, "key": "…", "delay": "30s", "priority": 0, "queue": "…"}
    /// (only "kind" is required).
    #[arg(long, value_name = "FILE")]
    file: Option<String>,
    /// Who is acting (recorded in audit_log; default: the OS user).
    #[arg(long)]
    actor: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One line of the bulk form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    kind: String,
    #[serde(default = "empty_object")]
    args: serde_json::Value,
    key: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    delay: Option<Duration>,
    run_at: Option<chrono::DateTime<chrono::Utc>>,
    priority: Option<i16>,
    queue: Option<String>,
    max_attempts: Option<i32>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// `"30s"`-style durations in JSON lines.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_delay(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A job's delay: a duration of at most [`MAX_ENQUEUE_DELAY`], refused with the reason.
fn parse_delay(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration_within(text, MAX_ENQUEUE_DELAY).map_err(|e| format!("delay {e}"))
}

fn job_of(
    kind: String,
    args: serde_json::Value,
    key: Option<String>,
    delay: Option<Duration>,
) -> anyhow::Result<NewJob> {
    let mut job = NewJob::raw(kind, args);
    job.opts.idempotency_key = key;
    if let Some(d) = delay {
        job = job.run_at(chrono::Utc::now() + chrono::Duration::from_std(d)?);
    }
    Ok(job)
}

/// Reads and checks every line before anything is written: a bad line names its number.
fn read_lines(source: &str, registry: &crate::Registry) -> anyhow::Result<Vec<NewJob>> {
    let reader: Box<dyn BufRead> = if source == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(source).map_err(|e| UsageError(format!("--file {source}: {e}")))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut jobs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| UsageError(format!("{source}: reading line {}: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .map_err(|e| UsageError(format!("{source} line {}: {e}", n + 1)))?;
        let mut job = job_of(l.kind, l.args, l.key, l.delay)?;
        if let Some(t) = l.run_at {
            job = job.run_at(t);
        }
        job.opts.priority = l.priority;
        if let Some(q) = &l.queue {
            // A queue no kind is enqueued on is a typo more often than a plan: it would hold
            // the job where no worker looks.
            let known = registry.queues();
            if !known.contains(q) {
                usage!(
                    "{source} line {}: queue {q:?} is not one any kind is enqueued on (known: {})",
                    n + 1,
                    known.join(", ")
                );
            }
        }
        job.opts.queue = l.queue;
        job.opts.max_attempts = l.max_attempts;
        registry
            .check(&job)
            .map_err(|why| UsageError(format!("{source} line {}: {why}", n + 1)))?;
        jobs.push(job);
    }
    if jobs.is_empty() {
        usage!("{source}: no jobs (empty input)");
    }
    Ok(jobs)
}

pub async fn run(a: EnqueueArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = Arc::new(fleet_registry(settings)?);
    // Everything is read and checked before connecting: bad input is a usage error, and
    // nothing is written.
    let jobs = match (&a.file, a.kind) {
        (Some(file), _) => read_lines(file, &registry)?,
        (None, Some(kind)) => {
            let args: serde_json::Value = serde_json::from_str(&a.args)
                .map_err(|e| UsageError(format!("--args is not valid JSON: {e}")))?;
            let job = job_of(kind, args, a.key, a.delay)?;
            registry
                .check(&job)
                .map_err(|why| UsageError(why.to_string()))?;
            vec![job]
        }
        (None, None) => usage!("name a KIND, or give --file"),
    };
    let total = jobs.len();
    let single = a.file.is_none();
    let dbs = databases_for(settings).await?;
    let queue = crate::Queue::of_fleet(&dbs, registry);
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} enqueueing [{bar:30}] {pos}/{len}")
            .expect("static template")
            .progress_chars("=> "),
    );
    if single || a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tx = dbs.main.db.begin().await?;
    let mut results = Vec::with_capacity(total);
    let started = std::time::Instant::now();
    let mut jobs = jobs.into_iter().peekable();
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    while jobs.peek().is_some() {
        let chunk: Vec<NewJob> = jobs.by_ref().take(CHUNK).collect();
        for j in &chunk {
            *kinds.entry(j.kind.clone()).or_default() += 1;
        }
        let n = chunk.len() as u64;
        results.extend(queue.enqueue_many_in(&mut tx, chunk).await?);
        bar.inc(n);
    }
    let duplicates = results.iter().filter(|r| r.duplicate).count();
    let actor = a.actor.unwrap_or_else(os_user);
    crate::queue::audit_record(
        &mut *tx,
        &actor,
        "job.enqueue",
        "job",
        if single {
            Some(results[0].id.to_string())
        } else {
            None
        }
        .as_deref(),
        &serde_json::json!({
            "jobs": total, "duplicates": duplicates, "kinds": kinds,
            "first_id": results.first().map(|r| r.id), "last_id": results.last().map(|r| r.id),
        }),
    )
    .await?;
    tx.commit().await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if single {
        let r = results[0];
        let text = if r.duplicate {
            format!("job {} already holds that key: nothing added", r.id)
        } else {
            format!("enqueued job {}", r.id)
        };
        return emit(
            a.json,
            &serde_json::json!({ "id": r.id, "duplicate": r.duplicate }),
            &text,
        );
    }
    let value = serde_json::json!({
        "enqueued": total - duplicates, "duplicates": duplicates,
        "first_id": results.first().map(|r| r.id), "last_id": results.last().map(|r| r.id),
        "jobs_per_s": (total as f64 / secs).round(),
    });
    let text = format!(
        "enqueued {} job(s) ({} duplicate key(s) returned their holders) in {:.2}s: {:.0} jobs/s",
        total - duplicates,
        duplicates,
        secs,
        total as f64 / secs
    );
    emit(a.json, &value, &text)
}
