//! `webhook_events`: the providers' deliveries we have recorded, one row per `(provider,
//! event id)`. Providers deliver at least once; this table turns that into "each event's
//! follow-ups are enqueued once". Its one owner: the ingress records, the retention purge
//! deletes.

use crate::Db;
use sqlx::PgConnection;

/// WebhookEventRecord: records a delivery on `conn` (the transaction that also enqueues its
/// follow-ups). Returns false for a duplicate: the event was recorded before, nothing changed.
pub async fn record(
    conn: &mut PgConnection,
    provider: &str,
    event_id: &str,
    event_type: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, type) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(provider)
    .bind(event_id)
    .bind(event_type)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// WebhookEventDeleteOlderThan: deletes up to `batch` rows received more than `days` ago
/// (`webhook_events_received_at_idx`), oldest first. Returns how many went.
pub async fn delete_older_than(db: &Db, days: i64, batch: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM webhook_events WHERE (provider, event_id) IN (
             SELECT provider, event_id FROM webhook_events
             WHERE received_at < now() - $1 * interval '1 day'
             ORDER BY received_at LIMIT $2)",
    )
    .bind(days as f64)
    .bind(batch)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// WebhookEventCount: how many of `event_ids` are recorded for `provider`, and how many
/// deliveries are recorded in all.
pub async fn count_recorded(
    conn: &mut PgConnection,
    provider: &str,
    event_ids: &[String],
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_events WHERE provider = $1 AND event_id = ANY($2)),
                (SELECT count(*) FROM webhook_events)",
    )
    .bind(provider)
    .bind(event_ids)
    .fetch_one(conn)
    .await
}
