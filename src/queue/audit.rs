//! The engine's operator audit (`fleet_audit`): who paused, resumed, drained, replayed,
//! cancelled, pruned or enqueued, and who migrated the schema. A row is written on the
//! transaction of the change it records, so both commit or neither does. Metadata carries ids,
//! counts and filters, never PII. The domain's own changes are audited in its `audit_log`
//! (`jobs::audit`); [`crate::Ops::audit`] merges the two for operators.

use chrono::{DateTime, Utc};
use jobs::audit::{AuditEntry, AuditFilter};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// AuditRecord: appends one row of the engine's audit, on `conn` (the change's transaction).
pub async fn audit_record(
    conn: impl PgExecutor<'_>,
    actor: &str,
    action: &str,
    resource_type: &str,
    resource_id: Option<&str>,
    metadata: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fleet_audit (actor, action, resource_type, resource_id, metadata)
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

/// AuditPosition: when row `id` was written, if it is one of the engine's (a page cursor).
pub async fn audit_position(
    conn: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT created_at FROM fleet_audit WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// AuditList: the engine's rows matching `f`, newest first, older than `before` (a
/// `(created_at, id)` keyset cursor; `f.before_id` is not read: the caller resolved it).
pub async fn audit_list(
    conn: impl PgExecutor<'_>,
    f: &AuditFilter,
    before: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, actor, action, resource_type, resource_id, metadata, created_at
         FROM fleet_audit
         WHERE ($1::text IS NULL OR actor = $1)
           AND ($2::text IS NULL OR starts_with(action, $2))
           AND ($3::text IS NULL OR resource_type = $3)
           AND ($4::text IS NULL OR resource_id = $4)
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
         ORDER BY created_at DESC, id DESC LIMIT $9",
    )
    .bind(&f.actor)
    .bind(&f.action_prefix)
    .bind(&f.resource_type)
    .bind(&f.resource_id)
    .bind(f.since)
    .bind(f.until)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(f.limit.clamp(1, 10_000))
    .fetch_all(conn)
    .await
}
