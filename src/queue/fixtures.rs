//! Bulk rows for benchmarks: history that a burn-down runs beside.

use sqlx::{AssertSqlSafe, PgConnection, PgExecutor};

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

/// The storage parameters a benchmark may set on `fleet_jobs` (A/B runs of table settings).
const BENCH_STORAGE_PARAMS: &[&str] = &[
    "fillfactor",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_vacuum_insert_threshold",
    "autovacuum_analyze_scale_factor",
    "autovacuum_analyze_threshold",
    "autovacuum_vacuum_cost_delay",
];

/// JobTableSetStorage: sets storage parameters of `fleet_jobs` for a benchmark's A/B run
/// (`value = None`: back to the server's default, `RESET`). Names must be one of a fixed list
/// and values plain numbers, so nothing but a storage parameter can be set.
pub async fn job_table_set_storage(
    conn: &mut PgConnection,
    params: &[(String, Option<String>)],
) -> Result<(), String> {
    let (mut set, mut reset) = (Vec::new(), Vec::new());
    for (name, value) in params {
        if !BENCH_STORAGE_PARAMS.contains(&name.as_str()) {
            return Err(format!(
                "unknown table setting {name:?} (expected one of: {})",
                BENCH_STORAGE_PARAMS.join(", ")
            ));
        }
        match value {
            None => reset.push(name.clone()),
            Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
                set.push(format!("{name} = {v}"))
            }
            Some(v) => {
                return Err(format!(
                    "table setting {name} needs a number or \"default\", got {v:?}"
                ))
            }
        }
    }
    for (verb, parts) in [("SET", set), ("RESET", reset)] {
        if !parts.is_empty() {
            sqlx::query(AssertSqlSafe(format!(
                "ALTER TABLE fleet_jobs {verb} ({})",
                parts.join(", ")
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Parses `name=value` (value `default` = reset) as [`job_table_set_storage`] takes it.
pub fn parse_table_setting(s: &str) -> Result<(String, Option<String>), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not name=value"))?;
    let value = (value != "default").then(|| value.to_owned());
    Ok((name.trim().to_owned(), value.map(|v| v.trim().to_owned())))
}

/// JobTableVacuum: `VACUUM fleet_jobs` now, as autovacuum would (benchmarks on a server whose
/// autovacuum is off, to show what it buys).
pub async fn job_table_vacuum(conn: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM fleet_jobs").execute(conn).await?;
    Ok(())
}

/// JobAttemptedAt: when the claims of jobs `ids` started (`attempted_at`, µs since 1970), for
/// the rows still there: a benchmark places its slow pickups with it.
pub async fn attempted_at_us(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT id, (extract(epoch FROM attempted_at) * 1000000)::bigint
        FROM fleet_jobs WHERE id = ANY($1) AND attempted_at IS NOT NULL
        "#,
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}
