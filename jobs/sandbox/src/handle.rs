//! The handle to one sandbox's shared state.
//!
//! The methods that need the provider modules are defined next to what they call, so that this
//! module depends on none of them: [`Sandbox::router`] and [`Sandbox::start`] in `server`,
//! [`Sandbox::emit_stripe_event`], [`Sandbox::emit_duffel_event`] and
//! [`Sandbox::settle_refund`] in `webhooks`, [`Sandbox::airline_change`] in `duffel`.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    config::SandboxConfig,
    kms_objects::{key_material_id, KmsFault},
    scenarios::{Outage, Provider, Scenario},
    state::{self, Counters},
};

/// A cheap-to-clone handle to one sandbox's shared state: clones see the same objects,
/// counters and scenarios.
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
    /// A sandbox with no objects, zeroed counters and the default scenario table. It serves
    /// nothing by itself: mount [`Sandbox::router`], or use [`Sandbox::start`] instead.
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

    /// A snapshot of every counter.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// The files attached to the email sent with idempotency key `key`: `(filename, bytes)`,
    /// decoded; empty if none (or no such email).
    pub fn email_attachments(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        self.lock()
            .email_attachments
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets the scenario of a route (`"LHR-JFK"`, case-insensitive) for every later request.
    pub fn set_scenario(&self, route: &str, scenario: Scenario) {
        self.lock().scenarios.set(route, scenario);
    }

    /// The scenario a route currently runs ([`Scenario::Normal`] if it was never set and is not
    /// in the default table).
    pub fn scenario(&self, route: &str) -> Scenario {
        self.lock().scenarios.get(route)
    }

    /// Starts an outage of `provider` for `length` (replacing one in progress): every API
    /// request to it is answered with `status` in the provider's own error shape, before
    /// anything is done. A zero `length` ends it.
    ///
    /// `status` must be one of [`Provider::outage_statuses`]: a server error
    /// ([`OUTAGE_STATUSES`](crate::scenarios::OUTAGE_STATUSES)), or for
    /// [`Provider::Twilio`] also 429 (error 20429, "Too Many Requests").
    ///
    /// # Panics
    /// If `status` is not one of them (a mistake in the calling test).
    pub fn set_outage(&self, provider: Provider, length: std::time::Duration, status: u16) {
        assert!(
            provider.outage_statuses().contains(&status),
            "an outage of {} answers one of {:?}, not {status}",
            provider.as_str(),
            provider.outage_statuses()
        );
        let mut st = self.lock();
        if length.is_zero() {
            st.outages.remove(&provider);
        } else {
            let until = std::time::Instant::now() + length;
            st.outages.insert(provider, Outage { until, status });
        }
    }

    /// The outage `provider` is in now, if any.
    pub fn outage(&self, provider: Provider) -> Option<Outage> {
        let st = self.lock();
        st.outages
            .get(&provider)
            .copied()
            .filter(|o| o.until > std::time::Instant::now())
    }

    /// Counts one request answered by an outage.
    pub(crate) fn count_outage_response(&self, provider: Provider) {
        let mut st = self.lock();
        Counters::bump(&mut st.counters.outage_responses, provider.as_str());
    }

    /// Injects `fault` into every later KMS call until it is cleared with `None`: each call
    /// is answered with the fault's error (Throttling → 400 `ThrottlingException` "Rate
    /// exceeded", Outage → 500 `KMSInternalException`, AccessDenied → 400
    /// `AccessDeniedException` naming the operation's permission) before anything else is
    /// looked at, and does nothing (counted in
    /// [`Counters::kms_refused`](crate::Counters::kms_refused) only).
    pub fn set_kms_fault(&self, fault: Option<KmsFault>) {
        self.lock().kms_fault = fault;
    }

    /// The KMS fault in force, if any.
    pub fn kms_fault(&self) -> Option<KmsFault> {
        self.lock().kms_fault
    }

    /// AWS's automatic key rotation: the key (same id, ARN and alias) gets new key material,
    /// which every later GenerateDataKey, Encrypt and ReEncrypt wraps with; blobs made under
    /// the older material still decrypt.
    pub fn rotate_kms_key_material(&self) {
        let index = self.lock().kms_key.rotate();
        tracing::info!(kms.key_material = index, "sandbox kms key material rotated");
    }

    /// The `KeyMaterialId` new wraps answer with now (64 hex digits; it changes with every
    /// [`Sandbox::rotate_kms_key_material`]).
    pub fn kms_key_material_id(&self) -> String {
        key_material_id(self.lock().kms_key.current())
    }

    /// The configuration the sandbox was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, state::State> {
        // A panic while holding the lock leaves the maps usable; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The client webhook deliveries are sent with.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
}
