//! The operator's job filter, shared by `fleet queue list`, `replay` and `cancel` (and the
//! console): one SQL predicate over parameters `$1..$9`, so every command selects the same rows.
//! Statements that add parameters of their own number them from `$10`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::JobState;

/// Which jobs an operator command applies to. Unset fields do not filter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobFilter {
    /// Exact ids.
    pub ids: Option<Vec<i64>>,
    /// One kind.
    pub kind: Option<String>,
    /// Any of these states.
    pub states: Option<Vec<JobState>>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// One queue.
    pub queue: Option<String>,
    /// Args containing this JSON (`args @> …`), e.g. `{"booking_id": "…"}`.
    pub args_contain: Option<serde_json::Value>,
    /// Text anywhere in the args or the error history, case-insensitive (a substring, not a
    /// pattern: `%` and `_` match themselves). No index serves it: narrow by kind, state or
    /// time on a big table.
    pub search: Option<String>,
}

/// A time as operators write it in a filter (`--since`, the console's fields): an RFC 3339
/// time, or a duration ago (`"2h"`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() - d)
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor a duration like \"2h\""))
}

/// Args to match as operators write them (`--args`): a JSON object.
pub fn parse_json_object(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(format!("{s:?} is not a JSON object")),
        Err(e) => Err(format!("{s:?} is not JSON: {e}")),
    }
}

/// The most characters a text search takes.
pub const MAX_SEARCH_CHARS: usize = 200;

/// Text to search for as operators write it (`--search`, the console's field): 1 to
/// [`MAX_SEARCH_CHARS`] characters, no NUL (Postgres text cannot hold one).
pub fn parse_search(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("is empty: give the text to look for in args and errors".to_owned());
    }
    if t.chars().count() > MAX_SEARCH_CHARS {
        return Err(format!(
            "is {} characters long; at most {MAX_SEARCH_CHARS}",
            t.chars().count()
        ));
    }
    if t.contains('\0') {
        return Err("contains a NUL character, which no job's text can hold".to_owned());
    }
    Ok(t.to_owned())
}

impl JobFilter {
    /// True when nothing narrows the selection (mutating commands refuse that).
    pub fn is_empty(&self) -> bool {
        self.ids.is_none()
            && self.kind.is_none()
            && self.states.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.idempotency_key.is_none()
            && self.queue.is_none()
            && self.args_contain.is_none()
            && self.search.is_none()
    }

    /// [`JobFilter::search`] as an `ILIKE` pattern, its wildcards escaped.
    fn search_pattern(&self) -> Option<String> {
        self.search.as_ref().map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }

    fn state_strings(&self) -> Option<Vec<&'static str>> {
        self.states
            .as_ref()
            .map(|v| v.iter().map(|s| s.as_str()).collect())
    }
}

/// The filter as SQL over parameters $1..$9 (see [`bind_filter`]).
pub(crate) const FILTER_SQL: &str = "($1::bigint[] IS NULL OR id = ANY($1)) \
     AND ($2::text IS NULL OR kind = $2) \
     AND ($3::text[] IS NULL OR state::text = ANY($3)) \
     AND ($4::timestamptz IS NULL OR created_at >= $4) \
     AND ($5::timestamptz IS NULL OR created_at < $5) \
     AND ($6::text IS NULL OR idempotency_key = $6) \
     AND ($7::text IS NULL OR queue = $7) \
     AND ($8::jsonb IS NULL OR args @> $8) \
     AND ($9::text IS NULL OR args::text ILIKE $9 OR errors::text ILIKE $9)";

pub(crate) fn bind_filter<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    f: &'q JobFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(f.ids.as_deref())
        .bind(f.kind.as_deref())
        .bind(f.state_strings())
        .bind(f.since)
        .bind(f.until)
        .bind(f.idempotency_key.as_deref())
        .bind(f.queue.as_deref())
        .bind(f.args_contain.as_ref())
        .bind(f.search_pattern())
}
