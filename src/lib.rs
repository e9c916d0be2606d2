//! The Parker Flight fleet engine: a durable Postgres job queue and the roles that run on it.
//!
//! - [`queue`]: the one home of the queue's SQL (claim, fence, rescue, pause);
//! - [`enqueue::Queue`]: the typed enqueue API (single, bulk, in the caller's transaction);
//! - [`worker::Worker`]: the runtime that claims, runs, heartbeats and drains;
//! - [`maintenance`]: promotion of due jobs and rescue of expired leases;
//! - [`registry::Registry`]: the kinds a process runs, with settings from code and config;
//! - [`bench`]: the burn-down benchmark behind `fleet bench`.
//!
//! Delivery is **at least once** with fenced completion: a job's handler may run more than
//! once (after a crash or a lost lease), but a stale claim can never write an outcome. Side
//! effects therefore carry idempotency keys derived from the job ([`jobs::JobContext`]).

pub mod bench;
pub mod builtin;
pub mod check;
pub mod config;
pub mod database;
pub mod demo;
pub mod enqueue;
pub mod maintenance;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod registry;
pub mod scheduler;
pub mod seed;
pub mod serve;
pub mod telemetry;
pub mod testkit;
pub mod webhooks;
pub mod worker;

pub use enqueue::Queue;
pub use registry::Registry;
pub use worker::Worker;

/// The dependencies a `fleet worker` gives its handlers. The PII keyring is required: a
/// missing or malformed `FLEET_PII_KEYS` is a start-up error naming the variable. A provider
/// whose key is empty is left unconfigured (logged); any other provider setting error stops
/// start-up.
pub fn fleet_deps(settings: &config::Settings) -> Result<jobs::Deps, config::ConfigError> {
    use jobs::providers::{DuffelClient, ResendClient, StripePayments};
    use std::sync::Arc;
    let keyring = jobs::pii::Keyring::from_env().map_err(|e| config::ConfigError(e.to_string()))?;
    let p = &settings.providers;
    let bad = |which: &str, e: jobs::providers::ProviderConfigError| {
        config::ConfigError(format!("providers.{which}: {}", e.0))
    };
    let mut deps = jobs::Deps {
        keyring: Some(Arc::new(keyring)),
        ..jobs::Deps::default()
    };
    if p.stripe.secret_key.expose().is_empty() {
        tracing::warn!("providers.stripe.secret_key is empty: payment kinds will fail");
    } else {
        deps.payments = Some(Arc::new(
            StripePayments::new(&p.stripe).map_err(|e| bad("stripe", e))?,
        ));
    }
    if p.duffel.access_token.expose().is_empty() {
        tracing::warn!("providers.duffel.access_token is empty: flight kinds will fail");
    } else {
        deps.flights = Some(Arc::new(
            DuffelClient::new(&p.duffel).map_err(|e| bad("duffel", e))?,
        ));
    }
    if p.email.api_key.expose().is_empty() {
        tracing::warn!("providers.email.api_key is empty: email kinds will fail");
    } else {
        deps.email = Some(Arc::new(
            ResendClient::new(&p.email).map_err(|e| bad("email", e))?,
        ));
    }
    Ok(deps)
}

/// The registry a `fleet worker` process runs: the engine's own kinds plus the domain's.
pub fn fleet_registry(settings: &config::Settings) -> Result<Registry, config::ConfigError> {
    let mut r = Registry::new(settings.kinds.clone());
    builtin::register(&mut r);
    r.register::<jobs::backfill::RunBackfill>();
    r.register::<jobs::kinds::booking_attempt::BookingAttempt>();
    r.register::<jobs::kinds::refund_compensation::RefundCompensation>();
    r.register::<jobs::kinds::campaign_scan::CampaignScan>();
    r.register::<jobs::kinds::campaign_search::CampaignSearch>();
    r.register::<jobs::kinds::card_expiry_reminder::CardExpiryReminder>();
    r.register::<jobs::kinds::retention_purge::RetentionPurge>();
    r.register::<jobs::kinds::card_update::CardUpdate>();
    r.register::<jobs::kinds::payment_reconcile::PaymentReconcile>();
    r.register::<jobs::kinds::order_reconcile::OrderReconcile>();
    r.check_overrides()?;
    Ok(r)
}
