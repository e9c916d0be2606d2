//! What job handlers need beyond the database: the PII keyring and the provider clients.
//! Built once per process ([`Deps::from_config`]) and registered with the worker as an
//! [`Extensions`](crate::Extensions) value; handlers reach it through [`HasDeps::deps`].

use std::sync::Arc;

use crate::{
    pii::Keyring,
    pii_keys::KeyService,
    providers::{
        DuffelClient, EmailApi, FlightsApi, PaymentsApi, ProviderConfigError, ProvidersConfig,
        ResendClient, SmsApi, StripePayments, TwilioClient,
    },
    JobContext, JobError,
};

/// Shared dependencies of job handlers. Each is optional so a process carries only what its
/// kinds use; a handler that needs a missing one fails fatally (misconfiguration: retrying
/// cannot help, and the dead job is replayable once the process is configured).
#[derive(Clone, Default)]
pub struct Deps {
    /// Where the PII keys come from: KMS, or the environment keyring (`FLEET_PII_KEYS`).
    pub keys: Option<Arc<KeyService>>,
    /// Stripe.
    pub payments: Option<Arc<dyn PaymentsApi>>,
    /// Duffel.
    pub flights: Option<Arc<dyn FlightsApi>>,
    /// Resend.
    pub email: Option<Arc<dyn EmailApi>>,
    /// Twilio (text messages).
    pub sms: Option<Arc<dyn SmsApi>>,
}

impl Deps {
    /// The keyring and every provider whose key is set. A provider with an empty key is left
    /// unconfigured (logged: its kinds fail until it is set); any other bad setting is an
    /// error naming `providers.<which>`.
    pub fn from_config(
        providers: &ProvidersConfig,
        keyring: Keyring,
    ) -> Result<Self, ProviderConfigError> {
        Self::with_key_service(providers, KeyService::Env(Arc::new(keyring)))
    }

    /// [`Deps::from_config`] with the PII keys from `keys` (KMS, or a keyring).
    pub fn with_key_service(
        providers: &ProvidersConfig,
        keys: KeyService,
    ) -> Result<Self, ProviderConfigError> {
        let bad = |which: &str, e: ProviderConfigError| {
            ProviderConfigError(format!("providers.{which}: {}", e.0))
        };
        let mut deps = Deps {
            keys: Some(Arc::new(keys)),
            ..Deps::default()
        };
        let p = providers;
        if p.stripe.secret_key.expose().is_empty() {
            tracing::warn!("providers.stripe.secret_key is empty: payment kinds will fail");
        } else {
            deps.payments = Some(Arc::new(
                StripePayments::new(&p.stripe).map_err(|e| bad("stripe", e))?,
            ));
        }
        if p.duffel.access_token.expose().is_empty() {
            tracing::warn!("providers.duffel.access_token is empty: flight kinds will fail");
        } else {
            deps.flights = Some(Arc::new(
                DuffelClient::new(&p.duffel).map_err(|e| bad("duffel", e))?,
            ));
        }
        if p.email.api_key.expose().is_empty() {
            tracing::warn!("providers.email.api_key is empty: email kinds will fail");
        } else {
            deps.email = Some(Arc::new(
                ResendClient::new(&p.email).map_err(|e| bad("email", e))?,
            ));
        }
        if p.sms.auth_token.expose().is_empty() {
            tracing::info!("providers.sms.auth_token is empty: no text messages (travelers who chose SMS are told by email)");
        } else {
            deps.sms = Some(Arc::new(
                TwilioClient::new(&p.sms).map_err(|e| bad("sms", e))?,
            ));
        }
        Ok(deps)
    }

    /// The keyring to seal and open with now ([`KeyService::keyring`]: with KMS, unwrapped
    /// data keys read on `conn`, cached for a bounded time). No keys at all is a fatal error: a
    /// worker running PII kinds without keys is misconfigured and retrying cannot help; KMS
    /// failing is the job's retryable error.
    pub async fn keyring(&self, conn: &mut sqlx::PgConnection) -> Result<Arc<Keyring>, JobError> {
        self.keys
            .as_deref()
            .ok_or_else(|| {
                JobError::fatal("no PII keys configured (FLEET_PII_KEYS or [providers.kms])")
            })?
            .keyring(conn)
            .await
    }

    /// [`Deps::keyring`] on a connection of its own from `db`, holding no lock: call it before
    /// a transaction that locks rows, so a KMS call (on a cache miss) never holds them.
    pub async fn keyring_for(&self, db: &crate::Db) -> Result<Arc<Keyring>, JobError> {
        let mut tx = db.begin().await?;
        let keyring = self.keyring(&mut tx).await?;
        tx.commit().await?;
        Ok(keyring)
    }

    /// The payments client, or a fatal error.
    pub fn payments(&self) -> Result<&dyn PaymentsApi, JobError> {
        self.payments
            .as_deref()
            .ok_or_else(|| JobError::fatal("no payments provider configured ([providers.stripe])"))
    }

    /// The flights client, or a fatal error.
    pub fn flights(&self) -> Result<&dyn FlightsApi, JobError> {
        self.flights
            .as_deref()
            .ok_or_else(|| JobError::fatal("no flights provider configured ([providers.duffel])"))
    }

    /// The text-message client, if configured.
    pub fn sms(&self) -> Option<&dyn SmsApi> {
        self.sms.as_deref()
    }

    /// The email client, or a fatal error.
    pub fn email(&self) -> Result<&dyn EmailApi, JobError> {
        self.email
            .as_deref()
            .ok_or_else(|| JobError::fatal("no email provider configured ([providers.email])"))
    }
}

/// How a handler reaches the process's [`Deps`].
pub trait HasDeps {
    /// The registered [`Deps`], or a fatal error when the worker registered none.
    fn deps(&self) -> Result<&Deps, JobError>;

    /// The flights client bound to this attempt: budgets its successful answers say are used
    /// up are reported to the attempt's [`RateLimits`](crate::RateLimits), so the engine empties
    /// them fleet-wide when the attempt ends. Handlers call Duffel through this, never through
    /// [`Deps::flights`] (whose reports would reach no one).
    fn flights(&self) -> Result<Arc<dyn FlightsApi>, JobError>;
}

impl HasDeps for JobContext {
    fn deps(&self) -> Result<&Deps, JobError> {
        self.extension::<Deps>()
    }

    fn flights(&self) -> Result<Arc<dyn FlightsApi>, JobError> {
        Ok(self
            .deps()?
            .flights()?
            .reporting_to(self.rate_limits.clone()))
    }
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}
