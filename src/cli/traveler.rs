//! `fleet traveler erase|export|requests`: a traveler's data rights, for operators. Erasure and
//! export run as jobs (`account_erasure`, `data_export`) worked from a request row; these
//! commands open the request (dry run first: an erasure's preview), or list what is open
//! against the 30-day deadline. Ids, codes and counts only: no personal data is printed.

use std::sync::Arc;

use crate::{config::Settings, fleet_registry, ops::Ops};
use clap::Subcommand;
use jobs::data_rights::{DataRequest, RequestKind};
use uuid::Uuid;

use super::{
    databases_for, os_user,
    output::{ago, emit, figures_table, when},
};

#[derive(clap::Args)]
pub struct TravelerArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: TravelerAction,
}

#[derive(Subcommand)]
enum TravelerAction {
    /// Erase a traveler's account (GDPR art. 17): their campaigns are cancelled, their cards
    /// detached and Stripe customer deleted, their personal data deleted or scrubbed (payments
    /// and refunds are kept as accounting records), and they get one confirmation email. Waits
    /// while one of their bookings or refunds is still moving. Run with --dry-run first.
    Erase {
        /// The traveler's account id (users.id).
        user_id: Uuid,
        /// Show what would be erased and whether it must wait; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Send a traveler everything held about them (GDPR arts. 15, 20): one JSON document
    /// emailed to the account's address, once.
    Export {
        /// The traveler's account id (users.id).
        user_id: Uuid,
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Open erasure and export requests, oldest first, with their age against the 30-day
    /// deadline and what they wait on; or every request of one traveler (--user).
    Requests {
        /// One traveler's requests, open or done (kept after an erasure).
        #[arg(long)]
        user: Option<Uuid>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

pub async fn run(a: TravelerArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = Arc::new(fleet_registry(settings)?);
    let dbs = databases_for(settings).await?;
    let (kind, user_id, dry_run, actor) = match a.action {
        TravelerAction::Erase {
            user_id,
            dry_run,
            actor,
        } => (RequestKind::Erasure, user_id, dry_run, actor),
        TravelerAction::Export {
            user_id,
            dry_run,
            actor,
        } => (RequestKind::Export, user_id, dry_run, actor),
        TravelerAction::Requests { user, limit } => {
            let ops = Ops::on(&dbs.main, registry.kind_names(), &os_user());
            let rows = match user {
                Some(u) => ops.data_requests_of(u).await?,
                None => ops.data_requests_open(limit.clamp(1, 1000)).await?,
            };
            return emit(a.json, &rows, &requests_text(&rows, user.is_some()));
        }
    };
    let queue = crate::Queue::of_fleet(&dbs, registry.clone());
    let ops = Ops::new(
        dbs.main.db.clone(),
        registry.kind_names(),
        actor.unwrap_or_else(os_user),
    );
    let r = ops.data_request(kind, user_id, &queue, dry_run).await?;
    let x = &r.result;
    let what = match kind {
        RequestKind::Erasure => "erasure",
        RequestKind::Export => "export",
    };
    let mut text = if x.duplicate {
        format!(
            "traveler {user_id}: an {what} request is already {} (request {}{}); nothing added",
            x.status,
            x.request_id.map_or("?".to_owned(), |i| i.to_string()),
            x.job_id.map_or(String::new(), |j| format!(", job {j}")),
        )
    } else if r.dry_run {
        format!("traveler {user_id}: would open an {what} request and queue its job")
    } else {
        format!(
            "traveler {user_id}: {what} requested (request {}, job {}); due within 30 days",
            x.request_id.map_or("?".to_owned(), |i| i.to_string()),
            x.job_id.map_or("?".to_owned(), |j| j.to_string()),
        )
    };
    if let Some(p) = &x.preview {
        text.push_str(&format!(
            "\n  campaigns cancelled first:  {}\n  campaigns deleted:          {}\n  \
             traveler profiles deleted:  {}\n  cards detached at Stripe:   {}\n  \
             Stripe customers deleted:   {}\n  messages deleted:           {}\n  \
             bookings kept (scrubbed):   {}",
            p.campaigns_to_cancel,
            p.campaigns,
            p.profiles,
            p.cards_to_detach,
            p.customers_to_delete,
            p.notifications,
            p.bookings_kept,
        ));
        if p.bookings_in_flight > 0 || p.refunds_unsettled > 0 {
            text.push_str(&format!(
                "\n  waits for: {} booking(s) in flight, {} refund(s) unsettled; the erasure \
                 runs once they settle",
                p.bookings_in_flight, p.refunds_unsettled
            ));
        }
    }
    emit(a.json, &r, &text)
}

fn requests_text(rows: &[DataRequest], one_user: bool) -> String {
    if rows.is_empty() {
        return if one_user {
            "no requests for this traveler".to_owned()
        } else {
            "no open erasure or export requests".to_owned()
        };
    }
    let mut t = figures_table(&[
        "request",
        "kind",
        "traveler",
        "status",
        "asked",
        "due",
        "waiting on",
        "by",
    ]);
    for r in rows {
        let due = if r.status == "open" {
            ago(r.due_at)
        } else {
            r.completed_at
                .map_or("-".to_owned(), |c| format!("done {}", ago(c)))
        };
        t.add_row(vec![
            r.id.to_string(),
            r.kind.clone(),
            r.user_id.to_string(),
            r.status.clone(),
            when(r.requested_at),
            due,
            r.waiting_on.clone().unwrap_or_else(|| "-".to_owned()),
            r.source.clone(),
        ]);
    }
    t.to_string()
}
