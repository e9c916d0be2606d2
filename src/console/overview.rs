//! `/ui/`: the live overview. Per kind and queue: counts by state, due now and later, the
//! oldest ready job's age, completions per minute (a chart), paused and draining badges, dead
//! jobs in the last day; the jobs running now and who runs them; the workers registry. The
//! figures refresh in place every `console.refresh` (htmx polls `/ui/overview/live`).
//!
//! One snapshot serves every open tab for half a refresh: the figures come from the CLI's
//! queries (`fleet queue stats` reads the whole jobs table), so their cost must not grow with
//! the number of people watching.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Extension,
};
use chrono::{DateTime, DurationRound, Utc};
use maud::{html, Markup};

use super::{
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, Session, WithSession,
};
use crate::queue::{
    CompletionMinute, JobSummary, KindStats, PausedKind, WorkerRow,
};

/// Minutes the completion chart covers.
const CHART_MINUTES: i32 = 15;
/// Running jobs listed at most.
const RUNNING_SHOWN: i64 = 50;

/// What the overview shows, as read at `taken_at`.
pub struct Snapshot {
    taken_at: DateTime<Utc>,
    stats: Vec<KindStats>,
    completions: Vec<CompletionMinute>,
    workers: Vec<WorkerRow>,
    running: Vec<JobSummary>,
    paused: Vec<PausedKind>,
    /// When the figures come from a read replica: how far behind it is.
    replica: Option<crate::databases::ReplicaLag>,
    limits: crate::ops::LimitsReport,
}

/// The last snapshot and when it was read (one query set per half refresh, whoever asks).
pub struct Cache {
    last: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    ttl: std::time::Duration,
}

impl Cache {
    /// A cache whose snapshots live half of `refresh`.
    pub fn new(refresh: std::time::Duration) -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
            ttl: refresh / 2,
        }
    }
}

async fn snapshot(st: &ConsoleState, s: &Session) -> Result<Arc<Snapshot>, PageError> {
    // Holding the lock while reading makes concurrent refreshes wait for one read.
    let mut last = st.overview.last.lock().await;
    if let Some((at, snap)) = last.as_ref() {
        if at.elapsed() < st.overview.ttl {
            return Ok(snap.clone());
        }
    }
    let ops = st.ops(&s.user);
    let read = ops
        .overview(&st.registry, CHART_MINUTES, st.alive_within, RUNNING_SHOWN)
        .await?;
    let snap = Arc::new(Snapshot {
        taken_at: Utc::now(),
        stats: read.stats,
        limits: read.limits,
        completions: read.completions,
        workers: read.workers,
        running: read.running,
        paused: read.paused,
        replica: ops.replica_lag().await?,
    });
    *last = Some((Instant::now(), snap.clone()));
    Ok(snap)
}

/// `GET /ui/`.
pub async fn page(State(st): State<ConsoleState>, Extension(s): Extension<Session>) -> Response {
    respond(
        async {
            let snap = snapshot(&st, &s).await.or_page(&s)?;
            let body = html! {
                div.page-head {
                    h1 { "Overview" }
                    p.muted { "Queues, running jobs and workers, refreshed every "
                        (humantime::format_duration(st.settings.refresh)) "." }
                }
                (live_region(&st, &snap))
                @if s.can_act() { (kind_actions(&st, &s)) }
            };
            Ok(templates::page("Overview", Some(&s), Nav::Overview, body).into_response())
        }
        .await,
    )
}

/// `GET /ui/overview/live`: the figures alone, for the page's own refresh.
pub async fn live(State(st): State<ConsoleState>, Extension(s): Extension<Session>) -> Response {
    respond(
        async {
            let snap = snapshot(&st, &s).await.or_page(&s)?;
            Ok(live_region(&st, &snap).into_response())
        }
        .await,
    )
}

/// The part of the page that refreshes: it replaces itself with the next one.
fn live_region(st: &ConsoleState, snap: &Snapshot) -> Markup {
    let every = format!("every {}ms", st.settings.refresh.as_millis());
    html! {
        div #live hx-get="/ui/overview/live" hx-trigger=(every) hx-swap="outerHTML" {
            p.updated { "Figures as of " (templates::time(snap.taken_at)) }
            @if let Some(lag) = &snap.replica {
                p.updated #replica-lag {
                    "Read from a replica: " (lag.describe())
                    ". Actions go to the primary."
                }
            }
            (cards(snap))
            (kinds_table(snap))
            (limits_table(snap))
            (chart(snap))
            (running_table(snap))
            (workers_table(snap))
        }
    }
}

fn sum_state(snap: &Snapshot, state: &str) -> i64 {
    snap.stats
        .iter()
        .map(|k| k.states.get(state).copied().unwrap_or(0))
        .sum()
}

fn cards(snap: &Snapshot) -> Markup {
    let alive = snap.workers.iter().filter(|w| w.alive).count();
    let dead_day: i64 = snap.stats.iter().map(|k| k.dead_last_day).sum();
    let due: i64 = snap.stats.iter().map(|k| k.due_now).sum();
    // Ready means claimable by a worker now, as in the kinds table: jobs held by a fleet-wide
    // limit or an empty budget are counted apart.
    let held: i64 = snap.stats.iter().map(|k| k.waiting_on_limit).sum();
    let ready = sum_state(snap, "available") - held;
    let ready_label = if held > 0 {
        format!("ready now; {held} more held by a limit")
    } else {
        "ready now".to_owned()
    };
    let card = |id: &str, label: &str, value: String, tone: &str| {
        html! {
            div class=(format!("card tone-{tone}")) id=(format!("card-{id}")) {
                span.card-value { (value) }
                span.card-label { (label) }
            }
        }
    };
    html! {
        section.cards aria-label="Totals" {
            (card("ready", &ready_label, ready.to_string(), "available"))
            (card("running", "running", sum_state(snap, "running").to_string(), "running"))
            (card("due", "due (retries, scheduled)", due.to_string(), "retryable"))
            (card("dead", "dead in the last 24 h", dead_day.to_string(), if dead_day > 0 { "dead" } else { "neutral" }))
            (card("workers", "workers alive", format!("{alive} / {}", snap.workers.len()), if alive > 0 { "completed" } else { "dead" }))
        }
    }
}

/// Completions per minute of `kind` (all kinds when `None`), oldest first, zeros included.
fn per_minute(snap: &Snapshot, kind: Option<&str>) -> Vec<(DateTime<Utc>, i64)> {
    let now = snap
        .taken_at
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(snap.taken_at);
    (0..CHART_MINUTES)
        .rev()
        .map(|back| {
            let minute = now - chrono::Duration::minutes(back as i64);
            let n = snap
                .completions
                .iter()
                .filter(|c| c.minute == minute && kind.is_none_or(|k| c.kind == k))
                .map(|c| c.completed)
                .sum();
            (minute, n)
        })
        .collect()
}

fn kinds_table(snap: &Snapshot) -> Markup {
    let headers = [
        ("Kind", false),
        ("Queue", false),
        ("Status", false),
        ("Ready", true),
        ("Held by a limit", true),
        ("Due now", true),
        ("Later", true),
        ("Running", true),
        ("Oldest ready", true),
        ("Done 15 min", true),
        ("Completed", true),
        ("Cancelled", true),
        ("Dead (24 h)", true),
    ];
    let rows = html! {
        @for k in &snap.stats {
            @let n = |s: &str| k.states.get(s).copied().unwrap_or(0);
            @let series = per_minute(snap, Some(&k.kind));
            @let total: i64 = series.iter().map(|(_, n)| n).sum();
            @let jobs_of = |state: &str| format!("/ui/jobs?kind={}&state={state}", enc(&k.kind));
            tr {
                td { a href=(format!("/ui/jobs?kind={}", enc(&k.kind))) { (k.kind) } }
                td { (k.queue) }
                td data-sort=(k.paused.unwrap_or("active")) { (status_badge(k.paused)) }
                td.num { (n("available") - k.waiting_on_limit) }
                td.num title=(k.limited_by.clone().unwrap_or_default()) { (k.waiting_on_limit) }
                td.num { (k.due_now) }
                td.num { (k.later) }
                td.num { (n("running")) }
                td.num data-sort=(k.oldest_available_age_s.unwrap_or(-1.0)) {
                    @match k.oldest_available_age_s {
                        Some(a) => (templates::age(a)),
                        None => span.muted { "—" },
                    }
                }
                td.num data-sort=(total) title=(format!("{} in the last minute", k.completed_last_minute)) {
                    (sparkline(&series)) " " (total)
                }
                td.num { (n("completed")) }
                td.num { (n("cancelled")) }
                td.num data-sort=(n("dead")) {
                    @if n("dead") > 0 { a href=(jobs_of("dead")) { (n("dead")) } } @else { "0" }
                    @if k.dead_last_day > 0 {
                        " " (templates::badge("dead", "✕", &format!("{} in 24 h", k.dead_last_day)))
                    }
                }
            }
        }
    };
    html! {
        section {
            h2 { "Kinds and queues" }
            @if snap.stats.is_empty() {
                p.muted { "No jobs yet, and no kind is paused." }
            } @else {
                (templates::sortable("kinds", "Jobs per kind and queue, by state. Ready: claimable now, waiting for a worker; held by a limit: ready, but a fleet-wide limit or an empty rate budget holds them; due now: scheduled or retrying, claimable at the next promotion; later: waiting for its time.", &headers, rows))
            }
            @if !snap.paused.is_empty() {
                ul.paused-list {
                    @for p in &snap.paused {
                        li {
                            (status_badge(Some(if p.draining_through_id.is_some() { "draining" } else { "paused" })))
                            " " strong { (p.kind) } " by " (p.paused_by) " " (templates::time(p.paused_at))
                            @if !p.reason.is_empty() { ": " (p.reason) }
                        }
                    }
                }
            }
        }
    }
}

/// The limited kinds (fleet-wide and per-key limits, budgets) and the rate budgets' levels.
fn limits_table(snap: &Snapshot) -> Markup {
    let l = &snap.limits;
    let opt = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "—".into());
    html! {
        @if !l.kinds.is_empty() || !l.budgets.is_empty() {
            section #limits {
                h2 { "Limits and rate budgets" }
                @if !l.kinds.is_empty() {
                    table.limits {
                        thead { tr { th { "Kind" } th.num { "Running" } th.num { "Fleet limit" } th.num { "Per key" } th { "Budgets" } th.num { "Held" } th { "Held by" } } }
                        tbody {
                            @for k in &l.kinds {
                                tr {
                                    td { (k.kind) }
                                    td.num { (k.running) }
                                    td.num { (opt(k.global_concurrency)) }
                                    td.num { (opt(k.key_concurrency)) }
                                    td { (k.budgets.join(", ")) }
                                    td.num { (k.waiting_on_limit) }
                                    td { (k.reason.clone().unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
                @if !l.budgets.is_empty() {
                    table.budgets {
                        thead { tr { th { "Budget" } th.num { "Tokens" } th.num { "Burst" } th.num { "Rate / s" } th { "Blocked until" } th.num { "Provider 429s" } } }
                        tbody {
                            @for b in &l.budgets {
                                tr id=(format!("budget-{}", b.name)) {
                                    td { (b.name) }
                                    td.num { (format!("{:.1}", b.level)) }
                                    td.num { (b.burst) }
                                    td.num { (b.per_second) }
                                    td {
                                        @match b.blocked_until {
                                            Some(t) => { (templates::time(t)) @if let Some(r) = &b.blocked_reason { " — " (r) } },
                                            None => span.muted { "—" },
                                        }
                                    }
                                    td.num { (b.blocks) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn status_badge(paused: Option<&str>) -> Markup {
    match paused {
        Some("paused") => templates::badge("paused", "‖", "paused"),
        Some("draining") => templates::badge("draining", "↓", "draining"),
        _ => templates::badge("active", "▶", "active"),
    }
}

fn sparkline(series: &[(DateTime<Utc>, i64)]) -> Markup {
    let max = series.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let w = 4.0;
    let label = series
        .iter()
        .map(|(_, n)| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        svg.spark width=(series.len() as f64 * (w + 1.0)) height="16" role="img"
            aria-label=(format!("completions per minute, oldest first: {label}")) {
            @for (i, (_, n)) in series.iter().enumerate() {
                @let h = ((*n as f64) / max * 16.0).max(if *n > 0 { 1.0 } else { 0.0 });
                rect x=(i as f64 * (w + 1.0)) y=(16.0 - h) width=(w) height=(h) {}
            }
        }
    }
}

fn chart(snap: &Snapshot) -> Markup {
    let series = per_minute(snap, None);
    let max = series.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let scale = max.max(1) as f64;
    let (w, h, bar) = (720.0, 150.0, 720.0 / CHART_MINUTES as f64);
    let total: i64 = series.iter().map(|(_, n)| n).sum();
    let described = series
        .iter()
        .map(|(m, n)| format!("{}: {n}", m.format("%H:%M")))
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        section {
            h2 #chart-title { "Completions per minute, last " (CHART_MINUTES) " minutes" }
            p.muted #chart-total { (total) " completed in all; the busiest minute had " (max) "." }
            figure.chart {
                svg width=(w) height=(h + 24.0) viewBox=(format!("0 0 {w} {}", h + 24.0))
                    role="img" aria-labelledby="chart-title chart-desc" {
                    desc #chart-desc { (described) }
                    line.grid x1="0" y1="16" x2=(w) y2="16" {}
                    line.axis x1="0" y1=(h) x2=(w) y2=(h) {}
                    @if total == 0 {
                        text.empty x=(w / 2.0) y=(h / 2.0) text-anchor="middle" { "No job completed in these minutes" }
                    }
                    @for (i, (minute, n)) in series.iter().enumerate() {
                        @let bh = (*n as f64 / scale) * (h - 16.0);
                        g {
                            title { (minute.format("%H:%M UTC")) ": " (n) " completed" }
                            rect.hit x=(i as f64 * bar) y="0" width=(bar) height=(h) {}
                            rect.bar x=(i as f64 * bar + 4.0) y=(h - bh) width=(bar - 8.0) height=(bh) {}
                            @if *n > 0 {
                                text.bar-label x=(i as f64 * bar + bar / 2.0) y=(h - bh - 4.0) text-anchor="middle" { (n) }
                            }
                            @if i % 2 == 0 || i + 1 == series.len() {
                                text.tick x=(i as f64 * bar + bar / 2.0) y=(h + 17.0) text-anchor="middle" { (minute.format("%H:%M")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn running_table(snap: &Snapshot) -> Markup {
    let headers = [
        ("Job", true),
        ("Kind", false),
        ("Queue", false),
        ("Worker", false),
        ("Attempt", true),
        ("Running since", false),
    ];
    let rows = html! {
        @for j in &snap.running {
            tr {
                td.num data-sort=(j.id) { a href=(format!("/ui/jobs/{}", j.id)) { (j.id) } }
                td { (j.kind) }
                td { (j.queue) }
                td { code { (j.lease_owner.as_deref().unwrap_or("—")) } }
                td.num data-sort=(j.attempt) { (j.attempt) " of " (j.max_attempts) }
                td data-sort=(j.attempted_at.map(|t| t.timestamp_millis()).unwrap_or(0)) { (templates::time_opt(j.attempted_at)) }
            }
        }
    };
    html! {
        section {
            h2 { "Running now" }
            @if snap.running.is_empty() {
                p.muted #running-none { "No job is running." }
            } @else {
                (templates::sortable("running", &format!("Jobs running now (at most {RUNNING_SHOWN}) and the worker holding each one's lease."), &headers, rows))
            }
        }
    }
}

fn workers_table(snap: &Snapshot) -> Markup {
    let headers = [
        ("Worker", false),
        ("Status", false),
        ("Version", false),
        ("Queues", false),
        ("Kinds", true),
        ("Slots", true),
        ("Held", true),
        ("Completed", true),
        ("Started", false),
        ("Last heartbeat", false),
    ];
    let rows = html! {
        @for w in &snap.workers {
            tr {
                td { code { (w.id) } }
                td data-sort=(if w.alive { "alive" } else { "stale" }) {
                    @if w.alive { (templates::badge("completed", "●", "alive")) }
                    @else { (templates::badge("dead", "○", "stale")) }
                }
                td { (w.version) }
                td { @if w.queues.is_empty() { "all" } @else { (w.queues.join(", ")) } }
                td.num data-sort=(w.kinds.len()) title=(w.kinds.join(", ")) { (w.kinds.len()) }
                td.num { (w.concurrency) }
                td.num { (w.held) }
                td.num { (w.completed) }
                td data-sort=(w.started_at.timestamp_millis()) { (templates::time(w.started_at)) }
                td data-sort=(w.last_seen_at.timestamp_millis()) { (templates::time(w.last_seen_at)) }
            }
        }
    };
    html! {
        section {
            h2 { "Workers" }
            @if snap.workers.is_empty() {
                p.muted { "No worker is registered: none is running (start one with " code { "fleet worker" } ")." }
            } @else {
                (templates::sortable("workers", "Registered workers; stale: no heartbeat for a lease (forgotten after worker.forget_after).", &headers, rows))
            }
        }
    }
}

/// Pause, resume or drain a kind (outside the refreshing part, so focus and typing survive).
fn kind_actions(st: &ConsoleState, s: &Session) -> Markup {
    let kinds = st.registry.kind_names();
    html! {
        section.act {
            h2 { "Act on a kind" }
            p.muted { "Each action first shows what it would change; nothing happens until you confirm." }
            form method="post" action="/ui/actions/pause" {
                (templates::csrf_field(s))
                div.field {
                    label for="act-kind" { "Kind" }
                    select #act-kind name="kind" {
                        @for k in &kinds { option value=(k) { (k) } }
                    }
                }
                div.buttons {
                    button type="submit" formaction="/ui/actions/pause" { "Pause…" }
                    button type="submit" formaction="/ui/actions/resume" { "Resume…" }
                    button type="submit" formaction="/ui/actions/drain" { "Drain…" }
                }
            }
        }
    }
}

/// `s` for a query string.
pub(super) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
