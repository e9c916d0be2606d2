//! `/ui/activity`: throughput and failures over hours and days — all kinds together, then each
//! kind — from the job history (completions, jobs gone dead, failed attempts), per hour over the
//! last 24 hours or 7 days, or per day over the last 30.

use std::collections::BTreeMap;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Extension,
};
use axum_extra::extract::Query;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    respond,
    templates::{self, Nav},
    ConsoleState, PageError, Session, WithSession,
};
use crate::queue::{ActivityBucket, Bucket};

/// The ranges offered: (query value, label, bucket, buckets).
const RANGES: [(&str, &str, Bucket, i32); 3] = [
    ("24h", "last 24 hours, per hour", Bucket::Hour, 24),
    ("7d", "last 7 days, per hour", Bucket::Hour, 168),
    ("30d", "last 30 days, per day", Bucket::Day, 30),
];

/// `GET /ui/activity` query.
#[derive(Debug, Deserialize)]
pub struct ActivityQuery {
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// One bucket's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    completed: i64,
    failed: i64,
}

/// `GET /ui/activity`.
pub async fn page(
    State(st): State<ConsoleState>,
    Extension(s): Extension<Session>,
    Query(q): Query<ActivityQuery>,
) -> Response {
    respond(
        async {
            let range = q.range.as_deref().unwrap_or("24h");
            let Some(&(key, label, bucket, n)) = RANGES.iter().find(|r| r.0 == range) else {
                return Err(PageError::BadRequest(format!(
                    "range: {range:?} is not one of 24h, 7d, 30d"
                )))
                .or_page(&s);
            };
            let only = q.kind.as_deref().map(str::trim).filter(|k| !k.is_empty());
            let rows = st.ops(&s.user).activity(bucket, n).await.or_page(&s)?;
            let starts = bucket_starts(bucket, n, Utc::now());
            let mut per_kind: BTreeMap<&str, Vec<&ActivityBucket>> = BTreeMap::new();
            for r in &rows {
                per_kind.entry(r.kind.as_str()).or_default().push(r);
            }
            let all = series(&starts, rows.iter());
            let body = html! {
                div.page-head {
                    h1 { "Activity" }
                    p.muted { "Jobs completed, and failures (attempts that failed, jobs gone dead), " (label) ", from the job history (finished jobs are kept for the retention period)." }
                }
                nav.pager aria-label="Range" {
                    @for (k, l, _, _) in RANGES {
                        a href=(templates::href_with("/ui/activity", &[&format!("range={k}"), &only.map(|o| format!("kind={}", super::overview::enc(o))).unwrap_or_default()])) aria-current=[(k == key).then_some("page")] { (l) }
                    }
                }
                @if only.is_none() {
                    (chart("all", "All kinds", bucket, &all))
                }
                @for (kind, list) in &per_kind {
                    @if only.is_none_or(|o| o == *kind) {
                        (chart(&format!("kind-{kind}"), kind, bucket, &series(&starts, list.iter().copied())))
                        p { a href=(templates::href_with("/ui/activity", &[&format!("range={key}"), &format!("kind={}", super::overview::enc(kind))])) { "Only " (kind) } " · " a href=(format!("/ui/jobs?kind={}", super::overview::enc(kind))) { (kind) " jobs" } }
                    }
                }
                @if per_kind.is_empty() { p.muted #no-activity { "No job finished or failed in this range." } }
            };
            Ok(templates::page("Activity", Some(&s), Nav::Activity, body).into_response())
        }
        .await,
    )
}

/// The start of each of the last `n` buckets up to `now`, oldest first.
fn bucket_starts(bucket: Bucket, n: i32, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    use chrono::{DurationRound, TimeDelta};
    let step = bucket.length();
    let last = now
        .duration_trunc(TimeDelta::from_std(step.to_std().expect("positive")).expect("fits"))
        .unwrap_or(now);
    (0..n).rev().map(|i| last - step * i).collect()
}

/// The figures of every bucket in `starts` (zero where nothing happened).
fn series<'a>(
    starts: &[DateTime<Utc>],
    rows: impl Iterator<Item = &'a ActivityBucket>,
) -> Vec<(DateTime<Utc>, Figures)> {
    let mut by: BTreeMap<DateTime<Utc>, Figures> = BTreeMap::new();
    for r in rows {
        let f = by.entry(r.at).or_default();
        f.completed += r.completed;
        f.failed += r.dead + r.failed_attempts;
    }
    starts
        .iter()
        .map(|t| (*t, by.get(t).copied().unwrap_or_default()))
        .collect()
}

/// Two bar rows sharing a time axis: completions above (their own scale), failures below
/// (theirs), so a handful of failures stays visible beside thousands of completions.
fn chart(id: &str, title: &str, bucket: Bucket, data: &[(DateTime<Utc>, Figures)]) -> Markup {
    let (w, top, low, gap) = (960.0, 100.0, 44.0, 16.0);
    let bar = w / data.len().max(1) as f64;
    let done_max = data.iter().map(|(_, f)| f.completed).max().unwrap_or(0);
    let fail_max = data.iter().map(|(_, f)| f.failed).max().unwrap_or(0);
    let done_total: i64 = data.iter().map(|(_, f)| f.completed).sum();
    let fail_total: i64 = data.iter().map(|(_, f)| f.failed).sum();
    let fmt = match bucket {
        Bucket::Hour => "%d %b %H:00",
        Bucket::Day => "%d %b",
    };
    let tick_every = (data.len() / 8).max(1);
    let y_fail = top + gap;
    let h = top + gap + low + 20.0;
    let title_id = format!("{id}-title");
    let desc_id = format!("{id}-desc");
    html! {
        section.activity id=(id) {
            h2 id=(title_id) { (title) }
            p.muted { strong { (done_total) } " completed · " strong.error-figure { (fail_total) } " failures (failed attempts and dead jobs)" }
            figure.chart {
                svg width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-labelledby=(format!("{title_id} {desc_id}")) {
                    desc id=(desc_id) { (format!("{done_total} completed, {fail_total} failures; busiest bucket {done_max} completed, worst {fail_max} failures")) }
                    text.tick x="0" y="10" { "completed (max " (done_max) ")" }
                    text.tick x="0" y=(y_fail + 10.0) { "failures (max " (fail_max) ")" }
                    line.axis x1="0" y1=(top) x2=(w) y2=(top) {}
                    line.axis x1="0" y1=(y_fail + low) x2=(w) y2=(y_fail + low) {}
                    @for (i, (at, f)) in data.iter().enumerate() {
                        @let x = i as f64 * bar;
                        @let dh = f.completed as f64 / done_max.max(1) as f64 * (top - 16.0);
                        @let fh = f.failed as f64 / fail_max.max(1) as f64 * (low - 4.0);
                        g {
                            title { (at.format(fmt)) " UTC: " (f.completed) " completed, " (f.failed) " failures" }
                            rect.hit x=(x) y="0" width=(bar) height=(y_fail + low) {}
                            rect.bar x=(x + bar * 0.15) y=(top - dh) width=(bar * 0.7) height=(dh) {}
                            rect.fail-bar x=(x + bar * 0.15) y=(y_fail + low - fh) width=(bar * 0.7) height=(fh) {}
                            @if i % tick_every == 0 {
                                text.tick x=(x) y=(h - 4.0) { (at.format(fmt)) }
                            }
                        }
                    }
                }
            }
        }
    }
}
