//! Recomputes `traveler_profiles.profile_completeness_score` (0–100) from which fields are
//! present: eight fields of 12.5 points each, a passport counting only if it has not expired.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Backfill, Batch};
use crate::{BoxFuture, Deps, JobError};

/// The completeness backfill.
pub struct ProfileCompleteness;

impl Backfill for ProfileCompleteness {
    fn name(&self) -> &'static str {
        "profile_completeness"
    }

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        after: Option<Uuid>,
        limit: i64,
        _deps: &'a Deps,
    ) -> BoxFuture<'a, Result<Batch, JobError>> {
        Box::pin(async move {
            // Scores only the batch's rows, in id order; max(id) is the next cursor.
            let row: (i64, Option<Uuid>) = sqlx::query_as(
                r#"
                WITH batch AS (
                    SELECT id FROM traveler_profiles
                    WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2 FOR UPDATE
                ), scored AS (
                    UPDATE traveler_profiles p SET
                        profile_completeness_score = round(12.5 * (
                              (p.full_name IS NOT NULL)::int + (p.date_of_birth IS NOT NULL)::int
                            + (p.gender IS NOT NULL)::int + (p.email IS NOT NULL)::int
                            + (p.phone IS NOT NULL)::int + (p.passport_number_enc IS NOT NULL)::int
                            + (p.passport_country IS NOT NULL)::int
                            + (p.passport_expiry IS NOT NULL AND p.passport_expiry > current_date)::int
                        ))::int,
                        updated_at = now()
                    FROM batch WHERE p.id = batch.id
                    RETURNING p.id
                )
                SELECT count(*), max(id::text)::uuid FROM scored
                "#,
            )
            .bind(after)
            .bind(limit)
            .fetch_one(conn)
            .await?;
            Ok(Batch {
                rows: row.0,
                last_id: row.1,
            })
        })
    }
}
