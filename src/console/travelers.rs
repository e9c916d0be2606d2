//! `/ui/travelers`: travelers' data-rights requests — the open erasures and exports, oldest
//! first, each with its age against the law's 30-day deadline and what it waits on — and, for
//! operators, a form to erase or export one traveler by account id
//! (`/ui/actions/traveler-erase|traveler-export`, with the usual dry run first). Ids, codes and
//! counts only: no name, email or passport is ever shown.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Extension,
};
use chrono::Utc;
use maud::{html, Markup};

use super::{
    respond,
    templates::{self, Nav},
    ConsoleState, Session, WithSession,
};

/// Days an open request has left before the deadline where it is shown as urgent.
const URGENT_DAYS: i64 = 7;

/// `GET /ui/travelers`.
pub async fn page(State(st): State<ConsoleState>, Extension(s): Extension<Session>) -> Response {
    respond(
        async {
            let rows = st.ops(&s.user).data_requests_open(500).await.or_page(&s)?;
            let now = Utc::now();
            let overdue = rows.iter().filter(|r| r.due_at <= now).count();
            let body = html! {
                div.page-head {
                    h1 { "Travelers' requests" }
                    p.muted { "Open erasure and export requests (GDPR: answered within one month, counted as 30 days), oldest first, as " code { "fleet traveler requests" } " lists them. Each is worked by its job; a request waits while the traveler's money still moves." }
                }
                @if overdue > 0 {
                    (templates::notice("error", "Past the deadline:", html! {
                        (overdue) " request(s) are older than 30 days. Open the job to see why: " code { "docs/runbooks/data-requests.md" }
                    }))
                }
                @if rows.is_empty() {
                    p.muted #no-requests { "No open erasure or export request." }
                } @else {
                    (templates::sortable("requests", "Open requests, oldest first", &[("Request", false), ("Kind", false), ("Traveler", false), ("Asked", false), ("Days left", true), ("Waiting on", false), ("By", false), ("Job", false)], html! {
                        @for r in &rows {
                            @let left = (r.due_at - now).num_days();
                            tr id=(format!("request-{}", r.id)) {
                                td { code { (r.id) } }
                                td { (r.kind) }
                                td { code { (r.user_id) } }
                                td data-sort=(r.requested_at.timestamp_millis()) { (templates::time(r.requested_at)) }
                                td data-sort=(left) {
                                    @if r.due_at <= now { (templates::badge("dead", "!", "overdue")) }
                                    @else if left < URGENT_DAYS { (templates::badge("retryable", "…", &format!("{left} days"))) }
                                    @else { (left) }
                                }
                                td { @match &r.waiting_on { Some(w) => code { (w) }, None => span.muted { "—" } } }
                                td { (r.source) @if r.source == "operator" { " " span.muted { (r.requested_by) } } }
                                td { a href=(format!("/ui/jobs?kind={}&key={}", job_kind(&r.kind), super::overview::enc(&format!("data_request:{}:{}", r.kind, r.id)))) { "its job" } }
                            }
                        }
                    }))
                }
                @if s.can_act() {
                    section #request-form {
                        h2 { "Erase or export a traveler" }
                        p.muted { "By account id (users.id), as the product shows it. The next page shows what would happen; nothing changes until you confirm." }
                        (request_form(&s))
                    }
                }
            };
            Ok(templates::page("Travelers", Some(&s), Nav::Travelers, body).into_response())
        }
        .await,
    )
}

fn job_kind(kind: &str) -> &'static str {
    match kind {
        "erasure" => "account_erasure",
        _ => "data_export",
    }
}

fn request_form(s: &Session) -> Markup {
    html! {
        form method="post" action="/ui/actions/traveler-request" {
            (templates::csrf_field(s))
            label for="traveler-user" { "Account id" }
            " "
            input #traveler-user type="text" name="user" required size="38" pattern="[0-9a-fA-F-]{36}" autocomplete="off";
            " "
            select name="decision" aria-label="What to do" {
                option value="export" { "Export their data" }
                option value="erasure" { "Erase their account" }
            }
            " "
            button type="submit" { "Preview…" }
        }
    }
}
