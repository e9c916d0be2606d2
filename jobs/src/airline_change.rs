//! Airline-initiated changes: the airline moved a flight of an order we booked. This module
//! owns the `airline_changes` table (migration 20261206000018): what changed (the legs before
//! and after), what Duffel lets us do about it, the deadline we act by, and who decided.
//!
//! Invariants:
//! - One row per Duffel change (`aic_…`, the primary key): recording it again (a redelivered
//!   event, a sweep) updates what Duffel lets us do and never moves a decision.
//! - A row is decided once: every decision is guarded by `status = 'open'`, so an operator, the
//!   deadline job and Duffel's own record cannot overwrite each other; the first wins.
//! - The legs hold ids, airport codes and local times only (the shape of
//!   `bookings.flight_details`' slices); they are a traveler's itinerary, so erasure sets them
//!   to NULL ([`scrub_for_erasure`]).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::providers::{AirlineChange, OfferSlice};
use crate::Db;

/// How long operators have to decide, at most, from the detection.
pub const DECIDE_WITHIN: Duration = Duration::hours(48);

/// Decisions close this long before the earliest new departure. Duffel gives departures in
/// the airport's local time without an offset, read here as UTC: 24 h before departure plus
/// 14 h, the widest offset east of UTC, so the deadline is never later than 24 h before the
/// flight wherever it leaves from.
pub const CLOSE_BEFORE_DEPARTURE: Duration = Duration::hours(38);

/// Operators always get at least this long, however close the flight.
pub const DECIDE_AT_LEAST: Duration = Duration::hours(1);

/// The deadline for a change detected at `detected` whose legs are now `added`: 48 h after
/// the detection, or 38 h before the earliest new departure if that is sooner, but never less
/// than an hour after the detection (docs/decisions.md 50). Duffel documents no deadline of
/// its own.
pub fn respond_by(detected: DateTime<Utc>, added: &[OfferSlice]) -> DateTime<Utc> {
    let by_detection = detected + DECIDE_WITHIN;
    let by_departure = added
        .iter()
        .filter_map(|s| s.departing_at)
        .min()
        .map(|d| d.and_utc() - CLOSE_BEFORE_DEPARTURE);
    let deadline = by_departure.map_or(by_detection, |d| d.min(by_detection));
    deadline.max(detected + DECIDE_AT_LEAST)
}

/// One change as the fleet keeps it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChangeRow {
    /// `aic_…`.
    pub id: String,
    /// The booking whose order changed.
    pub booking_id: Uuid,
    /// `ord_…`.
    pub order_id: String,
    /// The legs before (NULL once erased).
    pub removed: Option<Value>,
    /// The legs after (NULL once erased).
    pub added: Option<Value>,
    /// What Duffel lets us do: `accept`, `cancel`, `change`, `update`.
    pub available_actions: Vec<String>,
    /// `open`, `accepted`, `cancelled` or `changed`.
    pub status: String,
    /// Who decided: an operator, `fleet:deadline`, or `duffel`.
    pub decided_by: Option<String>,
    /// The action asked for before the call to Duffel (`accept`, `cancel`).
    pub action_requested: Option<String>,
    /// When the decision was recorded.
    pub action_taken_at: Option<DateTime<Utc>>,
    /// When Duffel detected it.
    pub detected_at: DateTime<Utc>,
    /// The deadline.
    pub respond_by: DateTime<Utc>,
}

impl ChangeRow {
    /// Still waiting for a decision.
    pub fn is_open(&self) -> bool {
        self.status == "open"
    }

    /// Whether Duffel lets us `action` (`accept`, …) through the API.
    pub fn allows(&self, action: &str) -> bool {
        self.available_actions.iter().any(|a| a == action)
    }
}

/// The columns of [`ChangeRow`] (a macro: queries are static strings).
macro_rules! columns {
    () => {
        "id, booking_id, order_id, removed, added, available_actions, status, decided_by, \
         action_requested, action_taken_at, detected_at, respond_by"
    };
}

/// What [`record`] did.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// First time the fleet saw this change.
    pub new: bool,
    /// The row as it stands now.
    pub row: ChangeRow,
}

/// AirlineChangeRecord: records `c` (as Duffel lists it) for `booking_id`. A new change gets
/// its deadline ([`respond_by`]); a known one only refreshes what Duffel lets us do. A change
/// Duffel says was already actioned (in its dashboard, by the airline) is decided as
/// `duffel`, if still open here.
pub async fn record(
    conn: &mut PgConnection,
    booking_id: Uuid,
    c: &AirlineChange,
    now: DateTime<Utc>,
) -> Result<Recorded, sqlx::Error> {
    let detected = c.created_at.unwrap_or(now).min(now);
    let (new,): (bool,) = sqlx::query_as(
        "INSERT INTO airline_changes (id, booking_id, order_id, removed, added,
                                      available_actions, detected_at, respond_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET available_actions = EXCLUDED.available_actions,
                                        updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(&c.id)
    .bind(booking_id)
    .bind(&c.order_id)
    .bind(crate::booking::legs_json(&c.removed))
    .bind(crate::booking::legs_json(&c.added))
    .bind(&c.available_actions)
    .bind(detected)
    .bind(respond_by(detected, &c.added))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(taken) = c.action_taken.as_deref() {
        decide(conn, &c.id, taken, "duffel").await?;
    }
    let row = load(&mut *conn, &c.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(Recorded { new, row })
}

/// AirlineChangeDecide: records that `actor` decided change `id` (`status`: `accepted`,
/// `cancelled` or `changed`). Returns false when it was decided before (the first decision
/// stands).
pub async fn decide(
    conn: &mut PgConnection,
    id: &str,
    status: &str,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE airline_changes SET status = $2, decided_by = $3, action_taken_at = now(),
                updated_at = now()
         WHERE id = $1 AND status = 'open' AND $2 IN ('accepted', 'cancelled', 'changed')",
    )
    .bind(id)
    .bind(status)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// AirlineChangeRequestAction: notes that `action` is about to be asked of Duffel for change
/// `id` (before the call: Duffel has no idempotency key). Returns whether it was already
/// noted (a re-run: look at Duffel's record before asking again).
pub async fn note_request(db: &Db, id: &str, action: &str) -> Result<bool, sqlx::Error> {
    let before: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE airline_changes a SET action_requested = $2,
                action_requested_at = coalesce(a.action_requested_at, now()), updated_at = now()
         FROM (SELECT id, action_requested FROM airline_changes WHERE id = $1 FOR UPDATE) old
         WHERE a.id = old.id
         RETURNING old.action_requested",
    )
    .bind(id)
    .bind(action)
    .fetch_optional(db)
    .await?;
    Ok(before.flatten().is_some())
}

/// AirlineChangeLoad: one change.
pub async fn load<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: &str,
) -> Result<Option<ChangeRow>, sqlx::Error> {
    sqlx::query_as::<_, ChangeRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM airline_changes WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// AirlineChangesOfBooking: a booking's changes, oldest first.
pub async fn of_booking<'e>(
    db: impl sqlx::PgExecutor<'e>,
    booking_id: Uuid,
) -> Result<Vec<ChangeRow>, sqlx::Error> {
    sqlx::query_as::<_, ChangeRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM airline_changes WHERE booking_id = $1 ORDER BY detected_at, id"
    ))
    .bind(booking_id)
    .fetch_all(db)
    .await
}

/// AirlineChangesOpen: changes still waiting for a decision, nearest deadline first.
pub async fn open(db: &Db, limit: i64) -> Result<Vec<ChangeRow>, sqlx::Error> {
    sqlx::query_as::<_, ChangeRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM airline_changes WHERE status = 'open' ORDER BY respond_by, id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Counts per status (`open`, `accepted`, …), for the demo and reports.
pub async fn count_by_status(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM airline_changes GROUP BY 1 ORDER BY 1")
        .fetch_all(db)
        .await
}

/// Erasure: drops the legs (a traveler's itinerary) of every change of the bookings of
/// `whose` campaigns; the ids, statuses and dates stay (what was decided, by whom).
pub async fn scrub_for_erasure(
    conn: &mut PgConnection,
    whose: crate::booking::ErasureOf<'_>,
) -> Result<u64, sqlx::Error> {
    let (profiles, user) = whose.binds();
    let r = sqlx::query(
        "UPDATE airline_changes a SET removed = NULL, added = NULL, updated_at = now()
         FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
         WHERE b.id = a.booking_id
           AND (c.traveler_profile_id = ANY($1) OR c.user_id = $2)
           AND (a.removed IS NOT NULL OR a.added IS NOT NULL)",
    )
    .bind(&profiles)
    .bind(user)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn leg(departs: Option<&str>) -> OfferSlice {
        OfferSlice {
            origin: "LHR".into(),
            destination: "JFK".into(),
            departing_at: departs.map(|d| d.parse().unwrap()),
            arriving_at: None,
            segments: 1,
        }
    }

    #[test]
    fn the_deadline_is_48_hours_or_38_before_the_new_departure_and_never_under_an_hour() {
        let detected = Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap();
        // A flight weeks away: 48 h.
        assert_eq!(
            respond_by(detected, &[leg(Some("2027-03-26T06:15:00"))]),
            detected + Duration::hours(48)
        );
        // A flight in two days: 38 h before it (read as UTC).
        let soon = NaiveDate::from_ymd_opt(2027, 3, 3)
            .unwrap()
            .and_hms_opt(18, 0, 0)
            .unwrap();
        assert_eq!(
            respond_by(detected, &[leg(Some("2027-03-03T18:00:00"))]),
            soon.and_utc() - Duration::hours(38)
        );
        // A flight tomorrow morning: an hour, not a deadline in the past.
        assert_eq!(
            respond_by(detected, &[leg(Some("2027-03-02T08:00:00"))]),
            detected + Duration::hours(1)
        );
        // No departure time given: 48 h.
        assert_eq!(respond_by(detected, &[leg(None)]), detected + DECIDE_WITHIN);
    }
}
