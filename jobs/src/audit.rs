//! The audit trail (`audit_log`): who did what to which resource. Metadata carries ids,
//! counts and filters — never PII.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// AuditRecord: appends one row, on `conn` (typically the transaction that made the change,
/// so the change and its audit row commit together or not at all).
pub async fn record(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    resource_type: &str,
    resource_id: Option<&str>,
    metadata: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, resource_type, resource_id, metadata)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(resource_type)
    .bind(resource_id)
    .bind(metadata)
    .execute(conn)
    .await?;
    Ok(())
}

/// AuditDeleteOlderThan: deletes up to `batch` rows older than `days` (retention), oldest
/// first, on `audit_log_created_at_idx`. Returns how many went; call until fewer than `batch`.
pub async fn delete_older_than(pool: &PgPool, days: i64, batch: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM audit_log WHERE id IN (
             SELECT id FROM audit_log
             WHERE created_at < now() - $1 * interval '1 day'
             ORDER BY created_at LIMIT $2)",
    )
    .bind(days as f64)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
