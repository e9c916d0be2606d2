//! Whether an active campaign can still book, checked **before** a fare is found: the
//! traveler's consent to off-session charges, a saved card that is attached and valid when the
//! travel window opens, and a passport valid through the last travel date. A campaign that
//! fails one moves to `action_required` at once and its user is told once per campaign and
//! reason (`campaign-action-required/{campaign}/{code}`, the key the saga uses too), instead
//! of searching for months and learning it when the fare is found.
//!
//! Checked by the search before each search ([`problem_of`]), by `card_detached` when Stripe
//! says a card was removed, and by the daily `campaign_health_sweep` ([`unhealthy`]) for what
//! no event announced (a consent withdrawn in the product — which, as the schema requires,
//! also takes the campaign out of `active` —, a card or passport running out).

use uuid::Uuid;

use crate::{audit, campaign, notify, Db, Deps, JobError};

/// Why a campaign cannot book, and what its user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// `consent_at` is unset: the traveler withdrew consent to off-session charges (SCA/PSD2:
    /// no charge without it). An active campaign cannot be without it (a check constraint):
    /// this is a paused one, found by the sweep.
    ConsentMissing,
    /// No saved card, or Stripe detached it from the customer.
    CardMissing,
    /// The card's last valid day is before the travel window opens (or already passed).
    CardExpiresBeforeTravel,
    /// The passport expires before the last travel date.
    PassportExpiresBeforeTravel,
}

impl Problem {
    /// The code in audit rows and the notification's key.
    pub fn code(self) -> &'static str {
        match self {
            Self::ConsentMissing => "consent_missing",
            Self::CardMissing => "card_missing",
            Self::CardExpiresBeforeTravel => "card_expires_before_travel",
            Self::PassportExpiresBeforeTravel => "passport_expires_before_travel",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        [
            Self::ConsentMissing,
            Self::CardMissing,
            Self::CardExpiresBeforeTravel,
            Self::PassportExpiresBeforeTravel,
        ]
        .into_iter()
        .find(|p| p.code() == code)
    }

    /// What the traveler reads: why the campaign is paused.
    pub fn sentence(self) -> &'static str {
        match self {
            Self::ConsentMissing => {
                "we no longer have your permission to charge your saved card when we find a fare"
            }
            Self::CardMissing => "it has no saved card to pay with (the card was removed)",
            Self::CardExpiresBeforeTravel => {
                "the saved card expires before your travel dates, so it could not pay for them"
            }
            Self::PassportExpiresBeforeTravel => {
                "the traveler's passport expires before the last travel date"
            }
        }
    }
}

/// The problem of an active campaign, first by the order of [`Problem`], as one SQL expression
/// (a card is valid through the last day of its expiry month; dates are UTC).
const PROBLEM_SQL: &str = "CASE
        WHEN c.consent_at IS NULL THEN 'consent_missing'
        WHEN pm.id IS NULL OR pm.detached_at IS NOT NULL THEN 'card_missing'
        WHEN make_date(pm.exp_year, pm.exp_month, 1) + interval '1 month'
             <= greatest(c.departure_date_start::timestamp, now() AT TIME ZONE 'UTC')
            THEN 'card_expires_before_travel'
        WHEN tp.passport_expiry IS NOT NULL
             AND tp.passport_expiry < coalesce(c.return_date_end, c.departure_date_end)
            THEN 'passport_expires_before_travel'
    END";

/// CampaignProblem: what stops active campaign `id` from booking, if anything, with its user
/// (`None` also for a campaign that is not active: nothing to check).
pub async fn problem_of(db: &Db, id: Uuid) -> Result<Option<(Uuid, Problem)>, sqlx::Error> {
    let row: Option<(Uuid, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.user_id, {PROBLEM_SQL}
         FROM campaigns c
         LEFT JOIN payment_methods pm ON pm.id = c.payment_method_id
         LEFT JOIN traveler_profiles tp ON tp.id = c.traveler_profile_id
         WHERE c.id = $1 AND c.status = 'active'"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|(user, code)| Some((user, Problem::from_code(code.as_deref()?)?))))
}

/// CampaignsUnhealthy: up to `limit` campaigns with a problem, with their users: active ones
/// with any, and paused ones without consent (the schema forbids an active campaign without
/// consent, `campaigns_active_has_consent`, so a withdrawal in the product reaches us as a
/// campaign paused without it: resuming it needs the traveler's consent again).
pub async fn unhealthy(db: &Db, limit: i64) -> Result<Vec<(Uuid, Uuid, Problem)>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, user_id, problem FROM (
             SELECT c.id, c.user_id, {PROBLEM_SQL} AS problem
             FROM campaigns c
             LEFT JOIN payment_methods pm ON pm.id = c.payment_method_id
             LEFT JOIN traveler_profiles tp ON tp.id = c.traveler_profile_id
             WHERE c.status = 'active' OR (c.status = 'paused' AND c.consent_at IS NULL)) x
         WHERE problem IS NOT NULL ORDER BY id LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, u, code)| Problem::from_code(&code).map(|p| (c, u, p)))
        .collect())
}

/// [`require_action_for`] with a [`Problem`]'s code and sentence.
pub async fn require_action_and_tell(
    db: &Db,
    deps: &Deps,
    id: Uuid,
    user_id: Uuid,
    problem: Problem,
    noticed_by: &str,
) -> Result<bool, JobError> {
    let why = (problem.code(), problem.sentence());
    require_action_for(db, deps, id, user_id, why, noticed_by).await
}

/// Moves campaign `id` to `action_required` for `why` (a code, and the sentence its user
/// reads: "We paused your auto-booking campaign because {sentence}"), if still active or
/// paused; audits it (`campaign.action_required`, reason and who noticed) and, while it is
/// `action_required`, tells user `user_id` once per campaign and reason
/// (`campaign-action-required/{campaign}/{code}`). Returns whether the campaign moved. The
/// one way a campaign is put to its user: the search, the sweep, a detached card, the saga.
pub async fn require_action_for(
    db: &Db,
    deps: &Deps,
    id: Uuid,
    user_id: Uuid,
    why: (&str, &str),
    noticed_by: &str,
) -> Result<bool, JobError> {
    let (code, sentence) = why;
    let mut tx = db.begin().await?;
    let moved = campaign::require_action(&mut *tx, id).await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if moved {
        audit::record(
            &mut *tx,
            "fleet",
            "campaign.action_required",
            "campaign",
            Some(&id.to_string()),
            &serde_json::json!({"campaign_id": id, "reason": code, "noticed_by": noticed_by}),
        )
        .await?;
    }
    tx.commit().await?;
    if status.as_deref() != Some("action_required") {
        return Ok(false); // paused by its user, cancelled, booked…: nothing to ask of them
    }
    // Also when it did not move here: a re-run after a crash before the email sends it.
    let key = format!("campaign-action-required/{id}/{code}");
    notify::tell(
        db,
        deps,
        user_id,
        "campaign-action-required",
        &key,
        "Your flight search needs your attention",
        &format!(
            "We paused your auto-booking campaign because {sentence}. Please update it in the \
             Parker Flight app so we can keep searching.\n\nParker Flight"
        ),
    )
    .await?;
    Ok(moved)
}

/// Passports valid through the trip but not this many days beyond its last date get a reminder:
/// many countries require six months of validity on entry.
pub const PASSPORT_MARGIN_DAYS: i32 = 180;

/// PassportsExpiringSoon: up to `limit` (user, profile, expiry) of travelers on active
/// campaigns whose passport is valid through the last travel date but expires within
/// [`PASSPORT_MARGIN_DAYS`] after it, and who have not been reminded of that expiry yet.
pub async fn passports_expiring_soon(
    db: &Db,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, chrono::NaiveDate)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT c.user_id, tp.id, tp.passport_expiry
         FROM campaigns c JOIN traveler_profiles tp ON tp.id = c.traveler_profile_id
         WHERE c.status = 'active' AND tp.passport_expiry IS NOT NULL
           AND tp.passport_expiry >= coalesce(c.return_date_end, c.departure_date_end)
           AND tp.passport_expiry < coalesce(c.return_date_end, c.departure_date_end) + $2
           AND NOT EXISTS (
               SELECT 1 FROM notifications n,
                   LATERAL (SELECT 'passport-expiry/' || tp.id || '/'
                                   || to_char(tp.passport_expiry, 'YYYY-MM-DD') AS k) key
               WHERE n.dedupe_key IN (key.k, key.k || '/sms'))
         ORDER BY tp.id LIMIT $1",
    )
    .bind(limit)
    .bind(PASSPORT_MARGIN_DAYS)
    .fetch_all(db)
    .await
}

/// Tells `user_id` once per profile and expiry (`passport-expiry/{profile}/{yyyy-mm-dd}`) that
/// the traveler's passport expires soon after their trip. No passport number in it.
pub async fn remind_passport(
    db: &Db,
    deps: &Deps,
    user_id: Uuid,
    profile_id: Uuid,
    expiry: chrono::NaiveDate,
) -> Result<(), JobError> {
    let key = format!("passport-expiry/{profile_id}/{}", expiry.format("%Y-%m-%d"));
    notify::tell(
        db,
        deps,
        user_id,
        "passport-expiry",
        &key,
        "Your passport expires soon after your trip",
        &format!(
            "The passport of a traveler on one of your Parker Flight campaigns expires on {}, \
             less than six months after the trip's last date. Many countries refuse entry to \
             passports with less than six months left: please check the rules of your \
             destination and renew it if needed, then update the traveler profile.\n\nParker \
             Flight",
            expiry.format("%Y-%m-%d")
        ),
    )
    .await
}
