//! The domain's job kinds, one module per kind (BRIEF §3–4). Each module holds the kind's
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
