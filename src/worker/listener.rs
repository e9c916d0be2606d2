//! The worker's `LISTEN` connection: a job notification wakes the [fetch loop](super::fetcher)
//! at once instead of at its next poll; a cancel notification stops the handlers of the
//! cancelled jobs this worker holds (the heartbeat would also notice, one interval later).
//!
//! `LISTEN` needs a session: behind a transaction pooler with no direct connection the worker
//! only polls (every `poll_interval`), and says so once. A lost connection is reopened; the
//! fetch loop is woken after every (re)connection, so nothing notified meanwhile waits for the
//! poll.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::database::health::FailureStreak;
use crate::queue;

/// Listens until `stop`.
pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let Some(sessions) = s.db.session_pool().cloned() else {
        tracing::info!(
            poll_interval = %humantime::format_duration(s.cfg.poll_interval),
            "no direct connection behind the transaction pooler (database.direct_url): not \
             listening for new jobs, polling instead"
        );
        return;
    };
    let mut listen_failures =
        FailureStreak::new("LISTEN failed: polling until it is back (every poll_interval)");
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&sessions).await?;
            l.listen_all([queue::JOBS_CHANNEL, queue::CANCEL_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            r = listener => match r {
                Ok(l) => l,
                Err(e) => {
                    listen_failures.failed(&s.db, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            },
            _ = stop.cancelled() => return,
        };
        listen_failures.succeeded();
        // Anything notified while we were not listening is caught by this wake.
        s.wake.notify_one();
        loop {
            tokio::select! {
                n = l.try_recv() => match n {
                    Ok(Some(n)) if n.channel() == queue::CANCEL_CHANNEL => cancel_held(&s, n.payload()),
                    Ok(Some(_)) => s.wake.notify_one(),
                    Ok(None) => {
                        // Connection lost; try_recv reconnects on the next call.
                        s.wake.notify_one();
                    }
                    Err(e) => {
                        listen_failures.failed(&s.db, &e);
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// An operator cancelled these jobs (already `cancelled` in the database): stop the handlers
/// of any this worker holds. Their outcomes will be refused by the fence.
fn cancel_held(s: &Shared, payload: &str) {
    let held = s.held.lock().unwrap();
    for id in payload
        .split(',')
        .filter_map(|x| x.trim().parse::<i64>().ok())
    {
        if let Some(h) = held.get(&id) {
            tracing::warn!(
                job.id = id,
                "cancelled by an operator: stopping the handler"
            );
            h.cancel.cancel();
        }
    }
}
