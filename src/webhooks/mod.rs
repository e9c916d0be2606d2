//! Webhook ingress: `POST /webhooks/stripe` and `POST /webhooks/duffel`, and the product's
//! signed data-rights requests, `POST /webhooks/product` ([`product`]).
//!
//! Contract, per delivery:
//! - the body is at most `serve.max_body_bytes` (413 beyond); the signature header is verified (300 s tolerance both ways,
//!   constant-time comparison, several `v1=` values and several secrets allowed) **before**
//!   the body is parsed; a rejection is a 4xx with a short reason, counted in
//!   `fleet_webhook_rejections_total{provider,reason}`, and writes nothing;
//! - then, in **one transaction**, the event is recorded in `webhook_events` and its follow-up
//!   jobs are enqueued with idempotency keys derived from the provider and event id. A
//!   duplicate delivery (providers deliver at least once) answers 200 and changes nothing; a
//!   valid event of a type we do not handle is recorded and answers 200 with no job;
//! - the handler only records and enqueues, so it answers fast; the work happens in jobs. A
//!   database failure answers 503, so the provider retries, and nothing is half-written.

pub mod event;
pub mod product;
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
use jobs::Db;
use serde_json::json;
use tracing::Instrument;

use crate::{config::ConfigError, metrics::metrics, Queue};

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
    /// `FLEET_PRODUCT_WEBHOOK_SECRET` (optional: without it `/webhooks/product` answers 503).
    pub product: Vec<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WebhookSecrets {{ stripe: {} secret(s), duffel: {} secret(s), product: {} secret(s) }}",
            self.stripe.len(),
            self.duffel.len(),
            self.product.len()
        )
    }
}

impl WebhookSecrets {
    /// Reads the providers' variables (a missing or empty one is an error naming it) and the
    /// product's, which may be unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        let read = |var: &str| -> Result<Vec<String>, ConfigError> {
            let v = std::env::var(var).map_err(|_| {
                ConfigError::new(var, format!("{var} is not set (the webhook signing secret)"))
            })?;
            let secrets: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if secrets.is_empty() {
                return Err(ConfigError::new(var, format!(
                    "{var} is empty (the webhook signing secret)"
                )));
            }
            Ok(secrets)
        };
        Ok(Self {
            stripe: read("FLEET_STRIPE_WEBHOOK_SECRET")?,
            duffel: read("FLEET_DUFFEL_WEBHOOK_SECRET")?,
            product: match std::env::var("FLEET_PRODUCT_WEBHOOK_SECRET") {
                Ok(_) => read("FLEET_PRODUCT_WEBHOOK_SECRET")?,
                Err(_) => Vec::new(),
            },
        })
    }
}

#[derive(Clone)]
struct Ingress {
    db: Db,
    queue: Queue,
    secrets: Arc<WebhookSecrets>,
}

/// Bodies at least this large are hashed on the blocking pool, so a burst of large valid-size
/// deliveries cannot stall the runtime's threads (and with them every other connection).
const HASH_OFF_RUNTIME_BYTES: usize = 64 << 10;

/// The webhook routes, refusing bodies over `max_body_bytes` with 413. Serve them through
/// [`crate::serve::harden`] for the time and concurrency limits.
pub fn router(
    db: impl Into<Db>,
    queue: Queue,
    secrets: WebhookSecrets,
    max_body_bytes: usize,
) -> Router {
    let state = Ingress {
        db: db.into(),
        queue,
        secrets: Arc::new(secrets),
    };
    Router::new()
        .route("/webhooks/stripe", post(stripe))
        .route("/webhooks/duffel", post(duffel))
        .route("/webhooks/product", post(product::product))
        .layer(DefaultBodyLimit::max(max_body_bytes))
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

/// A 4xx/5xx refusal of a delivery to `/webhooks/{source}` (`stripe`, `duffel`, `product`):
/// counted in `fleet_webhook_rejections_total{provider,reason}`, logged, nothing written.
pub(crate) fn reject(source: &str, status: StatusCode, reason: &'static str) -> Response {
    metrics()
        .webhook_rejections
        .with_label_values(&[source, reason])
        .inc();
    tracing::warn!(provider = source, reason, "webhook rejected");
    (status, Json(json!({ "error": reason }))).into_response()
}

/// The delivered body, or why it is refused (413 beyond the limit, 400 unreadable).
pub(crate) fn read_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, (StatusCode, &'static str)> {
    match body {
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, "unreadable_body")),
    }
}

/// Verifies `body` against the signature header `name` and `secrets` (see
/// [`signature::verify`]), hashing a large body on the blocking pool; a refusal is 401 when the
/// header is missing, 400 otherwise, with the [`signature::SignatureError::label`] as reason.
pub(crate) async fn verify_signature(
    headers: &HeaderMap,
    name: &str,
    secrets: &[String],
    body: &Bytes,
) -> Result<(), (StatusCode, &'static str)> {
    // A header that is not visible ASCII is malformed, not missing.
    let header = match headers.get(name).map(|h| h.to_str()) {
        None => None,
        Some(Ok(h)) => Some(h.to_owned()),
        Some(Err(_)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                signature::SignatureError::Malformed.label(),
            ))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let verified = if body.len() >= HASH_OFF_RUNTIME_BYTES {
        let (secrets, body) = (secrets.to_vec(), body.clone());
        tokio::task::spawn_blocking(move || {
            signature::verify(header.as_deref(), &secrets, &body, now, TOLERANCE_SECS)
        })
        .await
        .unwrap_or(Err(signature::SignatureError::Mismatch))
    } else {
        signature::verify(header.as_deref(), secrets, body, now, TOLERANCE_SECS)
    };
    verified.map_err(|e| {
        let status = if e == signature::SignatureError::Missing {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        (status, e.label())
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
    let started = std::time::Instant::now();
    let answer = ingest_in_span(s, provider, headers, body)
        .instrument(span)
        .await;
    metrics()
        .webhook_seconds
        .with_label_values(&[provider.as_str()])
        .observe(started.elapsed().as_secs_f64());
    answer
}

async fn ingest_in_span(
    s: &Ingress,
    provider: Provider,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(body) {
        Ok(b) => b,
        Err((status, reason)) => return reject(provider.as_str(), status, reason),
    };
    let secrets = match provider {
        Provider::Stripe => &s.secrets.stripe,
        Provider::Duffel => &s.secrets.duffel,
    };
    if let Err((status, reason)) =
        verify_signature(headers, signature_header(provider), secrets, &body).await
    {
        return reject(provider.as_str(), status, reason);
    }
    let event = match event::parse(provider, &body) {
        Ok(e) => e,
        Err(reason) => return reject(provider.as_str(), StatusCode::BAD_REQUEST, reason),
    };
    match record(s, provider, &event).await {
        Ok(Recorded::Duplicate) => {
            metrics()
                .webhook_accepted
                .with_label_values(&[provider.as_str()])
                .inc();
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
        Ok(Recorded::Accepted(n)) => {
            metrics()
                .webhook_accepted
                .with_label_values(&[provider.as_str()])
                .inc();
            if n == 0 {
                return (StatusCode::OK, Json(json!({ "status": "ignored" }))).into_response();
            }
            (
                StatusCode::OK,
                Json(json!({ "status": "accepted", "jobs": n })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(provider = provider.as_str(), event.id = ?event.id, error = %e, "recording a webhook failed");
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
    let mut tx = s.db.begin().await?;
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
    tracing::info!(provider = provider.as_str(), event.id = ?e.id, event.type = ?e.kind, jobs = n, "webhook recorded");
    Ok(Recorded::Accepted(n))
}
