//! Prometheus metrics of a fleet process (docs/metrics.md lists every one). Counters are per
//! process (scrape every worker and server). The queue gauges come from a snapshot that a
//! background task refreshes every `serve.metrics_refresh` with queries over unfinished jobs
//! only ([`refresh_snapshot`]); a scrape never touches the database. When the database is
//! down the last snapshot is served, with its age and `fleet_database_up 0`, and every process
//! counter stays. Labels are kinds, states, classes and reasons — never ids or PII.

use std::sync::OnceLock;

use jobs::Db;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{config::MAIN_DATABASE, databases::Database, queue};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Every registered metric's name.
    names: Vec<String>,
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
    /// Time to answer a webhook delivery, by provider (every answer, accepted or not).
    pub webhook_seconds: HistogramVec,
    /// Jobs cancelled by their handler, by kind (operator cancels are in the audit log).
    pub cancelled: IntCounterVec,
    /// Outcomes the fence refused: the claim no longer held the job (rescued after a lease
    /// expiry, or cancelled). Each is a handler run whose result was discarded.
    pub outcomes_refused: IntCounter,
    /// Seconds the read replica of each database is behind its primary (from the snapshot;
    /// only for databases with a `read_url`).
    pub replica_lag_seconds: GaugeVec,
    /// Provider 429s that emptied a rate budget fleet-wide, by budget (this process's).
    pub budget_blocks: IntCounterVec,
    /// Tokens a rate budget holds now, by budget (from the snapshot).
    pub budget_tokens: GaugeVec,
    /// Seconds left on a provider's block of a budget, by budget; 0 when not blocked (from
    /// the snapshot).
    pub budget_blocked_seconds: GaugeVec,
    /// 1 while this process's health check of a database gets an answer, else 0, by database
    /// (`main`, a `[databases.*]` name).
    pub database_reachable: IntGaugeVec,
    /// Times this process found a database stopped answering, by database.
    pub database_outages: IntCounterVec,
}

/// Registers `c`, noting its names (so the docs test sees metrics that have no series yet).
fn register(
    registry: &Registry,
    names: &std::cell::RefCell<Vec<String>>,
    c: Box<dyn prometheus::core::Collector>,
) {
    names
        .borrow_mut()
        .extend(c.desc().iter().map(|d| d.fq_name.clone()));
    registry.register(c).expect("unique metric");
}

fn build() -> Metrics {
    let registry = Registry::new();
    let names = std::cell::RefCell::new(Vec::new());
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        register(&registry, &names, Box::new(c.clone()));
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
    let budget_blocks = counter(
        "fleet_budget_blocks_total",
        "Provider 429s that emptied a rate budget fleet-wide until the provider's reset.",
        &["budget"],
    );
    let database_outages = counter(
        "fleet_database_outages_total",
        "Times this process found a database stopped answering its health check.",
        &["database"],
    );
    let database_reachable = IntGaugeVec::new(
        Opts::new(
            "fleet_database_reachable",
            "1 while this process's health check of a database gets an answer, else 0.",
        ),
        &["database"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(database_reachable.clone()));
    let gauge = |name: &str, help: &str| {
        let g = GaugeVec::new(Opts::new(name, help), &["budget"]).expect("valid metric");
        register(&registry, &names, Box::new(g.clone()));
        g
    };
    let budget_tokens = gauge(
        "fleet_budget_tokens",
        "Tokens a rate budget holds now (0 while a provider's block lasts).",
    );
    let budget_blocked_seconds = gauge(
        "fleet_budget_blocked_seconds",
        "Seconds left on a provider's block of a rate budget; 0 when not blocked.",
    );
    let cancelled = counter(
        "fleet_jobs_cancelled_total",
        "Jobs cancelled by their handler.",
        &["kind"],
    );
    let webhook_seconds = HistogramVec::new(
        HistogramOpts::new(
            "fleet_webhook_request_seconds",
            "Time to answer a webhook delivery (accepted or not).",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0,
        ]),
        &["provider"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(webhook_seconds.clone()));
    let outcomes_refused = IntCounter::new(
        "fleet_outcomes_refused_total",
        "Outcomes refused by the fence: the claim no longer held the job.",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(outcomes_refused.clone()));
    let run_seconds = HistogramVec::new(
        HistogramOpts::new("fleet_job_run_seconds", "Handler run time.").buckets(vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]),
        &["kind"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(run_seconds.clone()));
    let lease_rescues = IntCounter::new(
        "fleet_lease_rescues_total",
        "Running jobs whose lease expired and were taken back.",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(lease_rescues.clone()));
    let queue_depth = IntGaugeVec::new(
        Opts::new("fleet_queue_depth", "Unfinished jobs per kind and state."),
        &["kind", "state"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(queue_depth.clone()));
    let queue_lag_seconds = GaugeVec::new(
        Opts::new(
            "fleet_queue_lag_seconds",
            "Age of the oldest ready job per kind.",
        ),
        &["kind"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(queue_lag_seconds.clone()));
    let kind_paused = IntGaugeVec::new(
        Opts::new(
            "fleet_kind_paused",
            "1 for a paused kind, by how (paused, draining).",
        ),
        &["kind", "how"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(kind_paused.clone()));
    let database_up = IntGauge::new(
        "fleet_database_up",
        "1 when the last queue snapshot reached the database, else 0.",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(database_up.clone()));
    let snapshot_age_seconds = Gauge::new(
        "fleet_queue_snapshot_age_seconds",
        "Seconds since the queue gauges were read from the database.",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(snapshot_age_seconds.clone()));
    let snapshot_failures = IntCounter::new(
        "fleet_queue_snapshot_failures_total",
        "Queue snapshot refreshes that failed (the database was unreachable or slow).",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(snapshot_failures.clone()));
    let replica_lag_seconds = GaugeVec::new(
        Opts::new(
            "fleet_database_replica_lag_seconds",
            "Seconds the read replica is behind its primary (LSN-based: 0 when caught up).",
        ),
        &["database"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(replica_lag_seconds.clone()));
    Metrics {
        replica_lag_seconds,
        registry,
        names: names.into_inner(),
        http_shed,
        webhook_accepted,
        webhook_seconds,
        cancelled,
        outcomes_refused,
        budget_blocks,
        budget_tokens,
        budget_blocked_seconds,
        database_reachable,
        database_outages,
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

impl Metrics {
    /// Every registered metric's name, whether or not it has a series yet (docs/metrics.md
    /// has a row for each).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

/// The rate budgets whose levels the snapshot reads (set by the process from its registry).
static BUDGETS: OnceLock<Vec<crate::registry::BudgetSpec>> = OnceLock::new();

/// Makes the snapshot report `budgets` (`fleet_budget_tokens`, `fleet_budget_blocked_seconds`).
/// The first call wins.
pub fn watch_budgets(budgets: Vec<crate::registry::BudgetSpec>) {
    let _ = BUDGETS.set(budgets);
}

/// When the snapshot was last taken (None: never).
static SNAPSHOT_AT: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Reads the queue gauges from the database (unfinished jobs only) into the metrics. On error
/// the previous values stay and `fleet_database_up` is 0.
pub async fn refresh_snapshot(db: &Db) -> Result<(), sqlx::Error> {
    refresh_snapshot_of(&[Database::primary_only(MAIN_DATABASE, db.clone())]).await
}

/// Reads the queue gauges of every database in `dbs` (each from its read replica when it has
/// one, with the replica's lag) into the metrics; a kind's figures are summed over databases.
/// On any error the previous values stay and `fleet_database_up` is 0.
pub async fn refresh_snapshot_of(dbs: &[Database]) -> Result<(), sqlx::Error> {
    let m = metrics();
    let read = async {
        let mut gauges = Vec::new();
        let mut paused = Vec::new();
        let mut lags = Vec::new();
        let mut budgets: Vec<queue::BudgetState> = Vec::new();
        for db in dbs {
            let reads = &db.reads;
            gauges.extend(queue::job_gauges(reads, None).await?);
            paused.extend(queue::kind_list_paused(reads).await?);
            // A budget lives in the one database its spenders share (checked at start); the
            // others report it untouched (full), so the lowest level is the real one.
            if let Some(specs) = BUDGETS.get().filter(|b| !b.is_empty()) {
                for b in queue::budget_list(reads, specs, None).await? {
                    match budgets
                        .iter_mut()
                        .find(|o: &&mut queue::BudgetState| o.name == b.name)
                    {
                        Some(o) if b.level < o.level || b.blocked_until.is_some() => *o = b,
                        Some(_) => {}
                        None => budgets.push(b),
                    }
                }
            }
            if let Some(lag) = db.replica_lag().await? {
                lags.push((db.name.clone(), lag));
            }
        }
        Ok::<_, sqlx::Error>((gauges, paused, lags, budgets))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
        Ok(Ok((gauges, paused, lags, budgets))) => {
            let now = chrono::Utc::now();
            for b in &budgets {
                m.budget_tokens.with_label_values(&[&b.name]).set(b.level);
                let left = b
                    .blocked_until
                    .map(|t| (t - now).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                m.budget_blocked_seconds
                    .with_label_values(&[&b.name])
                    .set(left);
            }
            m.queue_depth.reset();
            m.queue_lag_seconds.reset();
            m.kind_paused.reset();
            m.replica_lag_seconds.reset();
            let mut depth: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
            let mut oldest: std::collections::BTreeMap<&str, f64> = Default::default();
            for g in &gauges {
                *depth
                    .entry((g.kind.as_str(), g.state.as_str()))
                    .or_default() += g.count;
                if let Some(age) = g.oldest_age_s {
                    let e = oldest.entry(g.kind.as_str()).or_insert(0.0);
                    *e = e.max(age.max(0.0));
                }
            }
            for ((kind, state), n) in depth {
                m.queue_depth.with_label_values(&[kind, state]).set(n);
            }
            for (kind, age) in oldest {
                m.queue_lag_seconds.with_label_values(&[kind]).set(age);
            }
            for (db, lag) in &lags {
                // Unknown lag (no transaction replayed yet, or not a standby) is NaN: an
                // alert on `> N` stays quiet, an absent-series alert does not fire.
                m.replica_lag_seconds
                    .with_label_values(&[db])
                    .set(lag.seconds.unwrap_or(f64::NAN));
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

/// Refreshes the snapshot of `dbs` now and then every `every` until `stop`.
pub async fn run_snapshots(
    dbs: Vec<Database>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = refresh_snapshot_of(&dbs).await {
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
pub async fn render(db: Option<&Db>) -> Result<String, sqlx::Error> {
    if let Some(db) = db {
        refresh_snapshot(db).await?;
    }
    Ok(render_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `fleet_*` name in `text` (a metric family, or a histogram's `_bucket`/`_count`/
    /// `_sum` series reduced to its family).
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("fleet_") {
            let start = i + at;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            if boundary {
                let name = &text[start..end];
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                out.insert(family.to_owned());
            }
            i = end.max(start + 1);
        }
        out
    }

    #[test]
    fn every_registered_metric_is_documented_and_every_alert_names_a_real_one() {
        let registered: std::collections::BTreeSet<String> =
            metrics().names().iter().cloned().collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
        let rows: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `fleet_"))
            .filter_map(|l| l.split('`').next())
            .map(|n| format!("fleet_{n}"))
            .collect();
        assert_eq!(
            registered, rows,
            "docs/metrics.md has one row per registered metric"
        );
        let alerts = std::fs::read_to_string(root.join("docs/alerts/fleet.rules.yml")).unwrap();
        let used = names_in(&alerts);
        assert!(!used.is_empty());
        let unknown: Vec<_> = used.difference(&registered).collect();
        assert!(
            unknown.is_empty(),
            "alerts name metrics that do not exist: {unknown:?}"
        );
    }
}
