//! The audit trail (`audit_log`): who did what to which resource. Metadata carries ids,
//! counts and filters — never PII.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::Db;
use uuid::Uuid;

/// AuditRecord: appends one row, on `conn` (typically the transaction that made the change,
/// so the change and its audit row commit together or not at all).
pub async fn record(
    conn: impl sqlx::PgExecutor<'_>,
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

/// Why a traveler's sealed PII was opened, for the access audit ([`pii_read`]).
#[derive(Debug, Clone, Copy)]
pub struct PiiRead<'a> {
    /// What for: `booking_order` (the order's passenger), `key_rotation` (re-sealed), …
    pub purpose: &'a str,
    /// The job that read it, when a job did.
    pub job_id: Option<i64>,
    /// Where operators look for it: `("campaign", id)` shows on the booking page beside the
    /// booking's own entries; `("traveler_profile", id)` otherwise.
    pub shown_on: (&'a str, Uuid),
}

/// AuditPiiRead: one decryption of traveler profile `profile_id`'s sealed fields (the passport
/// number), as an `audit_log` row `pii.read` by `fleet` naming the purpose and the job, never
/// the data. Written on the connection of the read, so a read that is rolled back leaves no
/// row and one that commits always has its row.
pub async fn pii_read(
    conn: impl sqlx::PgExecutor<'_>,
    profile_id: Uuid,
    read: PiiRead<'_>,
) -> Result<(), sqlx::Error> {
    let (resource_type, resource_id) = read.shown_on;
    record(
        conn,
        "fleet",
        "pii.read",
        resource_type,
        Some(&resource_id.to_string()),
        &serde_json::json!({
            "profile_id": profile_id, "purpose": read.purpose, "job_id": read.job_id,
            "fields": ["passport_number"],
        }),
    )
    .await
}

/// AuditDeleteOlderThan: deletes up to `batch` rows older than `days` (retention), oldest
/// first, on `audit_log_created_at_idx`. Returns how many went; call until fewer than `batch`.
pub async fn delete_older_than(db: &Db, days: i64, batch: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM audit_log WHERE id IN (
             SELECT id FROM audit_log
             WHERE created_at < now() - $1 * interval '1 day'
             ORDER BY created_at LIMIT $2)",
    )
    .bind(days as f64)
    .bind(batch)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// One audit row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// `audit_log.id`.
    pub id: Uuid,
    /// Who: an operator's name, or `fleet` for the fleet's own actions.
    pub actor: String,
    /// What, e.g. `kind.pause`, `booking.refunded`.
    pub action: String,
    /// The kind of thing acted on, e.g. `booking`, `kind`, `job`.
    pub resource_type: String,
    /// Which one, when one.
    pub resource_id: Option<String>,
    /// Ids, counts and filters (never PII).
    pub metadata: Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Which audit rows to list. Unset fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Actions starting with this (`booking.` lists every booking action).
    pub action_prefix: Option<String>,
    /// Exactly this resource type.
    pub resource_type: Option<String>,
    /// Exactly this resource id.
    pub resource_id: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// The next page: rows older than this one.
    pub before_id: Option<Uuid>,
    /// Most rows (1..=10000).
    pub limit: i64,
}

/// AuditPosition: when row `id` was written, if it is one of the domain's (a page cursor).
pub async fn position(db: &Db, id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT created_at FROM audit_log WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// AuditList: rows matching `f`, newest first, paged by `(created_at, id)` keyset.
pub async fn list(db: &Db, f: &AuditFilter) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let before = match f.before_id {
        Some(id) => position(db, id).await?.map(|at| (at, id)),
        None => None,
    };
    list_before(db, f, before).await
}

/// AuditList from an explicit `(created_at, id)` cursor (`f.before_id` is not read): what a
/// reader merging this trail with another one pages with.
pub async fn list_before(
    db: &Db,
    f: &AuditFilter,
    before: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, actor, action, resource_type, resource_id, metadata, created_at
         FROM audit_log
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
    .fetch_all(db)
    .await
}
