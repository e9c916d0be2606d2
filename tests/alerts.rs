//! The alert rules in docs/alerts/ under Prometheus's own evaluator: `promtool test rules`
//! runs docs/alerts/fleet.rules.test.yml and fleet.rules.30d.test.yml, where each money alert fires on a case it is for and
//! stays silent on one it is not. Skipped without promtool (Debian's `prometheus` package),
//! unless `TESTS_REQUIRE` names it (as `.ci/run` does).

mod common;

use std::path::Path;
use std::process::Command;

fn promtool() -> Option<&'static str> {
    ["promtool", "/usr/bin/promtool"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_alert_rules_fire_on_the_cases_they_are_for_and_only_those() {
    let found = promtool();
    if !common::tool_available("promtool", found.is_some(), "apt-get install prometheus") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts");
    let out = Command::new(found.unwrap())
        .args([
            "test",
            "rules",
            "fleet.rules.test.yml",
            "fleet.rules.30d.test.yml",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{said}");
    assert!(said.contains("SUCCESS"), "{said}");
    let check = Command::new(found.unwrap())
        .args(["check", "rules", "fleet.rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
