//! The queue snapshot behind the metrics' gauges: read from every database (each from its read
//! replica when it has one) over unfinished jobs only, every `serve.metrics_refresh`, so that a
//! scrape never touches the database. When a refresh fails the previous values stay and
//! `fleet_database_up` is 0.

use std::sync::OnceLock;

use crate::{databases::Database, metrics::metrics, queue};

/// The rate budgets whose levels the snapshot reads (set by the process from its registry).
static BUDGETS: OnceLock<Vec<crate::registry::BudgetSpec>> = OnceLock::new();

/// Makes the snapshot report `budgets` (`fleet_budget_tokens`, `fleet_budget_blocked_seconds`).
/// The first call wins.
pub fn watch_budgets(budgets: Vec<crate::registry::BudgetSpec>) {
    let _ = BUDGETS.set(budgets);
}

/// Reads the queue gauges from the database (unfinished jobs only) into the metrics. On error
/// the previous values stay and `fleet_database_up` is 0.
#[cfg(any(test, feature = "testkit"))]
pub async fn refresh_snapshot(db: &jobs::Db) -> Result<(), sqlx::Error> {
    refresh_snapshot_of(&[Database::primary_only(
        crate::config::MAIN_DATABASE,
        db.clone(),
    )])
    .await
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
        // The domain's tables live in the main database (the first).
        let (refunds, requests) = match dbs.first() {
            Some(main) => (
                Some(jobs::report::refund_gauges(&main.reads).await?),
                jobs::data_rights::open_gauges(&main.reads).await?,
            ),
            None => (None, Vec::new()),
        };
        Ok::<_, sqlx::Error>((gauges, paused, lags, budgets, refunds, requests))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
        Ok(Ok((gauges, paused, lags, budgets, refunds, requests))) => {
            for (kind, open, oldest) in &requests {
                m.data_requests_open.with_label_values(&[kind]).set(*open);
                m.data_request_oldest_open_seconds
                    .with_label_values(&[kind])
                    .set(oldest.max(0.0));
            }
            if let Some(r) = &refunds {
                m.refunds.reset();
                for (status, n) in &r.by_status {
                    m.refunds.with_label_values(&[status]).set(*n);
                }
                m.refunds_owed.set(r.owed);
                m.refund_pending_oldest_seconds
                    .set(r.oldest_pending_s.unwrap_or(0.0).max(0.0));
            }
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
            crate::metrics::snapshot_taken();
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

/// Refreshes the snapshot (when a pool is given) and renders the text exposition (tests and
/// one-off scrapes).
#[cfg(any(test, feature = "testkit"))]
pub async fn render(db: Option<&jobs::Db>) -> Result<String, sqlx::Error> {
    if let Some(db) = db {
        refresh_snapshot(db).await?;
    }
    Ok(crate::metrics::render_text())
}
