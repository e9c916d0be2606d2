//! `/ui/money`: where travelers' money is, today and over the last 7 days — bookings paid for,
//! bookings that failed and why, card holds still open, refunds by status and what went back,
//! refunds owed (failed, no payout recorded), disputes — and the providers' health: their rate
//! budgets (blocked by a 429?) and the failed attempts of the kinds that call them in the last
//! 24 hours. Read only; amounts per currency; no ids of people.

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
use crate::queue::Bucket;
use jobs::report::MoneyWindow;

/// `GET /ui/money`.
pub async fn page(State(st): State<ConsoleState>, Extension(s): Extension<Session>) -> Response {
    respond(
        async {
            let ops = st.ops(&s.user);
            let m = ops.money().await.or_page(&s)?;
            let limits = ops.limits(&st.registry).await.or_page(&s)?;
            let activity = ops.activity(Bucket::Hour, 24).await.or_page(&s)?;
            // The kinds that call a provider: those spending a rate budget.
            let provider_kinds: Vec<(String, Vec<String>)> = st
                .registry
                .kind_names()
                .into_iter()
                .filter_map(|k| {
                    let b = st.registry.get(&k)?.settings.budgets.clone();
                    (!b.is_empty()).then_some((k, b))
                })
                .collect();
            let failures = |kind: &str| -> (i64, i64, i64) {
                activity
                    .iter()
                    .filter(|a| a.kind == kind)
                    .fold((0, 0, 0), |(c, f, d), a| {
                        (c + a.completed, f + a.failed_attempts, d + a.dead)
                    })
            };
            let owed = m.refunds_now.owed;
            let body = html! {
                div.page-head {
                    h1 { "Money" }
                    p.muted { "Today (since 00:00 UTC) and the last 7 days, from the bookings, refunds and audit trail. Amounts per currency." }
                }
                div.cards {
                    (card("booked-today", "booked today", count(&m.today.booked), "completed"))
                    (card("booked-week", "booked, 7 days", count(&m.week.booked), "completed"))
                    @let failed_week: i64 = m.week.failed_by_reason.iter().map(|r| r.1).sum();
                    (card("failed-week", "bookings failed, 7 days", failed_week.to_string(), if failed_week > 0 { "dead" } else { "completed" }))
                    (card("owed", "refunds owed now", owed.to_string(), if owed > 0 { "dead" } else { "completed" }))
                    (card("disputes-week", "disputes, 7 days", m.week.disputes.to_string(), if m.week.disputes > 0 { "dead" } else { "completed" }))
                }
                @if owed > 0 {
                    (templates::notice("error", "Refunds owed:", html! {
                        (owed) " booking(s) have a refund that failed and no payout recorded: the traveler is waiting for their money. "
                        a href="/ui/audit?action=refund.failed" { "Which ones" } " · " code { "docs/runbooks/refund-failed.md" }
                    }))
                }
                div.money-windows {
                    (window("today", "Today", &m.today))
                    (window("week", "Last 7 days", &m.week))
                }
                section #refunds-now {
                    h2 { "Refunds now" }
                    p {
                        @for (status, n) in &m.refunds_now.by_status { (status) " " strong { (n) } " · " }
                        "oldest pending: "
                        @match m.refunds_now.oldest_pending_s { Some(sec) => strong { (humantime::format_duration(std::time::Duration::from_secs(sec as u64))) }, None => span.muted { "none pending" } }
                    }
                }
                section #providers {
                    h2 { "Providers" }
                    p.muted { "Rate budgets (a provider's 429 empties one for its reset time) and, per kind that calls a provider, its attempts over the last 24 hours." }
                    (templates::sortable("budgets", "Rate budgets now", &[("Budget", false), ("Tokens", true), ("Blocked until", false), ("Provider 429s", true)], html! {
                        @for b in &limits.budgets {
                            tr id=(format!("budget-{}", b.name)) {
                                td { (b.name) }
                                td.num { (format!("{:.1}", b.level)) " / " (b.burst) }
                                td { @match b.blocked_until { Some(t) => { (templates::badge("dead", "✕", "blocked")) " until " (templates::time(t)) }, None => (templates::badge("completed", "●", "open")) } }
                                td.num { (b.blocks) }
                            }
                        }
                    }))
                    (templates::sortable("provider-kinds", "Kinds that call a provider, last 24 hours", &[("Kind", false), ("Budgets", false), ("Completed", true), ("Failed attempts", true), ("Dead", true)], html! {
                        @for (k, b) in &provider_kinds {
                            @let (c, f, d) = failures(k);
                            tr {
                                td { a href=(format!("/ui/activity?kind={}", super::overview::enc(k))) { (k) } }
                                td { (b.join(", ")) }
                                td.num { (c) }
                                td.num { @if f > 0 { span.error-figure { (f) } } @else { (f) } }
                                td.num { @if d > 0 { span.error-figure { (d) } } @else { (d) } }
                            }
                        }
                    }))
                }
            };
            Ok(templates::page("Money", Some(&s), Nav::Money, body).into_response())
        }
        .await,
    )
}

fn count(per_currency: &[(String, i64, String)]) -> String {
    per_currency.iter().map(|r| r.1).sum::<i64>().to_string()
}

fn card(id: &str, label: &str, value: String, tone: &str) -> Markup {
    html! {
        div class=(format!("card tone-{tone}")) id=(id) {
            span.card-value { (value) }
            span.card-label { (label) }
        }
    }
}

/// One window's figures.
fn window(id: &str, title: &str, w: &MoneyWindow) -> Markup {
    html! {
        section.money id=(format!("money-{id}")) {
            h2 { (title) }
            dl.facts {
                dt { "Booked" }
                dd { @if w.booked.is_empty() { span.muted { "none" } } @for (cur, n, total) in &w.booked { (n) " booking(s), " strong { (total) " " (cur) } br; } }
                dt { "Card holds open" }
                dd { (w.holds_open) }
                dt { "Failed" }
                dd { @if w.failed_by_reason.is_empty() { span.muted { "none" } } @for (code, n) in &w.failed_by_reason { code { (code) } " " (n) br; } }
                dt { "Refunds" }
                dd { @if w.refunds_by_status.is_empty() { span.muted { "none" } } @for (status, n) in &w.refunds_by_status { (status) " " (n) br; } }
                dt { "Refunded" }
                dd { @if w.refunded.is_empty() { span.muted { "none" } } @for (cur, total) in &w.refunded { strong { (total) " " (cur) } br; } }
                dt { "Disputes" }
                dd { (w.disputes) }
            }
        }
    }
}
