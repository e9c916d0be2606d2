//! Small helpers the provider modules share: provider-shaped ids, the clock, request headers,
//! form decoding and raw JSON responses.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

/// `prefix` + 24 random alphanumerics, the shape of provider ids (`pi_…`, `off_…`).
pub(crate) fn new_id(prefix: &str) -> String {
    let raw = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &raw[..24])
}

/// Current Unix time in seconds.
pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// The request's `Idempotency-Key`, if present and not empty.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// `body` (already serialized JSON) as a response with `content-type: application/json`.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Decodes `application/x-www-form-urlencoded` (also a query string) into ordered pairs,
/// keeping bracket keys such as `metadata[booking_id]` verbatim.
pub(crate) fn parse_form(input: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(input.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_keeps_bracket_keys_and_decodes_escapes() {
        let pairs = parse_form("metadata%5Bbooking_id%5D=b+1&amount=100&x=%zz&y=a%2");
        assert_eq!(pairs[0], ("metadata[booking_id]".into(), "b 1".into()));
        assert_eq!(pairs[1], ("amount".into(), "100".into()));
        assert_eq!(pairs[2], ("x".into(), "%zz".into()));
        assert_eq!(pairs[3], ("y".into(), "a%2".into()));
    }
}
