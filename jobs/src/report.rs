//! Domain figures for the demo's summary and progress: what the fleet did to campaigns,
//! bookings, refunds and emails. Read only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Counts over the domain tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DomainCounts {
    /// Campaigns in all.
    pub campaigns: i64,
    /// Campaigns searched at least once (moved on from their first window, or no longer
    /// active).
    pub campaigns_searched: i64,
    /// Campaigns resolved since `since`: no longer active, or their next search is after it.
    pub campaigns_resolved: i64,
    /// Bookings ticketed.
    pub bookings_ticketed: i64,
    /// Bookings failed (hold voided or never taken).
    pub bookings_failed: i64,
    /// Refunds Stripe confirmed.
    pub refunds_succeeded: i64,
    /// Card-expiry reminders sent.
    pub reminders_sent: i64,
}

/// The counts now; `since` dates "resolved" (typically the start of a run).
pub async fn counts(pool: &PgPool, since: DateTime<Utc>) -> Result<DomainCounts, sqlx::Error> {
    let row: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM campaigns),
                (SELECT count(*) FROM campaigns WHERE status <> 'active' OR next_search_at > created_at + interval '1 second'),
                (SELECT count(*) FROM campaigns WHERE status <> 'active' OR next_search_at > $1),
                (SELECT count(*) FROM bookings WHERE status = 'ticketed'),
                (SELECT count(*) FROM bookings WHERE status = 'failed'),
                (SELECT count(*) FROM refunds WHERE status = 'succeeded'),
                (SELECT count(*) FROM notifications WHERE kind LIKE 'card%' AND sent_at IS NOT NULL)",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(DomainCounts {
        campaigns: row.0,
        campaigns_searched: row.1,
        campaigns_resolved: row.2,
        bookings_ticketed: row.3,
        bookings_failed: row.4,
        refunds_succeeded: row.5,
        reminders_sent: row.6,
    })
}
