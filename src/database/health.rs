//! Whether a database answers: a monitor per database a process uses, checking once a second
//! on a connection of its own, each check bounded; a change is said once (a log line, the
//! `fleet_database_reachable` gauge, the `fleet_database_outages_total` counter) and kept in
//! the database's [`jobs::Health`], which every loop reads.
//!
//! **Why a connection of its own.** A pool's statements cannot tell "the database is gone"
//! from "this statement is slow", and a black-holed network (connections open, no bytes, no
//! reset) fails nothing at all: a statement waits as long as TCP retransmits. A dedicated
//! connection with a 2 s bound on every check, re-opened (also bounded) after any failure,
//! notices within [`NOTICE_WITHIN`] whatever the fault: a refused or reset connection, a full
//! server (`too many clients`), a silent network.
//!
//! What follows from a down reading, elsewhere: the worker's fetch loop stops claiming until
//! the database answers again; its loops log their failed statements at debug level instead of
//! once each; `/readyz` answers 503 with the reason; and the rescuer waits a lease after the
//! recovery before it takes any lease back (docs/operations.md, "When the database stops
//! answering").

use std::time::{Duration, Instant};

use jobs::Db;
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

/// Time between checks.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Bound on one check (connecting included).
pub const CHECK_WITHIN: Duration = Duration::from_secs(2);

/// How soon after the database stops answering the process says so.
pub const NOTICE_WITHIN: Duration = Duration::from_secs(3);

/// Watches `db` (named `name` in logs and metrics) until `stop`. The first check runs at once.
pub async fn watch(db: Db, name: String, stop: CancellationToken) {
    let m = crate::metrics::metrics();
    m.database_reachable.with_label_values(&[&name]).set(1);
    let opts = db.session_independent_pool().connect_options();
    let mut conn: Option<PgConnection> = None;
    let mut down_reason = String::new();
    loop {
        let check = async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&opts).await?);
            }
            // One simple-protocol statement: nothing prepared, fine behind any pooler.
            conn.as_mut()
                .expect("connected")
                .execute(sqlx::raw_sql("SELECT 1"))
                .await
                .map(|_| ())
        };
        let result = match tokio::time::timeout(CHECK_WITHIN, check).await {
            Ok(r) => r.map_err(|e| super::connect_reason(&e, "", None)),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(CHECK_WITHIN)
            )),
        };
        let health = db.health();
        match result {
            Ok(()) => {
                if let Some(was) = changed(health, true) {
                    m.database_reachable.with_label_values(&[&name]).set(1);
                    tracing::info!(database = %name, after = %humantime::format_duration(round(was)),
                        "the database answers again: claiming resumes");
                }
            }
            Err(reason) => {
                // Whatever the connection was doing, it is not trusted again.
                if let Some(c) = conn.take() {
                    drop(c);
                }
                if changed(health, false).is_some() {
                    m.database_reachable.with_label_values(&[&name]).set(0);
                    m.database_outages.with_label_values(&[&name]).inc();
                    tracing::warn!(database = %name, reason = %reason,
                        "the database does not answer: claiming stops until it does; failed \
                         statements are not logged one by one meanwhile");
                    down_reason = reason;
                } else if reason != down_reason {
                    // Still down, for another reason (a refused connection becoming a full
                    // server): said once per reason.
                    tracing::warn!(database = %name, reason = %reason,
                        "the database still does not answer");
                    down_reason = reason;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.cancelled() => {
                if let Some(c) = conn.take() {
                    let _ = c.close().await;
                }
                return;
            }
        }
    }
}

/// Records a reading; when it changes the state, how long the previous state lasted.
fn changed(health: &jobs::Health, up: bool) -> Option<Duration> {
    let before = health.get();
    health
        .set(up)
        .then(|| Instant::now().saturating_duration_since(before.since))
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// A loop's failures in a row, said once: the first as a warning (while the database is
/// known to answer; at debug level once the monitor has said it does not), the rest at debug
/// level, and the end of the streak once. A loop retrying every few milliseconds through a
/// reset storm would otherwise log every attempt.
#[derive(Debug)]
pub struct FailureStreak {
    what: &'static str,
    failures: u32,
}

impl FailureStreak {
    /// A streak of `what` failing (`"writing outcomes failed"`).
    pub fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
    }

    /// One more failure.
    pub fn failed(&mut self, db: &Db, e: &dyn std::fmt::Display) {
        self.failures += 1;
        if self.failures == 1 && db.health().is_up() {
            tracing::warn!(error = %e, "{}; retrying (further failures in a row are not logged)", self.what);
        } else {
            tracing::debug!(error = %e, failures = self.failures, "{}", self.what);
        }
    }

    /// A success: ends the streak, saying how long it was when it was more than one.
    pub fn succeeded(&mut self) {
        if self.failures > 1 {
            tracing::info!(
                failures = self.failures,
                "{}: done again after failures in a row",
                self.what
            );
        }
        self.failures = 0;
    }
}
