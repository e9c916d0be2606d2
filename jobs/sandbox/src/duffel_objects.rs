//! Duffel's objects as the sandbox keeps them: the stored wire JSON plus the fields the
//! handlers look things up by, and Duffel's decimal money strings.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::util::new_id;

pub(crate) struct OfferRequest {
    pub route: String,
    pub json: Value,
    pub offer_ids: Vec<String>,
}

pub(crate) struct Offer {
    pub id: String,
    pub route: String,
    pub current_total_minor: i64,
    pub expires_at: DateTime<Utc>,
    pub passenger_ids: Vec<String>,
    /// Whether the price-rise scenario already raised this offer.
    pub raised: bool,
    pub json: Value,
}

impl Offer {
    pub(crate) fn to_json(&self) -> Value {
        let mut j = self.json.clone();
        let tax = self.current_total_minor * 18 / 118;
        j["total_amount"] = json!(money(self.current_total_minor));
        j["base_amount"] = json!(money(self.current_total_minor - tax));
        j["tax_amount"] = json!(money(tax));
        j
    }
}

pub(crate) struct Order {
    pub id: String,
    pub offer_id: String,
    pub booking_reference: String,
    pub metadata: BTreeMap<String, String>,
    pub total_minor: i64,
    pub json: Value,
}

pub(crate) struct Cancellation {
    pub order_id: String,
    pub json: Value,
}

/// An airline-initiated change (`aic_…`): Duffel's AIC object as served, plus the ids it is
/// looked up by.
///
/// Invariants: `json` holds exactly the documented fields (`id`, `order_id`, `action_taken`,
/// `action_taken_at`, `added`, `removed`, `available_actions`, `created_at`, `updated_at`,
/// `travel_agent_ticket`); `action_taken` and `action_taken_at` are both null (open) or both
/// set (actioned), and an actioned change has no `available_actions` left; the change is also
/// listed, identical, in its order's `airline_initiated_changes`.
pub(crate) struct AirlineChange {
    pub id: String,
    pub order_id: String,
    pub json: Value,
}

impl AirlineChange {
    /// Whether nobody has acted on it yet (`action_taken` is null).
    pub(crate) fn is_open(&self) -> bool {
        self.json["action_taken"].is_null()
    }

    /// Whether `action` (`"accept"`, `"update"`, …) is in its `available_actions`.
    pub(crate) fn allows(&self, action: &str) -> bool {
        self.json["available_actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(action)))
    }

    /// Records `action_taken` (`"accepted"`, `"cancelled"` or `"changed"`) at `now`: sets
    /// `action_taken_at` and `updated_at`, and empties `available_actions`.
    pub(crate) fn take_action(&mut self, action_taken: &str, now: &str) {
        self.json["action_taken"] = json!(action_taken);
        self.json["action_taken_at"] = json!(now);
        self.json["updated_at"] = json!(now);
        self.json["available_actions"] = json!([]);
    }
}

/// Why the sandbox's airline could not change an order
/// ([`Sandbox::airline_change`](crate::Sandbox::airline_change)); the message names what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AirlineChangeRefusal {
    /// There is no order with this id.
    UnknownOrder(String),
    /// The order is cancelled: there is no flight left to move.
    OrderCancelled(String),
    /// An argument is out of range; the message names it.
    Invalid(String),
}

impl std::fmt::Display for AirlineChangeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownOrder(id) => write!(f, "no order {id:?}"),
            Self::OrderCancelled(id) => write!(f, "order {id:?} is cancelled"),
            Self::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// The values Duffel documents for an AIC's `available_actions`.
pub(crate) const AIC_ACTIONS: [&str; 4] = ["accept", "cancel", "change", "update"];

/// The values Duffel documents for an AIC's `action_taken` (and for the update endpoint's body).
pub(crate) const AIC_ACTIONS_TAKEN: [&str; 3] = ["accepted", "cancelled", "changed"];

/// The format of a segment's `departing_at`/`arriving_at`: local time without an offset.
const LOCAL_TIME: &str = "%Y-%m-%dT%H:%M:%S";

/// `slices` (an order's, as served) rescheduled by `minutes`: the same slices with new
/// `sli_`/`seg_` ids and every segment's `departing_at` and `arriving_at` moved by `minutes`.
/// Durations are unchanged (both ends move together). `Err` names what could not be read.
pub(crate) fn shifted_slices(slices: &Value, minutes: i64) -> Result<Value, String> {
    let shift = chrono::Duration::try_minutes(minutes)
        .ok_or_else(|| format!("cannot shift by {minutes} minutes"))?;
    let mut out = slices
        .as_array()
        .cloned()
        .ok_or_else(|| "the order has no slices".to_string())?;
    for slice in &mut out {
        slice["id"] = json!(new_id("sli_"));
        let Some(segments) = slice.get_mut("segments").and_then(Value::as_array_mut) else {
            return Err("a slice of the order has no segments".into());
        };
        for segment in segments {
            segment["id"] = json!(new_id("seg_"));
            for field in ["departing_at", "arriving_at"] {
                let moved = segment[field]
                    .as_str()
                    .and_then(|t| NaiveDateTime::parse_from_str(t, LOCAL_TIME).ok())
                    .and_then(|t| t.checked_add_signed(shift))
                    .ok_or_else(|| format!("a segment's {field} cannot be moved"))?;
                segment[field] = json!(moved.format(LOCAL_TIME).to_string());
            }
        }
    }
    Ok(Value::Array(out))
}

/// Minor units as Duffel's decimal string (`"123.45"`).
pub(crate) fn money(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// Parses a decimal amount string into minor units; `None` if malformed.
pub(crate) fn parse_money(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    Some(whole * 100 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trips_through_decimal_strings() {
        assert_eq!(money(12345), "123.45");
        assert_eq!(money(5), "0.05");
        assert_eq!(parse_money("123.45"), Some(12345));
        assert_eq!(parse_money("123.4"), Some(12340));
        assert_eq!(parse_money("123"), Some(12300));
        assert_eq!(parse_money("1.234"), None);
        assert_eq!(parse_money("-1.00"), None);
    }

    #[test]
    fn shifted_slices_move_both_ends_of_every_segment_and_renew_ids() {
        let slices = json!([{
            "id": "sli_1", "duration": "PT2H10M",
            "segments": [
                {"id": "seg_1", "departing_at": "2030-03-26T23:15:00", "arriving_at": "2030-03-27T01:25:00"},
                {"id": "seg_2", "departing_at": "2030-03-27T03:00:00", "arriving_at": "2030-03-27T04:00:00"},
            ],
        }]);
        let later = shifted_slices(&slices, 90).unwrap();
        assert_ne!(later[0]["id"], "sli_1");
        assert!(later[0]["id"].as_str().unwrap().starts_with("sli_"));
        assert!(later[0]["segments"][1]["id"]
            .as_str()
            .unwrap()
            .starts_with("seg_"));
        assert_eq!(later[0]["duration"], "PT2H10M");
        assert_eq!(
            later[0]["segments"][0]["departing_at"],
            "2030-03-27T00:45:00"
        );
        assert_eq!(
            later[0]["segments"][0]["arriving_at"],
            "2030-03-27T02:55:00"
        );
        assert_eq!(
            later[0]["segments"][1]["arriving_at"],
            "2030-03-27T05:30:00"
        );
        let earlier = shifted_slices(&slices, -24 * 60).unwrap();
        assert_eq!(
            earlier[0]["segments"][0]["departing_at"],
            "2030-03-25T23:15:00"
        );
        assert!(
            shifted_slices(&json!([{"segments": [{"departing_at": "soon"}]}]), 5)
                .unwrap_err()
                .contains("departing_at")
        );
        assert!(shifted_slices(&json!(null), 5).is_err());
    }
}
