//! The contract between the fleet engine and the job kinds it runs.
//!
//! The engine (crate `fleet`) depends on this crate, never the reverse, so everything a job
//! kind needs from the engine is expressed here as data ([`JobContext`], [`NewJob`]) or as a
//! trait the engine implements ([`Enqueuer`], [`Registrar`]). The contract names no domain
//! type: what handlers need beyond the database (keyrings, provider clients) reaches them as
//! [`Extensions`], typed values the process registers at start and handlers look up by type.
//!
//! Contract a handler can rely on:
//! - delivery is **at least once**: a handler may run again after a crash, a lost lease or a
//!   retry, always with the same `job_id`. Side effects must carry an idempotency key derived
//!   from the job (see [`JobContext::side_effect_key`]) and re-check domain state first;
//! - the handler's [`JobError`] decides what happens next (retry with backoff, dead now, snooze
//!   without charging an attempt, or cancel);
//! - error messages are stored in the job's history and logged: they must never carry PII or
//!   secrets. Payloads carry ids, not PII.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::Db;

/// Code defaults of one job kind. The engine layers `[kinds.<kind>]` config over them.
#[derive(Debug, Clone, PartialEq)]
pub struct KindDefaults {
    /// Queue the kind's jobs are enqueued on; workers choose which queues they serve.
    pub queue: String,
    /// Most handlers of this kind one worker runs at once; `None` = bounded only by the
    /// worker's total concurrency.
    pub concurrency: Option<usize>,
    /// Attempts before the job is dead (≥ 1).
    pub max_attempts: i32,
    /// Backoff before retry n is `min(cap, base · 2^(n-1))`, jittered.
    pub backoff_base: Duration,
    /// Upper bound of the backoff.
    pub backoff_cap: Duration,
    /// A handler running longer than this is cancelled and the attempt fails (retryable).
    pub timeout: Duration,
    /// How long an idempotency key stays taken after the job *completed*. Zero: the key is
    /// free again as soon as the job finishes. While a job is unfinished its key is always taken.
    pub idempotency_window: Duration,
    /// Lower runs first.
    pub priority: i16,
    /// Most jobs of this kind running at once across the whole fleet (every worker process),
    /// counted from the queue's running rows under a live lease; `None` = no fleet-wide limit.
    pub global_concurrency: Option<usize>,
    /// Most jobs of this kind running at once per value of [`limit_key`](Self::limit_key),
    /// fleet-wide (e.g. one booking attempt per campaign); `None` = no per-key limit.
    pub key_concurrency: Option<usize>,
    /// The top-level args field whose value is the job's key for `key_concurrency` and for
    /// fairness: ready jobs are taken round-robin by key, so one key's burst does not starve
    /// the others. `None` = no key.
    pub limit_key: Option<String>,
    /// Rate budgets (by name, see [`BudgetDefaults`]) one attempt of this kind spends a token
    /// of: a job is claimed only when every one of them has a token.
    pub budgets: Vec<String>,
}

impl KindDefaults {
    /// Whether the kind is claimed under a fleet-wide limit, a budget or fairness (the
    /// serialized per-kind claim) rather than by the plain claim.
    pub fn is_limited(&self) -> bool {
        self.global_concurrency.is_some()
            || self.key_concurrency.is_some()
            || self.limit_key.is_some()
            || !self.budgets.is_empty()
    }
}

/// Code defaults of one rate budget: a token bucket kept in the queue's database, shared by
/// the fleet. `[budgets.<name>]` config overrides them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetDefaults {
    /// Tokens added per second (the sustained rate).
    pub per_second: f64,
    /// Most tokens the bucket holds (the largest burst after a quiet spell), >= 1.
    pub burst: u32,
}

/// The domain's rate budgets, named once: what kinds list in [`KindDefaults::budgets`] and what
/// the provider clients name when a 429 empties one.
pub mod budgets {
    /// Duffel's search endpoints (offer requests, offers).
    pub const DUFFEL_SEARCH: &str = "duffel_search";
    /// Duffel's order endpoints (orders, cancellations).
    pub const DUFFEL_ORDER: &str = "duffel_order";
    /// Stripe's API (one account-wide limit).
    pub const STRIPE: &str = "stripe";
    /// Resend's email API.
    pub const RESEND: &str = "resend";
    /// Twilio's Messaging API (text messages).
    pub const TWILIO: &str = "twilio";
}

impl Default for KindDefaults {
    fn default() -> Self {
        Self {
            queue: "default".to_owned(),
            concurrency: None,
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            timeout: Duration::from_secs(300),
            idempotency_window: Duration::ZERO,
            priority: 0,
            global_concurrency: None,
            key_concurrency: None,
            limit_key: None,
            budgets: Vec::new(),
        }
    }
}

/// A job kind: its serde args are the payload, `KIND` its stable name.
///
/// Implementors write `async fn run(self, ctx: JobContext) -> Result<(), JobError>`.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable, unique name stored in the queue (`fleet_jobs.kind`). Never rename a kind with
    /// jobs in flight: workers treat an unknown kind as dead.
    const KIND: &'static str;

    /// Code defaults (queue, concurrency, attempts, backoff, timeout, key window).
    fn defaults() -> KindDefaults {
        KindDefaults::default()
    }

    /// Runs one attempt.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// What a handler hands back when it did not succeed; it decides the job's next state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// Try again after the kind's exponential backoff (dead once attempts are used up).
    #[error("{0}")]
    Retryable(String),
    /// Never retry: the job is dead at once with this reason (the handler's explicit discard).
    #[error("{0}")]
    Fatal(String),
    /// Run again no earlier than `after`, without using up an attempt (e.g. a 429's reset).
    #[error("snoozed for {after:?}: {reason}")]
    Snooze {
        /// Delay before the next attempt.
        after: Duration,
        /// Why, for the job's history.
        reason: String,
    },
    /// Try again after `after` instead of the kind's backoff, using up an attempt like
    /// [`JobError::Retryable`] (dead once attempts are used up): the failure is this attempt's,
    /// but the handler knows when the next one can succeed (an apalis `RetryAfterError`).
    #[error("retry after {after:?}: {reason}")]
    RetryAfter {
        /// Delay before the next attempt.
        after: Duration,
        /// What failed, for the job's history.
        reason: String,
    },
    /// Stop for good, state `cancelled` (nothing left to do and nothing went wrong).
    #[error("{0}")]
    Cancel(String),
    /// A provider refused for its rate limit: the engine empties rate budget `budget` for the
    /// whole fleet until `after` has passed (no job spending it is claimed before), and this
    /// job runs again then, without using up an attempt.
    #[error("rate limited on {budget} for {after:?}: {reason}")]
    RateLimited {
        /// The budget the refused call spends (see [`budgets`]).
        budget: String,
        /// Until the provider's reset.
        after: Duration,
        /// Why, for the job's history (no PII).
        reason: String,
    },
}

impl JobError {
    /// A retryable failure.
    pub fn retryable(e: impl fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }
    /// A failure that makes the job dead now.
    pub fn fatal(e: impl fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }
    /// Retry after `after` without charging an attempt.
    pub fn snooze(after: Duration, reason: impl fmt::Display) -> Self {
        Self::Snooze {
            after,
            reason: reason.to_string(),
        }
    }
    /// Whether another attempt may follow this error.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Retryable(_)
                | Self::RetryAfter { .. }
                | Self::Snooze { .. }
                | Self::RateLimited { .. }
        )
    }
}

/// A database error is transient from a handler's point of view: retry with backoff.
impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::Retryable(format!("database: {e}"))
    }
}

/// Why an enqueue wrote nothing. The variant decides what a handler's follow-up failure does
/// to the handler's own job ([`From<EnqueueError> for JobError`](JobError)).
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The job can never be enqueued as given: an unknown kind, args that do not fit the
    /// kind, an invalid key or option. Retrying cannot help; nothing of the batch was written.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The database failed; the same enqueue may succeed later.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The enqueue gave up on contention (an idempotency key changing hands); the same enqueue
    /// may succeed later.
    #[error("{0}")]
    Busy(String),
}

/// A follow-up that can never be enqueued is a bug no retry fixes: the handler's job is dead at
/// once with the reason. A database failure or contention is retried with backoff.
impl From<EnqueueError> for JobError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Invalid(m) => Self::Fatal(format!("invalid follow-up job: {m}")),
            EnqueueError::Database(d) => d.into(),
            EnqueueError::Busy(m) => Self::retryable(m),
        }
    }
}

/// Typed values a process gives every handler (the domain registers its keyring and provider
/// clients here), looked up by type with [`JobContext::extension`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Extensions {
    map: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Extensions {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, replacing a value of the same type.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.map).insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The value of type `T`, if registered.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref::<T>()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} value(s))", self.map.len())
    }
}

/// Everything a running handler gets from the engine.
#[derive(Clone)]
pub struct JobContext {
    /// The job's id: stable across every attempt of this job.
    pub job_id: i64,
    /// The job's kind.
    pub kind: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// Attempts allowed in all.
    pub max_attempts: i32,
    /// The fleet's database (domain tables; queue writes only through `enqueuer`). Behind a
    /// transaction pooler, statements on it run in transactions of their own (see [`Db`]).
    pub db: Db,
    /// Cancelled when the handler must stop: timeout, lost lease, operator cancel or the
    /// worker's drain deadline. Long handlers should check it between steps.
    pub cancel: CancellationToken,
    /// The engine's enqueue API, for follow-up jobs.
    pub enqueuer: Arc<dyn Enqueuer>,
    /// What the process registered for handlers (see [`JobContext::extension`]).
    pub extensions: Extensions,
    /// Budgets the providers said are used up during this attempt, reported by the provider
    /// clients the handler reached through this context (see [`RateLimits`]). The engine reads
    /// them with the handler's result once the attempt is over.
    pub rate_limits: RateLimits,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.job_id)
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// The idempotency key for one external side effect of this job: `job:{id}:{step}`.
    ///
    /// It is the same on every attempt of the job, so a retried or re-run step replays the
    /// provider's stored response instead of acting twice. Steps must have distinct names.
    pub fn side_effect_key(&self, step: &str) -> String {
        format!("job:{}:{}", self.job_id, step)
    }

    /// The registered value of type `T`, or a fatal error: a worker that runs a kind without
    /// what the kind needs is misconfigured, and retrying cannot help (the dead job is
    /// replayable once the process is configured).
    pub fn extension<T: Any + Send + Sync>(&self) -> Result<&T, JobError> {
        self.extensions.get::<T>().ok_or_else(|| {
            JobError::fatal(format!(
                "this worker has no {} registered for its handlers",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A budget a provider said is used up on a *successful* answer (Duffel's
/// `ratelimit-remaining: 0` with its `ratelimit-reset`), and for how long from now.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    /// The budget (see [`budgets`]).
    pub budget: String,
    /// Until the provider's reset.
    pub after: Duration,
    /// Why (operation and header; no PII).
    pub reason: String,
}

/// What one attempt learned of the providers' rate limits, beside its [`JobError`].
///
/// A 429 is an error and travels as [`JobError::RateLimited`]. A *successful* answer that says
/// nothing is left of a budget is not: the call worked and the handler goes on. Such answers
/// are reported here by the provider clients the handler got from its [`JobContext`] (a client
/// is bound to the attempt's `RateLimits`, so reports from tasks the handler spawns count too).
/// When the attempt is over the engine takes them with the handler's result and empties each
/// budget for the whole fleet until the reset, so the next call is not a 429.
///
/// Cloning shares the collection: every clone reports into the same attempt.
#[derive(Debug, Clone, Default)]
pub struct RateLimits(Arc<Mutex<Vec<Exhausted>>>);

impl RateLimits {
    /// Records that `e.budget` is used up.
    pub fn report(&self, e: Exhausted) {
        self.0.lock().expect("not poisoned").push(e);
    }

    /// Takes every report so far (the engine, after the attempt).
    pub fn take(&self) -> Vec<Exhausted> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

/// Options for one enqueue; `None` fields take the kind's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnqueueOptions {
    /// Queue to put the job on.
    pub queue: Option<String>,
    /// Lower runs first.
    pub priority: Option<i16>,
    /// Not before this time (a future time makes the job `scheduled`).
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts allowed.
    pub max_attempts: Option<i32>,
    /// Deduplication key per kind: while a job of this kind holds the key, enqueueing the
    /// same key returns that job instead of creating another.
    pub idempotency_key: Option<String>,
}

/// A job to enqueue: kind name, JSON args and placement options. Built from a kind's typed
/// args ([`NewJob::of`]) wherever the kind is known; [`NewJob::raw`] is for operators and
/// config, whose args the engine checks against the kind's type before writing.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Kind name.
    pub kind: String,
    /// Payload (ids, not PII).
    pub args: serde_json::Value,
    /// Placement options.
    pub opts: EnqueueOptions,
    /// Built from the kind's own args type, so the args fit the kind by construction.
    typed: bool,
}

impl NewJob {
    /// A job of kind `J`. Queue, priority and attempts are left unset so the engine fills them
    /// from the kind's *resolved* settings (code defaults with config overrides on top).
    pub fn of<J: Job>(args: &J) -> Result<Self, serde_json::Error> {
        Ok(Self {
            kind: J::KIND.to_owned(),
            args: serde_json::to_value(args)?,
            opts: EnqueueOptions::default(),
            typed: true,
        })
    }

    /// An untyped job (operators, config, other services): the engine checks that the kind is
    /// registered and that `args` deserialize into its type before writing anything.
    pub fn raw(kind: impl Into<String>, args: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            args,
            opts: EnqueueOptions::default(),
            typed: false,
        }
    }

    /// Whether the args were built from the kind's own type ([`NewJob::of`]).
    pub fn is_typed(&self) -> bool {
        self.typed
    }

    /// Sets the idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.opts.idempotency_key = Some(key.into());
        self
    }

    /// Runs no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.opts.run_at = Some(at);
        self
    }

    /// Sets the priority (lower first).
    pub fn priority(mut self, p: i16) -> Self {
        self.opts.priority = Some(p);
        self
    }

    /// Sets the attempt budget.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.opts.max_attempts = Some(n);
        self
    }

    /// Puts the job on `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.opts.queue = Some(queue.into());
        self
    }
}

/// Result of enqueueing one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the new job's, or the existing holder's for a duplicate key.
    pub id: i64,
    /// True when the kind+key was already held and no job was created.
    pub duplicate: bool,
}

/// A boxed future, so [`Enqueuer`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The engine's enqueue API as seen from job kinds (implemented by `fleet::Queue`).
pub trait Enqueuer: Send + Sync {
    /// Enqueues `jobs` on `conn` (which may be inside the caller's transaction: a rollback
    /// leaves no job). Results are in input order. An invalid job fails the whole call with
    /// [`EnqueueError::Invalid`] before anything is written.
    fn enqueue_many<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> BoxFuture<'a, Result<Vec<Enqueued>, EnqueueError>>;
}

/// Where job kinds are registered (implemented by `fleet::Registry`); the domain lists its
/// kinds once, in `kinds::register_all`.
pub trait Registrar {
    /// Registers kind `J` with its code defaults.
    fn register<J: Job>(&mut self) -> &mut Self;

    /// Declares rate budget `name` with its code defaults (config may override them). A
    /// kind may list only declared budgets.
    fn budget(&mut self, name: &str, defaults: BudgetDefaults) -> &mut Self;
}
