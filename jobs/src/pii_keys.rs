//! Where the PII keys come from, and the one owner of `pii_data_keys` (migration …022).
//!
//! Two sources, one [`Keyring`] for the code that seals and opens:
//! - **KMS envelope encryption** (production): each key is a data key AWS KMS generated under
//!   the master key (`alias/parker-kms-key`), stored only wrapped; the fleet never holds the
//!   master key. [`KeyService::keyring`] unwraps every live data key through KMS (Decrypt,
//!   with the key's version in the encryption context) and keeps the unwrapped keyring in
//!   memory for `providers.kms.cache_ttl`; it reads the (small) table on every call, so a new
//!   or re-wrapped key is seen at once. The first call on an empty table generates version 1.
//!   With KMS down (throttled, refusing, unreachable) and the cache expired, the call fails
//!   with the job's error: the job waits and retries; **nothing is ever written unencrypted**,
//!   since sealing needs the keyring.
//! - **The environment keyring** (`FLEET_PII_KEYS`): local runs, tests and the demo.
//!
//! Rotation ([`crate::kinds::pii_key_rotation`], scheduled): a new data key becomes the one
//! that seals, every live key is re-wrapped under the master key's current material (cheap:
//! ReEncrypt, the key never leaves KMS), the re-seal backfill moves rows to the new key, and a
//! key no row uses any more is retired.

use std::{sync::Arc, time::Duration, time::Instant};

use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::pii::Keyring;
use crate::providers::kms::KmsApi;
use crate::JobError;

/// The PII keys of a process.
pub enum KeyService {
    /// `FLEET_PII_KEYS`.
    Env(Arc<Keyring>),
    /// Data keys wrapped by KMS.
    Kms(KmsKeys),
}

/// Data keys wrapped by a KMS master key, unwrapped on demand and cached.
pub struct KmsKeys {
    kms: Arc<dyn KmsApi>,
    key_id: String,
    ttl: Duration,
    cache: Mutex<Option<Cached>>,
}

struct Cached {
    at: Instant,
    /// The live rows it was built from: `(version, wrapped)`.
    from: Vec<(i32, Vec<u8>)>,
    keyring: Arc<Keyring>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(k) => f.debug_tuple("Env").field(k).finish(),
            Self::Kms(k) => f
                .debug_struct("Kms")
                .field("key_id", &k.key_id)
                .field("ttl", &k.ttl)
                .finish_non_exhaustive(),
        }
    }
}

/// A live data key's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DataKeyRow {
    /// `encryption_key_version` of the rows it seals.
    pub version: i32,
    /// KMS's wrapped key.
    pub wrapped: Vec<u8>,
}

impl KeyService {
    /// KMS data keys wrapped under `key_id`, cached unwrapped for `ttl`.
    pub fn kms(kms: Arc<dyn KmsApi>, key_id: &str, ttl: Duration) -> Self {
        Self::Kms(KmsKeys {
            kms,
            key_id: key_id.to_owned(),
            ttl,
            cache: Mutex::new(None),
        })
    }

    /// Whether the keys are KMS's.
    pub fn is_kms(&self) -> bool {
        matches!(self, Self::Kms(_))
    }

    /// The keyring to seal and open with now (see the module docs). Reads `pii_data_keys` on
    /// `conn` (KMS only).
    pub async fn keyring(&self, conn: &mut PgConnection) -> Result<Arc<Keyring>, JobError> {
        let k = match self {
            Self::Env(k) => return Ok(k.clone()),
            Self::Kms(k) => k,
        };
        let mut live = live_keys(&mut *conn).await?;
        if live.is_empty() {
            let new = k.kms.generate_data_key(1).await?;
            insert_key(&mut *conn, 1, &k.key_id, &new.wrapped).await?;
            live = live_keys(&mut *conn).await?;
        }
        let from: Vec<(i32, Vec<u8>)> = live.into_iter().map(|r| (r.version, r.wrapped)).collect();
        let mut cache = k.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.from == from && c.at.elapsed() < k.ttl {
                return Ok(c.keyring.clone());
            }
        }
        let mut keys = Vec::with_capacity(from.len());
        for (version, wrapped) in &from {
            keys.push((*version, k.kms.decrypt(*version, wrapped).await?));
        }
        let keyring = Keyring::from_data_keys(keys.iter().map(|(v, key)| (*v, key.as_slice())))
            .ok_or_else(|| JobError::fatal("KMS returned a data key that is not 32 bytes"))?;
        drop(keys); // the clear keys are wiped here; the ciphers hold their own schedule
        let keyring = Arc::new(keyring);
        *cache = Some(Cached {
            at: Instant::now(),
            from,
            keyring: keyring.clone(),
        });
        Ok(keyring)
    }

    /// The KMS side of the keys, for the rotation (`None` on the environment keyring).
    pub fn kms_keys(&self) -> Option<&KmsKeys> {
        match self {
            Self::Kms(k) => Some(k),
            Self::Env(_) => None,
        }
    }
}

impl KmsKeys {
    /// Rotation, step 1: a new data key (the next version) that seals from now on. Returns its
    /// version.
    pub async fn add_key(&self, conn: &mut PgConnection) -> Result<i32, JobError> {
        let next: i32 =
            sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM pii_data_keys")
                .fetch_one(&mut *conn)
                .await?;
        let new = self.kms.generate_data_key(next).await?;
        insert_key(&mut *conn, next, &self.key_id, &new.wrapped).await?;
        Ok(next)
    }

    /// Rotation, step 2: every live key wrapped again under the master key's current material
    /// (ReEncrypt). Returns how many.
    pub async fn rewrap_all(&self, conn: &mut PgConnection) -> Result<usize, JobError> {
        let live = live_keys(&mut *conn).await?;
        for k in &live {
            let wrapped = self.kms.rewrap(k.version, &k.wrapped).await?;
            sqlx::query(
                "UPDATE pii_data_keys SET wrapped = $2, kms_key_id = $3, rewrapped_at = now()
                 WHERE version = $1",
            )
            .bind(k.version)
            .bind(&wrapped)
            .bind(&self.key_id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(live.len())
    }
}

/// PiiDataKeysLive: the keys not retired, by version.
async fn live_keys(conn: &mut PgConnection) -> Result<Vec<DataKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, wrapped FROM pii_data_keys WHERE retired_at IS NULL ORDER BY version",
    )
    .fetch_all(conn)
    .await
}

/// PiiDataKeyInsert: a new wrapped key; a version taken meanwhile (another process) keeps the
/// first.
async fn insert_key(
    conn: &mut PgConnection,
    version: i32,
    key_id: &str,
    wrapped: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pii_data_keys (version, kms_key_id, wrapped) VALUES ($1, $2, $3)
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(key_id)
    .bind(wrapped)
    .execute(conn)
    .await?;
    Ok(())
}

/// PiiDataKeysRetireUnused: keys older than the newest that no sealed row uses any more
/// (traveler profiles, export documents) are retired. Returns their versions.
pub async fn retire_unused(conn: &mut PgConnection) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE pii_data_keys k SET retired_at = now()
         WHERE k.retired_at IS NULL
           AND k.version < (SELECT max(version) FROM pii_data_keys)
           AND NOT EXISTS (SELECT 1 FROM traveler_profiles p WHERE p.encryption_key_version = k.version)
           AND NOT EXISTS (SELECT 1 FROM data_requests r WHERE r.encryption_key_version = k.version)
         RETURNING k.version",
    )
    .fetch_all(conn)
    .await
}
