//! `airline_change`: Duffel detected an airline-initiated change of one of our orders
//! (`order.airline_initiated_change_detected`). Lists the order's changes (Duffel documents
//! no single-change read), records each in `airline_changes` with its deadline, refreshes the
//! booking's itinerary to the new legs, tells the traveler the old and new times once
//! (`airline-change/{aic}`), and schedules the deadline's default
//! ([`AirlineChangeAction::deadline`]).
//!
//! Safe to run twice: the row is keyed by Duffel's id, the itinerary refresh replaces only
//! legs still as they were, the email has its dedupe key and the deadline job its job key.
//! An order we never booked is recorded in the audit trail and completes (no retry forever);
//! a change the event names but Duffel does not list yet is retried (bounded attempts).

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::airline_change_action::AirlineChangeAction;
use crate::airline_change::{self, ChangeRow};
use crate::deps::HasDeps;
use crate::providers::is_provider_id;
use crate::{audit, booking, notify, Job, JobContext, JobError, KindDefaults};

/// Args: Duffel ids and the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirlineChangeDetected {
    /// The changed order (`ord_…`).
    pub order_id: String,
    /// The change the event names (`aic_…`), when it names one.
    pub aic_id: Option<String>,
    /// Duffel's event id (`wev_…`), for the audit trail.
    pub event_id: String,
}

impl Job for AirlineChangeDetected {
    const KIND: &'static str = "airline_change";

    fn defaults() -> KindDefaults {
        super::reconcile_budget_defaults(crate::job::budgets::DUFFEL_ORDER)
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_provider_id(&self.order_id, &["ord_"])
            || self
                .aic_id
                .as_deref()
                .is_some_and(|a| !is_provider_id(a, &["aic_"]))
        {
            return Err(JobError::fatal("airline_change: ids are not ord_/aic_ ids"));
        }
        let booking = {
            let mut tx = ctx.db.begin().await?;
            let found = booking::find_by_order(&mut tx, &self.order_id).await?;
            tx.commit().await?;
            found
        };
        let Some(booking_id) = booking else {
            tracing::info!(event.id = %self.event_id, "airline change of an order we did not book: recorded, nothing to do");
            audit::record(
                &ctx.db,
                "fleet",
                "airline_change.unknown_order",
                "order",
                Some(&self.order_id),
                &serde_json::json!({ "order_id": self.order_id, "aic_id": self.aic_id, "event_id": self.event_id }),
            )
            .await?;
            return Ok(());
        };
        let changes = ctx.flights()?.list_airline_changes(&self.order_id).await?;
        if let Some(named) = &self.aic_id {
            if !changes.iter().any(|c| &c.id == named) {
                return Err(JobError::retryable(format!(
                    "airline change {named} of order {} is not listed by Duffel yet",
                    self.order_id
                )));
            }
        }
        for change in &changes {
            let mut tx = ctx.db.begin().await?;
            let rec = airline_change::record(&mut tx, booking_id, change, Utc::now()).await?;
            if rec.new {
                let row = &rec.row;
                let (removed, added) = (
                    row.removed.clone().unwrap_or_default(),
                    row.added.clone().unwrap_or_default(),
                );
                booking::refresh_itinerary(&mut tx, booking_id, &row.id, &removed, &added).await?;
                audit::record(
                    &mut *tx,
                    "fleet",
                    "booking.airline_change_detected",
                    "booking",
                    Some(&booking_id.to_string()),
                    &serde_json::json!({
                        "booking_id": booking_id, "airline_change_id": row.id,
                        "order_id": row.order_id, "event_id": self.event_id,
                        "available_actions": row.available_actions, "status": row.status,
                        "respond_by": row.respond_by,
                    }),
                )
                .await?;
                if row.is_open() {
                    let deadline = AirlineChangeAction::deadline(&row.id, row.respond_by)?;
                    ctx.enqueuer.enqueue_many(&mut tx, vec![deadline]).await?;
                }
            }
            tx.commit().await?;
            if rec.row.is_open() {
                tell_traveler(&ctx, booking_id, &rec.row).await?;
            }
        }
        Ok(())
    }
}

/// The traveler's email: each leg's old and new times, and what happens by the deadline.
async fn tell_traveler(
    ctx: &JobContext,
    booking_id: uuid::Uuid,
    c: &ChangeRow,
) -> Result<(), JobError> {
    let Some(b) = booking::load(&ctx.db, booking_id).await? else {
        return Ok(());
    };
    let Some(user) = b.user_id else {
        return Ok(()); // detached (the traveler was erased): nobody to tell
    };
    let text = change_text(c);
    notify::tell(
        &ctx.db,
        ctx.deps()?,
        user,
        "airline-change",
        &format!("airline-change/{}", c.id),
        "The airline changed your flight",
        &text,
    )
    .await?;
    Ok(())
}

/// One leg as the email names it: `LHR to JFK, departing 2027-03-26 06:15, arriving …`.
fn leg_line(leg: &serde_json::Value) -> String {
    let s = |k: &str| leg.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let t = |k: &str| {
        s(k).replacen('T', " ", 1)
            .get(..16)
            .unwrap_or("unknown")
            .to_owned()
    };
    let arrive = if s("arriving_at").is_empty() {
        String::new()
    } else {
        format!(", arriving {}", t("arriving_at"))
    };
    format!(
        "{} to {}, departing {}{arrive}",
        s("origin"),
        s("destination"),
        t("departing_at")
    )
}

/// The email's text for change `c` (local times, as the airline gives them).
pub fn change_text(c: &ChangeRow) -> String {
    let legs = |v: &Option<serde_json::Value>| -> String {
        v.as_ref()
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|l| format!("  {}\n", leg_line(l))).collect())
            .unwrap_or_default()
    };
    format!(
        "The airline has changed the schedule of the flight Parker Flight booked for you.\n\n\
         Before:\n{}\nNow:\n{}\n\
         If the new times suit you, there is nothing to do: your booking stays on them. If \
         they do not, tell us in the Parker Flight app before {} UTC and we will cancel the \
         booking and refund you in full. After that time the new schedule is kept.\n\n\
         (Times are local to each airport.)\n\nParker Flight",
        legs(&c.removed),
        legs(&c.added),
        c.respond_by.format("%Y-%m-%d %H:%M")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_are_ids_only_and_refuse_unknown_fields() {
        let ok: Result<AirlineChangeDetected, _> = serde_json::from_value(json!({
            "order_id": "ord_1", "aic_id": "aic_1", "event_id": "wev_1"
        }));
        assert!(ok.is_ok());
        let extra: Result<AirlineChangeDetected, _> = serde_json::from_value(json!({
            "order_id": "ord_1", "aic_id": null, "event_id": "wev_1", "name": "x"
        }));
        assert!(extra.is_err());
    }

    #[test]
    fn the_email_names_old_and_new_times_and_the_deadline() {
        let row = ChangeRow {
            id: "aic_1".into(),
            booking_id: uuid::Uuid::nil(),
            order_id: "ord_1".into(),
            removed: Some(json!([{"origin": "LHR", "destination": "JFK",
                "departing_at": "2027-03-26T06:15:00", "arriving_at": "2027-03-26T09:20:00", "segments": 1}])),
            added: Some(json!([{"origin": "LHR", "destination": "JFK",
                "departing_at": "2027-03-26T07:45:00", "arriving_at": "2027-03-26T10:50:00", "segments": 1}])),
            available_actions: vec!["accept".into()],
            status: "open".into(),
            decided_by: None,
            action_requested: None,
            action_taken_at: None,
            detected_at: Utc::now(),
            respond_by: chrono::DateTime::parse_from_rfc3339("2027-03-03T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let text = change_text(&row);
        assert!(
            text.contains("LHR to JFK, departing 2027-03-26 06:15, arriving 2027-03-26 09:20"),
            "{text}"
        );
        assert!(
            text.contains("LHR to JFK, departing 2027-03-26 07:45, arriving 2027-03-26 10:50"),
            "{text}"
        );
        assert!(text.contains("before 2027-03-03 12:00 UTC"), "{text}");
    }
}
