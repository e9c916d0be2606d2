//! Travelers' data rights end to end: `account_erasure` and `data_export` run by an in-process
//! worker against real Postgres and the provider sandbox (the real Stripe and Resend clients
//! on loopback), opened as an operator or by the product's signed request; crashes at each
//! step, and the `fleet check` invariant that an erased traveler has no personal data left.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use fleet::{
    queue::{self, JobState},
    testkit::ScratchDb,
    Queue, Registry, Worker,
};
use jobs::{
    data_rights::{self, Asker, RequestKind, RequestRefused, Source},
    kinds::{account_erasure::AccountErasure, data_export::DataExport},
    seed::{seed_campaign, CampaignSeed, Seeded},
};
use sandbox::{scenarios::Provider, RunningSandbox, Sandbox};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECS: fn(u64) -> Duration = Duration::from_secs;

struct Env {
    db: ScratchDb,
    sandbox: RunningSandbox,
    queue: Queue,
    keyring: jobs::pii::Keyring,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<fleet::worker::DrainReport>,
}

impl Env {
    async fn start() -> Env {
        let db = db().await;
        let sandbox = Sandbox::start(Default::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut r = Registry::default();
        r.register_with::<AccountErasure>(quick_retries::<AccountErasure>())
            .register_with::<DataExport>(quick_retries::<DataExport>());
        let reg = Arc::new(r);
        let w = Worker::new(db.pool.clone(), reg.clone(), fast_settings())
            .with_extensions(extensions_of(sandbox_deps(&sandbox.base_url).unwrap()));
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(w.run(shutdown.clone()));
        Env {
            queue: Queue::new(db.pool.clone(), reg),
            keyring: jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap(),
            db,
            sandbox,
            shutdown,
            worker,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    async fn seed(&self, n: usize) -> Seeded {
        seed_campaign(&self.db.db(), &self.keyring, &CampaignSeed::new(n))
            .await
            .unwrap()
    }

    async fn ask(
        &self,
        kind: RequestKind,
        user: Uuid,
        dry_run: bool,
    ) -> Result<data_rights::Opened, RequestRefused> {
        let asker = Asker {
            source: Source::Operator,
            name: "ops-alice",
            external_id: None,
        };
        data_rights::open(&self.db.db(), &self.queue, kind, user, &asker, dry_run).await
    }

    async fn finished(&self, job: i64) -> queue::JobRecord {
        wait_for(self.pool(), job, SECS(30), "a final state", |j| {
            j.state.is_final()
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.await.unwrap();
        self.sandbox.shutdown().await.unwrap();
    }
}

async fn scalar_i64(pool: &PgPool, sql: &'static str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A second card on another Stripe customer, a ticketed booking with its PNR and itinerary,
/// an airline change with legs, and a sent message: everything an erasure must reach.
async fn with_history(pool: &PgPool, s: &Seeded) -> Uuid {
    sqlx::query(
        "INSERT INTO payment_methods (user_id, stripe_customer_id, stripe_payment_method_id,
                                      brand, last4, exp_month, exp_year)
         VALUES ($1, 'cus_second_' || replace($1::text, '-', ''),
                 'pm_card_mastercard__' || replace($1::text, '-', ''), 'mastercard', '4444', 3, 2031)",
    )
    .bind(s.user_id)
    .execute(pool)
    .await
    .unwrap();
    let booking: Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id,
                               stripe_payment_intent_id, pnr, total_amount, currency, status,
                               flight_details, offer_checked_at, payment_intent_status,
                               authorized_at, order_attempted_at, ordered_at, captured_at)
         VALUES ($1, 'off_kept', 'ord_kept', 'pi_kept', 'QX7PNR', 412.30, 'USD', 'ticketed',
                 '{\"slices\": [{\"origin\": \"LHR\", \"destination\": \"JFK\"}]}', now(),
                 'succeeded', now(), now(), now(), now())
         RETURNING id",
    )
    .bind(s.campaign_id)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE campaigns SET status = 'booked' WHERE id = $1")
        .bind(s.campaign_id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO airline_changes (id, booking_id, order_id, removed, added, detected_at,
                                      respond_by)
         VALUES ('aic_kept', $1, 'ord_kept', '[{\"origin\": \"LHR\"}]', '[{\"origin\": \"LHR\"}]',
                 now(), now() + interval '2 days')",
    )
    .bind(booking)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO notifications (user_id, kind, dedupe_key, provider_message_id, sent_at)
         VALUES ($1, 'booking-confirmed', 'booking-confirmed/' || $1::text, 'msg_1', now())",
    )
    .bind(s.user_id)
    .execute(pool)
    .await
    .unwrap();
    booking
}

/// Every row of every table in the schema, as text: where a canary must not be found.
async fn whole_database_text(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut all = String::new();
    for t in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {t} t")))
                .fetch_all(pool)
                .await
                .unwrap();
        for r in rows {
            all.push_str(&r);
            all.push('\n');
        }
    }
    all
}

async fn domain_violations(pool: &PgPool) -> Vec<jobs::invariants::Violation> {
    let mut c = pool.acquire().await.unwrap();
    jobs::invariants::check(&mut c).await.unwrap()
}

#[tokio::test]
async fn an_erasure_detaches_every_card_deletes_the_customers_keeps_only_accounting_and_tells_once()
{
    let env = Env::start().await;
    let pool = env.pool().clone();
    let s = env.seed(1).await;
    let bystander = env.seed(2).await;
    let booking = with_history(&pool, &s).await;
    let cards: Vec<(String, String)> = sqlx::query_as(
        "SELECT stripe_payment_method_id, stripe_customer_id FROM payment_methods
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(s.user_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(cards.len(), 2);

    // The dry run: what would go, and nothing changes.
    let preview = env
        .ask(RequestKind::Erasure, s.user_id, true)
        .await
        .unwrap();
    let p = preview.preview.unwrap();
    assert_eq!(
        (
            p.campaigns,
            p.cards_to_detach,
            p.customers_to_delete,
            p.profiles
        ),
        (1, 2, 2, 1)
    );
    assert_eq!(
        (p.bookings_kept, p.notifications, p.bookings_in_flight),
        (1, 1, 0)
    );
    assert_eq!((preview.request_id, preview.job_id), (None, None));
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM data_requests WHERE user_id = $1",
            s.user_id
        )
        .await,
        0
    );

    // Asked twice (operator, then again): one request, one job.
    let opened = env
        .ask(RequestKind::Erasure, s.user_id, false)
        .await
        .unwrap();
    let again = env
        .ask(RequestKind::Erasure, s.user_id, false)
        .await
        .unwrap();
    assert!(!opened.duplicate && again.duplicate);
    assert_eq!(opened.request_id, again.request_id);
    assert_eq!(opened.job_id, again.job_id);
    let request = opened.request_id.unwrap();
    let job = env.finished(opened.job_id.unwrap()).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");

    // Stripe: both cards detached and both customers deleted, once each.
    let sb = &env.sandbox.sandbox;
    for (pm, cus) in &cards {
        assert!(sb.stripe_payment_method_detached(pm), "{pm}");
        assert!(sb.stripe_customer_deleted(cus), "{cus}");
    }
    let c = sb.counters();
    assert_eq!(
        (c.payment_methods_detached, c.customers_deleted),
        (2, 2),
        "{c:#?}"
    );
    let confirmation = format!("account-erased/{request}");
    assert_eq!(c.emails_by_idempotency_key.get(&confirmation), Some(&1));

    // The account and everything personal are gone; the booking stays, scrubbed and detached.
    for sql in [
        "SELECT count(*) FROM users WHERE id = $1",
        "SELECT count(*) FROM traveler_profiles WHERE user_id = $1",
        "SELECT count(*) FROM payment_methods WHERE user_id = $1",
        "SELECT count(*) FROM campaigns WHERE user_id = $1",
        "SELECT count(*) FROM notifications WHERE user_id = $1",
    ] {
        assert_eq!(scalar_i64(&pool, sql, s.user_id).await, 0, "{sql}");
    }
    let kept: (Option<Uuid>, Option<String>, Option<Value>, String, String) = sqlx::query_as(
        "SELECT campaign_id, pnr, flight_details, status, total_amount::text FROM bookings
         WHERE id = $1",
    )
    .bind(booking)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        (None, None, None, "ticketed".to_owned(), "412.30".to_owned())
    );
    let legs: (Option<Value>, Option<Value>) =
        sqlx::query_as("SELECT removed, added FROM airline_changes WHERE id = 'aic_kept'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(legs, (None, None));
    // The request is the record, with counts; the erasure is audited.
    let r: (String, Value) =
        sqlx::query_as("SELECT status, outcome FROM data_requests WHERE id = $1")
            .bind(request)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(r.0, "completed");
    assert_eq!(r.1["cards_detached_at_stripe"], 2);
    assert_eq!(r.1["bookings_scrubbed"], 1);
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'account.erased'
             AND resource_id = $1::text",
            request
        )
        .await,
        1
    );
    // No trace of the person anywhere: name, email, passport number, PNR.
    let everything = whole_database_text(&pool).await;
    let seed = CampaignSeed::new(1);
    for canary in [seed.email.as_str(), seed.full_name.as_str(), "QX7PNR"] {
        assert!(!everything.contains(canary), "{canary} is still stored");
    }
    assert!(
        everything.contains(&CampaignSeed::new(2).email),
        "the bystander stays"
    );
    assert_eq!(domain_violations(&pool).await, vec![]);
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM users WHERE id = $1",
            bystander.user_id
        )
        .await,
        1
    );

    // Asked again after: refused with the reason; the job run again does nothing.
    let err = env
        .ask(RequestKind::Erasure, s.user_id, false)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestRefused::AlreadyErased { .. }), "{err}");
    assert!(err.to_string().contains("was erased on"), "{err}");
    let export = env
        .ask(RequestKind::Export, s.user_id, false)
        .await
        .unwrap_err();
    assert!(matches!(export, RequestRefused::AlreadyErased { .. }));
    let rerun = env
        .queue
        .enqueue(
            &AccountErasure {
                request_id: request,
            },
            Some("rerun"),
        )
        .await
        .unwrap();
    assert_eq!(env.finished(rerun.id).await.state, JobState::Completed);
    let after = sb.counters();
    assert_eq!(
        (
            after.payment_methods_detached,
            after.customers_deleted,
            after.emails_sent
        ),
        (2, 2, c.emails_sent)
    );
    // An unknown traveler is a clear error, and nothing is written.
    let nobody = Uuid::new_v4();
    let err = env
        .ask(RequestKind::Erasure, nobody, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no traveler {nobody}: no account has this id")
    );

    // The invariant catches what an erasure left behind.
    sqlx::query("INSERT INTO users (id, email) VALUES ($1, 'back@example.test')")
        .bind(s.user_id)
        .execute(&pool)
        .await
        .unwrap();
    let v = domain_violations(&pool).await;
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(
        v[0].invariant,
        "an erased traveler has no personal data left"
    );
    assert_eq!(v[0].ids, vec![s.user_id.to_string()]);
    env.stop().await;
}

#[tokio::test]
async fn an_erasure_waits_while_a_booking_holds_the_card_and_runs_once_it_settles() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let (booking, _attempt) = booking_holding_a_card(&pool).await;
    let user: Uuid = sqlx::query_scalar(
        "SELECT c.user_id FROM bookings b JOIN campaigns c ON c.id = b.campaign_id WHERE b.id = $1",
    )
    .bind(booking)
    .fetch_one(&pool)
    .await
    .unwrap();
    let preview = env.ask(RequestKind::Erasure, user, true).await.unwrap();
    assert_eq!(preview.preview.unwrap().bookings_in_flight, 1);
    let opened = env.ask(RequestKind::Erasure, user, false).await.unwrap();
    let job = opened.job_id.unwrap();
    let waiting = wait_for(&pool, job, SECS(20), "snoozed", |j| {
        j.state == JobState::Retryable
    })
    .await;
    // Snoozed: no attempt used up, however long the booking takes.
    assert_eq!(waiting.attempt, 0, "{waiting:#?}");
    let req: (String, Option<String>) =
        sqlx::query_as("SELECT status, waiting_on FROM data_requests WHERE id = $1")
            .bind(opened.request_id.unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        req,
        ("open".to_owned(), Some("booking_in_flight".to_owned()))
    );
    // Campaigns stopped at once (the saga will void its hold); nothing touched at Stripe.
    let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    let c = env.sandbox.sandbox.counters();
    assert_eq!(
        (
            c.payment_methods_detached,
            c.customers_deleted,
            c.emails_sent
        ),
        (0, 0, 0)
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM users WHERE id = $1", user).await,
        1
    );

    // The saga voids the hold; the erasure, due again, finishes.
    sqlx::query(
        "UPDATE bookings SET status = 'failed', canceled_at = now(), payment_intent_status = 'canceled',
                failure_code = 'campaign_not_active' WHERE id = $1",
    )
    .bind(booking)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE fleet_jobs SET run_at = now() WHERE id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(env.finished(job).await.state, JobState::Completed);
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM users WHERE id = $1", user).await,
        0
    );
    assert_eq!(env.sandbox.sandbox.counters().customers_deleted, 1);
    assert_eq!(domain_violations(&pool).await, vec![]);
    env.stop().await;
}

/// Makes the first write that fires trigger `on` (e.g. `AFTER DELETE ON users FOR EACH
/// STATEMENT`) fail, as a crash at that point would: its transaction rolls back and the job's
/// next attempt starts again. Later writes pass.
async fn fail_once(pool: &PgPool, tag: &str, on: &str) {
    // A sequence is not transactional: the count survives the rollback it causes.
    for sql in [
        format!("CREATE SEQUENCE test_crash_{tag}_seq"),
        format!(
            "CREATE FUNCTION test_crash_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('test_crash_{tag}_seq') = 1 THEN
                     RAISE EXCEPTION 'simulated crash: {tag}';
                 END IF;
                 RETURN NULL;
             END $$"
        ),
        format!("CREATE TRIGGER test_crash_{tag} {on} EXECUTE FUNCTION test_crash_{tag}()"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_erasure_crashed_at_any_step_finishes_on_its_rerun_and_does_nothing_twice() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let sb = env.sandbox.sandbox.clone();
    let s = env.seed(3).await;
    with_history(&pool, &s).await;
    // An earlier run detached the first card and deleted its customer, then died before
    // recording anything: Stripe's "already gone" must read as done.
    let (pm, cus): (String, String) = sqlx::query_as(
        "SELECT stripe_payment_method_id, stripe_customer_id FROM payment_methods
         WHERE user_id = $1 ORDER BY created_at, id LIMIT 1",
    )
    .bind(s.user_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let stripe = |r: reqwest::RequestBuilder| r.bearer_auth("sk_test_fleet").send();
    let base = &env.sandbox.base_url;
    let detached = stripe(
        http.post(format!("{base}/v1/payment_methods/{pm}/detach"))
            .header("Idempotency-Key", "an-earlier-run"),
    )
    .await
    .unwrap();
    let deleted = stripe(http.delete(format!("{base}/v1/customers/{cus}")))
        .await
        .unwrap();
    assert_eq!(
        (detached.status().as_u16(), deleted.status().as_u16()),
        (200, 200)
    );
    // Step 2 fails: Stripe down for a while (every call refused, nothing done).
    sb.set_outage(Provider::Stripe, Duration::from_millis(700), 503);
    // Step 3 fails after Stripe is back: Resend down longer.
    sb.set_outage(Provider::Resend, Duration::from_millis(1500), 503);
    // Step 4 fails once: the final transaction rolls back (a crash between the email and the
    // delete).
    fail_once(
        &pool,
        "delete_user",
        "AFTER DELETE ON users FOR EACH STATEMENT",
    )
    .await;
    let opened = env
        .ask(RequestKind::Erasure, s.user_id, false)
        .await
        .unwrap();
    let job = env.finished(opened.job_id.unwrap()).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    // Each crash happened, in order, and each was followed by a rerun.
    let history = format!("{:?}", job.errors);
    for step in [
        "stripe ambiguous: HTTP 503",
        "resend send ambiguous: HTTP 503",
        "simulated crash: delete_user",
    ] {
        assert!(history.contains(step), "{step} not in {history}");
    }
    let c = sb.counters();
    assert_eq!(
        (c.payment_methods_detached, c.customers_deleted),
        (2, 2),
        "{c:#?}"
    );
    let key = format!("account-erased/{}", opened.request_id.unwrap());
    assert_eq!(c.emails_by_idempotency_key.get(&key), Some(&1), "{c:#?}");
    // Half was done before the job ran: it reads as done, and the outcome counts every card and
    // customer as gone.
    let outcome: Value = sqlx::query_scalar("SELECT outcome FROM data_requests WHERE id = $1")
        .bind(opened.request_id.unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (
            &outcome["cards_detached_at_stripe"],
            &outcome["customers_deleted_at_stripe"]
        ),
        (&Value::from(2), &Value::from(2))
    );
    assert_eq!(domain_violations(&pool).await, vec![]);
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM users WHERE id = $1", s.user_id).await,
        0
    );
    env.stop().await;
}

#[tokio::test]
async fn an_export_sends_one_document_of_everything_held_and_audits_each_passport_read() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let sb = env.sandbox.sandbox.clone();
    let s = env.seed(4).await;
    let booking = with_history(&pool, &s).await;
    // Resend down at first: the document is assembled and sealed once, then sent when it is
    // back (the same bytes: Resend refuses a key reused with another payload). Two crashes:
    // storing the sealed document fails once (its passport-read audit rolls back with it), and
    // the final transaction fails once after the send (the re-run sends nothing).
    sb.set_outage(Provider::Resend, Duration::from_millis(600), 503);
    fail_once(
        &pool,
        "store_document",
        "AFTER UPDATE ON data_requests FOR EACH ROW WHEN (NEW.document_enc IS NOT NULL)",
    )
    .await;
    fail_once(
        &pool,
        "complete_export",
        "AFTER UPDATE ON data_requests FOR EACH ROW WHEN (NEW.status = 'completed')",
    )
    .await;
    let opened = env
        .ask(RequestKind::Export, s.user_id, false)
        .await
        .unwrap();
    let again = env
        .ask(RequestKind::Export, s.user_id, false)
        .await
        .unwrap();
    assert!(again.duplicate);
    let request = opened.request_id.unwrap();
    let job = env.finished(opened.job_id.unwrap()).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    let history = format!("{:?}", job.errors);
    for step in [
        "simulated crash: store_document",
        "resend send ambiguous: HTTP 503",
        "simulated crash: complete_export",
    ] {
        assert!(history.contains(step), "{step} not in {history}");
    }

    let key = format!("data-export/{request}");
    let c = sb.counters();
    assert_eq!(c.emails_by_idempotency_key.get(&key), Some(&1), "{c:#?}");
    let files = sb.email_attachments(&key);
    assert_eq!(files.len(), 1);
    assert!(files[0].0.starts_with("parker-flight-data-") && files[0].0.ends_with(".json"));
    let doc: Value = serde_json::from_slice(&files[0].1).unwrap();
    let seed = CampaignSeed::new(4);
    assert_eq!(doc["schema"], "parker-flight/data-export/v1");
    assert_eq!(doc["account"]["email"], seed.email);
    assert_eq!(doc["traveler_profiles"][0]["full_name"], seed.full_name);
    assert_eq!(
        doc["traveler_profiles"][0]["passport_number"],
        seed.passport
    );
    assert_eq!(doc["payment_methods"].as_array().unwrap().len(), 2);
    assert!(
        !files_contain(&files[0].1, "pm_card"),
        "no Stripe ids in the export"
    );
    assert_eq!(doc["campaigns"][0]["id"], s.campaign_id.to_string());
    assert_eq!(doc["consent"][0]["campaign_id"], s.campaign_id.to_string());
    assert!(doc["consent"][0]["consent_at"].is_string());
    let b = &doc["bookings"][0];
    assert_eq!(
        (&b["id"], &b["pnr"], &b["total_amount"]),
        (
            &Value::from(booking.to_string()),
            &Value::from("QX7PNR"),
            &Value::from("412.30")
        )
    );
    assert_eq!(b["airline_changes"][0]["id"], "aic_kept");
    assert_eq!(doc["notifications"][0]["kind"], "booking-confirmed");
    // Who read the passport and why is part of what they get, and of the audit trail.
    let reads: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata FROM audit_log WHERE action = 'pii.read' AND resource_id = $1::text",
    )
    .bind(s.profile_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        reads.len(),
        1,
        "one read, by the run that assembled it: {reads:#?}"
    );
    assert_eq!(reads[0]["purpose"], "data_export");
    assert_eq!(reads[0]["job_id"], opened.job_id.unwrap());
    assert!(!reads[0].to_string().contains(&seed.passport));
    // Done: the sealed copy is gone, the delivery audited with counts only.
    let r: (String, Option<Vec<u8>>, Value) =
        sqlx::query_as("SELECT status, document_enc, outcome FROM data_requests WHERE id = $1")
            .bind(request)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((r.0.as_str(), r.1), ("completed", None));
    assert_eq!(r.2["counts"]["bookings"], 1);
    let delivered: Vec<Value> =
        sqlx::query_scalar("SELECT metadata FROM audit_log WHERE action = 'export.delivered'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(delivered.len(), 1);
    assert!(!delivered[0].to_string().contains(&seed.email));
    env.stop().await;
}

fn files_contain(bytes: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(bytes).contains(needle)
}

/// The product's signed request: POSTs `body` signed with `secret` (now) to `/webhooks/product`.
async fn product_request(
    http: &reqwest::Client,
    base: &str,
    secret: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = http
        .post(format!("{base}/webhooks/product"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        let t = chrono::Utc::now().timestamp();
        req = req.header(
            "Parker-Signature",
            fleet::webhooks::signature::header(secret, t, body.as_bytes()),
        );
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn ingress(env: &Env, product: Vec<String>) -> axum::Router {
    fleet::webhooks::router(
        env.pool().clone(),
        env.queue.clone(),
        fleet::webhooks::WebhookSecrets {
            stripe: vec!["whsec_s".into()],
            duffel: vec!["whsec_d".into()],
            product,
        },
        64 << 10,
    )
}

#[tokio::test]
async fn the_products_signed_request_opens_one_request_per_traveler_and_refuses_bad_ones() {
    let env = Env::start().await;
    let pool = env.pool().clone();
    let s = env.seed(5).await;
    let (base, stop) = serve(ingress(&env, vec!["whsec_product".into()])).await;
    let http = reqwest::Client::new();
    let erase = |id: &str, user: Uuid| {
        format!(r#"{{"id":"{id}","type":"account.erasure_requested","user_id":"{user}"}}"#)
    };
    let secret = Some("whsec_product");

    // Refused before anything is written: unsigned, badly signed, malformed, unknown traveler.
    let (status, body) = product_request(&http, &base, None, &erase("dsr_1", s.user_id)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_signature"))
    );
    let (status, body) = product_request(
        &http,
        &base,
        Some("whsec_wrong"),
        &erase("dsr_1", s.user_id),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_signature"))
    );
    let bad_type = format!(
        r#"{{"id":"dsr_1","type":"account.nuke","user_id":"{}"}}"#,
        s.user_id
    );
    let (status, body) = product_request(&http, &base, secret, &bad_type).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_request_type"))
    );
    let (status, body) =
        product_request(&http, &base, secret, &erase("dsr_0", Uuid::new_v4())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_traveler"))
    );
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM data_requests WHERE $1 IS NOT NULL",
            s.user_id
        )
        .await,
        0
    );

    // Accepted once; the product's retry and a second id while it is open are the same request.
    let (status, first) = product_request(&http, &base, secret, &erase("dsr_1", s.user_id)).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (202, Some("accepted")),
        "{first}"
    );
    let (status, retry) = product_request(&http, &base, secret, &erase("dsr_1", s.user_id)).await;
    assert_eq!((status, retry["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(retry["request_id"], first["request_id"]);
    let (status, second) = product_request(&http, &base, secret, &erase("dsr_2", s.user_id)).await;
    assert_eq!((status, &second["request_id"]), (200, &first["request_id"]));
    let reused = format!(
        r#"{{"id":"dsr_1","type":"account.export_requested","user_id":"{}"}}"#,
        s.user_id
    );
    let (status, body) = product_request(&http, &base, secret, &reused).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("request_id_reused"))
    );

    let job = env.finished(first["job_id"].as_i64().unwrap()).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    let source: (String, String) =
        sqlx::query_as("SELECT source, requested_by FROM data_requests WHERE user_id = $1")
            .bind(s.user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(source, ("product".to_owned(), "product".to_owned()));
    // After the erasure: the same id is still that request; a new one is refused as gone.
    let (status, retry) = product_request(&http, &base, secret, &erase("dsr_1", s.user_id)).await;
    assert_eq!(
        (status, retry["request_status"].as_str()),
        (200, Some("completed"))
    );
    let (status, body) = product_request(&http, &base, secret, &erase("dsr_3", s.user_id)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("already_erased"))
    );
    stop.cancel();

    // No secret configured: 503, so the product retries once it is.
    let (base, stop) = serve(ingress(&env, Vec::new())).await;
    let (status, body) = product_request(&http, &base, secret, &erase("dsr_9", s.user_id)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("not_configured"))
    );
    stop.cancel();
    env.stop().await;
}
