//! The Parker Flight fleet engine: a durable Postgres job queue and the roles that run on it.
//! It knows no domain table; the job kinds and what they need come from the `jobs` crate.
//!
//! - [`Queue`]: the typed enqueue API (single, bulk, in the caller's transaction);
//! - [`Worker`]: the runtime that claims, runs, heartbeats and drains;
//! - [`Registry`]: the kinds a process runs, with settings from code and config;
//! - [`queue`]: the one home of the queue's SQL (claim, fence, rescue, pause, operator reads);
//! - [`maintenance`]: promotion of due jobs, rescue of expired leases, cleaning of history;
//! - [`scheduler`], [`webhooks`], [`serve`], [`ops`]: the scheduler, the webhook ingress, the
//!   HTTP face and the operator commands;
//! - [`config`], [`database`], [`telemetry`], [`metrics`]: settings, connections and scratch
//!   databases, logs and traces, Prometheus metrics;
//! - [`databases`]: past one Postgres: read replicas for operator reads, and kinds whose jobs
//!   live in a database of their own (docs/scaling.md).
//!
//! Delivery is **at least once** with fenced completion: a job's handler may run more than
//! once (after a crash or a lost lease), but a stale claim can never write an outcome. Side
//! effects therefore carry idempotency keys derived from the job ([`jobs::JobContext`]).
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use tokio_util::sync::CancellationToken;
//!
//! let settings = fleet::config::Settings::load(None)?;
//! let registry = Arc::new(fleet::fleet_registry(&settings)?);
//! // Enqueue…
//! let queue = fleet::Queue::new(pool.clone(), registry.clone());
//! queue.enqueue(&fleet::builtin::Sleep { ms: 10, key: None }, Some("smoke-test")).await?;
//! // …and work, until the token is cancelled (then drain).
//! let stop = CancellationToken::new();
//! fleet::Worker::new(pool, registry, settings.worker.clone()).run(stop).await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod builtin;
pub mod check;
pub mod clock;
pub mod config;
pub mod console;
pub mod database;
pub mod databases;
pub mod enqueue;
pub mod local_cluster;
pub mod maintenance;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod registry;
pub mod scheduler;
pub mod serve;
pub mod snapshot;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

pub use enqueue::Queue;
pub use registry::Registry;
pub use worker::Worker;

/// The registry a `fleet` process runs: the engine's own kinds plus the domain's, with the
/// `[kinds.*]` overrides of `settings` (an override of an unknown kind is an error).
pub fn fleet_registry(settings: &config::Settings) -> Result<Registry, config::ConfigError> {
    let mut r =
        Registry::new(settings.kinds.clone()).with_budget_overrides(settings.budgets.clone());
    builtin::register(&mut r);
    jobs::kinds::register_all(&mut r);
    r.check_overrides()?;
    for (name, d) in &settings.databases {
        if let Some(k) = d.kinds.iter().find(|k| r.get(k).is_none()) {
            return Err(config::ConfigError(format!(
                "databases.{name}.kinds: {k:?} is not a registered kind (known: {})",
                r.kind_names().join(", ")
            )));
        }
    }
    // A budget's token bucket is a row in the database of the claims that debit it, in their
    // own transaction; spenders in two databases would each get the whole rate.
    let home = |kind: &str| {
        settings
            .databases
            .iter()
            .find(|(_, d)| d.kinds.iter().any(|k| k == kind))
            .map_or(config::MAIN_DATABASE, |(name, _)| name.as_str())
    };
    for b in r.budgets() {
        let mut spent_in: std::collections::BTreeMap<&str, String> = Default::default();
        for kind in r.kind_names() {
            if r.budgets_of(&kind).iter().any(|s| s.name == b.name) {
                spent_in.entry(home(&kind)).or_insert(kind);
            }
        }
        if spent_in.len() > 1 {
            let homes: Vec<String> = spent_in
                .iter()
                .map(|(db, kind)| format!("{kind} in database {db}"))
                .collect();
            return Err(config::ConfigError(format!(
                "budget {:?} is spent by kinds in different databases ({}): a budget lives in one \
                 database, so keep its kinds together or give each database its own budget",
                b.name,
                homes.join(", ")
            )));
        }
    }
    Ok(r)
}
