//! Per-route Duffel scenarios: which failure a route (`ORIGIN-DESTINATION`) plays.
//!
//! The default table is listed in the [module docs](super); every other route is
//! [`Scenario::Normal`].

use std::collections::HashMap;

/// What a route does when searched, re-read and booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Everything succeeds.
    Normal,
    /// Re-reading an offer returns a higher total than the search did.
    PriceRises,
    /// Re-reading an offer → 404 `offer_no_longer_available`; ordering it → 422.
    OfferGone,
    /// Order → 422 `insufficient_balance`.
    InsufficientBalance,
    /// Order → 422 `price_changed`.
    PriceChanged,
    /// The first `rate_limit_burst` requests for the route → 429 with `ratelimit-reset`.
    RateLimited,
    /// Order → 500 and no order is created.
    ServerError,
    /// The order response is delayed by `slow_ms`.
    Slow,
    /// The order is created, but the response is a 500 (the reconcile case).
    OrderCreatedThen500,
}

impl Scenario {
    /// Every scenario, in declaration order.
    pub const ALL: [Scenario; 9] = [
        Scenario::Normal,
        Scenario::PriceRises,
        Scenario::OfferGone,
        Scenario::InsufficientBalance,
        Scenario::PriceChanged,
        Scenario::RateLimited,
        Scenario::ServerError,
        Scenario::Slow,
        Scenario::OrderCreatedThen500,
    ];

    /// The scenario's name, as `POST /_sandbox/scenarios` takes it (`"price_rises"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::PriceRises => "price_rises",
            Scenario::OfferGone => "offer_gone",
            Scenario::InsufficientBalance => "insufficient_balance",
            Scenario::PriceChanged => "price_changed",
            Scenario::RateLimited => "rate_limited",
            Scenario::ServerError => "server_error",
            Scenario::Slow => "slow",
            Scenario::OrderCreatedThen500 => "order_created_then_500",
        }
    }

    /// What the scenario injects and what it tests, in a line for people.
    pub fn injects(self) -> &'static str {
        match self {
            Scenario::Normal => "nothing: every call succeeds",
            Scenario::PriceRises => "fare +8% on re-read; booked if <= max",
            Scenario::OfferGone => "offer gone on re-read; no hold taken",
            Scenario::InsufficientBalance => "order refused: insufficient_balance",
            Scenario::PriceChanged => "order refused: price_changed",
            Scenario::RateLimited => "429s first; jobs snooze, then book",
            Scenario::ServerError => "order 500, nothing made; hold voided",
            Scenario::Slow => "slow order reply; booked after it",
            Scenario::OrderCreatedThen500 => "order made, reply 500; reconciled once",
        }
    }

    /// The scenario named `s`, spelled exactly as [`Scenario::as_str`] spells it.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

/// The routes that play a non-normal scenario out of the box.
pub const DEFAULT_ROUTES: [(&str, Scenario); 8] = [
    ("LHR-CDG", Scenario::PriceRises),
    ("LHR-AMS", Scenario::OfferGone),
    ("LHR-DUB", Scenario::InsufficientBalance),
    ("LHR-MAD", Scenario::PriceChanged),
    ("LHR-FRA", Scenario::RateLimited),
    ("LHR-BCN", Scenario::ServerError),
    ("LHR-LIS", Scenario::Slow),
    ("LHR-ZRH", Scenario::OrderCreatedThen500),
];

/// The scenario `route` (`LHR-JFK`) plays out of the box.
pub fn default_scenario(route: &str) -> Scenario {
    DEFAULT_ROUTES
        .iter()
        .find(|(r, _)| r.eq_ignore_ascii_case(route))
        .map(|(_, s)| *s)
        .unwrap_or(Scenario::Normal)
}

/// Whether `s` looks like `LHR-JFK`: three ASCII letters, `-`, three ASCII letters, any case.
pub fn is_route(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && b[3] == b'-'
        && b[..3]
            .iter()
            .chain(&b[4..])
            .all(|c| c.is_ascii_alphabetic())
}

/// `ORIGIN-DESTINATION` in upper case: the key a route's scenario is looked up by.
pub fn route_key(origin: &str, destination: &str) -> String {
    format!(
        "{}-{}",
        origin.to_ascii_uppercase(),
        destination.to_ascii_uppercase()
    )
}

/// Route → scenario, starting from [`DEFAULT_ROUTES`].
#[derive(Debug, Clone)]
pub(crate) struct ScenarioTable {
    routes: HashMap<String, Scenario>,
}

impl ScenarioTable {
    pub(crate) fn with_defaults() -> Self {
        Self {
            routes: DEFAULT_ROUTES
                .iter()
                .map(|(r, s)| (r.to_string(), *s))
                .collect(),
        }
    }

    pub(crate) fn get(&self, route: &str) -> Scenario {
        self.routes
            .get(&route.to_ascii_uppercase())
            .copied()
            .unwrap_or(Scenario::Normal)
    }

    pub(crate) fn set(&mut self, route: &str, scenario: Scenario) {
        self.routes.insert(route.to_ascii_uppercase(), scenario);
    }
}

/// A provider the sandbox stands in for, as an outage names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// `/v1/…`.
    Stripe,
    /// `/air/…`.
    Duffel,
    /// `/emails`.
    Resend,
    /// `/2010-04-01/Accounts/{AccountSid}/Messages.json` (Programmable Messaging).
    Twilio,
}

impl Provider {
    /// Every provider, in the order `GET /_sandbox/outages` lists them.
    pub const ALL: [Provider; 4] = [
        Provider::Stripe,
        Provider::Duffel,
        Provider::Resend,
        Provider::Twilio,
    ];

    /// Its name in `POST /_sandbox/outages` (`"stripe"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Duffel => "duffel",
            Provider::Resend => "resend",
            Provider::Twilio => "twilio",
        }
    }

    /// The statuses an outage of this provider may answer with: [`OUTAGE_STATUSES`], and for
    /// Twilio also 429 ([`TWILIO_OUTAGE_STATUSES`]).
    pub fn outage_statuses(self) -> &'static [u16] {
        match self {
            Provider::Twilio => &TWILIO_OUTAGE_STATUSES,
            Provider::Stripe | Provider::Duffel | Provider::Resend => &OUTAGE_STATUSES,
        }
    }

    /// The provider named `s`, lower case.
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The statuses an outage may answer with: the server errors the providers document as
/// "something went wrong on our end" (Stripe: 500, 502, 503, 504 with error type `api_error`).
pub const OUTAGE_STATUSES: [u16; 4] = [500, 502, 503, 504];

/// What a Twilio outage may answer with: the server errors, and 429 (Twilio error 20429, "Too
/// Many Requests": "this request is never processed", "always safe to retry"), which plays a
/// Twilio API concurrency limit for as long as the outage lasts.
pub const TWILIO_OUTAGE_STATUSES: [u16; 5] = [429, 500, 502, 503, 504];

/// An outage in progress: every API request to the provider is answered with `status`, before
/// any operation runs (so nothing is created, and Stripe stores no idempotent result), until
/// `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// When it ends.
    pub until: std::time::Instant,
    /// What every request gets meanwhile.
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_name_round_trips() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn unlisted_routes_are_normal_and_settable() {
        let mut t = ScenarioTable::with_defaults();
        assert_eq!(t.get("lhr-cdg"), Scenario::PriceRises);
        assert_eq!(t.get("LHR-JFK"), Scenario::Normal);
        t.set("lhr-jfk", Scenario::Slow);
        assert_eq!(t.get("LHR-JFK"), Scenario::Slow);
        assert!(is_route("LHR-JFK"));
        assert!(!is_route("LHRJFK"));
    }

    #[test]
    fn every_provider_name_round_trips() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
        }
        assert_eq!(Provider::parse("Stripe"), None);
    }

    #[test]
    fn only_twilio_outages_may_answer_429() {
        for p in Provider::ALL {
            assert_eq!(p.outage_statuses().contains(&429), p == Provider::Twilio);
            assert!(OUTAGE_STATUSES
                .iter()
                .all(|s| p.outage_statuses().contains(s)));
        }
    }
}
