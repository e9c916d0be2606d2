//! `fleet scheduler`: one job per tick whatever the number of schedulers; missed ticks.

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use common::*;
use fleet::{
    config::ScheduleSettings,
    scheduler::{self, Scheduler},
    Registry,
};
use tokio_util::sync::CancellationToken;

fn registry() -> Arc<Registry> {
    let mut r = Registry::default();
    fleet::builtin::register(&mut r);
    Arc::new(r)
}

fn settings(cron: &str) -> BTreeMap<String, ScheduleSettings> {
    BTreeMap::from([(
        "canary".to_owned(),
        ScheduleSettings {
            cron: cron.to_owned(),
            kind: "fleet.sleep".to_owned(),
            args: serde_json::json!({"ms": 1}),
            enabled: true,
        },
    )])
}

#[tokio::test]
async fn three_schedulers_enqueue_exactly_one_job_per_tick() {
    let db = db().await;
    let reg = registry();
    let schedules = scheduler::validate(&settings("* * * * * *"), &reg).unwrap();
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let s = Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone());
        handles.push(tokio::spawn(s.run(stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    stop.cancel();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        rows.len() >= 3,
        "one job per elapsed second expected: {rows:?}"
    );
    assert!(
        rows.iter().all(|(_, n)| *n == 1),
        "a tick produced more than one job: {rows:?}"
    );
    assert!(
        rows.iter().all(|(k, _)| k.starts_with("cron:canary:20")),
        "{rows:?}"
    );
    let ticks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_cron_ticks WHERE job_id IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(ticks, rows.len() as i64);
}

#[tokio::test]
async fn only_the_latest_missed_tick_is_enqueued_once_at_start() {
    let db = db().await;
    let reg = registry();
    // Daily at 03:00:00 UTC; every scheduler was down for three days.
    let schedules = scheduler::validate(&settings("0 0 3 * * *"), &reg).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 14, 30, 5).unwrap();
    let a = Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone());
    let b = Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone());
    let first = a.catch_up(now).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].1,
        Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap()
    );
    // A second scheduler starting now, and the first restarting, enqueue nothing more.
    assert!(b.catch_up(now).await.unwrap().is_empty());
    assert!(a
        .catch_up(now + chrono::Duration::hours(1))
        .await
        .unwrap()
        .is_empty());
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM fleet_jobs")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, vec!["cron:canary:2026-11-21T03:00:00Z".to_owned()]);
    // The next day's tick is new.
    let next = a.catch_up(now + chrono::Duration::days(1)).await.unwrap();
    assert_eq!(next.len(), 1);
}

#[tokio::test]
async fn a_finished_ticks_job_does_not_free_the_tick() {
    let db = db().await;
    let reg = registry();
    let schedules = scheduler::validate(&settings("0 0 3 * * *"), &reg).unwrap();
    let s = Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone());
    let tick = Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap();
    let id = s.enqueue_tick(&schedules[0], tick).await.unwrap().unwrap();
    // The job completes and releases its idempotency key (no window)…
    sqlx::query("UPDATE fleet_jobs SET state = 'completed', finished_at = now(), key_held = false WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    // …yet a late scheduler firing the same tick still enqueues nothing.
    assert_eq!(s.enqueue_tick(&schedules[0], tick).await.unwrap(), None);
}

#[test]
fn bad_schedules_are_config_errors_naming_the_key() {
    let reg = registry();
    let e = scheduler::validate(&settings("every tuesday"), &reg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schedules.canary.cron") && e.contains("every tuesday"),
        "{e}"
    );
    let e = scheduler::validate(&settings("0 */5 * * *"), &reg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schedules.canary.cron"),
        "five fields (no seconds) are refused: {e}"
    );
    let mut s = settings("0 0 3 * * *");
    s.get_mut("canary").unwrap().kind = "campaign_scan_typo".into();
    let e = scheduler::validate(&s, &reg).unwrap_err().to_string();
    assert!(
        e.contains("schedules.canary.kind") && e.contains("campaign_scan_typo"),
        "{e}"
    );
}

#[test]
fn the_default_schedules_name_registered_kinds_and_valid_crons() {
    let settings = fleet::config::Settings::from_sources(None, &[]).unwrap();
    let reg = fleet::fleet_registry(&settings).unwrap();
    let schedules = scheduler::validate(&settings.schedules, &reg).unwrap();
    let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["campaign_scan", "card_expiry_reminder", "retention_purge"]
    );
}

#[test]
fn a_five_field_cron_says_how_many_fields_a_schedule_has() {
    let e = scheduler::validate(&settings("*/10 * * * *"), &registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has 5 field(s)") && e.contains("a schedule has 6"),
        "{e}"
    );
    assert!(
        !e.contains("expected 6 fields"),
        "no contradicting second message: {e}"
    );
}

#[test]
fn schedule_args_that_do_not_fit_the_kind_are_a_start_up_error() {
    let mut s = settings("0 */5 * * * *");
    s.get_mut("canary").unwrap().args = serde_json::json!({"ms": "often"});
    let e = scheduler::validate(&s, &registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schedules.canary.args") && e.contains("fleet.sleep"),
        "{e}"
    );
}
