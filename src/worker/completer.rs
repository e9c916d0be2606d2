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
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    outcome::{NextState, Outcome},
    Shared,
};
use crate::queue;

/// Drains `rx` until every sender is gone, writing whatever has queued up in one statement:
/// batches form while the previous write is in flight, and a batch smaller than an eighth of
/// the concurrency and holding no limited kind's outcome waits up to `worker.completer_linger`
/// for more. A claim leaves `held` only once its outcome is written or refused, so the
/// heartbeat keeps its lease alive until then. A failing database is retried with backoff, so
/// this returns only once every outcome is written; whatever is still in `held` when the
/// caller stops waiting is unwritten.
pub(crate) async fn run(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outcome>) {
    let max = s.cfg.completer_batch;
    let mut failures =
        crate::database::health::FailureStreak::new("writing outcomes failed (they are kept)");
    let mut batch: Vec<Outcome> = Vec::with_capacity(max);
    let mut rows = Vec::with_capacity(max);
    // A session of its own with pinned generic plans, where the database offers sessions.
    let mut writer = queue::OutcomeWriter::new(&s.db);
    let linger = s.cfg.completer_linger;
    let enough = (s.cfg.concurrency / 8).clamp(1, max);
    let limited: HashSet<&str> = s.limited.iter().map(|l| l.kind.as_str()).collect();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        take_queued(&mut rx, &mut batch, max);
        if !linger.is_zero() && batch.len() < enough && !holds_limited(&s, &limited, &batch) {
            // A small batch waits a little for company: at a moderate load each write would
            // otherwise carry two or three rows, and a write costs mostly per statement. The
            // wait ends as soon as the batch is worth a write, so a busy worker never waits;
            // and as soon as it holds a limited kind's outcome, whose row counts against the
            // kind's fleet-wide limit until it is written.
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < enough && !holds_limited(&s, &limited, &batch) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(o)) => {
                        batch.push(o);
                        take_queued(&mut rx, &mut batch, max);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        rows.clear();
        rows.extend(batch.iter().map(Outcome::row));
        let mut backoff = Duration::from_millis(50);
        let mut failed_before = false;
        let write = std::time::Instant::now();
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
        crate::metrics::metrics()
            .outcome_write_seconds
            .observe(write.elapsed().as_secs_f64());
        record(&s, &batch, &written);
        batch.clear();
        s.wake.notify_one();
    }
    writer.close().await;
}

/// Whether `batch` holds an outcome of one of the `limited` kinds (a fleet-wide limit, budget
/// or fairness key): its row stays `running`, counting against the limit, until it is written.
fn holds_limited(s: &Shared, limited: &HashSet<&str>, batch: &[Outcome]) -> bool {
    if limited.is_empty() {
        return false;
    }
    let held = s.held.lock().unwrap();
    batch.iter().any(|o| {
        held.get(&o.id)
            .is_some_and(|h| limited.contains(h.kind.as_str()))
    })
}

/// Moves what has already queued in `rx` into `batch`, up to `max` outcomes.
fn take_queued(rx: &mut mpsc::UnboundedReceiver<Outcome>, batch: &mut Vec<Outcome>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(o) => batch.push(o),
            Err(_) => break,
        }
    }
}

/// Lets the claims of `batch` go and counts what happened to each: written, or refused by the
/// fence (lost). A written outcome of a limited kind is flagged for the fetch loop
/// ([`Shared::limited_freed`]): the kind has a fleet-wide slot free again.
pub(crate) fn record(s: &Shared, batch: &[Outcome], written: &[i64]) {
    let written: std::collections::HashSet<i64> = written.iter().copied().collect();
    let c = &s.counters;
    let mut held = s.held.lock().unwrap();
    let m = crate::metrics::metrics();
    let mut freed_limited = false;
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
        freed_limited = freed_limited || s.limited.iter().any(|l| l.kind == kind);
    }
    if freed_limited {
        s.limited_freed.store(true, Ordering::Release);
    }
}
