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
    scenarios::{self, Scenario},
    state::Counters,
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/_sandbox/counters", get(admin_counters))
        .route("/_sandbox/scenarios", post(admin_set_scenario))
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
