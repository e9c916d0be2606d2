//! Text messages over Twilio's Programmable Messaging API (2010-04-01):
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From`, `Body`,
//! HTTP Basic auth (the account SID, or an API key, and its secret); 201 with the Message
//! (`sid` `SM…`). Errors are `{code, message, more_info, status}`.
//!
//! **Twilio has no idempotency key on this endpoint** (its OpenAPI spec has one only on other
//! resources; its retry advice is to retry 429s only). So a send whose answer was lost (a 5xx,
//! a timeout) may have gone out: the caller notes the attempt before sending, and on a re-run
//! looks for the message first ([`SmsApi::find_sent`]: `GET …/Messages.json?To=…&DateSent=…`,
//! matched on sender and body) instead of sending blind.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{
    error::transport_class, normalize_base_url, ApiKey, FailureClass, ProviderConfigError,
};
use crate::{BoxFuture, JobError};

/// Twilio client settings (`[providers.sms]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// API root. Default `https://api.twilio.com`.
    pub base_url: String,
    /// The account (`AC` + 32 hex), in the path of every call.
    pub account_sid: String,
    /// The username of Basic auth when it is not the account SID: an API key (`SK…`, what
    /// Twilio recommends in production). Empty: the account SID.
    pub api_key_sid: String,
    /// The password of Basic auth: the API key's secret, or the account's auth token; never
    /// printed (`FLEET_PROVIDERS__SMS__AUTH_TOKEN`).
    pub auth_token: ApiKey,
    /// Sender: a Twilio number in E.164 (`+1…`).
    pub from: String,
    /// Whole-request budget; running out is [`FailureClass::Ambiguous`].
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
    /// TCP connect budget.
    #[serde(deserialize_with = "super::duration")]
    pub connect_timeout: Duration,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.twilio.com".to_owned(),
            account_sid: String::new(),
            api_key_sid: String::new(),
            auth_token: ApiKey::default(),
            from: String::new(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Twilio's answer to a send (or the message found by [`SmsApi::find_sent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    /// The Message SID (`SM…`), kept in `notifications.provider_message_id`.
    pub sid: String,
}

/// Sending text messages, as the jobs see it. Object safe: jobs hold an `Arc<dyn SmsApi>`.
/// Numbers and bodies are personal data: never logged, never in an error's text.
pub trait SmsApi: Send + Sync {
    /// Sends `body` to `to` (E.164) from the configured sender. Not idempotent at Twilio: see
    /// the module doc.
    fn send<'a>(&'a self, to: &'a str, body: &'a str) -> BoxFuture<'a, Result<SentSms, SmsError>>;

    /// The message with this `body` sent to `to` from our sender since `since` (Twilio's list,
    /// filtered by recipient and UTC day), if any: whether an earlier attempt went out.
    fn find_sent<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<SentSms>, SmsError>>;
}

/// A failed call. The text carries the status and Twilio's numeric `code` only (its
/// `message` quotes the number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SmsError {
    /// What it means.
    pub class: FailureClass,
    /// HTTP status, when Twilio answered.
    pub status: Option<u16>,
    /// Twilio's error code (`21211`, `20429`, …).
    pub code: Option<u32>,
    /// From `retry-after` (seconds) on a 429, if Twilio sent one.
    pub retry_after: Option<Duration>,
    /// What went wrong when there was no Twilio error body.
    pub detail: Option<&'static str>,
}

impl SmsError {
    fn local(class: FailureClass, detail: &'static str) -> Self {
        Self {
            class,
            status: None,
            code: None,
            retry_after: None,
            detail: Some(detail),
        }
    }

    fn describe(&self) -> String {
        let code = self.code.map(|c| c.to_string());
        super::error::describe(
            &format!("twilio send {}", self.class),
            self.status,
            code.as_deref(),
            &[],
            self.detail,
        )
    }

    /// Twilio refused the recipient (invalid, not a mobile, unsubscribed, …): this message
    /// will never go out; others may.
    pub fn is_recipient_refused(&self) -> bool {
        self.class == FailureClass::Rejected
    }
}

/// Default job outcome: a 429 waits on the `twilio` budget; the rest per [`FailureClass`].
impl From<SmsError> for JobError {
    fn from(e: SmsError) -> Self {
        e.class
            .job_error_on(crate::job::budgets::TWILIO, e.retry_after, e.to_string())
    }
}

/// Twilio's codes that refuse the recipient, not the request: the number is invalid (21211),
/// not a mobile (21614), a landline (21635), opted out (21610), or unreachable from our
/// sender (21408 region not enabled, 21612 not reachable).
pub const RECIPIENT_CODES: &[u32] = &[21211, 21408, 21610, 21612, 21614, 21635];

/// Labels a Twilio error answer. Pure, so the table is tested directly. Twilio asks not to
/// build logic on its codes where the status says enough; the recipient's codes are the
/// exception (a 400 that no retry can fix, for this message only).
///
/// | status / code | class |
/// |---|---|
/// | 429 (20429: "never processed", "always safe to retry") | RateLimited |
/// | 400 with a code in [`RECIPIENT_CODES`] | Rejected |
/// | 408 | Transient |
/// | 5xx | Ambiguous (the message may have been created) |
/// | other 4xx (401 20003 bad credentials, 21602 no body, …) | Invalid |
pub fn classify_twilio(status: u16, code: Option<u32>) -> FailureClass {
    match (status, code) {
        (429, _) => FailureClass::RateLimited,
        (400, Some(c)) if RECIPIENT_CODES.contains(&c) => FailureClass::Rejected,
        (408, _) => FailureClass::Transient,
        (500..=599, _) => FailureClass::Ambiguous,
        _ => FailureClass::Invalid,
    }
}

/// Whether `s` is an E.164 number (`+`, a non-zero digit, at most 15 digits in all).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The real client.
#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    base: String,
    account_sid: String,
    username: String,
    secret: ApiKey,
    from: String,
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
struct WireError {
    #[serde(default)]
    code: Option<u32>,
}

#[derive(Deserialize)]
struct WireMessage {
    sid: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct WirePage {
    #[serde(default)]
    messages: Vec<WireMessage>,
}

impl TwilioClient {
    /// Builds a client from config; refuses an empty secret, a malformed account SID or
    /// sender, or a malformed base URL.
    pub fn new(config: &SmsConfig) -> Result<Self, ProviderConfigError> {
        if config.auth_token.is_empty() {
            return Err(ProviderConfigError("sms.auth_token is empty".into()));
        }
        let sid = &config.account_sid;
        if !(sid.len() == 34
            && sid.starts_with("AC")
            && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ProviderConfigError(
                "sms.account_sid must be AC followed by 32 hex digits".into(),
            ));
        }
        if !is_e164(&config.from) {
            return Err(ProviderConfigError(
                "sms.from must be a number in E.164 (+ and up to 15 digits)".into(),
            ));
        }
        let username = if config.api_key_sid.trim().is_empty() {
            sid.clone()
        } else {
            config.api_key_sid.trim().to_owned()
        };
        Ok(Self {
            http: super::http_client(config.timeout, config.connect_timeout)?,
            base: normalize_base_url("sms.base_url", &config.base_url)?,
            account_sid: sid.clone(),
            username,
            secret: config.auth_token.clone(),
            from: config.from.clone(),
        })
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.account_sid
        )
    }

    /// One call: the body on success, else the classified error.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, SmsError> {
        let resp = req
            .basic_auth(&self.username, Some(self.secret.expose()))
            .send()
            .await
            .map_err(|e| {
                let (class, detail) = transport_class(&e);
                SmsError::local(class, detail)
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
            SmsError::local(class, detail)
        })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let code = serde_json::from_slice::<WireError>(&bytes)
            .unwrap_or_default()
            .code;
        let err = SmsError {
            class: classify_twilio(status.as_u16(), code),
            status: Some(status.as_u16()),
            code,
            retry_after: (status == StatusCode::TOO_MANY_REQUESTS)
                .then_some(retry_after)
                .flatten(),
            detail: None,
        };
        tracing::debug!(provider = "twilio", class = %err.class, status = err.status,
            code = err.code, "twilio call failed");
        Err(err)
    }

    async fn send_now(&self, to: &str, body: &str) -> Result<SentSms, SmsError> {
        if !is_e164(to) {
            // Twilio would refuse it (21211): refused here, without a call.
            return Err(SmsError {
                code: Some(21211),
                ..SmsError::local(FailureClass::Rejected, "not an E.164 number")
            });
        }
        let form = [("To", to), ("From", self.from.as_str()), ("Body", body)];
        let bytes = self
            .call(self.http.post(self.messages_url()).form(&form))
            .await?;
        let m: WireMessage = serde_json::from_slice(&bytes)
            .map_err(|_| SmsError::local(FailureClass::Ambiguous, "unreadable response"))?;
        Ok(SentSms { sid: m.sid })
    }

    async fn find_now(
        &self,
        to: &str,
        body: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SentSms>, SmsError> {
        // Twilio filters by UTC day: each day from the attempt's to today (at most three).
        let today = Utc::now().date_naive();
        let first = since.date_naive().max(today - chrono::Days::new(2));
        for day in first.iter_days().take_while(|d| *d <= today) {
            let date = day.format("%Y-%m-%d").to_string();
            let query = [("To", to), ("DateSent", date.as_str()), ("PageSize", "100")];
            let bytes = self
                .call(self.http.get(self.messages_url()).query(&query))
                .await?;
            let page: WirePage = serde_json::from_slice(&bytes)
                .map_err(|_| SmsError::local(FailureClass::Ambiguous, "unreadable response"))?;
            let found = page.messages.into_iter().find(|m| {
                m.from.as_deref() == Some(self.from.as_str()) && m.body.as_deref() == Some(body)
            });
            if let Some(m) = found {
                return Ok(Some(SentSms { sid: m.sid }));
            }
        }
        Ok(None)
    }
}

impl SmsApi for TwilioClient {
    fn send<'a>(&'a self, to: &'a str, body: &'a str) -> BoxFuture<'a, Result<SentSms, SmsError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.send_now(to, body).await;
            super::observe(
                "twilio",
                "send_sms",
                started,
                r.as_ref().map(|_| ()).map_err(|e| e.class),
            );
            r
        })
    }

    fn find_sent<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<SentSms>, SmsError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.find_now(to, body, since).await;
            super::observe(
                "twilio",
                "list_messages",
                started,
                r.as_ref().map(|_| ()).map_err(|e| e.class),
            );
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_answers_are_classified_by_status_and_the_recipients_codes() {
        use FailureClass::*;
        assert_eq!(classify_twilio(429, Some(20429)), RateLimited);
        assert_eq!(classify_twilio(400, Some(21211)), Rejected);
        assert_eq!(classify_twilio(400, Some(21610)), Rejected);
        assert_eq!(classify_twilio(400, Some(21614)), Rejected);
        assert_eq!(classify_twilio(400, Some(21602)), Invalid);
        assert_eq!(classify_twilio(401, Some(20003)), Invalid);
        assert_eq!(classify_twilio(500, Some(20500)), Ambiguous);
        assert_eq!(classify_twilio(503, None), Ambiguous);
    }

    #[test]
    fn numbers_must_be_e164() {
        assert!(is_e164("+14155552345"));
        assert!(is_e164("+447700900123"));
        assert!(!is_e164("14155552345"));
        assert!(!is_e164("+0155552345"));
        assert!(!is_e164("+1 415 555 2345"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn a_client_needs_a_secret_an_account_and_a_sender() {
        let ok = SmsConfig {
            base_url: "http://127.0.0.1:1".into(),
            account_sid: format!("AC{}", "a".repeat(32)),
            auth_token: ApiKey::new("secret"),
            from: "+15005550006".into(),
            ..SmsConfig::default()
        };
        assert!(TwilioClient::new(&ok).is_ok());
        for bad in [
            SmsConfig {
                auth_token: ApiKey::default(),
                ..ok.clone()
            },
            SmsConfig {
                account_sid: "AC123".into(),
                ..ok.clone()
            },
            SmsConfig {
                from: "5005550006".into(),
                ..ok.clone()
            },
        ] {
            let e = TwilioClient::new(&bad).unwrap_err();
            assert!(e.0.starts_with("sms."), "{e:?}");
        }
    }
}
