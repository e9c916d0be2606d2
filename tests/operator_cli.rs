//! The operator commands as a new operator runs them: bulk enqueue, a booking's record and its
//! refund, the audit trail, and a resumable seed.

mod common;

use std::{io::Write, process::Output, time::Instant};

use common::*;
use uuid::Uuid;

fn fleet(url: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

#[tokio::test]
async fn bulk_enqueue_writes_a_hundred_thousand_jobs_from_json_lines_and_audits_once() {
    let db = db().await;
    let mut lines = String::new();
    for i in 0..100_000 {
        lines.push_str(&format!(
            "{{\"kind\":\"fleet.sleep\",\"args\":{{\"ms\":1}},\"key\":\"load-{i}\"}}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("fleet-bulk-{}.jsonl", std::process::id()));
    std::fs::write(&path, &lines).unwrap();
    let t = Instant::now();
    let v = json(&fleet(
        &db.url,
        &[
            "enqueue",
            "--file",
            path.to_str().unwrap(),
            "--json",
            "--actor",
            "loader",
        ],
        None,
    ));
    let took = t.elapsed();
    eprintln!(
        "bulk enqueue of 100,000 jobs: {:.2}s as a process ({} jobs/s inside it)",
        took.as_secs_f64(),
        v["jobs_per_s"]
    );
    assert_eq!(v["enqueued"], 100_000);
    assert_eq!(job_count(&db.pool).await, 100_000);
    let audited: (i64, serde_json::Value) = sqlx::query_as(
        "SELECT count(*), max(metadata::text)::jsonb FROM fleet_audit
         WHERE action = 'job.enqueue' AND actor = 'loader'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited.0, 1, "one audit row for the whole file");
    assert_eq!(audited.1["jobs"], 100_000);
    // The same file again: every key is held, nothing new.
    let v = json(&fleet(
        &db.url,
        &["enqueue", "--file", path.to_str().unwrap(), "--json"],
        None,
    ));
    assert_eq!(
        (v["enqueued"].as_i64(), v["duplicates"].as_i64()),
        (Some(0), Some(100_000))
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_bad_line_in_a_bulk_enqueue_is_named_and_nothing_is_written() {
    let db = db().await;
    let input = b"{\"kind\":\"fleet.sleep\",\"args\":{\"ms\":1}}\n{\"kind\":\"fleet.sleep\",\"args\":{\"ms\":\"soon\"}}\n";
    let out = fleet(&db.url, &["enqueue", "--file", "-"], Some(input));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("fleet.sleep"),
        "{err}"
    );
    let out = fleet(&db.url, &["enqueue", "no.such.kind"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job kind"));
    assert_eq!(job_count(&db.pool).await, 0);
}

#[tokio::test]
async fn delays_and_drain_timeouts_out_of_bounds_are_refused_as_usage_and_write_nothing() {
    let db = db().await;
    let enqueue_delayed = |delay: &str| {
        let args = [
            "enqueue",
            "fleet.sleep",
            "--args",
            "{\"ms\":1}",
            "--delay",
            delay,
        ];
        fleet(&db.url, &args, None)
    };
    // Each refused with exit 2 and the reason, nothing written (one used to panic, exit 101).
    for (delay, says) in [
        ("1000000y", "longer than the longest allowed"),
        ("9999999999999999s", "longer than the longest allowed"),
        ("100y", "longer than the longest allowed, 1year"),
        ("-5s", "is negative"),
        ("soon", "is not a duration like"),
    ] {
        let out = enqueue_delayed(delay);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--delay {delay}: {err}");
        assert!(err.contains(says), "--delay {delay}: {err}");
    }
    // The same in a file of JSON lines, which also refuses a queue no kind uses.
    for (line, says) in [
        (
            r#"{"kind":"fleet.sleep","args":{"ms":1},"delay":"100y"}"#,
            "line 1",
        ),
        (
            r#"{"kind":"fleet.sleep","args":{"ms":1},"queue":"defualt"}"#,
            "queue \"defualt\" is not one",
        ),
    ] {
        let out = fleet(&db.url, &["enqueue", "--file", "-"], Some(line.as_bytes()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
    }
    assert_eq!(job_count(&db.pool).await, 0);
    let out = fleet(
        &db.url,
        &["queue", "drain", "fleet.sleep", "--timeout", "999999h"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("longer than the longest allowed, 1day"),
        "{err}"
    );
    // Within bounds: a year's delay is fine.
    let out = enqueue_delayed("365d");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(job_count(&db.pool).await, 1);
}

#[tokio::test]
async fn replay_leaves_cancelled_jobs_unless_asked_and_exit_codes_tell_no_match_from_no_such_id() {
    let db = db().await;
    let sleep = |_: u8| {
        fleet(
            &db.url,
            &["enqueue", "fleet.sleep", "--args", "{\"ms\":1}"],
            None,
        )
    };
    assert!(sleep(1).status.success() && sleep(2).status.success());
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM fleet_jobs ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let state = |id: i64| {
        let pool = db.pool.clone();
        async move { common::job(&pool, id).await.state.as_str() }
    };
    let first = ids[0].to_string();
    let out = fleet(&db.url, &["queue", "cancel", "--id", &first], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A filter without --state does not bring back what an operator cancelled on purpose…
    let out = fleet(&db.url, &["queue", "replay", "--kind", "fleet.sleep"], None);
    assert_eq!(out.status.code(), Some(1), "nothing matched is a finding");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--state cancelled"));
    assert_eq!(state(ids[0]).await, "cancelled");
    // …asked for, it does.
    let out = fleet(
        &db.url,
        &[
            "queue",
            "replay",
            "--kind",
            "fleet.sleep",
            "--state",
            "cancelled",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(ids[0]).await, "available");

    // A finished job matches nothing (1); an id no job has is the operator's input (2).
    let out = fleet(&db.url, &["queue", "cancel", "--id", &first], None);
    assert!(out.status.success());
    let out = fleet(&db.url, &["queue", "cancel", "--id", &first], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        &["queue", "cancel", "--id", "999999"][..],
        &["queue", "replay", "--id", "999999"][..],
        &["queue", "show", "999999"][..],
    ] {
        let out = fleet(&db.url, args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no job with id 999999"), "{args:?}: {err}");
    }
    assert_eq!(state(ids[1]).await, "available", "untouched");
}

#[tokio::test]
async fn a_job_whose_error_history_another_binary_wrote_still_shows() {
    let db = db().await;
    let id = insert_unchecked(&db.pool, "fleet.sleep", serde_json::json!({"ms": 1})).await;
    // An entry of a class this binary does not know, and one that is not an entry at all: the
    // job used to be unreadable (its console page a 500).
    sqlx::query(
        r#"UPDATE fleet_jobs SET errors = '[{"attempt":1,"class":"from_a_newer_binary","message":"new"},42]'
           WHERE id = $1"#,
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let v = json(&fleet(
        &db.url,
        &["queue", "show", &id.to_string(), "--json"],
        None,
    ));
    assert_eq!(v["job"]["errors"][0]["class"], "other", "{v}");
    assert_eq!(v["job"]["errors"][0]["message"], "new");
    assert_eq!(v["job"]["errors"][1]["class"], "other");
}

#[tokio::test]
async fn a_drain_counts_the_jobs_waiting_to_retry_and_does_not_call_that_nothing_in_flight() {
    let db = db().await;
    // A job between two attempts (a saga waiting out its backoff), as a worker leaves it.
    let id = insert_unchecked(&db.pool, "fleet.sleep", serde_json::json!({"ms": 1})).await;
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'retryable', attempt = 1, run_at = now() + interval '2 minutes'
         WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    for dry in [true, false] {
        let mut args = vec!["queue", "drain", "fleet.sleep", "--timeout", "5s"];
        if dry {
            args.push("--dry-run");
        }
        let out = fleet(&db.url, &args, None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 job(s) waiting to retry"), "{text}");
        assert!(text.contains("may be mid-work"), "{text}");
    }
    let v = json(&fleet(
        &db.url,
        &["queue", "drain", "fleet.sleep", "--dry-run", "--json"],
        None,
    ));
    assert_eq!(v["result"]["retrying"], 1, "{v}");
    assert!(v["result"]["next_retry_at"].is_string(), "{v}");
}

#[test]
fn config_show_prints_a_settings_file_path_whole_on_one_line() {
    let dir = std::env::temp_dir().join(format!(
        "a-rather-long-directory-name-{}/with/more/levels",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fleet-production.toml");
    std::fs::write(&file, "[worker]\nconcurrency = 8\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("worker.concurrency"))
        .expect("the setting");
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap().parent().unwrap());
}

/// A seeded user with a ticketed, captured booking; its id.
async fn ticketed_booking(pool: &sqlx::PgPool) -> Uuid {
    let s = seed_sealed(pool, &jobs::seed::CampaignSeed::new(1)).await;
    sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id, stripe_payment_intent_id,
                               pnr, total_amount, currency, status, authorized_at, order_attempted_at,
                               ordered_at, captured_at)
         VALUES ($1, 'off_1', 'ord_1', 'pi_1', 'PNR123', 350, 'USD', 'ticketed', now(), now(), now(), now())
         RETURNING id",
    )
    .bind(s.campaign_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn booking_refund_uses_the_refund_key_once_and_audits_each_request() {
    let db = db().await;
    let b = ticketed_booking(&db.pool).await;
    let id = b.to_string();
    let refund_dry_run = |json_out: bool| {
        let mut args = vec![
            "booking",
            "refund",
            &id,
            "--reason",
            "customer_request",
            "--dry-run",
        ];
        if json_out {
            args.push("--json");
        }
        fleet(&db.url, &args, None)
    };
    let dry = json(&refund_dry_run(true));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (
            dry["result"]["amount"].as_str(),
            dry["result"]["currency"].as_str()
        ),
        (Some("350.00"), Some("USD"))
    );
    // No phantom id: the rolled-back insert's id is not the one the real run gets.
    assert!(dry["result"]["job_id"].is_null(), "{dry}");
    assert_eq!(job_count(&db.pool).await, 0, "a dry run writes nothing");
    // The text says what goes back, and names no job id the real run would not use.
    let out = refund_dry_run(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("its refund of 350.00 USD"), "{text}");
    assert!(
        text.contains("as a new job") && !text.contains("as job "),
        "{text}"
    );

    let first = json(&fleet(
        &db.url,
        &[
            "booking",
            "refund",
            &id,
            "--reason",
            "customer_request",
            "--json",
            "--actor",
            "alice",
        ],
        None,
    ));
    assert_eq!(first["result"]["booking_cancelled"], true);
    assert_eq!(first["result"]["duplicate"], false);
    assert!(first["result"]["job_id"].is_i64(), "{first}");
    let again = json(&fleet(
        &db.url,
        &[
            "booking",
            "refund",
            &id,
            "--reason",
            "customer_request",
            "--json",
            "--actor",
            "alice",
        ],
        None,
    ));
    assert_eq!(again["result"]["duplicate"], true);
    assert_eq!(again["result"]["job_id"], first["result"]["job_id"]);
    let jobs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT kind, idempotency_key FROM fleet_jobs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        vec![(
            "refund_compensation".to_owned(),
            Some(format!("booking:{b}:refund"))
        )]
    );
    let status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(b)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    let audit = json(&fleet(
        &db.url,
        &[
            "audit",
            "--actor",
            "alice",
            "--action",
            "booking.refund",
            "--json",
        ],
        None,
    ));
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");
    // The table shows the booking's whole id on one line, to copy into `booking show`.
    let out = fleet(&db.url, &["audit", "--action", "booking.refund"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(&format!("booking {id}"))),
        "{text}"
    );
    // A reason that is not a code is refused before anything happens.
    let out = fleet(
        &db.url,
        &["booking", "refund", &id, "--reason", "Jane asked"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// `fleet booking change`: a bad decision is a usage error naming the choices; a booking
/// without a change says so; the dry run queues nothing and shows the change and its deadline;
/// the accept queues one job (a repeat returns it) and is audited; once the deadline passed the
/// refusal says the new schedule is kept by default.
#[tokio::test]
async fn booking_change_accepts_an_airline_change_once_and_refuses_after_its_deadline() {
    let db = db().await;
    let b = ticketed_booking(&db.pool).await;
    let id = b.to_string();
    let out = fleet(&db.url, &["booking", "change", &id, "postpone"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use accept or cancel"));
    let out = fleet(&db.url, &["booking", "change", &id, "accept"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no airline-initiated change"));

    sqlx::query(
        "INSERT INTO airline_changes (id, booking_id, order_id, removed, added, available_actions,
                                      detected_at, respond_by)
         VALUES ('aic_1', $1, 'ord_1', '[]', '[]', '{accept,cancel,change}', now(),
                 now() + interval '1 day')",
    )
    .bind(b)
    .execute(&db.pool)
    .await
    .unwrap();
    let dry = json(&fleet(
        &db.url,
        &["booking", "change", &id, "accept", "--dry-run", "--json"],
        None,
    ));
    assert_eq!(
        (
            dry["dry_run"].as_bool(),
            dry["result"]["change_id"].as_str()
        ),
        (Some(true), Some("aic_1"))
    );
    assert!(dry["result"]["job_id"].is_null(), "{dry}");
    assert_eq!(job_count(&db.pool).await, 0, "a dry run queues nothing");
    let first = json(&fleet(
        &db.url,
        &[
            "booking", "change", &id, "accept", "--actor", "alice", "--json",
        ],
        None,
    ));
    let again = json(&fleet(
        &db.url,
        &[
            "booking", "change", &id, "accept", "--actor", "alice", "--json",
        ],
        None,
    ));
    assert_eq!(first["result"]["job_id"], again["result"]["job_id"]);
    assert_eq!(again["result"]["duplicate"], true);
    assert_eq!(job_count(&db.pool).await, 1);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'airline_change.accept_requested'
         AND actor = 'alice'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2, "each request is audited");

    sqlx::query("UPDATE airline_changes SET respond_by = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = fleet(&db.url, &["booking", "change", &id, "cancel"], None);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("deadline") && said.contains("keeps the new schedule"),
        "{said}"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(b)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "ticketed", "a refused cancel changes nothing");
}

#[tokio::test]
async fn a_failed_provider_call_writes_one_log_line() {
    let db = db().await;
    // A job whose first step is a Stripe call.
    let out = fleet(
        &db.url,
        &[
            "enqueue",
            "payment_reconcile",
            "--args",
            r#"{"payment_intent_id":"pi_1","event_type":"payment_intent.succeeded"}"#,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stripe unreachable (a closed port): the first attempt fails once.
    let log = std::env::temp_dir().join(format!("fleet-one-line-{}.log", Uuid::new_v4()));
    let mut worker = std::process::Command::new(BIN)
        .arg("worker")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("FLEET_PROVIDERS__STRIPE__BASE_URL", "http://127.0.0.1:1")
        .env("FLEET_PROVIDERS__STRIPE__SECRET_KEY", "sk_test_fleet")
        .env("FLEET_PROVIDERS__DUFFEL__BASE_URL", "http://127.0.0.1:1")
        .env("FLEET_PROVIDERS__DUFFEL__ACCESS_TOKEN", "duffel_test_fleet")
        .env("FLEET_PROVIDERS__EMAIL__BASE_URL", "http://127.0.0.1:1")
        .env("FLEET_PROVIDERS__EMAIL__API_KEY", "re_test_fleet")
        .env("FLEET_WORKER__POLL_INTERVAL", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let failed = wait_until_first_failure(&db.pool).await;
    signal(&worker, libc::SIGTERM);
    wait_exit(&mut worker, std::time::Duration::from_secs(15));
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(failed, "the first attempt failed: {text}");
    let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    let about_it: Vec<&&str> = warns
        .iter()
        .filter(|l| {
            l.contains("stripe") || l.contains("request failed") || l.contains("attempt failed")
        })
        .collect();
    assert_eq!(
        about_it.len(),
        1,
        "one line for one failed call: {warns:#?}"
    );
    assert!(
        about_it[0].contains("attempt failed") && about_it[0].contains("stripe"),
        "{}",
        about_it[0]
    );
}

/// Waits (up to 20 s) until the payment_reconcile job's first attempt has failed.
async fn wait_until_first_failure(pool: &sqlx::PgPool) -> bool {
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fleet_jobs WHERE kind = 'payment_reconcile'
             AND jsonb_array_length(errors) >= 1",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if n > 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn booking_show_gives_steps_ids_and_jobs_and_no_personal_data() {
    let db = db().await;
    let b = ticketed_booking(&db.pool).await;
    json(&fleet(
        &db.url,
        &[
            "booking",
            "refund",
            &b.to_string(),
            "--reason",
            "customer_request",
            "--json",
        ],
        None,
    ));
    for args in [
        vec!["booking", "show", &b.to_string() as &str],
        vec!["booking", "show", &b.to_string(), "--json"],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fleet(&db.url, &args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for expected in [
            "ord_1",
            "pi_1",
            "off_1",
            "refund_compensation",
            "booking.cancelled",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
        // The seed's traveler: e-mail, name, passport; and the PNR itself.
        for secret in ["traveler1@example.test", "Number1", "P10000001", "PNR123"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
    }
    let out = fleet(
        &db.url,
        &["booking", "show", &Uuid::new_v4().to_string()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn an_interrupted_seed_finishes_when_run_again_and_real_users_are_never_mixed_in() {
    let db = db().await;
    let v = json(&fleet(
        &db.url,
        &["seed", "--users", "3", "--mix", "demo", "--json"],
        None,
    ));
    assert_eq!(v["written"], 3);
    let v = json(&fleet(
        &db.url,
        &[
            "seed", "--users", "5", "--mix", "demo", "--spread", "5m", "--json",
        ],
        None,
    ));
    assert_eq!(
        (v["written"].as_i64(), v["skipped"].as_i64()),
        (Some(2), Some(3))
    );
    let (users, later): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users),
                (SELECT count(*) FROM campaigns WHERE next_search_at > now() + interval '30 seconds')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(users, 5);
    assert!(later >= 1, "--spread put some first searches later");
    // Another mix over it: what is there already (the same numbers' users or cards) is skipped,
    // not a unique-constraint error.
    let v = json(&fleet(
        &db.url,
        &["seed", "--users", "6", "--mix", "simple", "--json"],
        None,
    ));
    assert_eq!(
        (v["written"].as_i64(), v["skipped"].as_i64()),
        (Some(1), Some(5)),
        "{v}"
    );
    sqlx::query("INSERT INTO users (email) VALUES ('real.person@gmail.com')")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = fleet(&db.url, &["seed", "--users", "1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not seed data"));
}

#[tokio::test]
async fn every_state_changing_command_writes_an_audit_row_naming_its_actor() {
    let db = db().await;
    // The engine's actions in its trail, the domain's in the domain's.
    let runs: [(&[&str], &str, &str); 4] = [
        (
            &["migrate", "--actor", "ana"],
            "schema.migrate",
            "fleet_audit",
        ),
        (
            &[
                "enqueue",
                "fleet.sleep",
                "--args",
                r#"{"ms":1}"#,
                "--actor",
                "ana",
            ],
            "job.enqueue",
            "fleet_audit",
        ),
        (
            &["seed", "--users", "2", "--actor", "ana"],
            "seed.run",
            "audit_log",
        ),
        (
            &["backfill", "start", "pii_reencrypt", "--actor", "ana"],
            "backfill.start",
            "audit_log",
        ),
    ];
    for (args, action, table) in runs {
        let out = fleet(&db.url, args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let actors: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT actor FROM {table} WHERE action = $1"
        )))
        .bind(action)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(actors, ["ana"], "{args:?} audited as {action}");
    }
}

#[tokio::test]
async fn a_command_piped_into_a_reader_that_stops_early_exits_cleanly() {
    let db = db().await;
    // A reader that has gone before the command writes (`fleet queue stats | head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(BIN)
        .args(["queue", "stats"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "no panic, no backtrace: {err}");
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn run_now_moves_a_retrying_job_and_delete_spares_a_job_whose_key_is_held() {
    let db = db().await;
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        let out = ok(&fleet(
            &db.url,
            &[
                "enqueue",
                "fleet.sleep",
                "--args",
                "{\"ms\":1}",
                "--key",
                key,
                "--json",
            ],
            None,
        ));
        ids.push(
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
                .as_i64()
                .unwrap(),
        );
    }
    // a: retrying in an hour (its error names a card decline); b: completed, key released;
    // c: completed, key held for a day.
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'retryable', attempt = 1, run_at = now() + interval '1 hour',
             errors = '[{\"attempt\":1,\"class\":\"retryable\",\"message\":\"stripe: Card_Declined\",\"at\":\"2026-12-06T10:00:00Z\"}]'
         WHERE id = $1",
    )
    .bind(ids[0])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'completed', finished_at = now(),
             key_held = (id = $2), key_held_until = CASE WHEN id = $2 THEN now() + interval '1 day' END
         WHERE id = ANY($1)",
    )
    .bind(&ids[1..])
    .bind(ids[2])
    .execute(&db.pool)
    .await
    .unwrap();
    let state = |id: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state::text FROM fleet_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    let (a, b, c) = (ids[0].to_string(), ids[1].to_string(), ids[2].to_string());

    // Text search finds the error, any case; nothing else matches.
    let out = ok(&fleet(
        &db.url,
        &["queue", "list", "--search", "card_declined", "--json"],
        None,
    ));
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], ids[0]);
    let out = fleet(&db.url, &["queue", "list", "--search", " "], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));

    // Run now: dry run changes nothing; then available now, audited.
    let out = ok(&fleet(
        &db.url,
        &["queue", "run-now", "--id", &a, "--dry-run"],
        None,
    ));
    assert!(
        out.contains(&format!("would run now: 1 job(s): {a}")),
        "{out}"
    );
    assert_eq!(state(ids[0]).await.as_deref(), Some("retryable"));
    let out = ok(&fleet(
        &db.url,
        &["queue", "run-now", "--id", &a, "--actor", "ops-alice"],
        None,
    ));
    assert!(out.contains("runs now: 1 job(s)"), "{out}");
    assert_eq!(state(ids[0]).await.as_deref(), Some("available"));
    // Again: nothing scheduled or retrying matches (1); a state that cannot run now is usage (2).
    assert_eq!(
        fleet(&db.url, &["queue", "run-now", "--id", &a], None)
            .status
            .code(),
        Some(1)
    );
    let out = fleet(&db.url, &["queue", "run-now", "--state", "dead"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only scheduled or retrying jobs"));

    // Delete: the released job goes; the held one stays, with the reason; unfinished refused.
    let out = ok(&fleet(
        &db.url,
        &[
            "queue",
            "delete",
            "--id",
            &format!("{b},{c}"),
            "--actor",
            "ops-alice",
        ],
        None,
    ));
    assert!(
        out.contains(&format!("deleted 1 job(s) with their history: {b}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("skipped {c}: its idempotency key is held until")),
        "{out}"
    );
    assert_eq!(state(ids[1]).await, None);
    assert_eq!(state(ids[2]).await.as_deref(), Some("completed"));
    let out = fleet(&db.url, &["queue", "delete", "--state", "available"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancel it first"));
    assert_eq!(
        fleet(&db.url, &["queue", "delete", "--id", &a], None)
            .status
            .code(),
        Some(1)
    );
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM fleet_audit
         WHERE action IN ('job.run_now', 'job.delete') AND actor = 'ops-alice' ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            ("job.run_now".to_owned(), "ops-alice".to_owned()),
            ("job.delete".to_owned(), "ops-alice".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_paused_schedule_is_listed_as_paused_audited_and_an_unknown_one_is_named() {
    let db = db().await;
    let out = ok(&fleet(&db.url, &["schedules"], None));
    for name in ["campaign_scan", "card_expiry_reminder", "retention_purge"] {
        assert!(out.contains(name), "{out}");
    }
    let out = ok(&fleet(
        &db.url,
        &["schedules", "pause", "campaign_scan", "--dry-run"],
        None,
    ));
    assert!(out.contains("campaign_scan: would pause"), "{out}");
    let out = ok(&fleet(
        &db.url,
        &[
            "schedules",
            "pause",
            "campaign_scan",
            "--reason",
            "INC-9",
            "--actor",
            "ops-bob",
        ],
        None,
    ));
    assert!(out.contains("paused: its ticks enqueue nothing"), "{out}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&fleet(&db.url, &["schedules", "--json"], None))).unwrap();
    let scan = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "campaign_scan")
        .unwrap();
    assert_eq!(scan["paused"]["paused_by"], "ops-bob");
    assert_eq!(scan["paused"]["reason"], "INC-9");
    assert!(scan["next_tick"].is_string());
    let out = ok(&fleet(
        &db.url,
        &["schedules", "pause", "campaign_scan"],
        None,
    ));
    assert!(out.contains("already paused"), "{out}");
    let out = fleet(&db.url, &["schedules", "pause", "campain_scan"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no schedule named \"campain_scan\" (configured: campaign_health_sweep, campaign_scan, card_expiry_reminder, pii_key_rotation, refund_sweep, retention_purge)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&fleet(
        &db.url,
        &["schedules", "resume", "campaign_scan"],
        None,
    ));
    assert!(out.contains("resumed"), "{out}");
    let audit: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT action, resource_id FROM fleet_audit WHERE action LIKE 'schedule.%' ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let campaign_scan = Some("campaign_scan".to_owned());
    assert_eq!(
        audit,
        vec![
            ("schedule.pause".to_owned(), campaign_scan.clone()),
            ("schedule.pause".to_owned(), campaign_scan.clone()),
            ("schedule.resume".to_owned(), campaign_scan),
        ]
    );
}

#[tokio::test]
async fn a_drain_names_the_card_hold_a_retrying_booking_attempt_still_holds() {
    let db = db().await;
    // The saga took the hold, then its order failed once: the attempt waits out its backoff.
    let (booking, job) = booking_holding_a_card(&db.pool).await;
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'retryable', attempt = 1, run_at = now() + interval '2 minutes'
         WHERE id = $1",
    )
    .bind(job)
    .execute(&db.pool)
    .await
    .unwrap();
    let out = fleet(
        &db.url,
        &["queue", "drain", "booking_attempt", "--dry-run"],
        None,
    );
    let text = ok(&out);
    assert!(text.contains("1 job(s) waiting to retry"), "{text}");
    assert!(
        text.contains("money their unfinished jobs still move (1 booking(s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "card hold    412.30 USD  booking {booking}  job {job} retryable (due "
        )),
        "{text}"
    );
    let v = json(&fleet(
        &db.url,
        &["queue", "drain", "booking_attempt", "--dry-run", "--json"],
        None,
    ));
    assert_eq!(v["result"]["money"][0]["booking_id"], booking.to_string());
    assert_eq!(v["result"]["money"][0]["what"], "card hold");
    // Another kind's drain does not name it.
    let text = ok(&fleet(
        &db.url,
        &["queue", "drain", "fleet.sleep", "--dry-run"],
        None,
    ));
    assert!(!text.contains("money"), "{text}");
}

#[tokio::test]
async fn traveler_erase_previews_then_opens_one_request_and_refuses_an_unknown_traveler() {
    let db = db().await;
    let s = seed_sealed(&db.pool, &jobs::seed::CampaignSeed::new(7)).await;
    let user = s.user_id.to_string();
    // Bad input: not an id, an unknown traveler (exit 2, nothing written).
    let out = fleet(&db.url, &["traveler", "erase", "jane@example.com"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
    let nobody = uuid::Uuid::new_v4().to_string();
    let out = fleet(&db.url, &["traveler", "erase", &nobody], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account has this id"));

    // The dry run says what would go and writes nothing.
    let out = fleet(&db.url, &["traveler", "erase", &user, "--dry-run"], None);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would open an erasure request"), "{text}");
    assert!(text.contains("cards detached at Stripe:   1"), "{text}");
    assert!(
        !text.contains(&jobs::seed::CampaignSeed::new(7).email),
        "{text}"
    );
    assert_eq!(job_count(&db.pool).await, 0, "a dry run queues nothing");

    let first = json(&fleet(
        &db.url,
        &["traveler", "erase", &user, "--actor", "alice", "--json"],
        None,
    ));
    let again = json(&fleet(
        &db.url,
        &["traveler", "erase", &user, "--actor", "bob", "--json"],
        None,
    ));
    assert_eq!(first["result"]["request_id"], again["result"]["request_id"]);
    assert_eq!(first["result"]["job_id"], again["result"]["job_id"]);
    assert_eq!(again["result"]["duplicate"], true);
    assert_eq!(job_count(&db.pool).await, 1);
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM audit_log WHERE action = 'erasure.requested'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        audited,
        ["alice"],
        "the request is audited once, by who opened it"
    );

    // Listed as open, with its deadline.
    let out = fleet(&db.url, &["traveler", "requests"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("erasure") && text.contains(&user), "{text}");
    assert!(text.contains("in 29d") || text.contains("in 30d"), "{text}");
    let listed = json(&fleet(&db.url, &["traveler", "requests", "--json"], None));
    assert_eq!(listed[0]["status"], "open");
}
