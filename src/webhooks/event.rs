//! A verified delivery's body, read into an [`Event`] — the provider's documented delivered
//! shape, nothing more. Runs only after the signature verified.
//!
//! Both providers put the event's `id` and `type` at the **top level** of the delivered body
//! and the resource under `data.object`:
//! - Stripe, "The Event object" (<https://docs.stripe.com/api/events/object>): `id`,
//!   `object: "event"`, `api_version`, `created`, `data.object`, `livemode`,
//!   `pending_webhooks`, `request`, `type`;
//! - Duffel, "Webhooks" (<https://duffel.com/docs/api/v2/webhooks>): `id`, `api_version`,
//!   `type`, `data.object`, `live_mode`, `idempotency_key`, `created_at`,
//!   `identity_organisation_id`. Only Duffel's API *responses* are wrapped in `{"data": …}`;
//!   a delivered event is not.
//!
//! The documented examples live in `tests/contracts/`; `tests/contracts.rs` feeds them through
//! the router.

use jobs::followups::{Event, Provider};
use serde_json::Value;

/// Longest event id or type accepted (the providers' are far shorter).
const MAX_FIELD_LEN: usize = 255;

/// An id or type: non-empty, at most [`MAX_FIELD_LEN`] bytes, no control characters (a NUL
/// would fail the Postgres write; a newline or escape would forge log lines).
fn field<'a>(v: &'a Value, missing: &'static str) -> Result<&'a str, &'static str> {
    let s = v.as_str().ok_or(missing)?;
    if s.is_empty() || s.len() > MAX_FIELD_LEN {
        return Err(missing);
    }
    if s.chars().any(char::is_control) {
        return Err("control_characters");
    }
    Ok(s)
}

/// The event in `body`, or the reason (a `fleet_webhook_rejections_total` label) it is not one.
pub fn parse(provider: Provider, body: &[u8]) -> Result<Event, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "malformed_json")?;
    // The same paths for both providers (see the module documentation). Duffel documents
    // `data` as nullable: an event without one still records, with a null object.
    let (id, kind, object) = (&v["id"], &v["type"], v["data"]["object"].clone());
    let id = field(id, "missing_event_id")?;
    let kind = field(kind, "missing_event_type")?;
    // Postgres cannot store a NUL in `jsonb` text: such a delivery could never be recorded, and
    // answering 5xx would have the provider retry it for days.
    if has_nul(&v) {
        return Err("nul_character");
    }
    Ok(Event {
        provider,
        id: id.to_owned(),
        kind: kind.to_owned(),
        object,
    })
}

/// Whether a NUL (`\u0000`) is in any string or key of `v`.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_in_the_event_is_refused_before_anything_is_stored() {
        for body in [
            br#"{"id":"evt_1","type":"charge.refunded","data":{"object":{"description":"a\u0000b"}}}"#.as_slice(),
            br#"{"id":"evt_1","type":"charge.refunded","data":{"object":{"k\u0000":1}}}"#.as_slice(),
            br#"{"id":"evt_1","type":"charge.refunded","data":{"object":{"l":["\u0000"]}},"x":1}"#.as_slice(),
        ] {
            assert_eq!(parse(Provider::Stripe, body).err(), Some("nul_character"));
        }
    }

    #[test]
    fn ids_and_types_with_control_characters_are_refused() {
        for id in [r"evt_\u0000", r"evt_1\nFAKE log line", r"evt_\u001b[31m"] {
            let body =
                format!(r#"{{"id":"{id}","type":"charge.refunded","data":{{"object":{{}}}}}}"#);
            assert_eq!(
                parse(Provider::Stripe, body.as_bytes()).unwrap_err(),
                "control_characters",
                "{id}"
            );
        }
        let body = br#"{"id":"evt_1","type":"charge.\u0000","data":{"object":{}}}"#;
        assert_eq!(
            parse(Provider::Stripe, body).unwrap_err(),
            "control_characters"
        );
    }

    #[test]
    fn both_providers_read_id_and_type_from_the_top_level() {
        let body = br#"{"id":"wev_1","api_version":"v2","type":"order.created",
            "data":{"object":{"id":"ord_1"}},"live_mode":false,
            "idempotency_key":"ord_1","created_at":"2020-04-11T15:48:11.642000Z",
            "identity_organisation_id":"org_1"}"#;
        let e = parse(Provider::Duffel, body).unwrap();
        assert_eq!((e.id.as_str(), e.kind.as_str()), ("wev_1", "order.created"));
        assert_eq!(e.object["id"], "ord_1");
        let stripe = parse(Provider::Stripe, body).unwrap();
        assert_eq!(stripe.id, "wev_1");
    }

    #[test]
    fn a_duffel_event_wrapped_in_data_is_not_the_delivered_shape() {
        // What the fleet used to expect: the API-response envelope around the event.
        let body = br#"{"data":{"id":"wev_1","type":"order.created","object":{}}}"#;
        assert_eq!(
            parse(Provider::Duffel, body).unwrap_err(),
            "missing_event_id"
        );
    }

    #[test]
    fn a_duffel_event_with_null_data_has_a_null_object() {
        let body = br#"{"id":"wev_1","type":"order.created","data":null}"#;
        assert!(parse(Provider::Duffel, body).unwrap().object.is_null());
    }

    #[test]
    fn an_overlong_or_empty_id_is_missing() {
        let long = "e".repeat(MAX_FIELD_LEN + 1);
        for id in [long.as_str(), ""] {
            let body = format!(r#"{{"id":"{id}","type":"t","data":{{"object":{{}}}}}}"#);
            assert_eq!(
                parse(Provider::Stripe, body.as_bytes()).unwrap_err(),
                "missing_event_id"
            );
        }
    }
}
