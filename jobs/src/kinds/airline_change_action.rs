//! `airline_change_action`: accepts an airline-initiated change at Duffel
//! (`POST /air/airline_initiated_changes/{id}/actions/accept`), asked by an operator before the
//! deadline ([`crate::operator::airline_change_decide`]) or by the deadline itself when nobody
//! decided ([`AirlineChangeAction::deadline`]: the fleet keeps the new schedule,
//! docs/decisions.md 50). Cancelling is not this job's: an operator's cancel requests the
//! booking's refund compensation (which cancels the order) and decides the change at once.
//!
//! Safe to run twice or concurrently: a decided change is left alone; the request is noted
//! before the call (Duffel has no idempotency key), so a re-run, or an accept Duffel refuses,
//! reads Duffel's record of the change before anything else, and the first decision stands
//! ([`airline_change::decide`] is guarded).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::airline_change::{self, ChangeRow};
use crate::deps::HasDeps;
use crate::providers::{is_provider_id, FailureClass};
use crate::{audit, Job, JobContext, JobError, KindDefaults, NewJob};

/// Who asks for the accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// An operator decided (the actor is in `actor`).
    Operator,
    /// The deadline passed with the change still open: the default.
    Deadline,
}

/// Args: the change, why, and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirlineChangeAction {
    /// `aic_…`.
    pub aic_id: String,
    /// Operator or deadline.
    pub why: Why,
    /// The operator's name, or `fleet:deadline`.
    pub actor: String,
}

/// The actor of a default decision.
pub const DEADLINE_ACTOR: &str = "fleet:deadline";

impl AirlineChangeAction {
    /// The operator's accept of change `aic_id`, keyed `airline_change_action:{aic_id}`: one
    /// operator decision per change, a repeated request is the queued job.
    pub fn accept(aic_id: &str, actor: &str) -> Result<NewJob, JobError> {
        Ok(NewJob::of(&AirlineChangeAction {
            aic_id: aic_id.to_owned(),
            why: Why::Operator,
            actor: actor.to_owned(),
        })
        .map_err(JobError::fatal)?
        .key(format!("airline_change_action:{aic_id}")))
    }

    /// The deadline's default for change `aic_id`, run at `at`, keyed
    /// `airline_change_deadline:{aic_id}`.
    pub fn deadline(aic_id: &str, at: DateTime<Utc>) -> Result<NewJob, JobError> {
        Ok(NewJob::of(&AirlineChangeAction {
            aic_id: aic_id.to_owned(),
            why: Why::Deadline,
            actor: DEADLINE_ACTOR.to_owned(),
        })
        .map_err(JobError::fatal)?
        .key(format!("airline_change_deadline:{aic_id}"))
        .run_at(at))
    }
}

impl Job for AirlineChangeAction {
    const KIND: &'static str = "airline_change_action";

    fn defaults() -> KindDefaults {
        super::reconcile_budget_defaults(crate::job::budgets::DUFFEL_ORDER)
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if !is_provider_id(&self.aic_id, &["aic_"]) {
            return Err(JobError::fatal(
                "airline_change_action: aic_id is not an aic_ id",
            ));
        }
        let Some(row) = airline_change::load(&ctx.db, &self.aic_id).await? else {
            return Err(JobError::fatal(format!(
                "airline change {} is not recorded",
                self.aic_id
            )));
        };
        if !row.is_open() {
            return Ok(()); // decided (by an operator, the deadline or Duffel): it stands
        }
        if self.why == Why::Deadline && Utc::now() < row.respond_by {
            // Run early (an operator's "run now"): the deadline is the deadline.
            let wait = (row.respond_by - Utc::now()).to_std().unwrap_or_default();
            return Err(JobError::snooze(
                wait,
                "the change's deadline has not passed",
            ));
        }
        if !row.allows("accept") {
            // Duffel cannot accept it through the API (an IATA agent's order, say): operators
            // must settle it with the airline. Audited once; the console lists it as overdue.
            if self.why == Why::Deadline {
                audit_decision(
                    &ctx,
                    &row,
                    "airline_change.deadline_unactionable",
                    &self.actor,
                )
                .await?;
                return Ok(());
            }
            return Err(JobError::fatal(format!(
                "airline change {}: Duffel does not offer accept (available: {:?})",
                row.id, row.available_actions
            )));
        }
        let flights = ctx.flights()?;
        if airline_change::note_request(&ctx.db, &row.id, "accept").await? {
            // Asked before: Duffel's record first.
            if settle_from_duffel(&ctx, &row, &self.actor).await? {
                return Ok(());
            }
        }
        match flights.accept_airline_change(&row.id).await {
            Ok(c) => {
                let taken = c.action_taken.as_deref().unwrap_or("accepted");
                decide(&ctx, &row, taken, &self.actor).await
            }
            Err(e) if matches!(e.class, FailureClass::Rejected | FailureClass::Invalid) => {
                // Refused: already actioned (by someone else, at Duffel) or no longer possible.
                if settle_from_duffel(&ctx, &row, &self.actor).await? {
                    return Ok(());
                }
                Err(JobError::fatal(format!(
                    "airline change {}: Duffel refused the accept and lists it still open: {e}",
                    row.id
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads Duffel's record of `row`; when it was actioned, records that decision. Returns
/// whether the change is decided now.
async fn settle_from_duffel(
    ctx: &JobContext,
    row: &ChangeRow,
    actor: &str,
) -> Result<bool, JobError> {
    let listed = ctx.flights()?.list_airline_changes(&row.order_id).await?;
    let Some(taken) = listed
        .iter()
        .find(|c| c.id == row.id)
        .and_then(|c| c.action_taken.clone())
    else {
        return Ok(false);
    };
    decide(ctx, row, &taken, actor).await?;
    Ok(true)
}

/// Records the decision (`accepted`, …) as `actor` with its audit row, if still open.
async fn decide(
    ctx: &JobContext,
    row: &ChangeRow,
    status: &str,
    actor: &str,
) -> Result<(), JobError> {
    let mut tx = ctx.db.begin().await?;
    if airline_change::decide(&mut tx, &row.id, status, actor).await? {
        audit::record(
            &mut *tx,
            actor,
            &format!("airline_change.{status}"),
            "booking",
            Some(&row.booking_id.to_string()),
            &serde_json::json!({
                "booking_id": row.booking_id, "airline_change_id": row.id,
                "order_id": row.order_id, "by_default": actor == DEADLINE_ACTOR,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn audit_decision(
    ctx: &JobContext,
    row: &ChangeRow,
    action: &str,
    actor: &str,
) -> Result<(), JobError> {
    audit::record(
        &ctx.db,
        actor,
        action,
        "booking",
        Some(&row.booking_id.to_string()),
        &serde_json::json!({
            "booking_id": row.booking_id, "airline_change_id": row.id,
            "available_actions": row.available_actions,
        }),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_accept_and_the_deadline_have_a_key_each_per_change() {
        let a = AirlineChangeAction::accept("aic_1", "ops-alice").unwrap();
        let d = AirlineChangeAction::deadline("aic_1", Utc::now()).unwrap();
        assert_eq!(
            a.opts.idempotency_key.as_deref(),
            Some("airline_change_action:aic_1")
        );
        assert_eq!(
            d.opts.idempotency_key.as_deref(),
            Some("airline_change_deadline:aic_1")
        );
        assert!(d.opts.run_at.is_some());
        let bad: Result<AirlineChangeAction, _> = serde_json::from_value(serde_json::json!({
            "aic_id": "aic_1", "why": "whenever", "actor": "x"
        }));
        assert!(bad.is_err());
    }
}
