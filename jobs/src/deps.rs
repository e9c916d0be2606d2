//! What job handlers need beyond the database: the PII keyring and, as they land, the
//! provider clients. Built once per process by the engine and shared by every handler.

use std::sync::Arc;

use crate::{
    pii::Keyring,
    providers::{EmailApi, FlightsApi, PaymentsApi},
    JobError,
};

/// Shared dependencies of job handlers. Each is optional so a process carries only what its
/// kinds use; a handler that needs a missing one fails fatally (misconfiguration: retrying
/// cannot help, and the dead job is replayable once the process is configured).
#[derive(Clone, Default)]
pub struct Deps {
    /// PII keyring (`FLEET_PII_KEYS`).
    pub keyring: Option<Arc<Keyring>>,
    /// Stripe.
    pub payments: Option<Arc<dyn PaymentsApi>>,
    /// Duffel.
    pub flights: Option<Arc<dyn FlightsApi>>,
    /// Resend.
    pub email: Option<Arc<dyn EmailApi>>,
}

impl Deps {
    /// The keyring, or a fatal error: a worker running PII kinds without keys is misconfigured
    /// and retrying cannot help.
    pub fn keyring(&self) -> Result<&Keyring, JobError> {
        self.keyring
            .as_deref()
            .ok_or_else(|| JobError::fatal("no PII keyring configured (FLEET_PII_KEYS)"))
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

    /// The email client, or a fatal error.
    pub fn email(&self) -> Result<&dyn EmailApi, JobError> {
        self.email
            .as_deref()
            .ok_or_else(|| JobError::fatal("no email provider configured ([providers.email])"))
    }
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field(
                "keyring",
                &self.keyring.as_ref().map(|k| k.newest_version()),
            )
            .finish()
    }
}
