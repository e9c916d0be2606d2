//! How a sandbox is configured.

use std::time::Duration;

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
    /// Time added to every Stripe and Duffel request before it is handled, drawn uniformly
    /// from the range per request (the network and processing time of a real provider call).
    /// `None` (the default): answer at once. Resend, Twilio and `/_sandbox` are never delayed.
    pub provider_latency: Option<LatencyRange>,
}

/// A per-request delay drawn uniformly from `min..=max`, written `100ms..400ms` (or one
/// duration, `250ms`, for a fixed delay), in humantime units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyRange {
    /// Shortest delay.
    pub min: Duration,
    /// Longest delay (≥ `min`).
    pub max: Duration,
}

/// Longest delay a range may name: a provider call slower than this is an outage, which the
/// route scenarios model instead.
const LATENCY_LIMIT: Duration = Duration::from_secs(60);

impl LatencyRange {
    /// One delay, uniform over the range.
    pub fn sample(&self) -> Duration {
        use rand::Rng as _;
        if self.min == self.max {
            return self.min;
        }
        rand::thread_rng().gen_range(self.min..=self.max)
    }
}

impl std::str::FromStr for LatencyRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let one = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|e| format!("latency {s:?}: {part:?} is not a duration like 100ms ({e})"))
        };
        let (min, max) = match s.split_once("..") {
            Some((lo, hi)) => (one(lo)?, one(hi)?),
            None => {
                let d = one(s)?;
                (d, d)
            }
        };
        if min > max {
            return Err(format!(
                "latency {s:?}: the lower bound is above the upper bound"
            ));
        }
        if max > LATENCY_LIMIT {
            return Err(format!(
                "latency {s:?}: at most {}s per call",
                LATENCY_LIMIT.as_secs()
            ));
        }
        Ok(Self { min, max })
    }
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
            provider_latency: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses_a_range_or_one_duration_and_names_what_is_wrong() {
        let r: LatencyRange = "100ms..400ms".parse().unwrap();
        assert_eq!(
            (r.min, r.max),
            (Duration::from_millis(100), Duration::from_millis(400))
        );
        for _ in 0..200 {
            let d = r.sample();
            assert!(r.min <= d && d <= r.max, "{d:?}");
        }
        let fixed: LatencyRange = "250ms".parse().unwrap();
        assert_eq!(fixed.sample(), Duration::from_millis(250));
        for (bad, says) in [
            ("400ms..100ms", "lower bound is above"),
            ("fast", "\"fast\" is not a duration"),
            ("100ms..", "is not a duration"),
            ("1s..2min", "at most 60s"),
        ] {
            let e = bad.parse::<LatencyRange>().unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }
}
