//! The records and the vocabulary the public API speaks: a job's state and its record as
//! operators read it, the filters [`crate::Ops`] takes, what its commands report, and the
//! queue's errors. The statements that read and write them are the engine's own.

pub use crate::queue::{
    AttemptError, BudgetState, CancelledJob, CompletionMinute, DrainCounts, ErrorClass, JobFilter,
    JobRecord, JobState, JobSummary, KindStats, PausedKind, QueueError, ReplayResult, SkippedJob,
    WorkerRow,
};
