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
use jobs::NewJob;
use serde_json::{json, Value};
use sqlx::{Connection, PgPool};
use tracing::Instrument;

use crate::{config::ConfigError, metrics::metrics, Queue};

/// Largest body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// Signature timestamp tolerance, both ways.
pub const TOLERANCE_SECS: i64 = 300;

/// A provider that sends us webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Stripe.
    Stripe,
    /// Duffel.
    Duffel,
}

impl Provider {
    /// `webhook_events.provider` and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Duffel => "duffel",
        }
    }

    fn signature_header(self) -> &'static str {
        match self {
            Self::Stripe => "stripe-signature",
            Self::Duffel => "x-duffel-signature",
        }
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

/// A parsed event: id, type, object.
struct Event {
    id: String,
    kind: String,
    object: Value,
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
        .get(provider.signature_header())
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
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(provider.as_str())
    .bind(&e.id)
    .bind(&e.kind)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.commit().await?;
        return Ok(Recorded::Duplicate);
    }
    let jobs = follow_ups(&mut tx, provider, e).await?;
    let n = jobs.len();
    if n > 0 {
        s.queue.enqueue_many_in(&mut tx, jobs).await?;
    }
    tx.commit().await?;
    tracing::info!(provider = provider.as_str(), event.id = %e.id, event.type = %e.kind, jobs = n, "webhook recorded");
    Ok(Recorded::Accepted(n))
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The jobs an event asks for (ids only in args). Keys are `{provider}:{event id}:{n}` unless a
/// domain key exists that must dedupe with other producers (refunds: `booking:{id}:refund`).
async fn follow_ups(
    conn: &mut sqlx::PgConnection,
    provider: Provider,
    e: &Event,
) -> anyhow::Result<Vec<NewJob>> {
    let key = |n: usize| format!("{}:{}:{n}", provider.as_str(), e.id);
    let o = &e.object;
    let mut jobs = Vec::new();
    match (provider, e.kind.as_str()) {
        (Provider::Stripe, t @ ("payment_intent.payment_failed" | "payment_intent.canceled")) => {
            if let Some(pi) = str_of(o, &["id"]) {
                jobs.push(
                    NewJob::raw(
                        "payment_reconcile",
                        json!({ "payment_intent_id": pi, "event_type": t }),
                    )
                    .key(key(0)),
                );
            }
        }
        (
            Provider::Stripe,
            t @ ("charge.refunded" | "charge.expired" | "charge.dispute.created"),
        ) => {
            if let Some(pi) = str_of(o, &["payment_intent"]) {
                jobs.push(
                    NewJob::raw(
                        "payment_reconcile",
                        json!({ "payment_intent_id": pi, "event_type": t }),
                    )
                    .key(key(0)),
                );
            }
        }
        (Provider::Stripe, "payment_method.automatically_updated") => {
            let (Some(pm), Some(month), Some(year)) = (
                str_of(o, &["id"]),
                o["card"]["exp_month"].as_i64(),
                o["card"]["exp_year"].as_i64(),
            ) else {
                return Ok(jobs);
            };
            jobs.push(
                NewJob::raw(
                    "card_update",
                    json!({ "stripe_payment_method_id": pm, "exp_month": month, "exp_year": year }),
                )
                .key(key(0)),
            );
        }
        (
            Provider::Duffel,
            t @ ("order.created"
            | "order.creation_failed"
            | "order.airline_initiated_change_detected"),
        ) => {
            let order = str_of(o, &["id"]);
            let booking = str_of(o, &["metadata", "booking_id"]);
            if order.is_some() || booking.is_some() {
                jobs.push(
                    NewJob::raw(
                        "order_reconcile",
                        json!({ "order_id": order, "booking_id": booking, "event_type": t, "event_id": e.id }),
                    )
                    .key(key(0)),
                );
            }
        }
        (Provider::Duffel, "order_cancellation.confirmed") => {
            if let Some(order) = str_of(o, &["order_id"]) {
                let booking: Option<uuid::Uuid> =
                    sqlx::query_scalar("SELECT id FROM bookings WHERE duffel_order_id = $1")
                        .bind(order)
                        .fetch_optional(&mut *conn)
                        .await?;
                match booking {
                    Some(b) => jobs.push(
                        NewJob::raw(
                            "refund_compensation",
                            json!({ "booking_id": b, "reason": "order_cancelled" }),
                        )
                        .key(format!("booking:{b}:refund")),
                    ),
                    None => {
                        tracing::warn!(event.id = %e.id, "order cancellation for an order we did not book")
                    }
                }
            }
        }
        _ => {}
    }
    Ok(jobs)
}
