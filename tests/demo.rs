//! `fleet demo`, the README's main command, run as a real process: it ends with bookings,
//! compensations, refunds, reminders, airline changes and a failed refund paid back, zero invariant violations, a summary on stdout that
//! says what each route injects and why bookings failed, and the distinctive seeded passport
//! number and e-mail appear nowhere in its output or its (debug-level) log file.

use std::process::Command;

#[test]
fn demo_books_compensates_refunds_and_reminds_with_no_violation_and_no_pii_in_its_logs() {
    let log = std::env::temp_dir().join(format!("fleet-demo-test-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["demo", "--json", "--log-file"])
        .arg(&log)
        .env(
            "RUST_LOG",
            "debug,sqlx=debug,hyper=info,reqwest=info,h2=info",
        )
        .env("FLEET_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "demo failed:\n{}",
        &logs[logs.len().saturating_sub(4000)..]
    );
    for secret in [
        jobs::seed::CANARY_PASSPORT,
        jobs::seed::CANARY_EMAIL,
        jobs::seed::CANARY_PHONE,
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret) && !logs.contains(secret),
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
    // Life after booking: the airline moved 4 flights (2 accepted, 1 cancelled and refunded,
    // 1 waiting for its deadline) and one refund failed later (paid back by transfer).
    let changes: std::collections::BTreeMap<&str, i64> = s["airline_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_i64().unwrap()))
        .collect();
    let want = [("accepted", 2), ("cancelled", 1), ("open", 1)];
    assert_eq!(changes, want.into(), "{s}");
    assert_eq!(s["refunds_failed"], 1, "{s}");
    // A quarter of the travelers chose text messages: some went out, the invalid numbers'
    // failed alone (their emails went).
    assert!(s["sms_sent"].as_i64().unwrap() > 0, "{s}");
    assert!(s["sms_failed"].as_i64().unwrap() > 0, "{s}");
    // Three travelers asked to be erased and three for their data: all done within the demo
    // (and `fleet check`, above, found nothing of the erased left).
    assert_eq!(
        (&s["travelers_erased"], &s["exports_sent"]),
        (&3.into(), &3.into()),
        "{s}"
    );
    // Every campaign is searched within the demo: nothing (a budget, a limit) holds it back.
    assert_eq!(s["campaigns_searched"], s["campaigns"], "{s}");
    assert!(
        logs.len() > 10_000,
        "debug logs were produced (so the PII check means something)"
    );
    // The summary is for people, on stdout: what each route injects, and why bookings failed.
    for expected in [
        "what each route injects",
        "LHR-AMS",
        "offer_gone",
        "order_created_then_500",
        "why bookings failed",
        "card_declined",
        "invariant violation",
    ] {
        assert!(
            stdout.contains(expected),
            "the summary lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        stderr.lines().count() < 5,
        "by default the demo keeps its logs out of the terminal:\n{stderr}"
    );
    let _ = std::fs::remove_file(&log);
}
