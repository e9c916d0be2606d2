//! Shared helpers for the integration tests: scratch databases, fast worker settings, test
//! job kinds, and waiting on job state without fixed sleeps.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use fleet::{
    config::WorkerSettings,
    queue::{self, ClaimedJob, FetchParams, JobRecord, JobState, OutcomeRow, QueueError},
    testkit::ScratchDb,
    worker::Outcome,
    Registry, Worker,
};
use jobs::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ─── the binary as a process ─────────────────────────────────────────────────────────────────

pub const BIN: &str = env!("CARGO_BIN_EXE_fleet");
/// A `fleet worker` process on `url` with short lease cadences, the test keyring and `extra_env`.
pub fn spawn_worker(url: &str, extra_env: &[(&str, &str)]) -> std::process::Child {
    let mut c = std::process::Command::new(BIN);
    c.arg("worker")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("FLEET_PII_KEYS", TEST_PII_KEYS)
        .env("FLEET_WORKER__LEASE", "2s")
        .env("FLEET_WORKER__HEARTBEAT_INTERVAL", "500ms")
        .env("FLEET_WORKER__RESCUE_INTERVAL", "500ms")
        .env("FLEET_WORKER__POLL_INTERVAL", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().expect("spawn fleet worker")
}

/// Sends `sig` to `child`.
pub fn signal(child: &std::process::Child, sig: libc::c_int) {
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Waits up to `within` for `child` to exit (killing it and panicking otherwise).
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a test that needs an outside tool (`pgbouncer`, `chromium`) can run. A tool that is
/// missing skips the test, saying so on stderr, so `cargo test` passes on a fresh machine;
/// unless `TESTS_REQUIRE` (a comma-separated list, set by `.ci/run`) names it, where its
/// absence fails the test with how to install it.
pub fn tool_available(tool: &str, found: bool, install: &str) -> bool {
    if found {
        return true;
    }
    let required = std::env::var("TESTS_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|t| t.trim() == tool);
    assert!(
        !required,
        "TESTS_REQUIRE names {tool}, and it is not installed: {install}"
    );
    // Once per test binary, and past the test harness's capture (a skipped test passes, and
    // a passing test's own output is never shown).
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap();
    if !said.iter().any(|t| t == tool) {
        said.push(tool.to_owned());
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the tests here that need {tool} are skipped: it is not installed \
             ({install}; .ci/run installs it and sets TESTS_REQUIRE so that its absence \
             fails)"
        );
    }
    false
}

/// The tests' keyring (two versions, v2 newest).
pub const TEST_PII_KEYS: &str = "v2:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=,v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Handler dependencies whose real provider clients point at the sandbox at `sandbox_url`
/// (e.g. `RunningSandbox::base_url`), with the test keyring.
pub fn sandbox_deps(sandbox_url: &str) -> anyhow::Result<jobs::Deps> {
    let providers = jobs::providers::ProvidersConfig::all_at(
        sandbox_url,
        "sk_test_fleet",
        "duffel_test_fleet",
        "re_test_fleet",
        "Parker Flight <bookings@parkerflight.example>",
    );
    let keyring = jobs::pii::Keyring::parse(TEST_PII_KEYS)?;
    jobs::Deps::from_config(&providers, keyring).map_err(|e| anyhow::anyhow!(e.0))
}

/// `deps` as the extensions a worker gives its handlers.
pub fn extensions_of(deps: jobs::Deps) -> jobs::Extensions {
    jobs::Extensions::new().with(deps)
}

/// The registry a `fleet` process runs (every kind, embedded default settings).
pub fn fleet_registry() -> Registry {
    let settings = fleet::config::Settings::from_sources(None, &[]).unwrap();
    fleet::fleet_registry(&settings).unwrap()
}

pub async fn db() -> ScratchDb {
    ScratchDb::new("fleet_test")
        .await
        .expect("scratch database")
}

/// `J`'s code defaults with retries a test can wait for: backoff from 100 ms, at most 300 ms.
#[allow(dead_code)]
pub fn quick_retries<J: Job>() -> jobs::KindDefaults {
    jobs::KindDefaults {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(300),
        ..J::defaults()
    }
}

/// Short lease and cadences so tests observe rescues and promotions quickly.
pub fn fast_settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 4,
        prefetch: 0,
        poll_interval: Duration::from_millis(100),
        lease: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(400),
        rescue_interval: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(5),
        ..WorkerSettings::default()
    }
}

pub struct RunningWorker {
    pub handle: JoinHandle<fleet::worker::DrainReport>,
    pub shutdown: CancellationToken,
    pub id: String,
}

impl RunningWorker {
    pub async fn stop(self) -> fleet::worker::DrainReport {
        self.shutdown.cancel();
        self.handle.await.expect("worker task")
    }
}

pub fn start_worker(pool: &PgPool, registry: Arc<Registry>, cfg: WorkerSettings) -> RunningWorker {
    start_worker_with(pool, registry, cfg, jobs::Extensions::default())
}

/// A worker whose handlers get `extensions` (e.g. [`extensions_of`] the sandbox's deps).
pub fn start_worker_with(
    pool: &PgPool,
    registry: Arc<Registry>,
    cfg: WorkerSettings,
    extensions: jobs::Extensions,
) -> RunningWorker {
    let w = Worker::new(pool.clone(), registry, cfg).with_extensions(extensions);
    let id = w.id().to_owned();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(w.run(shutdown.clone()));
    RunningWorker {
        handle,
        shutdown,
        id,
    }
}

/// A worker a test steps ([`Worker::work_one`]) and the queue that feeds it, both on a manual
/// clock that starts at the host's time: a retry, a schedule or a lapsed lease becomes due when
/// the test advances the clock, not when time passes.
pub fn stepped_worker(
    pool: &PgPool,
    registry: Arc<Registry>,
) -> (Worker, fleet::Queue, fleet::clock::ManualClock) {
    let clock = fleet::clock::ManualClock::starting_now();
    let worker =
        Worker::new(pool.clone(), registry.clone(), fast_settings()).with_clock(clock.clone());
    let queue = fleet::Queue::new(pool.clone(), registry).with_clock(clock.clone());
    (worker, queue, clock)
}

pub async fn job(pool: &PgPool, id: i64) -> JobRecord {
    let mut c = pool.acquire().await.unwrap();
    queue::job_get(&mut *c, id)
        .await
        .unwrap()
        .expect("job exists")
}

/// Polls until `pred` holds for the job, or panics after `within`.
pub async fn wait_for(
    pool: &PgPool,
    id: i64,
    within: Duration,
    what: &str,
    pred: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let j = job(pool, id).await;
        if pred(&j) {
            return j;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("job {id} did not reach {what} within {within:?}; last seen: {j:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` until it holds, or panics after `within` naming `what`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("{what} did not happen within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of this database's backends wait on a lock while running a statement whose text
/// matches `query_like` (a `LIKE` pattern): how a test sees that a statement it started is
/// blocked on a lock the test holds.
pub async fn lock_waiters(pool: &PgPool, query_like: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1",
    )
    .bind(query_like)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Ends server process `pid` (`pg_terminate_backend`: what a restart, a proxy's reset or an
/// operator does to a session) and waits until it is gone from `pg_stat_activity`, so the
/// client's next use of that session meets the end.
pub async fn end_backend(admin: &PgPool, pid: i32) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(ended, "backend {pid} ended");
    wait_until(Duration::from_secs(10), "the backend gone", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(admin)
            .await
            .unwrap();
        left == 0
    })
    .await;
}

/// The database's clock: what the queue's statements call `now()`. Tests that state "as if
/// it were later" pass this plus an offset instead of sleeping.
pub async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How many jobs the queue holds, in any state.
pub async fn job_count(pool: &PgPool) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    queue::job_count_by_state(&mut *conn, None)
        .await
        .unwrap()
        .values()
        .sum()
}

/// Claims one job through the queue's SQL (a `work_one` step without a worker).
pub async fn claim_one(conn: &mut PgConnection, lease: Duration) -> ClaimedJob {
    let mut v = queue::job_fetch_available(
        conn,
        &FetchParams {
            only_kinds: None,
            queues: None,
            skip_kinds: &[],
            limited_kinds: &[],
            limit: 1,
            owner: "test-owner",
            lease,
            now: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(v.len(), 1, "expected one claimable job");
    v.remove(0)
}

/// Inserts a ready job of any kind with any args straight through the queue's SQL, bypassing
/// the enqueue API's checks: for tests that need what a buggy or older producer would leave
/// (an unknown kind, args that do not fit, personal data in a payload).
pub async fn insert_unchecked(pool: &PgPool, kind: &str, args: serde_json::Value) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    let row = queue::JobInsert {
        kind: kind.to_owned(),
        queue: "default".to_owned(),
        args,
        priority: 0,
        run_at: None,
        max_attempts: 5,
        idempotency_key: None,
        trace_context: None,
        parent_id: None,
        limit_key: None,
        limited: false,
    };
    queue::job_insert_many(&mut conn, &[row], None)
        .await
        .unwrap()[0]
        .id
}

/// The completion of claim `c`, keeping its key for `key_window` afterwards.
pub fn completion(c: &ClaimedJob, key_window: Duration) -> OutcomeRow {
    Outcome::completed(c, key_window).row()
}

/// Completes claim `c` (no key window), fenced on the claim.
pub async fn complete(conn: &mut PgConnection, c: &ClaimedJob) -> Result<(), QueueError> {
    queue::job_set_outcome(conn, completion(c, Duration::ZERO), None).await
}

/// Index tuples read from index `name` so far, as statistics last flushed them
/// ([`flush_stats`] on the connection that read, in the transaction before).
pub async fn index_tuples_read(conn: &mut sqlx::PgConnection, name: &str) -> i64 {
    sqlx::query_scalar("SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = $1")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// [`index_tuples_read`] of the plain claim's ready index.
pub async fn ready_index_tuples_read(conn: &mut sqlx::PgConnection) -> i64 {
    index_tuples_read(conn, "fleet_jobs_fetch_available_idx").await
}

/// Asks `conn`'s backend to flush its statistics at the end of this transaction, so the next
/// read of `pg_stat_user_indexes` counts what it did.
pub async fn flush_stats(conn: &mut sqlx::PgConnection) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(conn)
        .await
        .unwrap();
}

pub async fn wait_state(pool: &PgPool, id: i64, state: JobState, within: Duration) -> JobRecord {
    wait_for(pool, id, within, state.as_str(), |j| j.state == state).await
}

/// Succeeds on attempt `succeed_on`, fails (retryable) before.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flaky {
    pub succeed_on: i32,
}
impl Job for Flaky {
    const KIND: &'static str = "test.flaky";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.attempt < self.succeed_on {
            return Err(JobError::retryable(format!(
                "flaky failure on attempt {}",
                ctx.attempt
            )));
        }
        Ok(())
    }
}

/// Always fails, retryably.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlwaysFails {}
impl Job for AlwaysFails {
    const KIND: &'static str = "test.always_fails";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        Err(JobError::retryable(format!(
            "boom on attempt {}",
            ctx.attempt
        )))
    }
}

/// Panics.
#[derive(Debug, Serialize, Deserialize)]
pub struct Panics {}
impl Job for Panics {
    const KIND: &'static str = "test.panics";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        panic!("handler bug: index out of range");
    }
}

/// Discards itself (fatal).
#[derive(Debug, Serialize, Deserialize)]
pub struct Discards {}
impl Job for Discards {
    const KIND: &'static str = "test.discards";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Err(JobError::fatal("campaign no longer exists"))
    }
}

/// Snoozes every time.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snoozes {}
impl Job for Snoozes {
    const KIND: &'static str = "test.snoozes";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Err(JobError::snooze(
            Duration::from_secs(30),
            "rate limited until reset",
        ))
    }
}

/// Sleeps, ignoring cancellation (so only the engine's abort can stop it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Stubborn {
    pub ms: u64,
}
impl Job for Stubborn {
    const KIND: &'static str = "test.stubborn";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

/// Needs a numeric `n`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strict {
    pub n: u32,
}
impl Job for Strict {
    const KIND: &'static str = "test.strict";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Serves `router` on a free loopback port; returns its base URL and the token that stops it.
pub async fn serve(router: axum::Router) -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(fleet::serve::run(
        "127.0.0.1:0".parse().unwrap(),
        router,
        stop.clone(),
        Some(tx),
    ));
    (format!("http://{}", rx.await.unwrap()), stop)
}

// ─── webhooks ────────────────────────────────────────────────────────────────────────────────

/// What a webhook receiver got: its path (`stripe` or `duffel`), the headers and the raw body.
pub type Delivery = (String, axum::http::HeaderMap, axum::body::Bytes);

/// A webhook receiver on a free loopback port, serving `/stripe` and `/duffel`: it answers 500
/// to the first `fail_first` deliveries (so the sender retries), then 200, forwarding each
/// accepted delivery. Returns its base URL.
pub async fn webhook_receiver(
    fail_first: usize,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let handler = |path: &'static str| {
        let tx = tx.clone();
        let seen = seen.clone();
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
            if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            let _ = tx.send((path.to_string(), headers, body));
            axum::http::StatusCode::OK
        }
    };
    let app = axum::Router::new()
        .route("/stripe", axum::routing::post(handler("stripe")))
        .route("/duffel", axum::routing::post(handler("duffel")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// (rows in `webhook_events`, rows in `fleet_jobs`).
pub async fn webhook_and_job_counts(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_events), (SELECT count(*) FROM fleet_jobs)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

// ─── a faulty network ────────────────────────────────────────────────────────────────────────

/// What a [`FaultyProxy`] does to the bytes between the fleet and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes them.
    None,
    /// Holds them: connections stay open, nothing moves either way, nothing is reset (what a
    /// dropped route or a stuck NAT does). New connections are accepted and left waiting.
    /// Held bytes flow again when the fault ends, as TCP's retransmissions would deliver them.
    BlackHole,
    /// Resets every connection (RST) and every one that arrives.
    Reset,
    /// Delays every chunk by this long, each way.
    Slow(Duration),
}

/// A TCP proxy of the test's own on loopback, between the fleet and Postgres, whose [`Fault`]
/// the test switches. Stops with the test's runtime.
pub struct FaultyProxy {
    /// Where to point the fleet.
    pub addr: std::net::SocketAddr,
    fault: Arc<tokio::sync::watch::Sender<Fault>>,
}

impl FaultyProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(tokio::sync::watch::channel(Fault::None).0);
        let f = fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = f.subscribe();
                if *mode.borrow() == Fault::Reset {
                    reset(client);
                    continue;
                }
                tokio::spawn(proxy_one(client, upstream, mode));
            }
        });
        Self { addr, fault }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

#[allow(deprecated)] // SO_LINGER 0: the close is a reset, at once (no blocking)
fn reset(s: tokio::net::TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Waits while the fault holds bytes; `false` once the connection must be reset.
async fn may_move(mode: &mut tokio::sync::watch::Receiver<Fault>) -> bool {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Fault::None => return true,
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                return true;
            }
            Fault::Reset => return false,
            Fault::BlackHole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn proxy_one(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    mut mode: tokio::sync::watch::Receiver<Fault>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A black hole swallows the handshake too: connect upstream only when bytes may move.
    if !may_move(&mut mode).await {
        return reset(client);
    }
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let (mut client, mut server) = (client, server);
    let (mut cb, mut sb) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        if !may_move(&mut mode).await {
            reset(client);
            reset(server);
            return;
        }
        // Read from whichever side speaks, unless the fault changes first.
        let (from_client, n) = tokio::select! {
            r = client.read(&mut cb) => (true, r.unwrap_or(0)),
            r = server.read(&mut sb) => (false, r.unwrap_or(0)),
            _ = mode.changed() => continue,
        };
        if n == 0 {
            return;
        }
        // What was read in flight when a fault began waits for its end.
        if !may_move(&mut mode).await {
            reset(client);
            reset(server);
            return;
        }
        let written = if from_client {
            server.write_all(&cb[..n]).await
        } else {
            client.write_all(&sb[..n]).await
        };
        if written.is_err() {
            return;
        }
    }
}

/// Seeds `seed`'s user, traveler, card and campaign, PII sealed under `TEST_PII_KEYS`.
#[allow(dead_code)]
pub async fn seed_sealed(pool: &PgPool, seed: &jobs::seed::CampaignSeed) -> jobs::seed::Seeded {
    let keys = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    jobs::seed::seed_campaign(&jobs::Db::from(pool.clone()), &keys, seed)
        .await
        .unwrap()
}

/// A seeded traveler's campaign with a booking whose card is held (`authorized`,
/// `requires_capture`, 412.30 USD, offer `off_held`), as a saga leaves it between its hold and
/// its capture, and a `booking_attempt` job for it (`available`; set its state as the test
/// needs). Returns (booking id, job id).
#[allow(dead_code)]
pub async fn booking_holding_a_card(pool: &PgPool) -> (uuid::Uuid, i64) {
    let s = seed_sealed(pool, &jobs::seed::CampaignSeed::new(1)).await;
    let booking: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO bookings (campaign_id, duffel_offer_id, stripe_payment_intent_id, total_amount,
                               currency, status, payment_intent_status, authorized_at, offer_checked_at)
         VALUES ($1, 'off_held', 'pi_held', 412.30, 'USD', 'authorized', 'requires_capture', now(), now())
         RETURNING id",
    )
    .bind(s.campaign_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let job = insert_unchecked(
        pool,
        "booking_attempt",
        serde_json::json!({"campaign_id": s.campaign_id, "offer_id": "off_held"}),
    )
    .await;
    (booking, job)
}
