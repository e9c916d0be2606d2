//! The provider sandbox: a stateful, in-memory stand-in for the subset of **Stripe**, **Duffel**
//! and **Resend** that the fleet's clients use, served over loopback HTTP by one axum server.
//!
//! Paths and shapes follow the real APIs, so a client only changes its base URL. The sandbox is a
//! test double, but a faithful one: state transitions are validated, unknown ids are 404s in the
//! provider's own error shape, idempotency keys behave as the provider documents, and
//! [`Counters`] let a test prove that nothing was charged, booked or emailed twice.
//!
//! # Stripe (`/v1/...`, form-encoded bodies, `Authorization: Bearer sk_test_…`)
//! - `POST /v1/payment_intents`, `GET /v1/payment_intents/{id}`,
//!   `POST /v1/payment_intents/{id}/capture`, `POST /v1/payment_intents/{id}/cancel`
//! - `POST /v1/refunds`, `GET /v1/refunds/{id}`
//! - `Idempotency-Key` on every POST, scoped per API key: same key and same parameters replay
//!   the stored response byte for byte (same status, header `Idempotent-Replayed: true`); same
//!   key with other parameters → 400 `idempotency_error`; a key whose first request is still
//!   running → 409 `idempotency_key_in_use`. As in Stripe, validation failures (400
//!   `parameter_missing`/`parameter_invalid`) and 409s are not stored; 402 declines are.
//! - Card scenarios by payment method id, ignoring a `__<suffix>` (any other `pm_…` succeeds
//!   like `pm_card_visa`):
//!
//! | payment method | result of an off-session confirm |
//! |---|---|
//! | `pm_card_visa` | `requires_capture` (manual capture) or `succeeded` |
//! | `pm_card_chargeDeclined` | 402 `card_error` `card_declined` / `generic_decline` |
//! | `pm_card_chargeDeclinedInsufficientFunds` | 402 `card_declined` / `insufficient_funds` |
//! | `pm_card_chargeDeclinedExpiredCard` | 402 `expired_card` |
//! | `pm_card_authenticationRequired` | 402 `authentication_required` |
//!
//! Every decline still creates the PaymentIntent (status `requires_payment_method`, with
//! `last_payment_error`) and returns it inside the error, which is what Stripe does for an
//! `off_session=true` confirm: authentication cannot happen off session, so the intent does not
//! stop in `requires_action`, it fails back to `requires_payment_method`.
//!
//! # Duffel (`/air/...`, JSON in `{"data": …}`, `Authorization: Bearer duffel_test_…`, `Duffel-Version: v2`)
//! - `POST /air/offer_requests[?return_offers=false]`, `GET /air/offer_requests/{id}`
//! - `GET /air/offers?offer_request_id=…[&sort=total_amount|-total_amount]`, `GET /air/offers/{id}`
//! - `POST /air/orders`, `GET /air/orders/{id}`, `GET /air/orders?…` (see below)
//! - `POST /air/order_cancellations`, `GET /air/order_cancellations/{id}`,
//!   `POST /air/order_cancellations/{id}/actions/confirm`
//!
//! Fares are **deterministic**: the same (seed, slices, passenger count, cabin) always yields the
//! same 3–5 offers with the same carriers, times and prices (ids are fresh per request, as in
//! Duffel). Offers expire 30 minutes after the request.
//!
//! Duffel has no idempotency key, so a second `POST /air/orders` for an offer that already has an
//! order is refused with 422 `order_creation_already_attempted`. **Reconciliation lookup (a
//! sandbox extension)**: `GET /air/orders` accepts any of `offer_id=off_…`,
//! `booking_reference=…` and `metadata[KEY]=VALUE` (e.g. `metadata[booking_id]=…`); all given
//! filters must match. Each order also carries an `offer_id` field.
//!
//! Scenarios are chosen per route (`ORIGIN-DESTINATION` of the first slice), settable with
//! [`Sandbox::set_scenario`] or `POST /_sandbox/scenarios {"route":"LHR-JFK","scenario":"slow"}`.
//! Default table (every other route is `normal`):
//!
//! | route | scenario | effect |
//! |---|---|---|
//! | `LHR-CDG` | `price_rises` | `GET /air/offers/{id}` returns a total ~8 % above the search; the order must pay the new total |
//! | `LHR-AMS` | `offer_gone` | re-read → 404 `offer_no_longer_available`; order → 422 same code |
//! | `LHR-DUB` | `insufficient_balance` | order → 422 `insufficient_balance` |
//! | `LHR-MAD` | `price_changed` | order → 422 `price_changed` |
//! | `LHR-FRA` | `rate_limited` | the first [`SandboxConfig::rate_limit_burst`] requests for the route → 429 |
//! | `LHR-BCN` | `server_error` | order → 500, no order created |
//! | `LHR-LIS` | `slow` | order response delayed by [`SandboxConfig::slow_ms`] |
//! | `LHR-ZRH` | `order_created_then_500` | the order **is** created, but the response is a 500 |
//!
//! A 429 carries `ratelimit-limit`, `ratelimit-remaining: 0` and `ratelimit-reset` (an HTTP date
//! a few seconds ahead).
//!
//! # Resend (`POST /emails`, `Authorization: Bearer re_…`)
//! `Idempotency-Key` (kept for the sandbox's lifetime, Resend keeps 24 h): same key and same
//! payload → the same `{"id"}` again and the email is **not** sent (nor counted) twice; same key
//! with another payload → 409 `invalid_idempotent_request`, Resend's documented error name.
//! Errors use Resend's shape `{"statusCode", "message", "name"}`.
//!
//! # Webhooks
//! With [`SandboxConfig::webhook`] set, state changes are delivered as signed events (spawned
//! task, up to [`WEBHOOK_ATTEMPTS`] attempts with exponential backoff on non-2xx):
//! Stripe `payment_intent.amount_capturable_updated|succeeded|payment_failed|canceled` and
//! `charge.refunded` with `Stripe-Signature`; Duffel `order.created`, `order.creation_failed`,
//! `order_cancellation.confirmed` with `X-Duffel-Signature`. Both headers are
//! `t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`, see [`webhooks`]. Arbitrary events
//! can be emitted through `POST /_sandbox/webhooks/stripe` and `POST /_sandbox/webhooks/duffel`
//! with `{"type": "...", "object": {...}}`.
//!
//! # Admin
//! `GET /_sandbox/counters` ([`Counters`] as JSON), `POST /_sandbox/scenarios`,
//! `POST /_sandbox/webhooks/{stripe,duffel}`.
//!
//! Logs carry ids only: never names, emails, phone numbers or identity documents.

mod duffel;
mod resend;
pub mod scenarios;
mod state;
mod stripe;
pub mod webhooks;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use scenarios::Scenario;
pub use state::Counters;
pub use webhooks::{
    duffel_signature_header, sign_payload, stripe_signature_header, WEBHOOK_ATTEMPTS,
};

/// How the sandbox behaves. `SandboxConfig::default()` is a quiet sandbox with no webhooks.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Seeds the deterministic fare generator: same seed and criteria, same offers and prices.
    pub seed: u64,
    /// Where to deliver signed webhook events; `None` emits nothing.
    pub webhook: Option<WebhookTarget>,
    /// Delay of an order response on a route in the `slow` scenario.
    pub slow_ms: u64,
    /// How many requests for a `rate_limited` route get a 429 before the route recovers.
    pub rate_limit_burst: u32,
    /// Artificial processing time of every Stripe POST (between claiming the idempotency key and
    /// answering); lets tests observe the "key in flight" 409. Default 0.
    pub stripe_latency_ms: u64,
    /// First backoff between webhook delivery attempts (doubled each retry). Default 200 ms.
    pub webhook_backoff_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            webhook: None,
            slow_ms: 3_000,
            rate_limit_burst: 2,
            stripe_latency_ms: 0,
            webhook_backoff_ms: 200,
        }
    }
}

/// Webhook endpoints and the secrets used to sign deliveries to them.
#[derive(Clone)]
pub struct WebhookTarget {
    pub stripe_url: String,
    pub stripe_secret: String,
    pub duffel_url: String,
    pub duffel_secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("stripe_url", &self.stripe_url)
            .field("stripe_secret", &"<redacted>")
            .field("duffel_url", &self.duffel_url)
            .field("duffel_secret", &"<redacted>")
            .finish()
    }
}

/// A cheap-to-clone handle to one sandbox's shared state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SandboxConfig,
    state: Mutex<state::State>,
    http: reqwest::Client,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("reqwest client without TLS always builds");
        Self {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(state::State::new()),
                http,
            }),
        }
    }

    /// All routes: Stripe, Duffel, Resend and the `/_sandbox` admin endpoints.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(stripe::routes())
            .merge(duffel::routes())
            .merge(resend::routes())
            .route("/_sandbox/counters", get(admin_counters))
            .route("/_sandbox/scenarios", post(admin_set_scenario))
            .route("/_sandbox/webhooks/stripe", post(admin_stripe_webhook))
            .route("/_sandbox/webhooks/duffel", post(admin_duffel_webhook))
            .with_state(self.clone())
    }

    /// Binds `bind` (port 0 picks a free port), serves the router on a spawned task and returns
    /// the base URL (e.g. `http://127.0.0.1:41234`).
    pub async fn start(cfg: SandboxConfig, bind: SocketAddr) -> anyhow::Result<RunningSandbox> {
        let sandbox = Sandbox::new(cfg);
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let app = sandbox.router();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
        tracing::info!(%addr, "sandbox listening");
        Ok(RunningSandbox {
            base_url: format!("http://{addr}"),
            addr,
            sandbox,
            shutdown,
            handle,
        })
    }

    /// A snapshot of every counter.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Sets the scenario of a route (`"LHR-JFK"`, case-insensitive).
    pub fn set_scenario(&self, route: &str, scenario: Scenario) {
        self.lock().scenarios.set(route, scenario);
    }

    /// The scenario a route currently runs.
    pub fn scenario(&self, route: &str) -> Scenario {
        self.lock().scenarios.get(route)
    }

    /// Emits a signed Stripe event of any type with `object` as `data.object`. Needs a Tokio
    /// runtime; a no-op without a configured webhook target. Returns the event id.
    pub fn emit_stripe_event(&self, event_type: &str, object: Value) -> String {
        webhooks::emit_stripe(self, event_type, object, None)
    }

    /// Emits a signed Duffel event of any type with `object` as `data.object`. Needs a Tokio
    /// runtime; a no-op without a configured webhook target. Returns the event id.
    pub fn emit_duffel_event(&self, event_type: &str, object: Value) -> String {
        webhooks::emit_duffel(self, event_type, object)
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    fn lock(&self) -> MutexGuard<'_, state::State> {
        // A panic while holding the lock leaves the maps usable; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A sandbox served on a spawned task. Dropping it does not stop the server; call
/// [`RunningSandbox::shutdown`].
pub struct RunningSandbox {
    pub base_url: String,
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

impl RunningSandbox {
    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }

    /// A token that stops the server when cancelled (e.g. tie it to the process's ctrl-c).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await??;
        Ok(())
    }
}

async fn admin_counters(State(sb): State<Sandbox>) -> Json<Counters> {
    Json(sb.counters())
}

#[derive(Deserialize)]
struct SetScenario {
    route: String,
    scenario: String,
}

async fn admin_set_scenario(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<SetScenario>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected {\"route\": \"LHR-JFK\", \"scenario\": \"...\"}"})),
        )
            .into_response();
    };
    let Some(scenario) = Scenario::parse(&req.scenario) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unknown scenario", "known": Scenario::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()})),
        )
            .into_response();
    };
    if !scenarios::is_route(&req.route) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "route must look like LHR-JFK"})),
        )
            .into_response();
    }
    sb.set_scenario(&req.route, scenario);
    Json(json!({"route": req.route.to_ascii_uppercase(), "scenario": scenario.as_str()}))
        .into_response()
}

#[derive(Deserialize)]
struct EmitEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    object: Value,
}

async fn admin_stripe_webhook(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<EmitEvent>(&body) {
        Ok(req) => {
            let id = sb.emit_stripe_event(&req.event_type, req.object);
            Json(json!({"id": id, "delivering": sb.config().webhook.is_some()})).into_response()
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected {\"type\": \"...\", \"object\": {...}}"})),
        )
            .into_response(),
    }
}

async fn admin_duffel_webhook(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<EmitEvent>(&body) {
        Ok(req) => {
            let id = sb.emit_duffel_event(&req.event_type, req.object);
            Json(json!({"id": id, "delivering": sb.config().webhook.is_some()})).into_response()
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected {\"type\": \"...\", \"object\": {...}}"})),
        )
            .into_response(),
    }
}

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
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
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
