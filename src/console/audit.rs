//! `/ui/audit`: who did what, newest first, as `fleet audit` lists it
//! ([`crate::ops::Ops::audit`]), filtered and paged by keyset (`before_id`).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Extension,
};
use axum_extra::extract::Query;
use maud::html;
use serde::Deserialize;

use super::{
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, Session, WithSession,
};
use crate::queue::parse_time;

/// The audit view's filter, as the form sends it.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    resource_id: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    before_id: Option<uuid::Uuid>,
}

impl AuditQuery {
    fn filter(&self, limit: i64) -> Result<jobs::audit::AuditFilter, PageError> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let time = |field: &str, v: &str| {
            text(v)
                .map(|v| parse_time(&v).map_err(|e| PageError::BadRequest(format!("{field}: {e}"))))
                .transpose()
        };
        Ok(jobs::audit::AuditFilter {
            actor: text(&self.actor),
            action_prefix: text(&self.action),
            resource_type: text(&self.resource_type),
            resource_id: text(&self.resource_id),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            before_id: self.before_id,
            limit,
        })
    }

    fn query(&self) -> String {
        templates::query_string([
            ("actor", self.actor.as_str()),
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
            ("since", &self.since),
            ("until", &self.until),
        ])
    }
}

/// Rows a page.
const PAGE: i64 = 50;

/// `GET /ui/audit`.
pub async fn list(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> Response {
    respond(
        async {
            let rows = st
                .ops(&s.user)
                .audit(&q.filter(PAGE).or_page(&s)?)
                .await
                .or_page(&s)?;
            let headers = [
                ("At", false),
                ("Actor", false),
                ("Action", false),
                ("Resource", false),
                ("Details", false),
            ];
            let body = html! {
                div.page-head { h1 { "Audit trail" } p.muted { "Who did what, newest first: operators (CLI and console) and the fleet itself. The same rows as " code { "fleet audit" } "." } }
                form.filters method="get" action="/ui/audit" role="search" aria-label="Filter the audit trail" {
                    (templates::field("actor", "Actor", &q.actor, "a user name, or fleet"))
                    (templates::field("action", "Action starts with", &q.action, "e.g. kind. or booking.refund"))
                    (templates::field("resource_type", "Resource type", &q.resource_type, "job, kind, booking, …"))
                    (templates::field("resource_id", "Resource id", &q.resource_id, ""))
                    (templates::field("since", "Since", &q.since, "e.g. 24h"))
                    (templates::field("until", "Before", &q.until, ""))
                    div.buttons { button.primary type="submit" { "Filter" } a href="/ui/audit" { "Clear" } }
                }
                @if rows.is_empty() {
                    p.muted #audit-none { "No audit rows match." }
                } @else {
                    (templates::sortable("audit", "Audit rows matching the filter", &headers, html! {
                        @for r in &rows {
                            tr {
                                td data-sort=(r.created_at.timestamp_millis()) { (templates::time(r.created_at)) }
                                td { (r.actor) }
                                td { code { (r.action) } }
                                td {
                                    (r.resource_type)
                                    @if let Some(id) = &r.resource_id {
                                        " "
                                        @match r.resource_type.as_str() {
                                            "booking" => a href=(format!("/ui/bookings/{id}")) { code { (id) } },
                                            "job" => a href=(format!("/ui/jobs/{id}")) { code { (id) } },
                                            _ => code { (id) },
                                        }
                                    }
                                }
                                td { details { summary { code.clip { (r.metadata.to_string()) } } (templates::json_block(&r.metadata)) } }
                            }
                        }
                    }))
                }
                nav.pager aria-label="Pages" {
                    @if q.before_id.is_some() { a href=(format!("/ui/audit?{}", q.query())) { "← Newest" } }
                    @if rows.len() as i64 == PAGE {
                        @if let Some(last) = rows.last() {
                            a href=(templates::href_with("/ui/audit", &[&q.query(), &format!("before_id={}", last.id)])) { "Older →" }
                        }
                    }
                }
            };
            Ok(templates::page("Audit", Some(&s), Nav::Audit, body).into_response())
        }
        .await,
    )
}
