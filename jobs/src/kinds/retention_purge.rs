//! The `retention_purge` job kind (docs/domain.md §3, daily cron): GDPR erasure of traveler profiles no
//! longer needed, and deletion of webhook dedupe rows and audit rows past their retention.
//! Finished queue jobs are pruned by the engine, not here.
//!
//! **(a) Traveler profiles.** A profile is erased when it has had campaigns, *all* of them have
//! ended (none `active`, `paused` or `action_required`), the latest ended more than
//! `pii_after_days` ago, and none of their bookings is in flight (`pending`/`authorized`). A
//! campaign "ended" at its last status change (`updated_at`); a `booked`/`completed` one not
//! before the end of its trip (the later of the return and departure windows' ends), since the
//! traveler's data serves the trip until it is flown. A profile that never had a campaign is
//! left to account deletion.
//!
//! Erasure follows the schema (migration `…_domain.sql`): the purge **deletes the profile row**
//! (every PII column goes at once; the ended campaigns keep their history with
//! `traveler_profile_id` set to NULL by the foreign key), and in the same statement scrubs the
//! personal data of those campaigns' bookings (`pnr`, `flight_details`); the booking rows stay
//! as accounting records. Race safety: candidates are locked `FOR UPDATE SKIP LOCKED` (which
//! blocks any new campaign from referencing them), then re-checked by a second statement with a
//! fresh snapshot before anything is deleted, so a profile that gained a live campaign
//! meanwhile is never touched.
//!
//! **(b)** `webhook_events` received more than `webhook_events_days` ago are deleted (at least
//! 4 days: providers redeliver for 72 h and the rows are their dedupe). **(c)** `audit_log`
//! rows older than `audit_days` are deleted.
//!
//! Every step is batched (`batch` rows per bounded statement, each committed on its own, so a
//! crash or drain loses at most one batch of work and the re-run continues), and each run writes
//! **one** audit row (actor `fleet`, action `retention.purge`, resource the job) whose metadata
//! holds the counts and settings only.

use std::time::Duration;

use crate::Db;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{audit, Job, JobContext, JobError, KindDefaults};

/// Args of the `retention_purge` job: the retention settings, each with a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPurge {
    /// Days after a profile's last campaign ended before its PII is erased (≥ 1).
    pub pii_after_days: i64,
    /// Days a webhook event's dedupe row is kept (≥ 4).
    pub webhook_events_days: i64,
    /// Days an audit row is kept (≥ 30).
    pub audit_days: i64,
    /// Rows per statement (1..=10000).
    pub batch: i64,
}

impl Default for RetentionPurge {
    fn default() -> Self {
        Self {
            pii_after_days: 90,
            webhook_events_days: 90,
            audit_days: 400,
            batch: 500,
        }
    }
}

impl RetentionPurge {
    /// Refuses settings that would erase or delete far more than intended (a typo must not
    /// wipe the audit trail or break webhook dedupe).
    pub fn validate(&self) -> Result<(), JobError> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(JobError::fatal(format!("retention_purge: {what}")))
            }
        };
        check(self.pii_after_days >= 1, "pii_after_days must be ≥ 1")?;
        check(
            self.webhook_events_days >= 4,
            "webhook_events_days must be ≥ 4 (providers redeliver for 72 h)",
        )?;
        check(self.audit_days >= 30, "audit_days must be ≥ 30")?;
        check(
            (1..=10_000).contains(&self.batch),
            "batch must be 1..=10000",
        )
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Traveler profiles erased (rows deleted).
    pub profiles_erased: u64,
    /// Bookings whose pnr / flight_details were scrubbed.
    pub bookings_scrubbed: u64,
    /// Webhook dedupe rows deleted.
    pub webhook_events_deleted: u64,
    /// Audit rows deleted.
    pub audit_rows_deleted: u64,
}

impl Job for RetentionPurge {
    const KIND: &'static str = "retention_purge";

    fn defaults() -> KindDefaults {
        KindDefaults {
            queue: "maintenance".into(),
            concurrency: Some(1),
            max_attempts: 5,
            backoff_base: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        self.validate()?;
        let report = purge(&ctx.db, &self, &ctx.cancel).await?;
        audit::record(
            &ctx.db,
            "fleet",
            "retention.purge",
            "fleet_job",
            Some(&ctx.job_id.to_string()),
            &json!({
                "profiles_erased": report.profiles_erased,
                "bookings_scrubbed": report.bookings_scrubbed,
                "webhook_events_deleted": report.webhook_events_deleted,
                "audit_rows_deleted": report.audit_rows_deleted,
                "pii_after_days": self.pii_after_days,
                "webhook_events_days": self.webhook_events_days,
                "audit_days": self.audit_days,
            }),
        )
        .await?;
        tracing::info!(
            job.id = ctx.job_id,
            profiles_erased = report.profiles_erased,
            bookings_scrubbed = report.bookings_scrubbed,
            webhook_events_deleted = report.webhook_events_deleted,
            audit_rows_deleted = report.audit_rows_deleted,
            "retention purge done"
        );
        Ok(())
    }
}

/// When a campaign ended, as SQL over alias `c` (see the module docs).
const CAMPAIGN_ENDED_AT: &str = "CASE WHEN c.status IN ('booked', 'completed')
         THEN GREATEST(c.updated_at,
                       (GREATEST(c.departure_date_end, c.return_date_end) + 1)::timestamp
                           AT TIME ZONE 'UTC')
         ELSE c.updated_at END";

/// The erasure condition on alias `p`, with `$2` = pii_after_days.
fn profile_erasable_sql() -> String {
    format!(
        "EXISTS (SELECT 1 FROM campaigns c WHERE c.traveler_profile_id = p.id)
         AND NOT EXISTS (
             SELECT 1 FROM campaigns c WHERE c.traveler_profile_id = p.id
               AND (c.status IN ('active', 'paused', 'action_required')
                    OR {CAMPAIGN_ENDED_AT} > now() - $2 * interval '1 day'))
         AND NOT EXISTS (
             SELECT 1 FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
             WHERE c.traveler_profile_id = p.id AND b.status IN ('pending', 'authorized'))"
    )
}

/// RetentionPurge: steps (a)–(c), each batched; stops at a batch boundary when `cancel` fires
/// (retryable: the re-run continues where this one stopped).
pub async fn purge(
    db: &Db,
    s: &RetentionPurge,
    cancel: &CancellationToken,
) -> Result<PurgeReport, JobError> {
    let mut report = PurgeReport::default();
    let interrupted = || JobError::retryable("retention purge interrupted; the re-run continues");
    let erasable = profile_erasable_sql();
    let select_sql = format!(
        "SELECT p.id FROM traveler_profiles p
         WHERE p.id > $1 AND {erasable}
         ORDER BY p.id LIMIT $3
         FOR UPDATE OF p SKIP LOCKED"
    );
    let eligible_sql =
        format!("SELECT p.id FROM traveler_profiles p WHERE p.id = ANY($1) AND {erasable}");

    // (a) Profiles, in id order.
    let mut after = Uuid::nil();
    loop {
        if cancel.is_cancelled() {
            return Err(interrupted());
        }
        let mut tx = db.begin().await?;
        let locked: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(select_sql.as_str()))
            .bind(after)
            .bind(s.pii_after_days as f64)
            .bind(s.batch)
            .fetch_all(&mut *tx)
            .await?;
        let Some(&last) = locked.last() else {
            tx.commit().await?;
            break;
        };
        after = last;
        // A second statement: a fresh snapshot re-checks the condition under the locks. Then,
        // in the same transaction, the bookings lose their personal data and the profiles go.
        let eligible: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(eligible_sql.as_str()))
            .bind(&locked)
            .bind(s.pii_after_days as f64)
            .fetch_all(&mut *tx)
            .await?;
        let whose = crate::booking::ErasureOf::Profiles(&eligible);
        let scrubbed = crate::booking::scrub_for_erasure(&mut tx, whose).await?;
        crate::airline_change::scrub_for_erasure(&mut tx, whose).await?;
        let erased = sqlx::query("DELETE FROM traveler_profiles WHERE id = ANY($1)")
            .bind(&eligible)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        report.profiles_erased += erased;
        report.bookings_scrubbed += scrubbed;
        if (locked.len() as i64) < s.batch {
            break;
        }
    }

    // (b) Webhook dedupe rows (webhook_events_received_at_idx).
    loop {
        if cancel.is_cancelled() {
            return Err(interrupted());
        }
        let n =
            crate::webhook_events::delete_older_than(db, s.webhook_events_days, s.batch).await?;
        report.webhook_events_deleted += n;
        if (n as i64) < s.batch {
            break;
        }
    }

    // (c) Audit rows (audit_log_created_at_idx).
    loop {
        if cancel.is_cancelled() {
            return Err(interrupted());
        }
        let n = audit::delete_older_than(db, s.audit_days, s.batch).await?;
        report.audit_rows_deleted += n;
        if (n as i64) < s.batch {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_the_documented_retention() {
        let s: RetentionPurge = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, RetentionPurge::default());
        assert_eq!(
            (
                s.pii_after_days,
                s.webhook_events_days,
                s.audit_days,
                s.batch
            ),
            (90, 90, 400, 500)
        );
        s.validate().unwrap();
        let s: RetentionPurge = serde_json::from_value(json!({"audit_days": 730})).unwrap();
        assert_eq!((s.audit_days, s.pii_after_days), (730, 90));
        assert!(serde_json::from_value::<RetentionPurge>(json!({"audit_dayz": 1})).is_err());
    }

    #[test]
    fn settings_that_would_wipe_too_much_are_refused() {
        for bad in [
            RetentionPurge {
                pii_after_days: 0,
                ..Default::default()
            },
            RetentionPurge {
                webhook_events_days: 3,
                ..Default::default()
            },
            RetentionPurge {
                audit_days: 7,
                ..Default::default()
            },
            RetentionPurge {
                batch: 0,
                ..Default::default()
            },
            RetentionPurge {
                batch: 10_001,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(JobError::Fatal(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_erasure_condition_spares_live_campaigns_and_bookings_in_flight() {
        let sql = profile_erasable_sql();
        assert!(sql.contains("'active', 'paused', 'action_required'"));
        assert!(sql.contains("b.status IN ('pending', 'authorized')"));
    }
}
