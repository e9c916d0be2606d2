//! The kill switch and drains: `fleet_paused_kinds`, read by the claim in [`super::job`].

use serde::Serialize;
use sqlx::{PgExecutor, Row};

use chrono::{DateTime, Utc};

/// KindPause: records `kind` as paused (the kill switch). A drain in progress on `kind` becomes
/// a full pause. Returns false if the kind was already fully paused.
pub async fn kind_pause(
    conn: impl PgExecutor<'_>,
    kind: &str,
    actor: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO fleet_paused_kinds (kind, paused_by, reason) VALUES ($1, $2, $3)
         ON CONFLICT (kind) DO UPDATE
            SET drain_through_id = NULL, paused_at = now(),
                paused_by = EXCLUDED.paused_by, reason = EXCLUDED.reason
            WHERE fleet_paused_kinds.drain_through_id IS NOT NULL",
    )
    .bind(kind)
    .bind(actor)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// KindDrainStart: holds `kind`'s new intake while its backlog finishes. Jobs stored now (id at
/// or below the returned cutoff) stay claimable; later ones wait for resume. Returns `None`
/// when the kind is already fully paused: a drain never loosens the kill switch. Draining a
/// draining kind moves its cutoff forward.
pub async fn kind_drain_start(
    conn: impl PgExecutor<'_>,
    kind: &str,
    actor: &str,
) -> Result<Option<i64>, sqlx::Error> {
    // Like resume, one statement: idle workers wake (at commit) to take the backlog a pause
    // may have been holding.
    sqlx::query_scalar(
        r#"
        WITH started AS (
            INSERT INTO fleet_paused_kinds (kind, paused_by, reason, drain_through_id)
            VALUES ($1, $2, 'drain', (SELECT coalesce(max(id), 0) FROM fleet_jobs))
            ON CONFLICT (kind) DO UPDATE
               SET drain_through_id = greatest(fleet_paused_kinds.drain_through_id,
                                               EXCLUDED.drain_through_id),
                   paused_by = EXCLUDED.paused_by
               WHERE fleet_paused_kinds.drain_through_id IS NOT NULL
            RETURNING drain_through_id
        ),
        notified AS (SELECT pg_notify('fleet_jobs', '') FROM started)
        SELECT drain_through_id FROM started, (SELECT count(*) FROM notified) n
        "#,
    )
    .bind(kind)
    .bind(actor)
    .fetch_optional(conn)
    .await
}

/// KindDrainEnd: turns the drains of `kinds` into full pauses, so backlog jobs that come due
/// later (retries) wait for resume too. Returns how many drains ended.
pub async fn kind_drain_end(
    conn: impl PgExecutor<'_>,
    kinds: &[String],
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE fleet_paused_kinds SET drain_through_id = NULL
         WHERE kind = ANY($1) AND drain_through_id IS NOT NULL",
    )
    .bind(kinds)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// KindResume: lifts a pause or drain and wakes workers. Returns false if the kind was not
/// paused.
pub async fn kind_resume(conn: impl PgExecutor<'_>, kind: &str) -> Result<bool, sqlx::Error> {
    let resumed: Option<String> = sqlx::query_scalar(
        r#"
        WITH resumed AS (DELETE FROM fleet_paused_kinds WHERE kind = $1 RETURNING kind),
        notified AS (SELECT pg_notify('fleet_jobs', '') FROM resumed)
        SELECT kind FROM resumed, (SELECT count(*) FROM notified) n
        "#,
    )
    .bind(kind)
    .fetch_optional(conn)
    .await?;
    Ok(resumed.is_some())
}

/// A paused or draining kind.
#[derive(Debug, Clone, Serialize)]
pub struct PausedKind {
    /// The kind no worker claims (beyond a drain's cutoff).
    pub kind: String,
    /// When the pause (or drain) began.
    pub paused_at: DateTime<Utc>,
    /// The operator who paused or drained it.
    pub paused_by: String,
    /// What the operator wrote (free text, audited).
    pub reason: String,
    /// While draining: the highest job id still claimable. `None`: fully paused.
    pub draining_through_id: Option<i64>,
}

/// KindListPaused: the paused and draining kinds.
pub async fn kind_list_paused(conn: impl PgExecutor<'_>) -> Result<Vec<PausedKind>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, paused_at, paused_by, reason, drain_through_id
         FROM fleet_paused_kinds ORDER BY kind",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PausedKind {
            kind: r.get(0),
            paused_at: r.get(1),
            paused_by: r.get(2),
            reason: r.get(3),
            draining_through_id: r.get(4),
        })
        .collect())
}

/// What a drain waits for, over the drained kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DrainCounts {
    /// Available jobs a drain lets run: at or below a draining kind's cutoff, or of a kind not
    /// paused at all (what a drain started now would let run).
    pub backlog: i64,
    /// Available jobs held until resume: above the cutoff, or of a fully paused kind.
    pub held: i64,
    /// Running jobs.
    pub running: i64,
    /// Jobs waiting out a retry's backoff: they may be mid-work (a saga between its steps). A
    /// drain does not wait for them; its pause holds them until resume.
    pub retrying: i64,
    /// When the first of them is due.
    pub next_retry_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// JobCountDraining: the drained kinds' available jobs, split into backlog and held, their
/// running jobs, and their jobs waiting to retry.
pub async fn job_count_draining(
    conn: impl PgExecutor<'_>,
    kinds: &[String],
) -> Result<DrainCounts, sqlx::Error> {
    let row = sqlx::query(
        "SELECT
            count(*) FILTER (WHERE j.state = 'available' AND (p.kind IS NULL
                OR (p.drain_through_id IS NOT NULL AND j.id <= p.drain_through_id))),
            count(*) FILTER (WHERE j.state = 'available'),
            count(*) FILTER (WHERE j.state = 'running'),
            count(*) FILTER (WHERE j.state = 'retryable'),
            min(j.run_at) FILTER (WHERE j.state = 'retryable')
         FROM fleet_jobs j LEFT JOIN fleet_paused_kinds p ON p.kind = j.kind
         WHERE j.kind = ANY($1) AND j.state IN ('available', 'running', 'retryable')",
    )
    .bind(kinds)
    .fetch_one(conn)
    .await?;
    let (backlog, available): (i64, i64) = (row.get(0), row.get(1));
    Ok(DrainCounts {
        backlog,
        // Every available job is either backlog or held: held is what the claim skips.
        held: available - backlog,
        running: row.get(2),
        retrying: row.get(3),
        next_retry_at: row.get(4),
    })
}
