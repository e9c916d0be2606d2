//! Exactly-once email through the `notifications` outbox: the dedupe key is both the outbox
//! row's unique key and the provider's `Idempotency-Key`. Addresses are read from the user row
//! at send time and never travel in job args.

use crate::Db;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    providers::{EmailApi, OutgoingEmail},
    JobError,
};

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
    fn html_body_escapes_the_text() {
        assert_eq!(
            text_to_html("a<b>\n\nc & d"),
            "<p>a&lt;b&gt;</p><p>c &amp; d</p>"
        );
    }
}
