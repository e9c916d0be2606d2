//! `/ui/actions/*`: pause, resume and drain a kind; replay and cancel one job or a filter;
//! refund a booking. Operators only ([`super::auth::require_operator`]), CSRF-checked like
//! every POST.
//!
//! Every action is two requests. The first (no `confirm`) runs the CLI's dry run — the change
//! made inside a transaction and rolled back — and shows what it would change, with a form to
//! confirm. The second (`confirm=yes`) makes the change through the same [`crate::ops::Ops`]
//! call as the CLI, which writes the same `audit_log` row, with the signed-in user as the
//! actor. A bulk replay or cancel is confirmed for the jobs the preview showed: the confirming
//! request carries their ids and acts on those of them that still match the filter, so jobs
//! that came to match in between are never swept in unseen.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    Extension,
};
use axum_extra::extract::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    jobs::FilterFields,
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, PageResult, Session, WithSession,
};

/// The most jobs one confirmed bulk action may touch (the ids travel in the form); beyond,
/// narrow the filter or use `fleet queue replay|cancel`.
pub const MAX_CONFIRMED_JOBS: usize = 1000;
/// How long a drain started here waits for its backlog before it leaves the kinds paused.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Every field an action form may send (each action reads its own).
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    id: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    state: Vec<String>,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    q: String,
    /// Pause: free text; refund: a code.
    #[serde(default)]
    reason: String,
    /// Refund: the booking id.
    #[serde(default)]
    booking: String,
    /// Schedule pause/resume: its name.
    #[serde(default)]
    schedule: String,
    /// Airline change: the decision (`accept`, `cancel`); traveler request: `erasure` or
    /// `export`.
    #[serde(default)]
    decision: String,
    /// Traveler request: the account id.
    #[serde(default)]
    user: String,
    /// Paid out: how (`bank_transfer`, …).
    #[serde(default)]
    how: String,
    /// Paid out: the finance ticket's id.
    #[serde(default)]
    reference: String,
    /// Drain: how long to wait ("10m").
    #[serde(default)]
    timeout: String,
    /// Replay/cancel confirmation: the ids the preview showed.
    #[serde(default)]
    only: String,
    /// Jobs ticked in a list (the field repeats): added to `id`.
    #[serde(default)]
    pick: Vec<String>,
    /// `yes` on the confirming request.
    #[serde(default)]
    confirm: String,
}

impl ActionForm {
    fn confirmed(&self) -> bool {
        self.confirm == "yes"
    }

    fn filter_fields(&self) -> FilterFields {
        let id = std::iter::once(self.id.as_str())
            .chain(self.pick.iter().map(String::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        FilterFields {
            id,
            kind: self.kind.clone(),
            state: self.state.clone(),
            queue: self.queue.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            key: self.key.clone(),
            args: self.args.clone(),
            q: self.q.clone(),
        }
    }

    fn booking_id(&self) -> Result<uuid::Uuid, PageError> {
        uuid::Uuid::parse_str(self.booking.trim())
            .map_err(|_| PageError::BadRequest("booking: not a booking id".into()))
    }

    fn kind(&self) -> Result<String, PageError> {
        let k = self.kind.trim();
        if k.is_empty() {
            return Err(PageError::BadRequest("choose a kind".into()));
        }
        Ok(k.to_owned())
    }
}

/// The page that asks for confirmation: the dry run's result and a form that repeats the
/// request with `confirm=yes`.
fn preview_page(
    s: &Session,
    title: &str,
    action: &str,
    what: Markup,
    hidden: Markup,
    extra_fields: Markup,
    confirm_label: Option<&str>,
) -> Response {
    let body = html! {
        div.page-head { h1 { (title) } }
        (templates::notice("info", "Dry run:", html! { "nothing has changed yet. This is what confirming would do." }))
        div.preview #preview { (what) }
        @match confirm_label {
            Some(label) => {
                form.confirm method="post" action=(action) {
                    (templates::csrf_field(s))
                    (hidden)
                    input type="hidden" name="confirm" value="yes";
                    (extra_fields)
                    div.buttons {
                        button.primary.danger #confirm type="submit" { (label) }
                        a href="/ui/" { "Back, change nothing" }
                    }
                }
            }
            None => p { a href="/ui/" { "Back to the overview" } },
        }
    };
    templates::page(title, Some(s), Nav::None, body).into_response()
}

/// The page after a confirmed action.
fn done_page(s: &Session, title: &str, audit_action: &str, what: Markup) -> Response {
    let body = html! {
        div.page-head { h1 { (title) } }
        (templates::notice("info", "Done:", what))
        p {
            "Recorded in the audit trail as " code { (audit_action) } " by " strong { (s.user) } ". "
            a #audit-link href=(format!("/ui/audit?actor={}", super::overview::enc(&s.user))) { "See the audit trail" }
            " · " a href="/ui/" { "Overview" }
        }
    };
    templates::page(title, Some(s), Nav::None, body).into_response()
}

fn kind_hidden(kind: &str) -> Markup {
    html! { input type="hidden" name="kind" value=(kind); }
}

/// The words of a kind switch (pause or resume).
struct Switch {
    pause: bool,
    path: &'static str,
    audit_action: &'static str,
    title: &'static str,
    would: &'static str,
    unchanged: &'static str,
    label: &'static str,
    done_title: &'static str,
    done: &'static str,
}

const PAUSE: Switch = Switch {
    pause: true,
    path: "/ui/actions/pause",
    audit_action: "kind.pause",
    title: "Pause",
    would: "Would pause",
    unchanged: " is already paused: nothing would change.",
    label: "Pause it",
    done_title: "paused",
    done: " is paused: no worker claims it until it is resumed.",
};

const RESUME: Switch = Switch {
    pause: false,
    path: "/ui/actions/resume",
    audit_action: "kind.resume",
    title: "Resume",
    would: "Would resume",
    unchanged: " is not paused: nothing would change.",
    label: "Resume it",
    done_title: "resumed",
    done: " is resumed: workers claim its jobs again.",
};

/// `POST /ui/actions/{action}`: `pause`, `resume`, `drain`, `replay`, `cancel`, `run-now`,
/// `delete`, `schedule-pause`, `schedule-resume`, `refund`, `paid-out`, `airline-change`,
/// `traveler-request`.
pub async fn act(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Path(action): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    respond(match action.as_str() {
        "pause" => switch_kind(&st, &s, &f, &PAUSE).await,
        "resume" => switch_kind(&st, &s, &f, &RESUME).await,
        "drain" => drain(&st, &s, &f).await,
        "replay" => replay(&st, &s, &f).await,
        "cancel" => cancel(&st, &s, &f).await,
        "run-now" => run_now(&st, &s, &f).await,
        "schedule-pause" => switch_schedule(&st, &s, &f, true).await,
        "schedule-resume" => switch_schedule(&st, &s, &f, false).await,
        "delete" => delete(&st, &s, &f).await,
        "refund" => refund(&st, &s, &f).await,
        "paid-out" => paid_out(&st, &s, &f).await,
        "airline-change" => airline_change(&st, &s, &f).await,
        "traveler-request" => traveler_request(&st, &s, &f).await,
        _ => Err((
            PageError::NotFound(format!("there is no action {action:?}")),
            Some(s.clone()),
        )),
    })
}

async fn switch_kind(st: &ConsoleState, s: &Session, f: &ActionForm, w: &Switch) -> PageResult {
    let kind = f.kind().or_page(s)?;
    let ops = st.ops(&s.user);
    let reason = f.reason.trim();
    let dry_run = !f.confirmed();
    if w.pause && !dry_run && reason.is_empty() {
        return Err((
            PageError::BadRequest(
                "Pausing needs a reason (an incident, an outage): it is recorded in the audit \
                 trail. Go back and fill in \"Reason\"."
                    .into(),
            ),
            Some(s.clone()),
        ));
    }
    let r = if w.pause {
        ops.pause(&kind, reason, dry_run).await
    } else {
        ops.resume(&kind, dry_run).await
    }
    .or_page(s)?;
    if r.dry_run {
        // What the pause holds (or the resume releases): the operator decides on counts.
        let c = ops.waiting(&kind).await.or_page(s)?;
        let queued = c.backlog + c.held;
        let what = if r.result {
            html! { p { (w.would) " " strong { (kind) } ": "
            @if w.pause { "no worker claims its jobs until it is resumed. Jobs already running finish; queued ones wait." }
            @else { "workers claim its jobs again at once." } }
            p #counts {
                @if w.pause { strong { (queued) } " queued job(s) and " strong { (c.retrying) } " waiting to retry would wait; " strong { (c.running) } " running would finish." }
                @else { strong { (queued) } " queued job(s) and " strong { (c.retrying) } " waiting to retry would run again." }
            } }
        } else {
            html! { p { strong { (kind) } (w.unchanged) } }
        };
        let reason_field = if w.pause {
            templates::field(
                "reason",
                "Reason (required; recorded in the audit trail)",
                reason,
                "e.g. provider outage, INC-123",
            )
        } else {
            html! {}
        };
        return Ok(preview_page(
            s,
            &format!("{} {kind}?", w.title),
            w.path,
            what,
            kind_hidden(&kind),
            reason_field,
            r.result.then_some(w.label),
        ));
    }
    Ok(done_page(
        s,
        &format!("{kind} {}", w.done_title),
        w.audit_action,
        html! { strong { (kind) } @if r.result { (w.done) } @else { (w.unchanged.replace(": nothing would change", "")) } },
    ))
}

/// Drain: the preview is the CLI's dry run; the confirmed drain runs in the
/// background (it waits for the backlog), and the overview shows it as draining, then paused.
async fn drain(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    async {
            let kind = f.kind().or_page(s)?;
            let timeout = match f.timeout.trim() {
                "" => DEFAULT_DRAIN_TIMEOUT,
                t => crate::config::parse_duration_within(t, crate::config::MAX_DRAIN_TIMEOUT)
                    .map_err(|e| PageError::BadRequest(format!("Give up after: {e}")))
                    .or_page(s)?,
            };
            let kinds = vec![kind.clone()];
            let ops = st.ops(&s.user);
            if !f.confirmed() {
                let r = ops.drain(&kinds, timeout, true, |_| {}).await.or_page(s)?;
                let d = &r.result;
                let what = html! {
                    p { "Would drain " strong { (kind) } ": hold its new jobs, let the "
                        strong #backlog { (d.backlog) } " queued job(s) and the " strong { (d.running) }
                        " running one(s) finish, then leave it paused until it is resumed." }
                    @if d.held > 0 { p { (d.held) " job(s) would be held for the resume." } }
                    @if d.retrying > 0 { p #retrying { strong { (d.retrying) } " job(s) are waiting to retry: they may be mid-work (a saga between its steps). The pause holds them; they run after the resume." } }
                    @if !d.already_paused.is_empty() { p { "It is paused already: its queue stays held, only running jobs are waited for." } }
                    @if !d.money.is_empty() {
                        p #money-note { strong { (d.money.len()) } " booking(s) have money their unfinished jobs still move: it stays in flight across the deploy." }
                        (templates::sortable("money", "Money its unfinished jobs still move", &[("What", false), ("Amount", false), ("Booking", false), ("Job", true), ("State", false), ("Runs", false)], html! {
                            @for h in &d.money {
                                tr {
                                    td { (h.what) }
                                    td.num { (h.amount) " " (h.currency) }
                                    td { a href=(format!("/ui/bookings/{}", h.booking_id)) { code { (h.booking_id) } } }
                                    td.num data-sort=(h.job_id) { a href=(format!("/ui/jobs/{}", h.job_id)) { (h.job_id) } }
                                    td { (templates::state_badge(&h.job_state)) }
                                    td { (templates::time(h.job_run_at)) }
                                }
                            }
                        }))
                    }
                };
                let timeout_field = templates::field("timeout", "Give up after", &humantime::format_duration(timeout).to_string(), "then the kind is left paused with work left");
                return Ok(preview_page(s, &format!("Drain {kind}?"), "/ui/actions/drain", what, kind_hidden(&kind), timeout_field, Some("Drain it")));
            }
            ops.check_kind(&kind).await.or_page(s)?;
            let user = s.user.clone();
            tokio::spawn(async move {
                match ops.drain(&kinds, timeout, false, |_| {}).await {
                    Ok(r) => tracing::info!(user = %user, kinds = ?r.result.kinds, waited_ms = r.result.waited_ms, "console: drain finished"),
                    Err(e) => tracing::warn!(user = %user, error = %e, "console: drain ended without draining"),
                }
            });
            Ok(done_page(s, &format!("Draining {kind}"), "kind.drain", html! {
                strong { (kind) } " is draining: its backlog runs, new jobs are held. The overview shows "
                em { "draining" } ", then " em { "paused" } " when it is done (or after "
                (humantime::format_duration(timeout).to_string()) ")."
            }))
        }
    .await
}

/// The filter of a replay or cancel; on confirmation narrowed to the ids the preview showed.
fn bulk_filter(f: &ActionForm) -> Result<crate::queue::JobFilter, PageError> {
    let mut filter = f.filter_fields().to_filter()?;
    if f.confirmed() {
        let only: Vec<i64> = f
            .only
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| PageError::BadRequest("the confirmation's job ids are not ids".into()))?;
        if only.is_empty() {
            return Err(PageError::BadRequest(
                "nothing to confirm: the preview matched no job".into(),
            ));
        }
        if only.len() > MAX_CONFIRMED_JOBS {
            return Err(PageError::BadRequest(format!(
                "the console confirms at most {MAX_CONFIRMED_JOBS} jobs at once, not {}: narrow the filter or use the CLI",
                only.len()
            )));
        }
        filter.ids = Some(match filter.ids.take() {
            Some(ids) => ids.into_iter().filter(|i| only.contains(i)).collect(),
            None => only,
        });
    }
    Ok(filter)
}

fn id_list(ids: &[i64]) -> Markup {
    html! {
        ul.ids {
            @for id in ids.iter().take(100) { li { a href=(format!("/ui/jobs/{id}")) { (id) } } }
            @if ids.len() > 100 { li { "… and " (ids.len() - 100) " more" } }
        }
    }
}

fn bulk_preview(
    s: &Session,
    f: &ActionForm,
    verb: &str,
    action: &str,
    ids: &[i64],
    detail: Markup,
) -> Response {
    let fields = f.filter_fields();
    let what = html! {
        p { "Filter: " (fields.describe()) "." }
        p { "Would " (verb) " " strong #count { (ids.len()) } " job(s)." }
        (detail)
        @if ids.len() > MAX_CONFIRMED_JOBS {
            (templates::notice("warn", "Too many to confirm here:", html! {
                "the console confirms at most " (MAX_CONFIRMED_JOBS) " jobs at once. Narrow the filter, or use "
                code { "fleet queue " (verb) } "."
            }))
        }
    };
    let hidden = html! {
        (fields.hidden())
        input type="hidden" name="only" value=(ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    };
    let can = !ids.is_empty() && ids.len() <= MAX_CONFIRMED_JOBS;
    let label = format!("{} {} job(s)", capitalise(verb), ids.len());
    preview_page(
        s,
        &match verb {
            "run now" => "Run jobs now?".to_owned(),
            v => format!("{} jobs?", capitalise(v)),
        },
        action,
        what,
        hidden,
        html! {},
        can.then_some(label.as_str()),
    )
}

/// The jobs a bulk action matched but left alone, each with why (nothing when none was).
fn skipped_list(skipped: &[crate::queue::SkippedJob]) -> Markup {
    html! {
        @if !skipped.is_empty() {
            p { "Left alone:" }
            ul #skipped { @for sk in skipped { li { a href=(format!("/ui/jobs/{}", sk.id)) { (sk.id) } ": " (sk.reason) } } }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

async fn replay(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    let filter = bulk_filter(f).or_page(s)?;
    let r = st
        .ops(&s.user)
        .replay(&filter, !f.confirmed())
        .await
        .or_page(s)?;
    let skipped = skipped_list(&r.result.skipped);
    if r.dry_run {
        let detail = html! {
            p.muted { "Only dead or cancelled jobs are replayed: each becomes available now with a fresh attempt budget; its error history is kept." }
            (id_list(&r.result.replayed)) (skipped)
        };
        return Ok(bulk_preview(
            s,
            f,
            "replay",
            "/ui/actions/replay",
            &r.result.replayed,
            detail,
        ));
    }
    Ok(done_page(
        s,
        "Jobs replayed",
        "job.replay",
        html! {
            "replayed " strong #done-count { (r.result.replayed.len()) } " job(s). "
            (id_list(&r.result.replayed)) (skipped)
        },
    ))
}

async fn cancel(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    let filter = bulk_filter(f).or_page(s)?;
    let r = st
        .ops(&s.user)
        .cancel(&filter, !f.confirmed())
        .await
        .or_page(s)?;
    let ids: Vec<i64> = r.result.iter().map(|c| c.id).collect();
    let running = r.result.iter().filter(|c| c.was == "running").count();
    if r.dry_run {
        let detail = html! {
            p.muted { "Only unfinished jobs are cancelled. " @if running > 0 { (running) " of them are running: their handlers are told to stop." } }
            (id_list(&ids))
        };
        return Ok(bulk_preview(
            s,
            f,
            "cancel",
            "/ui/actions/cancel",
            &ids,
            detail,
        ));
    }
    Ok(done_page(
        s,
        "Jobs cancelled",
        "job.cancel",
        html! { "cancelled " strong #done-count { (ids.len()) } " job(s). " (id_list(&ids)) },
    ))
}

/// Pause (or resume) a cron schedule.
async fn switch_schedule(st: &ConsoleState, s: &Session, f: &ActionForm, pause: bool) -> PageResult {
    let name = f.schedule.trim();
    let reason = f.reason.trim();
    let dry_run = !f.confirmed();
    if pause && !dry_run && reason.is_empty() {
        return Err((
            PageError::BadRequest(
                "Pausing a schedule needs a reason: it is recorded in the audit trail. Go back \
                 and fill in \"Reason\"."
                    .into(),
            ),
            Some(s.clone()),
        ));
    }
    let ops = st.ops(&s.user);
    let r = if pause {
        ops.schedule_pause(&st.schedules, name, reason, dry_run).await
    } else {
        ops.schedule_resume(&st.schedules, name, dry_run).await
    }
    .or_page(s)?;
    let (path, verb) = if pause {
        ("/ui/actions/schedule-pause", "pause")
    } else {
        ("/ui/actions/schedule-resume", "resume")
    };
    if r.dry_run {
        let what = match (r.result, pause) {
            (true, true) => html! { p { "Would pause the schedule " strong { (name) } ": its ticks enqueue nothing until it is resumed, and the ticks it misses are not replayed. Jobs it already enqueued are not touched." } },
            (true, false) => html! { p { "Would resume the schedule " strong { (name) } ": its next tick enqueues its job again." } },
            (false, true) => html! { p { strong { (name) } " is already paused: nothing would change." } },
            (false, false) => html! { p { strong { (name) } " is not paused: nothing would change." } },
        };
        let reason_field = if pause {
            templates::field("reason", "Reason (required; recorded in the audit trail)", reason, "e.g. provider outage, INC-123")
        } else {
            html! {}
        };
        let hidden = html! { input type="hidden" name="schedule" value=(name); };
        let label = if pause { "Pause it" } else { "Resume it" };
        return Ok(preview_page(
            s,
            &format!("{} the schedule {name}?", capitalise(verb)),
            path,
            what,
            hidden,
            reason_field,
            r.result.then_some(label),
        ));
    }
    Ok(done_page(
        s,
        &format!("Schedule {name} {verb}d"),
        &format!("schedule.{verb}"),
        html! {
            strong { (name) }
            @if !r.result { " was already " (if pause { "paused" } else { "active" }) "; nothing changed." }
            @else if pause { " is paused: its ticks enqueue nothing until it is resumed." }
            @else { " is resumed: its next tick enqueues its job." }
            " " a href="/ui/schedules" { "Schedules" }
        },
    ))
}

/// Run scheduled or retrying jobs now.
async fn run_now(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    let filter = bulk_filter(f).or_page(s)?;
    let r = st
        .ops(&s.user)
        .run_now(&filter, !f.confirmed())
        .await
        .or_page(s)?;
    if r.dry_run {
        let detail = html! {
            p.muted { "Only scheduled or retrying jobs move: each becomes available now. A retry keeps the attempt it already used." }
            (id_list(&r.result))
        };
        return Ok(bulk_preview(s, f, "run now", "/ui/actions/run-now", &r.result, detail));
    }
    Ok(done_page(
        s,
        "Jobs run now",
        "job.run_now",
        html! { "made " strong #done-count { (r.result.len()) } " job(s) available now. " (id_list(&r.result)) },
    ))
}

/// Delete finished jobs.
async fn delete(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    let filter = bulk_filter(f).or_page(s)?;
    let r = st
        .ops(&s.user)
        .delete(&filter, !f.confirmed())
        .await
        .or_page(s)?;
    let skipped = skipped_list(&r.result.skipped);
    if r.dry_run {
        let detail = html! {
            p.muted { "Only finished jobs (completed, cancelled, dead) are deleted, with their attempt history. This cannot be undone; the audit trail keeps their ids." }
            (id_list(&r.result.deleted)) (skipped)
        };
        return Ok(bulk_preview(s, f, "delete", "/ui/actions/delete", &r.result.deleted, detail));
    }
    Ok(done_page(
        s,
        "Jobs deleted",
        "job.delete",
        html! { "deleted " strong #done-count { (r.result.deleted.len()) } " job(s). " (id_list(&r.result.deleted)) (skipped) },
    ))
}

/// Refund a booking.
async fn refund(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    async {
            let id = f.booking_id().or_page(s)?;
            let reason = f.reason.trim();
            let r = st
                .ops(&s.user)
                .booking_refund(id, reason, &st.queue, !f.confirmed())
                .await
                .or_page(s)?;
            let x = &r.result;
            let back = format!("/ui/bookings/{id}");
            if r.dry_run {
                let what = html! {
                    @if x.duplicate {
                        p { "A refund is already queued for this booking: nothing would be added." }
                    } @else {
                        p #refund-amount { "Gives back " strong { (x.amount) " " (x.currency) } " to the traveler's card." }
                        p { "Booking " code { (id) } " is " strong { (x.status_before) } ". Would "
                            @if x.booking_cancelled { "cancel it (and its order) and " }
                            "request its refund (reason " code { (reason) } "), run by a "
                            code { (<jobs::kinds::refund_compensation::RefundCompensation as jobs::Job>::KIND) } " job under the key " code { (jobs::kinds::refund_compensation::refund_key(id)) } "." }
                    }
                };
                let hidden = html! {
                    input type="hidden" name="booking" value=(id);
                    input type="hidden" name="reason" value=(reason);
                };
                return Ok(preview_page(s, "Refund this booking?", "/ui/actions/refund", what, hidden, html! {}, (!x.duplicate).then_some("Refund it")));
            }
            Ok(done_page(s, "Refund requested", "booking.refund_requested", html! {
                @match (x.duplicate, x.job_id) {
                    (true, Some(j)) => { "a refund was already queued (" a href=(format!("/ui/jobs/{j}")) { "job " (j) } "); nothing added. " }
                    (_, Some(j)) => { "the refund is queued as " a href=(format!("/ui/jobs/{j}")) { "job " (j) } ". " }
                    (_, None) => { "the refund is queued. " }
                }
                a href=(back) { "Back to the booking" }
            }))
        }
    .await
}

/// Record that a booking's failed refund was paid back another way.
async fn paid_out(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    let id = f.booking_id().or_page(s)?;
    let (how, reference) = (f.how.trim(), f.reference.trim());
    let r = st
        .ops(&s.user)
        .booking_paid_out(id, how, reference, !f.confirmed())
        .await
        .or_page(s)?;
    let x = &r.result;
    let back = format!("/ui/bookings/{id}");
    if r.dry_run {
        let what = html! {
            p #paid-out-amount { "Would record that " strong { (x.amount) " " (x.currency) } " was paid back to the traveler by " strong { (how) } " (ticket " code { (reference) } "), for the refund that failed." }
            p.muted { "It writes a refund row that succeeded, without a Stripe id, and an audit row. The money is then no longer owed: " code { "fleet check" } " stops naming the booking. Record it only once the money has left." }
        };
        let hidden = html! {
            input type="hidden" name="booking" value=(id);
            input type="hidden" name="how" value=(how);
            input type="hidden" name="reference" value=(reference);
        };
        return Ok(preview_page(s, "Record the payout?", "/ui/actions/paid-out", what, hidden, html! {}, Some("Record it")));
    }
    Ok(done_page(s, "Payout recorded", "refund.paid_out", html! {
        (x.amount) " " (x.currency) " paid back by " (how) " is recorded. " a href=(back) { "Back to the booking" }
    }))
}

/// Decide a booking's airline change: accept the new schedule, or cancel and refund.
async fn airline_change(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    use jobs::operator::ChangeChoice;
    let id = f.booking_id().or_page(s)?;
    let choice: ChangeChoice = f
        .decision
        .trim()
        .parse()
        .map_err(|e: String| PageError::BadRequest(e))
        .or_page(s)?;
    let r = st
        .ops(&s.user)
        .airline_change_decide(id, choice, &st.queue, !f.confirmed())
        .await
        .or_page(s)?;
    let x = &r.result;
    let back = format!("/ui/bookings/{id}");
    let deadline = x.respond_by.format("%Y-%m-%d %H:%M UTC").to_string();
    if r.dry_run {
        let what = match &x.refund {
            Some(f) => html! {
                p #change-decision { "Would cancel booking " code { (id) } " and its order, and refund "
                    strong { (f.amount) " " (f.currency) } " to the traveler's card; the airline change "
                    code { (x.change_id) } " is recorded as cancelled by you." }
            },
            None if x.duplicate => html! {
                p #change-decision { "The accept of airline change " code { (x.change_id) } " is already queued: nothing would be added." }
            },
            None => html! {
                p #change-decision { "Would accept airline change " code { (x.change_id) } " at Duffel: the booking stays on the new schedule. Deadline " (deadline) "." }
            },
        };
        let hidden = html! {
            input type="hidden" name="booking" value=(id);
            input type="hidden" name="decision" value=(f.decision.trim());
        };
        let label = match choice {
            ChangeChoice::Accept => "Accept the change",
            ChangeChoice::CancelAndRefund => "Cancel and refund",
        };
        return Ok(preview_page(s, "Decide the airline change?", "/ui/actions/airline-change", what, hidden, html! {}, (!x.duplicate).then_some(label)));
    }
    let action = match choice {
        ChangeChoice::Accept => "airline_change.accept_requested",
        ChangeChoice::CancelAndRefund => "airline_change.cancelled",
    };
    Ok(done_page(s, "Airline change decided", action, html! {
        @match (&x.refund, x.job_id) {
            (Some(f), _) => { "the booking is cancelled and " (f.amount) " " (f.currency) " is being refunded. " }
            (None, Some(j)) => { "the accept is queued as " a href=(format!("/ui/jobs/{j}")) { "job " (j) } ". " }
            (None, None) => { "the accept is queued. " }
        }
        a href=(back) { "Back to the booking" }
    }))
}

/// Open a traveler's erasure or export request (its job does the work).
async fn traveler_request(st: &ConsoleState, s: &Session, f: &ActionForm) -> PageResult {
    use jobs::data_rights::RequestKind;
    let user = uuid::Uuid::parse_str(f.user.trim())
        .map_err(|_| PageError::BadRequest("account id: not an account id (a UUID)".into()))
        .or_page(s)?;
    let kind: RequestKind = f
        .decision
        .trim()
        .parse()
        .map_err(|e: String| PageError::BadRequest(e))
        .or_page(s)?;
    let r = st
        .ops(&s.user)
        .data_request(kind, user, &st.queue, !f.confirmed())
        .await
        .or_page(s)?;
    let x = &r.result;
    let what_word = match kind {
        RequestKind::Erasure => "erasure",
        RequestKind::Export => "export",
    };
    if r.dry_run {
        let what = html! {
            @if x.duplicate {
                p #request-summary { "An " (what_word) " request is already open for traveler " code { (user) } ": nothing would be added." }
            } @else {
                @match (&x.preview, kind) {
                    (Some(p), _) => {
                        p #request-summary { "Would erase the account " code { (user) } ": its job cancels "
                            strong { (p.campaigns_to_cancel) } " campaign(s) still searching, detaches "
                            strong { (p.cards_to_detach) } " card(s) and deletes " strong { (p.customers_to_delete) }
                            " customer(s) at Stripe, emails the traveler once, then deletes "
                            strong { (p.profiles) } " traveler profile(s), " strong { (p.campaigns) } " campaign(s) and "
                            strong { (p.notifications) } " message(s). " strong { (p.bookings_kept) }
                            " booking(s) are kept as accounting records, without their booking reference or itinerary." }
                        @if p.bookings_in_flight > 0 || p.refunds_unsettled > 0 {
                            p #request-waits { (templates::badge("retryable", "…", "waits")) " "
                                (p.bookings_in_flight) " booking(s) in flight and " (p.refunds_unsettled)
                                " refund(s) not settled: the erasure runs once they settle." }
                        }
                        p.muted { "This cannot be undone." }
                    }
                    (None, _) => {
                        p #request-summary { "Would email traveler " code { (user) } " one JSON document of everything held about them (passport numbers included; each read is audited)." }
                    }
                }
            }
        };
        let hidden = html! {
            input type="hidden" name="user" value=(user);
            input type="hidden" name="decision" value=(what_word);
        };
        let label = match kind {
            RequestKind::Erasure => "Erase the account",
            RequestKind::Export => "Send the export",
        };
        return Ok(preview_page(s, &format!("{} this traveler?", capitalise(match kind { RequestKind::Erasure => "erase", RequestKind::Export => "export" })), "/ui/actions/traveler-request", what, hidden, html! {}, (!x.duplicate).then_some(label)));
    }
    let audit_action = match kind {
        RequestKind::Erasure => "erasure.requested",
        RequestKind::Export => "export.requested",
    };
    Ok(done_page(s, "Request opened", audit_action, html! {
        @match (x.duplicate, x.job_id) {
            (true, Some(j)) => { "a request was already open (" a href=(format!("/ui/jobs/{j}")) { "job " (j) } "); nothing added. " }
            (_, Some(j)) => { "the " (what_word) " is queued as " a href=(format!("/ui/jobs/{j}")) { "job " (j) } ". " }
            (_, None) => { "the " (what_word) " is queued. " }
        }
        a href="/ui/travelers" { "Back to the requests" }
    }))
}
