//! The domain's job kinds, one module per kind (docs/domain.md §3–4). Each module holds the kind's
//! args (ids only, never PII), its handler and its unit tests.

pub mod account_erasure;
pub mod airline_change;
pub mod airline_change_action;
pub mod booking_attempt;
pub mod campaign_health_sweep;
pub mod campaign_scan;
pub mod campaign_search;
pub mod card_detached;
pub mod card_expiry_reminder;
pub mod card_update;
pub mod data_export;
pub mod order_reconcile;
pub mod payment_reconcile;
pub mod pii_key_rotation;
pub mod refund_compensation;
pub mod refund_reconcile;
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
/// - Twilio: a long code sends about 1 message segment a second (more are queued); its API
///   answers 429 (20429) beyond the account's concurrent requests.
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
    r.budget(
        budgets::TWILIO,
        BudgetDefaults {
            per_second: 1.0,
            burst: 5,
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
    r.register::<refund_reconcile::RefundReconcile>();
    r.register::<refund_reconcile::RefundSweep>();
    r.register::<campaign_scan::CampaignScan>();
    r.register::<campaign_search::CampaignSearch>();
    r.register::<card_expiry_reminder::CardExpiryReminder>();
    r.register::<retention_purge::RetentionPurge>();
    r.register::<card_update::CardUpdate>();
    r.register::<payment_reconcile::PaymentReconcile>();
    r.register::<order_reconcile::OrderReconcile>();
    r.register::<airline_change::AirlineChangeDetected>();
    r.register::<airline_change_action::AirlineChangeAction>();
    r.register::<card_detached::CardDetached>();
    r.register::<campaign_health_sweep::CampaignHealthSweep>();
    r.register::<account_erasure::AccountErasure>();
    r.register::<data_export::DataExport>();
    r.register::<pii_key_rotation::PiiKeyRotation>();
}

/// Money a saga job still moves, and the job that moves it: the booking attempt of an
/// `authorized` booking (it holds the card), the refund of a `cancelled` one that was
/// captured (it owes the money back).
#[derive(Debug, Clone)]
pub struct MoneyAtStake {
    /// The booking, its amount and status.
    pub booking: crate::booking::MoneyAtStakeRow,
    /// `"card hold"` or `"refund owed"`.
    pub what: &'static str,
    /// The jobs that move it.
    pub job: crate::booking::JobSelector,
}

/// Every booking whose money is still moving (at most `limit`), with the job that moves it.
pub async fn money_at_stake(db: &crate::Db, limit: i64) -> Result<Vec<MoneyAtStake>, sqlx::Error> {
    use crate::booking::JobSelector;
    use crate::Job;
    let rows = crate::booking::list_money_at_stake(db, limit).await?;
    Ok(rows
        .into_iter()
        .filter_map(|b| {
            let (what, job) = if b.status == "authorized" {
                let c = b.campaign_id?;
                let job = JobSelector {
                    kind: booking_attempt::BookingAttempt::KIND,
                    key: None,
                    args: Some(
                        serde_json::json!({ "campaign_id": c, "offer_id": b.duffel_offer_id }),
                    ),
                };
                ("card hold", job)
            } else {
                let job = JobSelector {
                    kind: refund_compensation::RefundCompensation::KIND,
                    key: Some(refund_compensation::refund_key(b.id)),
                    args: None,
                };
                ("refund owed", job)
            };
            Some(MoneyAtStake {
                booking: b,
                what,
                job,
            })
        })
        .collect())
}

/// The jobs behind a booking: its campaign's searches and booking attempts, its refund, and
/// the webhook follow-ups about its order or PaymentIntent.
///
/// Here, beside the kinds, rather than in `booking` (which the kinds use): the domain table's
/// owner does not depend on the jobs that act on it.
pub fn jobs_of_booking(v: &crate::booking::BookingView) -> Vec<crate::booking::JobSelector> {
    use crate::booking::JobSelector;
    use crate::Job;
    use booking_attempt::BookingAttempt;
    use campaign_search::CampaignSearch;
    use order_reconcile::OrderReconcile;
    use payment_reconcile::PaymentReconcile;
    use refund_compensation::{refund_key, RefundCompensation};
    let mut out = vec![
        JobSelector {
            kind: RefundCompensation::KIND,
            key: Some(refund_key(v.id)),
            args: None,
        },
        JobSelector {
            kind: OrderReconcile::KIND,
            key: None,
            args: Some(serde_json::json!({ "booking_id": v.id })),
        },
    ];
    if let Some(c) = v.campaign_id {
        out.push(JobSelector {
            kind: BookingAttempt::KIND,
            key: None,
            args: Some(serde_json::json!({ "campaign_id": c, "offer_id": v.offer_id })),
        });
        out.push(JobSelector {
            kind: CampaignSearch::KIND,
            key: None,
            args: Some(serde_json::json!({ "campaign_id": c })),
        });
    }
    if let Some(o) = &v.order_id {
        out.push(JobSelector {
            kind: OrderReconcile::KIND,
            key: None,
            args: Some(serde_json::json!({ "order_id": o })),
        });
    }
    if let Some(pi) = &v.payment_intent_id {
        out.push(JobSelector {
            kind: PaymentReconcile::KIND,
            key: None,
            args: Some(serde_json::json!({ "payment_intent_id": pi })),
        });
    }
    for re in v.refunds.iter().filter_map(|r| r.stripe_refund_id.as_ref()) {
        out.push(JobSelector {
            kind: <refund_reconcile::RefundReconcile as Job>::KIND,
            key: None,
            args: Some(serde_json::json!({ "stripe_refund_id": re })),
        });
    }
    out
}
