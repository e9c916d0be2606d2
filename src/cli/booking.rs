//! `fleet booking show|refund|change|paid-out`: the domain's view of one booking (saga steps, provider ids,
//! refunds, emails, audit trail, the jobs behind it; no PII) and an operator's refund, through
//! the refund kind's own request and key.

use std::sync::Arc;

use crate::{config::Settings, fleet_registry, ops::Ops};
use clap::Subcommand;
use uuid::Uuid;

use super::{
    databases_for, os_user,
    output::{ago, clip, emit, figures_table, table, when},
};

#[derive(clap::Args)]
pub struct BookingArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: BookingAction,
}

#[derive(Subcommand)]
enum BookingAction {
    /// One booking: its saga steps with times, provider ids, refunds, emails sent, audit
    /// entries and the jobs behind each step. No personal data.
    Show {
        /// The booking's id.
        id: Uuid,
    },
    /// Give a booking's money back: a ticketed booking is cancelled (its order too) and
    /// refunded; a cancelled one still holding captured money is refunded. Idempotent: a
    /// repeated request returns the queued refund.
    Refund {
        /// The booking's id.
        id: Uuid,
        /// Why, as a code (e.g. customer_request, airline_cancelled).
        #[arg(long)]
        reason: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Decide the booking's open airline-initiated change before its deadline: `accept` keeps
    /// the new schedule (accepted at Duffel by a job), `cancel` cancels the booking and its
    /// order and refunds the traveler in full. Past the deadline the fleet has accepted it.
    Change {
        /// The booking's id.
        id: Uuid,
        /// accept or cancel.
        decision: jobs::operator::ChangeChoice,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Record that a refund which failed (the card was closed) was paid back another way:
    /// the money is no longer owed (`fleet check` stops naming the booking).
    PaidOut {
        /// The booking's id.
        id: Uuid,
        /// How: bank_transfer, stripe_payout or cheque.
        #[arg(long)]
        how: String,
        /// The finance ticket's id (no personal data; kept in the audit trail).
        #[arg(long)]
        reference: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in audit_log; default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
}

pub async fn run(a: BookingArgs, settings: &Settings) -> anyhow::Result<()> {
    let registry = Arc::new(fleet_registry(settings)?);
    let dbs = databases_for(settings).await?;
    match a.action {
        BookingAction::Show { id } => {
            let r = Ops::on(&dbs.main, registry.kind_names(), &os_user())
                .booking(id)
                .await?;
            emit(a.json, &r, &show_text(&r))
        }
        BookingAction::Refund {
            id,
            reason,
            dry_run,
            actor,
        } => {
            let queue = crate::Queue::of_fleet(&dbs, registry.clone());
            let ops = Ops::new(
                dbs.main.db.clone(),
                registry.kind_names(),
                actor.unwrap_or_else(os_user),
            );
            let r = ops.booking_refund(id, &reason, &queue, dry_run).await?;
            let x = &r.result;
            let verb = if r.dry_run {
                "would request"
            } else {
                "requested"
            };
            let text = if x.duplicate {
                format!(
                    "booking {id}: a refund is already queued (job {}); nothing added",
                    x.job_id.map_or("?".to_owned(), |j| j.to_string())
                )
            } else {
                // A dry run has no job id: the real run's insert takes its own.
                let job = match x.job_id {
                    Some(j) => format!("as job {j}"),
                    None => "as a new job".to_owned(),
                };
                format!(
                    "booking {id} ({}): {verb} its refund of {} {}{} {job} (key {})",
                    x.status_before,
                    x.amount,
                    x.currency,
                    if x.booking_cancelled {
                        ", cancelling the booking and its order,"
                    } else {
                        ""
                    },
                    jobs::kinds::refund_compensation::refund_key(id)
                )
            };
            emit(a.json, &r, &text)
        }
        BookingAction::Change {
            id,
            decision,
            dry_run,
            actor,
        } => {
            let queue = crate::Queue::of_fleet(&dbs, registry.clone());
            let ops = Ops::new(
                dbs.main.db.clone(),
                registry.kind_names(),
                actor.unwrap_or_else(os_user),
            );
            let r = ops
                .airline_change_decide(id, decision, &queue, dry_run)
                .await?;
            let x = &r.result;
            let deadline = x.respond_by.format("%Y-%m-%d %H:%M UTC");
            let text = match (&x.refund, x.duplicate) {
                (Some(f), _) => format!(
                    "booking {id}: airline change {} {} cancelled; the booking and its order {} \
                     cancelled and {} {} refunded ({})",
                    x.change_id,
                    if r.dry_run { "would be" } else { "is" },
                    if r.dry_run { "would be" } else { "are being" },
                    f.amount,
                    f.currency,
                    match f.job_id {
                        Some(j) => format!("job {j}"),
                        None => "a new job".to_owned(),
                    }
                ),
                (None, true) => format!(
                    "booking {id}: the accept of airline change {} is already queued (job {}); \
                     nothing added",
                    x.change_id,
                    x.job_id.map_or("?".to_owned(), |j| j.to_string())
                ),
                (None, false) => format!(
                    "booking {id}: airline change {} {} accepted at Duffel by {} (deadline {deadline})",
                    x.change_id,
                    if r.dry_run { "would be" } else { "will be" },
                    match x.job_id {
                        Some(j) => format!("job {j}"),
                        None => "a new job".to_owned(),
                    }
                ),
            };
            emit(a.json, &r, &text)
        }
        BookingAction::PaidOut {
            id,
            how,
            reference,
            dry_run,
            actor,
        } => {
            let ops = Ops::new(
                dbs.main.db.clone(),
                registry.kind_names(),
                actor.unwrap_or_else(os_user),
            );
            let r = ops.booking_paid_out(id, &how, &reference, dry_run).await?;
            let x = &r.result;
            let text = format!(
                "booking {id}: {} {} {} paid back by {how} (ticket {reference}) for the refund that failed",
                if r.dry_run { "would record" } else { "recorded" },
                x.amount,
                x.currency
            );
            emit(a.json, &r, &text)
        }
    }
}

fn show_text(r: &crate::ops::BookingReport) -> String {
    let b = &r.booking;
    let mut out = format!(
        "booking {}  {}  {} {}\n",
        b.id, b.status, b.total_amount, b.currency
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<15} {v}\n"));
    line(
        "campaign",
        b.campaign_id
            .map(|c| c.to_string())
            .unwrap_or_else(|| "detached (user erased)".into()),
    );
    line("offer", b.offer_id.clone());
    line("order", b.order_id.clone().unwrap_or_else(|| "-".into()));
    line(
        "payment intent",
        match (&b.payment_intent_id, &b.payment_intent_status) {
            (Some(pi), Some(st)) => format!("{pi} ({st})"),
            (Some(pi), None) => pi.clone(),
            _ => "-".into(),
        },
    );
    if let Some(c) = &b.failure_code {
        line("failure", c.clone());
    }
    line(
        "pnr",
        if b.pnr_recorded {
            "recorded (not shown)".into()
        } else {
            "-".into()
        },
    );
    out.push_str("\nsaga steps\n");
    for s in &b.steps {
        out.push_str(&format!("  {:<16} {}\n", s.step, when(s.at)));
    }
    for c in &b.airline_changes {
        out.push_str(&format!(
            "\nairline change {}  {}{}  deadline {}\n",
            c.id,
            c.status,
            c.decided_by
                .as_deref()
                .map(|by| format!(" by {by}"))
                .unwrap_or_default(),
            when(c.respond_by)
        ));
        for (label, legs) in [("before", &c.removed), ("after", &c.added)] {
            for leg in legs.iter().filter_map(|l| l.as_array()).flatten() {
                let f = |k: &str| {
                    leg.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("-")
                        .to_owned()
                };
                out.push_str(&format!(
                    "  {label:<7} {}-{}  departs {}  arrives {}\n",
                    f("origin"),
                    f("destination"),
                    f("departing_at"),
                    f("arriving_at")
                ));
            }
        }
    }
    if !b.refunds.is_empty() {
        let mut t = figures_table(&["refund", "stripe id", "amount", "reason", "status", "at"]);
        for f in &b.refunds {
            t.add_row(vec![
                f.id.to_string(),
                f.stripe_refund_id.clone().unwrap_or_else(|| "-".into()),
                format!("{} {}", f.amount, f.currency),
                f.reason.clone(),
                match &f.failure_reason {
                    Some(why) => format!("{} ({why}, {})", f.status, ago(f.updated_at)),
                    None => f.status.clone(),
                },
                ago(f.created_at),
            ]);
        }
        out.push_str(&format!("\nrefunds\n{t}\n"));
        if b.refund_owed() {
            out.push_str(
                "a refund FAILED: the money came back to the Stripe balance, not to the traveler \
                 (who was emailed); pay it back another way, then `fleet booking paid-out` \
                 (docs/runbooks/refund-failed.md)\n",
            );
        }
    }
    if !b.emails.is_empty() {
        let mut t = table(&["message", "channel", "dedupe key", "sent"]);
        for e in &b.emails {
            t.add_row(vec![
                e.kind.clone(),
                e.channel.clone(),
                e.dedupe_key.clone(),
                match (&e.sent_at, &e.failure_code) {
                    (Some(at), _) => ago(*at),
                    (None, Some(why)) => format!("refused ({why})"),
                    (None, None) => "not yet".into(),
                },
            ]);
        }
        out.push_str(&format!("\nmessages\n{t}\n"));
    }
    let mut t = table(&["job", "kind", "state", "try", "created", "last error"]);
    for j in &r.jobs {
        t.add_row(vec![
            j.id.to_string(),
            j.kind.clone(),
            j.state.clone(),
            format!("{}/{}", j.attempt, j.max_attempts),
            ago(j.created_at),
            j.last_error
                .as_deref()
                .map(|e| clip(e, 36))
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&if r.jobs.is_empty() {
        "\nno jobs found for it (finished jobs are kept for worker.retention_*)\n".to_owned()
    } else {
        format!("\njobs\n{t}\n")
    });
    let mut t = table(&["audit", "actor", "action", "on"]);
    for e in &b.audit {
        t.add_row(vec![
            ago(e.created_at),
            e.actor.clone(),
            e.action.clone(),
            format!("{}", e.resource_type),
        ]);
    }
    out.push_str(&format!("\naudit trail\n{t}"));
    out
}
