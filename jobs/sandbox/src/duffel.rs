//! Duffel: offer requests with deterministic seeded fares, offers, instant orders (no
//! idempotency key, so a second order for an offer is refused), order lookup for
//! reconciliation, order cancellations, airline-initiated changes ([`aic`]), and the per-route
//! failure scenarios.

// Helpers return a ready HTTP error response as their `Err`; it is the cold path of a test
// double, so its size does not matter.
#![allow(clippy::result_large_err)]

mod aic;

use std::{collections::BTreeMap, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch, post, MethodRouter},
    Json, Router,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::{
    duffel_objects::{money, parse_money, Cancellation, Offer, OfferRequest, Order},
    handle::Sandbox,
    read::get_by_id,
    scenarios::{route_key, Scenario},
    state::{Counters, State as SandboxState},
    util::{bearer, new_id, parse_form},
    webhooks,
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/air/offer_requests", post(create_offer_request))
        .route("/air/offer_requests/{id}", get_one(offer_request))
        .route("/air/offers", get(list_offers))
        .route("/air/offers/{id}", get(get_offer))
        .route("/air/orders", post(create_order).get(list_orders))
        .route(
            "/air/orders/{id}",
            get_one(|st, id| st.order(id).map(|o| o.json.clone())),
        )
        .route("/air/order_cancellations", post(create_cancellation))
        .route(
            "/air/order_cancellations/{id}",
            get_one(|st, id| st.cancellations.get(id).map(|c| c.json.clone())),
        )
        .route(
            "/air/order_cancellations/{id}/actions/confirm",
            post(confirm_cancellation),
        )
        .route("/air/airline_initiated_changes", get(aic::list_changes))
        .route(
            "/air/airline_initiated_changes/{id}",
            patch(aic::update_change),
        )
        .route(
            "/air/airline_initiated_changes/{id}/actions/accept",
            post(aic::accept_change),
        )
}

/// How long offers stay bookable.
const OFFER_TTL_MINUTES: i64 = 30;
/// The `ratelimit-limit` the sandbox advertises.
const RATE_LIMIT: u32 = 60;
/// Every fare is in this currency (a Duffel account has one balance currency).
const CURRENCY: &str = "USD";

// ---------------------------------------------------------------------------------------------
// Responses

fn now_str() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn with_request_id(mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&new_id("req_")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn data(status: StatusCode, value: Value) -> Response {
    with_request_id((status, Json(json!({ "data": value }))).into_response())
}

/// `GET` of one stored object by id: `{"data": object}`, or Duffel's 404.
fn get_one(lookup: fn(&SandboxState, &str) -> Option<Value>) -> MethodRouter<Sandbox> {
    get_by_id(authenticate, lookup, data_ok, |_| not_found())
}

fn data_ok(value: Value) -> Response {
    data(StatusCode::OK, value)
}

fn data_created(value: Value) -> Response {
    data(StatusCode::CREATED, value)
}

/// One page of a list, Duffel's pagination: `limit` (1–200, default 50) records from the
/// `after` cursor on, and `meta {limit, after, before}` where `after` is the next page's cursor
/// (null on the last page). The sandbox's cursors are opaque to the client, as Duffel's are.
fn list(values: Vec<Value>, params: &[(String, String)]) -> Response {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 200);
    let start = param("after")
        .and_then(|c| c.strip_prefix("sbx_"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(values.len());
    let end = (start + limit).min(values.len());
    let after = (end < values.len()).then(|| format!("sbx_{end}"));
    let before = (start > 0).then(|| format!("sbx_{}", start.saturating_sub(limit)));
    let page: Vec<Value> = values[start..end].to_vec();
    with_request_id(
        Json(json!({
            "data": page,
            "meta": {"limit": limit, "after": after, "before": before},
        }))
        .into_response(),
    )
}

fn error(status: StatusCode, error_type: &str, code: &str, title: &str, message: &str) -> Response {
    with_request_id(
        (
            status,
            Json(json!({
                "errors": [{
                    "type": error_type,
                    "code": code,
                    "title": title,
                    "message": message,
                    "documentation_url": format!("https://duffel.com/docs/api/overview/errors#{code}"),
                }],
                "meta": {"status": status.as_u16(), "request_id": new_id("req_")},
            })),
        )
            .into_response(),
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "Not found",
        "The resource you are trying to access does not exist.",
    )
}

/// The 500 of the `server_error` and `order_created_then_500` scenarios.
fn internal_error() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "internal_server_error",
        "Internal server error",
        "An internal error occurred. Please try again later or contact support.",
    )
}

/// What every request gets during an outage ([`Sandbox::set_outage`]): Duffel's `api_error`
/// with the server-error status.
pub(crate) fn outage_response(status: StatusCode) -> Response {
    error(
        status,
        "api_error",
        "internal_server_error",
        "Internal server error",
        "An internal error occurred. Please try again later or contact support (sandbox outage).",
    )
}

fn validation(code: &str, message: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        code,
        "Invalid request",
        message,
    )
}

fn unprocessable(error_type: &str, code: &str, title: &str, message: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        error_type,
        code,
        title,
        message,
    )
}

/// Checks the bearer token and `Duffel-Version`.
fn authenticate(headers: &HeaderMap) -> Result<(), Response> {
    // Duffel's codes for these (`missing_authorization_header`, `access_token_not_found`,
    // `missing_version_header`, `unsupported_version`); the status of each is not documented.
    match bearer(headers) {
        Some(token) if token.starts_with("duffel_test_") => {}
        Some(_) => return Err(error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "access_token_not_found",
            "Access token not found",
            "The sandbox accepts test access tokens (Authorization: Bearer duffel_test_…) only.",
        )),
        None => {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing_authorization_header",
                "Missing authorization header",
                "An access token is required: Authorization: Bearer duffel_test_….",
            ))
        }
    }
    match headers.get("duffel-version").and_then(|v| v.to_str().ok()) {
        Some("v2") => Ok(()),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unsupported_version",
            "Unsupported version",
            "The sandbox serves Duffel-Version v2 only.",
        )),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_version_header",
            "Missing version header",
            "The Duffel-Version header is required (v2).",
        )),
    }
}

/// The `rate_limited` scenario: the first `rate_limit_burst` requests for the route get a 429.
fn rate_limited(sb: &Sandbox, route: &str) -> Option<Response> {
    let burst = sb.config().rate_limit_burst;
    {
        let mut st = sb.lock();
        if st.scenarios.get(route) != Scenario::RateLimited {
            return None;
        }
        let served = st.rate_limited.entry(route.to_string()).or_default();
        if *served >= burst {
            return None;
        }
        *served += 1;
        st.counters.rate_limited_responses += 1;
    }
    tracing::debug!(route, "sandbox duffel rate limited");
    // Whole seconds, at least two ahead.
    let reset = Utc::now() + chrono::Duration::seconds(3);
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limit_exceeded",
        "Rate limit exceeded",
        "Too many requests have been made. Retry after the time in the ratelimit-reset header.",
    );
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert("ratelimit-remaining", HeaderValue::from(0u32));
    if let Ok(v) = HeaderValue::from_str(&reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        h.insert("ratelimit-reset", v);
    }
    Some(resp)
}

/// The route of the object a request is about, once the `rate_limited` scenario lets the
/// request through: `Err` is the 404 when `route_of` finds no such object, or the 429.
fn admit(
    sb: &Sandbox,
    route_of: impl FnOnce(&SandboxState) -> Option<String>,
) -> Result<String, Response> {
    let route = route_of(&sb.lock()).ok_or_else(not_found)?;
    match rate_limited(sb, &route) {
        Some(resp) => Err(resp),
        None => Ok(route),
    }
}

/// The `data` object of an authenticated request's JSON body.
fn authenticated_data(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    authenticate(headers)?;
    parse_data(body)
}

fn parse_data(body: &[u8]) -> Result<Value, Response> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "malformed_data_param",
            "Malformed data",
            "The request body is not valid JSON.",
        )
    })?;
    match value.get("data") {
        Some(d) if d.is_object() => Ok(d.clone()),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_data_param",
            "Missing data",
            "The request body must be an object wrapped in a `data` field.",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic fares

struct SliceSpec {
    origin: String,
    destination: String,
    date: NaiveDate,
}

const CARRIERS: [(&str, &str); 10] = [
    ("BA", "British Airways"),
    ("AA", "American Airlines"),
    ("VS", "Virgin Atlantic"),
    ("DL", "Delta Air Lines"),
    ("UA", "United Airlines"),
    ("LH", "Lufthansa"),
    ("AF", "Air France"),
    ("KL", "KLM"),
    ("IB", "Iberia"),
    ("ZZ", "Duffel Airways"),
];

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: a tiny, stable PRNG (same sequence on every platform and Rust version).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cabin_percent(cabin: &str) -> i64 {
    match cabin {
        "premium_economy" => 160,
        "business" => 320,
        "first" => 500,
        _ => 100,
    }
}

fn cabin_marketing_name(cabin: &str) -> &'static str {
    match cabin {
        "premium_economy" => "Premium Economy",
        "business" => "Business",
        "first" => "First",
        _ => "Economy",
    }
}

fn place(iata: &str) -> Value {
    json!({
        "type": "airport",
        "id": format!("arp_{}_sb", iata.to_ascii_lowercase()),
        "iata_code": iata,
        "iata_city_code": iata,
        "icao_code": null,
        "name": format!("{iata} Airport"),
        "city_name": iata,
        "iata_country_code": null,
        "latitude": null,
        "longitude": null,
        "time_zone": "UTC",
    })
}

fn iso_duration(minutes: i64) -> String {
    format!("PT{}H{}M", minutes / 60, minutes % 60)
}

/// Builds the offers for one request. Prices, carriers and times depend only on
/// `(seed, slices, passengers, cabin)`; ids are fresh.
fn generate_offers(
    seed: u64,
    slices: &[SliceSpec],
    passengers: &[(String, String)],
    cabin: &str,
    expires_at: DateTime<Utc>,
    created_at: &str,
) -> Vec<(i64, Value)> {
    let key = slices
        .iter()
        .map(|s| format!("{}-{}@{}", s.origin, s.destination, s.date))
        .collect::<Vec<_>>()
        .join("|");
    let mut rng = SplitMix(fnv1a(&format!("{seed}|{key}|{}|{cabin}", passengers.len())));
    let count = 3 + rng.below(3);
    let mut offers = Vec::new();
    for _ in 0..count {
        let (code, name) = CARRIERS[rng.below(CARRIERS.len() as u64) as usize];
        let carrier = json!({
            "id": format!("arl_{}_sb", code.to_ascii_lowercase()),
            "iata_code": code,
            "name": name,
            "logo_symbol_url": null,
            "logo_lockup_url": null,
            "conditions_of_carriage_url": null,
        });
        let factor_permille = 800 + rng.below(700) as i64;
        let mut total: i64 = 0;
        let mut slices_json = Vec::new();
        for s in slices {
            let route = format!("{}-{}", s.origin, s.destination);
            let route_hash = fnv1a(&route);
            let base_cents = (120 + (route_hash % 600) as i64) * 100;
            total += base_cents * cabin_percent(cabin) / 100 * factor_permille / 1000;
            let minutes = 45 + (route_hash % 660) as i64 + rng.below(60) as i64;
            let dep_time =
                NaiveTime::from_hms_opt(6 + rng.below(16) as u32, 5 * rng.below(12) as u32, 0)
                    .expect("valid time");
            let departing = NaiveDateTime::new(s.date, dep_time);
            let arriving = departing + chrono::Duration::minutes(minutes);
            let flight_number = (100 + rng.below(8900)).to_string();
            slices_json.push(json!({
                "id": new_id("sli_"),
                "origin": place(&s.origin),
                "destination": place(&s.destination),
                "origin_type": "airport",
                "destination_type": "airport",
                "duration": iso_duration(minutes),
                "fare_brand_name": cabin_marketing_name(cabin),
                "conditions": {"change_before_departure": null},
                "segments": [{
                    "id": new_id("seg_"),
                    "origin": place(&s.origin),
                    "destination": place(&s.destination),
                    "departing_at": departing.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "arriving_at": arriving.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "duration": iso_duration(minutes),
                    "marketing_carrier": carrier,
                    "operating_carrier": carrier,
                    "marketing_carrier_flight_number": flight_number,
                    "operating_carrier_flight_number": flight_number,
                    "aircraft": null,
                    "distance": null,
                    "stops": [],
                    "passengers": passengers.iter().map(|(id, _)| json!({
                        "passenger_id": id,
                        "cabin_class": cabin,
                        "cabin_class_marketing_name": cabin_marketing_name(cabin),
                        "fare_basis_code": null,
                        "baggages": [{"type": "checked", "quantity": 1}, {"type": "carry_on", "quantity": 1}],
                    })).collect::<Vec<_>>(),
                }],
            }));
        }
        let pax_percent: i64 = passengers
            .iter()
            .map(|(_, ty)| match ty.as_str() {
                "child" => 75,
                "infant_without_seat" => 10,
                _ => 100,
            })
            .sum();
        let total = (total * pax_percent / 100).max(1000);
        let offer = json!({
            "id": new_id("off_"),
            "live_mode": false,
            "created_at": created_at,
            "updated_at": created_at,
            "expires_at": expires_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "total_amount": money(total),
            "total_currency": CURRENCY,
            "base_amount": null,
            "base_currency": CURRENCY,
            "tax_amount": null,
            "tax_currency": CURRENCY,
            "total_emissions_kg": (total / 200).to_string(),
            "owner": carrier,
            "slices": slices_json,
            "passengers": passengers.iter().map(|(id, ty)| json!({
                "id": id,
                "type": ty,
                "age": null,
                "given_name": null,
                "family_name": null,
                "loyalty_programme_accounts": [],
            })).collect::<Vec<_>>(),
            "payment_requirements": {
                "requires_instant_payment": false,
                "price_guarantee_expires_at": null,
                "payment_required_by": null,
            },
            "passenger_identity_documents_required": false,
            "supported_passenger_identity_document_types": ["passport"],
            "conditions": {
                "refund_before_departure": {"allowed": true, "penalty_amount": "50.00", "penalty_currency": CURRENCY},
                "change_before_departure": {"allowed": true, "penalty_amount": "75.00", "penalty_currency": CURRENCY},
            },
            "partial": false,
            "private_fares": [],
            "available_services": null,
        });
        offers.push((total, offer));
    }
    offers
}

fn parse_slices(data: &Value) -> Result<Vec<SliceSpec>, Response> {
    let slices = data
        .get("slices")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| validation("validation_required", "Field 'slices' is required."))?;
    let iata = |v: Option<&Value>, field: &str| -> Result<String, Response> {
        match v.and_then(Value::as_str) {
            Some(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Ok(s.to_ascii_uppercase())
            }
            Some(_) => Err(validation(
                "invalid_iata_code",
                &format!("Field '{field}' must be a 3-letter IATA code."),
            )),
            None => Err(validation(
                "validation_required",
                &format!("Field '{field}' is required."),
            )),
        }
    };
    slices
        .iter()
        .map(|s| {
            let origin = iata(s.get("origin"), "origin")?;
            let destination = iata(s.get("destination"), "destination")?;
            let date = s
                .get("departure_date")
                .and_then(Value::as_str)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .ok_or_else(|| {
                    validation(
                        "validation_format",
                        "Field 'departure_date' must be a date (YYYY-MM-DD).",
                    )
                })?;
            Ok(SliceSpec {
                origin,
                destination,
                date,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Search

async fn create_offer_request(
    State(sb): State<Sandbox>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let data = match authenticated_data(&headers, &body) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let slices = match parse_slices(&data) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let cabin = data
        .get("cabin_class")
        .and_then(Value::as_str)
        .unwrap_or("economy")
        .to_string();
    if !matches!(
        cabin.as_str(),
        "economy" | "premium_economy" | "business" | "first"
    ) {
        return validation(
            "validation_format",
            "Field 'cabin_class' must be one of economy, premium_economy, business, first.",
        );
    }
    let passengers: Vec<(String, String)> = match data.get("passengers").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|p| {
                let ty = p
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("adult")
                    .to_string();
                (new_id("pas_"), ty)
            })
            .collect(),
        _ => return validation("validation_required", "Field 'passengers' is required."),
    };
    let route = route_key(&slices[0].origin, &slices[0].destination);
    if let Some(resp) = rate_limited(&sb, &route) {
        return resp;
    }
    let return_offers = !parse_form(query.as_deref().unwrap_or(""))
        .iter()
        .any(|(k, v)| k == "return_offers" && v == "false");

    let created_at = now_str();
    let expires_at = Utc::now() + chrono::Duration::minutes(OFFER_TTL_MINUTES);
    let generated = generate_offers(
        sb.config().seed,
        &slices,
        &passengers,
        &cabin,
        expires_at,
        &created_at,
    );
    let id = new_id("orq_");
    let request_json = json!({
        "id": id,
        "live_mode": false,
        "created_at": created_at,
        "cabin_class": cabin,
        "client_key": null,
        "slices": slices.iter().map(|s| json!({
            "origin": place(&s.origin),
            "destination": place(&s.destination),
            "origin_type": "airport",
            "destination_type": "airport",
            "departure_date": s.date.to_string(),
        })).collect::<Vec<_>>(),
        "passengers": passengers.iter().map(|(pid, ty)| json!({
            "id": pid, "type": ty, "age": null, "given_name": null, "family_name": null,
            "loyalty_programme_accounts": [],
        })).collect::<Vec<_>>(),
    });
    let mut offers_json = Vec::new();
    {
        let mut st = sb.lock();
        let mut offer_ids = Vec::new();
        for (total, json) in generated {
            let offer = Offer {
                id: json["id"].as_str().unwrap_or_default().to_string(),
                route: route.clone(),
                current_total_minor: total,
                expires_at,
                passenger_ids: passengers.iter().map(|(p, _)| p.clone()).collect(),
                raised: false,
                json,
            };
            offers_json.push(offer.to_json());
            offer_ids.push(offer.id.clone());
            st.offers.insert(offer.id.clone(), offer);
        }
        st.offer_requests.insert(
            id.clone(),
            OfferRequest {
                route: route.clone(),
                json: request_json.clone(),
                offer_ids,
            },
        );
        st.counters.offer_requests += 1;
    }
    tracing::debug!(offer_request.id = %id, route, offers = offers_json.len(), "sandbox offer request");
    let mut body = request_json;
    body["offers"] = if return_offers {
        Value::Array(offers_json)
    } else {
        json!([])
    };
    data_created(body)
}

/// The offer request with its offers as they stand now.
fn offer_request(st: &SandboxState, id: &str) -> Option<Value> {
    let req = st.offer_requests.get(id)?;
    let mut body = req.json.clone();
    body["offers"] = req
        .offer_ids
        .iter()
        .filter_map(|o| st.offers.get(o).map(Offer::to_json))
        .collect();
    Some(body)
}

async fn list_offers(
    State(sb): State<Sandbox>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(request_id) = param("offer_request_id") else {
        return validation(
            "validation_required",
            "Query parameter 'offer_request_id' is required.",
        );
    };
    if let Err(resp) = admit(&sb, |st| {
        st.offer_requests.get(&request_id).map(|r| r.route.clone())
    }) {
        return resp;
    }
    let mut offers: Vec<(i64, Value)> = {
        let st = sb.lock();
        let Some(req) = st.offer_requests.get(&request_id) else {
            return not_found();
        };
        req.offer_ids
            .iter()
            .filter_map(|o| st.offers.get(o))
            .map(|o| (o.current_total_minor, o.to_json()))
            .collect()
    };
    match param("sort").as_deref() {
        Some("total_amount") => offers.sort_by_key(|(t, _)| *t),
        Some("-total_amount") => offers.sort_by_key(|(t, _)| std::cmp::Reverse(*t)),
        _ => {}
    }
    list(offers.into_iter().map(|(_, j)| j).collect(), &params)
}

async fn get_offer(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let route = match admit(&sb, |st| st.offers.get(&id).map(|o| o.route.clone())) {
        Ok(route) => route,
        Err(resp) => return resp,
    };
    let mut st = sb.lock();
    let scenario = st.scenarios.get(&route);
    let Some(offer) = st.offers.get_mut(&id) else {
        return not_found();
    };
    match scenario {
        Scenario::OfferGone => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "offer_no_longer_available",
                "Offer no longer available",
                "The requested offer is no longer available. Please create a new offer request.",
            )
        }
        Scenario::PriceRises if !offer.raised => {
            offer.raised = true;
            // ~8 % dearer, rounded up to whole units.
            let raised = offer.current_total_minor * 108 / 100;
            offer.current_total_minor = (raised + 99) / 100 * 100;
            tracing::debug!(offer.id = %id, "sandbox offer price rose");
        }
        _ => {}
    }
    data_ok(offer.to_json())
}

// ---------------------------------------------------------------------------------------------
// Orders

/// Why an order could not be created, decided under the lock.
enum OrderDecision {
    Refuse(Response),
    Created { order: Value, scenario: Scenario },
}

async fn create_order(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let data = match authenticated_data(&headers, &body) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let order_type = data.get("type").and_then(Value::as_str).unwrap_or("");
    if order_type != "instant" {
        return validation(
            "validation_format",
            "Field 'type' must be 'instant' (the sandbox does not support hold orders).",
        );
    }
    let offer_id = match data.get("selected_offers").and_then(Value::as_array) {
        Some(ids) if ids.len() == 1 => match ids[0].as_str() {
            Some(id) => id.to_string(),
            None => return validation("validation_format", "selected_offers must hold offer ids."),
        },
        _ => {
            return validation(
                "validation_required",
                "Field 'selected_offers' must hold exactly one offer id.",
            )
        }
    };
    let route = match admit(&sb, |st| st.offers.get(&offer_id).map(|o| o.route.clone())) {
        Ok(route) => route,
        Err(resp) => return resp,
    };
    let metadata: BTreeMap<String, String> = match data.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                match v.as_str() {
                    Some(s) => {
                        out.insert(k.clone(), s.to_string());
                    }
                    None => {
                        return validation("validation_format", "Metadata values must be strings.")
                    }
                }
            }
            out
        }
        Some(_) => return validation("validation_format", "Field 'metadata' must be an object."),
    };

    let decision = {
        let mut st = sb.lock();
        st.counters.order_attempts += 1;
        decide_order(&mut st, &offer_id, &route, &data, metadata)
    };
    match decision {
        // Duffel sends `order.creation_failed` only for a creation it had accepted with a 202
        // and not yet confirmed; a synchronous refusal is answered, never also announced.
        OrderDecision::Refuse(resp) => resp,
        OrderDecision::Created { order, scenario } => {
            webhooks::emit_duffel(&sb, "order.created", order.clone());
            match scenario {
                Scenario::OrderCreatedThen500 => internal_error(),
                Scenario::Slow => {
                    tokio::time::sleep(Duration::from_millis(sb.config().slow_ms)).await;
                    data_created(order)
                }
                _ => data_created(order),
            }
        }
    }
}

fn decide_order(
    st: &mut SandboxState,
    offer_id: &str,
    route: &str,
    data: &Value,
    metadata: BTreeMap<String, String>,
) -> OrderDecision {
    let scenario = st.scenarios.get(route);
    if st.orders.iter().any(|o| o.offer_id == offer_id) {
        return OrderDecision::Refuse(unprocessable(
            "invalid_state_error",
            "order_creation_already_attempted",
            "Order creation already attempted",
            "An order has already been attempted for this offer. Look the order up instead \
                 of creating it again.",
        ));
    }
    let Some(offer) = st.offers.get(offer_id) else {
        return OrderDecision::Refuse(not_found());
    };
    let refuse = |error_type: &str, code: &str, title: &str, message: &str| {
        OrderDecision::Refuse(unprocessable(error_type, code, title, message))
    };
    match scenario {
        Scenario::OfferGone => {
            return refuse(
                "invalid_request_error",
                "offer_no_longer_available",
                "Offer no longer available",
                "The selected offer is no longer available.",
            )
        }
        Scenario::InsufficientBalance => {
            return refuse(
                "invalid_state_error",
                "insufficient_balance",
                "Insufficient balance",
                "Your Duffel balance is insufficient to pay for this order.",
            )
        }
        Scenario::PriceChanged => {
            return refuse(
                "airline_error",
                "price_changed",
                "Price changed",
                "The price of this offer has changed since it was retrieved. Please retrieve the \
                 offer again.",
            )
        }
        Scenario::ServerError => return OrderDecision::Refuse(internal_error()),
        _ => {}
    }
    if Utc::now() > offer.expires_at {
        return refuse(
            "invalid_request_error",
            "offer_expired",
            "Offer expired",
            "The selected offer has expired. Please create a new offer request.",
        );
    }

    // Payment: one balance payment equal to the offer's current total.
    let payments = data.get("payments").and_then(Value::as_array);
    let Some([payment]) = payments.map(Vec::as_slice) else {
        return OrderDecision::Refuse(validation(
            "validation_required",
            "An instant order needs exactly one payment.",
        ));
    };
    if payment.get("type").and_then(Value::as_str) != Some("balance") {
        return OrderDecision::Refuse(validation(
            "validation_format",
            "The sandbox only supports payments of type 'balance'.",
        ));
    }
    let amount = payment
        .get("amount")
        .and_then(Value::as_str)
        .and_then(parse_money);
    let currency = payment.get("currency").and_then(Value::as_str);
    if amount != Some(offer.current_total_minor) || currency != Some(CURRENCY) {
        return OrderDecision::Refuse(unprocessable(
            "validation_error",
            "payment_amount_does_not_match_order_amount",
            "Payment amount does not match order amount",
            &format!(
                "The payment must be {} {CURRENCY}, the total of the selected offer.",
                money(offer.current_total_minor)
            ),
        ));
    }

    // Passengers: exactly the offer's passenger ids, each with the required fields.
    let Some(passengers) = data.get("passengers").and_then(Value::as_array) else {
        return OrderDecision::Refuse(validation(
            "validation_required",
            "Field 'passengers' is required.",
        ));
    };
    let mut given: Vec<&str> = passengers
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_str))
        .collect();
    given.sort_unstable();
    let mut expected: Vec<&str> = offer.passenger_ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if given != expected {
        return OrderDecision::Refuse(validation(
            "invalid_passenger_id",
            "Passenger ids must be exactly the ids of the offer's passengers.",
        ));
    }
    for p in passengers {
        for field in [
            "given_name",
            "family_name",
            "born_on",
            "gender",
            "email",
            "phone_number",
        ] {
            if p.get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return OrderDecision::Refuse(validation(
                    "validation_required",
                    &format!("Field 'passengers[].{field}' is required."),
                ));
            }
        }
        if !matches!(p.get("gender").and_then(Value::as_str), Some("m" | "f")) {
            return OrderDecision::Refuse(validation(
                "validation_format",
                "Field 'passengers[].gender' must be m or f.",
            ));
        }
        let born_on = p.get("born_on").and_then(Value::as_str).unwrap_or_default();
        if NaiveDate::parse_from_str(born_on, "%Y-%m-%d").is_err() {
            return OrderDecision::Refuse(validation(
                "validation_format",
                "Field 'passengers[].born_on' must be a date (YYYY-MM-DD).",
            ));
        }
    }

    // Create the order. Only what an order shows is kept (no identity documents).
    let id = new_id("ord_");
    let booking_reference: String = new_id("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect::<String>()
        .to_ascii_uppercase();
    let now = now_str();
    let offer_json = offer.to_json();
    let total = offer.current_total_minor;
    let order_passengers: Vec<Value> = passengers
        .iter()
        .map(|p| {
            json!({
                "id": p["id"],
                "type": "adult",
                "title": p.get("title").cloned().unwrap_or(Value::Null),
                "given_name": p["given_name"],
                "family_name": p["family_name"],
                "gender": p["gender"],
                "born_on": p["born_on"],
                "email": p["email"],
                "phone_number": p["phone_number"],
                "infant_passenger_id": null,
                "loyalty_programme_accounts": [],
            })
        })
        .collect();
    let order = json!({
        "id": id,
        "live_mode": false,
        "type": "instant",
        "offer_id": offer_id,
        "booking_reference": booking_reference,
        "created_at": now,
        "synced_at": now,
        "total_amount": offer_json["total_amount"],
        "total_currency": CURRENCY,
        "base_amount": offer_json["base_amount"],
        "base_currency": CURRENCY,
        "tax_amount": offer_json["tax_amount"],
        "tax_currency": CURRENCY,
        "owner": offer_json["owner"],
        "slices": offer_json["slices"],
        "passengers": order_passengers,
        "services": [],
        "metadata": metadata,
        "documents": [{
            "type": "electronic_ticket",
            "unique_identifier": format!("125{:010}", fnv1a(&id) % 10_000_000_000),
            "passenger_ids": offer.passenger_ids,
        }],
        "payment_status": {
            "awaiting_payment": false,
            "paid_at": now,
            "payment_required_by": null,
            "price_guarantee_expires_at": null,
        },
        "conditions": offer_json["conditions"],
        "airline_initiated_changes": [],
        "available_actions": ["cancel", "change", "update"],
        "cancelled_at": null,
        "cancellation": null,
        "changes": [],
        "content": "managed",
        "users": [],
    });
    let booking = metadata.get("booking_id").cloned().unwrap_or_default();
    st.orders.push(Order {
        id: id.clone(),
        offer_id: offer_id.to_string(),
        booking_reference,
        metadata,
        total_minor: total,
        json: order.clone(),
    });
    st.counters.orders_created += 1;
    Counters::bump(&mut st.counters.orders_by_offer, offer_id);
    Counters::bump(&mut st.counters.orders_by_booking, &booking);
    tracing::info!(order.id = %id, offer.id = %offer_id, scenario = scenario.as_str(), "sandbox order created");
    OrderDecision::Created { order, scenario }
}

/// `GET /air/orders` with the sandbox's reconciliation filters: `offer_id`,
/// `booking_reference` and `metadata[KEY]=VALUE`; all given filters must match.
async fn list_orders(
    State(sb): State<Sandbox>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let st = sb.lock();
    let found: Vec<Value> = st
        .orders
        .iter()
        .filter(|o| {
            params.iter().all(|(k, v)| match k.as_str() {
                "offer_id" => &o.offer_id == v,
                "booking_reference" => o.booking_reference.eq_ignore_ascii_case(v),
                other => match other
                    .strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                {
                    Some(key) => o.metadata.get(key) == Some(v),
                    None => true, // limit, after, before, sort: ignored
                },
            })
        })
        .map(|o| o.json.clone())
        .collect();
    list(found, &params)
}

// ---------------------------------------------------------------------------------------------
// Cancellations

fn already_cancelled() -> Response {
    unprocessable(
        "invalid_state_error",
        "already_cancelled",
        "Already cancelled",
        "This order has already been cancelled.",
    )
}

async fn create_cancellation(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let data = match authenticated_data(&headers, &body) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let Some(order_id) = data.get("order_id").and_then(Value::as_str) else {
        return validation("validation_required", "Field 'order_id' is required.");
    };
    let mut st = sb.lock();
    let Some(order) = st.order(order_id) else {
        return not_found();
    };
    if !order.json["cancelled_at"].is_null() {
        return already_cancelled();
    }
    let id = new_id("ore_");
    let cancellation = json!({
        "id": id,
        "order_id": order_id,
        "live_mode": false,
        "created_at": now_str(),
        "expires_at": (Utc::now() + chrono::Duration::minutes(15)).to_rfc3339_opts(SecondsFormat::Micros, true),
        "confirmed_at": null,
        "refund_amount": money(order.total_minor),
        "refund_currency": CURRENCY,
        "refund_to": "balance",
        "airline_credits": [],
    });
    st.cancellations.insert(
        id.clone(),
        Cancellation {
            order_id: order_id.to_string(),
            json: cancellation.clone(),
        },
    );
    tracing::info!(order_cancellation.id = %id, order.id = %order_id, "sandbox order cancellation quoted");
    data_created(cancellation)
}

async fn confirm_cancellation(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&headers) {
        return resp;
    }
    let confirmed = {
        let mut st = sb.lock();
        let Some(c) = st.cancellations.get(&id) else {
            return not_found();
        };
        let order_id = c.order_id.clone();
        if !c.json["confirmed_at"].is_null() {
            return already_cancelled();
        }
        let now = now_str();
        match st.order_mut(&order_id) {
            Some(order) if order.json["cancelled_at"].is_null() => {
                order.json["cancelled_at"] = json!(now);
                order.json["available_actions"] = json!([]);
            }
            Some(_) => return already_cancelled(),
            None => return not_found(),
        }
        // Cancelling the order is the `cancel` answer to every change still open on it.
        aic::cancel_open_changes(&mut st, &order_id, &now);
        let c = st
            .cancellations
            .get_mut(&id)
            .expect("cancellation looked up above");
        c.json["confirmed_at"] = json!(now);
        let json = c.json.clone();
        st.counters.order_cancellations_confirmed += 1;
        tracing::info!(order_cancellation.id = %id, order.id = %order_id, "sandbox order cancelled");
        json
    };
    webhooks::emit_duffel(&sb, "order_cancellation.confirmed", confirmed.clone());
    data_ok(confirmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fares_depend_only_on_seed_and_criteria() {
        let slices = || {
            vec![SliceSpec {
                origin: "LHR".into(),
                destination: "JFK".into(),
                date: NaiveDate::from_ymd_opt(2030, 5, 1).unwrap(),
            }]
        };
        let pax = vec![("pas_1".to_string(), "adult".to_string())];
        let now = Utc::now();
        let prices = |seed| {
            generate_offers(seed, &slices(), &pax, "economy", now, "x")
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
        };
        assert_eq!(prices(7), prices(7));
        assert!((3..=5).contains(&prices(7).len()));
        assert_ne!(prices(7), prices(8));
    }
}
