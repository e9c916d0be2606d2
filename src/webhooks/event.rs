//! A verified delivery's body, read into an [`Event`] — the provider's documented delivered
//! shape, nothing more. Runs only after the signature verified.

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
    let (id, kind, object) = match provider {
        Provider::Stripe => (&v["id"], &v["type"], v["data"]["object"].clone()),
        Provider::Duffel => (
            &v["data"]["id"],
            &v["data"]["type"],
            v["data"]["object"].clone(),
        ),
    };
    let id = field(id, "missing_event_id")?;
    let kind = field(kind, "missing_event_type")?;
    Ok(Event {
        provider,
        id: id.to_owned(),
        kind: kind.to_owned(),
        object,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
