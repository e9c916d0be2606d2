//! `fleet check`: the invariants of docs/domain.md §6, from the domain ([`jobs::invariants`]) and the
//! queue (no job stranded, no personal data in payloads, no money left without a job to settle
//! it).

use std::time::Duration;

use jobs::invariants::Violation;
use jobs::Db;

use crate::queue;

/// How long a running job's lease may be expired before the job counts as stranded (the
/// rescuer normally takes it back within `rescue_interval`).
const STRANDED_GRACE: Duration = Duration::from_secs(120);

/// Runs every check, in one transaction.
pub async fn run(db: &Db) -> Result<Vec<Violation>, sqlx::Error> {
    let mut conn = db.begin().await?;
    let mut v = jobs::invariants::check(&mut conn).await?;
    let stranded = queue::job_list_stranded(&mut *conn, STRANDED_GRACE, None).await?;
    if !stranded.is_empty() {
        v.push(Violation {
            invariant: "no job is lost (running with a lease expired over 2 minutes ago: is any worker running?)",
            ids: stranded.iter().map(i64::to_string).collect(),
        });
    }
    let stuck = money_no_job_settles(db).await?;
    if !stuck.is_empty() {
        v.push(Violation {
            invariant: "money held or owed has a job to settle it (a card hold or a refund whose job is dead or gone: `fleet booking show ID`, then replay its job)",
            ids: stuck.iter().map(uuid::Uuid::to_string).collect(),
        });
    }
    let pii = queue::job_list_pii_like_args(&mut *conn).await?;
    if !pii.is_empty() {
        v.push(Violation {
            invariant: "job payloads carry ids, not PII",
            ids: pii.iter().map(i64::to_string).collect(),
        });
    }
    conn.commit().await?;
    Ok(v)
}

/// Bookings holding a card or owing a refund with no unfinished job to settle it: read twice,
/// so a saga that settled between the two reads (its job finishing as the booking moves on) is
/// not named.
async fn money_no_job_settles(db: &Db) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    const LOOKED_AT: i64 = 10_000;
    let first: Vec<uuid::Uuid> = crate::ops::money_and_unfinished_jobs(db, LOOKED_AT, None)
        .await?
        .into_iter()
        .filter(|(_, jobs)| jobs.is_empty())
        .map(|(m, _)| m.booking.id)
        .collect();
    if first.is_empty() {
        return Ok(first);
    }
    Ok(crate::ops::money_and_unfinished_jobs(db, LOOKED_AT, None)
        .await?
        .into_iter()
        .filter(|(m, jobs)| jobs.is_empty() && first.contains(&m.booking.id))
        .map(|(m, _)| m.booking.id)
        .collect())
}
