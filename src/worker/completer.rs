//! The completer: the last step of a job's life inside a worker. It writes the outcomes the
//! [executor](super::executor) decided ([`super::outcome`]) in batches, each row fenced on its
//! claim ([`crate::queue::job_set_outcome_many`]), on a session of its own whose plans are
//! pinned ([`crate::queue::OutcomeWriter`]), and only then lets the claim go.
//!
//! Contract:
//! - a claim leaves `held` only once its outcome is written or refused, so its lease is renewed
//!   until then;
//! - a refused outcome (the claim was rescued or cancelled meanwhile) changes nothing and is
//!   counted as lost; an outcome whose write committed but whose acknowledgement was lost is
//!   recognised as ours on the retry ([`crate::queue::job_outcome_written_by`]);
//! - a failing database is retried with backoff: outcomes are kept, never dropped.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    outcome::{NextState, Outcome},
    Shared,
};
use crate::queue;

/// Drains `rx` until every sender is gone, writing whatever has queued up in one statement
/// (no artificial delay: batches form while the previous write is in flight). A claim leaves
/// `held` only once its outcome is written or refused, so the heartbeat keeps its lease alive
/// until then. A failing database is retried with backoff, so this returns only once every
/// outcome is written; whatever is still in `held` when the caller stops waiting is unwritten.
pub(crate) async fn run(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outcome>) {
    let max = s.cfg.completer_batch;
    let mut failures =
        crate::database::health::FailureStreak::new("writing outcomes failed (they are kept)");
    let mut batch: Vec<Outcome> = Vec::with_capacity(max);
    let mut rows = Vec::with_capacity(max);
    // A session of its own with pinned generic plans, where the database offers sessions.
    let mut writer = queue::OutcomeWriter::new(&s.db);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        rows.clear();
        rows.extend(batch.iter().map(Outcome::row));
        let mut backoff = Duration::from_millis(50);
        let mut failed_before = false;
        let written = loop {
            let r = async {
                let mut written = writer.set_outcome_many(&rows, s.clock.now()).await?;
                if failed_before && written.len() < batch.len() {
                    // An earlier try may have committed before its connection dropped: the
                    // fence now refuses the same outcomes, which are ours, already written.
                    let refused: Vec<(i64, i32)> = batch
                        .iter()
                        .filter(|o| !written.contains(&o.id))
                        .map(|o| (o.id, o.claim_seq))
                        .collect();
                    let ours = writer.outcome_written_by(&refused).await?;
                    if !ours.is_empty() {
                        tracing::info!(
                            outcomes = ours.len(),
                            "outcomes found already written by their own claims (a lost acknowledgement)"
                        );
                    }
                    written.extend(ours);
                }
                Ok::<_, sqlx::Error>(written)
            }
            .await;
            match r {
                Ok(w) => {
                    failures.succeeded();
                    break w;
                }
                Err(e) => {
                    failed_before = true;
                    failures.failed(&s.db, &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        record(&s, &batch, &written);
        batch.clear();
        s.wake.notify_one();
    }
    writer.close().await;
}

/// Lets the claims of `batch` go and counts what happened to each: written, or refused by the
/// fence (lost).
pub(crate) fn record(s: &Shared, batch: &[Outcome], written: &[i64]) {
    let written: std::collections::HashSet<i64> = written.iter().copied().collect();
    let c = &s.counters;
    let mut held = s.held.lock().unwrap();
    let m = crate::metrics::metrics();
    for o in batch {
        let kind = match held.get(&o.id) {
            Some(h) if h.claim_seq == o.claim_seq => held.remove(&o.id).map(|h| h.kind),
            _ => None,
        };
        let kind = kind.as_deref().unwrap_or("unknown");
        if !written.contains(&o.id) {
            c.lost.fetch_add(1, Ordering::Relaxed);
            m.outcomes_refused.inc();
            tracing::warn!(
                job.id = o.id,
                claim_seq = o.claim_seq,
                "outcome refused: the claim no longer holds the job (rescued or cancelled)"
            );
            continue;
        }
        let counter = match &o.next {
            NextState::Completed { .. } => {
                m.completed.with_label_values(&[kind]).inc();
                &c.completed
            }
            NextState::Retry { error, .. } | NextState::Snooze { error, .. } => {
                m.failed
                    .with_label_values(&[kind, error.class.as_str()])
                    .inc();
                &c.retried
            }
            NextState::Dead { .. } => {
                m.dead.with_label_values(&[kind]).inc();
                &c.dead
            }
            NextState::Cancelled { .. } => {
                m.cancelled.with_label_values(&[kind]).inc();
                &c.cancelled
            }
            NextState::ReturnUnstarted => &c.returned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
