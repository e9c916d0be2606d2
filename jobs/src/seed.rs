//! Seeding valid domain rows — a user, a traveler profile (passport sealed with the keyring), a
//! saved card and a campaign — for tests, `fleet seed` and `fleet demo`. One place that knows
//! the schema's constraints, so fixtures stay valid as the schema evolves. Staging data only:
//! every name, address and passport number here is synthetic.

use crate::Db;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use uuid::Uuid;

use crate::pii::{Keyring, PiiError};

/// Why a seed row could not be written (nothing of that user was).
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The database refused the rows.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The passport could not be sealed.
    #[error(transparent)]
    Pii(#[from] PiiError),
}

/// The distinctive traveler of the demo mix (seed number 0), whose passport and e-mail must
/// appear in no log, error or page of a run.
pub const CANARY_PASSPORT: &str = "PZQX9931177";
/// See [`CANARY_PASSPORT`].
pub const CANARY_EMAIL: &str = "distinctive.traveler.7741@example.test";
/// A distinctive mobile number seeded for traveler 1 (who chose text messages): it must never
/// appear in logs or output.
pub const CANARY_PHONE: &str = "+14155550199";

/// The routes of the demo mix, in rotation: every sandbox route scenario (docs/sandbox.md),
/// and a normal majority.
pub const DEMO_ROUTES: [(&str, &str); 12] = [
    ("LHR", "JFK"),
    ("LHR", "CDG"),
    ("LHR", "AMS"),
    ("LHR", "DUB"),
    ("LHR", "MAD"),
    ("LHR", "FRA"),
    ("LHR", "BCN"),
    ("LHR", "LIS"),
    ("LHR", "ZRH"),
    ("MAN", "JFK"),
    ("EDI", "LAX"),
    ("LGW", "SFO"),
];

/// The demo's deterministic mix for user `n`: every sandbox route scenario, scenario cards
/// (declined, authentication required, insufficient funds), a few campaigns priced below every
/// fare, a few cards that expire before their campaign ends, and the canary traveler at 0.
pub fn demo_mix(n: usize) -> CampaignSeed {
    let mut s = CampaignSeed::new(n);
    let (o, d) = DEMO_ROUTES[n % DEMO_ROUTES.len()];
    s.origin = o.into();
    s.destination = d.into();
    s.max_price = if n % 17 == 5 {
        "20.00".into()
    } else {
        "2500.00".into()
    };
    s.payment_method = match n % 23 {
        3 => format!("pm_card_chargeDeclined__{n}"),
        7 => format!("pm_card_authenticationRequired__{n}"),
        11 => format!("pm_card_chargeDeclinedInsufficientFunds__{n}"),
        _ => format!("pm_card_visa__{n}"),
    };
    if n % 9 == 4 {
        // A card that expires before the campaign ends (but after its travel window opens, so
        // it can still pay): reminder expected.
        let soon = Utc::now() + Duration::days(60);
        s.card_exp_month = soon.month() as i16;
        s.card_exp_year = soon.year() as i16;
    }
    if n % 4 == 1 {
        // A quarter of the travelers chose text messages as well as email; one in 50 gave a
        // number Twilio refuses (its test number for "invalid"): their texts fail, alone.
        s.phone = Some(if n % 50 == 13 {
            "+15005550001".to_owned()
        } else if n == 1 {
            CANARY_PHONE.to_owned()
        } else {
            format!("+1415555{:04}", n % 10_000)
        });
        s.notification_preferences = serde_json::json!({"default": ["email", "sms"]});
    }
    if n == 0 {
        s.email = CANARY_EMAIL.into();
        s.passport = CANARY_PASSPORT.into();
    }
    s
}

/// What to seed. `CampaignSeed::new(n)` gives a valid, deterministic default for seed number n.
#[derive(Debug, Clone)]
pub struct CampaignSeed {
    /// User and traveler e-mail.
    pub email: String,
    /// Traveler name.
    pub full_name: String,
    /// Passport number (sealed before it is stored).
    pub passport: String,
    /// Stripe payment method id; a sandbox scenario card may carry a `__suffix`.
    pub payment_method: String,
    /// Card expiry.
    pub card_exp_month: i16,
    /// Card expiry year.
    pub card_exp_year: i16,
    /// IATA origin.
    pub origin: String,
    /// IATA destination.
    pub destination: String,
    /// Days from today to the start of the departure window (the window is 7 days).
    pub departs_in_days: i64,
    /// Maximum price, decimal string in `currency`.
    pub max_price: String,
    /// ISO currency.
    pub currency: String,
    /// Campaign status.
    pub status: String,
    /// Days until the campaign expires (≤ 366).
    pub expires_in_days: i64,
    /// How long from now until its first search is due (0: due at once).
    pub first_search_in: std::time::Duration,
    /// The account's mobile (E.164), for text messages.
    pub phone: Option<String>,
    /// The account's `notification_preferences` (`{}`: email for everything).
    pub notification_preferences: serde_json::Value,
}

impl CampaignSeed {
    /// A valid default for seed number `n` (LHR→JFK, a good card, $900 max).
    pub fn new(n: usize) -> Self {
        let next_year = (Utc::now().year() + 2) as i16;
        Self {
            email: format!("traveler{n}@example.test"),
            full_name: format!("Traveler Number{n}"),
            passport: format!("P{:08}", 10_000_000 + n),
            payment_method: format!("pm_card_visa__{n}"),
            card_exp_month: 12,
            card_exp_year: next_year,
            origin: "LHR".into(),
            destination: "JFK".into(),
            departs_in_days: 30,
            max_price: "900.00".into(),
            currency: "USD".into(),
            status: "active".into(),
            expires_in_days: 180,
            first_search_in: std::time::Duration::ZERO,
            phone: None,
            notification_preferences: serde_json::json!({}),
        }
    }
}

/// Ids of what was seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    /// users.id
    pub user_id: Uuid,
    /// traveler_profiles.id
    pub profile_id: Uuid,
    /// payment_methods.id
    pub payment_method_id: Uuid,
    /// campaigns.id
    pub campaign_id: Uuid,
}

/// Inserts one user with a profile, a card and a campaign (consent given, search due now).
pub async fn seed_campaign(
    db: &Db,
    keyring: &Keyring,
    s: &CampaignSeed,
) -> Result<Seeded, SeedError> {
    let mut tx = db.begin().await?;
    let user_id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (email, phone, notification_preferences) VALUES ($1, $2, $3)
         RETURNING id",
    )
    .bind(&s.email)
    .bind(&s.phone)
    .bind(&s.notification_preferences)
    .fetch_one(&mut *tx)
    .await?;
    let profile_id = Uuid::new_v4();
    let sealed = keyring.encrypt(profile_id, &s.passport)?;
    sqlx::query(
        "INSERT INTO traveler_profiles (id, user_id, full_name, date_of_birth, gender, email, phone,
                                        passport_number_enc, encryption_key_version, passport_country,
                                        passport_expiry)
         VALUES ($1, $2, $3, DATE '1985-04-12', 'F', $4, '+447700900123', $5, $6, 'GB', current_date + 3000)",
    )
    .bind(profile_id)
    .bind(user_id)
    .bind(&s.full_name)
    .bind(&s.email)
    .bind(&sealed.bytes)
    .bind(sealed.key_version)
    .execute(&mut *tx)
    .await?;
    let payment_method_id: Uuid = sqlx::query_scalar(
        "INSERT INTO payment_methods (user_id, stripe_customer_id, stripe_payment_method_id, brand, last4,
                                      exp_month, exp_year, is_default)
         VALUES ($1, $2, $3, 'visa', '4242', $4, $5, true) RETURNING id",
    )
    .bind(user_id)
    .bind(format!("cus_{}", user_id.simple()))
    .bind(&s.payment_method)
    .bind(s.card_exp_month)
    .bind(s.card_exp_year)
    .fetch_one(&mut *tx)
    .await?;
    let start: NaiveDate = (Utc::now() + Duration::days(s.departs_in_days)).date_naive();
    let campaign_id: Uuid = sqlx::query_scalar(
        "INSERT INTO campaigns (user_id, traveler_profile_id, payment_method_id, origin, destination,
                                departure_date_start, departure_date_end, max_price, currency, status,
                                consent_at, next_search_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6 + 7, $7::numeric, $8, $9, now(),
                 now() + $11 * interval '1 millisecond', now() + $10 * interval '1 day')
         RETURNING id",
    )
    .bind(user_id)
    .bind(profile_id)
    .bind(payment_method_id)
    .bind(&s.origin)
    .bind(&s.destination)
    .bind(start)
    .bind(&s.max_price)
    .bind(&s.currency)
    .bind(&s.status)
    .bind(s.expires_in_days as f64)
    .bind(s.first_search_in.as_millis() as f64)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Seeded {
        user_id,
        profile_id,
        payment_method_id,
        campaign_id,
    })
}

/// The domain of every seeded address: seed data is recognisable, and never mixed with real
/// users.
pub const SEED_EMAIL_DOMAIN: &str = "@example.test";

/// The seed mixes `fleet seed --mix` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// LHR→JFK, a good card, $900 max: every campaign books.
    Simple,
    /// The demo's mix: every sandbox scenario, scenario cards, unbookable prices, expiring
    /// cards ([`demo_mix`]).
    Demo,
}

impl Mix {
    /// The seed for user `n`.
    pub fn seed(self, n: usize) -> CampaignSeed {
        match self {
            Mix::Simple => CampaignSeed::new(n),
            Mix::Demo => demo_mix(n),
        }
    }
}

/// Users that are not seed data (their address is not `…@example.test`): `fleet seed`
/// refuses a database that holds any.
pub async fn count_real_users(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE lower(email) NOT LIKE '%' || $1")
        .bind(SEED_EMAIL_DOMAIN)
        .fetch_one(db)
        .await
}

/// Whether seed `s` is already there: its user's address, or its card (an interrupted seed
/// resumes past those it wrote; another mix's seed of the same number shares its card, e.g.
/// the demo's canary traveler and the simple mix's first).
pub async fn seed_exists(db: &Db, s: &CampaignSeed) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))
             OR EXISTS (SELECT 1 FROM payment_methods WHERE stripe_payment_method_id = $2)",
    )
    .bind(&s.email)
    .bind(&s.payment_method)
    .fetch_one(db)
    .await
}

/// Inserts `n` campaigns copied from `templates` (round robin: copy `g` takes template
/// `g % templates.len()`'s user, profile, card, route, dates, price, currency, cabin, status
/// and expiry), in one statement, with fresh ids, consent given now, and `next_search_at =
/// first_due + g · gap`, so every copy has its own search window. For benchmarks at 100,000+
/// campaigns, where one transaction per seeded user would take longer than what is measured.
/// Then analyzes the table, as one should after a bulk load (autovacuum would, within its
/// naptime), so what runs next is planned on the new row count. Returns the rows inserted.
pub async fn copy_campaigns(
    db: &Db,
    templates: &[Uuid],
    n: u64,
    first_due: DateTime<Utc>,
    gap: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    if templates.is_empty() || n == 0 {
        return Ok(0);
    }
    let r = sqlx::query(
        "INSERT INTO campaigns (user_id, traveler_profile_id, payment_method_id, origin, destination,
                                departure_date_start, departure_date_end, return_date_start,
                                return_date_end, max_price, currency, cabin_class, status,
                                consent_at, next_search_at, expires_at)
         SELECT c.user_id, c.traveler_profile_id, c.payment_method_id, c.origin, c.destination,
                c.departure_date_start, c.departure_date_end, c.return_date_start,
                c.return_date_end, c.max_price, c.currency, c.cabin_class, c.status,
                now(), $2 + g * $3 * interval '1 microsecond', c.expires_at
         FROM generate_series(0::bigint, $4 - 1) AS g
         JOIN unnest($1::uuid[]) WITH ORDINALITY AS t(id, ord)
           ON t.ord = g % cardinality($1::uuid[]) + 1
         JOIN campaigns c ON c.id = t.id",
    )
    .bind(templates)
    .bind(first_due)
    .bind(gap.as_micros() as f64)
    .bind(n as i64)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE campaigns").execute(db).await?;
    Ok(r.rows_affected())
}
