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

/// Registers every domain kind (and the backfill runner) with the engine: the one list of the
/// kinds a fleet worker runs.
pub fn register_all<R: Registrar>(r: &mut R) {
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
