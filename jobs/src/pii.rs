//! Field-level encryption of PII (passport numbers and any other column marked sensitive).
//!
//! Contract (docs/domain.md §2, §6):
//! - **AES-256-GCM**, a fresh random 96-bit nonce per encryption (OS RNG), the **row id as
//!   associated data**: a ciphertext copied onto another row does not decrypt.
//! - Stored form: the `bytea` column holds `nonce (12 bytes) || ciphertext || tag (16 bytes)`;
//!   the key version sits beside it in its own `int` column (see [`Sealed`]).
//! - Keys come from a [`Keyring`] (version → 32-byte key) read from [`KEYS_ENV`]. The newest
//!   (highest) version encrypts; every listed version decrypts. Rotating = prepend a new
//!   version, deploy, run the re-encryption backfill ([`Keyring::needs_rotation`],
//!   [`Keyring::reseal`]), and only then drop the old version from the variable.
//! - Plaintext never reaches a log or an error: [`Plaintext`] has no `Display`, its `Debug`
//!   prints `***`, and its buffer is wiped on drop. No error in this module carries plaintext,
//!   ciphertext or key bytes, and [`Keyring`]'s `Debug` lists versions only.
//!
//! Random 96-bit nonces are safe for up to about 2^32 encryptions per key; at the brief's scale
//! (≈10^5 profiles, re-encrypted once per rotation) that bound is far away.

use std::{collections::BTreeMap, env::VarError, fmt};

use aes_gcm::{
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
    Aes256Gcm, Nonce,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::JobError;

/// The environment variable holding the keyring: `v2:<base64>,v1:<base64>` — comma-separated
/// entries `v<version>:<standard base64 of exactly 32 bytes>`, in any order.
pub const KEYS_ENV: &str = "FLEET_PII_KEYS";

/// Bytes of the random nonce at the head of every stored ciphertext.
pub const NONCE_LEN: usize = 12;

/// Bytes of the GCM authentication tag at the end of every stored ciphertext.
pub const TAG_LEN: usize = 16;

/// Bytes of one AES-256 key.
pub const KEY_LEN: usize = 32;

/// Why [`KEYS_ENV`] could not be turned into a [`Keyring`]. A startup error: the process
/// should refuse to run rather than guess.
///
/// Every message names [`KEYS_ENV`] and, where it applies, the entry (1-based position and,
/// once parsed, its version). No variant holds any part of an entry's text, so neither the
/// message nor `Debug` can leak key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The variable is not set.
    #[error("{KEYS_ENV} is not set: expected `v<version>:<base64 32-byte key>[,...]`")]
    Missing,
    /// The variable is set but not valid Unicode.
    #[error("{KEYS_ENV} is not valid UTF-8")]
    NotUnicode,
    /// The variable is set but empty (or only whitespace).
    #[error("{KEYS_ENV} is empty: expected `v<version>:<base64 32-byte key>[,...]`")]
    Empty,
    /// An entry is not of the form `v<version>:<key>` (e.g. empty between commas, no `v`, no `:`).
    #[error(
        "{KEYS_ENV} entry {position} is malformed: expected `v<version>:<base64 32-byte key>`"
    )]
    Malformed {
        /// 1-based position of the entry in the list.
        position: usize,
    },
    /// The version after `v` is not an integer in `1..=2147483647`.
    #[error("{KEYS_ENV} entry {position}: the version must be an integer from 1 to 2147483647")]
    BadVersion {
        /// 1-based position of the entry in the list.
        position: usize,
    },
    /// The key is not standard (padded) base64.
    #[error("{KEYS_ENV} entry {position} (v{version}): the key is not valid standard base64")]
    BadBase64 {
        /// 1-based position of the entry in the list.
        position: usize,
        /// The entry's version.
        version: i32,
    },
    /// The key decodes to something other than 32 bytes.
    #[error(
        "{KEYS_ENV} entry {position} (v{version}): the key is {len} bytes, expected {KEY_LEN}"
    )]
    BadKeyLength {
        /// 1-based position of the entry in the list.
        position: usize,
        /// The entry's version.
        version: i32,
        /// Decoded length.
        len: usize,
    },
    /// The same version appears twice.
    #[error("{KEYS_ENV} entry {position}: version v{version} is listed more than once")]
    DuplicateVersion {
        /// 1-based position of the second occurrence.
        position: usize,
        /// The repeated version.
        version: i32,
    },
}

/// Why a value could not be sealed or opened. Messages carry the key version and the row id
/// (ids, not PII) — never plaintext, ciphertext or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiiError {
    /// The row was sealed under a version the keyring does not list (dropped too early, or a
    /// deployment missing the newest key).
    #[error("PII key version v{key_version} is not in {KEYS_ENV}")]
    UnknownKeyVersion {
        /// The row's `encryption_key_version`.
        key_version: i32,
    },
    /// The stored bytes are too short to hold a nonce and a tag.
    #[error("PII ciphertext of row {row_id} is {len} bytes, shorter than nonce + tag ({})", NONCE_LEN + TAG_LEN)]
    Truncated {
        /// The row the value belongs to.
        row_id: Uuid,
        /// Stored length.
        len: usize,
    },
    /// Authentication failed: wrong key, a ciphertext from another row, or tampered bytes.
    #[error("PII of row {row_id} does not decrypt under v{key_version}: wrong key, wrong row or tampered ciphertext")]
    Decrypt {
        /// The row the value was read from.
        row_id: Uuid,
        /// The key version tried.
        key_version: i32,
    },
    /// Encryption failed (only possible for inputs beyond AES-GCM's length limit).
    #[error("PII of row {row_id} could not be encrypted")]
    Encrypt {
        /// The row the value is for.
        row_id: Uuid,
    },
    /// The decrypted bytes are not UTF-8 (they authenticated, so they were sealed that way).
    #[error("PII of row {row_id} decrypted to bytes that are not UTF-8")]
    NotUtf8 {
        /// The row the value was read from.
        row_id: Uuid,
    },
}

/// None of these gets better by retrying the same job with the same keyring: the job is dead
/// at once, visible and replayable after the keyring or data is fixed.
impl From<PiiError> for JobError {
    fn from(e: PiiError) -> Self {
        JobError::fatal(e)
    }
}

/// A decrypted value. It cannot be printed: no `Display`, `Debug` shows `***`; call
/// [`Plaintext::expose`] at the one place the value is used (e.g. a Duffel passenger body).
/// The buffer is wiped when dropped.
pub struct Plaintext(Zeroizing<String>);

impl Plaintext {
    /// Wraps a value so it cannot be printed by accident.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself. Never log it or put it in an error, a job payload or a metric.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A sealed value as stored: `bytes` goes to the `*_enc bytea` column, `key_version` to the
/// row's `encryption_key_version` column.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Version of the key that sealed `bytes`.
    pub key_version: i32,
    /// `nonce (12) || ciphertext || tag (16)`.
    pub bytes: Vec<u8>,
}

/// Shows the version and length only: ciphertext is not secret, but it is noise in a log.
impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_version", &self.key_version)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The PII keys: version → AES-256 key. The newest (highest) version encrypts; every listed
/// version decrypts. Build it once at startup ([`Keyring::from_env`]) and share it (`Arc`).
pub struct Keyring {
    ciphers: BTreeMap<i32, Aes256Gcm>,
    newest: i32,
}

/// Lists versions only, never keys.
impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.ciphers.keys().collect::<Vec<_>>())
            .field("encrypts_with", &self.newest)
            .finish()
    }
}

impl Keyring {
    /// Reads and parses [`KEYS_ENV`]. The copy of the variable's value is wiped afterwards.
    pub fn from_env() -> Result<Self, KeyringError> {
        Self::from_var(std::env::var(KEYS_ENV))
    }

    fn from_var(var: Result<String, VarError>) -> Result<Self, KeyringError> {
        match var {
            Ok(value) => Self::parse(&Zeroizing::new(value)),
            Err(VarError::NotPresent) => Err(KeyringError::Missing),
            Err(VarError::NotUnicode(mut raw)) => {
                raw.zeroize_os_string();
                Err(KeyringError::NotUnicode)
            }
        }
    }

    /// Parses a keyring in [`KEYS_ENV`]'s format: `v2:<base64>,v1:<base64>` (entries in any
    /// order, whitespace around entries ignored). Errors name [`KEYS_ENV`] and the entry.
    pub fn parse(value: &str) -> Result<Self, KeyringError> {
        if value.trim().is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut ciphers = BTreeMap::new();
        for (index, entry) in value.split(',').enumerate() {
            let position = index + 1;
            let (version, key) = entry
                .trim()
                .split_once(':')
                .ok_or(KeyringError::Malformed { position })?;
            let version = version
                .strip_prefix('v')
                .ok_or(KeyringError::Malformed { position })?;
            // Only ASCII digits: `i32::from_str` would also take a sign.
            let version = version
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| version.parse::<i32>().ok())
                .flatten()
                .filter(|v| *v >= 1)
                .ok_or(KeyringError::BadVersion { position })?;
            let key = Zeroizing::new(
                STANDARD
                    .decode(key)
                    .map_err(|_| KeyringError::BadBase64 { position, version })?,
            );
            if key.len() != KEY_LEN {
                return Err(KeyringError::BadKeyLength {
                    position,
                    version,
                    len: key.len(),
                });
            }
            if ciphers.contains_key(&version) {
                return Err(KeyringError::DuplicateVersion { position, version });
            }
            let cipher = Aes256Gcm::new_from_slice(&key).expect("key length checked above");
            ciphers.insert(version, cipher);
        }
        let newest = *ciphers.keys().next_back().expect("at least one entry");
        Ok(Self { ciphers, newest })
    }

    /// A keyring of unwrapped data keys (KMS envelope encryption, [`crate::pii_keys`]): version
    /// → 32-byte key; the highest version encrypts. `None` when `keys` is empty or a key is
    /// not 32 bytes. The caller's copies are its to wipe.
    pub fn from_data_keys<'a>(keys: impl IntoIterator<Item = (i32, &'a [u8])>) -> Option<Self> {
        let mut ciphers = BTreeMap::new();
        for (version, key) in keys {
            if key.len() != KEY_LEN || version < 1 {
                return None;
            }
            ciphers.insert(version, Aes256Gcm::new_from_slice(key).ok()?);
        }
        let newest = *ciphers.keys().next_back()?;
        Some(Self { ciphers, newest })
    }

    /// A keyring of one fresh random key (`v1`), in [`KEYS_ENV`]'s format, for a throwaway
    /// scratch database whose processes must share it (benchmarks). Never for real data: the
    /// key exists only in this value and the processes given it.
    pub fn fresh_spec() -> Zeroizing<String> {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        Zeroizing::new(format!("v1:{}", STANDARD.encode(key)))
    }

    /// The version [`Keyring::encrypt`] seals under.
    pub fn newest_version(&self) -> i32 {
        self.newest
    }

    /// Every version that decrypts, ascending.
    pub fn versions(&self) -> impl Iterator<Item = i32> + '_ {
        self.ciphers.keys().copied()
    }

    /// Whether a row sealed under `key_version` should be re-encrypted under the newest key
    /// (the rotation backfill's filter). False for the newest version and for versions newer
    /// than it (which [`Keyring::decrypt`] reports as unknown).
    pub fn needs_rotation(&self, key_version: i32) -> bool {
        key_version < self.newest
    }

    /// Seals `plaintext` for the row `row_id` under the newest key, with a fresh random nonce.
    pub fn encrypt(&self, row_id: Uuid, plaintext: &str) -> Result<Sealed, PiiError> {
        let cipher = &self.ciphers[&self.newest];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: row_id.as_bytes(),
                },
            )
            .map_err(|_| PiiError::Encrypt { row_id })?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(Sealed {
            key_version: self.newest,
            bytes,
        })
    }

    /// Opens a value read from the row `row_id`, sealed under `key_version`. Fails if the
    /// version is not in the keyring, or if the bytes were altered, belong to another row or
    /// were sealed under another key.
    pub fn decrypt(
        &self,
        row_id: Uuid,
        key_version: i32,
        bytes: &[u8],
    ) -> Result<Plaintext, PiiError> {
        let cipher = self
            .ciphers
            .get(&key_version)
            .ok_or(PiiError::UnknownKeyVersion { key_version })?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(PiiError::Truncated {
                row_id,
                len: bytes.len(),
            });
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let opened = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: row_id.as_bytes(),
                },
            )
            .map_err(|_| PiiError::Decrypt {
                row_id,
                key_version,
            })?;
        match String::from_utf8(opened) {
            Ok(text) => Ok(Plaintext::new(text)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(PiiError::NotUtf8 { row_id })
            }
        }
    }

    /// For the rotation backfill: if `key_version` is older than the newest, opens the value
    /// and seals it again under the newest key (fresh nonce, same row); otherwise `None`.
    pub fn reseal(
        &self,
        row_id: Uuid,
        key_version: i32,
        bytes: &[u8],
    ) -> Result<Option<Sealed>, PiiError> {
        if !self.needs_rotation(key_version) {
            return Ok(None);
        }
        let plaintext = self.decrypt(row_id, key_version, bytes)?;
        self.encrypt(row_id, plaintext.expose()).map(Some)
    }
}

/// `OsString` has no `Zeroize` impl; wipe it through its bytes where the platform allows.
trait ZeroizeOsString {
    fn zeroize_os_string(&mut self);
}

impl ZeroizeOsString for std::ffi::OsString {
    #[cfg(unix)]
    fn zeroize_os_string(&mut self) {
        use std::os::unix::ffi::OsStringExt;
        let mut bytes = std::mem::take(self).into_vec();
        bytes.zeroize();
    }

    #[cfg(not(unix))]
    fn zeroize_os_string(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Distinct, recognisable keys so a leak would be visible in a message.
    const KEY_1: [u8; KEY_LEN] = [0x11; KEY_LEN];
    const KEY_2: [u8; KEY_LEN] = [0x22; KEY_LEN];
    const PASSPORT: &str = "X12345678";

    fn b64(key: &[u8]) -> String {
        STANDARD.encode(key)
    }

    fn keyring(entries: &[(i32, &[u8])]) -> Keyring {
        let value = entries
            .iter()
            .map(|(v, k)| format!("v{v}:{}", b64(k)))
            .collect::<Vec<_>>()
            .join(",");
        Keyring::parse(&value).unwrap()
    }

    fn parse_err(value: &str) -> KeyringError {
        Keyring::parse(value).unwrap_err()
    }

    #[test]
    fn round_trip_returns_the_plaintext() {
        let ring = keyring(&[(1, &KEY_1)]);
        let row = Uuid::new_v4();
        let sealed = ring.encrypt(row, PASSPORT).unwrap();
        assert_eq!(sealed.bytes.len(), NONCE_LEN + PASSPORT.len() + TAG_LEN);
        assert!(!sealed
            .bytes
            .windows(PASSPORT.len())
            .any(|w| w == PASSPORT.as_bytes()));
        let opened = ring
            .decrypt(row, sealed.key_version, &sealed.bytes)
            .unwrap();
        assert_eq!(opened.expose(), PASSPORT);
    }

    #[test]
    fn each_encryption_uses_a_fresh_nonce() {
        let ring = keyring(&[(1, &KEY_1)]);
        let row = Uuid::new_v4();
        let a = ring.encrypt(row, PASSPORT).unwrap();
        let b = ring.encrypt(row, PASSPORT).unwrap();
        assert_ne!(a.bytes[..NONCE_LEN], b.bytes[..NONCE_LEN]);
        assert_ne!(a.bytes, b.bytes);
    }

    #[test]
    fn ciphertext_copied_to_another_row_does_not_decrypt() {
        let ring = keyring(&[(1, &KEY_1)]);
        let (row, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = ring.encrypt(row, PASSPORT).unwrap();
        let err = ring
            .decrypt(other, sealed.key_version, &sealed.bytes)
            .unwrap_err();
        assert_eq!(
            err,
            PiiError::Decrypt {
                row_id: other,
                key_version: 1
            }
        );
    }

    #[test]
    fn tampered_byte_anywhere_fails_to_decrypt() {
        let ring = keyring(&[(1, &KEY_1)]);
        let row = Uuid::new_v4();
        let sealed = ring.encrypt(row, PASSPORT).unwrap();
        // Nonce, ciphertext body and tag alike.
        for i in 0..sealed.bytes.len() {
            let mut bytes = sealed.bytes.clone();
            bytes[i] ^= 0x01;
            assert!(
                matches!(ring.decrypt(row, 1, &bytes), Err(PiiError::Decrypt { .. })),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn truncated_ciphertext_is_refused() {
        let ring = keyring(&[(1, &KEY_1)]);
        let row = Uuid::new_v4();
        let err = ring
            .decrypt(row, 1, &[0u8; NONCE_LEN + TAG_LEN - 1])
            .unwrap_err();
        assert_eq!(
            err,
            PiiError::Truncated {
                row_id: row,
                len: NONCE_LEN + TAG_LEN - 1
            }
        );
    }

    #[test]
    fn newest_version_encrypts_whatever_the_listed_order() {
        for value in [
            format!("v2:{},v1:{}", b64(&KEY_2), b64(&KEY_1)),
            format!("v1:{}, v2:{}", b64(&KEY_1), b64(&KEY_2)),
        ] {
            let ring = Keyring::parse(&value).unwrap();
            assert_eq!(ring.newest_version(), 2);
            assert_eq!(ring.versions().collect::<Vec<_>>(), [1, 2]);
            let row = Uuid::new_v4();
            let sealed = ring.encrypt(row, PASSPORT).unwrap();
            assert_eq!(sealed.key_version, 2);
            // Really sealed with key 2: a keyring holding only key 2 opens it.
            let only_2 = keyring(&[(2, &KEY_2)]);
            assert_eq!(
                only_2.decrypt(row, 2, &sealed.bytes).unwrap().expose(),
                PASSPORT
            );
        }
    }

    #[test]
    fn old_version_still_decrypts_after_rotation() {
        let row = Uuid::new_v4();
        let before = keyring(&[(1, &KEY_1)]);
        let old = before.encrypt(row, PASSPORT).unwrap();

        let after = keyring(&[(2, &KEY_2), (1, &KEY_1)]);
        assert_eq!(
            after.decrypt(row, 1, &old.bytes).unwrap().expose(),
            PASSPORT
        );
        assert!(after.needs_rotation(1));
        assert!(!after.needs_rotation(2));

        let resealed = after.reseal(row, 1, &old.bytes).unwrap().unwrap();
        assert_eq!(resealed.key_version, 2);
        assert_eq!(
            after.decrypt(row, 2, &resealed.bytes).unwrap().expose(),
            PASSPORT
        );
        assert!(after.reseal(row, 2, &resealed.bytes).unwrap().is_none());
    }

    #[test]
    fn wrong_key_under_the_same_version_fails_to_decrypt() {
        let row = Uuid::new_v4();
        let sealed = keyring(&[(1, &KEY_1)]).encrypt(row, PASSPORT).unwrap();
        let impostor = keyring(&[(1, &KEY_2)]);
        assert!(matches!(
            impostor.decrypt(row, 1, &sealed.bytes),
            Err(PiiError::Decrypt { .. })
        ));
    }

    #[test]
    fn unknown_version_is_an_error_naming_the_version() {
        let ring = keyring(&[(2, &KEY_2)]);
        let row = Uuid::new_v4();
        let sealed = keyring(&[(1, &KEY_1)]).encrypt(row, PASSPORT).unwrap();
        let err = ring.decrypt(row, 1, &sealed.bytes).unwrap_err();
        assert_eq!(err, PiiError::UnknownKeyVersion { key_version: 1 });
        assert_eq!(
            err.to_string(),
            "PII key version v1 is not in FLEET_PII_KEYS"
        );
        assert!(!ring.needs_rotation(3));
        assert_eq!(
            ring.decrypt(row, 3, &sealed.bytes).unwrap_err(),
            PiiError::UnknownKeyVersion { key_version: 3 }
        );
    }

    #[test]
    fn parse_errors_name_fleet_pii_keys_and_the_entry_without_key_material() {
        let good_1 = b64(&KEY_1);
        let good_2 = b64(&KEY_2);
        let short = b64(&KEY_1[..31]);
        let long = b64(&[0x33; 33]);
        let cases: Vec<(String, KeyringError)> = vec![
            (String::new(), KeyringError::Empty),
            ("  ".into(), KeyringError::Empty),
            (good_1.clone(), KeyringError::Malformed { position: 1 }),
            (
                format!("v2:{good_2},"),
                KeyringError::Malformed { position: 2 },
            ),
            (
                format!("v2:{good_2},,v1:{good_1}"),
                KeyringError::Malformed { position: 2 },
            ),
            (
                format!("2:{good_2}"),
                KeyringError::Malformed { position: 1 },
            ),
            (
                format!("v2:{good_2},vx:{good_1}"),
                KeyringError::BadVersion { position: 2 },
            ),
            (
                format!("v0:{good_1}"),
                KeyringError::BadVersion { position: 1 },
            ),
            (
                format!("v-1:{good_1}"),
                KeyringError::BadVersion { position: 1 },
            ),
            (
                format!("v+1:{good_1}"),
                KeyringError::BadVersion { position: 1 },
            ),
            (
                format!("v9999999999:{good_1}"),
                KeyringError::BadVersion { position: 1 },
            ),
            (
                format!("v2:{good_2},v1:{}!", &good_1[..good_1.len() - 1]),
                KeyringError::BadBase64 {
                    position: 2,
                    version: 1,
                },
            ),
            (
                format!("v1:{short}"),
                KeyringError::BadKeyLength {
                    position: 1,
                    version: 1,
                    len: 31,
                },
            ),
            (
                format!("v2:{good_2},v1:{long}"),
                KeyringError::BadKeyLength {
                    position: 2,
                    version: 1,
                    len: 33,
                },
            ),
            (
                format!("v2:{good_2},v1:{good_1},v2:{good_1}"),
                KeyringError::DuplicateVersion {
                    position: 3,
                    version: 2,
                },
            ),
        ];
        for (value, expected) in cases {
            let err = parse_err(&value);
            assert_eq!(err, expected, "for input #{value:?}");
            assert!(err.to_string().contains(KEYS_ENV), "{err}");
            for shown in [err.to_string(), format!("{err:?}")] {
                for secret in [&good_1, &good_2, &short, &long] {
                    assert!(!shown.contains(secret.as_str()), "key leaked: {shown}");
                    assert!(!shown.contains(&secret[..8]), "key prefix leaked: {shown}");
                }
            }
        }
    }

    #[test]
    fn entry_errors_say_which_entry() {
        let msg = parse_err(&format!("v2:{},v1:{}", b64(&KEY_2), b64(&KEY_1[..16]))).to_string();
        assert_eq!(
            msg,
            "FLEET_PII_KEYS entry 2 (v1): the key is 16 bytes, expected 32"
        );
        let msg = parse_err(&format!("v1:{},v1:{}", b64(&KEY_1), b64(&KEY_2))).to_string();
        assert_eq!(
            msg,
            "FLEET_PII_KEYS entry 2: version v1 is listed more than once"
        );
    }

    #[test]
    fn missing_or_unusable_variable_names_fleet_pii_keys() {
        let missing = Keyring::from_var(Err(VarError::NotPresent)).unwrap_err();
        assert_eq!(missing, KeyringError::Missing);
        assert!(missing.to_string().contains(KEYS_ENV));

        let empty = Keyring::from_var(Ok(String::new())).unwrap_err();
        assert_eq!(empty, KeyringError::Empty);
        assert!(empty.to_string().contains(KEYS_ENV));

        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let raw = std::ffi::OsString::from_vec(vec![b'v', b'1', b':', 0xff]);
            let err = Keyring::from_var(Err(VarError::NotUnicode(raw))).unwrap_err();
            assert_eq!(err, KeyringError::NotUnicode);
            assert!(err.to_string().contains(KEYS_ENV));
        }

        let ok = Keyring::from_var(Ok(format!("v7:{}", b64(&KEY_1)))).unwrap();
        assert_eq!(ok.newest_version(), 7);
    }

    #[test]
    fn debug_of_keyring_and_plaintext_redacts() {
        let ring = keyring(&[(2, &KEY_2), (1, &KEY_1)]);
        let shown = format!("{ring:?} {ring:#?}");
        assert!(shown.contains("versions"), "{shown}");
        for key in [&KEY_1, &KEY_2] {
            assert!(!shown.contains(&b64(key)), "{shown}");
        }
        // The keys' bytes (0x11, 0x22) as `Debug` would print them in decimal.
        assert!(!shown.contains("17, 17, 17"), "{shown}");
        assert!(!shown.contains("34, 34, 34"), "{shown}");

        let row = Uuid::new_v4();
        let sealed = ring.encrypt(row, PASSPORT).unwrap();
        let opened = ring.decrypt(row, 2, &sealed.bytes).unwrap();
        assert_eq!(format!("{opened:?}"), "***");
        assert_eq!(format!("{opened:#?}"), "***");
        assert_eq!(format!("{:?}", Some(&opened)), "Some(***)");
        assert_eq!(
            format!("{sealed:?}"),
            format!("Sealed {{ key_version: 2, len: {} }}", sealed.bytes.len())
        );
    }

    #[test]
    fn errors_never_carry_plaintext() {
        let ring = keyring(&[(1, &KEY_1)]);
        let row = Uuid::new_v4();
        let sealed = ring.encrypt(row, PASSPORT).unwrap();
        let mut tampered = sealed.bytes.clone();
        tampered[NONCE_LEN] ^= 0x01;
        let errors = [
            ring.decrypt(Uuid::new_v4(), 1, &sealed.bytes).unwrap_err(),
            ring.decrypt(row, 1, &tampered).unwrap_err(),
            ring.decrypt(row, 9, &sealed.bytes).unwrap_err(),
        ];
        for err in errors {
            let job_err = JobError::from(err.clone());
            assert!(!job_err.is_retryable());
            for shown in [err.to_string(), format!("{err:?}"), job_err.to_string()] {
                assert!(!shown.contains(PASSPORT), "{shown}");
            }
        }
    }
}
