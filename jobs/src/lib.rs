//! Parker Flight's domain crate: the job contract the fleet engine runs ([`job`]) and, as
//! they land, the job kinds, provider clients and PII crypto.
//!
//! The engine depends on this crate, never the reverse.

#![warn(missing_docs)]

pub mod airline_change;
pub mod audit;
pub mod backfill;
pub mod booking;
pub mod campaign;
pub mod campaign_health;
pub mod data_rights;
pub mod db;
pub mod deps;
pub mod followups;
pub mod invariants;
pub mod job;
pub mod kinds;
pub mod notify;
pub mod observe;
pub mod operator;
pub mod pii;
pub mod pii_keys;
pub mod providers;
pub mod report;
pub mod seed;
pub mod webhook_events;

pub use db::{Db, Health, HealthState, Pooler};
pub use deps::Deps;
pub use job::{
    BoxFuture, BudgetDefaults, EnqueueError, EnqueueOptions, Enqueued, Enqueuer, Exhausted,
    Extensions, Job, JobContext, JobError, KindDefaults, NewJob, RateLimits, Registrar,
};
