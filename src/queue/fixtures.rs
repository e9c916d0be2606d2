//! Bulk rows for benchmarks: history that a burn-down runs beside.

use sqlx::PgConnection;

/// JobInsertFinishedHistory: inserts `n` completed jobs of `kind` (benchmarks' history), in
/// one statement, then refreshes statistics and checkpoints.
pub async fn job_insert_finished_history(
    conn: &mut PgConnection,
    kind: &str,
    n: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        INSERT INTO fleet_jobs (kind, queue, args, state, attempt, max_attempts, claim_seq,
                                run_at, created_at, attempted_at, finished_at)
        SELECT $1, 'default', jsonb_build_object('history', g), 'completed', 1, 1, 1,
               now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
               now() - interval '1 day'
        FROM generate_series(1, $2) g
        "#,
    )
    .bind(kind)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    sqlx::query("VACUUM ANALYZE fleet_jobs")
        .execute(&mut *conn)
        .await?;
    // Flush the setup's dirty pages now, so the checkpoint it would otherwise trigger does not
    // land inside whatever is measured next.
    sqlx::query("CHECKPOINT").execute(conn).await?;
    Ok(())
}
