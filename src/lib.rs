//! The Parker Flight fleet engine: a durable Postgres job queue and the roles that run on it.
//! It knows no domain table; the job kinds and what they need come from the `jobs` crate.
//!
//! What an application embedding the engine uses:
//! - the job contract, from the `jobs` crate: [`jobs::Job`], [`jobs::JobContext`],
//!   [`jobs::JobError`], [`jobs::NewJob`];
//! - [`Registry`]: the kinds a process runs, with settings from code and config
//!   ([`fleet_registry`]: the fleet's own);
//! - [`Queue`]: the typed enqueue API (single, bulk, in the caller's transaction);
//! - [`Worker`]: claims, runs, heartbeats and drains ([`Worker::run`]), or runs one job to its
//!   outcome in the caller's task ([`Worker::work_one`], for tests);
//! - [`Scheduler`]: cron schedules, one job per tick whatever the number of schedulers;
//! - [`Ops`]: the operator commands (inspect, replay, cancel, pause, drain, prune), audited;
//! - [`config`]: the settings and their errors; [`database`]: connecting, migrating, checking
//!   the schema; [`databases`]: kinds in databases of their own, read replicas;
//!   [`clock`]: the time roles act at; [`types`]: the records the API speaks;
//!   [`telemetry`]: logs and traces; [`builtin`]: the engine's own diagnostic kind.
//!
//! Cargo features: `cli` (default) builds the `fleet` binary's command line (`fleet::cli`: roles,
//! console, webhook ingress, benchmarks, the demo and its throwaway Postgres); turn it off to
//! link the engine alone. `testkit` exports test support (the `testkit` module: scratch
//! databases, throwaway clusters, fixtures) and the engine's internals to integration tests;
//! no production build turns it on.
//!
//! Delivery is **at least once** with fenced completion: a job's handler may run more than
//! once (after a crash or a lost lease), but a stale claim can never write an outcome. Side
//! effects therefore carry idempotency keys derived from the job ([`jobs::JobContext`]).
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
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

/// Declares modules that are the engine's internals: crate-private, and public only with the
/// `testkit` feature, for the integration tests that reach inside (the queue's statements, the
/// maintenance passes, the console's and the webhooks' routers on their own).
macro_rules! internal {
    ($($(#[$attr:meta])* mod $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "testkit")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "testkit"))]
        pub(crate) mod $name;
    )*};
}

#[cfg(feature = "apalis")]
pub mod apalis;
pub mod builtin;
pub mod clock;
pub mod config;
pub mod database;
pub mod databases;
pub mod enqueue;
pub mod ops;
pub mod registry;
pub mod scheduler;
pub mod telemetry;
pub mod types;
pub mod worker;

internal! {
    mod maintenance;
    mod metrics;
    mod queue;
}

// What the `fleet` binary's roles and tools add to the engine: the HTTP face, the console, the
// webhook ingress, the gauges' snapshot, `fleet check`, and the throwaway clusters of the demo
// and the benchmarks. An embedding build (no `cli`) compiles none of it.
#[cfg(any(feature = "cli", feature = "testkit"))]
internal! {
    mod check;
    mod console;
    mod local_cluster;
    mod serve;
    mod snapshot;
    mod webhooks;
}

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use enqueue::{EnqueueError, Queue};
pub use ops::Ops;
pub use registry::Registry;
pub use scheduler::Scheduler;
pub use worker::Worker;

/// The registry a `fleet` process runs: the engine's own kinds plus the domain's, with the
/// `[kinds.*]` overrides of `settings` (an override of an unknown kind is an error).
pub fn fleet_registry(settings: &config::Settings) -> Result<Registry, config::ConfigError> {
    let mut r =
        Registry::new(settings.kinds.clone()).with_budget_overrides(settings.budgets.clone());
    builtin::register(&mut r);
    jobs::kinds::register_all(&mut r);
    for (kind, o) in &settings.kinds {
        if !o.external {
            continue;
        }
        if r.get(kind).is_some() {
            return Err(config::ConfigError::new(
                format!("kinds.{kind}.external"),
                format!(
                    "kinds.{kind}.external: {kind:?} is a kind of this binary's own, run by its \
                     workers; only a kind no code here registers can be external"
                ),
            ));
        }
        r.declare_external(kind, jobs::KindDefaults::default());
    }
    r.check_overrides()?;
    for (name, d) in &settings.databases {
        if let Some(k) = d.kinds.iter().find(|k| r.get(k).is_none()) {
            return Err(config::ConfigError::new(
                format!("databases.{name}.kinds"),
                format!(
                    "databases.{name}.kinds: {k:?} is not a registered kind (known: {})",
                    r.kind_names().join(", ")
                ),
            ));
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
            return Err(config::ConfigError::new(
                format!("budgets.{}", b.name),
                format!(
                "budget {:?} is spent by kinds in different databases ({}): a budget lives in one \
                 database, so keep its kinds together or give each database its own budget",
                b.name,
                homes.join(", ")
            ),
            ));
        }
    }
    Ok(r)
}
