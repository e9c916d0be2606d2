//! `fleet audit`: who did what, newest first, from `audit_log`.

use crate::{config::Settings, ops::Ops};
use jobs::audit::AuditFilter;

use super::{
    databases_for, os_user,
    output::{ago, clip, emit, table},
    queue::parse_time,
};

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Only actions starting with this, e.g. "kind." or "booking.refund".
    #[arg(long)]
    action: Option<String>,
    /// Only this resource type (job, kind, booking, campaign, schema, …).
    #[arg(long)]
    resource_type: Option<String>,
    /// Only this resource id.
    #[arg(long)]
    resource_id: Option<String>,
    /// At or after: RFC 3339 time or a duration ago ("2h").
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before: RFC 3339 time or a duration ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Next page: rows older than this one.
    #[arg(long)]
    before_id: Option<uuid::Uuid>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: AuditArgs, settings: &Settings) -> anyhow::Result<()> {
    let dbs = databases_for(settings).await?;
    let f = AuditFilter {
        actor: a.actor,
        action_prefix: a.action,
        resource_type: a.resource_type,
        resource_id: a.resource_id,
        since: a.since,
        until: a.until,
        before_id: a.before_id,
        limit: a.limit,
    };
    let rows = Ops::on(&dbs.main, Vec::new(), &os_user()).audit(&f).await?;
    let mut t = table(&["at", "actor", "action", "resource", "details"]);
    for r in &rows {
        t.add_row(vec![
            ago(r.created_at),
            r.actor.clone(),
            r.action.clone(),
            // Whole, on one line: it is what an operator copies into `booking show`.
            match &r.resource_id {
                Some(id) => format!("{} {id}", r.resource_type),
                None => r.resource_type.clone(),
            },
            clip(&r.metadata.to_string(), 40),
        ]);
    }
    if let Some(c) = t.column_mut(3) {
        c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
    }
    let text = match rows.last() {
        None => "no audit rows match".to_owned(),
        Some(last) if rows.len() as i64 == a.limit => {
            format!("{t}\nnext page: --before-id {}", last.id)
        }
        Some(_) => t.to_string(),
    };
    emit(a.json, &rows, &text)
}
