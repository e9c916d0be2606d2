//! AWS KMS, through AWS's own Rust SDK (`aws-sdk-kms`): the master key that wraps the PII data
//! keys ([`crate::pii_keys`]). The fleet never holds the master key; it asks KMS to generate a
//! data key (GenerateDataKey: the key in clear once, and wrapped), to unwrap one (Decrypt) and
//! to wrap one again under the master key's current material (ReEncrypt; the clear key never
//! leaves KMS).
//!
//! The SDK runs on hyper 1 + rustls with ring (its default features pull aws-lc, which the
//! project does not build), with its own retries **off**: the job queue retries, with backoff,
//! and a rate limit snoozes the job. Every call carries the encryption context
//! `{purpose: parker-pii, data_key_version: <n>}`, so a wrapped key only unwraps for the
//! version it was made for.
//!
//! Errors are classified by KMS's error code (the SDK does not model ThrottlingException or
//! AccessDeniedException for these operations): throttling is
//! [`FailureClass::RateLimited`], KMS's internal and dependency failures, 5xx and transport
//! errors are [`FailureClass::Ambiguous`] (nothing these calls do is harmful to repeat), and
//! access denied, disabled or missing keys, bad ciphertext are [`FailureClass::Rejected`]:
//! retried by the job all the same (a fixed policy resumes the work), never worked around.

use std::{fmt, time::Duration};

use aws_sdk_kms::{
    config::{
        http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion,
        Credentials, Region,
    },
    error::{ProvideErrorMetadata, SdkError},
    primitives::Blob,
    types::DataKeySpec,
};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{ApiKey, FailureClass, ProviderConfigError};
use crate::BoxFuture;

/// The alias of the master key the documents name.
pub const DEFAULT_KEY_ID: &str = "alias/parker-kms-key";

/// KMS settings (`[providers.kms]`). KMS is used for the PII keys when `secret_access_key` is
/// set; otherwise the environment keyring (`FLEET_PII_KEYS`) is, as for local runs and the demo.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsConfig {
    /// Endpoint; empty: AWS's regional endpoint. A loopback stand-in in tests.
    pub base_url: String,
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// The master key: alias, key id or ARN. Default `alias/parker-kms-key`.
    pub key_id: String,
    /// Access key id of the fleet's IAM user or role session.
    pub access_key_id: String,
    /// Its secret (`FLEET_PROVIDERS__KMS__SECRET_ACCESS_KEY`); never printed.
    pub secret_access_key: ApiKey,
    /// Budget of one call (connect, send, read).
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
    /// How long an unwrapped data key is kept in memory before KMS is asked again.
    #[serde(deserialize_with = "super::duration")]
    pub cache_ttl: Duration,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            region: "eu-west-1".to_owned(),
            key_id: DEFAULT_KEY_ID.to_owned(),
            access_key_id: String::new(),
            secret_access_key: ApiKey::default(),
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(300),
        }
    }
}

/// A failed KMS call: its class and KMS's error code (never a message: it can quote ARNs of
/// principals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kms {op} {}: {}", .class.as_str(), .code.as_deref().unwrap_or("no code"))]
pub struct KmsError {
    /// What it means.
    pub class: FailureClass,
    /// The operation.
    pub op: &'static str,
    /// KMS's error code (`ThrottlingException`, `AccessDeniedException`, …), or the transport
    /// failure's kind.
    pub code: Option<String>,
}

impl From<KmsError> for crate::JobError {
    fn from(e: KmsError) -> Self {
        match e.class {
            // Throttling: the job waits without using an attempt.
            FailureClass::RateLimited => {
                crate::JobError::snooze(Duration::from_secs(2), e.to_string())
            }
            // Refusals are configuration (a key policy, a disabled key): retried like an
            // outage, so fixing the policy resumes the work; the job dies visibly if it is not.
            _ => crate::JobError::retryable(e.to_string()),
        }
    }
}

/// A data key fresh from KMS: in clear (wiped on drop) and wrapped under the master key.
pub struct NewDataKey {
    /// The 32-byte key.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// KMS's CiphertextBlob: stored, unwrapped by [`KmsApi::decrypt`].
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for NewDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDataKey")
            .field("wrapped_len", &self.wrapped.len())
            .finish_non_exhaustive()
    }
}

/// KMS, as the PII key store sees it. Object safe.
pub trait KmsApi: Send + Sync {
    /// GenerateDataKey (AES_256) under the master key, for data key `version`.
    fn generate_data_key(&self, version: i32) -> BoxFuture<'_, Result<NewDataKey, KmsError>>;
    /// Decrypt: the data key `version` wrapped as `wrapped`.
    fn decrypt<'a>(
        &'a self,
        version: i32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsError>>;
    /// ReEncrypt: the same data key wrapped again under the master key's current material.
    fn rewrap<'a>(
        &'a self,
        version: i32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>>;
}

/// The SDK's client for one master key.
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// A client for `config`'s key; refuses a missing key id, region or credentials.
    pub fn new(config: &KmsConfig) -> Result<Self, ProviderConfigError> {
        let bad = |what: &str| Err(ProviderConfigError(format!("kms.{what} is empty")));
        if config.key_id.trim().is_empty() {
            return bad("key_id");
        }
        if config.region.trim().is_empty() {
            return bad("region");
        }
        if config.access_key_id.trim().is_empty() {
            return bad("access_key_id");
        }
        if config.secret_access_key.is_empty() {
            return bad("secret_access_key");
        }
        let endpoint = config.base_url.trim().trim_end_matches('/');
        let http = if endpoint.starts_with("http://") {
            // A loopback stand-in: no TLS.
            aws_smithy_http_client::Builder::new().build_http()
        } else {
            use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https()
        };
        let mut b = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::v2026_11_17())
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.expose().to_owned(),
                None,
                None,
                "fleet-config",
            ))
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.timeout.min(Duration::from_secs(2)))
                    .operation_attempt_timeout(config.timeout)
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if !endpoint.is_empty() {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ProviderConfigError(
                    "kms.base_url must start with http:// or https://".into(),
                ));
            }
            b = b.endpoint_url(endpoint);
        }
        Ok(Self {
            client: aws_sdk_kms::Client::from_conf(b.build()),
            key_id: config.key_id.clone(),
        })
    }
}

/// The encryption context of data key `version`.
fn context(version: i32) -> [(&'static str, String); 2] {
    [
        ("purpose", "parker-pii".to_owned()),
        ("data_key_version", version.to_string()),
    ]
}

/// KMS's error code as a class (see the module docs).
pub fn classify_kms(code: &str, status: Option<u16>) -> FailureClass {
    match code {
        "ThrottlingException" | "Throttling" | "LimitExceededException" => {
            FailureClass::RateLimited
        }
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "InternalFailure"
        | "ServiceUnavailable" => FailureClass::Ambiguous,
        "AccessDeniedException"
        | "DisabledException"
        | "NotFoundException"
        | "KMSInvalidStateException"
        | "InvalidKeyUsageException"
        | "InvalidCiphertextException"
        | "IncorrectKeyException"
        | "UnrecognizedClientException" => FailureClass::Rejected,
        _ if status.is_some_and(|s| !(300..500).contains(&s)) => FailureClass::Ambiguous,
        _ => FailureClass::Invalid,
    }
}

fn failed<E: ProvideErrorMetadata>(op: &'static str, e: SdkError<E, HttpResponse>) -> KmsError {
    let (class, code) = match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().map(str::to_owned);
            let status = se.raw().status().as_u16();
            (
                classify_kms(code.as_deref().unwrap_or(""), Some(status)),
                code.or_else(|| Some(format!("http_{status}"))),
            )
        }
        SdkError::TimeoutError(_) => (FailureClass::Ambiguous, Some("timeout".to_owned())),
        SdkError::DispatchFailure(_) => (FailureClass::Ambiguous, Some("dispatch".to_owned())),
        SdkError::ResponseError(_) => (FailureClass::Ambiguous, Some("response".to_owned())),
        _ => (FailureClass::Invalid, Some("construction".to_owned())),
    };
    tracing::debug!(provider = "kms", op, class = %class.as_str(), code = code.as_deref(), "kms call failed");
    KmsError { class, op, code }
}

fn observed<T>(
    op: &'static str,
    started: std::time::Instant,
    r: Result<T, KmsError>,
) -> Result<T, KmsError> {
    super::observe(
        "kms",
        op,
        started,
        r.as_ref().map(|_| ()).map_err(|e| e.class),
    );
    r
}

impl KmsApi for AwsKms {
    fn generate_data_key(&self, version: i32) -> BoxFuture<'_, Result<NewDataKey, KmsError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut req = self
                .client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(DataKeySpec::Aes256);
            for (k, v) in context(version) {
                req = req.encryption_context(k, v);
            }
            let r = match req.send().await {
                Ok(out) => match (out.plaintext, out.ciphertext_blob) {
                    (Some(p), Some(c)) if p.as_ref().len() == crate::pii::KEY_LEN => {
                        Ok(NewDataKey {
                            plaintext: Zeroizing::new(p.into_inner()),
                            wrapped: c.into_inner(),
                        })
                    }
                    _ => Err(KmsError {
                        class: FailureClass::Ambiguous,
                        op: "generate_data_key",
                        code: Some("incomplete_answer".to_owned()),
                    }),
                },
                Err(e) => Err(failed("generate_data_key", e)),
            };
            observed("generate_data_key", started, r)
        })
    }

    fn decrypt<'a>(
        &'a self,
        version: i32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut req = self
                .client
                .decrypt()
                .key_id(&self.key_id)
                .ciphertext_blob(Blob::new(wrapped));
            for (k, v) in context(version) {
                req = req.encryption_context(k, v);
            }
            let r = match req.send().await {
                Ok(out) => match out.plaintext {
                    Some(p) if p.as_ref().len() == crate::pii::KEY_LEN => {
                        Ok(Zeroizing::new(p.into_inner()))
                    }
                    _ => Err(KmsError {
                        class: FailureClass::Ambiguous,
                        op: "decrypt",
                        code: Some("incomplete_answer".to_owned()),
                    }),
                },
                Err(e) => Err(failed("decrypt", e)),
            };
            observed("decrypt", started, r)
        })
    }

    fn rewrap<'a>(
        &'a self,
        version: i32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut req = self
                .client
                .re_encrypt()
                .ciphertext_blob(Blob::new(wrapped))
                .source_key_id(&self.key_id)
                .destination_key_id(&self.key_id);
            for (k, v) in context(version) {
                req = req
                    .source_encryption_context(k, v.clone())
                    .destination_encryption_context(k, v);
            }
            let r = match req.send().await {
                Ok(out) => out.ciphertext_blob.map(Blob::into_inner).ok_or(KmsError {
                    class: FailureClass::Ambiguous,
                    op: "re_encrypt",
                    code: Some("incomplete_answer".to_owned()),
                }),
                Err(e) => Err(failed("re_encrypt", e)),
            };
            observed("re_encrypt", started, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_codes_are_classified_and_only_throttling_snoozes() {
        assert_eq!(
            classify_kms("ThrottlingException", None),
            FailureClass::RateLimited
        );
        assert_eq!(
            classify_kms("KMSInternalException", None),
            FailureClass::Ambiguous
        );
        assert_eq!(
            classify_kms("AccessDeniedException", None),
            FailureClass::Rejected
        );
        assert_eq!(classify_kms("", Some(503)), FailureClass::Ambiguous);
        assert_eq!(classify_kms("Whatever", Some(400)), FailureClass::Invalid);
        let throttled = KmsError {
            class: FailureClass::RateLimited,
            op: "decrypt",
            code: Some("ThrottlingException".into()),
        };
        assert!(matches!(
            crate::JobError::from(throttled),
            crate::JobError::Snooze { .. }
        ));
        let denied = KmsError {
            class: FailureClass::Rejected,
            op: "decrypt",
            code: Some("AccessDeniedException".into()),
        };
        let e = crate::JobError::from(denied);
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "kms decrypt rejected: AccessDeniedException");
    }

    #[test]
    fn a_kms_client_needs_its_key_region_and_credentials() {
        let ok = KmsConfig {
            base_url: "http://127.0.0.1:1".into(),
            access_key_id: "AKIDFLEET".into(),
            secret_access_key: ApiKey::new("secret"),
            ..KmsConfig::default()
        };
        assert!(AwsKms::new(&ok).is_ok());
        let no_secret = KmsConfig {
            secret_access_key: ApiKey::default(),
            ..ok.clone()
        };
        assert_eq!(
            AwsKms::new(&no_secret).unwrap_err().0,
            "kms.secret_access_key is empty"
        );
        let bad_url = KmsConfig {
            base_url: "127.0.0.1:1".into(),
            ..ok
        };
        assert!(AwsKms::new(&bad_url).unwrap_err().0.contains("http://"));
    }
}
