//! Test support, public only with the `testkit` feature (the integration tests turn it on; no
//! production build exports it): what a test of an application on the engine, or of the
//! engine itself, needs besides the public API.
//!
//! - [`ScratchDb`]: a uniquely named, migrated database dropped on `Drop`, on the server
//!   [`server_url`] finds (`DATABASE_URL`, else the local server, else a throwaway cluster);
//! - [`LocalCluster`]: a throwaway Postgres primary or hot standby of the test's own, with
//!   the settings a test needs (TLS, `max_connections`, roles); [`PgBouncer`] in front of it;
//! - [`fixtures`]: bulk history and table settings for benchmarks.
//!
//! The steppable worker ([`crate::Worker::work_one`], [`crate::Worker::work_until_idle`]) and
//! the clock ([`crate::clock::ManualClock`]) are public API: an application's own tests step
//! its handlers with them.

pub use crate::database::scratch::{
    create_database, drop_database, resolve_server_url, server_url, url_with_database, ScratchDb,
};
pub use crate::local_cluster::{ClusterConfig, LocalCluster, PgBouncer, PoolMode};
pub use crate::queue::fixtures;
