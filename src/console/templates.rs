//! The console's page frame and the pieces every page is made of: times (relative, with the
//! absolute UTC time on hover), state badges (a symbol and a word beside the colour, never
//! colour alone), sortable tables, filter fields, the CSRF field of every form, and the static
//! files (vendored htmx, the style sheet, the small script that sorts tables).
//!
//! Pages are server-rendered with maud: every value is escaped unless a template says
//! otherwise, and nothing here knows a query.

use axum::{
    extract::Path,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::session::Session;

/// The vendored htmx (npm package `htmx.org`, licence 0BSD; see docs/console.md).
pub const HTMX_VERSION: &str = "2.0.11";
const HTMX_JS: &str = include_str!("static/htmx-2.0.11.min.js");
const HTMX_LICENSE: &str = include_str!("static/htmx-LICENSE.txt");
const CONSOLE_CSS: &str = include_str!("static/console.css");
const CONSOLE_JS: &str = include_str!("static/console.js");
const FAVICON_SVG: &str = include_str!("static/favicon.svg");

/// The page a nav link points at, to mark the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/ui/`.
    Overview,
    /// `/ui/jobs`.
    Jobs,
    /// `/ui/bookings`.
    Bookings,
    /// `/ui/schedules`.
    Schedules,
    /// `/ui/activity`.
    Activity,
    /// `/ui/money`.
    Money,
    /// `/ui/travelers`.
    Travelers,
    /// `/ui/audit`.
    Audit,
    /// Pages outside the nav (login, action previews).
    None,
}

/// A whole page: head, skip link, nav with the signed-in user, `body` as the main content.
pub fn page(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            a href=(href) aria-current=[(nav == this).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx without eval or injected styles, so the page keeps a strict CSP.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                title { (title) " · Fleet console" }
                link rel="stylesheet" href="/ui/static/console.css";
                link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg";
                script src=(format!("/ui/static/htmx-{HTMX_VERSION}.min.js")) defer {}
                script src="/ui/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Parker Flight · fleet" }
                    // Labelled by console.js once it knows the theme in effect.
                    button.linkish #theme-toggle type="button" aria-pressed="false" { "Dark mode" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            (link("/ui/", "Overview", Nav::Overview))
                            (link("/ui/jobs", "Jobs", Nav::Jobs))
                            (link("/ui/bookings", "Bookings", Nav::Bookings))
                            (link("/ui/money", "Money", Nav::Money))
                            (link("/ui/travelers", "Travelers", Nav::Travelers))
                            (link("/ui/activity", "Activity", Nav::Activity))
                            (link("/ui/schedules", "Schedules", Nav::Schedules))
                            (link("/ui/audit", "Audit", Nav::Audit))
                        }
                        div.who {
                            span { (s.user) " " span.role { (s.role.as_str()) } }
                            form method="post" action="/ui/logout" {
                                (csrf_field(s))
                                button.linkish type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// The hidden field that carries the session's CSRF token in a state-changing form.
pub fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A time as "3 min ago", with the absolute UTC time on hover and for assistive technology.
pub fn time(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(absolute(t)) data-sort=(t.timestamp_millis()) {
            (relative(t, Utc::now()))
        }
    }
}

/// An optional time, or a dash.
pub fn time_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// `2026-12-02 09:15:03 UTC`.
pub fn absolute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "just now", "40 s ago", "3 min ago", "in 2 h", "5 d ago": the largest unit only.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let n = secs.unsigned_abs();
    if n < 5 {
        return "just now".to_owned();
    }
    let amount = match n {
        0..=59 => format!("{n} s"),
        60..=3_599 => format!("{} min", n / 60),
        3_600..=86_399 => format!("{} h", n / 3_600),
        _ => format!("{} d", n / 86_400),
    };
    if secs > 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// A number of seconds as an age: "12 s", "4 min", "2 h".
pub fn age(secs: f64) -> String {
    let now = Utc::now();
    let then = now - chrono::Duration::milliseconds((secs.max(0.0) * 1000.0) as i64);
    relative(then, now)
        .trim_end_matches(" ago")
        .replace("just now", "< 5 s")
}

/// The badge of a job state: a symbol, the word, and a colour (never the colour alone).
pub fn state_badge(state: &str) -> Markup {
    let symbol = match state {
        "completed" => "✓",
        "dead" => "✕",
        "cancelled" => "⊘",
        "running" => "▶",
        "retryable" => "↻",
        "available" => "●",
        "scheduled" => "◷",
        _ => "•",
    };
    badge(state, symbol, state)
}

/// A badge in the colour of `tone` (a CSS class), with a symbol and a word.
pub fn badge(tone: &str, symbol: &str, word: &str) -> Markup {
    html! {
        span class=(format!("badge tone-{tone}")) {
            span aria-hidden="true" { (symbol) } " " (word)
        }
    }
}

/// A table whose columns sort on click (console.js; the order of the rows shown, not a new
/// query). `headers`: the column titles; `numeric` marks columns compared as numbers (and
/// right-aligned); other columns compare their cells' `data-sort` or text as text (times carry
/// their milliseconds, which compare right as text).
pub fn sortable(id: &str, caption: &str, headers: &[(&str, bool)], rows: Markup) -> Markup {
    html! {
        div.table-wrap {
            table.sortable id=(id) {
                caption { (caption) }
                thead {
                    tr {
                        @for (i, (h, numeric)) in headers.iter().enumerate() {
                            th scope="col" data-numeric=[numeric.then_some("1")] {
                                // An id lets htmx give focus back to it after a refresh.
                                button.sort id=(format!("{id}-sort-{i}")) type="button" { (h) span.arrow aria-hidden="true" {} }
                            }
                        }
                    }
                }
                tbody { (rows) }
            }
        }
    }
}

/// A labelled text field.
pub fn field(name: &str, label: &str, value: &str, hint: &str) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) type="text" name=(name) value=(value) autocomplete="off"
                aria-describedby=[(!hint.is_empty()).then(|| format!("{id}-hint"))];
            @if !hint.is_empty() { small id=(format!("{id}-hint")) { (hint) } }
        }
    }
}

/// A notice: `tone` is `info`, `warn` or `error`; the title says what it is in words.
pub fn notice(tone: &str, title: &str, body: Markup) -> Markup {
    let role = if tone == "error" { "alert" } else { "status" };
    html! {
        div class=(format!("notice notice-{tone}")) role=(role) {
            strong { (title) } " " (body)
        }
    }
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str, session: Option<&Session>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        (notice("error", &format!("{}:", status.as_u16()), html! { (message) }))
        p { a href="/ui/" { "Back to the overview" } }
    };
    (status, page(title, session, Nav::None, body)).into_response()
}

/// `path?a&b…`: `path` with the non-empty query parts joined (no stray `&` when the filter is
/// empty), for links such as "Older →".
pub fn href_with(path: &str, parts: &[&str]) -> String {
    let q: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// The non-empty `(name, value)` pairs as a query string (`a=1&b=x%20y`).
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.trim().is_empty() {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// Characters of a long text (an error message) a page shows before it folds the rest away.
pub const TEXT_SHOWN: usize = 300;

/// `text` cut to [`TEXT_SHOWN`] characters, with `…` when cut (what a list row shows: the job's
/// page has the whole).
pub fn capped(text: &str) -> String {
    if text.chars().count() <= TEXT_SHOWN {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(TEXT_SHOWN - 1).collect();
    out.push('…');
    out
}

/// A long text in full, its first [`TEXT_SHOWN`] characters shown and the whole behind a
/// "whole message" disclosure; wrapped anywhere, so no word of it widens its table.
pub fn long_text(text: &str) -> Markup {
    let n = text.chars().count();
    if n <= TEXT_SHOWN {
        return html! { span.long { (text) } };
    }
    html! {
        span.long { (capped(text)) }
        details.long {
            summary { "whole message (" (n) " characters)" }
            pre.long { (text) }
        }
    }
}

/// JSON for people: indented, escaped by the template.
pub fn json_block(v: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    html! { pre.json { code { (text) } } }
}

/// `GET /ui/static/{file}`: the vendored htmx (cached for a year: its name carries the
/// version), the style sheet and the script.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind, cache) = match file.as_str() {
        f if f == format!("htmx-{HTMX_VERSION}.min.js") => (
            HTMX_JS,
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        "htmx-LICENSE.txt" => (
            HTMX_LICENSE,
            "text/plain; charset=utf-8",
            "public, max-age=3600",
        ),
        "console.css" => (
            CONSOLE_CSS,
            "text/css; charset=utf-8",
            "public, max-age=300",
        ),
        "console.js" => (
            CONSOLE_JS,
            "text/javascript; charset=utf-8",
            "public, max-age=300",
        ),
        "favicon.svg" => (FAVICON_SVG, "image/svg+xml", "public, max-age=86400"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

/// Bidirectional control characters (the "Trojan Source" set): in a key, args or an error
/// they would reorder the console's own text around them ("gnp.exe" read as "exe.png").
const BIDI_CONTROLS: [char; 12] = [
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
    '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

/// Every console page and fragment with its bidirectional controls shown as visible escapes
/// (`⟨U+202E⟩`) instead of acting on the text around them. The console's own templates use
/// none, so any in a page came from data; one pass here covers every field that shows data.
pub async fn reveal_bidi_controls(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    let html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !html {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "the page could not be read", None);
    };
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains(&BIDI_CONTROLS[..]) {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut shown = String::with_capacity(text.len() + 64);
    for c in text.chars() {
        if BIDI_CONTROLS.contains(&c) {
            shown.push_str(&format!("⟨U+{:04X}⟩", c as u32));
        } else {
            shown.push(c);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_use_the_largest_unit_and_say_which_way() {
        let now = Utc::now();
        let ago = |s: i64| relative(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(2), "just now");
        assert_eq!(ago(42), "42 s ago");
        assert_eq!(ago(185), "3 min ago");
        assert_eq!(ago(7_300), "2 h ago");
        assert_eq!(ago(-120), "in 2 min");
        assert_eq!(ago(3 * 86_400), "3 d ago");
    }

    #[test]
    fn values_are_escaped() {
        let m = html! { (field("kind", "Kind", "<script>x</script>", "")) };
        assert!(!m.into_string().contains("<script>x"));
    }
}
