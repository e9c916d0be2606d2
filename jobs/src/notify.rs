//! Travelers told once, in their channels, through the `notifications` outbox. [`tell`] reads
//! the user's `notification_preferences` and sends the email ([`send_once`]: the dedupe key is
//! both the outbox row's unique key and Resend's `Idempotency-Key`) and/or the text message
//! ([`send_sms_once`]: Twilio has no idempotency key, so the attempt is noted first and a
//! re-run looks for the message at Twilio before sending). Addresses and numbers are read from
//! the user row at send time and never travel in job args or logs.

use crate::Db;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    providers::{Attachment, EmailApi, OutgoingEmail, SmsApi},
    Deps, JobError,
};

/// A way to reach a traveler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Their account's address (Resend).
    Email,
    /// Their account's mobile (Twilio).
    Sms,
}

/// The channels a user chose for messages of `kind` in `preferences` (their
/// `notification_preferences`: `{"<kind>": ["email", "sms"], "default": [...]}`): the entry for
/// `kind`, else `default`, else email. Unknown names are ignored, and a choice that names no
/// known channel reads as email: these messages are about the traveler's money and trip, so
/// they always go somewhere.
pub fn channels_for(preferences: &serde_json::Value, kind: &str) -> Vec<Channel> {
    let pick = |key: &str| -> Option<Vec<Channel>> {
        let list = preferences.get(key)?.as_array()?;
        let mut out = Vec::new();
        for c in list.iter().filter_map(|c| c.as_str()) {
            let ch = match c {
                "email" => Channel::Email,
                "sms" => Channel::Sms,
                _ => continue,
            };
            if !out.contains(&ch) {
                out.push(ch);
            }
        }
        (!out.is_empty()).then_some(out)
    };
    pick(kind)
        .or_else(|| pick("default"))
        .unwrap_or_else(|| vec![Channel::Email])
}

/// The text message for a notification: its subject, pointing to the details. One segment
/// (160 GSM-7 characters) whatever the subject.
pub fn sms_text(subject: &str) -> String {
    let subject: String = subject.chars().take(100).collect();
    format!("Parker Flight: {subject}. Details in your email and the app.")
}

/// Tells user `user_id` about `kind` once per `dedupe_key`, in the channels they chose
/// ([`channels_for`]): the email (`dedupe_key`) first, then the text message
/// (`{dedupe_key}/sms`, [`sms_text`] of `subject`). With no SMS provider configured, or no
/// mobile on the account, a traveler who chose SMS only gets the email instead. A refused text
/// message (an invalid or unsubscribed number) fails that message only.
pub async fn tell(
    db: &Db,
    deps: &Deps,
    user_id: Uuid,
    kind: &str,
    dedupe_key: &str,
    subject: &str,
    text: &str,
) -> Result<(), JobError> {
    let user: Option<(serde_json::Value, bool)> = sqlx::query_as(
        "SELECT notification_preferences, phone IS NOT NULL FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    let Some((prefs, has_phone)) = user else {
        return Ok(()); // the user was erased meanwhile
    };
    let channels = channels_for(&prefs, kind);
    let sms = deps
        .sms()
        .filter(|_| has_phone && channels.contains(&Channel::Sms));
    if channels.contains(&Channel::Email) || sms.is_none() {
        send_once(db, deps.email()?, user_id, kind, dedupe_key, subject, text).await?;
    }
    if let Some(sms) = sms {
        let key = format!("{dedupe_key}/sms");
        send_sms_once(db, sms, user_id, kind, &key, &sms_text(subject)).await?;
    }
    Ok(())
}

/// Sends one text message to a user's mobile **at most once per `dedupe_key`** (barring a
/// send Twilio took but did not show in its list yet), and returns whether this call sent it.
///
/// The outbox row (channel `sms`) is claimed first; a row sent or failed is done. The attempt
/// is noted before the call; a row noted before (a crash, a 5xx, a timeout) is first looked
/// up at Twilio (recipient, day, sender, body) and recorded sent if found. Twilio refusing the
/// recipient (invalid, not a mobile, unsubscribed), or no mobile on the account, records the
/// row failed with the reason: never retried, the job goes on. Rate limits and outages are
/// the job's errors: retried, the row stays unsent.
pub async fn send_sms_once(
    db: &Db,
    sms: &dyn SmsApi,
    user_id: Uuid,
    kind: &str,
    dedupe_key: &str,
    body: &str,
) -> Result<bool, JobError> {
    sqlx::query(
        "INSERT INTO notifications (user_id, kind, dedupe_key, channel) VALUES ($1, $2, $3, 'sms')
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(user_id)
    .bind(kind)
    .bind(dedupe_key)
    .execute(db)
    .await?;
    type Row = (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT n.sent_at, n.failed_at, n.attempted_at, u.phone
         FROM notifications n JOIN users u ON u.id = n.user_id WHERE n.dedupe_key = $1",
    )
    .bind(dedupe_key)
    .fetch_optional(db)
    .await?;
    let Some((sent_at, failed_at, attempted_at, phone)) = row else {
        return Ok(false); // the user was erased meanwhile
    };
    if sent_at.is_some() || failed_at.is_some() {
        return Ok(false);
    }
    let Some(phone) = phone else {
        record_failed(db, dedupe_key, "no_phone").await?;
        tracing::info!(
            notification.kind = kind,
            "no mobile on the account: text message not sent"
        );
        return Ok(false);
    };
    if let Some(at) = attempted_at {
        let since = at - chrono::Duration::minutes(5);
        if let Some(found) = sms.find_sent(&phone, body, since).await? {
            record_sent(db, dedupe_key, &found.sid).await?;
            tracing::info!(
                notification.kind = kind,
                "text message found sent by an earlier attempt"
            );
            return Ok(false);
        }
    }
    sqlx::query(
        "UPDATE notifications SET attempted_at = now() WHERE dedupe_key = $1 AND sent_at IS NULL",
    )
    .bind(dedupe_key)
    .execute(db)
    .await?;
    match sms.send(&phone, body).await {
        Ok(sent) => {
            record_sent(db, dedupe_key, &sent.sid).await?;
            tracing::info!(notification.kind = kind, "text message sent");
            Ok(true)
        }
        Err(e) if e.is_recipient_refused() => {
            let code = e
                .code
                .map_or_else(|| "twilio_refused".to_owned(), |c| format!("twilio_{c}"));
            record_failed(db, dedupe_key, &code).await?;
            tracing::warn!(notification.kind = kind, error = %e, "text message refused for this recipient: not retried");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// NotificationFailed: the outbox row of `dedupe_key` was refused for good (`code`).
async fn record_failed(db: &Db, dedupe_key: &str, code: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET failed_at = now(), failure_code = $2
         WHERE dedupe_key = $1 AND sent_at IS NULL AND failed_at IS NULL",
    )
    .bind(dedupe_key)
    .bind(code)
    .execute(db)
    .await?;
    Ok(())
}

/// Sends one email to a user **at most once per `dedupe_key`** through the `notifications`
/// outbox, and returns whether this call sent it.
///
/// The row is claimed first (`INSERT … ON CONFLICT (dedupe_key) DO NOTHING`); a row with
/// `sent_at` means done. Otherwise the email goes out with `Idempotency-Key = dedupe_key`
/// (Resend replays the first answer for 24 h, so two racing senders, or a crash between the
/// send and the `sent_at` write, still deliver once), then `sent_at` and the provider's id are
/// recorded. The recipient is read from the `users` row at send time. `subject` and `text`
/// must be the same on every call with the same key (Resend refuses a key reused with
/// another payload) and are never logged.
pub async fn send_once(
    db: &Db,
    email: &dyn EmailApi,
    user_id: Uuid,
    kind: &str,
    dedupe_key: &str,
    subject: &str,
    text: &str,
) -> Result<bool, JobError> {
    send_once_with(
        db,
        email,
        user_id,
        kind,
        dedupe_key,
        subject,
        text,
        Vec::new(),
    )
    .await
}

/// [`send_once`] with files attached (a data export). The attachments, like the text, must be
/// the same bytes on every call with the same key.
#[allow(clippy::too_many_arguments)]
pub async fn send_once_with(
    db: &Db,
    email: &dyn EmailApi,
    user_id: Uuid,
    kind: &str,
    dedupe_key: &str,
    subject: &str,
    text: &str,
    attachments: Vec<Attachment>,
) -> Result<bool, JobError> {
    claim_outbox_rows(db, &[user_id], &[dedupe_key.to_owned()], kind).await?;
    let row: Option<(Option<DateTime<Utc>>, String)> = sqlx::query_as(
        "SELECT n.sent_at, u.email FROM notifications n JOIN users u ON u.id = n.user_id
         WHERE n.dedupe_key = $1",
    )
    .bind(dedupe_key)
    .fetch_optional(db)
    .await?;
    let Some((sent_at, address)) = row else {
        return Ok(false); // the user was erased meanwhile
    };
    if sent_at.is_some() {
        return Ok(false);
    }
    let message = OutgoingEmail {
        to: vec![address],
        subject: subject.to_owned(),
        html: text_to_html(text),
        text: text.to_owned(),
        attachments,
    };
    let sent = email.send(&message, dedupe_key).await?;
    record_sent(db, dedupe_key, &sent.id).await?;
    tracing::info!(notification.kind = kind, "email sent");
    Ok(true)
}

/// NotificationsClaim: an outbox row of `kind` for each `(users[i], keys[i])` whose key has
/// none yet (`ON CONFLICT (dedupe_key) DO NOTHING`): the claim before a send. A row already
/// there, sent or not, is left as it is.
pub(crate) async fn claim_outbox_rows(
    conn: impl sqlx::PgExecutor<'_>,
    users: &[Uuid],
    keys: &[String],
    kind: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (user_id, kind, dedupe_key)
         SELECT u, $3, k FROM unnest($1::uuid[], $2::text[]) AS t(u, k)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(users)
    .bind(keys)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// NotificationSent: the outbox row of `dedupe_key` was sent, as the provider's message
/// `provider_id` (clipped to 200 characters; `unknown` when the provider gave none). Only the
/// first record counts: a second sender's (same email, replayed by the provider's idempotency)
/// changes nothing.
pub(crate) async fn record_sent(
    db: &Db,
    dedupe_key: &str,
    provider_id: &str,
) -> Result<(), sqlx::Error> {
    let clipped: String = provider_id.chars().take(200).collect();
    let provider_id = if clipped.is_empty() {
        "unknown".to_owned()
    } else {
        clipped
    };
    sqlx::query(
        "UPDATE notifications SET sent_at = now(), provider_message_id = $2
         WHERE dedupe_key = $1 AND sent_at IS NULL",
    )
    .bind(dedupe_key)
    .bind(provider_id)
    .execute(db)
    .await?;
    Ok(())
}

fn text_to_html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    escaped
        .split("\n\n")
        .map(|p| format!("<p>{}</p>", p.replace('\n', "<br>")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_the_kind_then_the_default_then_email() {
        use serde_json::json;
        let prefs = json!({"default": ["sms"], "booking-confirmed": ["email", "sms", "sms"],
                           "refund": ["pigeon"], "hold-voided": []});
        assert_eq!(
            channels_for(&prefs, "booking-confirmed"),
            [Channel::Email, Channel::Sms]
        );
        assert_eq!(channels_for(&prefs, "airline-change"), [Channel::Sms]);
        // Nothing usable named: the default, and without one, email.
        assert_eq!(channels_for(&prefs, "refund"), [Channel::Sms]);
        assert_eq!(channels_for(&json!({}), "refund"), [Channel::Email]);
        assert_eq!(
            channels_for(&json!({"hold-voided": []}), "hold-voided"),
            [Channel::Email]
        );
    }

    #[test]
    fn a_text_message_is_one_segment() {
        let t = sms_text(&"x".repeat(500));
        assert!(t.len() <= 160, "{}", t.len());
        assert!(
            sms_text("Your flight is booked").starts_with("Parker Flight: Your flight is booked.")
        );
    }

    #[test]
    fn html_body_escapes_the_text() {
        assert_eq!(
            text_to_html("a<b>\n\nc & d"),
            "<p>a&lt;b&gt;</p><p>c &amp; d</p>"
        );
    }
}
