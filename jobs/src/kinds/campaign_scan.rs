//! The `campaign_scan` job kind (docs/domain.md §3): the cron fan-out that keeps every active campaign
//! searching.
//!
//! One run:
//! 1. **expires** campaigns past their `expires_at` (`active`, `paused`, `action_required` →
//!    `expired`), in bounded batches, skipping a campaign whose booking saga is still in flight
//!    (`pending`/`authorized`: the saga owns it until it finishes; a later scan expires it);
//! 2. **fans out** one `campaign_search` per due campaign (`status = 'active' AND
//!    next_search_at <= now AND expires_at > now`, walked through `campaigns_scan_due_keyset_idx`
//!    in `(next_search_at, id)` keyset order, so each batch reads only its own index entries),
//!    one bulk [`Enqueuer::enqueue_many`] call per batch, each committed on its own.
//!
//! Contract: each search carries the idempotency key `campaign_search:{campaign_id}:{window}`,
//! where the window is the campaign's current `next_search_at` (RFC 3339, microseconds). The
//! scan never moves `next_search_at` itself (the search does, when it finishes), so running the
//! scan twice, or two scans racing, yields one search per campaign per window: the second
//! enqueue meets the held key and is counted as a duplicate. A search that died releases its
//! key, so the next scan retries the same window — nothing is lost.
//!
//! A scan that stops part-way (killed, a database error on batch k) leaves batches 1..k-1
//! committed and their keys held; the next run walks the same due campaigns, meets those keys
//! as duplicates and enqueues only the rest. The key names the campaign's window, not the
//! scan's tick: two ticks that both find a campaign still due (its search not run yet, a
//! backlog) enqueue one search, not two (docs/decisions.md).
//!
//! `now` is read once from the database at the start of a run, so a run terminates even while
//! searches are rescheduling campaigns underneath it.

use std::time::Duration;

use crate::Db;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Enqueuer, Job, JobContext, JobError, KindDefaults, NewJob};

use super::campaign_search::CampaignSearch;

/// Campaigns per batch (one select and one bulk enqueue) unless the args say otherwise.
pub const DEFAULT_BATCH_SIZE: i64 = 1000;

/// Args of the `campaign_scan` job. Everything is optional: the cron entry may pass `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignScan {
    /// Campaigns per batch, 1..=10000 (default [`DEFAULT_BATCH_SIZE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Campaigns moved to `expired`.
    pub expired: u64,
    /// Due campaigns seen.
    pub due: u64,
    /// Searches created.
    pub enqueued: u64,
    /// Due campaigns whose search for this window already existed (key held).
    pub duplicates: u64,
    /// Bulk enqueue calls made (one per non-empty batch).
    pub batches: u64,
}

/// The idempotency key of a campaign's search for the window starting at `next_search_at`.
pub fn search_key(campaign_id: Uuid, next_search_at: DateTime<Utc>) -> String {
    format!(
        "campaign_search:{campaign_id}:{}",
        next_search_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
}

impl CampaignScan {
    fn batch(&self) -> Result<i64, JobError> {
        let b = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if (1..=10_000).contains(&b) {
            Ok(b)
        } else {
            Err(JobError::fatal(format!(
                "batch_size must be 1..=10000, got {b}"
            )))
        }
    }
}

impl Job for CampaignScan {
    const KIND: &'static str = "campaign_scan";

    /// A scan is cheap and replaced by the next tick: few attempts, one at a time per worker.
    fn defaults() -> KindDefaults {
        KindDefaults {
            concurrency: Some(1),
            max_attempts: 3,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(60),
            timeout: Duration::from_secs(300),
            ..KindDefaults::default()
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let batch = self.batch()?;
        let report = scan(&ctx.db, ctx.enqueuer.as_ref(), batch).await?;
        tracing::info!(
            job.id = ctx.job_id,
            expired = report.expired,
            due = report.due,
            enqueued = report.enqueued,
            duplicates = report.duplicates,
            batches = report.batches,
            "campaign scan done"
        );
        Ok(())
    }
}

/// CampaignScan: expires what is past its end, then enqueues one search per due campaign,
/// `batch` campaigns per bulk enqueue. See the module docs for the contract.
pub async fn scan(db: &Db, enqueuer: &dyn Enqueuer, batch: i64) -> Result<ScanReport, JobError> {
    let mut report = ScanReport {
        expired: crate::campaign::expire_ended(db, batch).await?,
        ..ScanReport::default()
    };
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(db).await?;
    // Keyset cursor over (next_search_at, id); starts before every row (no campaign predates
    // the epoch).
    let mut cursor: (DateTime<Utc>, Uuid) = (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil());
    loop {
        // One transaction per batch: its searches commit together (a scan that dies after
        // batch k leaves k batches enqueued, and its retry meets their keys).
        let mut tx = db.begin().await?;
        // CampaignScanDue (campaigns_scan_due_keyset_idx: the row comparison is its index bound).
        let rows: Vec<(Uuid, DateTime<Utc>, Uuid)> = sqlx::query_as(
            "SELECT id, next_search_at, user_id FROM campaigns
             WHERE status = 'active' AND next_search_at <= $1 AND expires_at > $1
               AND (next_search_at, id) > ($2, $3)
             ORDER BY next_search_at, id
             LIMIT $4",
        )
        .bind(now)
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let Some(&(last_id, last_at, _)) = rows.last() else {
            tx.commit().await?;
            break;
        };
        cursor = (last_at, last_id);
        let jobs = rows
            .iter()
            .map(|&(campaign_id, window, user_id)| {
                NewJob::of(&CampaignSearch {
                    campaign_id,
                    user_id: Some(user_id),
                })
                .map(|j| j.key(search_key(campaign_id, window)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(JobError::fatal)?;
        let out = enqueuer.enqueue_many(&mut tx, jobs).await?;
        tx.commit().await?;
        report.batches += 1;
        report.due += rows.len() as u64;
        let dup = out.iter().filter(|e| e.duplicate).count() as u64;
        report.duplicates += dup;
        report.enqueued += out.len() as u64 - dup;
        if (rows.len() as i64) < batch {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn search_key_names_the_campaign_and_its_window_to_the_microsecond() {
        let id = Uuid::parse_str("6f1c1f2e-7d1a-4b7e-9c55-0a1b2c3d4e5f").unwrap();
        let at = Utc.with_ymd_and_hms(2027, 3, 4, 5, 6, 7).unwrap()
            + chrono::Duration::microseconds(123_456);
        assert_eq!(
            search_key(id, at),
            "campaign_search:6f1c1f2e-7d1a-4b7e-9c55-0a1b2c3d4e5f:2027-03-04T05:06:07.123456Z"
        );
        // Another window, another key; the same window, the same key.
        assert_ne!(
            search_key(id, at),
            search_key(id, at + chrono::Duration::hours(4))
        );
        assert_eq!(search_key(id, at), search_key(id, at));
    }

    #[test]
    fn args_default_to_a_thousand_per_batch_and_refuse_nonsense() {
        let a: CampaignScan = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(a.batch().unwrap(), DEFAULT_BATCH_SIZE);
        let a: CampaignScan =
            serde_json::from_value(serde_json::json!({"batch_size": 50})).unwrap();
        assert_eq!(a.batch().unwrap(), 50);
        for bad in [0, -1, 10_001] {
            let a = CampaignScan {
                batch_size: Some(bad),
            };
            assert!(matches!(a.batch(), Err(JobError::Fatal(_))), "{bad}");
        }
        assert!(serde_json::from_value::<CampaignScan>(serde_json::json!({"x": 1})).is_err());
    }
}
