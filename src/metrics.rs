//! Prometheus metrics of a fleet process. Counters are per process (scrape every worker);
//! queue depth and lag are read from the database at scrape time, so any process serving
//! `/metrics` reports the whole queue. Labels are kinds, states, classes and reasons — never
//! ids or PII.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Jobs per kind and state (from the database at scrape time).
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest ready job per kind, seconds (from the database at scrape time).
    pub queue_lag_seconds: GaugeVec,
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
        Opts::new("fleet_queue_depth", "Jobs per kind and state."),
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
    Metrics {
        registry,
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

/// Refreshes the database gauges (when a pool is given) and renders the text exposition.
pub async fn render(pool: Option<&PgPool>) -> Result<String, sqlx::Error> {
    let m = metrics();
    if let Some(pool) = pool {
        let mut conn = pool.acquire().await?;
        let stats = queue::job_stats(&mut conn, None).await?;
        m.queue_depth.reset();
        m.queue_lag_seconds.reset();
        for k in &stats {
            for (state, n) in &k.states {
                m.queue_depth.with_label_values(&[&k.kind, state]).set(*n);
            }
            m.queue_lag_seconds
                .with_label_values(&[&k.kind])
                .set(k.oldest_available_age_s.unwrap_or(0.0).max(0.0));
        }
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    Ok(String::from_utf8(buf).expect("prometheus text is UTF-8"))
}
