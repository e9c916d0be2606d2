//! Resend: `POST /emails` with Resend's idempotency keys.
//!
//! Same key and same payload → the stored response again, and the email is not sent (nor
//! counted) a second time. Same key with a different payload → 409 `invalid_idempotent_request`.
//! Recipients, subjects and bodies are never logged or kept; only counts and ids are.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::post,
    Router,
};
use serde_json::{json, Value};

use crate::{
    handle::Sandbox,
    state::{Counters, StoredResponse},
    util::{bearer, idempotency_key, json_response},
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new().route("/emails", post(send_email))
}

fn error(status: StatusCode, name: &str, message: &str) -> Response {
    json_response(
        status,
        serde_json::to_vec(&json!({
            "statusCode": status.as_u16(),
            "message": message,
            "name": name,
        }))
        .expect("json serializes"),
    )
}

/// What every request gets during an outage ([`crate::Sandbox::set_outage`]): Resend's
/// `internal_server_error` with the server-error status.
pub(crate) fn outage_response(status: StatusCode) -> Response {
    error(
        status,
        "internal_server_error",
        "An unexpected error occurred (sandbox outage).",
    )
}

fn non_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

async fn send_email(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let api_key = match bearer(&headers) {
        Some(k) if k.starts_with("re_") => k,
        Some(_) => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "API key is invalid",
            )
        }
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header. Include the following header \
                 Authorization: Bearer YOUR_API_KEY in the request.",
            )
        }
    };
    // Resend's errors page: `validation_error` is a 400; a missing field is a 422
    // `missing_required_field` (https://resend.com/docs/api-reference/errors).
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "The request body is not valid JSON.",
        );
    };
    // Validate: from, to (string or non-empty array), subject, and a body: html, text, or a
    // template (Resend's `SendEmailRequest` makes each optional; one of them must say something).
    if !non_empty_str(payload.get("from")) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_required_field",
            "The `from` field is missing.",
        );
    }
    let to_ok = match payload.get("to") {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => {
            !a.is_empty() && a.len() <= 50 && a.iter().all(|v| non_empty_str(Some(v)))
        }
        _ => false,
    };
    if !to_ok {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_required_field",
            "The `to` field must be an address or a list of 1 to 50 addresses.",
        );
    }
    if !non_empty_str(payload.get("subject")) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_required_field",
            "The `subject` field is missing.",
        );
    }
    let template = payload
        .get("template")
        .is_some_and(|t| non_empty_str(t.get("id")));
    if !non_empty_str(payload.get("html")) && !non_empty_str(payload.get("text")) && !template {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_required_field",
            "One of `html`, `text` or `template` must be provided.",
        );
    }

    let attachments = match attachments_of(&payload) {
        Ok(a) => a,
        Err(message) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                &message,
            )
        }
    };

    let idem_key = idempotency_key(&headers);
    if idem_key.as_ref().is_some_and(|k| k.len() > 256) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "The idempotency key must be between 1 and 256 characters.",
        );
    }
    // serde_json's map is ordered by key, so this is a canonical form of the payload.
    let fingerprint = payload.to_string();

    let mut st = sb.lock();
    if let Some(key) = &idem_key {
        if let Some(stored) = st.resend_idem.get(&(api_key.clone(), key.clone())) {
            if stored.fingerprint != fingerprint {
                return error(
                    StatusCode::CONFLICT,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your \
                     idempotency key or payload.",
                );
            }
            let resp = stored.replay();
            st.counters.idempotent_replays += 1;
            drop(st);
            tracing::debug!("sandbox email idempotent replay");
            return resp;
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&json!({ "id": id })).expect("json serializes");
    st.counters.emails_sent += 1;
    if let Some(key) = idem_key {
        Counters::bump(&mut st.counters.emails_by_idempotency_key, &key);
        if !attachments.is_empty() {
            st.email_attachments.insert(key.clone(), attachments);
        }
        st.resend_idem.insert(
            (api_key, key),
            StoredResponse {
                fingerprint,
                status: 200,
                body: body.clone(),
            },
        );
    }
    drop(st);
    tracing::info!(email.id = %id, "sandbox email sent");
    json_response(StatusCode::OK, body)
}

/// Resend's limit on an email's attachments, after base64 encoding ("max 40MB per email").
const MAX_ATTACHMENTS_BASE64: usize = 40 << 20;

/// The `attachments` of a send (Resend's "Send Email": each `{filename, content | path,
/// content_type?, content_id?}`, `content` base64), decoded; or why they are refused. A remote
/// `path` is accepted and not fetched (the sandbox reaches nothing off loopback).
fn attachments_of(payload: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    use base64::Engine as _;
    let Some(list) = payload.get("attachments") else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        return Err("The `attachments` field must be an array.".into());
    };
    let mut total = 0;
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let Some(filename) = a.get("filename").and_then(Value::as_str) else {
            return Err("Each attachment needs a `filename`.".into());
        };
        match (a.get("content").and_then(Value::as_str), a.get("path")) {
            (Some(content), None) => {
                total += content.len();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|_| format!("Attachment `{filename}`: `content` is not Base64."))?;
                out.push((filename.to_owned(), bytes));
            }
            (None, Some(Value::String(_))) => out.push((filename.to_owned(), Vec::new())),
            _ => {
                return Err(format!(
                    "Attachment `{filename}`: give either `content` or `path`."
                ))
            }
        }
    }
    if total > MAX_ATTACHMENTS_BASE64 {
        return Err("Attachments are limited to 40MB per email, after Base64 encoding.".into());
    }
    Ok(out)
}
