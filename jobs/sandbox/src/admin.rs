//! The `/_sandbox` admin endpoints: counters, scenarios and arbitrary webhook events.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    handle::Sandbox,
    scenarios::{self, Provider, Scenario, OUTAGE_STATUSES},
    state::Counters,
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/_sandbox/counters", get(admin_counters))
        .route("/_sandbox/scenarios", post(admin_set_scenario))
        .route(
            "/_sandbox/outages",
            get(admin_outages).post(admin_set_outage),
        )
        .route("/_sandbox/refunds/{id}/settle", post(admin_settle_refund))
        .route("/_sandbox/webhooks/stripe", post(admin_stripe_webhook))
        .route("/_sandbox/webhooks/duffel", post(admin_duffel_webhook))
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
#[serde(deny_unknown_fields)]
struct SetOutage {
    provider: String,
    /// How long it lasts from now; 0 ends it.
    seconds: f64,
    /// The server error every request gets (500 when absent).
    #[serde(default)]
    status: Option<u16>,
}

/// The longest outage one request may start: a day (a drill that forgets to end one must
/// not leave a shared sandbox down for good).
const MAX_OUTAGE_SECONDS: f64 = 86_400.0;

async fn admin_set_outage(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    let bad =
        |msg: String| (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response();
    let req = match serde_json::from_slice::<SetOutage>(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "expected {{\"provider\": \"stripe\", \"seconds\": 120, \"status\": 500}}: {e}"
            ))
        }
    };
    let Some(provider) = Provider::parse(&req.provider) else {
        return bad(format!(
            "provider {:?} is not one of {}",
            req.provider,
            Provider::ALL.map(Provider::as_str).join(", ")
        ));
    };
    if !(0.0..=MAX_OUTAGE_SECONDS).contains(&req.seconds) {
        return bad(format!(
            "seconds must be 0 (end the outage) to {MAX_OUTAGE_SECONDS}, not {}",
            req.seconds
        ));
    }
    let status = req.status.unwrap_or(500);
    if !OUTAGE_STATUSES.contains(&status) {
        return bad(format!(
            "status must be one of {OUTAGE_STATUSES:?}, not {status}"
        ));
    }
    sb.set_outage(
        provider,
        std::time::Duration::from_secs_f64(req.seconds),
        status,
    );
    Json(outage_json(&sb, provider)).into_response()
}

async fn admin_outages(State(sb): State<Sandbox>) -> Json<Value> {
    Json(Value::Array(
        Provider::ALL.iter().map(|p| outage_json(&sb, *p)).collect(),
    ))
}

/// `{"provider", "down", "status", "seconds_left"}`.
fn outage_json(sb: &Sandbox, p: Provider) -> Value {
    match sb.outage(p) {
        Some(o) => json!({
            "provider": p.as_str(),
            "down": true,
            "status": o.status,
            "seconds_left": o.until.saturating_duration_since(std::time::Instant::now()).as_secs_f64().ceil(),
        }),
        None => json!({ "provider": p.as_str(), "down": false, "status": null, "seconds_left": 0 }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRefund {
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
}

async fn admin_settle_refund(
    State(sb): State<Sandbox>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let bad =
        |status: StatusCode, msg: String| (status, Json(json!({ "error": msg }))).into_response();
    let req = match serde_json::from_slice::<SettleRefund>(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"status\": \"failed\", \"failure_reason\": \"expired_or_canceled_card\"}}: {e}"),
            )
        }
    };
    match sb.settle_refund(&id, &req.status, req.failure_reason.as_deref()) {
        Ok(refund) => Json(refund).into_response(),
        Err(e) if e.starts_with("no refund") => bad(StatusCode::NOT_FOUND, e),
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
struct EmitEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    object: Value,
}

async fn admin_stripe_webhook(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    admin_emit(&sb, &body, Sandbox::emit_stripe_event)
}

async fn admin_duffel_webhook(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    admin_emit(&sb, &body, Sandbox::emit_duffel_event)
}

/// Emits the `{"type", "object"}` event of the request body through `emit`.
fn admin_emit(sb: &Sandbox, body: &[u8], emit: fn(&Sandbox, &str, Value) -> String) -> Response {
    match serde_json::from_slice::<EmitEvent>(body) {
        Ok(req) => {
            let id = emit(sb, &req.event_type, req.object);
            Json(json!({"id": id, "delivering": sb.config().webhook.is_some()})).into_response()
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected {\"type\": \"...\", \"object\": {...}}"})),
        )
            .into_response(),
    }
}
