//! `fleet scheduler`: one job per tick whatever the number of schedulers; missed ticks.

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use common::*;
use fleet::{
    clock::ManualClock,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_enqueue_exactly_one_job_per_tick() {
    let db = db().await;
    let reg = registry();
    let schedules = scheduler::validate(&settings("* * * * * *"), &reg).unwrap();
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap());
    let schedulers: Vec<Scheduler> = (0..3)
        .map(|_| {
            Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone())
                .with_clock(clock.clone())
        })
        .collect();
    // Four ticks, each fired by the three schedulers at once (as three processes' timers do).
    let mut enqueued = 0;
    for _ in 0..4 {
        clock.advance(Duration::from_millis(1_000));
        let fired = futures::future::join_all(schedulers.iter().map(|s| s.tick())).await;
        enqueued += fired.into_iter().map(|f| f.unwrap().len()).sum::<usize>();
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cron:canary:2026-11-21T03:00:01Z",
            "cron:canary:2026-11-21T03:00:02Z",
            "cron:canary:2026-11-21T03:00:03Z",
            "cron:canary:2026-11-21T03:00:04Z"
        ],
        "one job per tick"
    );
    assert!(rows.iter().all(|(_, n)| *n == 1), "{rows:?}");
    assert_eq!(enqueued, 4, "each tick was enqueued by one scheduler");
    let ticks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_cron_ticks WHERE job_id IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(ticks, 4);
}

/// The timer itself: real time is the claim (the cron library fires `run`'s ticks), so this
/// waits, for at most a few seconds, until two ticks of an every-second schedule are in.
#[tokio::test]
async fn a_running_scheduler_fires_on_its_timer() {
    let db = db().await;
    let reg = registry();
    let schedules = scheduler::validate(&settings("* * * * * *"), &reg).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(Scheduler::new(db.pool.clone(), reg, schedules).run(stop.clone()));
    wait_until(Duration::from_secs(5), "two ticks enqueued", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM fleet_jobs WHERE kind = 'fleet.sleep'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            >= 2
    })
    .await;
    stop.cancel();
    run.await.unwrap().unwrap();
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
    let err = scheduler::validate(&settings("every tuesday"), &reg).unwrap_err();
    assert_eq!(
        err.key.as_deref(),
        Some("schedules.canary.cron"),
        "the key, as a field"
    );
    let e = err.to_string();
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
        vec![
            "campaign_health_sweep",
            "campaign_scan",
            "card_expiry_reminder",
            "pii_key_rotation",
            "refund_sweep",
            "retention_purge"
        ]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_schedules_ticks_are_skipped_once_by_any_scheduler_and_not_replayed_on_resume() {
    let db = db().await;
    let reg = registry();
    let schedules = scheduler::validate(&settings("* * * * * *"), &reg).unwrap();
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap());
    let schedulers: Vec<Scheduler> = (0..2)
        .map(|_| {
            Scheduler::new(db.pool.clone(), reg.clone(), schedules.clone())
                .with_clock(clock.clone())
        })
        .collect();
    let ops = fleet::ops::Ops::new(db.pool.clone(), reg.kind_names(), "ops-alice");
    assert!(
        ops.schedule_pause(&schedules, "canary", "INC-1", false)
            .await
            .unwrap()
            .result
    );
    for _ in 0..3 {
        clock.advance(Duration::from_millis(1_000));
        let fired = futures::future::join_all(schedulers.iter().map(|s| s.tick())).await;
        assert!(
            fired.into_iter().all(|f| f.unwrap().is_empty()),
            "nothing enqueued while paused"
        );
    }
    assert_eq!(job_count(&db.pool).await, 0);
    let skipped: Vec<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT job_id, skipped FROM fleet_cron_ticks ORDER BY tick_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        skipped,
        vec![(None, Some("paused".to_owned())); 3],
        "each tick decided once"
    );

    assert!(
        ops.schedule_resume(&schedules, "canary", false)
            .await
            .unwrap()
            .result
    );
    // A restart's catch-up does not replay the skipped tick; the next tick enqueues.
    let caught = schedulers[0].catch_up(clock.get()).await.unwrap();
    assert!(caught.is_empty(), "{caught:?}");
    clock.advance(Duration::from_millis(1_000));
    let fired = schedulers[1].tick().await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(job_count(&db.pool).await, 1);
    let report = ops.schedules(&schedules).await.unwrap();
    assert_eq!(report[0].ticks.len(), 4);
    assert_eq!(report[0].ticks[0].job_id, Some(fired[0].2));
    assert_eq!(report[0].ticks[1].skipped.as_deref(), Some("paused"));
    assert!(report[0].paused.is_none());
}
