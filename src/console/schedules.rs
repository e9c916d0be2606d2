//! `/ui/schedules`: the cron schedules this `serve` was configured with (`[schedules.*]`), as
//! the scheduler runs them: pattern, kind and args, paused or not, each one's latest ticks and
//! what their jobs became, the next tick; operators pause and resume one
//! (`/ui/actions/schedule-pause|schedule-resume`, with the usual dry run first).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Extension,
};
use maud::{html, Markup};

use super::{
    respond,
    templates::{self, Nav},
    ConsoleState, Session, WithSession,
};
use crate::queue::CronTick;

/// `GET /ui/schedules`.
pub async fn list(State(st): State<ConsoleState>, Extension(s): Extension<Session>) -> Response {
    respond(
        async {
            let rows = st
                .ops(&s.user)
                .schedules(&st.schedules)
                .await
                .or_page(&s)?;
            let body = html! {
                div.page-head {
                    h1 { "Schedules" }
                    p.muted { "The cron schedules of this configuration (" code { "[schedules.*]" } "), as " code { "fleet schedules" } " shows them. Each tick enqueues one job, whichever scheduler fires it; a paused schedule's ticks are skipped, not replayed on resume." }
                }
                @if rows.is_empty() {
                    p.muted #no-schedules { "No schedule is enabled in this configuration." }
                } @else {
                    (templates::sortable("schedules", "Every schedule, its last tick and its next", &[("Schedule", false), ("Cron", false), ("Kind", false), ("State", false), ("Last tick", false), ("Its job", false), ("Next tick", false), ("Action", false)], html! {
                        @for r in &rows {
                            @let last = r.ticks.first();
                            tr id=(format!("schedule-{}", r.name)) {
                                td { strong { (r.name) } }
                                td { code { (r.cron) } }
                                td { a href=(format!("/ui/jobs?kind={}", super::overview::enc(&r.kind))) { (r.kind) } }
                                td {
                                    @match &r.paused {
                                        Some(p) => { (templates::badge("paused", "‖", "paused")) br; span.muted { "by " (p.paused_by) ", " (templates::time(p.paused_at)) } @if !p.reason.is_empty() { br; span.muted { (p.reason) } } }
                                        None => (templates::badge("active", "●", "active")),
                                    }
                                }
                                td { @match last { Some(t) => (templates::time(t.tick_at)), None => span.muted { "none yet" } } }
                                td { @if let Some(t) = last { (outcome(t)) } }
                                td { @match r.next_tick { Some(n) => { (templates::time(n)) @if r.paused.is_some() { br; span.muted { "skipped while paused" } } }, None => span.muted { "never" } } }
                                td {
                                    @if s.can_act() {
                                        form method="post" action=(if r.paused.is_some() { "/ui/actions/schedule-resume" } else { "/ui/actions/schedule-pause" }) {
                                            (templates::csrf_field(&s))
                                            input type="hidden" name="schedule" value=(r.name);
                                            button type="submit" { (if r.paused.is_some() { "Resume…" } else { "Pause…" }) }
                                        }
                                    }
                                }
                            }
                        }
                    }))
                    @for r in &rows {
                        section {
                            h2 { "Latest ticks of " (r.name) }
                            @if r.ticks.is_empty() {
                                p.muted { "No tick recorded yet." }
                            } @else {
                                (templates::sortable(&format!("ticks-{}", r.name), &format!("The latest {} ticks of {}, newest first", r.ticks.len(), r.name), &[("Tick", false), ("Claimed", false), ("Job", false)], html! {
                                    @for t in &r.ticks {
                                        tr {
                                            td data-sort=(t.tick_at.timestamp_millis()) { (templates::time(t.tick_at)) }
                                            td data-sort=(t.enqueued_at.timestamp_millis()) { (templates::time(t.enqueued_at)) }
                                            td { (outcome(t)) }
                                        }
                                    }
                                }))
                            }
                            p.muted { "Args: " code { (r.args.to_string()) } }
                        }
                    }
                }
            };
            Ok(templates::page("Schedules", Some(&s), Nav::Schedules, body).into_response())
        }
        .await,
    )
}

/// What a tick became: its job with that job's state, or why it enqueued nothing.
fn outcome(t: &CronTick) -> Markup {
    html! {
        @match (&t.skipped, t.job_id, &t.job_state) {
            (Some(why), _, _) => span.muted { "skipped (" (why) ")" },
            (None, Some(id), Some(state)) => { a href=(format!("/ui/jobs/{id}")) { "job " (id) } " " (templates::state_badge(state)) },
            (None, Some(id), None) => { "job " (id) " " span.muted { "(pruned)" } },
            (None, None, _) => span.muted { "—" },
        }
    }
}
