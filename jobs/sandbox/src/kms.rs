//! AWS KMS: GenerateDataKey, Decrypt, Encrypt and ReEncrypt on `POST /` (the awsJson1_1
//! protocol, `X-Amz-Target: TrentService.<Operation>`), under the sandbox's one symmetric key,
//! so the fleet's own `aws-sdk-kms` client, given the sandbox's base URL as `endpoint_url`,
//! wraps and unwraps its PII data keys here.
//!
//! A request needs a SigV4 `Authorization` header (`AWS4-HMAC-SHA256 Credential=…`); the
//! signature is not verified. Errors are AWS's `{"__type", "message"}`. A fault set with
//! [`Sandbox::set_kms_fault`] answers every KMS call, before its credentials and body are
//! looked at, and does nothing. Logs carry the operation, the key-material index and error
//! types only: never a plaintext, a blob or an encryption context.

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use crate::{
    handle::Sandbox,
    kms_objects::{
        key_material_id, names_the_key, random_bytes, EncryptionContext, KmsFault, OpenError,
        Opened, KMS_ACCOUNT, KMS_KEY_ARN, KMS_REGION,
    },
    state::State as SandboxState,
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new().route("/", post(kms_call))
}

/// The only encryption algorithm of a symmetric key.
const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";
/// The most bytes `Encrypt` takes (AWS: "up to 4,096 bytes").
const MAX_PLAINTEXT: usize = 4096;
/// The longest `CiphertextBlob` AWS takes.
const MAX_BLOB: usize = 6144;
/// The content type of every awsJson1_1 request and answer.
const AMZ_JSON: &str = "application/x-amz-json-1.1";

/// The operations served, by their `X-Amz-Target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    GenerateDataKey,
    Decrypt,
    Encrypt,
    ReEncrypt,
}

impl Op {
    const ALL: [Op; 4] = [Op::GenerateDataKey, Op::Decrypt, Op::Encrypt, Op::ReEncrypt];

    fn name(self) -> &'static str {
        match self {
            Op::GenerateDataKey => "GenerateDataKey",
            Op::Decrypt => "Decrypt",
            Op::Encrypt => "Encrypt",
            Op::ReEncrypt => "ReEncrypt",
        }
    }

    /// The IAM permission the call needs on the key (ReEncrypt's source side).
    fn permission(self) -> &'static str {
        match self {
            Op::GenerateDataKey => "kms:GenerateDataKey",
            Op::Decrypt => "kms:Decrypt",
            Op::Encrypt => "kms:Encrypt",
            Op::ReEncrypt => "kms:ReEncryptFrom",
        }
    }

    fn from_target(target: &str) -> Option<Op> {
        let name = target.strip_prefix("TrentService.")?;
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// A refusal in AWS's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KmsError {
    status: StatusCode,
    /// `__type`: the bare error shape name.
    kind: &'static str,
    message: String,
}

impl KmsError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// AWS's wording for a member that fails a constraint.
    fn validation(member: &str, constraint: &str) -> Self {
        Self::bad_request(
            "ValidationException",
            format!("1 validation error detected: Value at '{member}' failed to satisfy constraint: {constraint}"),
        )
    }

    fn missing(member: &str) -> Self {
        Self::bad_request(
            "ValidationException",
            format!("1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"),
        )
    }

    fn not_found(key_id: &str) -> Self {
        let message = if key_id.starts_with("alias/") {
            format!("Alias arn:aws:kms:{KMS_REGION}:{KMS_ACCOUNT}:{key_id} is not found.")
        } else if key_id.contains(":alias/") {
            format!("Alias {key_id} is not found.")
        } else {
            format!("Key '{key_id}' does not exist")
        };
        Self::bad_request("NotFoundException", message)
    }

    fn invalid_ciphertext() -> Self {
        // AWS answers this one with an empty message.
        Self::bad_request("InvalidCiphertextException", "")
    }

    fn incorrect_key() -> Self {
        Self::bad_request(
            "IncorrectKeyException",
            "The key ID in the request does not identify a KMS key that can perform this operation.",
        )
    }

    /// What every call gets while `fault` is set.
    fn fault(fault: KmsFault, op: Op) -> Self {
        match fault {
            KmsFault::Throttling => Self::bad_request("ThrottlingException", "Rate exceeded"),
            KmsFault::Outage => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "KMSInternalException",
                "KMS could not complete the request because of an internal error (sandbox fault: outage). Retry the request.",
            ),
            KmsFault::AccessDenied => Self::bad_request(
                "AccessDeniedException",
                format!(
                    "User: arn:aws:iam::{KMS_ACCOUNT}:user/sandbox is not authorized to perform: {perm} on resource: {KMS_KEY_ARN} because no identity-based policy allows the {perm} action",
                    perm = op.permission()
                ),
            ),
        }
    }

    fn response(&self) -> Response {
        amz_json(
            self.status,
            &json!({"__type": self.kind, "message": self.message}),
        )
    }
}

/// `body` as an awsJson1_1 answer, with a fresh `x-amzn-RequestId` (the SDK's `request_id()`).
fn amz_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).expect("json serializes")).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a header"),
    );
    resp
}

/// `POST /`: one KMS call.
async fn kms_call(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let op = Op::from_target(target);
    match call(&sb, op, &headers, &body) {
        Ok((op, material, answer)) => {
            tracing::info!(
                kms.op = op.name(),
                kms.key_material = material,
                "sandbox kms call"
            );
            amz_json(StatusCode::OK, &answer)
        }
        Err(e) => {
            sb.lock().counters.kms_refused += 1;
            tracing::debug!(
                kms.op = op.map(Op::name),
                kms.error = e.kind,
                status = e.status.as_u16(),
                "sandbox kms call refused"
            );
            e.response()
        }
    }
}

/// Checks the call in this order: the operation, the fault, the credentials, the content
/// type and body, then the operation's own members. Returns the operation, the key-material
/// index it sealed or opened with, and the answer.
fn call(
    sb: &Sandbox,
    op: Option<Op>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Op, u32, Value), KmsError> {
    let Some(op) = op else {
        return Err(KmsError::bad_request(
            "UnknownOperationException",
            "X-Amz-Target must be TrentService.GenerateDataKey, TrentService.Decrypt, \
             TrentService.Encrypt or TrentService.ReEncrypt (the operations the sandbox serves)",
        ));
    };
    if let Some(fault) = sb.kms_fault() {
        return Err(KmsError::fault(fault, op));
    }
    authenticate(headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some(AMZ_JSON) {
        return Err(KmsError::bad_request(
            "SerializationException",
            format!("Content-Type must be {AMZ_JSON}"),
        ));
    }
    let (material, answer) = match op {
        Op::GenerateDataKey => generate_data_key(sb, parse(op, body)?)?,
        Op::Decrypt => decrypt(sb, parse(op, body)?)?,
        Op::Encrypt => encrypt(sb, parse(op, body)?)?,
        Op::ReEncrypt => re_encrypt(sb, parse(op, body)?)?,
    };
    Ok((op, material, answer))
}

/// A SigV4 `Authorization` header must be present; its signature is not checked.
fn authenticate(headers: &HeaderMap) -> Result<(), KmsError> {
    let signed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential="));
    if signed {
        Ok(())
    } else {
        Err(KmsError::bad_request(
            "UnrecognizedClientException",
            "The request has no AWS Signature Version 4 Authorization header (AWS4-HMAC-SHA256 Credential=…).",
        ))
    }
}

fn parse<T: DeserializeOwned>(op: Op, body: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(body).map_err(|e| {
        KmsError::bad_request(
            "SerializationException",
            format!(
                "The body is not a JSON object of {}'s members: {e}",
                op.name()
            ),
        )
    })
}

/// The members every request may carry and the sandbox does not simulate.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Unsimulated {
    #[serde(default)]
    recipient: Option<Value>,
    #[serde(default)]
    dry_run: Option<bool>,
}

impl Unsimulated {
    fn check(&self) -> Result<(), KmsError> {
        if self.recipient.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(KmsError::bad_request(
                "ValidationException",
                "Recipient (a Nitro enclave attestation) is not simulated by the sandbox",
            ));
        }
        if self.dry_run == Some(true) {
            return Err(KmsError::bad_request(
                "ValidationException",
                "DryRun is not simulated by the sandbox",
            ));
        }
        Ok(())
    }
}

/// The key a `KeyId` member names: the sandbox's key, or 400 NotFoundException.
fn resolve(member: &str, key_id: Option<&str>) -> Result<(), KmsError> {
    match key_id {
        None => Err(KmsError::missing(member)),
        Some("") => Err(KmsError::validation(
            member,
            "Member must have length greater than or equal to 1",
        )),
        Some(id) if names_the_key(id) => Ok(()),
        Some(id) => Err(KmsError::not_found(id)),
    }
}

/// An optional `KeyId` member: absent is fine, present must name the key.
fn resolve_optional(member: &str, key_id: Option<&str>) -> Result<bool, KmsError> {
    match key_id {
        None => Ok(false),
        some => resolve(member, some).map(|()| true),
    }
}

/// A blob member (base64 in JSON) of 1 to `max` bytes.
fn blob(member: &str, v: Option<&str>, max: usize) -> Result<Vec<u8>, KmsError> {
    let Some(v) = v else {
        return Err(KmsError::missing(member));
    };
    let bytes = B64.decode(v).map_err(|_| {
        KmsError::bad_request(
            "SerializationException",
            format!("'{member}' is not base64"),
        )
    })?;
    if bytes.is_empty() {
        return Err(KmsError::validation(
            member,
            "Member must have length greater than or equal to 1",
        ));
    }
    if bytes.len() > max {
        return Err(KmsError::validation(
            member,
            &format!("Member must have length less than or equal to {max}"),
        ));
    }
    Ok(bytes)
}

/// An `EncryptionAlgorithm` member: absent or `SYMMETRIC_DEFAULT`.
fn algorithm(member: &str, v: Option<&str>) -> Result<(), KmsError> {
    match v {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE") => Err(KmsError::bad_request(
            "InvalidKeyUsageException",
            format!("{KMS_KEY_ARN} is a symmetric encryption key: its only encryption algorithm is {SYMMETRIC_DEFAULT}"),
        )),
        Some(_) => Err(KmsError::validation(
            member,
            "Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]",
        )),
    }
}

/// Opens `blob` with `context`: InvalidCiphertextException when it does not open, or
/// IncorrectKeyException when the request named the key and the blob names another.
fn open(
    st: &SandboxState,
    blob: &[u8],
    context: &EncryptionContext,
    key_named: bool,
) -> Result<Opened, KmsError> {
    st.kms_key.open(blob, context).map_err(|e| match e {
        OpenError::OtherKey if key_named => KmsError::incorrect_key(),
        OpenError::OtherKey | OpenError::Invalid => KmsError::invalid_ciphertext(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateDataKeyRequest {
    key_id: Option<String>,
    key_spec: Option<String>,
    number_of_bytes: Option<i64>,
    encryption_context: Option<EncryptionContext>,
    #[serde(flatten)]
    unsimulated: Unsimulated,
}

fn generate_data_key(sb: &Sandbox, req: GenerateDataKeyRequest) -> Result<(u32, Value), KmsError> {
    resolve("keyId", req.key_id.as_deref())?;
    let len = match (req.key_spec.as_deref(), req.number_of_bytes) {
        (Some("AES_256"), None) => 32,
        (Some("AES_128"), None) => 16,
        (Some(_), None) => {
            return Err(KmsError::validation(
                "keySpec",
                "Member must satisfy enum value set: [AES_256, AES_128]",
            ))
        }
        (None, Some(n)) if (1..=1024).contains(&n) => n as usize,
        (None, Some(_)) => {
            return Err(KmsError::validation(
                "numberOfBytes",
                "Member must have value between 1 and 1024",
            ))
        }
        (Some(_), Some(_)) | (None, None) => {
            return Err(KmsError::bad_request(
                "ValidationException",
                "Please specify either number of bytes or key spec.",
            ))
        }
    };
    req.unsimulated.check()?;
    let context = req.encryption_context.unwrap_or_default();
    let data_key = random_bytes(len);
    let mut st = sb.lock();
    let sealed = st.kms_key.seal(&data_key, &context);
    st.counters.kms_generate_data_key += 1;
    drop(st);
    Ok((
        sealed.material,
        json!({
            "CiphertextBlob": B64.encode(&sealed.blob),
            "Plaintext": B64.encode(&data_key),
            "KeyId": KMS_KEY_ARN,
            "KeyMaterialId": key_material_id(sealed.material),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptRequest {
    ciphertext_blob: Option<String>,
    key_id: Option<String>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
    #[serde(flatten)]
    unsimulated: Unsimulated,
}

fn decrypt(sb: &Sandbox, req: DecryptRequest) -> Result<(u32, Value), KmsError> {
    let ciphertext = blob("ciphertextBlob", req.ciphertext_blob.as_deref(), MAX_BLOB)?;
    let key_named = resolve_optional("keyId", req.key_id.as_deref())?;
    algorithm("encryptionAlgorithm", req.encryption_algorithm.as_deref())?;
    req.unsimulated.check()?;
    let context = req.encryption_context.unwrap_or_default();
    let mut st = sb.lock();
    let opened = open(&st, &ciphertext, &context, key_named)?;
    st.counters.kms_decrypt += 1;
    drop(st);
    Ok((
        opened.material,
        json!({
            "KeyId": KMS_KEY_ARN,
            "Plaintext": B64.encode(&opened.plaintext),
            "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
            "KeyMaterialId": key_material_id(opened.material),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptRequest {
    key_id: Option<String>,
    plaintext: Option<String>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
    #[serde(flatten)]
    unsimulated: Unsimulated,
}

fn encrypt(sb: &Sandbox, req: EncryptRequest) -> Result<(u32, Value), KmsError> {
    resolve("keyId", req.key_id.as_deref())?;
    let plaintext = blob("plaintext", req.plaintext.as_deref(), MAX_PLAINTEXT)?;
    algorithm("encryptionAlgorithm", req.encryption_algorithm.as_deref())?;
    req.unsimulated.check()?;
    let context = req.encryption_context.unwrap_or_default();
    let mut st = sb.lock();
    let sealed = st.kms_key.seal(&plaintext, &context);
    st.counters.kms_encrypt += 1;
    drop(st);
    Ok((
        sealed.material,
        json!({
            "CiphertextBlob": B64.encode(&sealed.blob),
            "KeyId": KMS_KEY_ARN,
            "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptRequest {
    ciphertext_blob: Option<String>,
    source_key_id: Option<String>,
    source_encryption_context: Option<EncryptionContext>,
    source_encryption_algorithm: Option<String>,
    destination_key_id: Option<String>,
    destination_encryption_context: Option<EncryptionContext>,
    destination_encryption_algorithm: Option<String>,
    #[serde(flatten)]
    unsimulated: Unsimulated,
}

/// Opens the blob and seals its plaintext again under the current material (and the
/// destination context); the plaintext never leaves the sandbox.
fn re_encrypt(sb: &Sandbox, req: ReEncryptRequest) -> Result<(u32, Value), KmsError> {
    let ciphertext = blob("ciphertextBlob", req.ciphertext_blob.as_deref(), MAX_BLOB)?;
    resolve("destinationKeyId", req.destination_key_id.as_deref())?;
    let key_named = resolve_optional("sourceKeyId", req.source_key_id.as_deref())?;
    algorithm(
        "sourceEncryptionAlgorithm",
        req.source_encryption_algorithm.as_deref(),
    )?;
    algorithm(
        "destinationEncryptionAlgorithm",
        req.destination_encryption_algorithm.as_deref(),
    )?;
    req.unsimulated.check()?;
    let source_context = req.source_encryption_context.unwrap_or_default();
    let destination_context = req.destination_encryption_context.unwrap_or_default();
    let mut st = sb.lock();
    let opened = open(&st, &ciphertext, &source_context, key_named)?;
    let sealed = st.kms_key.seal(&opened.plaintext, &destination_context);
    st.counters.kms_re_encrypt += 1;
    drop(st);
    Ok((
        sealed.material,
        json!({
            "CiphertextBlob": B64.encode(&sealed.blob),
            "SourceKeyId": KMS_KEY_ARN,
            "KeyId": KMS_KEY_ARN,
            "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
            "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
            "SourceKeyMaterialId": key_material_id(opened.material),
            "DestinationKeyMaterialId": key_material_id(sealed.material),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::SandboxConfig, kms_objects::KMS_KEY_ALIAS};

    fn headers(target: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-amz-target", HeaderValue::from_str(target).unwrap());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIDSANDBOX/20260101/eu-west-1/kms/aws4_request, \
                 SignedHeaders=host, Signature=00",
            ),
        );
        h
    }

    fn run(sb: &Sandbox, op: &str, body: Value) -> Result<Value, KmsError> {
        let target = format!("TrentService.{op}");
        call(
            sb,
            Op::from_target(&target),
            &headers(&target),
            body.to_string().as_bytes(),
        )
        .map(|(_, _, answer)| answer)
    }

    #[test]
    fn a_blob_naming_another_key_is_incorrect_key_when_a_key_is_named_else_invalid() {
        let sb = Sandbox::new(SandboxConfig::default());
        let made = run(
            &sb,
            "GenerateDataKey",
            json!({"KeyId": KMS_KEY_ALIAS, "KeySpec": "AES_256"}),
        )
        .unwrap();
        let mut blob = B64
            .decode(made["CiphertextBlob"].as_str().unwrap())
            .unwrap();
        blob[2] ^= 0xff; // the key id in the header
        let other = B64.encode(&blob);
        let e = run(
            &sb,
            "Decrypt",
            json!({"CiphertextBlob": other, "KeyId": KMS_KEY_ALIAS}),
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "IncorrectKeyException")
        );
        let e = run(&sb, "Decrypt", json!({"CiphertextBlob": other})).unwrap_err();
        assert_eq!(e.kind, "InvalidCiphertextException");
        let e = run(
            &sb,
            "ReEncrypt",
            json!({"CiphertextBlob": other, "SourceKeyId": KMS_KEY_ARN, "DestinationKeyId": KMS_KEY_ALIAS}),
        )
        .unwrap_err();
        assert_eq!(e.kind, "IncorrectKeyException");
        // The genuine blob still opens, with or without a KeyId.
        let ok = run(
            &sb,
            "Decrypt",
            json!({"CiphertextBlob": made["CiphertextBlob"]}),
        )
        .unwrap();
        assert_eq!(ok["Plaintext"], made["Plaintext"]);
    }

    #[test]
    fn malformed_members_are_validation_or_serialization_errors_and_do_nothing() {
        let sb = Sandbox::new(SandboxConfig::default());
        for (op, body, kind) in [
            (
                "GenerateDataKey",
                json!({"KeySpec": "AES_256"}),
                "ValidationException",
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": KMS_KEY_ALIAS}),
                "ValidationException",
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": KMS_KEY_ALIAS, "KeySpec": "AES_256", "NumberOfBytes": 32}),
                "ValidationException",
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": KMS_KEY_ALIAS, "NumberOfBytes": 2048}),
                "ValidationException",
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": KMS_KEY_ALIAS, "KeySpec": "AES_256", "EncryptionContext": {"a": 1}}),
                "SerializationException",
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": KMS_KEY_ALIAS, "KeySpec": "AES_256", "DryRun": true}),
                "ValidationException",
            ),
            ("Decrypt", json!({}), "ValidationException"),
            (
                "Decrypt",
                json!({"CiphertextBlob": "!!"}),
                "SerializationException",
            ),
            (
                "Decrypt",
                json!({"CiphertextBlob": ""}),
                "ValidationException",
            ),
            (
                "Decrypt",
                json!({"CiphertextBlob": "AAAA"}),
                "InvalidCiphertextException",
            ),
            (
                "Decrypt",
                json!({"CiphertextBlob": "AAAA", "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
                "InvalidKeyUsageException",
            ),
            (
                "Encrypt",
                json!({"KeyId": KMS_KEY_ALIAS}),
                "ValidationException",
            ),
            (
                "Encrypt",
                json!({"KeyId": KMS_KEY_ALIAS, "Plaintext": B64.encode([0u8; 4097])}),
                "ValidationException",
            ),
            (
                "ReEncrypt",
                json!({"CiphertextBlob": "AAAA"}),
                "ValidationException",
            ),
        ] {
            let e = run(&sb, op, body.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.kind),
                (StatusCode::BAD_REQUEST, kind),
                "{op} {body}: {e:?}"
            );
        }
        let c = sb.counters();
        assert_eq!(
            (
                c.kms_generate_data_key,
                c.kms_decrypt,
                c.kms_encrypt,
                c.kms_re_encrypt
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn the_operation_is_checked_first_then_the_fault_then_the_credentials() {
        let sb = Sandbox::new(SandboxConfig::default());
        let mut h = headers("TrentService.ListKeys");
        assert_eq!(
            call(&sb, Op::from_target("TrentService.ListKeys"), &h, b"{}")
                .unwrap_err()
                .kind,
            "UnknownOperationException"
        );
        h.remove(header::AUTHORIZATION);
        let e = call(&sb, Some(Op::Decrypt), &h, b"{}").unwrap_err();
        assert_eq!(e.kind, "UnrecognizedClientException");
        sb.set_kms_fault(Some(KmsFault::AccessDenied));
        let e = call(&sb, Some(Op::ReEncrypt), &h, b"{}").unwrap_err();
        assert_eq!(e.kind, "AccessDeniedException");
        assert!(e.message.contains("kms:ReEncryptFrom"), "{}", e.message);
        sb.set_kms_fault(None);
        let mut plain = headers("TrentService.Decrypt");
        plain.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let e = call(&sb, Some(Op::Decrypt), &plain, b"{}").unwrap_err();
        assert_eq!(e.kind, "SerializationException");
    }
}
