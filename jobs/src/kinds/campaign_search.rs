//! The `campaign_search` job kind (docs/domain.md §3): one Duffel search for one campaign; the cheapest
//! offer that meets every criterion becomes a `booking_attempt`.
//!
//! Steps, none of which holds a transaction across the Duffel calls:
//! 1. read the campaign: gone or no longer `active` → cancelled; past `expires_at` → cancelled
//!    (the scan expires it); not due (`next_search_at > now`: this window was already searched)
//!    → done, nothing to do; a booking that is not a definite failure exists → reschedule only
//!    (at most one booking per campaign, ever); it cannot book (no consent, no card or one
//!    expiring before the travel window, a passport expiring before the trip:
//!    [`crate::campaign_health`]) → `action_required` and its user told once, no search;
//! 2. pick the dates (see [`pick_dates`]) and search: `POST /air/offer_requests` then
//!    `GET /air/offers?sort=total_amount` (one adult, the campaign's cabin; two slices when the
//!    campaign has a return window);
//! 3. pick the cheapest offer meeting **every** criterion ([`cheapest_match`]): total ≤
//!    max_price, the campaign's currency, departure (and return) dates inside the windows, one
//!    passenger, the requested slice count, and not expiring within [`OFFER_MIN_VALIDITY`];
//! 4. in **one transaction** with the campaign row locked and re-checked `active`: enqueue
//!    `booking_attempt {campaign_id, offer_id}` with the key `booking_attempt:{campaign_id}`
//!    (transactional outbox) and move `next_search_at` one re-search interval ahead, so the scan
//!    does not fire again while the booking runs. No match → only the reschedule.
//!
//! Errors: Duffel failures map through the client's classification — a 429 snoozes until the
//! `ratelimit-reset` (no attempt charged), transient and ambiguous failures retry with backoff.
//! A definite refusal (`Rejected`/`Invalid`, e.g. a route Duffel will not search) reschedules
//! the campaign first and then fails the job fatally, so a broken campaign is visible as a dead
//! job without being searched again every scan.

use crate::deps::HasDeps;
use crate::job::budgets;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::booking_attempt::BookingAttempt;
use crate::{
    campaign, campaign_health,
    providers::{money, CabinClass, Offer, OfferSearch, PassengerSpec, SliceSpec},
    Job, JobContext, JobError, KindDefaults,
};

/// Time between two searches of a campaign (plus a per-campaign jitter of up to
/// [`RESEARCH_JITTER`], so campaigns created together do not search together forever).
pub const RESEARCH_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// Upper bound of the per-campaign jitter added to [`RESEARCH_INTERVAL`].
pub const RESEARCH_JITTER: Duration = Duration::from_secs(20 * 60);
/// An offer expiring sooner than this is not worth booking (the saga re-reads it, charges,
/// then orders; Duffel offers live ~30 minutes).
pub const OFFER_MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// The earliest departure searched is today (UTC) plus this many days: a same-day departure
/// cannot be booked, charged and ticketed in time to be useful.
pub const MIN_LEAD_DAYS: i64 = 1;

/// Args of the `campaign_search` job: ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSearch {
    /// `campaigns.id`.
    pub campaign_id: Uuid,
    /// The campaign's owner (`campaigns.user_id`): searches take turns by user, so one
    /// user's many campaigns do not starve the others' (docs/limits.md, fairness). Absent in
    /// jobs enqueued before it was added; they simply have no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

/// What one search decided (returned for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchOutcome {
    /// A booking attempt was enqueued for this offer (`duplicate`: one already held the key).
    Matched {
        /// The offer to book.
        offer_id: String,
        /// Its total, minor units.
        total_minor: i64,
        /// The booking attempt's key was already held.
        duplicate: bool,
    },
    /// No offer met every criterion; the campaign was rescheduled.
    NoMatch {
        /// Offers returned by Duffel.
        offers: usize,
    },
    /// Nothing searched: the window was already searched, or a booking exists.
    Skipped(&'static str),
    /// The departure window has no bookable date left; the campaign was expired.
    WindowOver,
}

/// The search criteria of a campaign, as read from its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criteria {
    /// IATA code.
    pub origin: String,
    /// IATA code.
    pub destination: String,
    /// Departure window, inclusive.
    pub departure: (NaiveDate, NaiveDate),
    /// Return window, inclusive (`None`: one way).
    pub return_window: Option<(NaiveDate, NaiveDate)>,
    /// Max total, minor units of `currency`.
    pub max_price_minor: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    /// Cabin.
    pub cabin: CabinClass,
}

/// The dates one search asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchDates {
    /// Outbound date.
    pub departure: NaiveDate,
    /// Return date, for a return trip.
    pub return_date: Option<NaiveDate>,
}

/// **Date policy.** Duffel searches one date per slice, a campaign has windows of dates, so each
/// search takes one date from each window, rotating with `slot` (the number of re-search
/// intervals since the epoch): over successive searches every bookable date — and, for a
/// return trip, every (departure, return) pair — gets searched, with no state to keep.
///
/// Bookable departures are `max(window start, today + MIN_LEAD_DAYS) ..= window end`, capped
/// at the return window's end for a return trip (the return must not precede the departure);
/// returns are `max(return start, departure) ..= return end`. `None` when no departure date is
/// left: the campaign can no longer book anything.
pub fn pick_dates(c: &Criteria, today: NaiveDate, slot: u64) -> Option<SearchDates> {
    let earliest = today + chrono::Duration::days(MIN_LEAD_DAYS);
    let first = c.departure.0.max(earliest);
    let last = match c.return_window {
        Some((_, ret_end)) => c.departure.1.min(ret_end),
        None => c.departure.1,
    };
    if first > last {
        return None;
    }
    let n = (last - first).num_days() as u64 + 1;
    let departure = first + chrono::Duration::days((slot % n) as i64);
    let return_date = c.return_window.map(|(ret_start, ret_end)| {
        let r0 = ret_start.max(departure);
        let m = (ret_end - r0).num_days() as u64 + 1;
        r0 + chrono::Duration::days(((slot / n) % m) as i64)
    });
    Some(SearchDates {
        departure,
        return_date,
    })
}

/// The Duffel offer request for `dates`: one adult, the campaign's cabin.
pub fn offer_search(c: &Criteria, dates: SearchDates) -> OfferSearch {
    let mut slices = vec![SliceSpec {
        origin: c.origin.clone(),
        destination: c.destination.clone(),
        departure_date: dates.departure,
    }];
    if let Some(ret) = dates.return_date {
        slices.push(SliceSpec {
            origin: c.destination.clone(),
            destination: c.origin.clone(),
            departure_date: ret,
        });
    }
    OfferSearch {
        slices,
        passengers: vec![PassengerSpec::Adult],
        cabin_class: c.cabin,
    }
}

/// Whether `offer` meets every criterion of `c` at `now`.
pub fn meets_criteria(offer: &Offer, c: &Criteria, now: DateTime<Utc>) -> bool {
    let in_window = |slice: Option<&crate::providers::OfferSlice>,
                     (lo, hi): (NaiveDate, NaiveDate)| {
        slice
            .and_then(|s| s.departing_at)
            .is_some_and(|t| (lo..=hi).contains(&t.date()))
    };
    let expected_slices = if c.return_window.is_some() { 2 } else { 1 };
    let fresh = offer.expires_at.is_none_or(|at| {
        at > now + chrono::Duration::from_std(OFFER_MIN_VALIDITY).unwrap_or_default()
    });
    offer.total_amount_minor > 0
        && offer.total_amount_minor <= c.max_price_minor
        && offer.currency.eq_ignore_ascii_case(&c.currency)
        && offer.passenger_ids.len() == 1
        && offer.slices.len() == expected_slices
        && in_window(offer.slices.first(), c.departure)
        && c.return_window
            .is_none_or(|w| in_window(offer.slices.get(1), w))
        && fresh
}

/// The cheapest offer meeting every criterion (the server's sort is not relied on).
pub fn cheapest_match<'a>(
    offers: &'a [Offer],
    c: &Criteria,
    now: DateTime<Utc>,
) -> Option<&'a Offer> {
    offers
        .iter()
        .filter(|o| meets_criteria(o, c, now))
        .min_by_key(|o| o.total_amount_minor)
}

/// `max_price` (a `numeric(10,2)` as text) in minor units of `currency`, rounded **down** (a
/// limit must never be exceeded, e.g. `"900.50"` JPY allows 900).
pub fn max_price_minor(max_price: &str, currency: &str) -> Option<i64> {
    let digits = money::minor_digits(currency).ok()?;
    let (int_part, frac) = max_price.split_once('.').unwrap_or((max_price, ""));
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kept: String = frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(digits as usize)
        .collect();
    let scale = 10i64.checked_pow(digits)?;
    let whole: i64 = int_part.parse().ok()?;
    let part: i64 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    whole.checked_mul(scale)?.checked_add(part)
}

/// When the campaign searches next: now + the interval + a jitter fixed per campaign.
pub fn next_search_after(campaign_id: Uuid, now: DateTime<Utc>) -> DateTime<Utc> {
    let jitter_secs = (campaign_id.as_u128() % u128::from(RESEARCH_JITTER.as_secs().max(1))) as i64;
    now + chrono::Duration::from_std(RESEARCH_INTERVAL).unwrap_or_default()
        + chrono::Duration::seconds(jitter_secs)
}

/// The rotation slot of `now` (see [`pick_dates`]).
fn slot(now: DateTime<Utc>) -> u64 {
    (now.timestamp().max(0) as u64) / RESEARCH_INTERVAL.as_secs()
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    status: String,
    origin: String,
    destination: String,
    departure_date_start: NaiveDate,
    departure_date_end: NaiveDate,
    return_date_start: Option<NaiveDate>,
    return_date_end: Option<NaiveDate>,
    max_price: String,
    currency: String,
    cabin_class: String,
    due: bool,
    ended: bool,
    has_booking: bool,
}

impl CampaignRow {
    fn criteria(&self) -> Result<Criteria, JobError> {
        let cabin: CabinClass = serde_json::from_value(json!(self.cabin_class))
            .map_err(|_| JobError::fatal("campaign has an unknown cabin class"))?;
        let max_price_minor = max_price_minor(&self.max_price, &self.currency)
            .ok_or_else(|| JobError::fatal("campaign max_price does not fit its currency"))?;
        Ok(Criteria {
            origin: self.origin.clone(),
            destination: self.destination.clone(),
            departure: (self.departure_date_start, self.departure_date_end),
            return_window: self.return_date_start.zip(self.return_date_end),
            max_price_minor,
            currency: self.currency.clone(),
            cabin,
        })
    }
}

impl Job for CampaignSearch {
    const KIND: &'static str = "campaign_search";

    /// Searches run on the default queue, at most 8 at once per worker (Duffel's rate limit is
    /// per account); a completed search keeps its key an hour, so a scan that raced the
    /// search's reschedule cannot start a second search of the same window.
    fn defaults() -> KindDefaults {
        KindDefaults {
            concurrency: Some(8),
            max_attempts: 8,
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(1800),
            timeout: Duration::from_secs(120),
            idempotency_window: Duration::from_secs(3600),
            // A scan's fan-out must not outrun Duffel's search limit, whatever the fleet's size.
            global_concurrency: Some(20),
            limit_key: Some("user_id".to_owned()),
            budgets: vec![budgets::DUFFEL_SEARCH.to_owned()],
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let outcome = search(&ctx, self.campaign_id).await?;
        match &outcome {
            SearchOutcome::Matched {
                total_minor,
                duplicate,
                ..
            } => tracing::info!(job.id = ctx.job_id, campaign_id = %self.campaign_id,
                total_minor, duplicate, "campaign search matched an offer; booking attempt enqueued"),
            SearchOutcome::NoMatch { offers } => tracing::info!(job.id = ctx.job_id,
                campaign_id = %self.campaign_id, offers, "campaign search found no match"),
            SearchOutcome::Skipped(why) => tracing::info!(job.id = ctx.job_id,
                campaign_id = %self.campaign_id, why, "campaign search skipped"),
            SearchOutcome::WindowOver => tracing::info!(job.id = ctx.job_id,
                campaign_id = %self.campaign_id, "departure window over; campaign expired"),
        }
        Ok(())
    }
}

/// Runs one search of `campaign_id` (see the module docs).
pub async fn search(ctx: &JobContext, campaign_id: Uuid) -> Result<SearchOutcome, JobError> {
    // The checks and the writes they lead to, in one transaction, committed before any
    // provider call: no transaction (and no connection) is held across them.
    let mut tx = ctx.db.begin().await?;
    let row: Option<CampaignRow> = sqlx::query_as(
        "SELECT c.status, c.origin::text AS origin, c.destination::text AS destination,
                c.departure_date_start, c.departure_date_end, c.return_date_start,
                c.return_date_end, c.max_price::text AS max_price, c.currency::text AS currency,
                c.cabin_class,
                coalesce(c.next_search_at <= now(), false) AS due,
                c.expires_at <= now() AS ended,
                EXISTS (SELECT 1 FROM bookings b WHERE b.campaign_id = c.id
                        AND b.status <> 'failed') AS has_booking
         FROM campaigns c WHERE c.id = $1",
    )
    .bind(campaign_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(JobError::Cancel("campaign no longer exists".into()));
    };
    if row.status != "active" {
        return Err(JobError::Cancel(format!(
            "campaign is {}, not active",
            row.status
        )));
    }
    if row.ended {
        return Err(JobError::Cancel(
            "campaign is past its end; the scan expires it".into(),
        ));
    }
    if !row.due {
        return Ok(SearchOutcome::Skipped("window already searched"));
    }
    if row.has_booking {
        reschedule(&mut *tx, campaign_id).await?;
        tx.commit().await?;
        return Ok(SearchOutcome::Skipped("campaign already has a booking"));
    }
    // Can it book at all? A withdrawn consent, a removed or expiring card, a passport that
    // runs out: the user must act now, not when a fare is found months later.
    if let Some((user, problem)) = campaign_health::problem_of(&ctx.db, campaign_id).await? {
        tx.commit().await?;
        campaign_health::require_action_and_tell(
            &ctx.db,
            ctx.deps()?,
            campaign_id,
            user,
            problem,
            "campaign_search",
        )
        .await?;
        return Ok(SearchOutcome::Skipped(problem.code()));
    }
    let criteria = row.criteria()?;
    let now = Utc::now();
    let Some(dates) = pick_dates(&criteria, now.date_naive(), slot(now)) else {
        campaign::expire_unless_booking(&mut *tx, campaign_id).await?;
        tx.commit().await?;
        return Ok(SearchOutcome::WindowOver);
    };
    tx.commit().await?;
    let flights = ctx.flights()?;
    let request = offer_search(&criteria, dates);
    let found = async {
        let id = flights.create_offer_request(&request).await?;
        flights.list_offers(&id).await
    }
    .await;
    let offers = match found {
        Ok(offers) => offers,
        Err(e) => {
            let err = e.to_job_error(Utc::now());
            if !err.is_retryable() {
                // A definite refusal repeats on every scan: push the campaign out first.
                reschedule(&ctx.db, campaign_id).await?;
            }
            return Err(err);
        }
    };
    let Some(best) = cheapest_match(&offers, &criteria, Utc::now()) else {
        reschedule(&ctx.db, campaign_id).await?;
        return Ok(SearchOutcome::NoMatch {
            offers: offers.len(),
        });
    };

    // Outbox: the booking attempt and the reschedule commit together, or neither does.
    let mut tx = ctx.db.begin().await?;
    let still_active: Option<bool> = sqlx::query_scalar(
        "SELECT status = 'active' AND expires_at > now() FROM campaigns WHERE id = $1 FOR UPDATE",
    )
    .bind(campaign_id)
    .fetch_optional(&mut *tx)
    .await?;
    if still_active != Some(true) {
        tx.rollback().await?;
        return Err(JobError::Cancel(
            "campaign stopped being active during the search".into(),
        ));
    }
    let job = BookingAttempt::request(campaign_id, &best.id)?;
    let enqueued = ctx.enqueuer.enqueue_many(&mut tx, vec![job]).await?;
    reschedule(&mut *tx, campaign_id).await?;
    tx.commit().await?;
    Ok(SearchOutcome::Matched {
        offer_id: best.id.clone(),
        total_minor: best.total_amount_minor,
        duplicate: enqueued.first().is_some_and(|e| e.duplicate),
    })
}

/// CampaignReschedule: the next search one interval from now (active campaigns only).
async fn reschedule(conn: impl sqlx::PgExecutor<'_>, campaign_id: Uuid) -> Result<(), sqlx::Error> {
    campaign::set_next_search(
        conn,
        campaign_id,
        next_search_after(campaign_id, Utc::now()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDateTime, TimeZone};

    use super::*;
    use crate::providers::OfferSlice;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn one_way() -> Criteria {
        Criteria {
            origin: "LHR".into(),
            destination: "JFK".into(),
            departure: (d(2030, 6, 10), d(2030, 6, 16)),
            return_window: None,
            max_price_minor: 90_000,
            currency: "USD".into(),
            cabin: CabinClass::Economy,
        }
    }

    fn slice(date: NaiveDate) -> OfferSlice {
        OfferSlice {
            origin: "LHR".into(),
            destination: "JFK".into(),
            departing_at: Some(NaiveDateTime::new(
                date,
                chrono::NaiveTime::from_hms_opt(9, 30, 0).unwrap(),
            )),
            arriving_at: None,
            segments: 1,
        }
    }

    fn offer(id: &str, total: i64, dates: &[NaiveDate]) -> Offer {
        Offer {
            id: id.into(),
            total_amount_minor: total,
            currency: "USD".into(),
            expires_at: Some(now() + chrono::Duration::minutes(30)),
            passenger_ids: vec!["pas_1".into()],
            owner_iata: Some("BA".into()),
            slices: dates.iter().map(|&x| slice(x)).collect(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 5, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn dates_rotate_through_the_whole_departure_window() {
        let c = one_way();
        let today = d(2030, 5, 1);
        let seen: std::collections::BTreeSet<NaiveDate> = (0..7)
            .map(|s| pick_dates(&c, today, s).unwrap().departure)
            .collect();
        assert_eq!(seen.len(), 7);
        assert_eq!(*seen.first().unwrap(), d(2030, 6, 10));
        assert_eq!(*seen.last().unwrap(), d(2030, 6, 16));
        assert!(pick_dates(&c, today, 3).unwrap().return_date.is_none());
    }

    #[test]
    fn dates_never_precede_tomorrow_and_a_past_window_has_none() {
        let c = one_way();
        // Today is inside the window: only tomorrow onwards.
        for s in 0..20 {
            let p = pick_dates(&c, d(2030, 6, 12), s).unwrap();
            assert!(p.departure >= d(2030, 6, 13), "{p:?}");
        }
        assert_eq!(pick_dates(&c, d(2030, 6, 16), 0), None);
        assert_eq!(pick_dates(&c, d(2030, 7, 1), 0), None);
    }

    #[test]
    fn return_dates_stay_in_their_window_and_after_the_departure() {
        let c = Criteria {
            return_window: Some((d(2030, 6, 12), d(2030, 6, 14))),
            ..one_way()
        };
        let mut pairs = std::collections::BTreeSet::new();
        for s in 0..100 {
            let p = pick_dates(&c, d(2030, 5, 1), s).unwrap();
            let r = p.return_date.unwrap();
            assert!(
                p.departure <= d(2030, 6, 14),
                "departure capped at the return end"
            );
            assert!(
                r >= p.departure && r >= d(2030, 6, 12) && r <= d(2030, 6, 14),
                "{p:?}"
            );
            pairs.insert((p.departure, r));
        }
        // 10..12 → 3 returns each, 13 → 2, 14 → 1: every pair is reached.
        assert_eq!(pairs.len(), 3 * 3 + 2 + 1);
        let search = offer_search(&c, pick_dates(&c, d(2030, 5, 1), 0).unwrap());
        assert_eq!(search.slices.len(), 2);
        assert_eq!(search.slices[1].origin, "JFK");
        assert_eq!(search.passengers, vec![PassengerSpec::Adult]);
    }

    #[test]
    fn the_cheapest_offer_meeting_every_criterion_wins() {
        let c = one_way();
        let inside = d(2030, 6, 12);
        let too_dear = offer("off_dear", 90_001, &[inside]);
        let outside = offer("off_outside", 10_000, &[d(2030, 6, 17)]);
        let mut euro = offer("off_eur", 11_000, &[inside]);
        euro.currency = "EUR".into();
        let mut expiring = offer("off_expiring", 12_000, &[inside]);
        expiring.expires_at = Some(now() + chrono::Duration::minutes(2));
        let mut two_pax = offer("off_two", 13_000, &[inside]);
        two_pax.passenger_ids.push("pas_2".into());
        let mut no_time = offer("off_no_time", 13_500, &[inside]);
        no_time.slices[0].departing_at = None;
        let good_dear = offer("off_good_dear", 50_000, &[inside]);
        let good = offer("off_good", 14_000, &[inside]);
        let at_limit = offer("off_limit", 90_000, &[inside]);
        let offers = vec![
            too_dear, outside, euro, expiring, two_pax, no_time, good_dear, good, at_limit,
        ];
        assert_eq!(cheapest_match(&offers, &c, now()).unwrap().id, "off_good");
        assert!(
            meets_criteria(&offers[8], &c, now()),
            "max_price is inclusive"
        );
        let none: Vec<Offer> = offers[..6].to_vec();
        assert!(cheapest_match(&none, &c, now()).is_none());
    }

    #[test]
    fn a_return_offer_needs_both_legs_in_their_windows() {
        let c = Criteria {
            return_window: Some((d(2030, 6, 20), d(2030, 6, 25))),
            ..one_way()
        };
        assert!(meets_criteria(
            &offer("off_ok", 50_000, &[d(2030, 6, 12), d(2030, 6, 22)]),
            &c,
            now()
        ));
        assert!(!meets_criteria(
            &offer("off_late", 50_000, &[d(2030, 6, 12), d(2030, 6, 26)]),
            &c,
            now()
        ));
        assert!(!meets_criteria(
            &offer("off_one_leg", 50_000, &[d(2030, 6, 12)]),
            &c,
            now()
        ));
    }

    #[test]
    fn max_price_converts_to_minor_units_rounding_down() {
        assert_eq!(max_price_minor("900.00", "USD"), Some(90_000));
        assert_eq!(max_price_minor("900.5", "GBP"), Some(90_050));
        assert_eq!(max_price_minor("900.99", "JPY"), Some(900));
        assert_eq!(max_price_minor("900.12", "KWD"), Some(900_120));
        assert_eq!(max_price_minor("12", "EUR"), Some(1_200));
        assert_eq!(max_price_minor("-1.00", "USD"), None);
        assert_eq!(max_price_minor("1.00", "US"), None);
    }

    #[test]
    fn next_search_is_one_interval_ahead_with_a_stable_jitter() {
        let id = Uuid::new_v4();
        let a = next_search_after(id, now());
        let lo = now() + chrono::Duration::from_std(RESEARCH_INTERVAL).unwrap();
        let hi = lo + chrono::Duration::from_std(RESEARCH_JITTER).unwrap();
        assert!(a >= lo && a < hi, "{a}");
        assert_eq!(a, next_search_after(id, now()));
    }

    #[test]
    fn args_carry_ids_only() {
        let id = Uuid::new_v4();
        let v = serde_json::to_value(CampaignSearch {
            campaign_id: id,
            user_id: None,
        })
        .unwrap();
        assert_eq!(v, json!({"campaign_id": id}));
        assert!(
            serde_json::from_value::<CampaignSearch>(json!({"campaign_id": id, "email": "x"}))
                .is_err()
        );
    }
}
