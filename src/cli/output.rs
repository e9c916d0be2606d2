//! How every command writes for people: one time format (UTC, with the age beside it), human
//! durations, tables with headers that fit 100 columns (tables of figures unwrapped instead),
//! a line saying so when a result is empty, and `--json` objects with named fields for
//! scripts. No colour: output is often piped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;

/// The widest a table may be.
pub const WIDTH: u16 = 100;

/// The house style, as comfy-table's preset string: no borders, no lines between rows or
/// columns, one `-` rule under the header (position 5: the header line).
const STYLE: &str = "     -             ";

/// A table with `headers`, in the house style, wrapped to [`WIDTH`] columns. The first column
/// names the row (a kind, a job id, a worker) and is never wrapped, so it can be read, copied
/// and grepped whole; the other columns wrap to make room.
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(STYLE)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(WIDTH)
        .set_header(headers.iter().copied());
    if let Some(c) = t.column_mut(0) {
        c.set_constraint(ColumnConstraint::ContentWidth);
    }
    t
}

/// A table of names and figures only (no free text), in the house style, never wrapped: a
/// number or a name broken over two lines reads as two values. Wider than [`WIDTH`] when its
/// content is.
pub fn figures_table(headers: &[&str]) -> Table {
    let mut t = table(headers);
    t.set_content_arrangement(ContentArrangement::Disabled);
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
        print_line(&serde_json::to_string(value)?)
    } else {
        print_line(text.trim_end())
    }
}

/// Writes `line` and a newline to standard output. A reader that went away (`fleet queue
/// stats | head`) is not an error: what it did not read it did not want, and the command's
/// work is done either way. (`println!` would panic with a backtrace.)
pub fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figures_table_wraps_no_cell() {
        let mut t = figures_table(&["kind", "queue", "dead/24h"]);
        t.add_row(["card_expiry_reminder", "maintenance", "0"]);
        t.add_row(["x".repeat(120).as_str(), "q", "1"]);
        let out = t.to_string();
        assert_eq!(
            out.lines().count(),
            4,
            "a header, its rule, two rows:\n{out}"
        );
        assert!(
            out.contains("maintenance") && out.contains("dead/24h"),
            "{out}"
        );
    }

    #[test]
    fn a_tables_first_column_is_never_wrapped_and_the_table_keeps_to_its_width() {
        let mut t = table(&[
            "kind", "queue", "paused", "ready", "limited", "due", "later", "running", "dead/24h",
            "done/1m", "oldest",
        ]);
        t.add_row([
            "card_expiry_reminder",
            "maintenance",
            "",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "1",
            "-",
        ]);
        let out = t.to_string();
        assert!(
            out.lines().any(|l| l.contains("card_expiry_reminder")),
            "the kind is on one line:\n{out}"
        );
        assert!(
            out.lines().all(|l| l.chars().count() <= WIDTH as usize),
            "{out}"
        );
    }

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
