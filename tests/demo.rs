//! `fleet demo`, the README's main command, run as a real process: it ends with bookings,
//! compensations, refunds and reminders, zero invariant violations, and the distinctive seeded
//! passport number and e-mail appear nowhere in its (debug-level) output.

use std::process::Command;

#[test]
fn demo_books_compensates_refunds_and_reminds_with_no_violation_and_no_pii_in_its_logs() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["demo", "--json"])
        .env(
            "RUST_LOG",
            "debug,sqlx=debug,hyper=info,reqwest=info,h2=info",
        )
        .env("FLEET_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed:\n{}",
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    for secret in [jobs::seed::CANARY_PASSPORT, jobs::seed::CANARY_EMAIL] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked into the demo's output"
        );
    }
    let last = stdout.lines().last().expect("a JSON summary line");
    let s: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "campaigns",
        "bookings_ticketed",
        "bookings_failed",
        "refunds",
        "reminders_sent",
        "dead_jobs",
        "invariant_violations",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["invariant_violations"], 0, "{s}");
    for key in [
        "bookings_ticketed",
        "bookings_failed",
        "refunds",
        "reminders_sent",
    ] {
        assert!(s[key].as_i64().unwrap() > 0, "{key} is zero: {s}");
    }
    assert_eq!(s["max_payment_intents_per_booking"], 1, "{s}");
    assert!(
        stderr.len() > 10_000,
        "debug logs were produced (so the PII check means something)"
    );
}
