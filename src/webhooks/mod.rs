//! Webhook ingress: `POST /webhooks/stripe` and `POST /webhooks/duffel`.
//!
//! Contract, per delivery:
//! - the body is at most 1 MiB; the signature header is verified (300 s tolerance both ways,
//!   constant-time comparison, several `v1=` values and several secrets allowed) **before**
//!   the body is parsed; a rejection is a 4xx with a short reason, counted in
//!   `fleet_webhook_rejections_total{provider,reason}`, and writes nothing;
//! - then, in **one transaction**, the event is recorded in `webhook_events` and its follow-up
//!   jobs are enqueued with idempotency keys derived from the provider and event id. A
//!   duplicate delivery (providers deliver at least once) answers 200 and changes nothing; a
//!   valid event of a type we do not handle is recorded and answers 200 with no job;
//! - the handler only records and enqueues, so it answers fast; the work happens in jobs. A
//!   database failure answers 503, so the provider retries, and nothing is half-written.

pub mod signature;

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use jobs::followups::{self, Event, Provider};
use serde_json::{json, Value};
use sqlx::{Connection, PgPool};
use tracing::Instrument;

use crate::{config::ConfigError, metrics::metrics, Queue};

/// Largest body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// Signature timestamp tolerance, both ways.
pub const TOLERANCE_SECS: i64 = 300;

/// The header carrying a provider's signature.
fn signature_header(p: Provider) -> &'static str {
    match p {
        Provider::Stripe => "stripe-signature",
        Provider::Duffel => "x-duffel-signature",
    }
}

/// Signing secrets per provider; several (comma-separated in the variable) during a rotation.
#[derive(Clone)]
pub struct WebhookSecrets {
    /// `FLEET_STRIPE_WEBHOOK_SECRET`.
    pub stripe: Vec<String>,
    /// `FLEET_DUFFEL_WEBHOOK_SECRET`.
    pub duffel: Vec<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WebhookSecrets {{ stripe: {} secret(s), duffel: {} secret(s) }}",
            self.stripe.len(),
            self.duffel.len()
        )
    }
}

impl WebhookSecrets {
    /// Reads both variables; a missing or empty one is an error naming it.
    pub fn from_env() -> Result<Self, ConfigError> {
        let read = |var: &str| -> Result<Vec<String>, ConfigError> {
            let v = std::env::var(var).map_err(|_| {
                ConfigError(format!("{var} is not set (the webhook signing secret)"))
            })?;
            let secrets: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if secrets.is_empty() {
                return Err(ConfigError(format!(
                    "{var} is empty (the webhook signing secret)"
                )));
            }
            Ok(secrets)
        };
        Ok(Self {
            stripe: read("FLEET_STRIPE_WEBHOOK_SECRET")?,
            duffel: read("FLEET_DUFFEL_WEBHOOK_SECRET")?,
        })
    }
}

#[derive(Clone)]
struct Ingress {
    pool: PgPool,
    queue: Queue,
    secrets: Arc<WebhookSecrets>,
}

/// The webhook routes.
pub fn router(pool: PgPool, queue: Queue, secrets: WebhookSecrets) -> Router {
    let state = Ingress {
        pool,
        queue,
        secrets: Arc::new(secrets),
    };
    Router::new()
        .route("/webhooks/stripe", post(stripe))
        .route("/webhooks/duffel", post(duffel))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn stripe(
    State(s): State<Ingress>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(&s, Provider::Stripe, &headers, body).await
}

async fn duffel(
    State(s): State<Ingress>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(&s, Provider::Duffel, &headers, body).await
}

fn reject(provider: Provider, status: StatusCode, reason: &'static str) -> Response {
    metrics()
        .webhook_rejections
        .with_label_values(&[provider.as_str(), reason])
        .inc();
    tracing::warn!(provider = provider.as_str(), reason, "webhook rejected");
    (status, Json(json!({ "error": reason }))).into_response()
}

fn parse(provider: Provider, body: &[u8]) -> Result<Event, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "malformed_json")?;
    let (id, kind, object) = match provider {
        Provider::Stripe => (&v["id"], &v["type"], v["data"]["object"].clone()),
        Provider::Duffel => (
            &v["data"]["id"],
            &v["data"]["type"],
            v["data"]["object"].clone(),
        ),
    };
    let id = id
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or("missing_event_id")?;
    let kind = kind
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or("missing_event_type")?;
    Ok(Event {
        provider,
        id: id.to_owned(),
        kind: kind.to_owned(),
        object,
    })
}

async fn ingest(
    s: &Ingress,
    provider: Provider,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The jobs a webhook enqueues carry this span's trace context: one trace from delivery to
    // the last follow-up.
    let span = tracing::info_span!("webhook", provider = provider.as_str());
    ingest_in_span(s, provider, headers, body)
        .instrument(span)
        .await
}

async fn ingest_in_span(
    s: &Ingress,
    provider: Provider,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reject(provider, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        Err(_) => return reject(provider, StatusCode::BAD_REQUEST, "unreadable_body"),
    };
    let secrets = match provider {
        Provider::Stripe => &s.secrets.stripe,
        Provider::Duffel => &s.secrets.duffel,
    };
    let header = headers
        .get(signature_header(provider))
        .and_then(|h| h.to_str().ok());
    if let Err(e) = signature::verify(
        header,
        secrets,
        &body,
        chrono::Utc::now().timestamp(),
        TOLERANCE_SECS,
    ) {
        let status = if e == signature::SignatureError::Missing {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        return reject(provider, status, e.label());
    }
    let event = match parse(provider, &body) {
        Ok(e) => e,
        Err(reason) => return reject(provider, StatusCode::BAD_REQUEST, reason),
    };
    match record(s, provider, &event).await {
        Ok(Recorded::Duplicate) => {
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
        Ok(Recorded::Accepted(0)) => {
            (StatusCode::OK, Json(json!({ "status": "ignored" }))).into_response()
        }
        Ok(Recorded::Accepted(n)) => (
            StatusCode::OK,
            Json(json!({ "status": "accepted", "jobs": n })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(provider = provider.as_str(), event.id = %event.id, error = %e, "recording a webhook failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "temporarily_unavailable" })),
            )
                .into_response()
        }
    }
}

enum Recorded {
    Duplicate,
    Accepted(usize),
}

async fn record(s: &Ingress, provider: Provider, e: &Event) -> anyhow::Result<Recorded> {
    let mut conn = s.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    if !jobs::webhook_events::record(&mut tx, provider.as_str(), &e.id, &e.kind).await? {
        tx.commit().await?;
        return Ok(Recorded::Duplicate);
    }
    let jobs = followups::for_event(&mut tx, e).await?;
    let n = jobs.len();
    if n > 0 {
        s.queue.enqueue_many_in(&mut tx, jobs).await?;
    }
    tx.commit().await?;
    tracing::info!(provider = provider.as_str(), event.id = %e.id, event.type = %e.kind, jobs = n, "webhook recorded");
    Ok(Recorded::Accepted(n))
}
