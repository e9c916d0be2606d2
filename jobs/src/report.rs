//! Domain figures for the demo's summary and progress: what the fleet did to campaigns,
//! bookings, refunds and emails. Read only.

use crate::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

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
pub async fn counts(db: &Db, since: DateTime<Utc>) -> Result<DomainCounts, sqlx::Error> {
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
    .fetch_one(db)
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

/// Where the demo's work is, by phase of the product's story.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// Campaigns seeded.
    pub seeded: i64,
    /// Active campaigns not yet searched in this run.
    pub searching: i64,
    /// Bookings waiting for their card hold (`pending`).
    pub charging: i64,
    /// Bookings holding money, ordering or capturing (`authorized`).
    pub booking: i64,
    /// Bookings cancelled with money still captured: their refund is under way.
    pub compensating: i64,
    /// Campaigns resolved in this run (booked, failed over to a later search, or needing the
    /// user).
    pub done: i64,
}

/// The phases now; `since` is the start of the run.
pub async fn phases(db: &Db, since: DateTime<Utc>) -> Result<Phases, sqlx::Error> {
    let r: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM campaigns),
                (SELECT count(*) FROM campaigns WHERE status = 'active' AND next_search_at <= $1),
                (SELECT count(*) FROM bookings WHERE status = 'pending'),
                (SELECT count(*) FROM bookings WHERE status = 'authorized'),
                (SELECT count(*) FROM bookings WHERE status = 'cancelled' AND captured_at IS NOT NULL),
                (SELECT count(*) FROM campaigns WHERE status <> 'active' OR next_search_at > $1)",
    )
    .bind(since)
    .fetch_one(db)
    .await?;
    Ok(Phases {
        seeded: r.0,
        searching: r.1,
        charging: r.2,
        booking: r.3,
        compensating: r.4,
        done: r.5,
    })
}

/// What happened on one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RouteOutcome {
    /// IATA origin.
    pub origin: String,
    /// IATA destination.
    pub destination: String,
    /// Campaigns on it.
    pub campaigns: i64,
    /// Bookings ticketed (refunded ones included).
    pub ticketed: i64,
    /// Bookings failed or cancelled.
    pub failed: i64,
    /// Campaigns that need the user (card or profile).
    pub action_required: i64,
}

/// Outcomes per route, by origin and destination.
pub async fn by_route(db: &Db) -> Result<Vec<RouteOutcome>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.origin::text AS origin, c.destination::text AS destination,
                count(DISTINCT c.id) AS campaigns,
                count(b.id) FILTER (WHERE b.status IN ('ticketed', 'refunded')) AS ticketed,
                count(b.id) FILTER (WHERE b.status IN ('failed', 'cancelled')) AS failed,
                count(DISTINCT c.id) FILTER (WHERE c.status = 'action_required') AS action_required
         FROM campaigns c LEFT JOIN bookings b ON b.campaign_id = c.id
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(db)
    .await
}

/// The refunds' figures for the metrics snapshot (`fleet_refunds`, `fleet_refunds_owed`,
/// `fleet_refund_pending_oldest_seconds`): the money operators must see move.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RefundGauges {
    /// Refund rows per Stripe status.
    pub by_status: Vec<(String, i64)>,
    /// Bookings whose refund failed and that no refund made good since (no payout recorded):
    /// money we owe travelers.
    pub owed: i64,
    /// Seconds since the least recently updated refund still pending was updated (`None`:
    /// none pending).
    pub oldest_pending_s: Option<f64>,
}

/// RefundGauges: the refunds' figures now. One scan of `refunds` (a small table: one row per
/// refund made) and the pending ones through `refunds_unsettled_idx`.
pub async fn refund_gauges(db: &Db) -> Result<RefundGauges, sqlx::Error> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM refunds GROUP BY status ORDER BY status")
            .fetch_all(db)
            .await?;
    let (owed, oldest_pending_s): (i64, Option<f64>) = sqlx::query_as(
        "SELECT
            (SELECT count(DISTINCT f.booking_id) FROM refunds f
             WHERE f.status = 'failed' AND NOT EXISTS (
                 SELECT 1 FROM refunds g WHERE g.booking_id = f.booking_id
                 AND g.status IN ('pending', 'requires_action', 'succeeded'))),
            (SELECT extract(epoch FROM now() - min(updated_at))::float8 FROM refunds
             WHERE status IN ('pending', 'requires_action'))",
    )
    .fetch_one(db)
    .await?;
    Ok(RefundGauges {
        by_status,
        owed,
        oldest_pending_s,
    })
}

/// Money over one window, for operators (the console's Money page): what was booked, what
/// failed and why, what went back, what is still owed, what was disputed. Amounts per currency,
/// decimal strings; no ids, no personal data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MoneyWindow {
    /// Bookings ticketed (captured) in the window: (currency, count, total).
    pub booked: Vec<(String, i64, String)>,
    /// Bookings that failed in the window, by failure code (most first).
    pub failed_by_reason: Vec<(String, i64)>,
    /// Card holds taken in the window and still held (`authorized`).
    pub holds_open: i64,
    /// Refunds made or moved in the window, by status: (status, count).
    pub refunds_by_status: Vec<(String, i64)>,
    /// Refund amounts that succeeded in the window, per currency: (currency, total).
    pub refunded: Vec<(String, String)>,
    /// Disputes opened in the window (audited `payment.dispute_opened`).
    pub disputes: i64,
}

/// MoneyWindow: the figures of bookings, refunds and disputes since `since`.
pub async fn money(db: &Db, since: DateTime<Utc>) -> Result<MoneyWindow, sqlx::Error> {
    let booked: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT currency::text, count(*), sum(total_amount)::text FROM bookings
         WHERE captured_at >= $1 AND status IN ('ticketed', 'cancelled', 'refunded')
         GROUP BY currency ORDER BY currency",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    let failed_by_reason: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(failure_code, 'unknown'), count(*) FROM bookings
         WHERE status = 'failed' AND created_at >= $1
         GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    let refunds_by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM refunds WHERE created_at >= $1 OR updated_at >= $1
         GROUP BY status ORDER BY status",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    let refunded: Vec<(String, String)> = sqlx::query_as(
        "SELECT currency::text, sum(amount)::text FROM refunds
         WHERE status = 'succeeded' AND (created_at >= $1 OR updated_at >= $1)
         GROUP BY currency ORDER BY currency",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    let (holds_open, disputes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM bookings WHERE status = 'authorized' AND authorized_at >= $1),
                (SELECT count(*) FROM audit_log
                 WHERE action = 'payment.dispute_opened' AND created_at >= $1)",
    )
    .bind(since)
    .fetch_one(db)
    .await?;
    Ok(MoneyWindow {
        booked,
        failed_by_reason,
        holds_open,
        refunds_by_status,
        refunded,
        disputes,
    })
}
