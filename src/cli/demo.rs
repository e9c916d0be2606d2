//! `fleet demo`: the README's main command. On a fresh machine with no flags it finds or
//! provisions Postgres, migrates a fresh scratch database, starts the provider sandbox
//! in-process, seeds a deterministic mix of users, profiles, cards and campaigns that exercises
//! every sandbox scenario (plus cards about to expire), runs the scheduler and two workers, and
//! ends with a summary and the invariant check.
//!
//! The demo's keyring is its own fixed [`DEMO_PII_KEYS`]: its data is synthetic and its
//! database is dropped at the end. No other command uses it; a role started without
//! `FLEET_PII_KEYS` refuses to start. Airline cancellations of a few ticketed bookings are
//! simulated by requesting their refunds, as the Duffel `order_cancellation.confirmed` webhook
//! follow-up does.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::{BudgetOverride, KindOverride, Rate, ScheduleSettings, Settings},
    database::scratch::ScratchDb,
    queue,
    scheduler::{self, Scheduler},
    Queue, Worker,
};
use anyhow::Context;
use jobs::{
    job::budgets,
    kinds::{
        airline_change::AirlineChangeDetected, airline_change_action::AirlineChangeAction,
        booking_attempt::BookingAttempt, campaign_scan::CampaignScan,
        campaign_search::CampaignSearch, card_expiry_reminder::CardExpiryReminder,
        refund_compensation::RefundCompensation, refund_reconcile::RefundReconcile,
    },
    providers::ProvidersConfig,
    seed::{demo_mix, seed_campaign},
    Job,
};
use sandbox::{Sandbox, SandboxConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The demo's own keyring (two versions, v2 newest): fixed, because the demo's data is
/// synthetic and its database is dropped at the end. Never a fallback for any other command.
const DEMO_PII_KEYS: &str = "v2:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=,v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The credentials the demo's clients present to the in-process sandbox.
const SANDBOX_KEYS: (&str, &str, &str) = ("sk_test_fleet", "duffel_test_fleet", "re_test_fleet");

/// The demo's email sender.
const EMAIL_FROM: &str = "Parker Flight <bookings@parkerflight.example>";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Logs on stderr as they happen, instead of in the log file.
    #[arg(long)]
    verbose: bool,
    /// Where the logs go (default: fleet-demo-<time>.log in the temp directory).
    #[arg(long, value_name = "FILE", conflicts_with = "verbose")]
    log_file: Option<std::path::PathBuf>,
}

impl DemoArgs {
    /// Where this run's logs go: a file, unless `--verbose`.
    pub fn log_file(&self) -> Option<std::path::PathBuf> {
        if self.verbose {
            return None;
        }
        Some(self.log_file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "fleet-demo-{}.log",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        }))
    }
}

/// Users seeded by the demo.
const USERS: usize = 300;
/// Give up after this long.
const DEADLINE: Duration = Duration::from_secs(55);

/// The summary. Field names are the `--json` contract.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Campaigns seeded.
    pub campaigns: i64,
    /// Campaigns searched at least once.
    pub campaigns_searched: i64,
    /// Bookings ticketed.
    pub bookings_ticketed: i64,
    /// Bookings failed (hold voided or never taken) and compensated.
    pub bookings_failed: i64,
    /// Refunds issued.
    pub refunds: i64,
    /// Card-expiry reminders sent.
    pub reminders_sent: i64,
    /// Failed attempts that were retried.
    pub retries: i64,
    /// Dead jobs.
    pub dead_jobs: i64,
    /// Invariant violations found by `fleet check`.
    pub invariant_violations: usize,
    /// PaymentIntents the sandbox created.
    pub payment_intents: u64,
    /// Most PaymentIntents created for one booking (must be 1).
    pub max_payment_intents_per_booking: u64,
    /// Wall time, ms.
    pub elapsed_ms: u128,
    /// What happened on each route, with the scenario the sandbox plays there.
    pub routes: Vec<RouteReport>,
    /// Failed and cancelled bookings by failure code, most frequent first.
    pub failures_by_reason: Vec<(String, i64)>,
    /// Airline-initiated changes by status (`open`, `accepted`, `cancelled`): the airline moves
    /// 4 booked flights; an operator accepts 2 and cancels 1 (refunded), 1 waits for its
    /// deadline.
    pub airline_changes: Vec<(String, i64)>,
    /// Refunds that failed after Stripe accepted them (a closed card); each was then paid back
    /// by bank transfer, recorded by an operator.
    pub refunds_failed: i64,
    /// Text messages sent (a quarter of the travelers chose SMS as well as email).
    pub sms_sent: i64,
    /// Text messages Twilio refused for good (an invalid number): those alone failed.
    pub sms_failed: i64,
    /// Travelers whose account was erased at their request (an operator asked for 3).
    pub travelers_erased: i64,
    /// Data exports delivered (an operator asked for 3).
    pub exports_sent: i64,
}

/// One route of the demo.
#[derive(Debug, Serialize)]
pub struct RouteReport {
    /// `LHR-JFK`.
    pub route: String,
    /// The sandbox scenario of the route.
    pub scenario: &'static str,
    /// What it injects.
    pub injects: &'static str,
    /// Its campaigns, tickets, failures.
    #[serde(flatten)]
    pub outcome: jobs::report::RouteOutcome,
}

/// `fleet demo`: runs it, prints the summary on stdout, fails on any invariant violation.
pub async fn run(a: DemoArgs, settings: &Settings) -> anyhow::Result<()> {
    let log_file = a.log_file();
    if let Some(f) = &log_file {
        eprintln!(
            "fleet demo: logs go to {} (--verbose shows them here)",
            f.display()
        );
    }
    let s = demo(settings).await?;
    println!("{}", summary_text(&s, log_file.as_deref()));
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    if s.invariant_violations > 0 || s.max_payment_intents_per_booking > 1 {
        return Err(super::Finding(format!(
            "demo: {} invariant violation(s)",
            s.invariant_violations
        ))
        .into());
    }
    Ok(())
}

/// The demo's story for people: what each route injects and what came of it, why bookings
/// failed, and the totals.
fn summary_text(s: &DemoSummary, log_file: Option<&std::path::Path>) -> String {
    use super::output::{short, table};
    let mut routes = table(&[
        "route",
        "scenario",
        "campaigns",
        "ticketed",
        "failed",
        "injects",
    ]);
    for r in &s.routes {
        routes.add_row(vec![
            r.route.clone(),
            r.scenario.to_owned(),
            r.outcome.campaigns.to_string(),
            r.outcome.ticketed.to_string(),
            r.outcome.failed.to_string(),
            r.injects.to_owned(),
        ]);
    }
    let changes = s
        .airline_changes
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut reasons = table(&["why bookings failed", "bookings"]);
    for (code, n) in &s.failures_by_reason {
        reasons.add_row(vec![code.clone(), n.to_string()]);
    }
    format!(
        "fleet demo: {campaigns} campaigns on {nroutes} routes (those of the travelers erased at \
         the end are gone), booked against the provider sandbox in {elapsed}\n\n\
         what each route injects (docs/sandbox.md)\n{routes}\n\
         the seed also injects: 1 card in 23 declined, 1 in 23 needing authentication, 1 in 23 \
         without funds (the campaign then needs its user); 1 campaign in 17 priced below every \
         fare (searched, never booked); 1 card in 9 expiring before its campaign ends (a \
         reminder); the airline cancels 5 ticketed bookings (refunded) and moves 4 other \
         flights (an operator accepts 2, cancels and refunds 1, leaves 1 to its deadline); one \
         refund fails days later (the card was closed) and finance pays it back by bank transfer; 1 \
         traveler in 4 chose text messages too (1 in 50 of them with a number Twilio refuses); \
         at the end, 3 travelers ask for their account to be erased and 3 for their data\n\n\
         {reasons}\n\n\
         outcome: {ticketed} ticketed, {failed} failed (holds voided, searches rescheduled), \
         {refunds} refunded, {refunds_failed} refund(s) failed (paid back by transfer), airline changes: \
         {changes}; {sms_sent} text messages sent ({sms_failed} refused: invalid numbers); \
         {erased} travelers erased, {exports} data exports sent; \
         {reminders} reminders sent, {retries} retries, {dead} dead jobs; \
         {pis} PaymentIntents (at most {max_pi} per booking); {violations} invariant \
         violation(s){logs}",
        campaigns = s.campaigns,
        nroutes = s.routes.len(),
        elapsed = short(Duration::from_millis(s.elapsed_ms as u64)),
        ticketed = s.bookings_ticketed,
        failed = s.bookings_failed,
        refunds = s.refunds,
        refunds_failed = s.refunds_failed,
        sms_sent = s.sms_sent,
        sms_failed = s.sms_failed,
        erased = s.travelers_erased,
        exports = s.exports_sent,
        reminders = s.reminders_sent,
        retries = s.retries,
        dead = s.dead_jobs,
        pis = s.payment_intents,
        max_pi = s.max_payment_intents_per_booking,
        violations = s.invariant_violations,
        logs = log_file
            .map(|f| format!("\nlogs: {}", f.display()))
            .unwrap_or_default(),
    )
}

/// Handler extensions whose provider clients (the real ones) point at the sandbox at
/// `base_url`, with the demo's keyring.
fn sandbox_extensions(base_url: &str) -> anyhow::Result<jobs::Extensions> {
    let (stripe, duffel, email) = SANDBOX_KEYS;
    let providers = ProvidersConfig::all_at(base_url, stripe, duffel, email, EMAIL_FROM);
    let keyring = jobs::pii::Keyring::parse(DEMO_PII_KEYS)?;
    let deps = jobs::Deps::from_config(&providers, keyring).map_err(|e| anyhow::anyhow!(e.0))?;
    Ok(jobs::Extensions::new().with(deps))
}

/// Runs the demo.
async fn demo(settings: &Settings) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let db = ScratchDb::new("fleet_demo").await?;
    let sandbox = Sandbox::start(
        SandboxConfig {
            slow_ms: 300,
            ..SandboxConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the sandbox")?;

    let keyring = jobs::pii::Keyring::parse(DEMO_PII_KEYS)?;
    for n in 0..USERS {
        seed_campaign(&db.db(), &keyring, &demo_mix(n)).await?;
    }

    // Demo pacing: short backoffs so retries finish inside the demo.
    let mut s = settings.clone();
    for kind in [
        CampaignSearch::KIND,
        BookingAttempt::KIND,
        RefundCompensation::KIND,
        CardExpiryReminder::KIND,
        CampaignScan::KIND,
        AirlineChangeDetected::KIND,
        AirlineChangeAction::KIND,
        RefundReconcile::KIND,
        <jobs::kinds::account_erasure::AccountErasure as jobs::Job>::KIND,
        <jobs::kinds::data_export::DataExport as jobs::Job>::KIND,
    ] {
        s.kinds.entry(kind.to_owned()).or_insert(KindOverride {
            backoff_base: Some(Duration::from_millis(200)),
            backoff_cap: Some(Duration::from_secs(2)),
            // A short budget so outage routes reach the saga's last-attempt path (void the hold,
            // fail the booking) inside the demo; production keeps its two-day budget.
            max_attempts: (kind == BookingAttempt::KIND).then_some(6),
            ..KindOverride::default()
        });
    }
    // The sandbox is an account of our own: the code's provider budgets (sized for a default
    // Duffel/Stripe/Resend account, docs/limits.md) would stretch the demo to minutes. Give it
    // room; the budgets still run, and the rate_limited route's 429s still empty them.
    for (name, per_second) in [
        (budgets::DUFFEL_SEARCH, 200.0),
        (budgets::DUFFEL_ORDER, 50.0),
        (budgets::STRIPE, 100.0),
        (budgets::RESEND, 50.0),
    ] {
        s.budgets.entry(name.to_owned()).or_insert(BudgetOverride {
            rate: Some(Rate { per_second }),
            burst: Some(per_second as u32),
        });
    }
    let registry = Arc::new(crate::fleet_registry(&s)?);
    let extensions = sandbox_extensions(&sandbox.base_url)?;
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut cfg = s.worker.clone();
        cfg.concurrency = 16;
        cfg.poll_interval = Duration::from_millis(200);
        cfg.drain_timeout = Duration::from_secs(5);
        let w = Worker::new(db.db(), registry.clone(), cfg).with_extensions(extensions.clone());
        workers.push(tokio::spawn(w.run(stop.clone())));
    }
    let schedules: BTreeMap<String, ScheduleSettings> = [
        (CampaignScan::KIND, "*/2 * * * * *", CampaignScan::KIND),
        (
            CardExpiryReminder::KIND,
            "*/5 * * * * *",
            CardExpiryReminder::KIND,
        ),
    ]
    .into_iter()
    .map(|(name, cron, kind)| {
        (
            name.to_owned(),
            ScheduleSettings {
                cron: cron.into(),
                kind: kind.into(),
                args: serde_json::json!({}),
                enabled: true,
            },
        )
    })
    .collect();
    let sched = Scheduler::new(
        db.db(),
        registry.clone(),
        scheduler::validate(&schedules, &registry)?,
    );
    let sched_task = tokio::spawn(sched.run(stop.clone()));

    // The live view: one line whose counts move, on a terminal only.
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    // Resolved means "searched in this run": counted from after the seeding.
    let began = chrono::Utc::now();
    let q = Queue::new(db.db(), registry.clone());
    let mut refunds_requested = false;
    // The life after booking: airline changes to decide, a refund that fails later.
    let mut changed: Vec<uuid::Uuid> = Vec::new();
    let (mut changes_decided, mut refund_failed, mut paid_out) = (false, false, false);
    // Travelers' rights, once the rest is done: three erasures and three exports.
    let mut rights_requested = false;
    // Cron kinds keep coming back: "busy" counts the work they cause, not them.
    let cron_kinds = [
        CardExpiryReminder::KIND.to_owned(),
        CampaignScan::KIND.to_owned(),
    ];
    loop {
        let counts = jobs::report::counts(&db.db(), began).await?;
        let (resolved, ticketed) = (counts.campaigns_resolved, counts.bookings_ticketed);
        let busy = {
            let mut conn = db.pool.acquire().await?;
            queue::job_count_in_flight(&mut *conn, &cron_kinds).await?
        };
        let p = jobs::report::phases(&db.db(), began).await?;
        bar.set_message(format!(
            "seeded {} │ searching {} │ charging {} │ booking {} │ compensating {} │ done {}/{} │ {ticketed} ticketed",
            p.seeded, p.searching, p.charging, p.booking, p.compensating, p.done, p.seeded
        ));
        let after_booking_done = refunds_requested && changes_decided && paid_out;
        // Against the campaigns there are now: an erasure deletes its traveler's.
        let all_resolved = resolved >= counts.campaigns;
        if all_resolved && busy == 0 && after_booking_done && rights_requested {
            break;
        }
        if after_booking_done && !rights_requested && all_resolved {
            ask_for_rights(&db.db(), &q).await?;
            rights_requested = true;
        }
        if !refunds_requested && ticketed >= 14 {
            // The airline cancels a few ticketed bookings: refund them, as the Duffel
            // order_cancellation.confirmed webhook's follow-up does.
            let picked = jobs::booking::ticketed(&db.db(), 9).await?;
            let (cancelled, moved) = picked.split_at(picked.len().min(5));
            let jobs = cancelled
                .iter()
                .map(|id| RefundCompensation::request(*id, "airline_cancelled"))
                .collect::<Result<Vec<_>, _>>()?;
            q.enqueue_many(jobs).await?;
            // The airline moves four other flights: Duffel's change, then the job its
            // order.airline_initiated_change_detected webhook enqueues.
            for (n, id) in moved.iter().enumerate() {
                changed.push(*id);
                q.enqueue_new(airline_change_at(&sandbox, &db.db(), *id, n).await?)
                    .await?;
            }
            refunds_requested = true;
        }
        if refunds_requested && !changes_decided {
            changes_decided = decide_changes(&db.db(), &q, &changed).await?;
        }
        if refunds_requested && !refund_failed {
            refund_failed = fail_a_refund(&sandbox, &db.db(), &q).await?;
        } else if refund_failed && !paid_out {
            paid_out = pay_back_failed_refunds(&db.db()).await?;
        }
        if started.elapsed() > DEADLINE {
            bar.abandon_with_message("deadline reached");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    stop.cancel();
    for w in workers {
        w.await?;
    }
    sched_task.await??;

    let violations = crate::check::run(&db.db()).await?;
    for v in &violations {
        eprintln!("VIOLATED: {} — ids: {}", v.invariant, v.ids.join(", "));
    }
    let counts = jobs::report::counts(&db.db(), began).await?;
    let retries = {
        let mut conn = db.pool.acquire().await?;
        queue::job_count_retries(&mut *conn).await?
    };
    let routes = jobs::report::by_route(&db.db())
        .await?
        .into_iter()
        .map(|o| {
            let route = format!("{}-{}", o.origin, o.destination);
            let scenario = sandbox::scenarios::default_scenario(&route);
            RouteReport {
                route,
                scenario: scenario.as_str(),
                injects: scenario.injects(),
                outcome: o,
            }
        })
        .collect();
    let failures_by_reason = jobs::booking::failures_by_code(&db.db()).await?;
    let airline_changes = jobs::airline_change::count_by_status(&db.db()).await?;
    let refunds_failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'failed'")
            .fetch_one(&db.pool)
            .await?;
    let (sms_sent, sms_failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL), count(*) FILTER (WHERE failed_at IS NOT NULL)
         FROM notifications WHERE channel = 'sms'",
    )
    .fetch_one(&db.pool)
    .await?;
    let (travelers_erased, exports_sent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'erasure'), count(*) FILTER (WHERE kind = 'export')
         FROM data_requests WHERE status = 'completed'",
    )
    .fetch_one(&db.pool)
    .await?;
    let counters = sandbox.sandbox.counters();
    let payment_intents = counters.payment_intents_created;
    let max_pi_per_booking = counters
        .payment_intents_by_booking
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    sandbox.shutdown().await?;
    Ok(DemoSummary {
        campaigns: counts.campaigns,
        campaigns_searched: counts.campaigns_searched,
        bookings_ticketed: counts.bookings_ticketed,
        bookings_failed: counts.bookings_failed,
        refunds: counts.refunds_succeeded,
        reminders_sent: counts.reminders_sent,
        retries: retries.retries,
        dead_jobs: retries.dead,
        invariant_violations: violations.len(),
        payment_intents,
        max_payment_intents_per_booking: max_pi_per_booking,
        elapsed_ms: started.elapsed().as_millis(),
        routes,
        failures_by_reason,
        airline_changes,
        refunds_failed,
        sms_sent,
        sms_failed,
        travelers_erased,
        exports_sent,
    })
}

/// An operator asks, for three travelers whose trip is booked, that their account be erased,
/// and for three others, that their data be sent to them (`fleet traveler erase|export`).
async fn ask_for_rights(db: &jobs::Db, q: &Queue) -> anyhow::Result<()> {
    use jobs::data_rights::{open, Asker, RequestKind, Source};
    // The canary traveler (whose passport, email and phone must never reach a log) asks for
    // their data: its export opens the passport and mails it, and the demo's log is checked.
    let canary: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(jobs::seed::CANARY_EMAIL)
        .fetch_one(db)
        .await?;
    let mut users: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT c.user_id FROM campaigns c JOIN bookings b ON b.campaign_id = c.id
         WHERE b.status = 'ticketed' AND c.user_id <> $1
           AND NOT EXISTS (SELECT 1 FROM airline_changes a WHERE a.booking_id = b.id)
         ORDER BY b.created_at, b.id LIMIT 5",
    )
    .bind(canary)
    .fetch_all(db)
    .await?;
    users.push(canary);
    let asker = Asker {
        source: Source::Operator,
        name: "demo-operator",
        external_id: None,
    };
    for (n, user) in users.iter().enumerate() {
        let kind = if n < 3 {
            RequestKind::Erasure
        } else {
            RequestKind::Export
        };
        open(db, q, kind, *user, &asker, false)
            .await
            .map_err(|e| anyhow::anyhow!("asking for a traveler's {}: {e}", kind.as_str()))?;
    }
    Ok(())
}

/// The airline moves booking `id`'s flight (the sandbox's Duffel makes the change): the
/// detection job its webhook would enqueue.
async fn airline_change_at(
    sandbox: &sandbox::RunningSandbox,
    db: &jobs::Db,
    id: uuid::Uuid,
    n: usize,
) -> anyhow::Result<jobs::NewJob> {
    let order = jobs::booking::load(db, id)
        .await?
        .and_then(|b| b.duffel_order_id)
        .context("a ticketed booking without an order")?;
    let shift = [95, -40, 150, 60][n % 4];
    let change = sandbox
        .sandbox
        .airline_change(&order, shift, None, false)
        .map_err(anyhow::Error::msg)?;
    let aic = change["id"].as_str().context("the change has an id")?;
    Ok(jobs::NewJob::of(&AirlineChangeDetected {
        order_id: order,
        aic_id: Some(aic.to_owned()),
        event_id: format!("wev_demo_{aic}"),
    })?)
}

/// Once every change is recorded, an operator decides: accepts two, cancels and refunds one,
/// leaves the last to its deadline. Returns whether it decided.
async fn decide_changes(db: &jobs::Db, q: &Queue, changed: &[uuid::Uuid]) -> anyhow::Result<bool> {
    use jobs::operator::{airline_change_decide, ChangeChoice};
    let recorded: i64 = jobs::airline_change::count_by_status(db)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    if recorded < changed.len() as i64 {
        return Ok(false);
    }
    let choices = [
        ChangeChoice::Accept,
        ChangeChoice::Accept,
        ChangeChoice::CancelAndRefund,
    ];
    for (id, choice) in changed.iter().zip(choices) {
        airline_change_decide(db, q, "demo-operator", *id, choice, false)
            .await
            .map_err(|e| anyhow::anyhow!("deciding the airline change of {id}: {e}"))?;
    }
    Ok(true)
}

/// Once the failed refund is recorded (its reconcile ran), finance pays the traveler back by
/// bank transfer and an operator records it (docs/runbooks/refund-failed.md). Returns whether
/// it did.
async fn pay_back_failed_refunds(db: &jobs::Db) -> anyhow::Result<bool> {
    let owed: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT booking_id FROM refunds WHERE status = 'failed'")
            .fetch_all(db)
            .await?;
    for (n, id) in owed.iter().enumerate() {
        let reference = format!("FIN-DEMO-{}", n + 1);
        jobs::operator::booking_paid_out(
            db,
            "demo-operator",
            *id,
            "bank_transfer",
            &reference,
            false,
        )
        .await
        .map_err(|e| anyhow::anyhow!("recording the payout of {id}: {e}"))?;
    }
    Ok(!owed.is_empty())
}

/// Once a refund has succeeded, the card network sends it back days later (the card was
/// closed): Stripe's `refund.failed`, whose follow-up is the reconcile. Returns whether it did.
async fn fail_a_refund(
    sandbox: &sandbox::RunningSandbox,
    db: &jobs::Db,
    q: &Queue,
) -> anyhow::Result<bool> {
    let refund: Option<String> = sqlx::query_scalar(
        "SELECT stripe_refund_id FROM refunds
         WHERE status = 'succeeded' AND stripe_refund_id LIKE 're\\_%'
         ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    let Some(re) = refund else {
        return Ok(false);
    };
    sandbox
        .sandbox
        .settle_refund(&re, "failed", Some("expired_or_canceled_card"))
        .map_err(anyhow::Error::msg)?;
    q.enqueue_new(RefundReconcile::request(&re, "refund.failed")?)
        .await?;
    Ok(true)
}
