//! apalis 1.0 workers on the fleet's queue (cargo feature `apalis`).
//!
//! [`FleetBackend`] is an apalis backend over `fleet_jobs`: a worker built with apalis's own
//! `WorkerBuilder` (its tower layers, its monitor) takes the jobs of one kind from the fleet's
//! queue, and every guarantee of the queue holds for them, because the engine itself claims and
//! finishes them:
//!
//! - the backend runs an engine [`Worker`] that claims its kind alone, whose handler for it is
//!   a **bridge**: the claimed job (fenced, leased, heartbeated, under the kind's limits,
//!   budgets, pause and drain) is handed to the apalis worker as a `Task`, and the bridge waits
//!   for the task's end;
//! - the backend's own middleware ([`FleetLayer`], outermost around the user's layers) turns
//!   that end into the handler's result: `Ok` → completed; an apalis `AbortError` → dead at
//!   once; a `RetryAfterError` → retried after its delay, the attempt charged; a
//!   `DeferredError` → run again at once, the attempt not charged; any other error →
//!   retried after the kind's backoff, dead once the attempts are spent; a panic (one no layer
//!   caught) → the engine's panic outcome. The engine writes the outcome, fenced on the claim,
//!   with the retry's `run_at` in the database;
//! - when the engine stops the attempt (the kind's timeout, a lost lease, an operator's
//!   cancel, the drain deadline), the job's [`JobContext::cancel`] fires, and the task is
//!   dropped after the engine's grace period, as a native handler is aborted;
//! - a SIGKILL leaves the claims `running` under leases nobody renews: the rescuer of any
//!   fleet worker (or of the next apalis worker) takes them back.
//!
//! Enqueue with apalis's `TaskSink` (`push`, `push_bulk`, `push_task` with an idempotency key,
//! a `run_at`, a priority, attempts) or, for a transactional enqueue, with the engine's
//! [`Queue`] ([`FleetBackend::queue`], `enqueue_many_in` on the caller's transaction). A job
//! enqueued by `fleet enqueue` or a `Queue` is worked by the apalis worker and the other way
//! round; `fleet queue`, the console, the metrics and the traces show apalis-worked jobs like
//! any other. Declare the kind external in every fleet process's config
//! (`[kinds.<kind>] external = true`), so that `fleet worker` leaves it alone.
//!
//! What apalis users do not get is in `docs/decisions.md` (decision 47): results are not
//! stored, apalis's `Status`/`TaskResult` API and its board are not backed, and apalis's
//! retry layer retries inside one claim.

use std::{
    any::Any,
    marker::PhantomData,
    ops::Deref,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{
    backend::{finalize::Ephemeral, Backend, BackendConfig},
    error::{AbortError, BoxDynError, DeferredError, RetryAfterError},
    task::{builder::TaskBuilder, from_request::FromRequest, task_id::TaskId, Task},
    worker::context::WorkerContext,
};
use futures::{future::BoxFuture, FutureExt};
use jobs::{BudgetDefaults, Db, JobContext, JobError, KindDefaults, NewJob};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    config::WorkerSettings,
    enqueue::{EnqueueError, Queue},
    registry::{decode_as, redact_quoted, ErasedHandler, Registry},
    worker::{DrainReport, Worker, CANCEL_GRACE},
};

/// What the backend's operations can fail with. Claiming never fails the apalis worker: the
/// engine retries the database with backoff and says so in its logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Enqueueing through the sink failed (nothing of the failed batch was written, or, for a
    /// batch of several statements, the statements before the failing one were).
    #[error("enqueue through the apalis sink: {0}")]
    Enqueue(#[from] EnqueueError),
    /// A task's args do not serialize to JSON.
    #[error("the task's args do not serialize to JSON: {0}")]
    Encode(serde_json::Error),
    /// `FleetBackend::from_registry` was asked for a kind the registry does not declare
    /// external.
    #[error("kind {0:?} is not declared external in this registry ([kinds.{0}] external = true)")]
    NotExternal(String),
}

/// An apalis backend over the fleet's queue for the jobs of one kind (see the module docs).
///
/// Cloning gives a backend with the same settings whose runtime has not started: use a clone
/// as the sink beside the worker, or give it to a second worker.
pub struct FleetBackend<Args> {
    kind: String,
    db: Db,
    settings: KindDefaults,
    budgets: Vec<(String, BudgetDefaults)>,
    worker: WorkerSettings,
    extensions: jobs::Extensions,
    runtime: Option<Runtime<Args>>,
    sink: SinkState,
    _args: PhantomData<fn() -> Args>,
}

/// The engine worker behind a running apalis worker.
struct Runtime<Args> {
    handoffs: mpsc::Receiver<Handoff<Args>>,
    stop: CancellationToken,
    run: Option<tokio::task::JoinHandle<DrainReport>>,
}

/// The sink's buffer and its write in flight.
#[derive(Default)]
struct SinkState {
    queue: Option<Queue>,
    buffer: Vec<NewJob>,
    flushing: Option<BoxFuture<'static, Result<(), EnqueueError>>>,
}

/// A claimed job on its way to the apalis worker.
struct Handoff<Args> {
    args: Args,
    ticket: Ticket,
}

/// What travels with a task (in its data) to [`FleetLayer`]: the job's context, where the
/// attempt's end goes, and the span of the engine's attempt.
#[derive(Clone)]
struct Ticket {
    ctx: JobContext,
    reply: Arc<Mutex<Option<oneshot::Sender<Reply>>>>,
    /// Set when the apalis worker calls the task's service: a reply lost after that is a task
    /// dropped mid-run, not a job never taken.
    started: Arc<AtomicBool>,
    span: tracing::Span,
}

impl Ticket {
    fn send(&self, reply: Reply) {
        if let Some(tx) = self.reply.lock().unwrap().take() {
            // The bridge is gone when the engine already stopped the attempt.
            let _ = tx.send(reply);
        }
    }
}

/// How the apalis side ended a task.
enum Reply {
    Ended(Result<(), JobError>),
    Panicked(String),
}

/// The sink writes its buffer as one bulk enqueue once it holds this many tasks (or on flush):
/// large enough that a `push_bulk` is one call, which `Queue::enqueue_many` splits over two
/// connections past 5,000 unkeyed jobs.
const SINK_FLUSH_AT: usize = 50_000;

impl<Args> FleetBackend<Args>
where
    Args: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A backend for kind `kind` on `db`, with the engine's default kind settings
    /// ([`KindDefaults::default`]) and worker settings ([`WorkerSettings::default`]).
    pub fn new(db: impl Into<Db>, kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            db: db.into(),
            settings: KindDefaults::default(),
            budgets: Vec::new(),
            worker: WorkerSettings::default(),
            extensions: jobs::Extensions::default(),
            runtime: None,
            sink: SinkState::default(),
            _args: PhantomData,
        }
    }

    /// A backend for kind `kind`, declared external in `registry` (the fleet's, built from
    /// its config: `[kinds.<kind>] external = true` plus the kind's overrides), with its
    /// resolved settings and the budgets it spends.
    pub fn from_registry(
        db: impl Into<Db>,
        registry: &Registry,
        kind: &str,
    ) -> Result<Self, Error> {
        let external = registry.get(kind).is_some_and(|k| !k.runs_here());
        if !external {
            return Err(Error::NotExternal(kind.to_owned()));
        }
        let mut b = Self::new(db, kind);
        b.settings = registry.settings(kind).expect("declared").clone();
        b.budgets = registry
            .budgets_of(kind)
            .into_iter()
            .map(|s| {
                let d = BudgetDefaults {
                    per_second: s.per_second,
                    burst: s.burst as u32,
                };
                (s.name, d)
            })
            .collect();
        Ok(b)
    }

    /// The kind's settings: queue, attempts, backoff, timeout, limits, budgets' names.
    pub fn with_kind_settings(mut self, settings: KindDefaults) -> Self {
        self.settings = settings;
        self.sink.queue = None;
        self
    }

    /// Declares rate budget `name`, which the kind's settings may spend.
    pub fn with_budget(mut self, name: &str, budget: BudgetDefaults) -> Self {
        self.budgets.push((name.to_owned(), budget));
        self.sink.queue = None;
        self
    }

    /// The engine worker's settings: how many jobs it holds and hands over at once
    /// (`concurrency`, `prefetch`), its lease, heartbeat, poll and maintenance intervals.
    pub fn with_worker_settings(mut self, worker: WorkerSettings) -> Self {
        self.worker = worker;
        self
    }

    /// Values the handlers reach through [`FleetJob`]'s [`JobContext::extension`].
    pub fn with_extensions(mut self, extensions: jobs::Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The engine's enqueue API for this kind: `NewJob`s with keys, and the transactional
    /// enqueue (`enqueue_many_in` on the caller's transaction) the apalis sink cannot offer.
    /// It checks that raw args fit `Args` before writing anything.
    pub fn queue(&self) -> Queue {
        self.queue_checking(check_args::<Args>)
    }

    /// A registry of this backend's kind alone (its settings and budgets), run by `handler`,
    /// its raw args checked by `check`.
    fn registry(
        &self,
        handler: ErasedHandler,
        check: fn(&Value) -> Result<(), String>,
    ) -> Registry {
        let mut reg = Registry::new(Default::default());
        for (name, d) in &self.budgets {
            reg.declare_budget(name, *d);
        }
        reg.register_erased(&self.kind, self.settings.clone(), handler, check);
        reg
    }

    /// A queue whose registry holds the kind with `check` for raw args.
    fn queue_checking(&self, check: fn(&Value) -> Result<(), String>) -> Queue {
        let only_enqueues: ErasedHandler =
            Arc::new(|_, _| Err("this registry only enqueues".to_owned()));
        Queue::new(
            self.db.clone(),
            Arc::new(self.registry(only_enqueues, check)),
        )
    }

    /// The sink's queue: its jobs' args were serialized from `Args` here, so they fit by
    /// construction and are not decoded again.
    fn sink_queue(&mut self) -> &Queue {
        if self.sink.queue.is_none() {
            self.sink.queue = Some(self.queue_checking(|_| Ok(())));
        }
        self.sink.queue.as_ref().expect("set above")
    }

    /// Starts the engine worker behind the apalis worker `apalis`.
    fn start(&mut self, apalis: &WorkerContext) {
        let (tx, rx) = mpsc::channel::<Handoff<Args>>(self.worker.concurrency.max(1));
        let handler: ErasedHandler = Arc::new(move |args: Value, ctx: JobContext| {
            let args: Args = decode_as(&ctx.kind, args)?;
            Ok(Box::pin(bridge(tx.clone(), args, ctx)) as BoxFuture<'static, Result<(), JobError>>)
        });
        let reg = self.registry(handler, check_args::<Args>);
        let worker = Worker::new(self.db.clone(), Arc::new(reg), self.worker.clone())
            .with_extensions(self.extensions.clone())
            .claiming_only(vec![self.kind.clone()]);
        tracing::info!(apalis.worker = %apalis.name(), worker.id = %worker.id(),
            kind = %self.kind, "apalis worker takes its jobs from the fleet's queue");
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        self.runtime = Some(Runtime {
            handoffs: rx,
            stop,
            run: Some(run),
        });
    }
}

impl<Args> Clone for FleetBackend<Args> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind.clone(),
            db: self.db.clone(),
            settings: self.settings.clone(),
            budgets: self.budgets.clone(),
            worker: self.worker.clone(),
            extensions: self.extensions.clone(),
            runtime: None,
            sink: SinkState::default(),
            _args: PhantomData,
        }
    }
}

impl<Args> Drop for FleetBackend<Args> {
    /// A backend dropped without its worker's shutdown (the apalis worker returned with an
    /// error, or was dropped): its engine worker drains on its own.
    fn drop(&mut self) {
        if let Some(r) = &self.runtime {
            r.stop.cancel();
        }
    }
}

/// The bridge's half of an attempt: hand the job over, wait for its end.
async fn bridge<Args>(
    handoffs: mpsc::Sender<Handoff<Args>>,
    args: Args,
    ctx: JobContext,
) -> Result<(), JobError> {
    let (reply, ended) = oneshot::channel();
    let started = Arc::new(AtomicBool::new(false));
    let ticket = Ticket {
        ctx,
        reply: Arc::new(Mutex::new(Some(reply))),
        started: started.clone(),
        span: tracing::Span::current(),
    };
    if handoffs.send(Handoff { args, ticket }).await.is_err() {
        return Err(not_taken());
    }
    match ended.await {
        Ok(Reply::Ended(result)) => result,
        // The executor records it as this attempt's panic, as it does a native handler's.
        Ok(Reply::Panicked(message)) => std::panic::resume_unwind(Box::new(message)),
        Err(_) if started.load(Ordering::Acquire) => Err(JobError::retryable(
            "the apalis worker dropped the task before it ended",
        )),
        Err(_) => Err(not_taken()),
    }
}

/// A job the apalis worker never took (it stopped first): back at once, no attempt charged.
fn not_taken() -> JobError {
    JobError::snooze(
        Duration::ZERO,
        "the apalis worker stopped before it took the job",
    )
}

/// Whether JSON args fit `Args` (the engine's enqueue check for the kind).
fn check_args<Args: DeserializeOwned>(args: &Value) -> Result<(), String> {
    serde_json::from_value::<Args>(args.clone())
        .map(drop)
        .map_err(|e| {
            format!(
                "payload does not match the apalis args type {}: {}",
                std::any::type_name::<Args>(),
                redact_quoted(&e.to_string())
            )
        })
}

impl<Args> Backend for FleetBackend<Args>
where
    Args: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Task = Task<Args>;
    type Error = Error;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.runtime.is_none() {
            self.start(worker);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.runtime.is_none() {
            self.start(worker);
        }
        let rt = self.runtime.as_mut().expect("started");
        match rt.handoffs.poll_recv(cx) {
            Poll::Ready(Some(Handoff { args, ticket })) => {
                let ctx = &ticket.ctx;
                let task = TaskBuilder::new(args)
                    .task_id(TaskId::Int(ctx.job_id as u64))
                    // apalis counts the attempts made before this one and adds one as the
                    // task starts; the engine's attempt is 1-based.
                    .attempt(ctx.attempt.saturating_sub(1).max(0) as usize)
                    .max_attempts(ctx.max_attempts.max(1) as usize)
                    .data(ticket)
                    .build();
                Poll::Ready(Some(Ok(task)))
            }
            // The engine worker stopped and dropped its handlers.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        let Some(rt) = self.runtime.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if !rt.stop.is_cancelled() {
            // The apalis worker has finished every task it took: the engine stops claiming,
            // and the jobs handed over but never taken go back, their attempts not charged.
            rt.stop.cancel();
            rt.handoffs.close();
            while rt.handoffs.try_recv().is_ok() {}
        }
        let Some(run) = rt.run.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match run.poll_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(report) => {
                rt.run = None;
                match report {
                    Ok(r) => tracing::info!(
                        completed = r.completed,
                        returned_unstarted = r.returned_unstarted,
                        unwritten = r.unwritten,
                        "apalis backend's engine worker stopped"
                    ),
                    Err(e) => tracing::error!(error = %e, "apalis backend's engine worker failed"),
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<Args> BackendConfig for FleetBackend<Args> {
    type Args = Args;
    /// The job's id in `fleet_jobs` (a task's `TaskId::Int`).
    type Id = i64;
    /// The backend decodes the args itself (a payload that does not fit is dead at once, as
    /// for a native kind, instead of failing the apalis worker's stream).
    type Kind = Ephemeral;
    type Config = KindDefaults;
    type Layer = FleetLayer;

    fn config(&self) -> &Self::Config {
        &self.settings
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        FleetLayer
    }
}

impl<Args> futures::Sink<Task<Args>> for FleetBackend<Args>
where
    Args: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.sink.buffer.len() >= SINK_FLUSH_AT {
            return this.poll_flush_buffer(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<Args>) -> Result<(), Error> {
        let this = self.get_mut();
        let job = this.new_job(task)?;
        this.sink.buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_buffer(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_buffer(cx)
    }
}

impl<Args> FleetBackend<Args>
where
    Args: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The engine's job for an apalis task: its args as JSON, its idempotency key, `run_at`,
    /// attempts, and priority (apalis runs a *higher* priority first, the engine a lower one:
    /// apalis's `p` is the engine's `-p`).
    fn new_job(&self, task: Task<Args>) -> Result<NewJob, Error> {
        let args = serde_json::to_value(&task.args).map_err(Error::Encode)?;
        let mut job = NewJob::raw(self.kind.clone(), args);
        let ctx = task.ctx();
        if let Some(key) = ctx.idempotency_key() {
            job = job.key(key);
        }
        if let Some(at) = ctx.run_at() {
            if let Some(at) = chrono::DateTime::from_timestamp(at.min(i64::MAX as u64) as i64, 0) {
                job = job.run_at(at);
            }
        }
        if let Some(n) = ctx.max_attempts() {
            job = job.max_attempts(n.clamp(1, i32::MAX as usize) as i32);
        }
        if let Some(p) = ctx.priority() {
            job = job.priority(-(p.min(i16::MAX as usize) as i16));
        }
        Ok(job)
    }

    fn poll_flush_buffer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Some(f) = self.sink.flushing.as_mut() {
                let r = futures::ready!(f.poll_unpin(cx));
                self.sink.flushing = None;
                r?;
            }
            if self.sink.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut self.sink.buffer);
            let queue = self.sink_queue().clone();
            self.sink.flushing =
                Some(async move { queue.enqueue_many(jobs).await.map(drop) }.boxed());
        }
    }
}

/// The backend's middleware, outermost around the user's layers: turns a task's end into the
/// engine's outcome for its job, catches a panic no layer caught, and drops the task when the
/// engine stops the attempt (after [`CANCEL_GRACE`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetLayer;

impl<S> tower::Layer<S> for FleetLayer {
    type Service = FleetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetService { inner }
    }
}

/// The service [`FleetLayer`] makes.
#[derive(Debug, Clone)]
pub struct FleetService<S> {
    inner: S,
}

impl<S, Args> tower::Service<Task<Args>> for FleetService<S>
where
    S: tower::Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let ticket = task.data().get::<Ticket>().cloned();
        let fut = self.inner.call(task);
        let Some(ticket) = ticket else {
            // Not one of the engine's tasks (a layer made it): nothing to report.
            return async move { fut.await.map_err(Into::into) }.boxed();
        };
        ticket.started.store(true, Ordering::Release);
        let span = ticket.span.clone();
        async move {
            let cancel = ticket.ctx.cancel.clone();
            let stopped = async {
                cancel.cancelled().await;
                tokio::time::sleep(CANCEL_GRACE).await;
            };
            let ended = tokio::select! {
                r = AssertUnwindSafe(fut).catch_unwind() => Some(r),
                _ = stopped => None,
            };
            match ended {
                Some(Ok(result)) => {
                    let result = result.map_err(Into::into);
                    ticket.send(Reply::Ended(job_result(&result)));
                    result
                }
                Some(Err(panic)) => {
                    let message = panic_message(panic.as_ref());
                    ticket.send(Reply::Panicked(message.clone()));
                    Err(format!("handler panicked: {message}").into())
                }
                None => {
                    let why = "stopped by the fleet: timeout, lost claim, cancel or drain deadline";
                    ticket.send(Reply::Ended(Err(JobError::retryable(why))));
                    Err(why.into())
                }
            }
        }
        .instrument(span)
        .boxed()
    }
}

/// The engine's reading of an apalis task's result (see the module docs).
fn job_result<T>(result: &Result<T, BoxDynError>) -> Result<(), JobError> {
    let Err(e) = result else { return Ok(()) };
    if let Some(a) = e.downcast_ref::<AbortError>() {
        return Err(JobError::Fatal(a.to_string()));
    }
    if let Some(r) = e.downcast_ref::<RetryAfterError>() {
        return Err(JobError::RetryAfter {
            after: r.get_duration(),
            reason: r.to_string(),
        });
    }
    if let Some(d) = e.downcast_ref::<DeferredError>() {
        return Err(JobError::snooze(Duration::ZERO, d));
    }
    Err(JobError::Retryable(e.to_string()))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The fleet job behind an apalis task, for its handler: `async fn run(args: A, job: FleetJob)`.
/// It derefs to the engine's [`JobContext`]: the job's id, attempt, the idempotency key of each
/// side effect ([`JobContext::side_effect_key`], the same on every attempt), the cancel token,
/// the database and the follow-up enqueuer.
#[derive(Clone, Debug)]
pub struct FleetJob(JobContext);

impl Deref for FleetJob {
    type Target = JobContext;

    fn deref(&self) -> &JobContext {
        &self.0
    }
}

/// A [`FleetJob`] asked of a task that did not come from a [`FleetBackend`].
#[derive(Debug, thiserror::Error)]
#[error("this task did not come from the fleet's queue (no FleetJob in its data)")]
pub struct NotAFleetTask;

impl<Args: Sync> FromRequest<Task<Args>> for FleetJob {
    type Error = NotAFleetTask;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.data()
            .get::<Ticket>()
            .map(|t| FleetJob(t.ctx.clone()))
            .ok_or(NotAFleetTask)
    }
}
