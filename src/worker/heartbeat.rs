//! Keeps the leases of every job this worker holds alive, and the worker's own row in the
//! registry (`fleet_workers`) fresh.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::{database::health::FailureStreak, queue};

/// Every `heartbeat_interval`, renews the lease of every held claim — running *or* still
/// waiting for a slot, so a worker holding more claims than slots never loses the waiting ones.
/// A claim the database no longer recognises (rescued after a stall, or cancelled) has its
/// handler cancelled; its outcome will be refused by the fence anyway.
pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(s.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registry_failures = FailureStreak::new("renewing the worker's registry row failed");
    let mut lease_failures = FailureStreak::new("the heartbeat failed: leases not renewed");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        beat(&s, &mut registry_failures).await;
        let claims: Vec<(i64, i32)> = s
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(id, h)| (*id, h.claim_seq))
            .collect();
        if claims.is_empty() {
            continue;
        }
        let renewed = queue::job_extend_leases(&s.db, &claims, s.cfg.lease, s.clock.now()).await;
        let renewed = match renewed {
            Ok(r) => {
                lease_failures.succeeded();
                r
            }
            Err(e) => {
                lease_failures.failed(&s.db, &e);
                continue;
            }
        };
        if renewed.len() == claims.len() {
            continue;
        }
        let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
        let held = s.held.lock().unwrap();
        for (id, seq) in claims {
            if renewed.contains(&id) {
                continue;
            }
            // Still held under the same claim, and its handler has not finished: lost. (A
            // finished handler's outcome may have landed since the renewal was built.)
            if let Some(h) = held
                .get(&id)
                .filter(|h| h.claim_seq == seq && !h.outcome_queued)
            {
                tracing::warn!(
                    job.id = id,
                    claim_seq = seq,
                    "lease lost: cancelling the handler"
                );
                h.cancel.cancel();
            }
        }
    }
}

/// What this worker says of itself in the registry.
fn info(s: &Shared) -> queue::WorkerInfo {
    queue::WorkerInfo {
        id: s.worker_id.clone(),
        host: super::hostname(),
        pid: std::process::id() as i32,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        queues: s.cfg.queues.clone(),
        kinds: s.registry.kind_names(),
        concurrency: s.cfg.concurrency as i32,
    }
}

/// Registers the worker before its first claim. A failure is logged, not fatal: the heartbeat
/// registers it again once the database answers.
pub(crate) async fn register(s: &Shared) {
    let r = queue::worker_register(&s.db, &info(s)).await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "registering the worker failed; the heartbeat retries");
    }
}

/// Renews the worker's row (registering again if it was forgotten during a stall).
async fn beat(s: &Shared, failures: &mut FailureStreak) {
    let held = s.held.lock().unwrap().len() as i32;
    let completed = s
        .counters
        .completed
        .load(std::sync::atomic::Ordering::Relaxed) as i64;
    let r = async {
        if !queue::worker_heartbeat(&s.db, &s.worker_id, held, completed).await? {
            queue::worker_register(&s.db, &info(s)).await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match r {
        Ok(()) => failures.succeeded(),
        Err(e) => failures.failed(&s.db, &e),
    }
}

/// Removes the worker's row on a clean stop.
pub(crate) async fn deregister(s: &Shared) {
    let r = queue::worker_deregister(&s.db, &s.worker_id).await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "removing the worker's registry row failed; it is forgotten later");
    }
}
