//! Key rotation: re-seals every `*_enc` column of `traveler_profiles` under the newest key of
//! the keyring. Rows already on the newest key are visited and left as they are. Plaintext
//! exists only in memory for the moment of re-sealing and never reaches a log or an error.

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{Backfill, Batch};
use crate::{BoxFuture, Deps, JobError};

/// The re-encryption backfill.
pub struct PiiReencrypt;

impl Backfill for PiiReencrypt {
    fn name(&self) -> &'static str {
        "pii_reencrypt"
    }

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        after: Option<Uuid>,
        limit: i64,
        deps: &'a Deps,
    ) -> BoxFuture<'a, Result<Batch, JobError>> {
        Box::pin(async move {
            let keyring = deps.keyring(&mut *conn).await?;
            let rows = sqlx::query(
                "SELECT id, passport_number_enc, encryption_key_version FROM traveler_profiles
                 WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2 FOR UPDATE",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            let mut last = None;
            for r in &rows {
                let id: Uuid = r.get(0);
                last = Some(id);
                let (Some(bytes), Some(version)) =
                    (r.get::<Option<Vec<u8>>, _>(1), r.get::<Option<i32>, _>(2))
                else {
                    continue;
                };
                // A row sealed under a key we do not hold is fatal: carrying on would leave it
                // unreadable after the old key is retired.
                let Some(sealed) = keyring.reseal(id, version, &bytes)? else {
                    continue;
                };
                sqlx::query(
                    "UPDATE traveler_profiles SET passport_number_enc = $2, encryption_key_version = $3,
                            updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&sealed.bytes)
                .bind(sealed.key_version)
                .execute(&mut *conn)
                .await?;
                // Opened to re-seal: an access like any other, audited in the same batch.
                let read = crate::audit::PiiRead {
                    purpose: "key_rotation",
                    job_id: None,
                    shown_on: ("traveler_profile", id),
                };
                crate::audit::pii_read(&mut *conn, id, read).await?;
            }
            Ok(Batch {
                rows: rows.len() as i64,
                last_id: last,
            })
        })
    }
}
