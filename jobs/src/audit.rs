//! The audit trail (`audit_log`): who did what to which resource. Metadata carries ids,
//! counts and filters — never PII.

use serde_json::Value;
use sqlx::PgConnection;

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
