//! `/ui/jobs`: the jobs matching the CLI's filter (kind, state, queue, time range, key, id,
//! args), newest first, paged by keyset (`before_id`), never by offset; and `/ui/jobs/{id}`:
//! one job with its args, every failed attempt, its lease, its trace and its family.

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    Extension,
};
use axum_extra::extract::Query;
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    overview::enc,
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, Session, WithSession,
};
use crate::queue::{parse_json_object, parse_search, parse_time, JobFilter, JobState, JobSummary};

/// The filter as the form sends it (and the action forms carry it on): text, as typed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterFields {
    /// Job ids, separated by commas or spaces.
    #[serde(default)]
    pub id: String,
    /// One kind.
    #[serde(default)]
    pub kind: String,
    /// Any of these states (the field repeats).
    #[serde(default)]
    pub state: Vec<String>,
    /// One queue.
    #[serde(default)]
    pub queue: String,
    /// Created at or after: RFC 3339 or a duration ago ("2h").
    #[serde(default)]
    pub since: String,
    /// Created before.
    #[serde(default)]
    pub until: String,
    /// Idempotency key.
    #[serde(default)]
    pub key: String,
    /// Args containing this JSON object.
    #[serde(default)]
    pub args: String,
    /// Text anywhere in the args or the errors.
    #[serde(default)]
    pub q: String,
}

impl FilterFields {
    /// The queue filter, or what is wrong with a field (named as on the form).
    pub fn to_filter(&self) -> Result<JobFilter, PageError> {
        let bad = |field: &str, why: String| PageError::BadRequest(format!("{field}: {why}"));
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let ids: Vec<i64> = self
            .id
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| bad("id", format!("{s:?} is not a job id")))
            })
            .collect::<Result<_, _>>()?;
        let states: Vec<JobState> = self
            .state
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<JobState>().map_err(|e| bad("state", e)))
            .collect::<Result<_, _>>()?;
        let time = |field: &str, v: &str| {
            text(v)
                .map(|v| parse_time(&v).map_err(|e| bad(field, e)))
                .transpose()
        };
        Ok(JobFilter {
            ids: (!ids.is_empty()).then_some(ids),
            kind: text(&self.kind),
            states: (!states.is_empty()).then_some(states),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            idempotency_key: text(&self.key),
            queue: text(&self.queue),
            args_contain: text(&self.args)
                .map(|a| parse_json_object(&a).map_err(|e| bad("args", e)))
                .transpose()?,
            search: text(&self.q)
                .map(|q| parse_search(&q).map_err(|e| bad("Text in args or errors", e)))
                .transpose()?,
        })
    }

    /// The filter as a query string (for page links).
    pub fn query(&self) -> String {
        let pairs = self.pairs();
        templates::query_string(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// Every non-empty field as (name, value), states repeated.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (k, v) in [
            ("q", &self.q),
            ("id", &self.id),
            ("kind", &self.kind),
            ("queue", &self.queue),
            ("since", &self.since),
            ("until", &self.until),
            ("key", &self.key),
            ("args", &self.args),
        ] {
            if !v.trim().is_empty() {
                out.push((k, v.clone()));
            }
        }
        for s in self.state.iter().filter(|s| !s.is_empty()) {
            out.push(("state", s.clone()));
        }
        out
    }

    /// The filter as hidden fields of a form.
    pub fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in self.pairs() { input type="hidden" name=(k) value=(v); }
        }
    }

    /// The filter in words, for previews.
    pub fn describe(&self) -> String {
        let p = self.pairs();
        if p.is_empty() {
            "every job".to_owned()
        } else {
            p.iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `GET /ui/jobs` query beside the filter: the page size and the keyset cursor.
#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    before_id: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /ui/jobs`.
pub async fn list(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Query(fields): Query<FilterFields>,
    Query(q): Query<Paging>,
) -> Response {
    respond(
        async {
            let limit = q.limit.unwrap_or(50).clamp(1, 500);
            let filter = fields.to_filter().or_page(&s)?;
            let rows = st
                .ops(&s.user)
                .list(&filter, limit, q.before_id)
                .await
                .or_page(&s)?;
            let here = templates::href_with(
                "/ui/jobs",
                &[
                    &fields.query(),
                    &format!("limit={limit}"),
                    &q.before_id.map(|b| format!("before_id={b}")).unwrap_or_default(),
                ],
            );
            let pick = s.can_act();
            let body = html! {
                div.page-head { h1 { "Jobs" } p.muted { "Newest first, " (limit) " a page. The same filter as " code { "fleet queue list" } "." } }
                (filter_form(&st, &fields, limit))
                (live_switch())
                // Refreshed in place (htmx, the whole page fetched and this region kept); the
                // script holds the refresh while jobs are ticked or the switch is off.
                div #live-jobs data-live="1" hx-get=(here) hx-select="#live-jobs" hx-target="this" hx-swap="outerHTML" hx-trigger=(format!("every {}s", LIVE_EVERY_SECS)) {
                    p.updated { "As of " (templates::time(chrono::Utc::now())) }
                    (jobs_table_with("jobs", "Jobs matching the filter", &rows, pick))
                    nav.pager aria-label="Pages" {
                        @if q.before_id.is_some() {
                            a href=(templates::href_with("/ui/jobs", &[&fields.query(), &format!("limit={limit}")])) { "← Newest" }
                        }
                        @if rows.len() as i64 == limit {
                            @if let Some(last) = rows.last() {
                                a #older href=(templates::href_with("/ui/jobs", &[&fields.query(), &format!("limit={limit}"), &format!("before_id={}", last.id)])) { "Older →" }
                            }
                        }
                    }
                }
                @if pick && !rows.is_empty() {
                    section.act #act-picked {
                        h2 { "Act on the jobs you tick" }
                        p.muted { "Tick jobs in the table, then choose. Each shows what it would change first; jobs in another state are left alone." }
                        form #picked method="post" action="/ui/actions/replay" {
                            (templates::csrf_field(&s))
                            div.buttons {
                                button #pick-all type="button" { "Tick all shown" }
                                button type="submit" formaction="/ui/actions/replay" { "Replay ticked…" }
                                button type="submit" formaction="/ui/actions/run-now" { "Run ticked now…" }
                                button type="submit" formaction="/ui/actions/cancel" { "Cancel ticked…" }
                                button type="submit" formaction="/ui/actions/delete" { "Delete ticked…" }
                            }
                        }
                    }
                }
                @if s.can_act() && !fields.pairs().is_empty() {
                    section.act {
                        h2 { "Act on every job matching this filter" }
                        p.muted { "Not just this page. Each shows what it would change first." }
                        form method="post" action="/ui/actions/replay" {
                            (templates::csrf_field(&s))
                            (fields.hidden())
                            div.buttons {
                                button type="submit" formaction="/ui/actions/replay" { "Replay matching…" }
                                button type="submit" formaction="/ui/actions/run-now" { "Run matching now…" }
                                button type="submit" formaction="/ui/actions/cancel" { "Cancel matching…" }
                                button type="submit" formaction="/ui/actions/delete" { "Delete matching…" }
                            }
                        }
                    }
                }
            };
            Ok(templates::page("Jobs", Some(&s), Nav::Jobs, body).into_response())
        }
        .await,
    )
}

fn filter_form(st: &ConsoleState, f: &FilterFields, limit: i64) -> Markup {
    let kinds = st.registry.kind_names();
    html! {
        form.filters method="get" action="/ui/jobs" role="search" aria-label="Filter jobs" {
            div.field {
                label for="f-kind" { "Kind" }
                input #f-kind type="text" name="kind" value=(f.kind) list="kinds" autocomplete="off";
                datalist #kinds { @for k in &kinds { option value=(k) {} } }
            }
            fieldset.states {
                legend { "State" }
                @for st in JobState::ALL {
                    label.check {
                        input type="checkbox" name="state" value=(st.as_str()) checked[f.state.iter().any(|s| s == st.as_str())];
                        " " (st.as_str())
                    }
                }
            }
            (templates::field("queue", "Queue", &f.queue, ""))
            (templates::field("since", "Created since", &f.since, "e.g. 2h or 2026-12-01T09:00:00Z"))
            (templates::field("until", "Created before", &f.until, ""))
            (templates::field("key", "Idempotency key", &f.key, ""))
            (templates::field("id", "Job ids", &f.id, "comma-separated"))
            (templates::field("args", "Args contain", &f.args, r#"JSON, e.g. {"booking_id": "…"}"#))
            (templates::field("q", "Text in args or errors", &f.q, "any case, e.g. card_declined"))
            div.field {
                label for="f-limit" { "Per page" }
                select #f-limit name="limit" {
                    @for n in [25, 50, 100, 200, 500] { option value=(n) selected[n == limit] { (n) } }
                }
            }
            div.buttons {
                button.primary type="submit" { "Filter" }
                a href="/ui/jobs" { "Clear" }
            }
        }
    }
}

/// How often the jobs list and a job's page refresh themselves.
const LIVE_EVERY_SECS: u32 = 5;

/// The switch that turns a page's live refresh on and off (console.js keeps it per browser).
pub fn live_switch() -> Markup {
    html! {
        p.live-switch {
            label.check {
                input #live-toggle type="checkbox" checked;
                " Refresh every " (LIVE_EVERY_SECS) " s"
            }
            span.muted #live-state role="status" { "" }
        }
    }
}

/// A sortable table of jobs.
pub fn jobs_table(id: &str, caption: &str, rows: &[JobSummary]) -> Markup {
    jobs_table_with(id, caption, rows, false)
}

/// A sortable table of jobs; with `pick`, a first column of check boxes that belong to the
/// `#picked` form (`pick=<id>`), for acting on the ticked jobs.
pub fn jobs_table_with(id: &str, caption: &str, rows: &[JobSummary], pick: bool) -> Markup {
    if rows.is_empty() {
        return html! { p.muted id=(format!("{id}-none")) { "No jobs match." } };
    }
    let mut headers = vec![
        ("Job", true),
        ("Kind", false),
        ("Queue", false),
        ("State", false),
        ("Attempt", true),
        ("Run at", false),
        ("Created", false),
        ("Key", false),
        ("Last error", false),
    ];
    if pick {
        headers.insert(0, ("Tick", false));
    }
    let body = html! {
        @for j in rows {
            tr {
                @if pick {
                    td.pick { input.pick type="checkbox" name="pick" value=(j.id) form="picked" aria-label=(format!("Tick job {}", j.id)); }
                }
                td.num data-sort=(j.id) { a href=(format!("/ui/jobs/{}", j.id)) { (j.id) } }
                td { (j.kind) }
                td { (j.queue) }
                td data-sort=(j.state) { (templates::state_badge(&j.state)) }
                td.num data-sort=(j.attempt) { (j.attempt) " / " (j.max_attempts) }
                td data-sort=(j.run_at.timestamp_millis()) { (templates::time(j.run_at)) }
                td data-sort=(j.created_at.timestamp_millis()) { (templates::time(j.created_at)) }
                td { @if let Some(k) = &j.idempotency_key { code.clip title=(k) { (k) } } @else { span.muted { "—" } } }
                td.error { @if let Some(e) = &j.last_error { @let e = templates::capped(e); span.clip title=(e) { (e) } } }
            }
        }
    };
    templates::sortable(id, caption, &headers, body)
}

/// `GET /ui/jobs/{id}`.
pub async fn show(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let id: i64 = id
                .parse()
                .map_err(|_| PageError::NotFound(format!("{id:?} is not a job id")))
                .or_page(&s)?;
            let ops = st.ops(&s.user);
            let j = ops.show(id).await.or_page(&s)?;
            let children = ops.children(id).await.or_page(&s)?;
            let trace = j.trace_id().map(str::to_owned);
            let booking = j
                .args
                .get("booking_id")
                .and_then(|b| b.as_str())
                .and_then(|b| uuid::Uuid::parse_str(b).ok());
            let row = |k: &str, v: Markup| html! { dt { (k) } dd { (v) } };
            let body = html! {
                (live_switch())
                div #live-job data-live="1" hx-get=(format!("/ui/jobs/{}", j.id)) hx-select="#live-job" hx-target="this" hx-swap="outerHTML" hx-trigger=(format!("every {}s", LIVE_EVERY_SECS)) {
                div.page-head {
                    h1 { "Job " (j.id) " " span.kind { (j.kind) } }
                    p { (templates::state_badge(j.state.as_str())) " " span.updated { "as of " (templates::time(chrono::Utc::now())) } }
                }
                dl.facts {
                    (row("Queue", html! { (j.queue) ", priority " (j.priority) }))
                    (row("Attempt", html! { (j.attempt) " of " (j.max_attempts) " (claim " (j.claim_seq) ")" }))
                    (row("Run at", templates::time(j.run_at)))
                    (row("Created", templates::time(j.created_at)))
                    (row("Claimed", templates::time_opt(j.attempted_at)))
                    (row("Finished", templates::time_opt(j.finished_at)))
                    (row("Lease", html! {
                        @match (&j.lease_owner, j.lease_expires_at) {
                            (Some(o), Some(until)) => { code #lease-owner { (o) } " until " (templates::time(until)) }
                            _ => span.muted { "none" },
                        }
                    }))
                    (row("Key", html! {
                        @match &j.idempotency_key {
                            Some(k) => { code { (k) } " (" (if j.key_held { "held" } else { "released" }) ")" }
                            None => span.muted { "none" },
                        }
                    }))
                    (row("Trace", html! {
                        @match (&trace, st.settings.tracing_url.is_empty()) {
                            (Some(t), false) => a #trace href=(st.settings.tracing_url.replace("{trace_id}", t)) rel="noreferrer" { code { (t) } },
                            (Some(t), true) => code #trace { (t) },
                            (None, _) => span.muted { "none recorded" },
                        }
                    }))
                    (row("Enqueued by", html! {
                        @match j.parent_id {
                            Some(p) => a #parent href=(format!("/ui/jobs/{p}")) { "job " (p) },
                            None => span.muted { "not by a job (an operator, a schedule, a webhook or the CLI)" },
                        }
                    }))
                    @if let Some(b) = booking {
                        (row("Booking", html! { a href=(format!("/ui/bookings/{b}")) { (b) } }))
                    }
                }
                section {
                    h2 { "Args" }
                    p.muted { "Ids only: job payloads carry no personal data." }
                    (templates::json_block(&j.args))
                }
                section {
                    h2 { "Failed attempts" }
                    @if j.errors.is_empty() {
                        p.muted { "No attempt failed." }
                    } @else {
                        (templates::sortable("attempts", "Every failed attempt, oldest first", &[("Attempt", true), ("At", false), ("Class", false), ("Message", false)], html! {
                            @for e in &j.errors {
                                tr {
                                    td.num { (e.attempt) }
                                    td data-sort=(e.at.map(|t| t.timestamp_millis()).unwrap_or(0)) { (templates::time_opt(e.at)) }
                                    td { (e.class.as_str()) }
                                    td.error { (templates::long_text(&e.message)) }
                                }
                            }
                        }))
                    }
                }
                section {
                    h2 { "Jobs it enqueued" }
                    (jobs_table("children", "Jobs this job's handler enqueued", &children))
                }
                }
                @if s.can_act() {
                    section.act {
                        h2 { "Act on this job" }
                        form method="post" action="/ui/actions/replay" {
                            (templates::csrf_field(&s))
                            input type="hidden" name="id" value=(j.id);
                            div.buttons {
                                @if matches!(j.state, JobState::Dead | JobState::Cancelled) {
                                    button type="submit" formaction="/ui/actions/replay" { "Replay…" }
                                }
                                @if matches!(j.state, JobState::Scheduled | JobState::Retryable) {
                                    button #run-now type="submit" formaction="/ui/actions/run-now" { (if j.state == JobState::Retryable { "Retry now…" } else { "Run now…" }) }
                                }
                                @if !j.state.is_final() {
                                    button type="submit" formaction="/ui/actions/cancel" { "Cancel…" }
                                }
                                @if j.state.is_final() {
                                    button #delete type="submit" formaction="/ui/actions/delete" { "Delete…" }
                                }
                            }
                        }
                    }
                }
                p { a href=(format!("/ui/jobs?kind={}", enc(&j.kind))) { "All " (j.kind) " jobs" } }
            };
            Ok(templates::page(&format!("Job {}", j.id), Some(&s), Nav::Jobs, body).into_response())
        }
        .await,
    )
}
