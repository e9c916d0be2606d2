//! Stripe, through `async-stripe` 1.0.0-rc.10: the booking saga's card hold, capture, void
//! and refund, and an erasure's detaching of saved cards and deletion of the customer.
//!
//! Every state-changing call is sent with `RequestStrategy::Idempotent(key)` where `key` is
//! the caller's (`booking:{id}:pi`, `booking:{id}:capture`, …), and is sent **once**: the
//! library's own retry strategies are never used (they send a random key or none), retrying is
//! the job's business. Reads (`retrieve`) are sent once without a key (Stripe ignores keys on
//! `GET`).
//!
//! Amounts are minor units; currencies cross the trait in upper case (`"GBP"`) and are sent to
//! Stripe in lower case.

use std::{collections::BTreeMap, collections::HashMap, fmt, time::Duration};

use serde::Deserialize;
use stripe::{RequestStrategy, StripeError, StripeRequest};
use stripe_core::{
    customer::DeleteCustomer,
    payment_intent::{
        CancelPaymentIntent, CancelPaymentIntentCancellationReason, CapturePaymentIntent,
        CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent,
    },
    refund::{CreateRefund, CreateRefundReason, RetrieveRefund},
    PaymentIntentCaptureMethod, PaymentIntentStatus,
};
use stripe_payment::payment_method::{DetachPaymentMethod, RetrievePaymentMethod};

use super::{normalize_base_url, ApiKey, FailureClass, ProviderConfigError};
use crate::{BoxFuture, JobError};

/// How long to snooze after a Stripe 429 (async-stripe does not expose response headers, and
/// Stripe's limits are per second).
pub const STRIPE_RATE_LIMIT_SNOOZE: Duration = Duration::from_secs(5);

/// Stripe client settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// API root; the client appends `/v1/…`. Default `https://api.stripe.com`; the loopback
    /// sandbox in tests and demos.
    pub base_url: String,
    /// Secret key (`sk_…`); never printed.
    pub secret_key: ApiKey,
    /// Whole-request budget (connect, send, read the body). A call that runs out is
    /// [`FailureClass::Ambiguous`].
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.stripe.com".to_owned(),
            secret_key: ApiKey::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A card hold to place: create **and** confirm a PaymentIntent off-session with manual
/// capture, on the traveler's saved card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizePayment {
    /// Stripe customer (`cus_…`).
    pub customer_id: String,
    /// Saved card (`pm_…`) of that customer.
    pub payment_method_id: String,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code (any case).
    pub currency: String,
    /// Our booking id, stored as `metadata[booking_id]`.
    pub booking_id: String,
    /// Our campaign id, stored as `metadata[campaign_id]`.
    pub campaign_id: String,
}

/// Where a PaymentIntent stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentIntentState {
    /// Needs a new payment method (e.g. after a decline).
    RequiresPaymentMethod,
    /// Created, not confirmed.
    RequiresConfirmation,
    /// Needs the customer (3-D Secure): cannot complete off-session.
    RequiresAction,
    /// Being processed.
    Processing,
    /// Authorized: the hold is in place, waiting for capture.
    RequiresCapture,
    /// Captured.
    Succeeded,
    /// Voided.
    Canceled,
    /// A status this code does not know.
    Other(String),
}

/// What the saga needs to know about a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntentSummary {
    /// `pi_…`.
    pub id: String,
    /// Status.
    pub status: PaymentIntentState,
    /// Amount intended, minor units.
    pub amount: i64,
    /// Amount that can still be captured (the hold), minor units.
    pub amount_capturable: i64,
    /// Amount captured, minor units.
    pub amount_received: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Metadata (ids only: we never put PII there).
    pub metadata: BTreeMap<String, String>,
}

/// Why we refund (Stripe's `reason`; `None` leaves it unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    /// A duplicate charge.
    Duplicate,
    /// Fraud.
    Fraudulent,
    /// The customer asked (also: the booking failed after capture).
    RequestedByCustomer,
}

/// A refund to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The captured PaymentIntent.
    pub payment_intent_id: String,
    /// Minor units; `None` refunds everything captured.
    pub amount_minor: Option<i64>,
    /// Stripe's reason.
    pub reason: Option<RefundReason>,
    /// Metadata (ids and codes only), e.g. `booking_id`, `cause`.
    pub metadata: BTreeMap<String, String>,
}

/// A refund's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundSummary {
    /// `re_…`.
    pub id: String,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// The refunded PaymentIntent.
    pub payment_intent_id: Option<String>,
    /// Why it failed, when it did (`lost_or_stolen_card`, `expired_or_canceled_card`,
    /// `unknown`, …: Stripe's codes, no PII).
    pub failure_reason: Option<String>,
}

/// Stripe as the saga sees it. Object safe: jobs hold an `Arc<dyn PaymentsApi>`.
///
/// Every state-changing method takes the caller's idempotency key (1–255 characters), sent as
/// `Idempotency-Key`. Same key + same parameters replays Stripe's stored answer, so after an
/// [`FailureClass::Ambiguous`] error the same call with the same key is the way to find out
/// what happened. Same key + different parameters is refused ([`FailureClass::Invalid`]).
pub trait PaymentsApi: Send + Sync {
    /// Creates and confirms an off-session, manual-capture PaymentIntent. Success normally
    /// means status `requires_capture`; a decline or `authentication_required` is a
    /// [`FailureClass::Rejected`] error (see [`StripeApiError::is_decline`]).
    fn authorize_payment<'a>(
        &'a self,
        req: &'a AuthorizePayment,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>>;

    /// Reads a PaymentIntent.
    fn retrieve_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>>;

    /// Captures the whole hold. In the wrong state Stripe answers
    /// `payment_intent_unexpected_state` ([`FailureClass::Rejected`]): retrieve and decide.
    fn capture_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>>;

    /// Voids the hold (cancellation reason `abandoned`).
    fn cancel_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>>;

    /// Refunds a captured PaymentIntent (in part or whole).
    fn create_refund<'a>(
        &'a self,
        req: &'a RefundRequest,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<RefundSummary, StripeApiError>>;

    /// Reads a refund (`re_…`): its status moves after it is created (`pending` →
    /// `succeeded`, or `failed` days later when the card is closed).
    fn retrieve_refund<'a>(
        &'a self,
        refund_id: &'a str,
    ) -> BoxFuture<'a, Result<RefundSummary, StripeApiError>>;
    /// Detaches a saved card (`pm_…`) from its customer, for good (account erasure). `Ok(true)`:
    /// this call detached it; `Ok(false)`: there was nothing left to detach (Stripe no longer
    /// knows the card, or it is attached to no customer), which is the same end state.
    fn detach_payment_method<'a>(
        &'a self,
        payment_method_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<bool, StripeApiError>>;

    /// Deletes a customer (`cus_…`) for good (account erasure). `Ok(true)`: this call deleted
    /// it; `Ok(false)`: Stripe no longer knows it (already deleted), the same end state.
    fn delete_customer<'a>(
        &'a self,
        customer_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<bool, StripeApiError>>;
}

/// Whether `e` says the object is already gone: 404 `resource_missing` (a deleted customer, an
/// unknown card). Stripe's idempotency replays a first success for 24 hours; after that, or
/// for a second request's own key, "already gone" is how a repeated erasure step succeeds.
pub fn is_already_gone(e: &StripeApiError) -> bool {
    e.status == Some(404) && e.code.as_deref() == Some("resource_missing")
}

/// A failed Stripe call: its [`FailureClass`] plus the ids and codes that explain it. The
/// `Display` text carries no PII (Stripe's `message` is dropped: it can echo parameters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct StripeApiError {
    /// What it means.
    pub class: FailureClass,
    /// HTTP status, when Stripe answered.
    pub status: Option<u16>,
    /// Stripe's error `type` (`card_error`, `invalid_request_error`, `idempotency_error`, …).
    pub error_type: Option<String>,
    /// Stripe's error `code` (`card_declined`, `authentication_required`, …).
    pub code: Option<String>,
    /// Issuer's `decline_code` (`insufficient_funds`, …).
    pub decline_code: Option<String>,
    /// The PaymentIntent the error concerns, if Stripe said.
    pub payment_intent_id: Option<String>,
    /// What went wrong when there was no Stripe error body (`timeout`, `transport error`, …).
    pub detail: Option<&'static str>,
}

impl StripeApiError {
    fn local(class: FailureClass, detail: &'static str) -> Self {
        Self {
            class,
            status: None,
            error_type: None,
            code: None,
            decline_code: None,
            payment_intent_id: None,
            detail: Some(detail),
        }
    }

    /// The card was declined or needs the customer (off-session `authentication_required`):
    /// the campaign needs the user; never retry.
    pub fn is_decline(&self) -> bool {
        self.error_type.as_deref() == Some("card_error") || self.requires_authentication()
    }

    /// The bank wants the customer present (3-D Secure) — the off-session charge cannot pass.
    pub fn requires_authentication(&self) -> bool {
        self.code.as_deref() == Some("authentication_required")
            || self.decline_code.as_deref() == Some("authentication_required")
    }

    /// The PaymentIntent was in the wrong state for this call (e.g. capture after cancel).
    pub fn is_unexpected_state(&self) -> bool {
        self.code.as_deref() == Some("payment_intent_unexpected_state")
    }

    fn describe(&self) -> String {
        super::error::describe(
            &format!("stripe {}", self.class),
            self.status,
            self.error_type.as_deref(),
            &[
                ("code", self.code.as_deref()),
                ("decline_code", self.decline_code.as_deref()),
                ("payment_intent", self.payment_intent_id.as_deref()),
            ],
            self.detail,
        )
    }
}

/// The default job outcome: declines and invalid requests are fatal (the saga is expected to
/// have handled declines before using `?`), 429 snoozes [`STRIPE_RATE_LIMIT_SNOOZE`], the
/// rest retries with backoff — safe because the retry repeats the same idempotency key.
impl From<StripeApiError> for JobError {
    fn from(e: StripeApiError) -> Self {
        let after = (e.class == FailureClass::RateLimited).then_some(STRIPE_RATE_LIMIT_SNOOZE);
        e.class
            .job_error_on(crate::job::budgets::STRIPE, after, e.to_string())
    }
}

/// Labels a Stripe error answer. Pure, so the table is tested directly.
///
/// | status / type / code | class |
/// |---|---|
/// | 402, or type `card_error` (incl. `authentication_required`) | Rejected |
/// | code `payment_intent_unexpected_state`, 404 `resource_missing` | Rejected |
/// | type `idempotency_error` (same key, other parameters) | Invalid |
/// | 400, 401, 403, other 4xx | Invalid |
/// | 409 (same key in flight), 424 (failure outside Stripe, nothing done) | Transient |
/// | 429 | RateLimited |
/// | 5xx, type `api_error` | Ambiguous |
pub fn classify_stripe(status: u16, error_type: &str, code: Option<&str>) -> FailureClass {
    match (status, error_type, code) {
        (402, _, _) | (_, "card_error", _) => FailureClass::Rejected,
        (429, _, _) => FailureClass::RateLimited,
        (_, "idempotency_error", _) => FailureClass::Invalid,
        (409 | 424, _, _) => FailureClass::Transient,
        (500..=599, _, _) | (_, "api_error", _) => FailureClass::Ambiguous,
        (_, _, Some("payment_intent_unexpected_state")) | (404, _, _) => FailureClass::Rejected,
        _ => FailureClass::Invalid,
    }
}

impl From<StripeError> for StripeApiError {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Stripe(err, status) => {
                let error_type = err.type_.as_str().to_owned();
                let code = err.code.as_ref().map(|c| c.as_str().to_owned());
                Self {
                    class: classify_stripe(status, &error_type, code.as_deref()),
                    status: Some(status),
                    error_type: Some(error_type),
                    code,
                    decline_code: err.decline_code.clone(),
                    payment_intent_id: err.payment_intent.as_ref().map(|pi| pi.id.to_string()),
                    detail: None,
                }
            }
            // The request may have reached Stripe; the idempotent retry tells.
            StripeError::Timeout => Self::local(FailureClass::Ambiguous, "timeout"),
            StripeError::ClientError(_) => Self::local(FailureClass::Ambiguous, "transport error"),
            // A success body we could not read (the call *did* happen), or an error body we
            // could not read (its status is lost): either way, unknown outcome.
            StripeError::JSONDeserialize(_) => {
                Self::local(FailureClass::Ambiguous, "unreadable response")
            }
            StripeError::ConfigError(_) => Self::local(FailureClass::Invalid, "client config"),
        }
    }
}

/// The real client: async-stripe's hyper client, rustls (ring) for `https://`, plain
/// `http://` for the loopback sandbox. Cheap to clone.
#[derive(Clone)]
pub struct StripePayments {
    client: stripe::Client,
}

impl fmt::Debug for StripePayments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripePayments").finish_non_exhaustive()
    }
}

impl StripePayments {
    /// Builds a client from config; refuses an empty key or a malformed base URL.
    pub fn new(config: &StripeConfig) -> Result<Self, ProviderConfigError> {
        if config.secret_key.is_empty() {
            return Err(ProviderConfigError("stripe.secret_key is empty".into()));
        }
        let base = normalize_base_url("stripe.base_url", &config.base_url)?;
        let client = stripe::ClientBuilder::new(config.secret_key.expose())
            // async-stripe joins `{base}v1{path}`, so the base ends with `/`.
            .url(format!("{base}/"))
            .request_strategy(RequestStrategy::Once)
            .timeout(config.timeout)
            .build()
            .map_err(|_| {
                ProviderConfigError("stripe client could not be built from its config".into())
            })?;
        Ok(Self { client })
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, StripeApiError> {
    stripe::IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|_| {
            StripeApiError::local(
                FailureClass::Invalid,
                "idempotency key must be 1-255 characters",
            )
        })
}

fn stripe_currency(code: &str) -> Result<stripe_types::Currency, StripeApiError> {
    let code = super::money::normalize_currency(code)
        .map_err(|_| StripeApiError::local(FailureClass::Invalid, "malformed currency code"))?;
    Ok(code
        .to_ascii_lowercase()
        .parse()
        .unwrap_or_else(|never: std::convert::Infallible| match never {}))
}

fn summary(pi: stripe_core::PaymentIntent) -> PaymentIntentSummary {
    let status = match pi.status {
        PaymentIntentStatus::RequiresPaymentMethod => PaymentIntentState::RequiresPaymentMethod,
        PaymentIntentStatus::RequiresConfirmation => PaymentIntentState::RequiresConfirmation,
        PaymentIntentStatus::RequiresAction => PaymentIntentState::RequiresAction,
        PaymentIntentStatus::Processing => PaymentIntentState::Processing,
        PaymentIntentStatus::RequiresCapture => PaymentIntentState::RequiresCapture,
        PaymentIntentStatus::Succeeded => PaymentIntentState::Succeeded,
        PaymentIntentStatus::Canceled => PaymentIntentState::Canceled,
        other => PaymentIntentState::Other(other.as_str().to_owned()),
    };
    PaymentIntentSummary {
        id: pi.id.to_string(),
        status,
        amount: pi.amount,
        amount_capturable: pi.amount_capturable,
        amount_received: pi.amount_received,
        currency: pi.currency.to_string().to_ascii_uppercase(),
        metadata: pi.metadata.into_iter().collect(),
    }
}

fn sent<T>(
    result: Result<T, StripeError>,
    op: &'static str,
    started: std::time::Instant,
) -> Result<T, StripeApiError> {
    let result = result.map_err(|e| {
        let e = StripeApiError::from(e);
        // Debug: the attempt that made the call logs its failure once, with this text and the
        // job's context (one failed call, one WARN line).
        tracing::debug!(provider = "stripe", op, class = %e.class, status = e.status, code = e.code.as_deref(), "stripe call failed");
        e
    });
    super::observe(
        "stripe",
        op,
        started,
        result.as_ref().map(|_| ()).map_err(|e| e.class),
    );
    result
}

impl PaymentsApi for StripePayments {
    fn authorize_payment<'a>(
        &'a self,
        req: &'a AuthorizePayment,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let metadata = HashMap::from([
                ("booking_id".to_owned(), req.booking_id.clone()),
                ("campaign_id".to_owned(), req.campaign_id.clone()),
            ]);
            let create =
                CreatePaymentIntent::new(req.amount_minor, stripe_currency(&req.currency)?)
                    .customer(req.customer_id.as_str())
                    .payment_method(req.payment_method_id.as_str())
                    .off_session(CreatePaymentIntentOffSession::Bool(true))
                    .confirm(true)
                    .capture_method(PaymentIntentCaptureMethod::Manual)
                    .metadata(metadata);
            let pi = create
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            sent(pi, "authorize_payment", started).map(summary)
        })
    }

    fn retrieve_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let pi = RetrievePaymentIntent::new(payment_intent_id)
                .customize()
                .request_strategy(RequestStrategy::Once)
                .send(&self.client)
                .await;
            sent(pi, "retrieve_payment_intent", started).map(summary)
        })
    }

    fn capture_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let pi = CapturePaymentIntent::new(payment_intent_id)
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            sent(pi, "capture_payment_intent", started).map(summary)
        })
    }

    fn cancel_payment_intent<'a>(
        &'a self,
        payment_intent_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntentSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let pi = CancelPaymentIntent::new(payment_intent_id)
                .cancellation_reason(CancelPaymentIntentCancellationReason::Abandoned)
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            sent(pi, "cancel_payment_intent", started).map(summary)
        })
    }

    fn create_refund<'a>(
        &'a self,
        req: &'a RefundRequest,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<RefundSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let mut create = CreateRefund::new()
                .payment_intent(req.payment_intent_id.as_str())
                .metadata(
                    req.metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<HashMap<_, _>>(),
                );
            if let Some(amount) = req.amount_minor {
                create = create.amount(amount);
            }
            if let Some(reason) = req.reason {
                create = create.reason(match reason {
                    RefundReason::Duplicate => CreateRefundReason::Duplicate,
                    RefundReason::Fraudulent => CreateRefundReason::Fraudulent,
                    RefundReason::RequestedByCustomer => CreateRefundReason::RequestedByCustomer,
                });
            }
            let refund = create
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            sent(refund, "create_refund", started).map(refund_summary)
        })
    }

    fn retrieve_refund<'a>(
        &'a self,
        refund_id: &'a str,
    ) -> BoxFuture<'a, Result<RefundSummary, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let refund = RetrieveRefund::new(refund_id)
                .customize()
                .request_strategy(RequestStrategy::Once)
                .send(&self.client)
                .await;
            sent(refund, "retrieve_refund", started).map(refund_summary)
        })
    }

    fn detach_payment_method<'a>(
        &'a self,
        payment_method_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<bool, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let pm = DetachPaymentMethod::new(payment_method_id)
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            match sent(pm, "detach_payment_method", started) {
                Ok(_) => Ok(true),
                Err(e) if is_already_gone(&e) => Ok(false),
                // Stripe refuses to detach a card attached to no customer (a 400 whose wording,
                // not a code, says so): read the card, and if no customer holds it the step
                // is done; otherwise the refusal stands.
                Err(e) if e.status == Some(400) => {
                    let started = std::time::Instant::now();
                    let read = RetrievePaymentMethod::new(payment_method_id)
                        .customize()
                        .request_strategy(RequestStrategy::Once)
                        .send(&self.client)
                        .await;
                    match sent(read, "retrieve_payment_method", started) {
                        Ok(pm) if pm.customer.is_none() => Ok(false),
                        Err(read) if is_already_gone(&read) => Ok(false),
                        _ => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn delete_customer<'a>(
        &'a self,
        customer_id: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<bool, StripeApiError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let strategy = idempotent(idempotency_key)?;
            let deleted = DeleteCustomer::new(customer_id)
                .customize()
                .request_strategy(strategy)
                .send(&self.client)
                .await;
            match sent(deleted, "delete_customer", started) {
                Ok(_) => Ok(true),
                Err(e) if is_already_gone(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

/// Our view of a Stripe refund.
fn refund_summary(refund: stripe_core::Refund) -> RefundSummary {
    RefundSummary {
        id: refund.id.to_string(),
        status: refund.status.unwrap_or_else(|| "pending".to_owned()),
        amount: refund.amount,
        currency: refund.currency.to_string().to_ascii_uppercase(),
        payment_intent_id: refund.payment_intent.map(|p| p.id().to_string()),
        failure_reason: refund.failure_reason,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::providers::testing::{Recorder, Reply};

    fn pi_json(status: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "pi_123", "object": "payment_intent",
            "amount": 4500, "amount_capturable": 4500, "amount_received": 0,
            "capture_method": "manual", "confirmation_method": "automatic",
            "created": 1_700_000_000, "currency": "gbp", "livemode": false,
            "metadata": {"booking_id": "b-1", "campaign_id": "c-1"},
            "payment_method_types": ["card"], "status": status
        })
    }

    fn client(base: &str) -> StripePayments {
        StripePayments::new(&StripeConfig {
            base_url: base.to_owned(),
            secret_key: ApiKey::new("sk_test_123"),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn authorize_req() -> AuthorizePayment {
        AuthorizePayment {
            customer_id: "cus_1".into(),
            payment_method_id: "pm_1".into(),
            amount_minor: 4500,
            currency: "GBP".into(),
            booking_id: "b-1".into(),
            campaign_id: "c-1".into(),
        }
    }

    #[tokio::test]
    async fn authorize_sends_our_idempotency_key_and_form_encoded_metadata() {
        let rec = Recorder::start(vec![Reply::json(200, pi_json("requires_capture"))]).await;
        let pi = client(&rec.base_url())
            .authorize_payment(&authorize_req(), "booking:b-1:pi")
            .await
            .unwrap();
        assert_eq!(pi.id, "pi_123");
        assert_eq!(pi.status, PaymentIntentState::RequiresCapture);
        assert_eq!(pi.amount_capturable, 4500);
        assert_eq!(pi.currency, "GBP");
        assert_eq!(
            pi.metadata.get("booking_id").map(String::as_str),
            Some("b-1")
        );

        let reqs = rec.requests();
        assert_eq!(reqs.len(), 1, "sent exactly once");
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/payment_intents");
        assert_eq!(r.header("idempotency-key"), Some("booking:b-1:pi"));
        assert_eq!(r.header("authorization"), Some("Bearer sk_test_123"));
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let f = r.form();
        let has = |k: &str, v: &str| f.iter().any(|(fk, fv)| fk == k && fv == v);
        assert!(has("metadata[booking_id]", "b-1"), "{f:?}");
        assert!(has("metadata[campaign_id]", "c-1"), "{f:?}");
        assert!(has("amount", "4500"), "{f:?}");
        assert!(has("currency", "gbp"), "{f:?}");
        assert!(has("customer", "cus_1"), "{f:?}");
        assert!(has("payment_method", "pm_1"), "{f:?}");
        assert!(has("off_session", "true"), "{f:?}");
        assert!(has("confirm", "true"), "{f:?}");
        assert!(has("capture_method", "manual"), "{f:?}");
    }

    #[tokio::test]
    async fn card_error_402_is_a_decline_and_is_sent_once() {
        let body = serde_json::json!({"error": {
            "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
            "message": "Your card was declined, Jane Doe.",
            "payment_intent": pi_json("requires_payment_method"),
        }});
        let rec = Recorder::start(vec![Reply::json(402, body)]).await;
        let err = client(&rec.base_url())
            .authorize_payment(&authorize_req(), "booking:b-1:pi")
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Rejected);
        assert!(err.is_decline());
        assert!(!err.requires_authentication());
        assert_eq!(err.status, Some(402));
        assert_eq!(err.decline_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(err.payment_intent_id.as_deref(), Some("pi_123"));
        let text = err.to_string();
        assert!(
            !text.contains("Jane"),
            "no provider message in the text: {text}"
        );
        assert!(matches!(JobError::from(err), JobError::Fatal(_)));
        assert_eq!(rec.requests().len(), 1, "no library retry");
    }

    #[tokio::test]
    async fn authentication_required_without_payment_intent_is_a_decline() {
        let body = serde_json::json!({"error": {
            "type": "card_error", "code": "authentication_required",
            "message": "This payment requires authentication."
        }});
        let rec = Recorder::start(vec![Reply::json(402, body)]).await;
        let err = client(&rec.base_url())
            .authorize_payment(&authorize_req(), "booking:b-1:pi")
            .await
            .unwrap_err();
        assert!(err.is_decline() && err.requires_authentication(), "{err}");
    }

    #[tokio::test]
    async fn server_error_is_ambiguous_and_not_retried_by_the_library() {
        let body = serde_json::json!({"error": {"type": "api_error", "message": "boom"}});
        let rec = Recorder::start(vec![
            Reply::json(500, body),
            Reply::json(200, pi_json("requires_capture")),
        ])
        .await;
        let err = client(&rec.base_url())
            .capture_payment_intent("pi_123", "booking:b-1:capture")
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
        assert!(matches!(JobError::from(err), JobError::Retryable(_)));
        let reqs = rec.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/v1/payment_intents/pi_123/capture");
        assert_eq!(
            reqs[0].header("idempotency-key"),
            Some("booking:b-1:capture")
        );
    }

    #[tokio::test]
    async fn rate_limit_empties_the_stripe_budget_and_idempotency_conflict_is_fatal() {
        let rl =
            serde_json::json!({"error": {"type": "invalid_request_error", "code": "rate_limit"}});
        let idem = serde_json::json!({"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters"}});
        let rec = Recorder::start(vec![Reply::json(429, rl), Reply::json(400, idem)]).await;
        let c = client(&rec.base_url());
        let e1 = c.cancel_payment_intent("pi_1", "k1").await.unwrap_err();
        assert_eq!(e1.class, FailureClass::RateLimited);
        assert_eq!(
            JobError::from(e1),
            JobError::RateLimited {
                budget: crate::job::budgets::STRIPE.to_owned(),
                after: STRIPE_RATE_LIMIT_SNOOZE,
                reason: "stripe rate_limited: HTTP 429 invalid_request_error code=rate_limit"
                    .to_owned()
            }
        );
        let e2 = c.cancel_payment_intent("pi_1", "k2").await.unwrap_err();
        assert_eq!(e2.class, FailureClass::Invalid);
        assert!(matches!(JobError::from(e2), JobError::Fatal(_)));
        let reqs = rec.requests();
        assert_eq!(reqs[0].path, "/v1/payment_intents/pi_1/cancel");
        assert!(reqs[0]
            .form()
            .contains(&("cancellation_reason".into(), "abandoned".into())));
    }

    #[tokio::test]
    async fn retrieve_is_a_get_without_a_key_and_refund_carries_its_key() {
        let refund = serde_json::json!({
            "id": "re_1", "object": "refund", "amount": 4500, "created": 1_700_000_000,
            "currency": "gbp", "metadata": {"booking_id": "b-1"}, "payment_intent": "pi_123",
            "status": "succeeded"
        });
        let rec = Recorder::start(vec![
            Reply::json(200, pi_json("succeeded")),
            Reply::json(200, refund),
        ])
        .await;
        let c = client(&format!("{}/", rec.base_url()));
        let pi = c.retrieve_payment_intent("pi_123").await.unwrap();
        assert_eq!(pi.status, PaymentIntentState::Succeeded);
        let r = c
            .create_refund(
                &RefundRequest {
                    payment_intent_id: "pi_123".into(),
                    amount_minor: Some(4500),
                    reason: Some(RefundReason::RequestedByCustomer),
                    metadata: BTreeMap::from([("booking_id".into(), "b-1".into())]),
                },
                "booking:b-1:refund",
            )
            .await
            .unwrap();
        assert_eq!(r.id, "re_1");
        assert_eq!(r.status, "succeeded");
        assert_eq!(r.payment_intent_id.as_deref(), Some("pi_123"));
        let reqs = rec.requests();
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].path, "/v1/payment_intents/pi_123");
        assert_eq!(reqs[0].header("idempotency-key"), None);
        assert_eq!(reqs[1].path, "/v1/refunds");
        assert_eq!(
            reqs[1].header("idempotency-key"),
            Some("booking:b-1:refund")
        );
        let f = reqs[1].form();
        for (k, v) in [
            ("payment_intent", "pi_123"),
            ("amount", "4500"),
            ("reason", "requested_by_customer"),
            ("metadata[booking_id]", "b-1"),
        ] {
            assert!(f.contains(&(k.into(), v.into())), "{k}: {f:?}");
        }
    }

    #[tokio::test]
    async fn erasure_calls_carry_their_keys_and_already_gone_reads_as_done() {
        use serde_json::Value;
        let pm = |customer: Value| {
            serde_json::json!({
                "id": "pm_1", "object": "payment_method", "created": 1_700_000_000,
                "livemode": false, "type": "card", "customer": customer, "metadata": {},
                "billing_details": {"address": null, "email": null, "name": null,
                                    "phone": null, "tax_id": null},
            })
        };
        let missing = |what: &str| {
            Reply::json(
                404,
                serde_json::json!({"error": {
                "type": "invalid_request_error", "code": "resource_missing",
                "message": format!("No such {what}: 'x'"), "param": "id"}}),
            )
        };
        let not_attached = || {
            Reply::json(
                400,
                serde_json::json!({"error": {
                "type": "invalid_request_error",
                "message": "The payment method you provided is not attached to a customer so detachment is impossible."}}),
            )
        };
        let rec = Recorder::start(vec![
            Reply::json(200, pm(Value::Null)),
            // Detached before: the 400 is settled by reading the card.
            not_attached(),
            Reply::json(200, pm(Value::Null)),
            // Still attached after a 400: the refusal stands.
            not_attached(),
            Reply::json(200, pm(Value::from("cus_1"))),
            Reply::json(
                200,
                serde_json::json!({"id": "cus_1", "object": "customer", "deleted": true}),
            ),
            missing("customer"),
            Reply::json(503, serde_json::json!({"error": {"type": "api_error"}})),
        ])
        .await;
        let c = client(&format!("{}/", rec.base_url()));
        assert!(c
            .detach_payment_method("pm_1", "erasure:r:detach:pm_1")
            .await
            .unwrap());
        assert!(!c
            .detach_payment_method("pm_1", "erasure:r:detach:pm_1")
            .await
            .unwrap());
        let refused = c.detach_payment_method("pm_1", "k").await.unwrap_err();
        assert_eq!(refused.status, Some(400));
        assert!(c
            .delete_customer("cus_1", "erasure:r:customer:cus_1")
            .await
            .unwrap());
        assert!(!c
            .delete_customer("cus_1", "erasure:r:customer:cus_1")
            .await
            .unwrap());
        let outage = c.delete_customer("cus_1", "k").await.unwrap_err();
        assert_eq!(outage.class, FailureClass::Ambiguous);
        let reqs = rec.requests();
        assert_eq!(
            (reqs[0].method.as_str(), reqs[0].path.as_str()),
            ("POST", "/v1/payment_methods/pm_1/detach")
        );
        assert_eq!(
            reqs[0].header("idempotency-key"),
            Some("erasure:r:detach:pm_1")
        );
        assert_eq!(
            (reqs[2].method.as_str(), reqs[2].path.as_str()),
            ("GET", "/v1/payment_methods/pm_1")
        );
        assert_eq!(
            (reqs[5].method.as_str(), reqs[5].path.as_str()),
            ("DELETE", "/v1/customers/cus_1")
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_ambiguous_and_bad_keys_are_refused_locally() {
        // A port that was just free: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(&format!("http://127.0.0.1:{port}"));
        let err = c.retrieve_payment_intent("pi_1").await.unwrap_err();
        assert_eq!(err.class, FailureClass::Ambiguous);
        assert_eq!(err.detail, Some("transport error"));

        let err = c.capture_payment_intent("pi_1", "").await.unwrap_err();
        assert_eq!(err.class, FailureClass::Invalid);
        let long = "k".repeat(256);
        let err = c.capture_payment_intent("pi_1", &long).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Invalid);
    }

    #[test]
    fn stripe_errors_classify_by_status_type_and_code() {
        use FailureClass::*;
        let table: &[(u16, &str, Option<&str>, FailureClass)] = &[
            (402, "card_error", Some("card_declined"), Rejected),
            (402, "card_error", Some("authentication_required"), Rejected),
            (400, "card_error", Some("incorrect_cvc"), Rejected),
            (
                400,
                "invalid_request_error",
                Some("payment_intent_unexpected_state"),
                Rejected,
            ),
            (
                404,
                "invalid_request_error",
                Some("resource_missing"),
                Rejected,
            ),
            (400, "idempotency_error", None, Invalid),
            (
                400,
                "invalid_request_error",
                Some("parameter_missing"),
                Invalid,
            ),
            (401, "invalid_request_error", None, Invalid),
            (403, "invalid_request_error", None, Invalid),
            (409, "invalid_request_error", None, Transient),
            (424, "api_error", None, Transient),
            (
                429,
                "invalid_request_error",
                Some("rate_limit"),
                RateLimited,
            ),
            (500, "api_error", None, Ambiguous),
            (503, "invalid_request_error", None, Ambiguous),
        ];
        for (status, ty, code, want) in table {
            assert_eq!(
                classify_stripe(*status, ty, *code),
                *want,
                "{status} {ty} {code:?}"
            );
        }
    }

    #[test]
    fn library_errors_without_an_answer_are_ambiguous() {
        for e in [
            StripeError::Timeout,
            StripeError::ClientError("client error (Connect)".into()),
            StripeError::JSONDeserialize("missing field".into()),
        ] {
            assert_eq!(StripeApiError::from(e).class, FailureClass::Ambiguous);
        }
        let e = StripeApiError::from(StripeError::ConfigError("bad".into()));
        assert_eq!(e.class, FailureClass::Invalid);
    }

    #[test]
    fn config_defaults_to_the_real_api_and_rejects_empty_keys() {
        let c: StripeConfig = serde_json::from_value(serde_json::json!({
            "secret_key": "sk_test_1", "timeout": "10s"
        }))
        .unwrap();
        assert_eq!(c.base_url, "https://api.stripe.com");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(StripePayments::new(&c).is_ok());
        assert!(StripePayments::new(&StripeConfig::default()).is_err());
        let bad = serde_json::from_value::<StripeConfig>(serde_json::json!({"secret": "x"}));
        assert!(bad.is_err(), "unknown keys are refused");
    }

    #[test]
    fn payments_api_is_object_safe() {
        let c = client("http://127.0.0.1:9");
        let _api: Arc<dyn PaymentsApi> = Arc::new(c);
    }
}
