//! The `card_expiry_reminder` job kind (docs/domain.md §3, daily cron): tells a user, once per card per
//! expiry, that a card one of their active campaigns will charge expires before the campaign
//! ends or within [`WITHIN_DAYS`] days.
//!
//! A card is valid through the last day of its expiry month, so it "expires" at the first
//! instant of the next month (UTC). Due cards are those referenced by an `active` campaign with
//! that instant ≤ the campaign's `expires_at`, or ≤ now + [`WITHIN_DAYS`] (an already expired
//! card is due too).
//!
//! Exactly-once per `card-expiry/{payment_method_id}/{yyyy-mm}` (the card's expiry month), with
//! the `notifications` table as the outbox:
//! 1. claim: `INSERT … ON CONFLICT (dedupe_key) DO NOTHING` (short transaction, per batch);
//! 2. skip every claimed row that already has `sent_at`;
//! 3. send with `Idempotency-Key` = the dedupe key (no transaction held): a crash between the
//!    send and step 4 makes the next run send again with the same key and payload, which Resend
//!    answers from its 24 h store without mailing twice;
//! 4. record `sent_at` and `provider_message_id` (only if still unsent).
//!
//! A card whose expiry changes (e.g. Stripe's `payment_method.automatically_updated`) gets a
//! new key, hence a new reminder if the new expiry is also due.
//!
//! Failures: a rate limit snoozes the job (cards already sent stay sent); a transient or
//! ambiguous failure of one email does not stop the others, and the job then retries; a
//! definite refusal (e.g. an address Resend rejects) is logged by notification id and left
//! unsent for the next daily run.

use crate::deps::HasDeps;
use crate::job::budgets;
use std::time::Duration;

use crate::Db;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    providers::{EmailApi, FailureClass, OutgoingEmail},
    Job, JobContext, JobError, KindDefaults,
};

/// A card expiring within this many days is due whatever its campaigns' ends.
pub const WITHIN_DAYS: i64 = 30;
/// Cards per batch unless the args say otherwise.
pub const DEFAULT_BATCH_SIZE: i64 = 200;
/// `notifications.kind` of these emails.
pub const NOTIFICATION_KIND: &str = "card_expiry";

/// Args of the `card_expiry_reminder` job (the cron entry may pass `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardExpiryReminder {
    /// Cards per batch, 1..=5000 (default [`DEFAULT_BATCH_SIZE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReminderReport {
    /// Due cards seen.
    pub due: u64,
    /// Emails sent (or replayed by Resend) and recorded in this run.
    pub sent: u64,
    /// Due cards already reminded for this expiry.
    pub already_sent: u64,
    /// Sends that failed transiently (the job retries; sent ones are skipped).
    pub failed: u64,
    /// Sends the provider refused for good (e.g. a rejected address), left unsent for the
    /// next daily run and visible in the logs by class.
    pub refused: u64,
}

/// The dedupe key (and email idempotency key) of a card's reminder for one expiry month.
pub fn dedupe_key(payment_method_id: Uuid, exp_year: i16, exp_month: i16) -> String {
    format!("card-expiry/{payment_method_id}/{exp_year:04}-{exp_month:02}")
}

/// The reminder. No name: the address comes from the user row, the card is named by brand and
/// last four digits only. Deterministic for a given card and expiry, so a retried send
/// carries the same payload as the first (Resend refuses a reused key with another payload).
fn reminder_email(
    to: String,
    brand: Option<&str>,
    last4: Option<&str>,
    exp_year: i16,
    exp_month: i16,
) -> OutgoingEmail {
    let card = match (brand, last4) {
        (Some(b), Some(l)) => format!("{} card ending in {l}", capitalize(b)),
        (None, Some(l)) => format!("card ending in {l}"),
        _ => "saved card".to_owned(),
    };
    let expiry = format!("{exp_month:02}/{exp_year:04}");
    let subject = format!("Your {card} expires {expiry}");
    let text = format!(
        "Your {card} expires at the end of {expiry}. One or more of your Parker Flight \
         auto-booking campaigns will charge this card when it finds your flight. Update the \
         card in your account so your campaign can still book.\n\n— Parker Flight"
    );
    let html = format!(
        "<p>Your {card} expires at the end of <strong>{expiry}</strong>.</p>\
         <p>One or more of your Parker Flight auto-booking campaigns will charge this card when \
         it finds your flight. Update the card in your account so your campaign can still \
         book.</p><p>— Parker Flight</p>"
    );
    OutgoingEmail {
        to: vec![to],
        subject,
        html,
        text,
        attachments: Vec::new(),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

impl CardExpiryReminder {
    fn batch(&self) -> Result<i64, JobError> {
        let b = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if (1..=5_000).contains(&b) {
            Ok(b)
        } else {
            Err(JobError::fatal(format!(
                "batch_size must be 1..=5000, got {b}"
            )))
        }
    }
}

impl Job for CardExpiryReminder {
    const KIND: &'static str = "card_expiry_reminder";

    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "maintenance".into(),
            concurrency: Some(1),
            max_attempts: 10,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(3600),
            timeout: Duration::from_secs(1800),
            budgets: vec![budgets::RESEND.to_owned()],
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let batch = self.batch()?;
        let email = ctx.deps()?.email()?;
        let report = remind(&ctx.db, email, batch, &ctx.cancel).await?;
        tracing::info!(
            job.id = ctx.job_id,
            due = report.due,
            sent = report.sent,
            already_sent = report.already_sent,
            failed = report.failed,
            refused = report.refused,
            "card expiry reminders done"
        );
        if report.failed > 0 {
            return Err(JobError::retryable(format!(
                "{} reminder(s) could not be sent; retrying",
                report.failed
            )));
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct DueCard {
    payment_method_id: Uuid,
    user_id: Uuid,
    exp_year: i16,
    exp_month: i16,
}

#[derive(sqlx::FromRow)]
struct Unsent {
    dedupe_key: String,
    email: String,
    brand: Option<String>,
    last4: Option<String>,
    exp_year: i16,
    exp_month: i16,
}

/// CardExpiryRemind: one pass over the due cards, `batch` at a time. Transient failures are
/// counted in the report (the caller retries); a rate limit returns `Snooze` at once.
pub async fn remind(
    db: &Db,
    email: &dyn EmailApi,
    batch: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<ReminderReport, JobError> {
    let mut report = ReminderReport::default();
    let mut after = Uuid::nil();
    loop {
        if cancel.is_cancelled() {
            return Err(JobError::retryable("interrupted; the next run resumes"));
        }
        // Steps 1–2 in one short transaction, committed before any email goes out.
        let mut conn = db.begin().await?;
        // CardExpiryDue: cards of active campaigns expiring before the campaign ends or soon.
        let cards: Vec<DueCard> = sqlx::query_as(
            "SELECT pm.id AS payment_method_id, pm.user_id, pm.exp_year, pm.exp_month
             FROM payment_methods pm
             WHERE pm.id > $1
               AND EXISTS (
                   SELECT 1 FROM campaigns c
                   WHERE c.payment_method_id = pm.id AND c.status = 'active'
                     AND make_timestamptz(pm.exp_year, pm.exp_month, 1, 0, 0, 0, 'UTC')
                         + interval '1 month'
                         <= GREATEST(c.expires_at, now() + $2 * interval '1 day'))
             ORDER BY pm.id
             LIMIT $3",
        )
        .bind(after)
        .bind(WITHIN_DAYS as f64)
        .bind(batch)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = cards.last() else {
            conn.commit().await?;
            return Ok(report);
        };
        after = last.payment_method_id;
        report.due += cards.len() as u64;

        // 1. Claim one outbox row per card and expiry (short transaction).
        let keys: Vec<String> = cards
            .iter()
            .map(|c| dedupe_key(c.payment_method_id, c.exp_year, c.exp_month))
            .collect();
        let users: Vec<Uuid> = cards.iter().map(|c| c.user_id).collect();
        crate::notify::claim_outbox_rows(&mut *conn, &users, &keys, NOTIFICATION_KIND).await?;

        // 2. What is still unsent, with what the email needs.
        let ids: Vec<Uuid> = cards.iter().map(|c| c.payment_method_id).collect();
        let years: Vec<i16> = cards.iter().map(|c| c.exp_year).collect();
        let months: Vec<i16> = cards.iter().map(|c| c.exp_month).collect();
        let unsent: Vec<Unsent> = sqlx::query_as(
            "SELECT t.k AS dedupe_key, u.email, pm.brand, pm.last4::text AS last4,
                    t.y AS exp_year, t.m AS exp_month
             FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int2[]) AS t(pm_id, k, y, m)
             JOIN payment_methods pm ON pm.id = t.pm_id
             JOIN users u ON u.id = pm.user_id
             JOIN notifications n ON n.dedupe_key = t.k
             WHERE n.sent_at IS NULL
             ORDER BY t.pm_id",
        )
        .bind(&ids)
        .bind(&keys)
        .bind(&years)
        .bind(&months)
        .fetch_all(&mut *conn)
        .await?;
        report.already_sent += cards.len().saturating_sub(unsent.len()) as u64;
        conn.commit().await?;

        // 3–4. Send (no transaction held), then record.
        for n in unsent {
            let msg = reminder_email(
                n.email,
                n.brand.as_deref(),
                n.last4.as_deref(),
                n.exp_year,
                n.exp_month,
            );
            match email.send(&msg, &n.dedupe_key).await {
                Ok(sent) => {
                    crate::notify::record_sent(db, &n.dedupe_key, &sent.id).await?;
                    report.sent += 1;
                }
                Err(e) if e.class == FailureClass::RateLimited => {
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(class = %e.class, error = %e, "card expiry reminder not sent");
                    if matches!(e.class, FailureClass::Transient | FailureClass::Ambiguous) {
                        report.failed += 1;
                    } else {
                        report.refused += 1;
                    }
                }
            }
        }
        if (cards.len() as i64) < batch {
            return Ok(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_key_names_the_card_and_its_expiry_month() {
        let id = Uuid::parse_str("6f1c1f2e-7d1a-4b7e-9c55-0a1b2c3d4e5f").unwrap();
        assert_eq!(
            dedupe_key(id, 2027, 3),
            "card-expiry/6f1c1f2e-7d1a-4b7e-9c55-0a1b2c3d4e5f/2027-03"
        );
        assert_ne!(dedupe_key(id, 2027, 3), dedupe_key(id, 2027, 4));
    }

    #[test]
    fn reminder_is_deterministic_and_names_the_card_by_brand_and_last4_only() {
        let a = reminder_email("a@example.test".into(), Some("visa"), Some("4242"), 2027, 3);
        let b = reminder_email("a@example.test".into(), Some("visa"), Some("4242"), 2027, 3);
        assert_eq!(a, b, "a retried send must carry the same payload");
        assert_eq!(a.subject, "Your Visa card ending in 4242 expires 03/2027");
        assert!(a.text.contains("03/2027") && a.html.contains("4242"));
        assert!(format!("{a:?}").find("a@example.test").is_none());
        let c = reminder_email("a@example.test".into(), None, None, 2027, 3);
        assert!(c.subject.contains("saved card"));
    }

    #[test]
    fn args_default_and_refuse_nonsense() {
        let a: CardExpiryReminder = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(a.batch().unwrap(), DEFAULT_BATCH_SIZE);
        assert!(CardExpiryReminder {
            batch_size: Some(0)
        }
        .batch()
        .is_err());
    }
}
