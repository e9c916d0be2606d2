//! Keeps the leases of every job this worker holds alive.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::queue;

/// Every `heartbeat_interval`, renews the lease of every held claim — running *or* still
/// waiting for a slot, so a worker holding more claims than slots never loses the waiting ones.
/// A claim the database no longer recognises (rescued after a stall, or cancelled) has its
/// handler cancelled; its outcome will be refused by the fence anyway.
pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(s.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
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
        let renewed = async {
            let mut conn = s.pool.acquire().await?;
            queue::job_extend_leases(&mut conn, &claims, s.cfg.lease, None).await
        }
        .await;
        let renewed = match renewed {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, held = claims.len(), "heartbeat failed; leases not renewed");
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
            // Still held under the same claim (not just finished by the completer): lost.
            if let Some(h) = held.get(&id).filter(|h| h.claim_seq == seq) {
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
