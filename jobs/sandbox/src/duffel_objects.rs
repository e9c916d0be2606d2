//! Duffel's objects as the sandbox keeps them: the stored wire JSON plus the fields the
//! handlers look things up by, and Duffel's decimal money strings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

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
}
