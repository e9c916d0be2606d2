//! How every command writes for people: one time format (UTC, with the age beside it), human
//! durations, tables with headers that fit 100 columns, a line saying so when a result is
//! empty, and `--json` objects with named fields for scripts. No colour: output is often piped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// The widest a table may be.
pub const WIDTH: u16 = 100;

/// The house style, as comfy-table's preset string: no borders, no lines between rows or
/// columns, one `-` rule under the header (position 5: the header line).
const STYLE: &str = "     -             ";

/// A table with `headers`, in the house style, wrapped to [`WIDTH`] columns.
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(STYLE)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(WIDTH)
        .set_header(headers.iter().copied());
    t
}

/// `2026-12-01 21:05:03Z (3m ago)`: the one time format of the CLI.
pub fn when(t: DateTime<Utc>) -> String {
    format!("{} ({})", t.format("%Y-%m-%d %H:%M:%SZ"), ago(t))
}

/// `3m ago`, `in 20s`, `now`.
pub fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    match secs {
        -1..=1 => "now".to_owned(),
        s if s > 0 => format!("{} ago", short(Duration::from_secs(s as u64))),
        s => format!("in {}", short(Duration::from_secs(s.unsigned_abs()))),
    }
}

/// A duration as people say it: `850ms`, `5.5s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn short(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if s < 60 {
        let tenths = (ms / 100) % 10;
        if tenths == 0 {
            format!("{s}s")
        } else {
            format!("{s}.{tenths}s")
        }
    } else if s < 3_600 {
        with_rest(s / 60, "m", s % 60, "s")
    } else if s < 86_400 {
        with_rest(s / 3_600, "h", (s % 3_600) / 60, "m")
    } else {
        with_rest(s / 86_400, "d", (s % 86_400) / 3_600, "h")
    }
}

fn with_rest(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// `s` cut to `max` characters, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Prints `value` as one JSON line, or `text` for people.
pub fn emit<T: Serialize>(json: bool, value: &T, text: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text.trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_millis(5_503)), "5.5s");
        assert_eq!(short(Duration::from_secs(5)), "5s");
        assert_eq!(short(Duration::from_secs(192)), "3m 12s");
        assert_eq!(short(Duration::from_secs(7_500)), "2h 5m");
        assert_eq!(short(Duration::from_secs(3 * 86_400 + 4 * 3_600)), "3d 4h");
    }

    #[test]
    fn ages_say_which_way() {
        let now = Utc::now();
        assert_eq!(ago(now), "now");
        assert_eq!(ago(now - chrono::Duration::seconds(180)), "3m ago");
        assert!(ago(now + chrono::Duration::seconds(20)).starts_with("in "));
    }

    #[test]
    fn clipped_text_says_it_was_cut() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
