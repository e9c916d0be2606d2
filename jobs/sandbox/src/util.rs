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

/// The `(username, password)` of an `Authorization: Basic base64(username:password)` header
/// (RFC 7617), if the request has one that decodes.
pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Standard base64 (RFC 4648 §4, `+` and `/`, padding optional) to bytes; `None` if `s` is not
/// base64. Written out here to keep the sandbox's dependency set as it is.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s
        .strip_suffix("==")
        .or_else(|| s.strip_suffix('='))
        .unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
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

    #[test]
    fn basic_auth_decodes_rfc_7617_credentials_and_refuses_the_rest() {
        let auth = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            basic_auth(&h)
        };
        // RFC 7617's own example.
        assert_eq!(
            auth("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        assert_eq!(auth("basic YTpi"), Some(("a".into(), "b".into())));
        assert_eq!(auth("Basic YTo="), Some(("a".into(), String::new())));
        assert_eq!(auth("Basic YWI="), None, "no colon");
        assert_eq!(auth("Basic !!!!"), None);
        assert_eq!(auth("Bearer YTpi"), None);
        assert_eq!(basic_auth(&HeaderMap::new()), None);
    }
}
