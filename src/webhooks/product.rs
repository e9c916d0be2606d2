//! `POST /webhooks/product`: the product asks, on a traveler's behalf, for their account's
//! erasure or their data's export (docs/decisions.md 53). Signed like the providers' webhooks
//! (`Parker-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`, secrets in
//! `FLEET_PRODUCT_WEBHOOK_SECRET`, comma-separated during a rotation), verified before the body
//! is read. The body is ours:
//!
//! ```json
//! {"id": "dsr_8Yz…", "type": "account.erasure_requested", "user_id": "<uuid>"}
//! ```
//!
//! `type` is `account.erasure_requested` or `account.export_requested`; `id` is the product's
//! id of the request (1–128 of `[A-Za-z0-9_.:-]`): a retry with the same id finds the same
//! request. Answers (JSON, no personal data):
//! - 202 `{"status": "accepted", "request_id", "job_id"}`: the request is open and its job
//!   queued (in one transaction with the request's audit row);
//! - 200 `{"status": "duplicate", "request_id", "request_status"}`: already asked (this id, or
//!   an open request of the same kind for this traveler);
//! - 404 `unknown_traveler`, 410 `already_erased`, 409 `request_id_reused`: refused, nothing
//!   written; 400/401 for a bad signature or body; 413 beyond `serve.max_body_bytes`;
//! - 503 `not_configured` (no secret set: the product retries once it is) or
//!   `temporarily_unavailable` (the database): nothing was written, the product retries.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use jobs::data_rights::{self, Asker, RequestKind, RequestRefused, Source};
use serde_json::{json, Value};
use uuid::Uuid;

use super::Ingress;
use crate::metrics::metrics;

/// The header carrying the product's signature.
pub const SIGNATURE_HEADER: &str = "parker-signature";

fn reject(status: StatusCode, reason: &'static str) -> Response {
    super::reject("product", status, reason)
}

/// A verified body, read: the request's kind, the traveler and the product's id.
fn parse(body: &[u8]) -> Result<(RequestKind, Uuid, String), &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "malformed_json")?;
    let id = v["id"].as_str().ok_or("missing_request_id")?;
    let id_ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !id_ok {
        return Err("malformed_request_id");
    }
    let kind = match v["type"].as_str() {
        Some("account.erasure_requested") => RequestKind::Erasure,
        Some("account.export_requested") => RequestKind::Export,
        Some(_) => return Err("unknown_request_type"),
        None => return Err("missing_request_type"),
    };
    let user = v["user_id"]
        .as_str()
        .and_then(|u| Uuid::parse_str(u).ok())
        .ok_or("malformed_user_id")?;
    Ok((kind, user, id.to_owned()))
}

pub(super) async fn product(
    State(s): State<Ingress>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match super::read_body(body) {
        Ok(b) => b,
        Err((status, reason)) => return reject(status, reason),
    };
    if s.secrets.product.is_empty() {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "not_configured");
    }
    if let Err((status, reason)) =
        super::verify_signature(&headers, SIGNATURE_HEADER, &s.secrets.product, &body).await
    {
        return reject(status, reason);
    }
    let (kind, user, external_id) = match parse(&body) {
        Ok(p) => p,
        Err(reason) => return reject(StatusCode::BAD_REQUEST, reason),
    };
    let asker = Asker {
        source: Source::Product,
        name: "product",
        external_id: Some(&external_id),
    };
    match data_rights::open(&s.db, &s.queue, kind, user, &asker, false).await {
        Ok(o) if o.duplicate => {
            metrics()
                .webhook_accepted
                .with_label_values(&["product"])
                .inc();
            (
                StatusCode::OK,
                Json(json!({
                    "status": "duplicate", "request_id": o.request_id,
                    "request_status": o.status,
                })),
            )
                .into_response()
        }
        Ok(o) => {
            metrics()
                .webhook_accepted
                .with_label_values(&["product"])
                .inc();
            tracing::info!(data_request.id = ?o.request_id, kind = kind.as_str(), "product request recorded");
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "accepted", "request_id": o.request_id, "job_id": o.job_id,
                })),
            )
                .into_response()
        }
        Err(RequestRefused::UnknownTraveler(_)) => {
            reject(StatusCode::NOT_FOUND, "unknown_traveler")
        }
        Err(RequestRefused::AlreadyErased { .. }) => reject(StatusCode::GONE, "already_erased"),
        Err(RequestRefused::ExternalIdReused(_)) => {
            reject(StatusCode::CONFLICT, "request_id_reused")
        }
        Err(RequestRefused::Failed(e)) => {
            tracing::error!(provider = "product", error = %e, "recording a product request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "temporarily_unavailable" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_a_known_type_a_traveler_and_a_plain_id() {
        let u = Uuid::new_v4();
        let ok = format!(r#"{{"id":"dsr_1","type":"account.export_requested","user_id":"{u}"}}"#);
        assert_eq!(
            parse(ok.as_bytes()),
            Ok((RequestKind::Export, u, "dsr_1".to_owned()))
        );
        for (body, reason) in [
            ("not json".to_owned(), "malformed_json"),
            (
                format!(r#"{{"type":"account.export_requested","user_id":"{u}"}}"#),
                "missing_request_id",
            ),
            (
                format!(r#"{{"id":"a b","type":"account.export_requested","user_id":"{u}"}}"#),
                "malformed_request_id",
            ),
            (
                format!(r#"{{"id":"d","type":"account.deleted","user_id":"{u}"}}"#),
                "unknown_request_type",
            ),
            (
                r#"{"id":"d","type":"account.erasure_requested","user_id":"jane@example.com"}"#
                    .to_owned(),
                "malformed_user_id",
            ),
        ] {
            assert_eq!(parse(body.as_bytes()).unwrap_err(), reason, "{body}");
        }
    }
}
