//! The `/_sandbox` admin endpoints: counters, scenarios, outages, refund settlement, airline
//! changes, arbitrary webhook events, and the KMS stand-in's fault and key rotation.

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
    duffel_objects::AirlineChangeRefusal,
    handle::Sandbox,
    kms_objects::{KmsFault, KMS_KEY_ALIAS, KMS_KEY_ARN},
    scenarios::{self, Provider, Scenario},
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
        .route(
            "/_sandbox/orders/{id}/airline_change",
            post(admin_airline_change),
        )
        .route("/_sandbox/webhooks/stripe", post(admin_stripe_webhook))
        .route("/_sandbox/webhooks/duffel", post(admin_duffel_webhook))
        .route("/_sandbox/kms", get(admin_kms))
        .route("/_sandbox/kms/fault", post(admin_set_kms_fault))
        .route("/_sandbox/kms/rotate", post(admin_rotate_kms))
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
    /// What every request gets (500 when absent): a server error, or 429 for Twilio.
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
    let allowed = provider.outage_statuses();
    if !allowed.contains(&status) {
        return bad(format!(
            "status must be one of {allowed:?} for {}, not {status}",
            provider.as_str()
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

/// What `POST /_sandbox/orders/{id}/airline_change` asks for, as
/// [`Sandbox::airline_change`] takes it.
struct AirlineChangeAsk {
    shift_minutes: i64,
    available_actions: Option<Vec<String>>,
    deliver: bool,
}

const AIRLINE_CHANGE_EXAMPLE: &str = r#"{"shift_minutes": 90, "available_actions": ["accept", "cancel", "change"], "deliver": true}"#;

/// Reads the ask field by field, so that every refusal names its field (serde's type errors do
/// not). Ranges and action names are checked by [`Sandbox::airline_change`].
fn parse_airline_change(body: &[u8]) -> Result<AirlineChangeAsk, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("expected a JSON object like {AIRLINE_CHANGE_EXAMPLE}: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err(format!(
            "expected a JSON object like {AIRLINE_CHANGE_EXAMPLE}"
        ));
    };
    const FIELDS: [&str; 3] = ["shift_minutes", "available_actions", "deliver"];
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {unknown:?}: expected {}",
            FIELDS.join(", ")
        ));
    }
    let shift_minutes = match obj.get("shift_minutes") {
        None | Some(Value::Null) => {
            return Err("shift_minutes is required (whole minutes, negative for earlier)".into())
        }
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("shift_minutes must be a whole number of minutes, not {v}"))?,
    };
    let available_actions = match obj.get("available_actions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|a| {
                    a.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("available_actions must hold strings, not {a}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => {
            return Err(format!(
                "available_actions must be a list of strings, not {other}"
            ))
        }
    };
    let deliver = match obj.get("deliver") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("deliver must be true or false, not {other}")),
    };
    Ok(AirlineChangeAsk {
        shift_minutes,
        available_actions,
        deliver,
    })
}

/// `POST /_sandbox/orders/{id}/airline_change`: the airline moves the order's flights; answers
/// the AIC object itself (not wrapped in `data`), 404 for an unknown order, 409 for a
/// cancelled one, 400 naming the wrong field.
async fn admin_airline_change(
    State(sb): State<Sandbox>,
    axum::extract::Path(order_id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let refuse =
        |status: StatusCode, msg: String| (status, Json(json!({ "error": msg }))).into_response();
    let ask = match parse_airline_change(&body) {
        Ok(a) => a,
        Err(msg) => return refuse(StatusCode::BAD_REQUEST, msg),
    };
    match sb.try_airline_change(
        &order_id,
        ask.shift_minutes,
        ask.available_actions,
        ask.deliver,
    ) {
        Ok(change) => Json(change).into_response(),
        Err(e) => {
            let status = match e {
                AirlineChangeRefusal::UnknownOrder(_) => StatusCode::NOT_FOUND,
                AirlineChangeRefusal::OrderCancelled(_) => StatusCode::CONFLICT,
                AirlineChangeRefusal::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            refuse(status, e.to_string())
        }
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

/// `{"key_id", "alias", "fault", "key_materials", "key_material_id"}`: the KMS key as it
/// stands (never its material).
fn kms_json(sb: &Sandbox) -> Value {
    let materials = sb.lock().kms_key.materials();
    json!({
        "key_id": KMS_KEY_ARN,
        "alias": KMS_KEY_ALIAS,
        "fault": sb.kms_fault().map(KmsFault::as_str),
        "key_materials": materials,
        "key_material_id": sb.kms_key_material_id(),
    })
}

async fn admin_kms(State(sb): State<Sandbox>) -> Json<Value> {
    Json(kms_json(&sb))
}

/// `POST /_sandbox/kms/fault {"fault": "throttling" | "outage" | "access_denied" | null}`:
/// [`Sandbox::set_kms_fault`].
async fn admin_set_kms_fault(State(sb): State<Sandbox>, body: axum::body::Bytes) -> Response {
    let known = KmsFault::ALL.map(KmsFault::as_str).join(", ");
    let bad =
        |msg: String| (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response();
    let fault = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) if o.len() == 1 => match o.get("fault") {
            Some(Value::Null) => None,
            Some(Value::String(f)) => match KmsFault::parse(f) {
                Some(f) => Some(f),
                None => {
                    return bad(format!(
                        "fault {f:?} is not one of {known} (or null to clear)"
                    ))
                }
            },
            _ => return bad(format!("expected {{\"fault\": one of {known}, or null}}")),
        },
        _ => return bad(format!("expected {{\"fault\": one of {known}, or null}}")),
    };
    sb.set_kms_fault(fault);
    Json(kms_json(&sb)).into_response()
}

/// `POST /_sandbox/kms/rotate`: [`Sandbox::rotate_kms_key_material`].
async fn admin_rotate_kms(State(sb): State<Sandbox>) -> Json<Value> {
    sb.rotate_kms_key_material();
    Json(kms_json(&sb))
}
