//! The domain's job kinds, one module per kind (docs/domain.md §3–4). Each module holds the kind's
//! args (ids only, never PII), its handler and its unit tests.

pub mod booking_attempt;
pub mod campaign_scan;
pub mod campaign_search;
pub mod card_expiry_reminder;
pub mod card_update;
pub mod order_reconcile;
pub mod payment_reconcile;
pub mod refund_compensation;
pub mod retention_purge;

use crate::{KindDefaults, Registrar};

/// Defaults of the kinds that re-read a provider object after a webhook (`order_reconcile`,
/// `payment_reconcile`): on the `bookings` queue beside the saga, 15 attempts (a provider
/// outage delays the re-read, never drops it).
pub(crate) fn reconcile_defaults() -> KindDefaults {
    KindDefaults {
        queue: "bookings".into(),
        max_attempts: 15,
        ..KindDefaults::default()
    }
}

/// The domain's rate budgets, with code defaults (`[budgets.<name>]` overrides them). A token
/// is one job attempt, which may make a few calls: the rates sit below the providers' limits.
/// - Duffel publishes no fixed figures ("limits vary by endpoint and account", reported in
///   `ratelimit-limit`/`-remaining`/`-reset`): set these to the account's.
/// - Stripe: 100 requests/s in live mode, 25 in test mode, per account (docs.stripe.com/rate-limits).
/// - Resend: 2 requests/s per team by default (resend.com/docs/api-reference, "Rate limit").
pub fn register_budgets<R: Registrar>(r: &mut R) {
    use crate::job::{budgets, BudgetDefaults};
    r.budget(
        budgets::DUFFEL_SEARCH,
        BudgetDefaults {
            per_second: 5.0,
            burst: 10,
        },
    );
    r.budget(
        budgets::DUFFEL_ORDER,
        BudgetDefaults {
            per_second: 2.0,
            burst: 4,
        },
    );
    r.budget(
        budgets::STRIPE,
        BudgetDefaults {
            per_second: 20.0,
            burst: 20,
        },
    );
    r.budget(
        budgets::RESEND,
        BudgetDefaults {
            per_second: 2.0,
            burst: 2,
        },
    );
}

/// Budgets that order reconciles spend.
pub(crate) fn reconcile_budget_defaults(budget: &str) -> KindDefaults {
    KindDefaults {
        budgets: vec![budget.to_owned()],
        ..reconcile_defaults()
    }
}

/// Registers every domain kind (and the backfill runner) with the engine: the one list of the
/// kinds a fleet worker runs.
pub fn register_all<R: Registrar>(r: &mut R) {
    register_budgets(r);
    r.register::<crate::backfill::RunBackfill>();
    r.register::<booking_attempt::BookingAttempt>();
    r.register::<refund_compensation::RefundCompensation>();
    r.register::<campaign_scan::CampaignScan>();
    r.register::<campaign_search::CampaignSearch>();
    r.register::<card_expiry_reminder::CardExpiryReminder>();
    r.register::<retention_purge::RetentionPurge>();
    r.register::<card_update::CardUpdate>();
    r.register::<payment_reconcile::PaymentReconcile>();
    r.register::<order_reconcile::OrderReconcile>();
}
