//! `fleet check`: the invariants of docs/domain.md §6, from the domain ([`jobs::invariants`]) and the
//! queue (no job stranded, no personal data in payloads).

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
