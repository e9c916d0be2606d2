//! Prometheus metrics of a fleet process (docs/metrics.md lists every one). Counters are per
//! process (scrape every worker and server). The queue gauges come from a snapshot that a
//! background task refreshes every `serve.metrics_refresh` with queries over unfinished jobs
//! only ([`refresh_snapshot`]); a scrape never touches the database. When the database is
//! down the last snapshot is served, with its age and `fleet_database_up 0`, and every process
//! counter stays. Labels are kinds, states, classes and reasons — never ids or PII.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

use crate::queue;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Jobs enqueued (duplicates excluded), by kind.
    pub enqueued: IntCounterVec,
    /// Jobs completed, by kind.
    pub completed: IntCounterVec,
    /// Failed attempts that will be retried, by kind and error class.
    pub failed: IntCounterVec,
    /// Jobs that went dead, by kind.
    pub dead: IntCounterVec,
    /// Handler run time, by kind.
    pub run_seconds: HistogramVec,
    /// Running jobs whose lease expired and were taken back.
    pub lease_rescues: IntCounter,
    /// Webhook deliveries refused, by provider and reason.
    pub webhook_rejections: IntCounterVec,
    /// Unfinished jobs per kind and state (from the snapshot).
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest ready job per kind, seconds (from the snapshot).
    pub queue_lag_seconds: GaugeVec,
    /// 1 for a paused kind, by how (`paused`, `draining`) (from the snapshot).
    pub kind_paused: IntGaugeVec,
    /// 1 when the last snapshot refresh reached the database, else 0.
    pub database_up: IntGauge,
    /// Seconds since the snapshot was taken (at render time).
    pub snapshot_age_seconds: Gauge,
    /// Snapshot refreshes that failed.
    pub snapshot_failures: IntCounter,
    /// HTTP requests or connections turned away by a limit, by reason (`overloaded`,
    /// `too_many_connections`, `error`).
    pub http_shed: IntCounterVec,
    /// Webhook deliveries accepted (stored, or a known duplicate), by provider.
    pub webhook_accepted: IntCounterVec,
}

fn build() -> Metrics {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        c
    };
    let enqueued = counter(
        "fleet_jobs_enqueued_total",
        "Jobs enqueued (duplicates excluded).",
        &["kind"],
    );
    let completed = counter("fleet_jobs_completed_total", "Jobs completed.", &["kind"]);
    let failed = counter(
        "fleet_jobs_failed_total",
        "Failed attempts that will be retried.",
        &["kind", "class"],
    );
    let dead = counter("fleet_jobs_dead_total", "Jobs that went dead.", &["kind"]);
    let webhook_rejections = counter(
        "fleet_webhook_rejections_total",
        "Webhook deliveries refused.",
        &["provider", "reason"],
    );
    let http_shed = counter(
        "fleet_http_shed_total",
        "HTTP requests or connections turned away by a limit.",
        &["reason"],
    );
    let webhook_accepted = counter(
        "fleet_webhook_accepted_total",
        "Webhook deliveries accepted (stored, or a known duplicate).",
        &["provider"],
    );
    let run_seconds = HistogramVec::new(
        HistogramOpts::new("fleet_job_run_seconds", "Handler run time.").buckets(vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]),
        &["kind"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(run_seconds.clone()))
        .expect("unique metric");
    let lease_rescues = IntCounter::new(
        "fleet_lease_rescues_total",
        "Running jobs whose lease expired and were taken back.",
    )
    .expect("valid metric");
    registry
        .register(Box::new(lease_rescues.clone()))
        .expect("unique metric");
    let queue_depth = IntGaugeVec::new(
        Opts::new("fleet_queue_depth", "Unfinished jobs per kind and state."),
        &["kind", "state"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(queue_depth.clone()))
        .expect("unique metric");
    let queue_lag_seconds = GaugeVec::new(
        Opts::new(
            "fleet_queue_lag_seconds",
            "Age of the oldest ready job per kind.",
        ),
        &["kind"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(queue_lag_seconds.clone()))
        .expect("unique metric");
    let kind_paused = IntGaugeVec::new(
        Opts::new(
            "fleet_kind_paused",
            "1 for a paused kind, by how (paused, draining).",
        ),
        &["kind", "how"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(kind_paused.clone()))
        .expect("unique metric");
    let database_up = IntGauge::new(
        "fleet_database_up",
        "1 when the last queue snapshot reached the database, else 0.",
    )
    .expect("valid metric");
    registry
        .register(Box::new(database_up.clone()))
        .expect("unique metric");
    let snapshot_age_seconds = Gauge::new(
        "fleet_queue_snapshot_age_seconds",
        "Seconds since the queue gauges were read from the database.",
    )
    .expect("valid metric");
    registry
        .register(Box::new(snapshot_age_seconds.clone()))
        .expect("unique metric");
    let snapshot_failures = IntCounter::new(
        "fleet_queue_snapshot_failures_total",
        "Queue snapshot refreshes that failed (the database was unreachable or slow).",
    )
    .expect("valid metric");
    registry
        .register(Box::new(snapshot_failures.clone()))
        .expect("unique metric");
    Metrics {
        registry,
        http_shed,
        webhook_accepted,
        kind_paused,
        database_up,
        snapshot_age_seconds,
        snapshot_failures,
        enqueued,
        completed,
        failed,
        dead,
        run_seconds,
        lease_rescues,
        webhook_rejections,
        queue_depth,
        queue_lag_seconds,
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

/// When the snapshot was last taken (None: never).
static SNAPSHOT_AT: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Reads the queue gauges from the database (unfinished jobs only) into the metrics. On error
/// the previous values stay and `fleet_database_up` is 0.
pub async fn refresh_snapshot(pool: &PgPool) -> Result<(), sqlx::Error> {
    let m = metrics();
    let read = async {
        let mut conn = pool.acquire().await?;
        let gauges = queue::job_gauges(&mut conn, None).await?;
        let paused = queue::kind_list_paused(&mut conn).await?;
        Ok::<_, sqlx::Error>((gauges, paused))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
        Ok(Ok((gauges, paused))) => {
            m.queue_depth.reset();
            m.queue_lag_seconds.reset();
            m.kind_paused.reset();
            for g in &gauges {
                m.queue_depth
                    .with_label_values(&[&g.kind, &g.state])
                    .set(g.count);
                if let Some(age) = g.oldest_age_s {
                    m.queue_lag_seconds
                        .with_label_values(&[&g.kind])
                        .set(age.max(0.0));
                }
            }
            for p in &paused {
                let how = if p.draining_through_id.is_some() {
                    "draining"
                } else {
                    "paused"
                };
                m.kind_paused.with_label_values(&[&p.kind, how]).set(1);
            }
            m.database_up.set(1);
            *SNAPSHOT_AT.lock().unwrap() = Some(std::time::Instant::now());
            Ok(())
        }
        Ok(Err(e)) => {
            m.database_up.set(0);
            m.snapshot_failures.inc();
            Err(e)
        }
        Err(_) => {
            m.database_up.set(0);
            m.snapshot_failures.inc();
            Err(sqlx::Error::PoolTimedOut)
        }
    }
}

/// Refreshes the snapshot now and then every `every` until `stop`.
pub async fn run_snapshots(
    pool: PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = refresh_snapshot(&pool).await {
                    tracing::warn!(error = %e, "refreshing the metrics snapshot failed; serving the last one");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The text exposition of every metric. Never touches the database.
pub fn render_text() -> String {
    let m = metrics();
    let age = SNAPSHOT_AT
        .lock()
        .unwrap()
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(f64::INFINITY);
    m.snapshot_age_seconds.set(age);
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

/// Refreshes the snapshot (when a pool is given) and renders the text exposition (tests and
/// one-off scrapes).
pub async fn render(pool: Option<&PgPool>) -> Result<String, sqlx::Error> {
    if let Some(pool) = pool {
        refresh_snapshot(pool).await?;
    }
    Ok(render_text())
}
