//! Duffel's airline-initiated changes (AIC): the sandbox plays the airline that moves an
//! order's flights ([`Sandbox::airline_change`], `POST /_sandbox/orders/{id}/airline_change`),
//! and serves Duffel's routes to list, accept and update the change.
//!
//! Shapes follow Duffel's AIC object (<https://duffel.com/docs/api/v2/airline-initiated-changes>,
//! the official JS client's `AirlineInitiatedChangesTypes.ts`): only documented fields. What
//! Duffel leaves undocumented (the error codes of a refused action, what an actioned change's
//! `available_actions` hold) is the sandbox's choice, listed in docs/sandbox.md.
//!
//! Invariants: a change is open (`action_taken: null`) until exactly one action closes it —
//! accept, update, or the order's cancellation — and a closed change is never actioned again
//! (Duffel has no idempotency key, so a second accept is a 422, not a replay); the order's
//! `airline_initiated_changes` always equals its changes as listed, oldest first.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::HeaderMap,
    response::Response,
};
use serde_json::{json, Value};

use super::{
    admit, authenticate, authenticated_data, data_ok, not_found, now_str, rate_limited,
    unprocessable, validation,
};
use crate::{
    duffel_objects::{
        shifted_slices, AirlineChange, AirlineChangeRefusal, AIC_ACTIONS, AIC_ACTIONS_TAKEN,
    },
    handle::Sandbox,
    state::{Counters, State as SandboxState},
    util::{new_id, parse_form},
    webhooks,
};

/// The largest `shift_minutes` either way: 7 days.
pub(crate) const MAX_SHIFT_MINUTES: i64 = 7 * 24 * 60;

/// The `available_actions` of a change when the ask names none: the JS client's example.
const DEFAULT_ACTIONS: [&str; 3] = ["accept", "cancel", "change"];

/// The event announcing a change (Duffel's only AIC event; none announces an action).
const DETECTED: &str = "order.airline_initiated_change_detected";

/// The sandbox's code for an action on a change that was already actioned (Duffel documents
/// none).
const ALREADY_ACTIONED: &str = "airline_initiated_change_already_actioned";

/// The sandbox's code for an action missing from the change's `available_actions` (Duffel
/// documents none).
const ACTION_NOT_AVAILABLE: &str = "airline_initiated_change_action_not_available";

impl Sandbox {
    /// The airline moves every flight of order `order_id` by `shift_minutes` (non-zero, at most
    /// 10,080, 7 days, either way): records an open airline-initiated change (`aic_…`)
    /// whose `removed` are the order's slices as it serves them and whose `added` are the same
    /// slices with new `sli_`/`seg_` ids and every `departing_at`/`arriving_at` moved; the order's
    /// `slices` become `added` and its `airline_initiated_changes` list the change.
    /// `available_actions` (a subset of `accept`, `cancel`, `change`, `update`) defaults to
    /// `["accept", "cancel", "change"]`. With `deliver`, emits
    /// `order.airline_initiated_change_detected` with `data.object {"id": order, "aic_id":
    /// change}` (v2), delivered on a spawned task, so this needs a Tokio runtime when a webhook
    /// target is configured. Returns the change, or what is wrong with the ask: an unknown
    /// order starts with `no order`, a cancelled one (no flight left to move) ends with
    /// `is cancelled`, a bad argument names it.
    pub fn airline_change(
        &self,
        order_id: &str,
        shift_minutes: i64,
        available_actions: Option<Vec<String>>,
        deliver: bool,
    ) -> Result<Value, String> {
        self.try_airline_change(order_id, shift_minutes, available_actions, deliver)
            .map_err(|e| e.to_string())
    }

    /// [`Sandbox::airline_change`] with the refusal's kind, for the admin route's status.
    pub(crate) fn try_airline_change(
        &self,
        order_id: &str,
        shift_minutes: i64,
        available_actions: Option<Vec<String>>,
        deliver: bool,
    ) -> Result<Value, AirlineChangeRefusal> {
        let invalid = |msg: String| Err(AirlineChangeRefusal::Invalid(msg));
        if shift_minutes == 0 || shift_minutes.unsigned_abs() > MAX_SHIFT_MINUTES.unsigned_abs() {
            return invalid(format!(
                "shift_minutes must be non-zero and at most {MAX_SHIFT_MINUTES} (7 days) either \
                 way, not {shift_minutes}"
            ));
        }
        let actions: Vec<String> = match available_actions {
            None => DEFAULT_ACTIONS.map(str::to_owned).to_vec(),
            Some(list) => {
                for (i, a) in list.iter().enumerate() {
                    if !AIC_ACTIONS.contains(&a.as_str()) {
                        return invalid(format!(
                            "available_actions: {a:?} is not one of {}",
                            AIC_ACTIONS.join(", ")
                        ));
                    }
                    if list[..i].contains(a) {
                        return invalid(format!("available_actions lists {a:?} twice"));
                    }
                }
                list
            }
        };
        let change = {
            let mut st = self.lock();
            let Some(order) = st.order(order_id) else {
                return Err(AirlineChangeRefusal::UnknownOrder(order_id.to_owned()));
            };
            if !order.json["cancelled_at"].is_null() {
                return Err(AirlineChangeRefusal::OrderCancelled(order_id.to_owned()));
            }
            let removed = order.json["slices"].clone();
            let added = shifted_slices(&removed, shift_minutes)
                .map_err(|e| AirlineChangeRefusal::Invalid(format!("order {order_id:?}: {e}")))?;
            let id = new_id("aic_");
            let now = now_str();
            let json = json!({
                "id": id,
                "order_id": order_id,
                "action_taken": null,
                "action_taken_at": null,
                "added": added,
                "removed": removed,
                "available_actions": actions,
                "created_at": now,
                "updated_at": now,
                "travel_agent_ticket": null,
            });
            if let Some(order) = st.order_mut(order_id) {
                order.json["slices"] = added;
            }
            st.airline_changes.push(AirlineChange {
                id: id.clone(),
                order_id: order_id.to_owned(),
                json: json.clone(),
            });
            st.sync_airline_changes(order_id);
            st.counters.airline_changes_created += 1;
            tracing::info!(airline_change.id = %id, order.id = %order_id, shift_minutes, "sandbox airline-initiated change");
            json
        };
        if deliver {
            webhooks::emit_duffel(
                self,
                DETECTED,
                json!({"id": order_id, "aic_id": change["id"]}),
            );
        }
        Ok(change)
    }
}

/// Whether `s` has the shape of a Duffel order id: `ord_` and letters or digits.
fn is_order_id(s: &str) -> bool {
    s.strip_prefix("ord_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The route (`ORIGIN-DESTINATION`) of order `order_id`, whose rate-limit scenario its
/// changes' requests share.
fn order_route(st: &SandboxState, order_id: &str) -> Option<String> {
    let order = st.order(order_id)?;
    st.offers.get(&order.offer_id).map(|o| o.route.clone())
}

/// The route of change `id`'s order (`""`, a normal route, should its offer be unknown), or
/// `None` when there is no such change.
fn change_route(st: &SandboxState, id: &str) -> Option<String> {
    let change = st.airline_change(id)?;
    Some(order_route(st, &change.order_id).unwrap_or_default())
}

/// `GET /air/airline_initiated_changes?order_id=ord_…`: `{"data": [AIC, …]}`, the order's
/// changes oldest first (`[]` for an unknown order). No pagination: Duffel documents none for
/// this list (its JS client types the answer as a plain array).
pub(super) async fn list_changes(
    State(sb): State<Sandbox>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let Some(order_id) = params
        .iter()
        .find(|(k, _)| k == "order_id")
        .map(|(_, v)| v.clone())
    else {
        return validation(
            "validation_required",
            "Query parameter 'order_id' is required.",
        );
    };
    if !is_order_id(&order_id) {
        return validation(
            "validation_format",
            "Query parameter 'order_id': Value must be a valid order ID.",
        );
    }
    let route = order_route(&sb.lock(), &order_id);
    if let Some(resp) = route.and_then(|r| rate_limited(&sb, &r)) {
        return resp;
    }
    let changes = sb.lock().airline_changes_of(&order_id);
    data_ok(Value::Array(changes))
}

/// `Err` with the 422 when `change` may not take `action` (`"accept"`, `"update"`) now: it was
/// already actioned (`invalid_state_error`, checked first, since an actioned change has no
/// actions left), or `action` is not in its `available_actions` (`validation_error`).
fn check_actionable(change: &AirlineChange, action: &str) -> Result<(), Response> {
    if !change.is_open() {
        let taken = change.json["action_taken"].as_str().unwrap_or("actioned");
        return Err(unprocessable(
            "invalid_state_error",
            ALREADY_ACTIONED,
            "Airline-initiated change already actioned",
            &format!(
                "This airline-initiated change has already been {taken}; it cannot be actioned \
                 again."
            ),
        ));
    }
    if !change.allows(action) {
        return Err(unprocessable(
            "validation_error",
            ACTION_NOT_AVAILABLE,
            "Action not available",
            &format!(
                "'{action}' is not in this airline-initiated change's available_actions ({}).",
                change.json["available_actions"]
            ),
        ));
    }
    Ok(())
}

/// Closes change `id` with `action_taken` if it may take `action` (see [`check_actionable`]),
/// counting an acceptance, and answers `{"data": AIC}`.
fn act(sb: &Sandbox, id: &str, action: &str, action_taken: &str) -> Response {
    if let Err(resp) = admit(sb, |st| change_route(st, id)) {
        return resp;
    }
    let mut st = sb.lock();
    let Some(change) = st.airline_change_mut(id) else {
        return not_found();
    };
    if let Err(resp) = check_actionable(change, action) {
        return resp;
    }
    change.take_action(action_taken, &now_str());
    let (order_id, json) = (change.order_id.clone(), change.json.clone());
    if action_taken == "accepted" {
        st.counters.airline_change_accepts += 1;
        Counters::bump(&mut st.counters.airline_change_accepts_by_id, id);
    }
    st.sync_airline_changes(&order_id);
    tracing::info!(airline_change.id = %id, order.id = %order_id, action_taken, "sandbox airline-initiated change actioned");
    data_ok(json)
}

/// `POST /air/airline_initiated_changes/{id}/actions/accept` (no body): the change, accepted.
pub(super) async fn accept_change(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    act(&sb, &id, "accept", "accepted")
}

/// `PATCH /air/airline_initiated_changes/{id}` with `{"data": {"action_taken": "accepted" |
/// "cancelled" | "changed"}}`: records what the customer did elsewhere, for a change whose
/// `available_actions` hold `update`. Only the change is touched: the order stays as it is
/// (Duffel documents no effect on it).
pub(super) async fn update_change(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let data = match authenticated_data(&headers, &body) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let action_taken = match data.get("action_taken") {
        None | Some(Value::Null) => {
            return validation("validation_required", "Field 'action_taken' is required.")
        }
        Some(v) => match v
            .as_str()
            .and_then(|a| AIC_ACTIONS_TAKEN.iter().copied().find(|t| *t == a))
        {
            Some(a) => a,
            None => {
                return validation(
                    "validation_format",
                    &format!(
                        "Field 'action_taken' must be one of {}.",
                        AIC_ACTIONS_TAKEN.join(", ")
                    ),
                )
            }
        },
    };
    act(&sb, &id, "update", action_taken)
}

/// Marks every open change of order `order_id` `cancelled` at `now`: cancelling the order
/// answers them all.
pub(super) fn cancel_open_changes(st: &mut SandboxState, order_id: &str, now: &str) {
    let mut closed = 0;
    for change in st
        .airline_changes
        .iter_mut()
        .filter(|c| c.order_id == order_id && c.is_open())
    {
        change.take_action("cancelled", now);
        closed += 1;
    }
    if closed > 0 {
        st.sync_airline_changes(order_id);
        tracing::debug!(order.id = %order_id, closed, "sandbox airline-initiated changes cancelled with the order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_ord_and_alphanumerics() {
        assert!(is_order_id("ord_0000ABd6wggSct7BoraU1o"));
        for bad in ["", "ord_", "off_123", "ord_12/3", "ORD_123", "ord_ 1"] {
            assert!(!is_order_id(bad), "{bad:?}");
        }
    }
}
