//! `fleet bench fanout`: one `campaign_scan` over N due campaigns (issue 12, "Domain scale").
//!
//! Each round, on a fresh scratch database:
//! 1. **seed**: a few template campaigns (one user, profile and card each, through
//!    [`jobs::seed::seed_campaign`]), then N active campaigns copied from them in one statement
//!    ([`jobs::seed::copy_campaigns`]), each due in a search window of its own, 1 ms apart;
//! 2. **scan**: the kind's own [`campaign_scan::scan`] with the engine's enqueuer, timed from
//!    the call to its return (every batch committed);
//! 3. **verify**: the queue holds exactly N `campaign_search` jobs, with N distinct keys and N
//!    distinct campaigns, and the scan's report says N enqueued and no duplicate;
//! 4. **re-run**: the same scan again, as after a crash: timed, and it must enqueue nothing
//!    (N duplicates);
//! 5. **reference**: N more keyed searches (for campaigns that do not exist) enqueued straight
//!    through the enqueuer, `batch` per call, with no campaign read: what the queue itself takes
//!    in this round, so a figure from a busy machine can be read as a share of it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use jobs::{
    kinds::{
        campaign_scan::{self, search_key, CampaignScan, DEFAULT_BATCH_SIZE},
        campaign_search::CampaignSearch,
    },
    seed::{copy_campaigns, seed_campaign, CampaignSeed},
    Job as _, NewJob,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{database::scratch::ScratchDb, queue, registry::Registry, Queue};

#[derive(clap::Args)]
pub struct FanoutArgs {
    /// Due active campaigns the scan fans out.
    #[arg(long, default_value_t = 100_000)]
    campaigns: u64,
    /// Campaigns per batch (the scan's `batch_size`, 1..=10000).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch: i64,
    /// Rounds, each on a fresh database.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Template campaigns the N copies are spread over (their users, profiles and cards).
const TEMPLATES: usize = 100;

/// The target for 100,000 campaigns.
const TARGET: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
struct Round {
    seed_s: f64,
    scan_s: f64,
    searches_per_s: f64,
    batches: u64,
    rerun_s: f64,
    rerun_duplicates: u64,
    reference_s: f64,
    reference_jobs_per_s: f64,
    /// Scan rate over the reference rate.
    scan_share: f64,
    loadavg_1m: f64,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

async fn round(campaigns: u64, batch: i64) -> anyhow::Result<Round> {
    let loadavg_1m = super::loadavg_1m();
    let db = ScratchDb::new("fleet_bench_fanout").await?;
    let pool = jobs::Db::from(crate::database::connect(&db.url, 8).await?);
    let keyring = jobs::pii::Keyring::parse(&jobs::pii::Keyring::fresh_spec())?;

    let t = Instant::now();
    let mut templates = Vec::with_capacity(TEMPLATES);
    for n in 0..TEMPLATES {
        // Not due themselves: only the N copies are.
        let s = CampaignSeed {
            first_search_in: Duration::from_secs(3600),
            ..CampaignSeed::new(n)
        };
        templates.push(seed_campaign(&pool, &keyring, &s).await?.campaign_id);
    }
    let gap = Duration::from_millis(1);
    let first_due = chrono::Utc::now()
        - chrono::Duration::from_std(gap * u32::try_from(campaigns)?)?
        - chrono::Duration::seconds(1);
    let seeded = copy_campaigns(&pool, &templates, campaigns, first_due, gap).await?;
    if seeded != campaigns {
        bail!("seeded {seeded} of {campaigns} campaigns");
    }
    let seed_s = secs(t.elapsed());

    let mut r = Registry::default();
    r.register::<CampaignScan>().register::<CampaignSearch>();
    let q = Queue::new(pool.clone(), Arc::new(r));

    let t = Instant::now();
    let first = campaign_scan::scan(&pool, &q, batch).await?;
    let scan = t.elapsed();
    let mut conn = db.pool.acquire().await?;
    let d = queue::job_count_distinct(&mut *conn, CampaignSearch::KIND).await?;
    let n = campaigns as i64;
    if (first.due, first.enqueued, first.duplicates) != (campaigns, campaigns, 0)
        || (d.jobs, d.keys, d.args) != (n, n, n)
    {
        bail!(
            "the scan did not enqueue one search per due campaign: report {first:?}, queue {d:?}"
        );
    }

    let t = Instant::now();
    let again = campaign_scan::scan(&pool, &q, batch).await?;
    let rerun = t.elapsed();
    let d2 = queue::job_count_distinct(&mut *conn, CampaignSearch::KIND).await?;
    if again.enqueued != 0 || again.duplicates != campaigns || d2 != d {
        bail!("the re-run enqueued again: report {again:?}, queue {d2:?}");
    }
    drop(conn);

    let window = chrono::Utc::now();
    let t = Instant::now();
    let mut left = campaigns;
    while left > 0 {
        let n = left.min(batch as u64);
        left -= n;
        let jobs = (0..n)
            .map(|_| {
                let id = Uuid::new_v4();
                NewJob::of(&CampaignSearch {
                    campaign_id: id,
                    user_id: Some(Uuid::new_v4()),
                })
                .map(|j| j.key(search_key(id, window)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        q.enqueue_many(jobs).await?;
    }
    let reference = t.elapsed();
    pool.close().await;
    let searches_per_s = (campaigns as f64 / scan.as_secs_f64()).round();
    let reference_jobs_per_s = (campaigns as f64 / reference.as_secs_f64()).round();
    Ok(Round {
        seed_s,
        scan_s: secs(scan),
        searches_per_s,
        batches: first.batches,
        rerun_s: secs(rerun),
        rerun_duplicates: again.duplicates,
        reference_s: secs(reference),
        reference_jobs_per_s,
        scan_share: (searches_per_s / reference_jobs_per_s * 1000.0).round() / 1000.0,
        loadavg_1m,
    })
}

/// Runs the rounds and prints them.
pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    if a.campaigns == 0 || a.rounds == 0 {
        bail!("--campaigns and --rounds must be >= 1");
    }
    if !(1..=10_000).contains(&a.batch) {
        bail!("--batch must be 1..=10000, got {}", a.batch);
    }
    let mut rounds = Vec::new();
    for i in 1..=a.rounds {
        let r = round(a.campaigns, a.batch).await?;
        eprintln!(
            "fan-out round {i}: {} due campaigns, batch {}: scan {:.3} s ({:.0} searches/s, {} batches); re-run {:.3} s, {} duplicates, 0 enqueued; reference bulk enqueue {:.3} s ({:.0} jobs/s; the scan ran at {:.0} % of it); seeded in {:.1} s; load {:.2}",
            a.campaigns, a.batch, r.scan_s, r.searches_per_s, r.batches, r.rerun_s,
            r.rerun_duplicates, r.reference_s, r.reference_jobs_per_s, r.scan_share * 100.0,
            r.seed_s, r.loadavg_1m
        );
        rounds.push(r);
    }
    if a.campaigns == 100_000 {
        let worst = rounds.iter().map(|r| r.scan_s).fold(0.0, f64::max);
        eprintln!(
            "target: 100,000 in <= {} s; worst round {worst:.3} s: {}",
            TARGET.as_secs(),
            if worst <= TARGET.as_secs_f64() {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "campaigns": a.campaigns, "batch": a.batch, "rounds": rounds
            }))?
        );
    }
    Ok(())
}
