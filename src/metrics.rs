//! Prometheus metrics of a fleet process (docs/metrics.md lists every one). Counters are per
//! process (scrape every worker and server). The queue gauges come from a snapshot that a
//! background task refreshes every `serve.metrics_refresh` with queries over unfinished jobs
//! only ([`crate::snapshot`]); a scrape never touches the database. When the database is
//! down the last snapshot is served, with its age and `fleet_database_up 0`, and every process
//! counter stays. Labels are kinds, states, classes and reasons — never ids or PII.

// The queue gauges and the text exposition are the serve role's (its snapshot and /metrics): a
// build of the engine alone (no `cli`, no `testkit`) only counts.
#![cfg_attr(not(any(feature = "cli", feature = "testkit")), allow(dead_code))]

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Every registered metric's name (read by the unit test that holds docs/metrics.md to
    /// them).
    #[cfg_attr(not(test), allow(dead_code))]
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
    /// A fetch loop's claim round, wall time: its statements' round trips and the start of
    /// the jobs it handed over. Its sum over a second is the share of time the loop spent
    /// claiming: near 1, the claim loop is the worker's bottleneck (docs/metrics.md).
    pub claim_round_seconds: Histogram,
    /// A completer's outcome write, wall time (retries included).
    pub outcome_write_seconds: Histogram,
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
    /// Refunds per Stripe status (from the snapshot, main database).
    pub refunds: IntGaugeVec,
    /// Bookings whose refund failed with no payout recorded: money owed (from the snapshot).
    pub refunds_owed: IntGauge,
    /// Age of the oldest refund still pending, 0 when none (from the snapshot).
    pub refund_pending_oldest_seconds: Gauge,
    /// Travelers' erasure and export requests open, by kind (from the snapshot).
    pub data_requests_open: IntGaugeVec,
    /// Age of the oldest open request, by kind, 0 when none (from the snapshot): the law
    /// gives 30 days.
    pub data_request_oldest_open_seconds: GaugeVec,
    /// Provider calls by provider, endpoint and outcome (`ok` or the failure class), timed.
    pub provider_call_seconds: HistogramVec,
    /// Bookings that reached a final state in this process, by outcome and failure reason.
    pub bookings: IntCounterVec,
    /// Seconds from a booking's creation to its final state, by outcome.
    pub booking_seconds: HistogramVec,
    /// PaymentIntents the bookings counted in `bookings` created, by outcome.
    pub booking_payment_intents: IntCounterVec,
    /// Card holds Stripe declined, by decline code.
    pub card_declines: IntCounterVec,
    /// Disputes opened on our charges, as this process reconciled them.
    pub disputes: IntCounter,
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
    let round_buckets = vec![
        0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
    ];
    let claim_round_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "fleet_worker_claim_round_seconds",
            "A fetch loop's claim round, wall time.",
        )
        .buckets(round_buckets.clone()),
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(claim_round_seconds.clone()));
    let outcome_write_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "fleet_worker_outcome_write_seconds",
            "A completer's outcome write, wall time.",
        )
        .buckets(round_buckets),
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(outcome_write_seconds.clone()));
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
    let refunds = IntGaugeVec::new(
        Opts::new("fleet_refunds", "Refunds per Stripe status (pending, succeeded, failed, …)."),
        &["status"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(refunds.clone()));
    let refunds_owed = IntGauge::new(
        "fleet_refunds_owed",
        "Bookings whose refund failed with no payout recorded since: money owed to travelers.",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(refunds_owed.clone()));
    let refund_pending_oldest_seconds = Gauge::new(
        "fleet_refund_pending_oldest_seconds",
        "Seconds since the oldest pending refund was last updated (0 when none is pending).",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(refund_pending_oldest_seconds.clone()));
    let data_requests_open = IntGaugeVec::new(
        Opts::new(
            "fleet_data_requests_open",
            "Travelers' erasure and export requests not yet done, by kind.",
        ),
        &["kind"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(data_requests_open.clone()));
    let data_request_oldest_open_seconds = GaugeVec::new(
        Opts::new(
            "fleet_data_request_oldest_open_seconds",
            "Seconds since the oldest open erasure or export request was made, by kind (0 when none); due within 30 days.",
        ),
        &["kind"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(data_request_oldest_open_seconds.clone()));
    let provider_call_seconds = HistogramVec::new(
        HistogramOpts::new(
            "fleet_provider_call_seconds",
            "Provider API calls (Stripe, Duffel, Resend) by endpoint and outcome: ok, rejected, invalid, rate_limited, transient, ambiguous.",
        )
        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]),
        &["provider", "endpoint", "outcome"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(provider_call_seconds.clone()));
    let bookings = IntCounterVec::new(
        Opts::new(
            "fleet_bookings_total",
            "Bookings that reached a final state: ticketed, failed or cancelled, by failure reason.",
        ),
        &["outcome", "reason"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(bookings.clone()));
    let booking_seconds = HistogramVec::new(
        HistogramOpts::new(
            "fleet_booking_seconds",
            "Seconds from a booking's creation (the fare found) to its final state, by outcome.",
        )
        .buckets(vec![0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]),
        &["outcome"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(booking_seconds.clone()));
    let booking_payment_intents = IntCounterVec::new(
        Opts::new(
            "fleet_booking_payment_intents_total",
            "PaymentIntents created by the bookings in fleet_bookings_total, by outcome.",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(booking_payment_intents.clone()));
    let card_declines = IntCounterVec::new(
        Opts::new("fleet_card_declines_total", "Card holds Stripe declined, by decline code."),
        &["code"],
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(card_declines.clone()));
    let disputes = IntCounter::new(
        "fleet_disputes_total",
        "Disputes (chargebacks) opened on our charges (charge.dispute.created, reconciled).",
    )
    .expect("valid metric");
    register(&registry, &names, Box::new(disputes.clone()));
    Metrics {
        bookings,
        booking_seconds,
        booking_payment_intents,
        card_declines,
        disputes,
        provider_call_seconds,
        refunds,
        refunds_owed,
        refund_pending_oldest_seconds,
        data_requests_open,
        data_request_oldest_open_seconds,
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
        claim_round_seconds,
        outcome_write_seconds,
        lease_rescues,
        webhook_rejections,
        queue_depth,
        queue_lag_seconds,
    }
}

impl Metrics {
    /// Every registered metric's name, whether or not it has a series yet (docs/metrics.md
    /// has a row for each).
    #[cfg(test)]
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Feeds the domain's provider clients' calls into `fleet_provider_call_seconds`.
struct ProviderCalls;

impl jobs::providers::CallObserver for ProviderCalls {
    fn observed(
        &self,
        provider: &'static str,
        endpoint: &'static str,
        seconds: f64,
        outcome: &'static str,
    ) {
        metrics()
            .provider_call_seconds
            .with_label_values(&[provider, endpoint, outcome])
            .observe(seconds);
    }
}

/// Feeds the domain's money signals (bookings' outcomes, declines, disputes) into the
/// `fleet_bookings_total` family.
struct MoneySignals;

impl jobs::observe::MoneyObserver for MoneySignals {
    fn booking_finished(
        &self,
        outcome: &'static str,
        reason: &str,
        seconds: f64,
        payment_intents: u32,
    ) {
        let m = metrics();
        m.bookings
            .with_label_values(&[outcome, jobs::observe::label(reason)])
            .inc();
        m.booking_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
        m.booking_payment_intents
            .with_label_values(&[outcome])
            .inc_by(u64::from(payment_intents));
    }

    fn card_declined(&self, code: &str) {
        metrics().card_declines.with_label_values(&[code]).inc();
    }

    fn dispute_opened(&self) {
        metrics().disputes.inc();
    }
}

/// Makes this process's provider calls and money signals count in the metrics (every worker
/// calls it at start; the first call installs the observers, later ones do nothing).
pub fn observe_domain() {
    jobs::providers::set_call_observer(Box::new(ProviderCalls));
    jobs::observe::set_money_observer(Box::new(MoneySignals));
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

/// When the queue snapshot was last taken (None: never): [`crate::snapshot`] sets it, a render
/// reports its age.
static SNAPSHOT_AT: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Records that the queue snapshot was just taken.
pub(crate) fn snapshot_taken() {
    *SNAPSHOT_AT.lock().unwrap() = Some(std::time::Instant::now());
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
