//! AWS KMS objects and rules for the stand-in: the sandbox's one symmetric key (its alias, key
//! id and ARN, and the `KeyId` spellings that name it), its key material (rotated like AWS's
//! automatic rotation, never exposed), the ciphertext blob format, the canonical encryption
//! context, and the faults a test can inject.
//!
//! **Blob format** (the sandbox's own; AWS's is opaque and undocumented), version 1:
//!
//! | bytes | what |
//! |---|---|
//! | 0–1 | `0x53 0x01`: `S` (a sandbox blob), format version 1 |
//! | 2–17 | the key id, the 16 bytes of the key's UUID |
//! | 18–21 | the key-material index, u32 big-endian (0 = the key's first material) |
//! | 22–33 | the AES-GCM nonce, 12 random bytes |
//! | 34– | AES-256-GCM ciphertext of the plaintext, then the 16-byte tag |
//!
//! The associated data is bytes 0–21 followed by the canonical encryption context
//! ([`context_aad`]), so a blob opens only under its own header and the exact context it was
//! made with, whatever order the client sent the pairs in. A 32-byte data key makes an
//! 82-byte blob.

use std::collections::BTreeMap;

use aes_gcm::{
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
    Aes256Gcm, Nonce,
};
use sha2::{Digest, Sha256};

/// The region in the key's ARN (the fleet's default region).
pub const KMS_REGION: &str = "eu-west-1";

/// The AWS account in the key's ARN (AWS's documentation account).
pub const KMS_ACCOUNT: &str = "111122223333";

/// The key's alias, as the fleet names it.
pub const KMS_KEY_ALIAS: &str = "alias/parker-kms-key";

/// The alias's ARN.
pub const KMS_KEY_ALIAS_ARN: &str = "arn:aws:kms:eu-west-1:111122223333:alias/parker-kms-key";

/// The key id (a UUID, fixed for every sandbox).
pub const KMS_KEY_ID: &str = "8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a";

/// The key ARN: what every answer's `KeyId` is, whichever spelling the request used.
pub const KMS_KEY_ARN: &str =
    "arn:aws:kms:eu-west-1:111122223333:key/8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a";

/// [`KMS_KEY_ID`] as a number: the key id bytes written into every blob.
const KEY_UUID: u128 = 0x8d7c6b5a_4f3e_4d2c_9b1a_0f9e8d7c6b5a;

/// A KMS fault the sandbox injects into every KMS call until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsFault {
    /// 400 `ThrottlingException` "Rate exceeded".
    Throttling,
    /// 500 `KMSInternalException`.
    Outage,
    /// 400 `AccessDeniedException`, naming the operation's permission (`kms:Decrypt`).
    AccessDenied,
}

impl KmsFault {
    /// Every fault, in declaration order.
    pub const ALL: [KmsFault; 3] = [
        KmsFault::Throttling,
        KmsFault::Outage,
        KmsFault::AccessDenied,
    ];

    /// Its name in `POST /_sandbox/kms/fault` (`"throttling"`, `"outage"`, `"access_denied"`).
    pub fn as_str(self) -> &'static str {
        match self {
            KmsFault::Throttling => "throttling",
            KmsFault::Outage => "outage",
            KmsFault::AccessDenied => "access_denied",
        }
    }

    /// The fault named `s`, spelled exactly as [`KmsFault::as_str`] spells it.
    pub fn parse(s: &str) -> Option<KmsFault> {
        KmsFault::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Whether `key_id` names the sandbox's key: its alias, alias ARN, key id or key ARN, exactly.
pub(crate) fn names_the_key(key_id: &str) -> bool {
    [KMS_KEY_ALIAS, KMS_KEY_ALIAS_ARN, KMS_KEY_ID, KMS_KEY_ARN].contains(&key_id)
}

/// An encryption context: sorted by key, which makes it canonical.
pub(crate) type EncryptionContext = BTreeMap<String, String>;

/// The canonical bytes of an encryption context: the number of pairs, then each pair in key
/// order as `len(key) key len(value) value`, every length a u32 big-endian. Unambiguous
/// whatever the keys and values hold (unlike `key=value` joined with a separator).
pub(crate) fn context_aad(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + context.len() * 16);
    out.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// The blob's first two bytes: a sandbox blob, format version 1.
const BLOB_FORMAT: [u8; 2] = [0x53, 0x01];
/// Format, key id and key-material index: the part of a blob bound as associated data.
const HEADER_LEN: usize = 2 + 16 + 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a blob does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not a blob of this format, or one whose material the key does not have, or one that
    /// fails authentication (altered, another sandbox's, or another encryption context).
    Invalid,
    /// A well-formed blob whose header names another KMS key.
    OtherKey,
}

/// A data key or plaintext sealed under the key's current material.
pub(crate) struct Sealed {
    /// The CiphertextBlob.
    pub blob: Vec<u8>,
    /// The key-material index it was made with.
    pub material: u32,
}

/// A blob opened: the plaintext, and the key-material index that had sealed it.
pub(crate) struct Opened {
    pub plaintext: Vec<u8>,
    pub material: u32,
}

/// The sandbox's symmetric KMS key: its key material, oldest first, the last one current.
/// The material is random per sandbox and never leaves it (no accessor, and `Debug` shows
/// only how many there are), so only this sandbox opens its blobs.
pub(crate) struct KmsKey {
    materials: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKey")
            .field("materials", &self.materials.len())
            .finish()
    }
}

impl KmsKey {
    /// A key with one fresh material.
    pub(crate) fn new() -> Self {
        Self {
            materials: vec![Aes256Gcm::new(&Aes256Gcm::generate_key(OsRng))],
        }
    }

    /// Adds fresh material, used for every later seal; the older ones still open their blobs
    /// (AWS's automatic rotation). Returns the new material's index.
    pub(crate) fn rotate(&mut self) -> u32 {
        self.materials
            .push(Aes256Gcm::new(&Aes256Gcm::generate_key(OsRng)));
        self.current()
    }

    /// The index of the material new blobs are sealed with.
    pub(crate) fn current(&self) -> u32 {
        u32::try_from(self.materials.len() - 1).expect("fewer than 2^32 rotations")
    }

    /// How many materials the key has (1 + rotations).
    pub(crate) fn materials(&self) -> usize {
        self.materials.len()
    }

    /// Seals `plaintext` under the current material, bound to `context`.
    pub(crate) fn seal(&self, plaintext: &[u8], context: &EncryptionContext) -> Sealed {
        let material = self.current();
        let mut blob = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(&BLOB_FORMAT);
        blob.extend_from_slice(&KEY_UUID.to_be_bytes());
        blob.extend_from_slice(&material.to_be_bytes());
        let aad = [&blob[..HEADER_LEN], &context_aad(context)].concat();
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let sealed = self.materials[material as usize]
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any plaintext under 64 GiB");
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Sealed { blob, material }
    }

    /// Opens a blob sealed by [`KmsKey::seal`] with the same `context` (in any order).
    pub(crate) fn open(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Opened, OpenError> {
        if blob.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || blob[..2] != BLOB_FORMAT {
            return Err(OpenError::Invalid);
        }
        let key = u128::from_be_bytes(blob[2..18].try_into().expect("16 bytes"));
        if key != KEY_UUID {
            return Err(OpenError::OtherKey);
        }
        let material = u32::from_be_bytes(blob[18..22].try_into().expect("4 bytes"));
        let cipher = self
            .materials
            .get(material as usize)
            .ok_or(OpenError::Invalid)?;
        let aad = [&blob[..HEADER_LEN], &context_aad(context)].concat();
        let nonce = Nonce::from_slice(&blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let plaintext = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &blob[HEADER_LEN + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Invalid)?;
        Ok(Opened {
            plaintext,
            material,
        })
    }
}

/// The `KeyMaterialId` of material `index`: 64 lower-case hex digits, as AWS writes them.
/// Derived from the key id and the index only (never from the material), so it identifies the
/// material without revealing anything of it.
pub(crate) fn key_material_id(index: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"parker sandbox kms key material\0");
    h.update(KEY_UUID.to_be_bytes());
    h.update(index.to_be_bytes());
    hex::encode(h.finalize())
}

/// `len` random bytes (a data key), from the OS.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut out = vec![0; len];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_key_constants_agree_and_every_spelling_names_the_key() {
        assert_eq!(uuid::Uuid::from_u128(KEY_UUID).to_string(), KMS_KEY_ID);
        assert_eq!(
            KMS_KEY_ARN,
            format!("arn:aws:kms:{KMS_REGION}:{KMS_ACCOUNT}:key/{KMS_KEY_ID}")
        );
        assert_eq!(
            KMS_KEY_ALIAS_ARN,
            format!("arn:aws:kms:{KMS_REGION}:{KMS_ACCOUNT}:{KMS_KEY_ALIAS}")
        );
        for id in [KMS_KEY_ALIAS, KMS_KEY_ALIAS_ARN, KMS_KEY_ID, KMS_KEY_ARN] {
            assert!(names_the_key(id), "{id}");
        }
        for id in [
            "alias/other",
            "alias/PARKER-KMS-KEY",
            "arn:aws:kms:us-east-1:111122223333:key/8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "",
        ] {
            assert!(!names_the_key(id), "{id}");
        }
    }

    #[test]
    fn every_fault_name_round_trips() {
        for f in KmsFault::ALL {
            assert_eq!(KmsFault::parse(f.as_str()), Some(f));
        }
        assert_eq!(KmsFault::parse("Throttling"), None);
    }

    #[test]
    fn the_context_is_canonical_and_unambiguous() {
        // BTreeMap sorts, so insertion order does not matter.
        let a: EncryptionContext = [("tenant", "42"), ("purpose", "pii")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            context_aad(&a),
            context_aad(&ctx(&[("purpose", "pii"), ("tenant", "42")]))
        );
        // `a=b,c` / `a=b` + `c=` style collisions are told apart by the lengths.
        assert_ne!(
            context_aad(&ctx(&[("a", "b,c=d")])),
            context_aad(&ctx(&[("a", "b"), ("c", "d")]))
        );
        assert_ne!(context_aad(&ctx(&[])), context_aad(&ctx(&[("", "")])));
    }

    #[test]
    fn a_blob_opens_only_with_its_context_and_unaltered() {
        let key = KmsKey::new();
        let c = ctx(&[("purpose", "parker-pii"), ("data_key_version", "1")]);
        let data_key = random_bytes(32);
        let sealed = key.seal(&data_key, &c);
        assert_eq!(sealed.blob.len(), 82);
        assert_eq!(sealed.blob[..2], [0x53, 0x01]);
        assert_eq!(sealed.material, 0);
        let opened = key.open(&sealed.blob, &c).expect("opens");
        assert_eq!(opened.plaintext, data_key);
        assert_eq!(opened.material, 0);

        for wrong in [
            ctx(&[]),
            ctx(&[("purpose", "parker-pii")]),
            ctx(&[("purpose", "parker-pii"), ("data_key_version", "2")]),
            ctx(&[("Purpose", "parker-pii"), ("data_key_version", "1")]),
        ] {
            assert_eq!(
                key.open(&sealed.blob, &wrong).err(),
                Some(OpenError::Invalid)
            );
        }
        // Any altered byte fails, header included (the format byte, the material index).
        for i in [0, 1, 19, 21, 25, 40, sealed.blob.len() - 1] {
            let mut b = sealed.blob.clone();
            b[i] ^= 1;
            assert_eq!(key.open(&b, &c).err(), Some(OpenError::Invalid), "byte {i}");
        }
        assert_eq!(
            key.open(&sealed.blob[..49], &c).err(),
            Some(OpenError::Invalid)
        );
        // Another key id in the header is told apart from garbage.
        let mut other = sealed.blob.clone();
        other[5] ^= 0xff;
        assert_eq!(key.open(&other, &c).err(), Some(OpenError::OtherKey));
        // Another sandbox's key (other random material) opens none of this one's blobs.
        assert_eq!(
            KmsKey::new().open(&sealed.blob, &c).err(),
            Some(OpenError::Invalid)
        );
    }

    #[test]
    fn after_rotation_new_blobs_use_the_new_material_and_old_ones_still_open() {
        let mut key = KmsKey::new();
        let c = ctx(&[("purpose", "pii")]);
        let old = key.seal(b"old", &c);
        assert_eq!(key.rotate(), 1);
        assert_eq!((key.current(), key.materials()), (1, 2));
        let new = key.seal(b"new", &c);
        assert_eq!((old.material, new.material), (0, 1));
        assert_eq!(new.blob[18..22], [0, 0, 0, 1]);
        assert_eq!(key.open(&old.blob, &c).unwrap().plaintext, b"old");
        let opened = key.open(&new.blob, &c).unwrap();
        assert_eq!(
            (opened.plaintext.as_slice(), opened.material),
            (&b"new"[..], 1)
        );
        // A blob naming material the key does not have (yet) is invalid.
        let mut ahead = new.blob.clone();
        ahead[21] = 7;
        assert_eq!(key.open(&ahead, &c).err(), Some(OpenError::Invalid));
        assert_ne!(key_material_id(0), key_material_id(1));
        assert_eq!(key_material_id(0).len(), 64);
        assert!(key_material_id(1)
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let mut key = KmsKey::new();
        key.rotate();
        assert_eq!(format!("{key:?}"), "KmsKey { materials: 2 }");
    }
}
