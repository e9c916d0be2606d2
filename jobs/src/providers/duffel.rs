//! Duffel (flights) over reqwest: search, offer re-check, order, reconciliation, cancellation.
//!
//! Wire rules: `Authorization: Bearer <token>`, `Duffel-Version: v2`, JSON bodies wrapped in
//! `{"data": …}` both ways, errors `{"errors": [{type, code, title, message}], "meta":
//! {status, request_id}}`, decimal-string amounts (converted with [`money`]),
//! 429 with a `ratelimit-reset` HTTP date.
//!
//! Duffel has **no idempotency key**. A `POST /air/orders` that times out or gets a 5xx may
//! have created the order: [`DuffelError::order_may_exist`] says so, and the caller must look
//! the order up ([`FlightsApi::find_orders`]) before it ever POSTs again.

use std::{collections::BTreeMap, fmt, time::Duration};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use reqwest::{header::HeaderMap, Method, StatusCode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    error::transport_class, is_provider_id, money, normalize_base_url, ApiKey, FailureClass,
    ProviderConfigError,
};
use crate::{BoxFuture, Exhausted, JobError, RateLimits};

/// Duffel client settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DuffelConfig {
    /// API root (paths start `/air/…`). Default `https://api.duffel.com`.
    pub base_url: String,
    /// Access token (`duffel_test_…` / `duffel_live_…`); never printed.
    pub access_token: ApiKey,
    /// Whole-request budget. Order creation waits on airlines, so keep it generous; a call
    /// that runs out is [`FailureClass::Ambiguous`].
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
    /// TCP connect budget (a connect failure is [`FailureClass::Transient`]: nothing sent).
    #[serde(deserialize_with = "super::duration")]
    pub connect_timeout: Duration,
    /// Offers fetched per search (the first page, cheapest first).
    pub offers_limit: u32,
}

impl Default for DuffelConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.duffel.com".to_owned(),
            access_token: ApiKey::default(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            offers_limit: 50,
        }
    }
}

/// Cabin class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CabinClass {
    /// Economy.
    Economy,
    /// Premium economy.
    PremiumEconomy,
    /// Business.
    Business,
    /// First.
    First,
}

/// One leg of a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceSpec {
    /// IATA airport or city code.
    pub origin: String,
    /// IATA airport or city code.
    pub destination: String,
    /// Local departure date.
    pub departure_date: NaiveDate,
}

/// A traveler in a search: an adult, or a child by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassengerSpec {
    /// `{"type": "adult"}`.
    Adult,
    /// `{"age": n}`.
    Age(u8),
}

impl Serialize for PassengerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Adult => m.serialize_entry("type", "adult")?,
            Self::Age(age) => m.serialize_entry("age", age)?,
        }
        m.end()
    }
}

/// An offer request (search).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferSearch {
    /// Legs (one for one-way, two for a return trip).
    pub slices: Vec<SliceSpec>,
    /// Travelers.
    pub passengers: Vec<PassengerSpec>,
    /// Cabin.
    pub cabin_class: CabinClass,
}

/// One leg of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSlice {
    /// IATA code.
    pub origin: String,
    /// IATA code.
    pub destination: String,
    /// Local departure time of the first segment.
    pub departing_at: Option<NaiveDateTime>,
    /// Local arrival time of the last segment.
    pub arriving_at: Option<NaiveDateTime>,
    /// Flights in the leg (1 = direct).
    pub segments: usize,
}

/// A bookable offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `off_…`.
    pub id: String,
    /// Total price in minor units.
    pub total_amount_minor: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// When the offer stops being bookable.
    pub expires_at: Option<DateTime<Utc>>,
    /// Duffel's passenger ids for this offer (the order must use them).
    pub passenger_ids: Vec<String>,
    /// Marketing airline's IATA code.
    pub owner_iata: Option<String>,
    /// Legs.
    pub slices: Vec<OfferSlice>,
}

/// A travel document for an order passenger.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct IdentityDocument {
    /// Passport number (PII).
    pub unique_identifier: String,
    /// ISO 3166-1 alpha-2.
    pub issuing_country_code: String,
    /// Expiry date.
    pub expires_on: NaiveDate,
    /// `passport`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl fmt::Debug for IdentityDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityDocument").finish_non_exhaustive()
    }
}

/// A traveler on an order. Holds PII: its `Debug` shows the Duffel passenger id only.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct OrderPassenger {
    /// The offer's passenger id.
    pub id: String,
    /// `mr`, `ms`, `mrs`, `miss`, `dr`.
    pub title: String,
    /// `m` or `f`.
    pub gender: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Date of birth.
    pub born_on: NaiveDate,
    /// Email.
    pub email: String,
    /// E.164 phone number.
    pub phone_number: String,
    /// Passport, when the route needs one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identity_documents: Vec<IdentityDocument>,
}

impl fmt::Debug for OrderPassenger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderPassenger")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An instant order for one offer, paid from the Duffel balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOrder {
    /// The offer to book.
    pub offer_id: String,
    /// Travelers, ids from the offer.
    pub passengers: Vec<OrderPassenger>,
    /// Payment amount in minor units: must equal the offer's total.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Ids only (e.g. `booking_id`): used to find the order again.
    pub metadata: BTreeMap<String, String>,
}

/// A booked order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// `ord_…`.
    pub id: String,
    /// The airline's booking reference (PNR), once there is one.
    pub booking_reference: Option<String>,
    /// Total in minor units.
    pub total_amount_minor: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// The offer booked, if the API says (the sandbox does; Duffel itself may not).
    pub offer_id: Option<String>,
    /// Metadata we set at creation.
    pub metadata: BTreeMap<String, String>,
    /// Set once the order is cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// How to find orders for reconciliation after an ambiguous create. At least one field is
/// required; an order is returned only if it positively matches a given field and contradicts
/// none (the server's filtering is not trusted, so a server that ignores a filter is safe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderLookup {
    /// `metadata.booking_id` we set at creation.
    pub booking_id: Option<String>,
    /// The offer that was being booked.
    pub offer_id: Option<String>,
}

/// An order cancellation (a quote until confirmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancellation {
    /// `ore_…`.
    pub id: String,
    /// The order.
    pub order_id: String,
    /// What Duffel refunds to the balance, minor units.
    pub refund_amount_minor: Option<i64>,
    /// Currency of the refund.
    pub refund_currency: Option<String>,
    /// Set once confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// An airline-initiated change of an order (Duffel's `aic_…` object): the slices as they were
/// (`removed`) and as the airline now flies them (`added`), what can be done about it, and what
/// was done. Times are local to each airport, as Duffel gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AirlineChange {
    /// `aic_…`.
    pub id: String,
    /// The order it changes (`ord_…`).
    pub order_id: String,
    /// The legs before the change.
    pub removed: Vec<OfferSlice>,
    /// The legs after the change (they replace `removed`).
    pub added: Vec<OfferSlice>,
    /// What can be done through the API: `accept`, `cancel`, `change`, `update`.
    pub available_actions: Vec<String>,
    /// `accepted`, `cancelled` or `changed` once someone acted; `None` while open.
    pub action_taken: Option<String>,
    /// When the action was taken.
    pub action_taken_at: Option<DateTime<Utc>>,
    /// When Duffel detected the change.
    pub created_at: Option<DateTime<Utc>>,
}

/// Duffel as the jobs see it. Object safe: jobs hold an `Arc<dyn FlightsApi>`.
pub trait FlightsApi: Send + Sync {
    /// `POST /air/offer_requests?return_offers=false`; returns the offer request id.
    fn create_offer_request<'a>(
        &'a self,
        search: &'a OfferSearch,
    ) -> BoxFuture<'a, Result<String, DuffelError>>;

    /// `GET /air/offers?offer_request_id=…&sort=total_amount`: the first page, cheapest first.
    fn list_offers<'a>(
        &'a self,
        offer_request_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Offer>, DuffelError>>;

    /// `GET /air/offers/{id}`: the offer as it stands now (price may have moved).
    fn get_offer<'a>(&'a self, offer_id: &'a str) -> BoxFuture<'a, Result<Offer, DuffelError>>;

    /// `POST /air/orders` (instant, balance payment). **Never retry blindly**: on an error
    /// with [`DuffelError::order_may_exist`], call [`Self::find_orders`] first.
    fn create_order<'a>(
        &'a self,
        order: &'a CreateOrder,
    ) -> BoxFuture<'a, Result<Order, DuffelError>>;

    /// Orders matching `lookup` (see [`OrderLookup`] for the matching rule).
    fn find_orders<'a>(
        &'a self,
        lookup: &'a OrderLookup,
    ) -> BoxFuture<'a, Result<Vec<Order>, DuffelError>>;

    /// `GET /air/orders/{id}`.
    fn get_order<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<Order, DuffelError>>;

    /// `POST /air/order_cancellations`: a pending cancellation (refund quote).
    fn create_order_cancellation<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<OrderCancellation, DuffelError>>;

    /// `POST /air/order_cancellations/{id}/actions/confirm`. A second confirm answers
    /// `already_cancelled` ([`FailureClass::Rejected`]), which a caller may treat as done.
    fn confirm_order_cancellation<'a>(
        &'a self,
        cancellation_id: &'a str,
    ) -> BoxFuture<'a, Result<OrderCancellation, DuffelError>>;

    /// `GET /air/airline_initiated_changes?order_id=…`: every airline-initiated change of the
    /// order (Duffel documents no single-change read: list and pick by id).
    fn list_airline_changes<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AirlineChange>, DuffelError>>;

    /// `POST /air/airline_initiated_changes/{id}/actions/accept` (no body). Duffel has no
    /// idempotency key: after an ambiguous answer, list the order's changes before accepting
    /// again (a second accept of an accepted change is refused).
    fn accept_airline_change<'a>(
        &'a self,
        change_id: &'a str,
    ) -> BoxFuture<'a, Result<AirlineChange, DuffelError>>;

    /// This client, reporting budgets a successful answer says are used up to `limits` (one
    /// attempt's; see [`RateLimits`]). A handler gets it bound through
    /// [`HasDeps::flights`](crate::deps::HasDeps::flights).
    fn reporting_to(&self, limits: RateLimits) -> std::sync::Arc<dyn FlightsApi>;
}

/// Duffel codes that are definite business refusals, whatever the status they come with.
///
/// `order_not_created` is a **502** that Duffel guarantees had "no negative side effects … for
/// example an order being created or payment taken"
/// (<https://changelog.duffel.com/announcements/we-ve-added-a-new-error-code-for-when-an-order-is-not-created>),
/// so it is a refusal, not an ambiguous 5xx. The rest are Duffel's order-creation and
/// cancellation codes (`tests/contracts/duffel/README.md` lists the sources).
pub const REJECTION_CODES: &[&str] = &[
    "offer_no_longer_available",
    "offer_expired",
    "price_changed",
    "insufficient_balance",
    "payment_amount_does_not_match_order_amount",
    "payment_currency_does_not_match_order_currency",
    "order_creation_already_attempted",
    "order_not_created",
    "offer_request_already_booked",
    "duplicate_booking",
    "already_cancelled",
    "not_found",
];

/// Refusals of `POST /air/orders` that say an order for this booking may already exist (an
/// earlier attempt's): the caller looks it up before anything else.
pub const MAY_EXIST_CODES: &[&str] = &[
    "order_creation_already_attempted",
    "offer_request_already_booked",
    "duplicate_booking",
];

/// Labels a Duffel error answer. Pure, so the table is tested directly.
///
/// | status / code | class |
/// |---|---|
/// | 429 | RateLimited (reset from `ratelimit-reset`) |
/// | a code in [`REJECTION_CODES`] (incl. the 502 `order_not_created`), or 404 | Rejected |
/// | 408 | Transient |
/// | other 5xx | Ambiguous (Duffel: a 500/502 "should not be retried"; the order may exist) |
/// | other 4xx (401, 403, 400/422 validation) | Invalid |
///
/// A **202** on `POST /air/orders` ("processing hasn't been completed. You should not retry")
/// never reaches this table: the client reports it as [`FailureClass::Ambiguous`] with
/// detail `accepted, not yet confirmed`, and the outcome arrives as `order.created` or
/// `order.creation_failed`.
pub fn classify_duffel(status: u16, code: Option<&str>) -> FailureClass {
    if status == 429 {
        FailureClass::RateLimited
    } else if code.is_some_and(|c| REJECTION_CODES.contains(&c)) || status == 404 {
        FailureClass::Rejected
    } else if status == 408 {
        FailureClass::Transient
    } else if status >= 500 {
        FailureClass::Ambiguous
    } else {
        FailureClass::Invalid
    }
}

/// A failed Duffel call. The `Display` text carries the operation, status, type, code and
/// Duffel's request id only (Duffel's `title`/`message` are dropped: they can name passengers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DuffelError {
    /// What it means.
    pub class: FailureClass,
    /// The call (`create_order`, …).
    pub op: &'static str,
    /// HTTP status, when Duffel answered.
    pub status: Option<u16>,
    /// First error's `type`.
    pub error_type: Option<Box<str>>,
    /// First error's `code`.
    pub code: Option<Box<str>>,
    /// Duffel's request id, for support.
    pub request_id: Option<Box<str>>,
    /// From `ratelimit-reset` on a 429.
    pub reset_at: Option<DateTime<Utc>>,
    /// What went wrong when there was no Duffel error body.
    pub detail: Option<&'static str>,
}

impl DuffelError {
    fn local(op: &'static str, class: FailureClass, detail: &'static str) -> Self {
        Self {
            class,
            op,
            status: None,
            error_type: None,
            code: None,
            request_id: None,
            reset_at: None,
            detail: Some(detail),
        }
    }

    /// Whether Duffel answered with this error code.
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// For `create_order`: the order may exist, so reconcile (find it) before any new POST.
    /// True for ambiguous failures (timeouts, 5xx, a 202) and for [`MAY_EXIST_CODES`].
    pub fn order_may_exist(&self) -> bool {
        self.class == FailureClass::Ambiguous
            || self
                .code
                .as_deref()
                .is_some_and(|c| MAY_EXIST_CODES.contains(&c))
    }

    /// How long to wait before calling again (rate limits), measured from `now`.
    pub fn retry_after(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.reset_at
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
    }

    fn describe(&self) -> String {
        let reset_at = self.reset_at.map(|at| at.to_rfc3339());
        super::error::describe(
            &format!("duffel {} {}", self.op, self.class),
            self.status,
            self.error_type.as_deref(),
            &[
                ("code", self.code.as_deref()),
                ("request_id", self.request_id.as_deref()),
                ("reset_at", reset_at.as_deref()),
            ],
            self.detail,
        )
    }

    /// The rate budget the failed call spends (see [`budget_of`]).
    pub fn budget(&self) -> &'static str {
        budget_of(self.op)
    }

    /// The default job outcome at `now` (see [`FailureClass::job_error_on`]): a 429 empties
    /// the call's budget fleet-wide until its reset, and the job waits for it.
    pub fn to_job_error(&self, now: DateTime<Utc>) -> JobError {
        self.class
            .job_error_on(self.budget(), self.retry_after(now), self.to_string())
    }
}

/// Default job outcome, with the reset measured from the wall clock. Ambiguous is
/// `Retryable`: for an order, the retried attempt must reconcile before it POSTs (the saga
/// records "order attempted" before the call, so a re-run knows).
impl From<DuffelError> for JobError {
    fn from(e: DuffelError) -> Self {
        e.to_job_error(Utc::now())
    }
}

/// The rate budget a call spends: the order endpoints' (orders, cancellations) or the search
/// endpoints' (offer requests, offers).
pub fn budget_of(op: &str) -> &'static str {
    if op.contains("order") || op.contains("cancel") {
        crate::job::budgets::DUFFEL_ORDER
    } else {
        crate::job::budgets::DUFFEL_SEARCH
    }
}

/// On a successful answer: `ratelimit-remaining: 0` with a `ratelimit-reset` means the next
/// call of this budget would be refused until the reset, so the budget is reported exhausted
/// to the attempt the client is bound to (the engine empties it fleet-wide,
/// [`RateLimits`]); a client bound to no attempt has no one to tell.
fn report_if_exhausted(
    limits: Option<&RateLimits>,
    op: &'static str,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) {
    let Some(limits) = limits else {
        return;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("ratelimit-remaining").map(str::trim) != Some("0") {
        return;
    }
    let Some(reset) = header("ratelimit-reset").and_then(|v| parse_ratelimit_reset(v, now)) else {
        return;
    };
    limits.report(Exhausted {
        budget: budget_of(op).to_owned(),
        after: super::error::clamp_snooze(Some((reset - now).to_std().unwrap_or_default())),
        reason: format!("duffel {op}: ratelimit-remaining 0"),
    });
}

/// Parses a `ratelimit-reset` value: an HTTP date (Duffel), or delta seconds (the IETF
/// draft's form) counted from `now`. Anything else is `None`.
pub fn parse_ratelimit_reset(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(at) = httpdate::parse_http_date(value) {
        return Some(DateTime::<Utc>::from(at));
    }
    let secs: u32 = value.parse().ok()?;
    Some(now + chrono::Duration::seconds(i64::from(secs)))
}

/// The real client.
#[derive(Clone)]
pub struct DuffelClient {
    http: reqwest::Client,
    base: String,
    token: ApiKey,
    offers_limit: u32,
    /// Where successful answers that exhaust a budget are reported: the attempt this client
    /// was bound to ([`FlightsApi::reporting_to`]), none for the process-wide client.
    rate_limits: Option<RateLimits>,
}

impl fmt::Debug for DuffelClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DuffelClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
    #[serde(default)]
    meta: Option<ListMeta>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<WireError>,
    #[serde(default)]
    meta: Option<ErrorMeta>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    error_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct ErrorMeta {
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct WireId {
    id: String,
}

#[derive(Deserialize)]
struct WirePlace {
    iata_code: String,
}

#[derive(Deserialize)]
struct WireSegment {
    #[serde(default)]
    departing_at: Option<String>,
    #[serde(default)]
    arriving_at: Option<String>,
}

#[derive(Deserialize)]
struct WireSlice {
    origin: WirePlace,
    destination: WirePlace,
    #[serde(default)]
    segments: Vec<WireSegment>,
}

#[derive(Deserialize)]
struct WireOwner {
    #[serde(default)]
    iata_code: Option<String>,
}

#[derive(Deserialize)]
struct WireOffer {
    id: String,
    total_amount: String,
    total_currency: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    passengers: Vec<WireId>,
    #[serde(default)]
    owner: Option<WireOwner>,
    #[serde(default)]
    slices: Vec<WireSlice>,
}

#[derive(Deserialize)]
struct WireOrder {
    id: String,
    #[serde(default)]
    booking_reference: Option<String>,
    total_amount: String,
    total_currency: String,
    #[serde(default)]
    offer_id: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    cancelled_at: Option<String>,
}

#[derive(Deserialize)]
struct WireAirlineChange {
    id: String,
    order_id: String,
    #[serde(default)]
    removed: Vec<WireSlice>,
    #[serde(default)]
    added: Vec<WireSlice>,
    #[serde(default)]
    available_actions: Vec<String>,
    #[serde(default)]
    action_taken: Option<String>,
    #[serde(default)]
    action_taken_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct WireCancellation {
    id: String,
    order_id: String,
    #[serde(default)]
    refund_amount: Option<String>,
    #[serde(default)]
    refund_currency: Option<String>,
    #[serde(default)]
    confirmed_at: Option<String>,
}

/// An RFC 3339 instant; a value that does not parse reads as absent (timestamps here are
/// informative, never money or identity, so one odd field must not fail a whole listing).
fn instant(value: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A local date-time as Duffel writes segment times (`2030-06-13T16:38:02`); an offset, if
/// present, is dropped (the time stays local to the airport).
fn local_time(value: Option<&str>) -> Option<NaiveDateTime> {
    let value = value?;
    NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(value)
                .ok()
                .map(|t| t.naive_local())
        })
}

fn unreadable_amount(op: &'static str) -> DuffelError {
    DuffelError::local(op, FailureClass::Ambiguous, "unreadable amount in response")
}

fn slice_from_wire(s: WireSlice) -> OfferSlice {
    OfferSlice {
        origin: s.origin.iata_code,
        destination: s.destination.iata_code,
        departing_at: s
            .segments
            .first()
            .and_then(|g| local_time(g.departing_at.as_deref())),
        arriving_at: s
            .segments
            .last()
            .and_then(|g| local_time(g.arriving_at.as_deref())),
        segments: s.segments.len(),
    }
}

/// A change as the jobs see it; ids outside Duffel's shapes are refused (they reach the schema
/// and URLs).
fn airline_change_from_wire(
    op: &'static str,
    w: WireAirlineChange,
) -> Result<AirlineChange, DuffelError> {
    if !is_provider_id(&w.id, &["aic_"]) || !is_provider_id(&w.order_id, &["ord_"]) {
        return Err(DuffelError::local(
            op,
            FailureClass::Ambiguous,
            "unreadable airline-initiated change",
        ));
    }
    Ok(AirlineChange {
        id: w.id,
        order_id: w.order_id,
        removed: w.removed.into_iter().map(slice_from_wire).collect(),
        added: w.added.into_iter().map(slice_from_wire).collect(),
        available_actions: w.available_actions,
        action_taken: w.action_taken,
        action_taken_at: instant(w.action_taken_at.as_deref()),
        created_at: instant(w.created_at.as_deref()),
    })
}

fn offer_from_wire(op: &'static str, w: WireOffer) -> Result<Offer, DuffelError> {
    let currency =
        money::normalize_currency(&w.total_currency).map_err(|_| unreadable_amount(op))?;
    Ok(Offer {
        total_amount_minor: money::decimal_to_minor(&w.total_amount, &currency)
            .map_err(|_| unreadable_amount(op))?,
        currency,
        id: w.id,
        expires_at: instant(w.expires_at.as_deref()),
        passenger_ids: w.passengers.into_iter().map(|p| p.id).collect(),
        owner_iata: w.owner.and_then(|o| o.iata_code),
        slices: w.slices.into_iter().map(slice_from_wire).collect(),
    })
}

fn order_from_wire(op: &'static str, w: WireOrder) -> Result<Order, DuffelError> {
    let currency =
        money::normalize_currency(&w.total_currency).map_err(|_| unreadable_amount(op))?;
    Ok(Order {
        total_amount_minor: money::decimal_to_minor(&w.total_amount, &currency)
            .map_err(|_| unreadable_amount(op))?,
        currency,
        id: w.id,
        booking_reference: w.booking_reference,
        offer_id: w.offer_id,
        metadata: w
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect(),
        cancelled_at: instant(w.cancelled_at.as_deref()),
    })
}

fn cancellation_from_wire(
    op: &'static str,
    w: WireCancellation,
) -> Result<OrderCancellation, DuffelError> {
    let refund_currency = w
        .refund_currency
        .as_deref()
        .map(money::normalize_currency)
        .transpose()
        .map_err(|_| unreadable_amount(op))?;
    let refund_amount_minor = match (&w.refund_amount, &refund_currency) {
        (Some(a), Some(c)) => {
            Some(money::decimal_to_minor(a, c).map_err(|_| unreadable_amount(op))?)
        }
        _ => None,
    };
    Ok(OrderCancellation {
        id: w.id,
        order_id: w.order_id,
        refund_amount_minor,
        refund_currency,
        confirmed_at: instant(w.confirmed_at.as_deref()),
    })
}

/// Whether an order matches a lookup (see [`OrderLookup`]).
fn order_matches(order: &Order, lookup: &OrderLookup) -> bool {
    let by_booking = lookup
        .booking_id
        .as_ref()
        .map(|b| order.metadata.get("booking_id") == Some(b));
    let by_offer = match (&lookup.offer_id, &order.offer_id) {
        (Some(want), Some(have)) => Some(want == have),
        _ => None,
    };
    let checks = [by_booking, by_offer];
    checks.contains(&Some(true)) && !checks.contains(&Some(false))
}

/// Most pages of orders one lookup reads.
const LOOKUP_MAX_PAGES: usize = 5;

impl DuffelClient {
    /// Builds a client from config; refuses an empty token or a malformed base URL.
    pub fn new(config: &DuffelConfig) -> Result<Self, ProviderConfigError> {
        if config.access_token.is_empty() {
            return Err(ProviderConfigError("duffel.access_token is empty".into()));
        }
        let base = normalize_base_url("duffel.base_url", &config.base_url)?;
        let http = super::http_client(config.timeout, config.connect_timeout)?;
        Ok(Self {
            http,
            base,
            token: config.access_token.clone(),
            offers_limit: config.offers_limit.clamp(1, 200),
            rate_limits: None,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<Envelope<T>, DuffelError> {
        let started = std::time::Instant::now();
        let r = self.call_once(op, method, path, query, body).await;
        super::observe(
            "duffel",
            op,
            started,
            r.as_ref().map(|_| ()).map_err(|e| e.class),
        );
        r
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<Envelope<T>, DuffelError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token.expose())
            .header("Duffel-Version", "v2")
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(&serde_json::json!({ "data": body }));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let (class, detail) = transport_class(&e);
                tracing::debug!(provider = "duffel", op, %class, detail, "duffel call failed");
                return Err(DuffelError::local(op, class, detail));
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| {
            let (class, detail) = transport_class(&e);
            DuffelError::local(op, class, detail)
        })?;
        tracing::debug!(
            provider = "duffel",
            op,
            status = status.as_u16(),
            "duffel answered"
        );
        if status == StatusCode::ACCEPTED {
            // Accepted, not done: whatever the body holds, it is not a confirmed result.
            tracing::warn!(
                provider = "duffel",
                op,
                "duffel accepted the request without completing it"
            );
            return Err(DuffelError {
                status: Some(status.as_u16()),
                ..DuffelError::local(op, FailureClass::Ambiguous, "accepted, not yet confirmed")
            });
        }
        if status.is_success() {
            report_if_exhausted(self.rate_limits.as_ref(), op, &headers, Utc::now());
            return serde_json::from_slice(&bytes).map_err(|_| {
                DuffelError::local(op, FailureClass::Ambiguous, "unreadable response")
            });
        }
        let err = error_from_answer(op, status, &headers, &bytes, Utc::now());
        // Debug: the attempt logs the failure once with the job's context (one failed call,
        // one WARN line); the request id is in its text.
        tracing::debug!(provider = "duffel", op, class = %err.class, status = err.status,
            code = err.code.as_deref(), request_id = err.request_id.as_deref(), "duffel call failed");
        Err(err)
    }
}

/// Builds the error for a non-2xx answer (pure: headers and body in, error out).
fn error_from_answer(
    op: &'static str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> DuffelError {
    let parsed: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let first = parsed.errors.into_iter().next();
    let code: Option<Box<str>> = first
        .as_ref()
        .and_then(|e| e.code.as_deref().map(Box::from));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reset_at = if status == StatusCode::TOO_MANY_REQUESTS {
        header("ratelimit-reset")
            .or_else(|| header("retry-after"))
            .and_then(|v| parse_ratelimit_reset(v, now))
    } else {
        None
    };
    DuffelError {
        class: classify_duffel(status.as_u16(), code.as_deref()),
        op,
        status: Some(status.as_u16()),
        error_type: first.and_then(|e| e.error_type).map(Box::from),
        code,
        request_id: parsed
            .meta
            .and_then(|m| m.request_id)
            .map(Box::from)
            .or_else(|| header("x-request-id").map(Box::from)),
        reset_at,
        detail: None,
    }
}

impl FlightsApi for DuffelClient {
    fn reporting_to(&self, limits: RateLimits) -> std::sync::Arc<dyn FlightsApi> {
        std::sync::Arc::new(Self {
            rate_limits: Some(limits),
            ..self.clone()
        })
    }

    fn create_offer_request<'a>(
        &'a self,
        search: &'a OfferSearch,
    ) -> BoxFuture<'a, Result<String, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "create_offer_request";
            let body = serde_json::to_value(search)
                .map_err(|_| DuffelError::local(OP, FailureClass::Invalid, "unencodable search"))?;
            let env: Envelope<WireId> = self
                .call(
                    OP,
                    Method::POST,
                    "/air/offer_requests",
                    &[("return_offers", "false")],
                    Some(body),
                )
                .await?;
            Ok(env.data.id)
        })
    }

    fn list_offers<'a>(
        &'a self,
        offer_request_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Offer>, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "list_offers";
            let limit = self.offers_limit.to_string();
            let env: Envelope<Vec<WireOffer>> = self
                .call(
                    OP,
                    Method::GET,
                    "/air/offers",
                    &[
                        ("offer_request_id", offer_request_id),
                        ("sort", "total_amount"),
                        ("limit", &limit),
                    ],
                    None,
                )
                .await?;
            env.data
                .into_iter()
                .map(|o| offer_from_wire(OP, o))
                .collect()
        })
    }

    fn get_offer<'a>(&'a self, offer_id: &'a str) -> BoxFuture<'a, Result<Offer, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "get_offer";
            let path = format!("/air/offers/{}", path_segment(OP, offer_id)?);
            let env: Envelope<WireOffer> = self.call(OP, Method::GET, &path, &[], None).await?;
            offer_from_wire(OP, env.data)
        })
    }

    fn create_order<'a>(
        &'a self,
        order: &'a CreateOrder,
    ) -> BoxFuture<'a, Result<Order, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "create_order";
            let currency = money::normalize_currency(&order.currency)
                .map_err(|_| DuffelError::local(OP, FailureClass::Invalid, "bad currency"))?;
            let amount = money::minor_to_decimal(order.amount_minor, &currency)
                .map_err(|_| DuffelError::local(OP, FailureClass::Invalid, "bad amount"))?;
            if order.amount_minor <= 0 {
                return Err(DuffelError::local(OP, FailureClass::Invalid, "bad amount"));
            }
            let body = serde_json::json!({
                "type": "instant",
                "selected_offers": [order.offer_id],
                "passengers": order.passengers,
                "payments": [{"type": "balance", "amount": amount, "currency": currency}],
                "metadata": order.metadata,
            });
            let env: Envelope<WireOrder> = self
                .call(OP, Method::POST, "/air/orders", &[], Some(body))
                .await?;
            order_from_wire(OP, env.data)
        })
    }

    fn find_orders<'a>(
        &'a self,
        lookup: &'a OrderLookup,
    ) -> BoxFuture<'a, Result<Vec<Order>, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "find_orders";
            if lookup.booking_id.is_none() && lookup.offer_id.is_none() {
                return Err(DuffelError::local(
                    OP,
                    FailureClass::Invalid,
                    "lookup needs a booking id or an offer id",
                ));
            }
            let mut found = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..LOOKUP_MAX_PAGES {
                let mut query: Vec<(&str, &str)> = vec![("limit", "200")];
                if let Some(offer) = &lookup.offer_id {
                    query.push(("offer_id", offer));
                }
                if let Some(booking) = &lookup.booking_id {
                    query.push(("metadata[booking_id]", booking));
                }
                if let Some(cursor) = &after {
                    query.push(("after", cursor));
                }
                let env: Envelope<Vec<WireOrder>> = self
                    .call(OP, Method::GET, "/air/orders", &query, None)
                    .await?;
                for w in env.data {
                    let order = order_from_wire(OP, w)?;
                    if order_matches(&order, lookup) {
                        found.push(order);
                    }
                }
                after = env.meta.and_then(|m| m.after);
                if after.is_none() {
                    break;
                }
            }
            Ok(found)
        })
    }

    fn get_order<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<Order, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "get_order";
            let path = format!("/air/orders/{}", path_segment(OP, order_id)?);
            let env: Envelope<WireOrder> = self.call(OP, Method::GET, &path, &[], None).await?;
            order_from_wire(OP, env.data)
        })
    }

    fn create_order_cancellation<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<OrderCancellation, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "create_order_cancellation";
            let env: Envelope<WireCancellation> = self
                .call(
                    OP,
                    Method::POST,
                    "/air/order_cancellations",
                    &[],
                    Some(serde_json::json!({ "order_id": order_id })),
                )
                .await?;
            cancellation_from_wire(OP, env.data)
        })
    }

    fn list_airline_changes<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AirlineChange>, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "list_airline_changes";
            let order_id = path_segment(OP, order_id)?;
            let env: Envelope<Vec<WireAirlineChange>> = self
                .call(
                    OP,
                    Method::GET,
                    "/air/airline_initiated_changes",
                    &[("order_id", order_id)],
                    None,
                )
                .await?;
            env.data
                .into_iter()
                .map(|w| airline_change_from_wire(OP, w))
                .filter(|c| !matches!(c, Ok(c) if c.order_id != order_id))
                .collect()
        })
    }

    fn accept_airline_change<'a>(
        &'a self,
        change_id: &'a str,
    ) -> BoxFuture<'a, Result<AirlineChange, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "accept_airline_change";
            let path = format!(
                "/air/airline_initiated_changes/{}/actions/accept",
                path_segment(OP, change_id)?
            );
            let env: Envelope<WireAirlineChange> =
                self.call(OP, Method::POST, &path, &[], None).await?;
            airline_change_from_wire(OP, env.data)
        })
    }

    fn confirm_order_cancellation<'a>(
        &'a self,
        cancellation_id: &'a str,
    ) -> BoxFuture<'a, Result<OrderCancellation, DuffelError>> {
        Box::pin(async move {
            const OP: &str = "confirm_order_cancellation";
            let path = format!(
                "/air/order_cancellations/{}/actions/confirm",
                path_segment(OP, cancellation_id)?
            );
            let env: Envelope<WireCancellation> =
                self.call(OP, Method::POST, &path, &[], None).await?;
            cancellation_from_wire(OP, env.data)
        })
    }
}

/// An id placed in a URL path: Duffel ids are `[A-Za-z0-9_]`; anything else is refused rather
/// than escaped (it can only be a bug).
fn path_segment<'a>(op: &'static str, id: &'a str) -> Result<&'a str, DuffelError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(DuffelError::local(
            op,
            FailureClass::Invalid,
            "malformed id",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::providers::error::clamp_snooze;
    use crate::providers::testing::{Recorder, Reply};

    fn client(base: &str) -> DuffelClient {
        DuffelClient::new(&DuffelConfig {
            base_url: base.to_owned(),
            access_token: ApiKey::new("duffel_test_abc"),
            timeout: Duration::from_secs(5),
            ..DuffelConfig::default()
        })
        .unwrap()
    }

    fn offer_json(id: &str, amount: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "total_amount": amount, "total_currency": "GBP",
            "expires_at": "2030-01-17T10:42:14.545Z",
            "passengers": [{"id": "pas_1", "type": "adult"}],
            "owner": {"iata_code": "BA", "name": "British Airways"},
            "slices": [{
                "origin": {"iata_code": "LHR"}, "destination": {"iata_code": "JFK"},
                "segments": [
                    {"departing_at": "2030-06-13T16:38:02", "arriving_at": "2030-06-13T19:00:00"},
                    {"departing_at": "2030-06-13T20:00:00", "arriving_at": "2030-06-13T23:10:00"}
                ]
            }]
        })
    }

    fn order_json(id: &str, booking_id: &str, offer_id: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "booking_reference": "RZPNX8", "total_amount": "123.45",
            "total_currency": "GBP", "offer_id": offer_id,
            "metadata": {"booking_id": booking_id}, "cancelled_at": null
        })
    }

    fn passenger() -> OrderPassenger {
        OrderPassenger {
            id: "pas_1".into(),
            title: "ms".into(),
            gender: "f".into(),
            given_name: "Amelia".into(),
            family_name: "Earhart".into(),
            born_on: NaiveDate::from_ymd_opt(1987, 7, 24).unwrap(),
            email: "amelia@example.com".into(),
            phone_number: "+442080160508".into(),
            identity_documents: vec![IdentityDocument {
                unique_identifier: "P1234567".into(),
                issuing_country_code: "GB".into(),
                expires_on: NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
                kind: "passport".into(),
            }],
        }
    }

    /// An instant order of `off_1` for one passenger, without metadata.
    fn order_of(amount_minor: i64) -> CreateOrder {
        CreateOrder {
            offer_id: "off_1".into(),
            passengers: vec![passenger()],
            amount_minor,
            currency: "GBP".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn assert_duffel_headers(r: &crate::providers::testing::Recorded) {
        assert_eq!(r.header("authorization"), Some("Bearer duffel_test_abc"));
        assert_eq!(r.header("duffel-version"), Some("v2"));
    }

    /// A one-way LHR→JFK search on 2030-06-13.
    fn lhr_jfk(passengers: Vec<PassengerSpec>, cabin_class: CabinClass) -> OfferSearch {
        OfferSearch {
            slices: vec![SliceSpec {
                origin: "LHR".into(),
                destination: "JFK".into(),
                departure_date: NaiveDate::from_ymd_opt(2030, 6, 13).unwrap(),
            }],
            passengers,
            cabin_class,
        }
    }

    #[tokio::test]
    async fn a_success_with_no_requests_remaining_reports_the_budget_exhausted_until_the_reset() {
        let reset = Utc::now() + chrono::Duration::seconds(20);
        let rec = Recorder::start(vec![
            Reply::json(201, serde_json::json!({"data": {"id": "orq_1"}}))
                .header("ratelimit-remaining", "0")
                .header("ratelimit-reset", &httpdate::fmt_http_date(reset.into())),
            Reply::json(201, serde_json::json!({"data": {"id": "orq_2"}}))
                .header("ratelimit-remaining", "7")
                .header("ratelimit-reset", &httpdate::fmt_http_date(reset.into())),
        ])
        .await;
        let c = client(&rec.base_url());
        let search = lhr_jfk(vec![PassengerSpec::Adult], CabinClass::Economy);
        let limits = RateLimits::default();
        let bound = c.reporting_to(limits.clone());
        assert_eq!(bound.create_offer_request(&search).await.unwrap(), "orq_1");
        assert_eq!(bound.create_offer_request(&search).await.unwrap(), "orq_2");
        let got = limits.take();
        assert_eq!(
            got.len(),
            1,
            "only the answer with nothing remaining: {got:?}"
        );
        assert_eq!(got[0].budget, crate::job::budgets::DUFFEL_SEARCH);
        assert!(
            got[0].after > Duration::from_secs(15) && got[0].after <= Duration::from_secs(21),
            "{:?}",
            got[0].after
        );
    }

    #[tokio::test]
    async fn search_sends_enveloped_request_with_duffel_headers_and_parses_offers() {
        let rec = Recorder::start(vec![
            Reply::json(201, serde_json::json!({"data": {"id": "orq_1"}})),
            Reply::json(
                200,
                serde_json::json!({"data": [offer_json("off_1", "99.90"), offer_json("off_2", "120")],
                    "meta": {"after": null, "limit": 50}}),
            ),
        ])
        .await;
        let c = client(&rec.base_url());
        let search = lhr_jfk(
            vec![PassengerSpec::Adult, PassengerSpec::Age(7)],
            CabinClass::PremiumEconomy,
        );
        let orq = c.create_offer_request(&search).await.unwrap();
        assert_eq!(orq, "orq_1");
        let offers = c.list_offers(&orq).await.unwrap();
        assert_eq!(offers.len(), 2);
        let o = &offers[0];
        assert_eq!((o.id.as_str(), o.total_amount_minor), ("off_1", 9990));
        assert_eq!(offers[1].total_amount_minor, 12000);
        assert_eq!(o.currency, "GBP");
        assert_eq!(o.passenger_ids, vec!["pas_1"]);
        assert_eq!(o.owner_iata.as_deref(), Some("BA"));
        assert_eq!(o.slices[0].segments, 2);
        assert_eq!(
            o.slices[0].departing_at,
            NaiveDate::from_ymd_opt(2030, 6, 13)
                .unwrap()
                .and_hms_opt(16, 38, 2)
        );
        assert_eq!(
            o.expires_at,
            Some(
                Utc.with_ymd_and_hms(2030, 1, 17, 10, 42, 14).unwrap()
                    + chrono::Duration::milliseconds(545)
            )
        );

        let reqs = rec.requests();
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/air/offer_requests");
        assert_eq!(reqs[0].query.as_deref(), Some("return_offers=false"));
        assert_duffel_headers(&reqs[0]);
        assert_eq!(
            reqs[0].json(),
            serde_json::json!({"data": {
                "slices": [{"origin": "LHR", "destination": "JFK", "departure_date": "2030-06-13"}],
                "passengers": [{"type": "adult"}, {"age": 7}],
                "cabin_class": "premium_economy"
            }})
        );
        assert_eq!(reqs[1].path, "/air/offers");
        assert_duffel_headers(&reqs[1]);
        let q = reqs[1].query_pairs();
        assert!(
            q.contains(&("offer_request_id".into(), "orq_1".into())),
            "{q:?}"
        );
        assert!(q.contains(&("sort".into(), "total_amount".into())), "{q:?}");
    }

    #[tokio::test]
    async fn create_order_sends_instant_balance_payment_and_parses_the_order() {
        let rec = Recorder::start(vec![Reply::json(
            201,
            serde_json::json!({"data": order_json("ord_1", "b-1", "off_1")}),
        )])
        .await;
        let order = client(&rec.base_url())
            .create_order(&CreateOrder {
                offer_id: "off_1".into(),
                passengers: vec![passenger()],
                amount_minor: 12345,
                currency: "gbp".into(),
                metadata: BTreeMap::from([("booking_id".into(), "b-1".into())]),
            })
            .await
            .unwrap();
        assert_eq!(order.id, "ord_1");
        assert_eq!(order.booking_reference.as_deref(), Some("RZPNX8"));
        assert_eq!(order.total_amount_minor, 12345);
        let r = &rec.requests()[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/air/orders")
        );
        assert_duffel_headers(r);
        let data = &r.json()["data"];
        assert_eq!(data["type"], "instant");
        assert_eq!(data["selected_offers"], serde_json::json!(["off_1"]));
        assert_eq!(
            data["payments"],
            serde_json::json!([{"type": "balance", "amount": "123.45", "currency": "GBP"}])
        );
        assert_eq!(data["metadata"], serde_json::json!({"booking_id": "b-1"}));
        assert_eq!(data["passengers"][0]["id"], "pas_1");
        assert_eq!(data["passengers"][0]["born_on"], "1987-07-24");
        assert_eq!(
            data["passengers"][0]["identity_documents"][0]["type"],
            "passport"
        );
    }

    #[tokio::test]
    async fn definite_order_failure_is_rejected_without_leaking_the_message() {
        let body = serde_json::json!({
            "errors": [{"type": "invalid_state_error", "code": "offer_no_longer_available",
                "title": "Offer no longer available",
                "message": "Passenger Amelia Earhart cannot be booked on this offer"}],
            "meta": {"status": 422, "request_id": "req_abc"}
        });
        let rec = Recorder::start(vec![Reply::json(422, body)]).await;
        let err = client(&rec.base_url())
            .create_order(&order_of(12345))
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Rejected);
        assert!(err.is_code("offer_no_longer_available"));
        assert!(!err.order_may_exist());
        assert_eq!(err.request_id.as_deref(), Some("req_abc"));
        let text = err.to_string();
        assert_eq!(
            text,
            "duffel create_order rejected: HTTP 422 invalid_state_error \
             code=offer_no_longer_available request_id=req_abc"
        );
        assert!(matches!(JobError::from(err), JobError::Fatal(_)));
    }

    #[tokio::test]
    async fn order_server_error_means_the_order_may_exist() {
        let rec = Recorder::start(vec![Reply::json(
            502,
            serde_json::json!({"errors": [{"type": "airline_error", "code": "airline_unknown"}]}),
        )])
        .await;
        let err = client(&rec.base_url())
            .create_order(&order_of(100))
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
        assert!(err.order_may_exist());
        assert!(matches!(JobError::from(err), JobError::Retryable(_)));
        assert_eq!(rec.requests().len(), 1, "never re-POSTed by the client");
    }

    #[tokio::test]
    async fn rate_limit_carries_the_reset_time_and_snoozes_until_it() {
        let reset = Utc::now() + chrono::Duration::seconds(90);
        let rec = Recorder::start(vec![Reply::json(
            429,
            serde_json::json!({"errors": [{"type": "rate_limit_error", "code": "rate_limit_exceeded"}]}),
        )
        .header("ratelimit-reset", &httpdate::fmt_http_date(reset.into()))])
        .await;
        let err = client(&rec.base_url())
            .get_offer("off_1")
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::RateLimited);
        assert_eq!(err.reset_at.map(|t| t.timestamp()), Some(reset.timestamp()));
        match JobError::from(err) {
            JobError::RateLimited { after, budget, .. } => {
                assert_eq!(budget, crate::job::budgets::DUFFEL_SEARCH);
                assert!(
                    after > Duration::from_secs(80) && after <= Duration::from_secs(91),
                    "{after:?}"
                )
            }
            other => panic!("expected a snooze, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn find_orders_filters_by_booking_id_even_if_the_server_does_not() {
        let rec = Recorder::start(vec![
            Reply::json(
                200,
                serde_json::json!({"data": [order_json("ord_x", "other", "off_9")],
                    "meta": {"after": "cursor_2"}}),
            ),
            Reply::json(
                200,
                serde_json::json!({"data": [order_json("ord_1", "b-1", "off_1")],
                    "meta": {"after": null}}),
            ),
        ])
        .await;
        let found = client(&rec.base_url())
            .find_orders(&OrderLookup {
                booking_id: Some("b-1".into()),
                offer_id: Some("off_1".into()),
            })
            .await
            .unwrap();
        assert_eq!(
            found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["ord_1"]
        );
        let reqs = rec.requests();
        assert_eq!(reqs.len(), 2);
        let q = reqs[0].query_pairs();
        assert!(q.contains(&("offer_id".into(), "off_1".into())), "{q:?}");
        assert!(
            q.contains(&("metadata[booking_id]".into(), "b-1".into())),
            "{q:?}"
        );
        assert!(reqs[1]
            .query_pairs()
            .contains(&("after".into(), "cursor_2".into())));
    }

    #[tokio::test]
    async fn get_order_and_cancellation_round_trip() {
        let canc = |confirmed: serde_json::Value| {
            serde_json::json!({"data": {"id": "ore_1", "order_id": "ord_1",
                "refund_amount": "100.00", "refund_currency": "GBP", "confirmed_at": confirmed}})
        };
        let rec = Recorder::start(vec![
            Reply::json(200, serde_json::json!({"data": order_json("ord_1", "b-1", "off_1")})),
            Reply::json(201, canc(serde_json::Value::Null)),
            Reply::json(200, canc(serde_json::json!("2030-01-01T00:00:00Z"))),
            Reply::json(
                422,
                serde_json::json!({"errors": [{"type": "invalid_state_error", "code": "already_cancelled"}]}),
            ),
        ])
        .await;
        let c = client(&rec.base_url());
        assert_eq!(
            c.get_order("ord_1").await.unwrap().metadata["booking_id"],
            "b-1"
        );
        let pending = c.create_order_cancellation("ord_1").await.unwrap();
        assert_eq!(pending.refund_amount_minor, Some(10_000));
        assert!(pending.confirmed_at.is_none());
        let done = c.confirm_order_cancellation(&pending.id).await.unwrap();
        assert!(done.confirmed_at.is_some());
        let again = c.confirm_order_cancellation(&pending.id).await.unwrap_err();
        assert!(again.is_code("already_cancelled") && again.class == FailureClass::Rejected);
        let reqs = rec.requests();
        assert_eq!(reqs[0].path, "/air/orders/ord_1");
        assert_eq!(reqs[1].path, "/air/order_cancellations");
        assert_eq!(
            reqs[1].json(),
            serde_json::json!({"data": {"order_id": "ord_1"}})
        );
        assert_eq!(
            reqs[2].path,
            "/air/order_cancellations/ore_1/actions/confirm"
        );
        assert!(reqs
            .iter()
            .all(|r| r.header("duffel-version") == Some("v2")));
        assert!(c.get_order("../admin").await.unwrap_err().class == FailureClass::Invalid);
    }

    #[tokio::test]
    async fn unreadable_success_is_ambiguous_and_refused_connection_is_transient() {
        let rec = Recorder::start(vec![Reply::json(200, serde_json::json!({"nope": 1}))]).await;
        let err = client(&rec.base_url())
            .get_order("ord_1")
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = client(&format!("http://127.0.0.1:{port}"))
            .get_offer("off_1")
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Transient, "{err}");
        assert!(!err.order_may_exist());
    }

    #[test]
    fn duffel_errors_classify_by_status_and_code() {
        use FailureClass::*;
        let table: &[(u16, Option<&str>, FailureClass)] = &[
            (422, Some("offer_no_longer_available"), Rejected),
            (422, Some("offer_expired"), Rejected),
            (422, Some("price_changed"), Rejected),
            (422, Some("insufficient_balance"), Rejected),
            (
                422,
                Some("payment_amount_does_not_match_order_amount"),
                Rejected,
            ),
            (409, Some("order_creation_already_attempted"), Rejected),
            (502, Some("order_not_created"), Rejected),
            (422, Some("duplicate_booking"), Rejected),
            (422, Some("offer_request_already_booked"), Rejected),
            (
                422,
                Some("payment_currency_does_not_match_order_currency"),
                Rejected,
            ),
            (422, Some("already_cancelled"), Rejected),
            (404, Some("not_found"), Rejected),
            (404, None, Rejected),
            (429, Some("rate_limit_exceeded"), RateLimited),
            (400, Some("validation_required"), Invalid),
            (401, Some("unauthorized"), Invalid),
            (403, None, Invalid),
            (408, None, Transient),
            (500, Some("internal_server_error"), Ambiguous),
            (502, Some("airline_error"), Ambiguous),
            (504, None, Ambiguous),
        ];
        for (status, code, want) in table {
            assert_eq!(classify_duffel(*status, *code), *want, "{status} {code:?}");
        }
        let attempted = DuffelError {
            code: Some(Box::from("order_creation_already_attempted")),
            ..DuffelError::local("create_order", Rejected, "x")
        };
        assert!(attempted.order_may_exist());
        for (code, may_exist) in [
            ("duplicate_booking", true),
            ("offer_request_already_booked", true),
            ("order_not_created", false),
            ("price_changed", false),
        ] {
            let e = DuffelError {
                code: Some(Box::from(code)),
                ..DuffelError::local("create_order", Rejected, "x")
            };
            assert_eq!(e.order_may_exist(), may_exist, "{code}");
        }
    }

    #[tokio::test]
    async fn an_accepted_order_is_ambiguous_whatever_its_body() {
        let rec = Recorder::start(vec![Reply::json(
            202,
            serde_json::json!({"data": order_json("ord_1", "b-1", "off_1")}),
        )])
        .await;
        let err = client(&rec.base_url())
            .create_order(&order_of(12345))
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
        assert_eq!(err.status, Some(202));
        assert!(
            err.order_may_exist(),
            "look the order up before any new POST"
        );
    }

    #[test]
    fn ratelimit_reset_parses_http_dates_and_delta_seconds() {
        let now = Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap();
        assert_eq!(
            parse_ratelimit_reset("Fri, 01 Mar 2024 12:01:30 GMT", now),
            Some(Utc.with_ymd_and_hms(2024, 3, 1, 12, 1, 30).unwrap())
        );
        assert_eq!(
            parse_ratelimit_reset(" 45 ", now),
            Some(now + chrono::Duration::seconds(45))
        );
        for bad in ["", "soon", "-5", "2024-03-01T12:00:00Z", "Fri, 01 Mar 2024"] {
            assert_eq!(parse_ratelimit_reset(bad, now), None, "{bad}");
        }
        let err = DuffelError {
            reset_at: Some(now + chrono::Duration::seconds(30)),
            ..DuffelError::local("get_offer", FailureClass::RateLimited, "x")
        };
        assert_eq!(err.retry_after(now), Some(Duration::from_secs(30)));
        assert_eq!(
            err.to_job_error(now),
            JobError::RateLimited {
                budget: crate::job::budgets::DUFFEL_SEARCH.to_owned(),
                after: Duration::from_secs(30),
                reason: err.to_string()
            }
        );
        // A reset in the past still snoozes the minimum, never zero.
        let later = now + chrono::Duration::seconds(600);
        assert_eq!(err.retry_after(later), Some(Duration::ZERO));
        assert!(
            matches!(err.to_job_error(later), JobError::RateLimited { after, .. } if after == clamp_snooze(Some(Duration::ZERO)))
        );
        // No reset header: the default snooze.
        let bare = DuffelError::local("get_offer", FailureClass::RateLimited, "x");
        assert!(
            matches!(bare.to_job_error(now), JobError::RateLimited { after, .. } if after == clamp_snooze(None))
        );
    }

    #[test]
    fn order_lookup_needs_a_positive_match_and_no_contradiction() {
        let order = |booking: &str, offer: Option<&str>| Order {
            id: "ord".into(),
            booking_reference: None,
            total_amount_minor: 1,
            currency: "GBP".into(),
            offer_id: offer.map(str::to_owned),
            metadata: BTreeMap::from([("booking_id".into(), booking.into())]),
            cancelled_at: None,
        };
        let by_both = OrderLookup {
            booking_id: Some("b".into()),
            offer_id: Some("off".into()),
        };
        let by_offer = OrderLookup {
            booking_id: None,
            offer_id: Some("off".into()),
        };
        assert!(order_matches(&order("b", Some("off")), &by_both));
        assert!(order_matches(&order("b", None), &by_both));
        assert!(!order_matches(&order("b", Some("other")), &by_both));
        assert!(!order_matches(&order("x", Some("off")), &by_both));
        assert!(order_matches(&order("x", Some("off")), &by_offer));
        assert!(!order_matches(&order("x", None), &by_offer), "unverifiable");
    }

    #[test]
    fn odd_timestamps_read_as_absent_instead_of_failing_the_offer() {
        let mut json = offer_json("off_1", "10.00");
        json["expires_at"] = serde_json::json!("in a while");
        json["slices"][0]["segments"][0]["departing_at"] =
            serde_json::json!("2030-06-13T16:38:02+01:00");
        let offer = offer_from_wire("t", serde_json::from_value(json).unwrap()).unwrap();
        assert_eq!(offer.expires_at, None);
        assert_eq!(
            offer.slices[0].departing_at,
            NaiveDate::from_ymd_opt(2030, 6, 13)
                .unwrap()
                .and_hms_opt(16, 38, 2)
        );
        let mut bad_amount = offer_json("off_1", "10.00");
        bad_amount["total_amount"] = serde_json::json!("10.5.0");
        let err = offer_from_wire("t", serde_json::from_value(bad_amount).unwrap()).unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
    }

    #[test]
    fn passenger_debug_shows_no_pii() {
        let printed = format!(
            "{:?}",
            CreateOrder {
                offer_id: "off_1".into(),
                passengers: vec![passenger()],
                amount_minor: 1,
                currency: "GBP".into(),
                metadata: BTreeMap::new(),
            }
        );
        for pii in ["Amelia", "Earhart", "amelia@", "+44", "P1234567", "1987"] {
            assert!(!printed.contains(pii), "{printed}");
        }
        assert!(printed.contains("pas_1"));
    }

    #[test]
    fn flights_api_is_object_safe_and_config_defaults_to_the_real_api() {
        let c: DuffelConfig =
            serde_json::from_value(serde_json::json!({"access_token": "duffel_test_x"})).unwrap();
        assert_eq!(c.base_url, "https://api.duffel.com");
        let _api: Arc<dyn FlightsApi> = Arc::new(DuffelClient::new(&c).unwrap());
        assert!(DuffelClient::new(&DuffelConfig::default()).is_err());
    }
}
