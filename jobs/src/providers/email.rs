//! Email over the Resend HTTP API: `POST /emails` with `Authorization: Bearer re_…` and an
//! `Idempotency-Key` (Resend keeps it 24 h: the same key and payload answer the first send's
//! result and send nothing).
//!
//! The caller derives the key from the notification's dedupe key, so a retried job never
//! mails twice within the window; the `notifications` outbox covers longer spans.

use std::{fmt, time::Duration};

use reqwest::StatusCode;
use serde::Deserialize;

use super::{
    error::transport_class, normalize_base_url, ApiKey, FailureClass, ProviderConfigError,
};
use crate::{BoxFuture, JobError};

/// Resend client settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// API root. Default `https://api.resend.com`.
    pub base_url: String,
    /// API key (`re_…`); never printed.
    pub api_key: ApiKey,
    /// Sender, e.g. `Parker Flight <bookings@parkerflight.com>` (required).
    pub from: String,
    /// Whole-request budget; running out is [`FailureClass::Ambiguous`].
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
    /// TCP connect budget.
    #[serde(deserialize_with = "super::duration")]
    pub connect_timeout: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.resend.com".to_owned(),
            api_key: ApiKey::default(),
            from: String::new(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One email. Holds PII (address, content): its `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    /// Recipients.
    pub to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Plain-text body.
    pub text: String,
    /// Files attached (Resend's `attachments`: a filename and base64 content each).
    pub attachments: Vec<Attachment>,
}

impl fmt::Debug for OutgoingEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingEmail")
            .field("recipients", &self.to.len())
            .field("attachments", &self.attachments.len())
            .finish_non_exhaustive()
    }
}

/// A file attached to an email. Holds personal data (a data export): `Debug` shows its name
/// and size only.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file's name as the recipient sees it.
    pub filename: String,
    /// Its MIME type, e.g. `application/json`.
    pub content_type: String,
    /// Its bytes (sent base64-encoded).
    pub content: Vec<u8>,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// Resend's answer to a send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentEmail {
    /// Resend's message id (store it in `notifications.provider_message_id`).
    pub id: String,
}

/// Sending email, as the jobs see it. Object safe: jobs hold an `Arc<dyn EmailApi>`.
pub trait EmailApi: Send + Sync {
    /// Sends `email` from the configured sender. `idempotency_key` (1–256 characters) is sent
    /// as `Idempotency-Key`: reuse it for a retry of the same email, never for another one.
    fn send<'a>(
        &'a self,
        email: &'a OutgoingEmail,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<SentEmail, EmailError>>;
}

/// A failed send. The text carries status and Resend's error `name` only (its `message`
/// can quote the recipient address).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct EmailError {
    /// What it means.
    pub class: FailureClass,
    /// HTTP status, when Resend answered.
    pub status: Option<u16>,
    /// Resend's error `name` (`validation_error`, `rate_limit_exceeded`, …).
    pub name: Option<String>,
    /// From `retry-after` (seconds) on a 429.
    pub retry_after: Option<Duration>,
    /// What went wrong when there was no Resend error body.
    pub detail: Option<&'static str>,
}

impl EmailError {
    fn local(class: FailureClass, detail: &'static str) -> Self {
        Self {
            class,
            status: None,
            name: None,
            retry_after: None,
            detail: Some(detail),
        }
    }

    fn describe(&self) -> String {
        super::error::describe(
            &format!("resend send {}", self.class),
            self.status,
            self.name.as_deref(),
            &[],
            self.detail,
        )
    }
}

/// Default job outcome: a 429 snoozes for `retry-after`; the rest per [`FailureClass`].
/// Retrying an ambiguous send is safe: the same idempotency key makes Resend answer the first
/// result instead of sending again.
impl From<EmailError> for JobError {
    fn from(e: EmailError) -> Self {
        e.class
            .job_error_on(crate::job::budgets::RESEND, e.retry_after, e.to_string())
    }
}

/// Labels a Resend error answer. Pure, so the table is tested directly.
///
/// | status / name | class |
/// |---|---|
/// | 429 (`rate_limit_exceeded`, `daily_quota_exceeded`, `monthly_quota_exceeded`) | RateLimited (a quota waits [`QUOTA_SNOOZE`] unless `retry-after` says otherwise) |
/// | 409 `concurrent_idempotent_requests` | Transient |
/// | 409 `invalid_idempotent_request` (same key, other payload) and other 4xx | Invalid |
/// | 5xx | Ambiguous |
pub fn classify_resend(status: u16, name: Option<&str>) -> FailureClass {
    match (status, name) {
        (429, _) => FailureClass::RateLimited,
        (409, Some("concurrent_idempotent_requests")) => FailureClass::Transient,
        (500..=599, _) => FailureClass::Ambiguous,
        _ => FailureClass::Invalid,
    }
}

/// Resend's sending-quota errors (429): "wait until 24 hours have passed" for the daily one
/// (<https://resend.com/docs/api-reference/errors>). Not a per-second limit, so retrying in
/// seconds is pointless.
pub const QUOTA_NAMES: &[&str] = &["daily_quota_exceeded", "monthly_quota_exceeded"];

/// How long a job waits after a quota error without a `retry-after`: the longest snooze
/// allowed, so a day's quota costs a retry an hour, not one every 30 s.
pub const QUOTA_SNOOZE: Duration = super::error::MAX_RATE_LIMIT_SNOOZE;

/// The real client.
#[derive(Clone)]
pub struct ResendClient {
    http: reqwest::Client,
    base: String,
    key: ApiKey,
    from: String,
}

impl fmt::Debug for ResendClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
struct WireError {
    #[serde(default)]
    name: Option<String>,
}

impl ResendClient {
    /// Builds a client from config; refuses an empty key or sender, or a malformed base URL.
    pub fn new(config: &EmailConfig) -> Result<Self, ProviderConfigError> {
        if config.api_key.is_empty() {
            return Err(ProviderConfigError("email.api_key is empty".into()));
        }
        if config.from.trim().is_empty() {
            return Err(ProviderConfigError("email.from is empty".into()));
        }
        Ok(Self {
            http: super::http_client(config.timeout, config.connect_timeout)?,
            base: normalize_base_url("email.base_url", &config.base_url)?,
            key: config.api_key.clone(),
            from: config.from.clone(),
        })
    }
}

impl EmailApi for ResendClient {
    fn send<'a>(
        &'a self,
        email: &'a OutgoingEmail,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<SentEmail, EmailError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.send_once(email, idempotency_key).await;
            super::observe(
                "resend",
                "send_email",
                started,
                r.as_ref().map(|_| ()).map_err(|e| e.class),
            );
            r
        })
    }
}

impl ResendClient {
    /// One `POST /emails`.
    async fn send_once(
        &self,
        email: &OutgoingEmail,
        idempotency_key: &str,
    ) -> Result<SentEmail, EmailError> {
        {
            if idempotency_key.is_empty() || idempotency_key.len() > 256 {
                return Err(EmailError::local(
                    FailureClass::Invalid,
                    "idempotency key must be 1-256 characters",
                ));
            }
            if email.to.is_empty() {
                return Err(EmailError::local(FailureClass::Invalid, "no recipient"));
            }
            let mut body = serde_json::json!({
                "from": self.from,
                "to": email.to,
                "subject": email.subject,
                "html": email.html,
                "text": email.text,
            });
            if !email.attachments.is_empty() {
                use base64::Engine as _;
                body["attachments"] = email
                    .attachments
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "filename": a.filename,
                            "content": base64::engine::general_purpose::STANDARD.encode(&a.content),
                            "content_type": a.content_type,
                        })
                    })
                    .collect();
            }
            let resp = self
                .http
                .post(format!("{}/emails", self.base))
                .bearer_auth(self.key.expose())
                .header("Idempotency-Key", idempotency_key)
                .json(&body)
                .send()
                .await
                .map_err(|e| {
                    let (class, detail) = transport_class(&e);
                    EmailError::local(class, detail)
                })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = resp.bytes().await.map_err(|e| {
                let (class, detail) = transport_class(&e);
                EmailError::local(class, detail)
            })?;
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|_| {
                    EmailError::local(FailureClass::Ambiguous, "unreadable response")
                });
            }
            let name = serde_json::from_slice::<WireError>(&bytes)
                .unwrap_or_default()
                .name;
            let quota = name.as_deref().is_some_and(|n| QUOTA_NAMES.contains(&n));
            let retry_after = match (status == StatusCode::TOO_MANY_REQUESTS, quota) {
                (false, _) => None,
                (true, false) => retry_after,
                (true, true) => retry_after.or(Some(QUOTA_SNOOZE)),
            };
            let err = EmailError {
                class: classify_resend(status.as_u16(), name.as_deref()),
                status: Some(status.as_u16()),
                name,
                retry_after,
                detail: None,
            };
            // Debug: the attempt logs the failure once, with the job's context.
            tracing::debug!(provider = "resend", class = %err.class, status = err.status,
                name = err.name.as_deref(), "email send failed");
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::providers::testing::{Recorder, Reply};

    fn client(base: &str) -> ResendClient {
        ResendClient::new(&EmailConfig {
            base_url: base.to_owned(),
            api_key: ApiKey::new("re_test_key"),
            from: "Parker Flight <bookings@example.com>".into(),
            timeout: Duration::from_secs(5),
            ..EmailConfig::default()
        })
        .unwrap()
    }

    fn email() -> OutgoingEmail {
        OutgoingEmail {
            to: vec!["traveler@example.com".into()],
            subject: "Your flight is booked".into(),
            html: "<p>Booked</p>".into(),
            text: "Booked".into(),
            attachments: Vec::new(),
        }
    }

    #[tokio::test]
    async fn send_posts_json_with_bearer_and_idempotency_key() {
        let rec = Recorder::start(vec![Reply::json(200, serde_json::json!({"id": "em_1"}))]).await;
        let sent = client(&rec.base_url())
            .send(&email(), "booking-confirmed/b-1")
            .await
            .unwrap();
        assert_eq!(sent.id, "em_1");
        let r = &rec.requests()[0];
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/emails"));
        assert_eq!(r.header("authorization"), Some("Bearer re_test_key"));
        assert_eq!(r.header("idempotency-key"), Some("booking-confirmed/b-1"));
        assert_eq!(
            r.json(),
            serde_json::json!({
                "from": "Parker Flight <bookings@example.com>",
                "to": ["traveler@example.com"],
                "subject": "Your flight is booked",
                "html": "<p>Booked</p>",
                "text": "Booked"
            })
        );
    }

    #[tokio::test]
    async fn errors_are_labelled_without_the_message() {
        let rec = Recorder::start(vec![
            Reply::json(
                422,
                serde_json::json!({"statusCode": 422, "name": "validation_error",
                    "message": "Invalid `to` field: traveler@example"}),
            ),
            Reply::json(
                429,
                serde_json::json!({"statusCode": 429, "name": "rate_limit_exceeded"}),
            )
            .header("retry-after", "7"),
            Reply::json(500, serde_json::json!({"name": "internal_server_error"})),
        ])
        .await;
        let c = client(&rec.base_url());
        let e = c.send(&email(), "k").await.unwrap_err();
        assert_eq!(e.class, FailureClass::Invalid);
        assert_eq!(
            e.to_string(),
            "resend send invalid: HTTP 422 validation_error"
        );
        assert!(matches!(JobError::from(e), JobError::Fatal(_)));
        let e = c.send(&email(), "k").await.unwrap_err();
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(
            JobError::from(e),
            JobError::RateLimited {
                budget: crate::job::budgets::RESEND.to_owned(),
                after: Duration::from_secs(7),
                reason: "resend send rate_limited: HTTP 429 rate_limit_exceeded".to_owned()
            }
        );
        let e = c.send(&email(), "k").await.unwrap_err();
        assert_eq!(e.class, FailureClass::Ambiguous);
        assert!(matches!(JobError::from(e), JobError::Retryable(_)));
    }

    #[tokio::test]
    async fn a_sending_quota_waits_an_hour_not_thirty_seconds() {
        let rec = Recorder::start(vec![Reply::json(
            429,
            serde_json::json!({"statusCode": 429, "name": "daily_quota_exceeded",
                "message": "You have reached your daily email sending quota."}),
        )])
        .await;
        let e = client(&rec.base_url())
            .send(&email(), "k")
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry_after, Some(QUOTA_SNOOZE));
        assert!(
            matches!(JobError::from(e), JobError::RateLimited { after, .. } if after == QUOTA_SNOOZE)
        );
    }

    #[test]
    fn resend_errors_classify_by_status_and_name() {
        use FailureClass::*;
        let table: &[(u16, Option<&str>, FailureClass)] = &[
            (429, Some("rate_limit_exceeded"), RateLimited),
            (429, Some("daily_quota_exceeded"), RateLimited),
            (409, Some("concurrent_idempotent_requests"), Transient),
            (409, Some("invalid_idempotent_request"), Invalid),
            (422, Some("validation_error"), Invalid),
            (400, Some("invalid_idempotency_key"), Invalid),
            (401, Some("missing_api_key"), Invalid),
            (403, Some("invalid_api_key"), Invalid),
            (500, Some("internal_server_error"), Ambiguous),
            (503, None, Ambiguous),
        ];
        for (status, name, want) in table {
            assert_eq!(classify_resend(*status, *name), *want, "{status} {name:?}");
        }
    }

    #[tokio::test]
    async fn bad_keys_and_empty_recipients_are_refused_before_sending() {
        let rec = Recorder::start(vec![]).await;
        let c = client(&rec.base_url());
        assert_eq!(
            c.send(&email(), "").await.unwrap_err().class,
            FailureClass::Invalid
        );
        let mut nobody = email();
        nobody.to.clear();
        assert_eq!(
            c.send(&nobody, "k").await.unwrap_err().class,
            FailureClass::Invalid
        );
        assert!(rec.requests().is_empty());
    }

    #[test]
    fn email_debug_hides_recipients_and_config_needs_a_sender() {
        let printed = format!("{:?}", email());
        assert!(!printed.contains("traveler@"), "{printed}");
        let c: EmailConfig =
            serde_json::from_value(serde_json::json!({"api_key": "re_x"})).unwrap();
        assert_eq!(c.base_url, "https://api.resend.com");
        assert!(ResendClient::new(&c).is_err(), "no sender");
        let _api: Arc<dyn EmailApi> = Arc::new(client("http://127.0.0.1:9"));
    }
}
