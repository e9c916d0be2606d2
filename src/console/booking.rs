//! `/ui/bookings/{id}`: what happened to one booking, as `fleet booking show` reads it
//! ([`crate::ops::Ops::booking`]): its campaign's searches, the saga's steps with their times
//! and the job behind each, the provider ids (PaymentIntent, order, refunds), compensation,
//! emails sent and audit entries, merged into one timeline. No personal data: the view it
//! renders carries none (no name, e-mail address, passport or PNR; the PNR is only said to
//! be recorded).

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
    Extension,
};
use axum_extra::extract::Query;
use chrono::{DateTime, Utc};
use jobs::Job;
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    jobs::jobs_table,
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, Session, WithSession,
};
use crate::queue::JobSummary;

/// The badge tone of a booking status (the job states' colours: done, held, failed).
fn booking_tone(status: &str) -> &'static str {
    match status {
        "ticketed" => "completed",
        "authorized" => "retryable",
        "failed" => "dead",
        "refunded" => "refund",
        "pending" => "running",
        _ => "cancelled",
    }
}

/// `GET /ui/bookings?id=…&status=…&before=…`.
#[derive(Debug, Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    id: String,
    /// A booking status to list only those (`failed`, `authorized`, …); empty: all.
    #[serde(default)]
    status: String,
    /// The previous page's last row, `created_at` (RFC 3339) and id joined by `~`.
    #[serde(default)]
    before: String,
}

/// Bookings a page.
const BOOKINGS_PAGE: i64 = 50;

/// What a booking status means to an operator (the list's filter says it beside the name).
fn meaning(status: jobs::booking::BookingStatus) -> &'static str {
    use jobs::booking::BookingStatus::*;
    match status {
        Pending => "started, no hold yet",
        Authorized => "card held, not ticketed",
        Ticketed => "booked and charged",
        Failed => "did not book, holds nothing",
        Cancelled => "cancelled",
        Refunded => "money returned",
    }
}

/// `GET /ui/bookings`: the most recent bookings (filtered by status, keyset pages), and a
/// booking looked up by id.
pub async fn find(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Query(q): Query<FindQuery>,
) -> Response {
    let id = q.id.trim();
    if let Ok(id) = uuid::Uuid::parse_str(id) {
        return Redirect::to(&format!("/ui/bookings/{id}")).into_response();
    }
    respond(list_page(&st, &s, &q, id).await)
}

async fn list_page(st: &ConsoleState, s: &Session, q: &FindQuery, id: &str) -> super::PageResult {
    let status = q.status.trim();
    let before = match q.before.split_once('~') {
        None => None,
        Some((at, id)) => Some((
            DateTime::parse_from_rfc3339(at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| PageError::BadRequest("before: not a page position".into()))
                .or_page(s)?,
            uuid::Uuid::parse_str(id)
                .map_err(|_| PageError::BadRequest("before: not a page position".into()))
                .or_page(s)?,
        )),
    };
    let rows = st
        .ops(&s.user)
        .bookings((!status.is_empty()).then_some(status), before, BOOKINGS_PAGE)
        .await
        .or_page(s)?;
    let status_query = templates::query_string([("status", status)]);
    let body = html! {
        div.page-head { h1 { "Bookings" } p.muted { "The most recent first; open one for its searches, saga steps, provider ids, refunds, emails and audit trail." } }
        @if !id.is_empty() {
            (templates::notice("error", "Not a booking id:", html! { "a booking id is a UUID, like 0b9d…-…" }))
        }
        form.filters method="get" action="/ui/bookings" role="search" aria-label="Find bookings" {
            (templates::field("id", "Booking id", id, "the UUID from support, a job's args or the audit trail"))
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" selected[status.is_empty()] { "any" }
                    @for st in jobs::booking::BookingStatus::ALL {
                        option value=(st.as_str()) selected[status == st.as_str()] { (st.as_str()) " — " (meaning(st)) }
                    }
                }
            }
            div.buttons { button.primary type="submit" { "Show" } a href="/ui/bookings" { "Clear" } }
        }
        @if rows.is_empty() {
            p.muted #no-bookings { "No bookings match." }
        } @else {
            (templates::sortable("bookings", "Bookings, newest first", &[("Booking", false), ("Status", false), ("Route", false), ("Departs", false), ("Amount", true), ("Failure", false), ("Started", false), ("Campaign", false)], html! {
                @for b in &rows {
                    tr {
                        td { a href=(format!("/ui/bookings/{}", b.id)) { code { (b.id) } } }
                        td { (templates::badge(booking_tone(&b.status), "", &b.status)) }
                        td { @match (&b.origin, &b.destination) { (Some(o), Some(d)) => { (o) " → " (d) }, _ => { span.muted { "erased" } } } }
                        td { @match (b.departs_from, b.departs_until) { (Some(f), Some(u)) => { (f) " … " (u) }, _ => { span.muted { "—" } } } }
                        td.num { (b.total_amount) " " (b.currency) }
                        td { @if let Some(c) = &b.failure_code { code { (c) } } @else { span.muted { "—" } } }
                        td data-sort=(b.created_at.timestamp_millis()) { (templates::time(b.created_at)) }
                        td { @if let Some(c) = b.campaign_id { code.clip title=(c) { (c) } } @else { span.muted { "—" } } }
                    }
                }
            }))
            @if rows.len() as i64 == BOOKINGS_PAGE {
                @let last = rows.last().expect("a full page");
                p { a #older href=(templates::href_with("/ui/bookings", &[&status_query, &format!("before={}~{}", last.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B"), last.id)])) { "Older →" } }
            }
        }
    };
    Ok(templates::page("Bookings", Some(s), Nav::Bookings, body).into_response())
}

/// One line of the timeline.
struct Entry {
    at: DateTime<Utc>,
    what: &'static str,
    tone: &'static str,
    text: Markup,
}

/// The booking-attempt job whose run covers `at`: the job behind a saga step.
fn job_behind<'a>(jobs: &'a [JobSummary], kind: &str, at: DateTime<Utc>) -> Option<&'a JobSummary> {
    jobs.iter()
        .filter(|j| j.kind == kind && j.created_at <= at && j.finished_at.is_none_or(|f| f >= at))
        .max_by_key(|j| j.created_at)
        .or_else(|| {
            jobs.iter()
                .filter(|j| j.kind == kind)
                .max_by_key(|j| j.created_at)
        })
}

fn job_link(j: Option<&JobSummary>) -> Markup {
    match j {
        Some(j) => {
            html! { a href=(format!("/ui/jobs/{}", j.id)) { "job " (j.id) } " " (templates::state_badge(&j.state)) }
        }
        None => html! { span.muted { "—" } },
    }
}

/// `GET /ui/bookings/{id}`.
pub async fn show(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    use jobs::kinds::{
        booking_attempt::BookingAttempt, campaign_search::CampaignSearch,
        refund_compensation::RefundCompensation,
    };
    respond(
        async {
            let id = uuid::Uuid::parse_str(&id)
                .map_err(|_| PageError::NotFound(format!("{id:?} is not a booking id")))
                .or_page(&s)?;
            let r = st.ops(&s.user).booking(id).await.or_page(&s)?;
            let b = &r.booking;
            let searches: Vec<JobSummary> = r.jobs.iter().filter(|j| j.kind == CampaignSearch::KIND).cloned().collect();
            let refund_jobs: Vec<JobSummary> = r.jobs.iter().filter(|j| j.kind == RefundCompensation::KIND).cloned().collect();
            let mut timeline: Vec<Entry> = Vec::new();
            for st in &b.steps {
                let j = job_behind(&r.jobs, BookingAttempt::KIND, st.at);
                timeline.push(Entry { at: st.at, what: "saga step", tone: "step", text: html! { strong { (st.step.replace('_', " ")) } " · " (job_link(j)) } });
            }
            for j in &r.jobs {
                timeline.push(Entry { at: j.created_at, what: "job", tone: "job", text: html! {
                    a href=(format!("/ui/jobs/{}", j.id)) { (j.kind) " " (j.id) } " enqueued · " (templates::state_badge(&j.state))
                    @if let Some(e) = &j.last_error { " · " span.error { (e) } }
                }});
            }
            for f in &b.refunds {
                timeline.push(Entry { at: f.created_at, what: "refund", tone: "refund", text: html! {
                    "refund of " (f.amount) " " (f.currency) " (" (f.reason) "), " (f.status)
                    @if let Some(re) = &f.stripe_refund_id { " · " code { (re) } }
                }});
            }
            for c in &b.airline_changes {
                timeline.push(Entry { at: c.detected_at, what: "change", tone: "change", text: html! {
                    "the airline changed the schedule · " code { (c.id) } " · " (c.status)
                    @if let Some(by) = &c.decided_by { " by " (by) }
                }});
            }
            for e in &b.emails {
                if let Some(at) = e.sent_at {
                    timeline.push(Entry { at, what: if e.channel == "sms" { "text" } else { "email" }, tone: "email", text: html! { (e.kind) " sent · " code { (e.dedupe_key) } } });
                }
            }
            for a in &b.audit {
                timeline.push(Entry { at: a.created_at, what: "audit", tone: "audit", text: html! { code { (a.action) } " by " (a.actor) } });
            }
            timeline.sort_by_key(|e| e.at);
            let refundable = matches!(b.status.as_str(), "ticketed" | "cancelled");
            let refund_owed = b.refund_owed();
            let row = |k: &str, v: Markup| html! { dt { (k) } dd { (v) } };
            let opt = |v: &Option<String>| match v { Some(v) => html! { code { (v) } }, None => html! { span.muted { "—" } } };
            let body = html! {
                div.page-head {
                    h1 { "Booking " code { (b.id) } }
                    p { (booking_badge(&b.status)) " " strong { (b.total_amount) " " (b.currency) } }
                }
                dl.facts {
                    (row("Route", match (&b.origin, &b.destination) { (Some(o), Some(d)) => html! { (o) " → " (d) }, _ => html! { span.muted { "erased with the campaign" } } }))
                    (row("Departs", match (b.departs_from, b.departs_until) { (Some(f), Some(u)) => html! { "between " (f) " and " (u) }, _ => html! { span.muted { "—" } } }))
                    (row("Campaign", match b.campaign_id {
                        Some(c) => html! { code #campaign { (c) } " · " a #campaign-jobs href=(format!("/ui/jobs?{}", templates::query_string([("args", format!("{{\"campaign_id\":\"{c}\"}}").as_str())]))) { "its searches and attempts" } },
                        None => html! { "detached (the user was erased)" } }))
                    (row("Offer", html! { code { (b.offer_id) } }))
                    (row("Order", opt(&b.order_id)))
                    (row("PaymentIntent", html! { (opt(&b.payment_intent_id)) @if let Some(st) = &b.payment_intent_status { " (" (st) ")" } }))
                    (row("Failure", opt(&b.failure_code)))
                    (row("PNR", html! { @if b.pnr_recorded { "recorded (not shown)" } @else { span.muted { "none" } } }))
                }
                section {
                    h2 { "Timeline" }
                    ol.timeline #timeline {
                        @for e in &timeline {
                            li class=(format!("tl tl-{}", e.tone)) {
                                span.tl-when { span.abs { (e.at.format("%H:%M:%S")) } (templates::time(e.at)) }
                                span class=(format!("badge tone-{}", e.tone)) { (e.what) }
                                span.tl-what { (e.text) }
                            }
                        }
                    }
                }
                section {
                    h2 { "Saga steps" }
                    (templates::sortable("steps", "The saga's steps and the job behind each", &[("Step", false), ("At", false), ("Job", false)], html! {
                        @for st in &b.steps {
                            tr {
                                td { (st.step.replace('_', " ")) }
                                td data-sort=(st.at.timestamp_millis()) { (templates::time(st.at)) }
                                td { (job_link(job_behind(&r.jobs, BookingAttempt::KIND, st.at))) }
                            }
                        }
                    }))
                }
                @if !b.airline_changes.is_empty() {
                    section #airline-changes {
                        h2 { "Airline changes" }
                        @for c in &b.airline_changes {
                            (change_card(c))
                            @if s.can_act() && c.is_open() && chrono::Utc::now() < c.respond_by {
                                form.inline method="post" action="/ui/actions/airline-change" {
                                    (templates::csrf_field(&s))
                                    input type="hidden" name="booking" value=(b.id);
                                    div.buttons {
                                        @if c.allows("accept") { button type="submit" name="decision" value="accept" { "Accept the new schedule…" } }
                                        button.danger type="submit" name="decision" value="cancel" { "Cancel and refund…" }
                                    }
                                }
                            }
                        }
                    }
                }
                section {
                    h2 { "Searches" }
                    (jobs_table("searches", "The campaign's searches", &searches))
                }
                section {
                    h2 { "Compensation" }
                    @if refund_owed {
                        (templates::notice("error", "A refund failed:", html! { "the money came back to our Stripe balance, not to the traveler (who was emailed). Pay it back another way, then record the payout below (or " code { "fleet booking paid-out" } "): " code { "docs/runbooks/refund-failed.md" } "." }))
                    }
                    @if b.refunds.is_empty() && refund_jobs.is_empty() {
                        p.muted { "No refund was requested." }
                    } @else {
                        (templates::sortable("refunds", "Refunds of the booking", &[("Stripe refund", false), ("Amount", false), ("Reason", false), ("Status", false), ("Requested", false)], html! {
                            @for f in &b.refunds {
                                tr {
                                    td { (opt(&f.stripe_refund_id)) }
                                    td { (f.amount) " " (f.currency) }
                                    td { (f.reason) }
                                    td { @if f.status == "failed" { (templates::badge("dead", "✕", "failed")) @if let Some(why) = &f.failure_reason { " " (why) } " " (templates::time(f.updated_at)) } @else { (f.status) } }
                                    td data-sort=(f.created_at.timestamp_millis()) { (templates::time(f.created_at)) }
                                }
                            }
                        }))
                        (jobs_table("refund-jobs", "The refund jobs", &refund_jobs))
                    }
                }
                section {
                    h2 { "Messages" }
                    @if b.emails.is_empty() { p.muted { "No email." } } @else {
                        (templates::sortable("emails", "Emails and text messages the booking caused (no address or number is shown)", &[("Message", false), ("Channel", false), ("Dedupe key", false), ("Sent", false)], html! {
                            @for e in &b.emails {
                                tr {
                                    td { (e.kind) }
                                    td { (e.channel) }
                                    td { code { (e.dedupe_key) } }
                                    td data-sort=(e.sent_at.map(|t| t.timestamp_millis()).unwrap_or(0)) { @match (e.sent_at, &e.failure_code) { (Some(t), _) => (templates::time(t)), (None, Some(why)) => span.error { "refused (" (why) ")" }, (None, None) => span.muted { "not yet" } } }
                                }
                            }
                        }))
                    }
                }
                section {
                    h2 { "Audit entries" }
                    (templates::sortable("booking-audit", "Audit entries of the booking and its campaign", &[("At", false), ("Actor", false), ("Action", false), ("Details", false)], html! {
                        @for a in &b.audit {
                            tr {
                                td data-sort=(a.created_at.timestamp_millis()) { (templates::time(a.created_at)) }
                                td { (a.actor) }
                                td { code { (a.action) } }
                                td { code.clip title=(a.metadata.to_string()) { (a.metadata.to_string()) } }
                            }
                        }
                    }))
                }
                section {
                    h2 { "Every job behind it" }
                    (jobs_table("booking-jobs", "Searches, attempts, refunds and webhook follow-ups of this booking", &r.jobs))
                }
                @if s.can_act() && refund_owed {
                    section.act #paid-out {
                        h2 { "Record the payout of the refund that failed" }
                        p.muted { "Once finance has paid the traveler back another way. You see what it would record first." }
                        form method="post" action="/ui/actions/paid-out" {
                            (templates::csrf_field(&s))
                            input type="hidden" name="booking" value=(b.id);
                            div.field {
                                label for="f-how" { "How" }
                                select #f-how name="how" {
                                    @for m in jobs::kinds::refund_compensation::PAYOUT_METHODS { option value=(m) { (m) } }
                                }
                            }
                            (templates::field("reference", "Finance ticket", "", "its id, e.g. FIN-4711: no names or bank details"))
                            div.buttons { button type="submit" { "Record payout…" } }
                        }
                    }
                }
                @if s.can_act() && refundable {
                    section.act {
                        h2 { "Refund this booking" }
                        p.muted { "A ticketed booking is cancelled (its order too) and refunded; a cancelled one holding captured money is refunded. You see what it would do first." }
                        form method="post" action="/ui/actions/refund" {
                            (templates::csrf_field(&s))
                            input type="hidden" name="booking" value=(b.id);
                            (templates::field("reason", "Reason (a code)", "customer_request", "e.g. customer_request, airline_cancelled"))
                            div.buttons { button type="submit" { "Refund…" } }
                        }
                    }
                }
            };
            Ok(templates::page("Booking", Some(&s), Nav::Bookings, body).into_response())
        }
        .await,
    )
}

/// One airline change: its state, deadline, and each leg before and after (local times).
fn change_card(c: &jobs::airline_change::ChangeRow) -> Markup {
    let legs = |v: &Option<serde_json::Value>| -> Vec<serde_json::Value> {
        v.as_ref().and_then(|v| v.as_array()).cloned().unwrap_or_default()
    };
    let (before, after) = (legs(&c.removed), legs(&c.added));
    let f = |l: &serde_json::Value, k: &str| l.get(k).and_then(|v| v.as_str()).unwrap_or("—").replacen('T', " ", 1);
    html! {
        div.change id=(format!("change-{}", c.id)) {
            p {
                code { (c.id) } " · "
                @if c.is_open() {
                    @if chrono::Utc::now() < c.respond_by {
                        (templates::badge("retryable", "…", "open")) " decide before " strong { (c.respond_by.format("%Y-%m-%d %H:%M UTC")) } " (" (templates::time(c.respond_by)) "); then the new schedule is kept by default"
                    } @else {
                        (templates::badge("dead", "!", "overdue")) " the deadline passed " (templates::time(c.respond_by)) " and Duffel cannot accept it through the API: settle it with the airline"
                    }
                } @else {
                    (templates::badge("completed", "✓", &c.status)) " by " (c.decided_by.as_deref().unwrap_or("—"))
                    @if let Some(t) = c.action_taken_at { " " (templates::time(t)) }
                }
            }
            @if before.is_empty() && after.is_empty() {
                p.muted { "Legs erased with the traveler." }
            } @else {
                (templates::sortable(&format!("legs-{}", c.id), "Legs before and after the change (local times)", &[("Leg", false), ("Departs before", false), ("Departs now", false), ("Arrives before", false), ("Arrives now", false)], html! {
                    @for (i, new) in after.iter().enumerate() {
                        @let old = before.get(i);
                        tr {
                            td { (f(new, "origin")) " → " (f(new, "destination")) }
                            td { @if let Some(o) = old { (f(o, "departing_at")) } }
                            td { strong { (f(new, "departing_at")) } }
                            td { @if let Some(o) = old { (f(o, "arriving_at")) } }
                            td { strong { (f(new, "arriving_at")) } }
                        }
                    }
                }))
            }
        }
    }
}

fn booking_badge(status: &str) -> Markup {
    let (tone, symbol) = match status {
        "ticketed" => ("completed", "✓"),
        "refunded" => ("cancelled", "↩"),
        "failed" => ("dead", "✕"),
        "cancelled" => ("cancelled", "⊘"),
        "authorized" => ("running", "◐"),
        _ => ("available", "●"),
    };
    templates::badge(tone, symbol, status)
}
