//! The `campaigns` row's status and search schedule, and their one owner: every job kind that
//! moves a campaign calls these functions (reads stay with whoever needs them).
//!
//! | function | from | to | by |
//! |---|---|---|---|
//! | [`require_action`] | `active`, `paused` | `action_required` | the saga (card declined), and [`crate::campaign_health::require_action_for`] (card or profile missing, consent withdrawn, card or passport expiring before the trip: the search, the saga's claim, `card_detached`, the daily sweep) |
//! | [`mark_booked`] | any but `booked` | `booked` | the saga, in the transaction that tickets the booking |
//! | [`push_next_search`], [`set_next_search`] | `active` | `active`, next search later | the saga (failed attempt), the search |
//! | [`expire_unless_booking`] | `active` | `expired` | the search (no bookable date left) |
//! | [`expire_ended`] | `active`, `paused`, `action_required` | `expired` | the scan (past `expires_at`) |
//! | [`cancel_all_of_user`] | `active`, `paused`, `action_required` | `cancelled` | the account erasure, first (no new search or booking starts; a saga not past its order voids its hold) |
//!
//! A campaign whose booking saga is in flight (`pending`, `authorized`) is never expired: the
//! saga owns it until it finishes.

use std::time::Duration;

use crate::Db;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// CampaignRequireAction: the user must act (fix the card or the profile) before the campaign
/// searches again. Returns whether it moved.
pub async fn require_action(conn: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE campaigns SET status = 'action_required', updated_at = now()
         WHERE id = $1 AND status IN ('active', 'paused')",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// CampaignMarkBooked: the campaign's trip is booked; it searches no more.
pub async fn mark_booked(conn: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaigns SET status = 'booked', updated_at = now()
         WHERE id = $1 AND status <> 'booked'",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// CampaignPushNextSearch: the next search no earlier than `by` from the database's now
/// (active campaigns only).
pub async fn push_next_search(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    by: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaigns SET next_search_at = now() + make_interval(secs => $2),
                updated_at = now()
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(by.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// CampaignSetNextSearch: the next search at `at` (active campaigns only).
pub async fn set_next_search(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaigns SET next_search_at = $2, updated_at = now()
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// CampaignExpire: an active campaign with nothing left to search expires, unless its booking
/// saga is in flight.
pub async fn expire_unless_booking(conn: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaigns SET status = 'expired', updated_at = now()
         WHERE id = $1 AND status = 'active'
           AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.campaign_id = $1
                           AND b.status IN ('pending', 'authorized'))",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// CampaignExpireEnded: moves campaigns past `expires_at` to `expired`, `batch` per statement,
/// never one with a booking in flight. Returns how many it moved.
pub async fn expire_ended(db: &Db, batch: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "UPDATE campaigns SET status = 'expired', updated_at = now()
             WHERE id IN (
                 SELECT c.id FROM campaigns c
                 WHERE c.status IN ('active', 'paused', 'action_required')
                   AND c.expires_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.campaign_id = c.id
                                   AND b.status IN ('pending', 'authorized'))
                 ORDER BY c.expires_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(batch)
        .execute(db)
        .await?
        .rows_affected();
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// CampaignCancelAllOfUser: every campaign of user `user_id` still searching or waiting on the
/// user moves to `cancelled` (an account erasure). Returns the campaigns it moved.
pub async fn cancel_all_of_user(
    conn: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE campaigns SET status = 'cancelled', updated_at = now()
         WHERE user_id = $1 AND status IN ('active', 'paused', 'action_required')
         RETURNING id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
}
