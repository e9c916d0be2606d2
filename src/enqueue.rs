//! The typed enqueue API: one job, many jobs in one statement, or inside the caller's own
//! transaction. Placement defaults come from the kind's resolved settings.
//!
//! Nothing is written for a batch that holds an invalid job: every job's kind must be
//! registered with this process and a raw job's args must deserialize into the kind's type, so
//! a typo or a stale producer fails where it happens, never as a dead job later.

use std::sync::Arc;

use jobs::{BoxFuture, EnqueueError, Enqueued, Enqueuer, Job, NewJob};
use sqlx::{PgConnection, PgPool};

use crate::{
    queue::{self, JobInsert, QueueError},
    registry::Registry,
};

/// Enqueues jobs. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pool: PgPool,
    registry: Arc<Registry>,
    /// Set on the queue a handler gets: the jobs it enqueues record it as their parent.
    parent: Option<i64>,
}

impl Queue {
    /// A queue over `pool` for `registry`'s kinds, filling placement defaults from their
    /// resolved settings.
    pub fn new(pool: PgPool, registry: Arc<Registry>) -> Self {
        Self {
            pool,
            registry,
            parent: None,
        }
    }

    /// This queue, recording `parent` as the parent of every job enqueued through it (the
    /// queue a handler of job `parent` gets).
    pub fn child_of(&self, parent: i64) -> Self {
        Self {
            parent: Some(parent),
            ..self.clone()
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues one typed job with an optional idempotency key.
    pub async fn enqueue<J: Job>(
        &self,
        args: &J,
        key: Option<&str>,
    ) -> Result<Enqueued, QueueError> {
        let mut job = NewJob::of(args).map_err(|e| QueueError::InvalidJob(e.to_string()))?;
        job.opts.idempotency_key = key.map(str::to_owned);
        self.enqueue_new(job).await
    }

    /// Enqueues one untyped job.
    pub async fn enqueue_new(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let mut conn = self.pool.acquire().await?;
        let mut v = self.enqueue_many_in(&mut conn, vec![job]).await?;
        Ok(v.remove(0))
    }

    /// Enqueues many jobs (bulk: thousands per statement). Results in input order; a duplicate
    /// key returns its holder and never fails the batch.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_many_in(&mut conn, jobs).await
    }

    /// Enqueues on the caller's connection, typically `&mut *tx`: the jobs exist only if the
    /// caller commits, and workers are woken at that commit.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let typed: Vec<bool> = jobs.iter().map(NewJob::is_typed).collect();
        // One call, one enqueuing span: its trace context is the same for every job.
        let trace = crate::telemetry::current_trace_context();
        let rows: Vec<JobInsert> = jobs
            .into_iter()
            .map(|j| self.resolve(j, trace.clone()))
            .collect();
        // What the schema refuses first, then what this process's kinds refuse.
        for (row, typed) in rows.iter().zip(typed) {
            queue::validate_insert(row)?;
            self.registry
                .check_parts(&row.kind, &row.args, typed)
                .map_err(QueueError::InvalidJob)?;
        }
        let out = queue::job_insert_many(conn, &rows, None).await?;
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
        JobInsert {
            queue: j.opts.queue.unwrap_or(d.queue),
            priority: j.opts.priority.unwrap_or(d.priority),
            max_attempts: j.opts.max_attempts.unwrap_or(d.max_attempts),
            run_at: j.opts.run_at,
            idempotency_key: j.opts.idempotency_key,
            trace_context,
            parent_id: self.parent,
            limit_key: self.registry.limit_key_of(&j.kind, &j.args),
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
    ) -> BoxFuture<'a, Result<Vec<Enqueued>, EnqueueError>> {
        Box::pin(async move {
            self.enqueue_many_in(conn, jobs).await.map_err(|e| match e {
                QueueError::Database(d) => EnqueueError::Database(d),
                QueueError::InvalidJob(m) => EnqueueError::Invalid(m),
                other => EnqueueError::Invalid(other.to_string()),
            })
        })
    }
}
