//! Clients for the three providers the jobs call: Stripe (payments), Duffel (flights) and
//! Resend (email).
//!
//! Each provider sits behind a small object-safe trait ([`PaymentsApi`], [`FlightsApi`],
//! [`EmailApi`]) so jobs hold an `Arc<dyn …>` and tests can swap in a fake that injects faults.
//! The real clients take their base URL, key and timeouts from config, so pointing them at the
//! loopback sandbox or at the real APIs is a config change only.
//!
//! Contracts every client keeps:
//! - **No retries inside a client.** A call is made once; retrying is the job's decision (its
//!   [`JobError`](crate::JobError)). Every call that changes state at Stripe or Resend carries an
//!   idempotency key that the *caller* derives from the job (e.g. `booking:{id}:pi`), so a
//!   retried job replays the provider's stored answer instead of acting twice. Duffel has no
//!   idempotency key: see [`FlightsApi::create_order`].
//! - **Errors say what happens next.** Every failure is labelled with a [`FailureClass`]
//!   (rejected, invalid, rate limited, transient, ambiguous) and converts into a `JobError`.
//! - **No PII or secrets in errors or logs.** Error texts carry provider ids, error codes and
//!   HTTP statuses only, never provider messages (they can echo names or addresses); request and
//!   response bodies are never logged; keys print as `***`.
//! - **Money is integers.** Amounts cross the traits in minor units (`i64`) with an ISO 4217
//!   code in upper case; [`money`] converts Duffel's decimal strings without floats.

pub mod error;
pub mod money;

pub mod duffel;
pub mod email;
pub mod kms;
pub mod sms;
pub mod stripe;
#[cfg(test)]
mod testing;

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer};
use zeroize::Zeroize;

pub use duffel::{
    AirlineChange, CabinClass, CreateOrder, DuffelClient, DuffelConfig, DuffelError, FlightsApi,
    IdentityDocument, Offer, OfferSearch, OfferSlice, Order, OrderCancellation, OrderLookup,
    OrderPassenger, PassengerSpec, SliceSpec,
};
pub use email::{
    Attachment, EmailApi, EmailConfig, EmailError, OutgoingEmail, ResendClient, SentEmail,
};
pub use error::FailureClass;
pub use sms::{SentSms, SmsApi, SmsConfig, SmsError, TwilioClient};
pub use stripe::{
    AuthorizePayment, PaymentIntentState, PaymentIntentSummary, PaymentsApi, RefundReason,
    RefundRequest, RefundSummary, StripeApiError, StripeConfig, StripePayments,
};

/// A provider API key. It never prints (`Debug` and `Display` show `***`), is not
/// `Serialize`, and its memory is wiped on drop. Read it with [`ApiKey::expose`] only where it
/// goes into an `Authorization` header.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no key was configured.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for ApiKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `[providers.*]`: the three clients' settings. Keys come from the environment (e.g.
/// `FLEET_PROVIDERS__STRIPE__SECRET_KEY`); an empty key leaves that provider unconfigured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Stripe.
    pub stripe: StripeConfig,
    /// Duffel.
    pub duffel: DuffelConfig,
    /// Resend.
    pub email: EmailConfig,
    /// Twilio (text messages).
    pub sms: SmsConfig,
    /// AWS KMS (the PII data keys' master key); unused until its secret is set.
    pub kms: kms::KmsConfig,
}

impl ProvidersConfig {
    /// All three providers served at one base URL (a loopback stand-in such as the sandbox)
    /// with the given keys and email sender, other settings at their defaults.
    pub fn all_at(
        base_url: &str,
        stripe_key: &str,
        duffel_token: &str,
        email_key: &str,
        email_from: &str,
    ) -> Self {
        Self {
            stripe: StripeConfig {
                base_url: base_url.to_owned(),
                secret_key: ApiKey::new(stripe_key),
                ..StripeConfig::default()
            },
            duffel: DuffelConfig {
                base_url: base_url.to_owned(),
                access_token: ApiKey::new(duffel_token),
                ..DuffelConfig::default()
            },
            email: EmailConfig {
                base_url: base_url.to_owned(),
                api_key: ApiKey::new(email_key),
                from: email_from.to_owned(),
                ..EmailConfig::default()
            },
            // Twilio's test sender and a sandbox account: SMS at the same stand-in.
            sms: SmsConfig {
                base_url: base_url.to_owned(),
                account_sid: SANDBOX_TWILIO_ACCOUNT.to_owned(),
                auth_token: ApiKey::new("twilio_test_sandbox"),
                from: "+15005550006".to_owned(),
                ..SmsConfig::default()
            },
            // Not used unless a secret is set (the environment keyring is the default).
            kms: kms::KmsConfig {
                base_url: base_url.to_owned(),
                access_key_id: "AKIDSANDBOX".to_owned(),
                ..kms::KmsConfig::default()
            },
        }
    }
}

/// The Twilio account [`ProvidersConfig::all_at`] uses at a loopback stand-in.
pub const SANDBOX_TWILIO_ACCOUNT: &str = "AC00000000000000000000000000000000";

/// Who hears about every provider call: the engine's metrics (`fleet_provider_call_seconds`).
/// The domain's clients cannot see the engine, so the engine installs one at start
/// ([`set_call_observer`]); without one, calls are not observed.
pub trait CallObserver: Send + Sync {
    /// One call to `provider` (`stripe`, `duffel`, `resend`) at `endpoint` (the client's
    /// operation, `create_order`, …) took `seconds` and ended `outcome`: `ok`, or its
    /// [`FailureClass::as_str`].
    fn observed(
        &self,
        provider: &'static str,
        endpoint: &'static str,
        seconds: f64,
        outcome: &'static str,
    );
}

static OBSERVER: std::sync::OnceLock<Box<dyn CallObserver>> = std::sync::OnceLock::new();

/// Installs the process's call observer (the first one wins; later calls return false).
pub fn set_call_observer(o: Box<dyn CallObserver>) -> bool {
    OBSERVER.set(o).is_ok()
}

/// Tells the observer, if any, about one call begun at `started`.
pub(crate) fn observe(
    provider: &'static str,
    endpoint: &'static str,
    started: std::time::Instant,
    outcome: Result<(), FailureClass>,
) {
    if let Some(o) = OBSERVER.get() {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(c) => c.as_str(),
        };
        o.observed(provider, endpoint, started.elapsed().as_secs_f64(), outcome);
    }
}

/// Whether `id` is a provider id with one of `prefixes` (`pi_…`, `off_…`, `re_…`): the prefix,
/// then one or more of `[A-Za-z0-9_]`. Checked before an id reaches the schema or a log.
pub fn is_provider_id(id: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        id.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    })
}

/// A configuration problem found by a client's `validate` (names the key, never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider configuration: {0}")]
pub struct ProviderConfigError(pub String);

/// Checks a base URL: `http://` or `https://`, with a host. Returns it without a trailing `/`.
fn normalize_base_url(field: &str, url: &str) -> Result<String, ProviderConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(trimmed.to_owned()),
        _ => Err(ProviderConfigError(format!(
            "{field} must be an http:// or https:// URL with a host"
        ))),
    }
}

/// A reqwest client for one provider: the given budgets, no redirects (a redirected POST could
/// repeat a side effect), rustls for `https://`, plain `http://` for the sandbox.
fn http_client(
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client, ProviderConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("parker-flight-fleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| ProviderConfigError("HTTP client could not be built".into()))
}

/// Deserializes a humantime duration (`"30s"`, `"500ms"`), like the fleet's settings.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_and_display_are_redacted() {
        let key = ApiKey::new("sk_test_very_secret");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(format!("{key}"), "***");
        assert_eq!(key.expose(), "sk_test_very_secret");
    }

    #[test]
    fn config_debug_never_prints_keys() {
        let stripe: StripeConfig =
            serde_json::from_value(serde_json::json!({"secret_key": "sk_live_abc123"})).unwrap();
        let duffel: DuffelConfig =
            serde_json::from_value(serde_json::json!({"access_token": "duffel_live_xyz"})).unwrap();
        let email: EmailConfig = serde_json::from_value(serde_json::json!({
            "api_key": "re_topsecret", "from": "Parker Flight <bookings@example.com>"
        }))
        .unwrap();
        let printed = format!("{stripe:?} {duffel:?} {email:?}");
        for secret in ["sk_live_abc123", "duffel_live_xyz", "re_topsecret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("***"));
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        assert_eq!(
            normalize_base_url("x", "http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_base_url("x", "https://api.duffel.com").unwrap(),
            "https://api.duffel.com"
        );
        for bad in ["", "api.duffel.com", "ftp://x", "http://", "https:///path"] {
            assert!(normalize_base_url("x", bad).is_err(), "{bad}");
        }
    }
}
