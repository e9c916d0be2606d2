//! Rate-limit signals a provider client sees on a *successful* answer, such as Duffel's
//! `ratelimit-remaining: 0` with its `ratelimit-reset`: the client reports them here during an
//! attempt, and the engine, after the attempt, empties those budgets for the whole fleet until
//! the reset, so the next call is not a 429. A 429 itself travels as
//! [`JobError::RateLimited`](crate::JobError::RateLimited).
//!
//! The sink is task-local to the attempt's task: a report from outside an attempt (a test
//! calling a client directly) or from a task the handler spawned is dropped.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

/// A budget a provider said is used up, and until when (from now).
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    /// The budget (see [`crate::job::budgets`]).
    pub budget: String,
    /// Until the provider's reset.
    pub after: Duration,
    /// Why (operation and header; no PII).
    pub reason: String,
}

/// Where one attempt's reports go.
pub type Sink = Arc<Mutex<Vec<Exhausted>>>;

tokio::task_local! {
    static SINK: Sink;
}

/// Reports `e` to the running attempt, if any.
pub fn report(e: Exhausted) {
    let _ = SINK.try_with(|s| s.lock().expect("not poisoned").push(e));
}

/// Runs `fut` with `sink` receiving its reports (the engine wraps every attempt).
pub fn scope<F: Future>(sink: Sink, fut: F) -> impl Future<Output = F::Output> {
    SINK.scope(sink, fut)
}

/// Takes what `sink` received.
pub fn drain(sink: &Sink) -> Vec<Exhausted> {
    std::mem::take(&mut *sink.lock().expect("not poisoned"))
}
