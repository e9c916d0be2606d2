//! How a sandbox is configured.

/// How the sandbox behaves. `SandboxConfig::default()` is a quiet sandbox with no webhooks.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Seeds the deterministic fare generator: same seed and criteria, same offers and prices.
    pub seed: u64,
    /// Where to deliver signed webhook events; with `None` nothing is delivered (events are
    /// still counted in [`Counters::webhook_events_emitted`](crate::Counters::webhook_events_emitted)).
    pub webhook: Option<WebhookTarget>,
    /// Delay of an order response on a route in the `slow` scenario. Default 3 s.
    pub slow_ms: u64,
    /// How many requests for a `rate_limited` route get a 429 before the route recovers.
    /// Default 2.
    pub rate_limit_burst: u32,
    /// Artificial processing time of every Stripe POST (between claiming the idempotency key and
    /// answering); lets tests observe the "key in flight" 409. Default 0.
    pub stripe_latency_ms: u64,
    /// First backoff between webhook delivery attempts (doubled each retry). Default 200 ms.
    pub webhook_backoff_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            webhook: None,
            slow_ms: 3_000,
            rate_limit_burst: 2,
            stripe_latency_ms: 0,
            webhook_backoff_ms: 200,
        }
    }
}

/// Webhook endpoints and the secrets used to sign deliveries to them. `Debug` redacts the
/// secrets.
#[derive(Clone)]
pub struct WebhookTarget {
    /// Where Stripe events are POSTed, signed in `Stripe-Signature`.
    pub stripe_url: String,
    /// The HMAC key of `Stripe-Signature`: the receiver's signing secret (`whsec_…`).
    pub stripe_secret: String,
    /// Where Duffel events are POSTed, signed in `X-Duffel-Signature`.
    pub duffel_url: String,
    /// The HMAC key of `X-Duffel-Signature`: the receiver's signing secret.
    pub duffel_secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("stripe_url", &self.stripe_url)
            .field("stripe_secret", &"<redacted>")
            .field("duffel_url", &self.duffel_url)
            .field("duffel_secret", &"<redacted>")
            .finish()
    }
}
