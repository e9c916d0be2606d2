//! The typed enqueue API: one job, many jobs in one statement, or inside the caller's own
//! transaction. Placement defaults come from the kind's resolved settings.
//!
//! Nothing is written for a batch that holds an invalid job: every job's kind must be
//! registered with this process and a raw job's args must deserialize into the kind's type, so
//! a typo or a stale producer fails where it happens, never as a dead job later.
//!
//! **More than one database** ([`Routes`], [`crate::databases`]): a job of a kind that lives in
//! another database than the queue's own is inserted there, on that database's pool, in a
//! statement of its own. Beside a caller's connection ([`Queue::enqueue_many_in`]) such a job
//! commits before (and whatever becomes of) the caller's transaction, so it must carry an
//! idempotency key: the caller's retry then finds the job it already made.

use std::{collections::HashMap, sync::Arc};

use jobs::Db;
use jobs::{BoxFuture, Enqueued, Enqueuer, Job, NewJob};
use sqlx::{pool::PoolConnection, PgConnection, Postgres};

use crate::{
    clock::Clock,
    queue::{self, JobInsert, QueueError},
    registry::{Refused, Registry},
};

/// Why an enqueue wrote nothing (of the batch, or of the statement that failed: see
/// [`Queue::enqueue_many`]). Every variant but `Database` is the caller's to fix: retrying the
/// same jobs cannot help.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// No kind of that name is registered with this process.
    #[error("invalid job: unknown job kind {kind:?} (known: {})", known.join(", "))]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds this process has.
        known: Vec<String>,
    },
    /// The args do not fit the kind (they do not deserialize into its type).
    #[error("invalid job: {reason}")]
    BadArgs {
        /// The kind.
        kind: String,
        /// What does not fit (field names, never values).
        reason: String,
    },
    /// An option the table refuses: an empty or overlong queue, key or limit key, no attempts.
    #[error("invalid job: {reason}")]
    BadOption {
        /// The kind.
        kind: String,
        /// Which option and why.
        reason: String,
    },
    /// A kind that lives in another database, enqueued beside the caller's transaction without
    /// an idempotency key (see the module docs).
    #[error(
        "invalid job: kind {kind:?} lives in database {database:?}, not in the caller's \
         ({home:?}): enqueued beside the caller's transaction it commits on its own, so it needs \
         an idempotency key"
    )]
    NeedsKey {
        /// The kind.
        kind: String,
        /// Its database.
        database: String,
        /// The caller's.
        home: String,
    },
    /// An idempotency key kept changing hands until the insert gave up; the same enqueue may
    /// succeed later.
    #[error("idempotency key of kind {kind:?} kept changing hands; try again")]
    KeyContended {
        /// The kind.
        kind: String,
    },
    /// The database failed; the same enqueue may succeed later.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<QueueError> for EnqueueError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Database(d) => Self::Database(d),
            QueueError::KeyContended { kind, .. } => Self::KeyContended { kind },
            // `prepare` checked every row against the same rules before any statement, so
            // the insert's own check cannot refuse one; should it, the message names the kind.
            QueueError::InvalidJob(reason) => Self::BadOption {
                kind: String::new(),
                reason,
            },
            QueueError::LostLease { .. } => unreachable!("an insert holds no claim"),
        }
    }
}

/// How long a bulk [`Queue::enqueue_many`] waits for its second connection before it inserts
/// everything on its first.
const SECOND_CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Where the jobs of kinds that do not live in the queue's own database go.
#[derive(Clone, Debug)]
pub struct Routes {
    /// The name of the queue's own database (that of its pool and of callers' connections).
    home: String,
    /// kind → (database name, its handle).
    by_kind: HashMap<String, (String, Db)>,
}

impl Routes {
    /// No route: every kind lives in `home`.
    pub fn new(home: &str) -> Self {
        Self {
            home: home.to_owned(),
            by_kind: HashMap::new(),
        }
    }

    /// Sends `kind`'s jobs to the database `name` on `db`.
    pub fn insert(&mut self, kind: &str, name: &str, db: Db) {
        self.by_kind.insert(kind.to_owned(), (name.to_owned(), db));
    }

    /// The database `kind`'s jobs go to: `None` for the queue's own.
    fn of(&self, kind: &str) -> Option<&(String, Db)> {
        self.by_kind.get(kind)
    }
}

impl Routes {
    /// Where a process of this fleet sends each kind whose jobs do not live in `main`.
    pub fn of_fleet(dbs: &crate::databases::Databases) -> Self {
        let mut r = Routes::new(crate::config::MAIN_DATABASE);
        for (kind, d) in dbs.homes() {
            r.insert(kind, &d.name, d.db.clone());
        }
        r
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self::new(crate::config::MAIN_DATABASE)
    }
}

/// Enqueues jobs. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    db: Db,
    registry: Arc<Registry>,
    /// Set on the queue a handler gets: the jobs it enqueues record it as their parent, when
    /// they land in the parent's database (ids are per database).
    parent: Option<(i64, Arc<str>)>,
    routes: Arc<Routes>,
    /// The time jobs are enqueued at (a job without `run_at` is due at it).
    clock: Clock,
}

impl Queue {
    /// A queue over `db` for `registry`'s kinds, filling placement defaults from their
    /// resolved settings.
    pub fn new(db: impl Into<Db>, registry: Arc<Registry>) -> Self {
        Self {
            db: db.into(),
            registry,
            parent: None,
            routes: Arc::new(Routes::default()),
            clock: Clock::System,
        }
    }

    /// This queue, enqueueing at `clock`'s time (a test's [`crate::clock::ManualClock`])
    /// instead of the database's.
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// The enqueue API of a process of this fleet: callers' connections are on `main`, and
    /// jobs of kinds homed elsewhere go to their own database.
    pub fn of_fleet(dbs: &crate::databases::Databases, registry: Arc<Registry>) -> Self {
        Queue::new(dbs.main.db.clone(), registry).with_routes(Routes::of_fleet(dbs))
    }

    /// This queue, sending the jobs of `routes`' kinds to their own databases.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = Arc::new(routes);
        self
    }

    /// This queue, recording `parent` as the parent of every job enqueued through it (the
    /// queue a handler of job `parent` gets; `parent` lives in the queue's own database).
    pub fn child_of(&self, parent: i64) -> Self {
        let home: Arc<str> = self.routes.home.as_str().into();
        self.child_of_in(parent, home)
    }

    /// Like [`Queue::child_of`] for a parent job that lives in the database `database`: its
    /// children record it as their parent only when they land in that database too.
    pub fn child_of_in(&self, parent: i64, database: impl Into<Arc<str>>) -> Self {
        Self {
            parent: Some((parent, database.into())),
            ..self.clone()
        }
    }

    /// The database it enqueues in (and whose connections callers' transactions are on).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Enqueues one typed job with an optional idempotency key.
    pub async fn enqueue<J: Job>(
        &self,
        args: &J,
        key: Option<&str>,
    ) -> Result<Enqueued, EnqueueError> {
        let mut job = NewJob::of(args).map_err(|e| EnqueueError::BadArgs {
            kind: J::KIND.to_owned(),
            reason: e.to_string(),
        })?;
        job.opts.idempotency_key = key.map(str::to_owned);
        self.enqueue_new(job).await
    }

    /// Enqueues one untyped job.
    pub async fn enqueue_new(&self, job: NewJob) -> Result<Enqueued, EnqueueError> {
        let mut v = self.enqueue_many(vec![job]).await?;
        Ok(v.remove(0))
    }

    /// Enqueues many jobs (bulk: thousands per statement). Results in input order; a duplicate
    /// key returns its holder and never fails the batch. No caller transaction: a job of a kind
    /// that lives in another database needs no key here.
    ///
    /// A batch of more than one statement's worth (5,000 jobs) whose jobs carry
    /// no idempotency key and no limit key is split in two halves inserted side by side on two
    /// connections: one insert keeps one Postgres backend, so one core, busy (a profile of a
    /// 200,000-job enqueue: `postgres` 47 %, idle 45 % on two cores). Keys keep the one
    /// connection: the earlier of two jobs with one key must be the one that holds it, and a
    /// fair rank counts the jobs queued before it. Either way every statement commits on its
    /// own, so a failure part way leaves the statements before it written, as it always did.
    ///
    /// Behind a transaction pooler the whole call is one transaction (its statements must
    /// share a server connection): all of it is written, or none.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, EnqueueError> {
        let mut rows = self.prepare(jobs)?;
        let Some(conn) = self.db.acquire_session().await else {
            let mut tx = self.db.begin().await?;
            let out = self.insert_routed(On::Caller(&mut tx), rows, false).await?;
            tx.commit().await?;
            return Ok(out);
        };
        let mut conn = conn?;
        let unkeyed = rows.iter().all(JobInsert::is_unkeyed);
        if unkeyed && self.routes.by_kind.is_empty() && rows.len() > queue::ENQUEUE_CHUNK {
            // A second connection only if one comes quickly: a small or busy pool inserts on
            // the one it gave.
            let other = if self.db.max_connections() >= 2 {
                tokio::time::timeout(SECOND_CONNECTION_WAIT, self.db.acquire_session())
                    .await
                    .ok()
                    .flatten()
                    .and_then(Result::ok)
            } else {
                None
            };
            if let Some(mut other) = other {
                // Halves on a statement boundary, so neither side runs a short extra statement.
                let chunks = rows.len().div_ceil(queue::ENQUEUE_CHUNK);
                let second = rows.split_off(chunks.div_ceil(2) * queue::ENQUEUE_CHUNK);
                let (mut first, second) = tokio::try_join!(
                    self.insert_routed(On::Pooled(&mut conn), rows, false),
                    self.insert_routed(On::Pooled(&mut other), second, false)
                )?;
                first.extend(second);
                return Ok(first);
            }
        }
        self.insert_routed(On::Pooled(&mut conn), rows, false).await
    }

    /// Enqueues on the caller's connection (on the queue's own database), typically `&mut *tx`:
    /// the jobs exist only if the caller commits, and workers are woken at that commit. A job
    /// of a kind that lives in another database is the exception (see the module docs): it is
    /// written there at once, and refused without an idempotency key.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        let rows = self.prepare(jobs)?;
        self.insert_routed(On::Caller(conn), rows, true).await
    }

    /// Resolves and validates every job: nothing is written for a batch that holds a bad one.
    fn prepare(&self, jobs: Vec<NewJob>) -> Result<Vec<JobInsert>, EnqueueError> {
        let typed: Vec<bool> = jobs.iter().map(NewJob::is_typed).collect();
        // One call, one enqueuing span: its trace context is the same for every job.
        let trace = crate::telemetry::current_trace_context();
        let rows: Vec<JobInsert> = jobs
            .into_iter()
            .map(|j| self.resolve(j, trace.clone()))
            .collect();
        // What the schema refuses first, then what this process's kinds refuse.
        for (row, typed) in rows.iter().zip(typed) {
            queue::validate_insert(row).map_err(|e| EnqueueError::BadOption {
                kind: row.kind.clone(),
                reason: match e {
                    QueueError::InvalidJob(m) => m,
                    other => other.to_string(),
                },
            })?;
            self.registry
                .check_parts(&row.kind, &row.args, typed)
                .map_err(|refused| match refused {
                    Refused::UnknownKind { kind, known } => {
                        EnqueueError::UnknownKind { kind, known }
                    }
                    Refused::BadArgs(reason) => EnqueueError::BadArgs {
                        kind: row.kind.clone(),
                        reason,
                    },
                })?;
        }
        Ok(rows)
    }

    /// Inserts `rows`: those of the queue's own database on `conn`, the others on their own
    /// database's pool, first (so a failure there leaves nothing on `conn`). `beside_tx`: the
    /// caller may hold a transaction on `conn`, so routed jobs need a key.
    async fn insert_routed(
        &self,
        mut conn: On<'_>,
        rows: Vec<JobInsert>,
        beside_tx: bool,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        let out = if self.routes.by_kind.is_empty() {
            conn.insert_many(&rows, self.clock.now()).await?
        } else {
            // Group by target database, keeping each job's input position.
            let mut local: Vec<usize> = Vec::new();
            let mut remote: Vec<(&str, &Db, Vec<usize>)> = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                match self.routes.of(&row.kind) {
                    None => local.push(i),
                    Some((name, db)) => {
                        if beside_tx && row.idempotency_key.is_none() {
                            return Err(EnqueueError::NeedsKey {
                                kind: row.kind.clone(),
                                database: name.clone(),
                                home: self.routes.home.clone(),
                            });
                        }
                        match remote.iter_mut().find(|(n, _, _)| *n == name.as_str()) {
                            Some((_, _, v)) => v.push(i),
                            None => remote.push((name.as_str(), db, vec![i])),
                        }
                    }
                }
            }
            let mut out: Vec<Option<Enqueued>> = vec![None; rows.len()];
            let pick = |idx: &[usize]| -> Vec<JobInsert> {
                idx.iter().map(|&i| rows[i].clone()).collect()
            };
            for (_, db, idx) in &remote {
                // Their own transaction on their own database: all of them or none.
                let mut tx = db.begin().await?;
                let got = queue::job_insert_many(&mut tx, &pick(idx), self.clock.now()).await?;
                tx.commit().await?;
                for (&i, e) in idx.iter().zip(got) {
                    out[i] = Some(e);
                }
            }
            if !local.is_empty() {
                let got = conn.insert_many(&pick(&local), self.clock.now()).await?;
                for (&i, e) in local.iter().zip(got) {
                    out[i] = Some(e);
                }
            }
            out.into_iter()
                .map(|e| e.expect("every job was inserted in one database"))
                .collect()
        };
        // Counted at the statement, not the commit: a caller's rollback still counts.
        let m = &crate::metrics::metrics().enqueued;
        for (row, r) in rows.iter().zip(&out) {
            if !r.duplicate {
                m.with_label_values(&[&row.kind]).inc();
            }
        }
        Ok(out)
    }

    fn resolve(&self, j: NewJob, trace_context: Option<serde_json::Value>) -> JobInsert {
        // An unknown kind gets the code defaults here and is refused by the caller's check.
        let d = self.registry.settings(&j.kind).cloned().unwrap_or_default();
        let limited = d.is_limited();
        // The parent id only means something in the parent's own database.
        let target = self
            .routes
            .of(&j.kind)
            .map(|(name, _)| name.as_str())
            .unwrap_or(self.routes.home.as_str());
        let parent_id = self
            .parent
            .as_ref()
            .filter(|(_, db)| &**db == target)
            .map(|(id, _)| *id);
        JobInsert {
            queue: j.opts.queue.unwrap_or(d.queue),
            priority: j.opts.priority.unwrap_or(d.priority),
            max_attempts: j.opts.max_attempts.unwrap_or(d.max_attempts),
            run_at: j.opts.run_at,
            idempotency_key: j.opts.idempotency_key,
            trace_context,
            parent_id,
            limit_key: self.registry.limit_key_of(&j.kind, &j.args),
            limited,
            kind: j.kind,
            args: j.args,
        }
    }
}

impl Enqueuer for Queue {
    fn enqueue_many<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> BoxFuture<'a, Result<Vec<Enqueued>, jobs::EnqueueError>> {
        Box::pin(async move {
            self.enqueue_many_in(conn, jobs).await.map_err(|e| match e {
                EnqueueError::Database(d) => jobs::EnqueueError::Database(d),
                // Contention is transient: the handler's retry (with backoff) re-runs it.
                e @ EnqueueError::KeyContended { .. } => jobs::EnqueueError::Busy(e.to_string()),
                invalid => jobs::EnqueueError::Invalid(
                    invalid
                        .to_string()
                        .trim_start_matches("invalid job: ")
                        .to_owned(),
                ),
            })
        })
    }
}

/// The connection a batch is written on.
enum On<'c> {
    /// A connection the enqueuer cannot close if the call is dropped (the caller's, perhaps in
    /// its transaction, or the one transaction a transaction pooler gets): every chunk is an
    /// `INSERT`.
    Caller(&'c mut PgConnection),
    /// A session the queue took from its pool for this call: a chunk of jobs without keys may
    /// be copied (`queue::job_insert_many_pooled`).
    Pooled(&'c mut PoolConnection<Postgres>),
}

impl On<'_> {
    async fn insert_many(
        &mut self,
        rows: &[JobInsert],
        now: queue::Now,
    ) -> Result<Vec<Enqueued>, queue::QueueError> {
        match self {
            On::Caller(conn) => queue::job_insert_many(conn, rows, now).await,
            On::Pooled(conn) => queue::job_insert_many_pooled(conn, rows, now).await,
        }
    }
}
