//! The operator console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver) against the console served the way `fleet serve` serves it (the admin router
//! with the console, the hardened listener), on a scratch database, with in-process workers and
//! the provider sandbox.
//!
//! These tests need `chromium` and `chromedriver` (`apt-get install -y chromium
//! chromium-driver`; `.ci/run` installs them). Without them they fail, saying so.
//!
//! With `FLEET_CONSOLE_SCREENSHOTS=docs/console` they also save a screenshot of each main page
//! there (docs/console.md).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use common::*;
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use fleet::{
    console::Console,
    queue::{self, JobState},
    testkit::ScratchDb,
    Queue, Registry,
};
use jobs::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The operator's and the viewer's passwords (hashed with the console's own Argon2 at start).
const ALICE_PW: &str = "alice-operator-pw-1";
const VIV_PW: &str = "viv-viewer-pw-22";
/// The trace UI the test console links to.
const TRACING_URL: &str = "https://traces.example.test/trace/{trace_id}";

// ─── a browser ──────────────────────────────────────────────────────────────────────────────

/// Whether Debian's Chromium and chromedriver are installed; without them the console's
/// browser tests skip, saying so (or fail, under `.ci/run`: see [`tool_available`]).
fn browser_available() -> bool {
    tool_available(
        "chromium",
        Path::new("/usr/bin/chromedriver").exists()
            && ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .any(|p| Path::new(p).exists()),
        "apt-get install -y chromium chromium-driver",
    )
}

fn chromium_binary() -> PathBuf {
    let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "the console's browser tests need Chromium, and none is installed (looked for {}): \
                 `apt-get install -y chromium chromium-driver` (.ci/run does this)",
                candidates.join(", ")
            )
        })
}

fn chromedriver_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromedriver");
    assert!(
        p.exists(),
        "the console's browser tests need chromedriver, and /usr/bin/chromedriver is missing: \
         `apt-get install -y chromium-driver` (.ci/run does this)"
    );
    p
}

/// Headless Chromium with a fresh profile, driven by its own chromedriver process group.
struct Browser {
    c: Client,
    driver: Child,
    profile: PathBuf,
    /// The console's base URL (`http://127.0.0.1:port`).
    base: String,
}

impl Browser {
    async fn open(base: &str) -> Browser {
        let chromium = chromium_binary();
        let driver_bin = chromedriver_binary();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let profile = std::env::temp_dir().join(format!(
            "fleet-console-chromium-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut cmd = Command::new(driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("start chromedriver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--force-device-scale-factor=1", "--window-size=1360,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + SECS(20);
        let c = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("chromedriver on {url} did not start Chromium: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Browser {
            c,
            driver,
            profile,
            base: base.to_owned(),
        }
    }

    async fn goto(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    /// The element matching `css`, waiting up to 10 s for it.
    async fn el(&self, css: &str) -> Element {
        self.c
            .wait()
            .at_most(SECS(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"))
    }

    /// The text of the element matching `css`. The overview's live region replaces itself on
    /// every refresh, so an element found just before a swap can be gone when it is read:
    /// find it again.
    async fn text(&self, css: &str) -> String {
        for _ in 0..50 {
            match self.el(css).await.text().await {
                Ok(t) => return t,
                Err(e) if is_stale(&e) => continue,
                Err(e) => panic!("text of {css:?}: {e}"),
            }
        }
        panic!("{css:?} kept being replaced while it was read")
    }

    async fn main_text(&self) -> String {
        self.text("main").await
    }

    async fn has(&self, css: &str) -> bool {
        self.c.find(Locator::Css(css)).await.is_ok()
    }

    async fn click(&self, css: &str) {
        for _ in 0..50 {
            match self.el(css).await.click().await {
                Ok(_) => return,
                Err(e) if is_stale(&e) => continue,
                Err(e) => panic!("click on {css:?}: {e}"),
            }
        }
        panic!("{css:?} kept being replaced while it was clicked")
    }

    /// Types `value` into the field; retried when the page replaced the field meanwhile (a
    /// form re-rendered by the response that was still arriving: both pages read "Sign in").
    async fn fill(&self, css: &str, value: &str) {
        for _ in 0..20 {
            let e = self.el(css).await;
            match e.clear().await {
                Ok(()) => {}
                Err(err) if is_stale(&err) => continue,
                Err(err) => panic!("clear {css:?}: {err}"),
            }
            match e.send_keys(value).await {
                Ok(()) => return,
                Err(err) if is_stale(&err) => continue,
                Err(err) => panic!("type into {css:?}: {err}"),
            }
        }
        panic!("{css:?} kept being replaced while it was filled")
    }

    /// The button whose text is `label` inside `scope`.
    async fn click_button(&self, scope: &str, label: &str) {
        let buttons = self
            .c
            .find_all(Locator::Css(&format!("{scope} button")))
            .await
            .unwrap();
        for b in buttons {
            if b.text().await.unwrap().trim() == label {
                b.click().await.unwrap();
                return;
            }
        }
        panic!("no button {label:?} in {scope}");
    }

    /// Waits until the page's `<h1>` contains `what`.
    async fn wait_h1(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + SECS(10);
        loop {
            if let Ok(h) = self.c.find(Locator::Css("h1")).await {
                if h.text().await.unwrap_or_default().contains(what) {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no <h1> with {what:?}; page: {}",
                    self.c.source().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of `css` is `want`. The live region shows what its last refresh
    /// read, so a figure written just before the page was opened may appear one refresh later.
    async fn wait_text(&self, css: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + SECS(10);
        loop {
            let got = self.text(css).await;
            if got == want {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{css:?} reads {got:?}, not {want:?}; the kinds table: {}",
                    self.text("#kinds").await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's error notice says `why`: the answer to the form just posted has
    /// arrived (a fresh sign-in page has no notice, so its `<h1>` alone cannot tell).
    async fn wait_refusal(&self, why: &str) {
        let deadline = tokio::time::Instant::now() + SECS(10);
        loop {
            let got = if self.has(".notice-error").await {
                self.text(".notice-error").await
            } else {
                String::new()
            };
            if got.contains(why) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no refusal {why:?}; the notice reads {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cells' texts of the row of `table` (a CSS selector) whose first cell reads `first`;
    /// waits for the row up to 10 s (a refresh may swap it out), then panics naming the table.
    async fn row(&self, table: &str, first: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + SECS(10);
        loop {
            let got = self
                .c
                .execute(
                    "const r = [...document.querySelectorAll(arguments[0] + ' tbody tr')]\
                     .find(r => r.cells[0] && r.cells[0].textContent.trim() === arguments[1]);\
                     return r ? [...r.cells].map(c => c.textContent.trim()) : null;",
                    vec![json!(table), json!(first)],
                )
                .await
                .unwrap();
            if let Some(cells) = got.as_array() {
                return cells
                    .iter()
                    .map(|c| c.as_str().unwrap_or_default().to_owned())
                    .collect();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no row {first:?} in {table:?}: {}", self.text(table).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    async fn sign_in(&self, user: &str, password: &str) {
        self.goto("/ui/login").await;
        self.fill("#username", user).await;
        self.fill("#password", password).await;
        self.click(".login button[type=submit]").await;
        self.wait_h1("Overview").await;
    }

    /// From the overview: choose `kind` and press `button` of "Act on a kind".
    async fn act_on_kind(&self, kind: &str, button: &str) {
        self.goto("/ui/").await;
        self.el("#act-kind")
            .await
            .select_by_value(kind)
            .await
            .unwrap();
        self.click_button("section.act", button).await;
    }

    /// The page's CSRF token (from its sign-out form).
    async fn csrf(&self) -> String {
        self.el("form[action='/ui/logout'] input[name=csrf]")
            .await
            .attr("value")
            .await
            .unwrap()
            .expect("a csrf value")
    }

    /// POSTs `body` (form-encoded) from inside the page, with its cookies; returns the status.
    async fn post_from_page(&self, path: &str, body: &str) -> u64 {
        let v = self
            .c
            .execute(
                "return fetch(arguments[0], {method: 'POST', headers: \
                 {'content-type': 'application/x-www-form-urlencoded'}, body: arguments[1], \
                 redirect: 'manual'}).then(r => r.status)",
                vec![json!(path), json!(body)],
            )
            .await
            .unwrap();
        v.as_u64().unwrap()
    }

    /// With `FLEET_CONSOLE_SCREENSHOTS=DIR`: the whole page as `DIR/name.png`.
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("FLEET_CONSOLE_SCREENSHOTS") else {
            return;
        };
        let h = self
            .c
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 4000);
        // At the window's width (1360 unless a test set another), the whole page's height.
        let (_, _, width, height) = self.c.get_window_rect().await.unwrap();
        self.c
            .set_window_size(width as u32, h as u32 + 90)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = self.c.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
        self.c
            .set_window_size(width as u32, height as u32)
            .await
            .unwrap();
    }

    async fn close(self) {
        let c = self.c.clone();
        let _ = c.close().await;
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The process group this test started: chromedriver and the Chromium it launched.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

// ─── the console under test ─────────────────────────────────────────────────────────────────

fn hashes() -> &'static (String, String) {
    static H: OnceLock<(String, String)> = OnceLock::new();
    H.get_or_init(|| {
        (
            fleet::console::hash_password(ALICE_PW).unwrap(),
            fleet::console::hash_password(VIV_PW).unwrap(),
        )
    })
}

/// The settings `fleet serve` would load with alice (operator) and viv (viewer) configured
/// through the environment, a quick refresh and a tracing UI.
fn settings() -> fleet::config::Settings {
    let (alice, viv) = hashes();
    let env: Vec<(String, String)> = [
        ("FLEET_CONSOLE__USERS__ALICE__ROLE", "operator"),
        ("FLEET_CONSOLE__USERS__ALICE__PASSWORD_HASH", alice.as_str()),
        ("FLEET_CONSOLE__USERS__VIV__ROLE", "viewer"),
        ("FLEET_CONSOLE__USERS__VIV__PASSWORD_HASH", viv.as_str()),
        ("FLEET_CONSOLE__REFRESH", "500ms"),
        ("FLEET_CONSOLE__TRACING_URL", TRACING_URL),
        ("FLEET_CONSOLE__LOGIN_MAX_FAILURES", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    fleet::config::Settings::from_sources(None, &env).unwrap()
}

/// Fails until the test says the bug is fixed (then succeeds): a dead job worth replaying.
#[derive(Debug, Serialize, Deserialize)]
struct FixedLater {}
static FIXED: AtomicBool = AtomicBool::new(false);
impl Job for FixedLater {
    const KIND: &'static str = "test.fixed_later";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        if FIXED.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(JobError::fatal("upstream rejected the request: bug 4711"))
        }
    }
}

/// Every kind of the fleet plus the tests' own.
fn registry() -> Arc<Registry> {
    let mut r = fleet_registry();
    r.register::<FixedLater>()
        .register::<Stubborn>()
        .register::<Discards>();
    Arc::new(r)
}

struct App {
    db: ScratchDb,
    base: String,
    registry: Arc<Registry>,
    stop: CancellationToken,
}

impl App {
    async fn start() -> App {
        let db = db().await;
        let registry = registry();
        let s = settings();
        let schedules = fleet::scheduler::validate(&s.schedules, &registry).unwrap();
        let console = Console::new(
            db.pool.clone(),
            registry.clone(),
            s.console.clone(),
            Duration::from_secs(2),
        )
        .with_schedules(schedules);
        let (base, stop) = serve(fleet::serve::admin_router_with_console(
            db.pool.clone(),
            console,
        ))
        .await;
        App {
            db,
            base,
            registry,
            stop,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    fn queue(&self) -> Queue {
        Queue::new(self.db.pool.clone(), self.registry.clone())
    }

    fn worker(&self) -> RunningWorker {
        start_worker(self.pool(), self.registry.clone(), fast_settings())
    }

    async fn browser(&self) -> Browser {
        Browser::open(&self.base).await
    }

    /// Audit rows of `action`: (actor, resource_id, metadata), from the trail that owns it:
    /// the domain's for booking and refund actions, the engine's for the rest.
    async fn audit(&self, action: &str) -> Vec<(String, Option<String>, Value)> {
        let table = if [
            "booking.",
            "refund.",
            "airline_change.",
            "erasure.",
            "export.",
        ]
        .iter()
        .any(|p| action.starts_with(p))
        {
            "audit_log"
        } else {
            "fleet_audit"
        };
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT actor, resource_id, metadata FROM {table} WHERE action = $1
             ORDER BY created_at"
        )))
        .bind(action)
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    async fn paused(&self) -> Vec<String> {
        let mut c = self.pool().acquire().await.unwrap();
        queue::kind_list_paused(&mut *c)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.kind)
            .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ─── the tests ──────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn without_a_session_every_page_leads_to_sign_in_and_only_the_right_password_lets_you_in() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    // No cookie: pages redirect to the login, htmx refreshes and actions are refused.
    let h = http();
    for path in ["/ui/", "/ui/jobs", "/ui/audit", "/ui/bookings"] {
        let r = h.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(to.starts_with("/ui/login"), "{path} -> {to}");
    }
    let r = h
        .get(format!("{}/ui/overview/live", app.base))
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .post(format!("{}/ui/actions/pause", app.base))
        .form(&[("kind", "fleet.sleep"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an action without a session");
    assert!(app.paused().await.is_empty());
    // `/` and `/ui` lead to the console.
    let r = h.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/ui/");

    let b = app.browser().await;
    b.goto("/ui/jobs?kind=fleet.sleep").await;
    b.wait_h1("Sign in").await;
    assert!(
        b.path().await.starts_with("/ui/login?next="),
        "{}",
        b.path().await
    );
    b.screenshot("login").await;
    // A wrong password: refused, told so, still signed out.
    b.fill("#username", "alice").await;
    b.fill("#password", "not-her-password").await;
    b.click(".login button[type=submit]").await;
    b.wait_refusal("wrong user name or password").await;
    assert!(b
        .c
        .get_named_cookie(fleet::console::auth::SESSION_COOKIE)
        .await
        .is_err());
    // The right one: in, and on the page asked for first.
    b.fill("#username", "alice").await;
    b.fill("#password", ALICE_PW).await;
    b.click(".login button[type=submit]").await;
    b.wait_h1("Jobs").await;
    assert_eq!(b.path().await, "/ui/jobs?kind=fleet.sleep");
    let cookie =
        b.c.get_named_cookie(fleet::console::auth::SESSION_COOKIE)
            .await
            .unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    // The database holds the token's hash, never the token.
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT token_sha256 FROM fleet_console_sessions WHERE username = 'alice'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_ne!(stored, cookie.value().as_bytes());
    // Signing out ends the session.
    b.click("form[action='/ui/logout'] button").await;
    b.wait_h1("Sign in").await;
    b.goto("/ui/").await;
    b.wait_h1("Sign in").await;

    // Failed logins are limited: after 3, even the right password is refused for a while.
    // Each refusal is waited for: the next page load would otherwise abort the post in flight,
    // and an aborted attempt is not a failed one.
    for _ in 0..3 {
        b.goto("/ui/login").await;
        b.fill("#username", "viv").await;
        b.fill("#password", "guess").await;
        b.click(".login button[type=submit]").await;
        b.wait_refusal("wrong user name or password").await;
    }
    b.fill("#username", "viv").await;
    b.fill("#password", VIV_PW).await;
    b.click(".login button[type=submit]").await;
    b.wait_refusal("too many failed sign-ins").await;
    b.close().await;
}

/// Fills and submits the open sign-in form as alice.
async fn submit_alice(b: &Browser) {
    b.fill("#username", "alice").await;
    b.fill("#password", ALICE_PW).await;
    b.click(".login button[type=submit]").await;
}

#[tokio::test]
async fn a_sign_in_link_leads_to_a_page_never_to_a_bad_header_or_a_bare_fragment() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let b = app.browser().await;
    // A `next` holding CR/LF used to end, after the right password, in a bare 500 ("failed to
    // parse header value"): it is dropped, and the sign-in lands on the overview.
    b.goto("/ui/login?next=%2Fui%2Fjobs%0D%0Ax").await;
    b.wait_h1("Sign in").await;
    submit_alice(&b).await;
    b.wait_h1("Overview").await;
    assert_eq!(b.path().await, "/ui/");
    // Signed in, the login page sends you on instead of asking again.
    b.goto("/ui/login?next=%2Fui%2Fjobs").await;
    b.wait_h1("Jobs").await;
    // A session that ended while the overview was open: its refresh asked for a sign-in that
    // used to land on the bare live fragment; now on the overview page.
    b.click("form[action='/ui/logout'] button").await;
    b.wait_h1("Sign in").await;
    let r = http()
        .get(format!("{}/ui/overview/live", app.base))
        .send()
        .await
        .unwrap();
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(to, "/ui/login", "no `next` to a fragment");
    b.goto("/ui/login?next=%2Fui%2Foverview%2Flive").await;
    submit_alice(&b).await;
    b.wait_h1("Overview").await;
    assert_eq!(b.path().await, "/ui/");
    b.close().await;
}

#[tokio::test]
async fn a_hundred_kilobyte_error_is_capped_in_the_list_and_folded_on_the_job_page() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let id = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
    let huge = "E".repeat(100_000);
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'dead', finished_at = now(),
             errors = jsonb_build_array(jsonb_build_object(
                 'attempt', 1, 'class', 'retryable', 'message', $2::text, 'at', now()))
         WHERE id = $1",
    )
    .bind(id)
    .bind(&huge)
    .execute(app.pool())
    .await
    .unwrap();
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    let page_bytes = |b: &Browser| {
        let c = b.c.clone();
        async move {
            c.execute("return document.documentElement.outerHTML.length", vec![])
                .await
                .unwrap()
                .as_u64()
                .unwrap()
        }
    };
    // The list used to carry the message twice per row, uncut.
    b.goto("/ui/jobs").await;
    b.wait_h1("Jobs").await;
    assert!(
        page_bytes(&b).await < 30_000,
        "the list carries a capped error"
    );
    // The job page shows the start, folds the whole away, and its table fits.
    b.goto(&format!("/ui/jobs/{id}")).await;
    b.wait_h1(&format!("Job {id}")).await;
    assert!(b
        .main_text()
        .await
        .contains("whole message (100000 characters)"));
    let overflow =
        b.c.execute(
            "const t = document.querySelector('main'); return t.scrollWidth - t.clientWidth",
            vec![],
        )
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    assert!(overflow <= 0, "the job page overflows by {overflow} px");
    b.screenshot("job-long-error").await;
    b.close().await;
}

#[tokio::test]
async fn a_right_to_left_override_in_a_key_is_shown_as_an_escape_and_reorders_nothing() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let key = "invoice-gnp\u{202E}exe.png";
    let id = app
        .queue()
        .enqueue_new(jobs::NewJob::raw("fleet.sleep", json!({"ms": 1})).key(key))
        .await
        .unwrap()
        .id;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    for page in [format!("/ui/jobs/{id}"), "/ui/jobs".to_owned()] {
        b.goto(&page).await;
        let source = b.c.source().await.unwrap();
        assert!(
            !source.contains('\u{202E}'),
            "{page} carries the raw override"
        );
        assert!(
            b.main_text().await.contains("invoice-gnp⟨U+202E⟩exe.png"),
            "{page}: {}",
            b.main_text().await
        );
        b.screenshot(if page == "/ui/jobs" {
            "jobs-bidi-key"
        } else {
            "job-bidi-key"
        })
        .await;
    }
    b.close().await;
}

/// The value of cookie `name` set by `r`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{name}="))?
                .split(';')
                .next()
                .map(str::to_owned)
        })
        .filter(|v| !v.is_empty())
}

/// The first `name="csrf"` form field's value in `page`.
fn csrf_field(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

/// Signs in over HTTP (from 127.0.0.1): the session cookie, or the refusal's status.
async fn http_sign_in(base: &str, user: &str, password: &str) -> Result<String, u16> {
    let h = http();
    let r = h.get(format!("{base}/ui/login")).send().await.unwrap();
    let login = set_cookie(&r, fleet::console::auth::LOGIN_COOKIE).expect("a login cookie");
    let csrf = csrf_field(&r.text().await.unwrap());
    let r = h
        .post(format!("{base}/ui/login"))
        .header(
            "cookie",
            format!("{}={login}", fleet::console::auth::LOGIN_COOKIE),
        )
        .form(&[("username", user), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        303 => Ok(set_cookie(&r, fleet::console::auth::SESSION_COOKIE).expect("a session")),
        s => Err(s),
    }
}

/// GET `path` with session `cookie`: the response.
async fn fetch_as(base: &str, cookie: &str, path: &str) -> reqwest::Response {
    http()
        .get(format!("{base}{path}"))
        .header(
            "cookie",
            format!("{}={cookie}", fleet::console::auth::SESSION_COOKIE),
        )
        .send()
        .await
        .unwrap()
}

/// GET `path` with session `cookie`: the status.
async fn get_as(base: &str, cookie: &str, path: &str) -> u16 {
    fetch_as(base, cookie, path).await.status().as_u16()
}

#[tokio::test]
async fn failed_sign_ins_lock_out_only_that_name_and_every_serve_process_counts_them() {
    let app = App::start().await;
    // A second `serve` process on the same database.
    let other = Console::new(
        app.pool().clone(),
        app.registry.clone(),
        settings().console,
        Duration::from_secs(2),
    );
    let (base2, stop2) = serve(fleet::serve::admin_router_with_console(
        app.pool().clone(),
        other,
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(http_sign_in(&app.base, "alice", "typo").await, Err(401));
    }
    // Alice is refused everywhere for a while, even with her password…
    assert_eq!(http_sign_in(&base2, "alice", ALICE_PW).await, Err(429));
    assert_eq!(http_sign_in(&app.base, "alice", ALICE_PW).await, Err(429));
    // …but her colleague at the same address is not (before, everyone there got 429).
    assert!(http_sign_in(&app.base, "viv", VIV_PW).await.is_ok());
    // Guessing names that are not users' is limited per address (4 × 3 failures)…
    for i in 0..12 {
        assert_eq!(
            http_sign_in(&base2, &format!("nobody{i}"), "x").await,
            Err(401)
        );
    }
    assert_eq!(http_sign_in(&app.base, "nobody-else", "x").await, Err(429));
    // …and still locks out no user.
    assert!(http_sign_in(&base2, "viv", VIV_PW).await.is_ok());
    stop2.cancel();
}

#[tokio::test]
async fn a_session_ends_when_idle_and_a_new_sign_in_ends_the_oldest_beyond_the_cap() {
    let app = App::start().await;
    let first = http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap();
    assert_eq!(get_as(&app.base, &first, "/ui/").await, 200);
    // Thirty-one minutes without a request (console.session_idle = 30m).
    sqlx::query("UPDATE fleet_console_sessions SET last_seen_at = now() - interval '31 minutes'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(
        get_as(&app.base, &first, "/ui/").await,
        303,
        "idle: sign in again"
    );
    // At most 5 sessions per user: the sixth sign-in ends the oldest.
    let mut cookies = Vec::new();
    for _ in 0..6 {
        cookies.push(http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap());
    }
    assert_eq!(get_as(&app.base, &cookies[0], "/ui/").await, 303);
    for c in &cookies[1..] {
        assert_eq!(get_as(&app.base, c, "/ui/").await, 200);
    }
}

#[tokio::test]
async fn an_action_from_another_site_is_refused_even_with_its_token() {
    let app = App::start().await;
    let cookie = http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap();
    let session = format!("{}={cookie}", fleet::console::auth::SESSION_COOKIE);
    let page = http()
        .get(format!("{}/ui/", app.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_field(&page);
    let host = app.base.trim_start_matches("http://").to_owned();
    let pause = |headers: Vec<(&'static str, String)>| {
        let mut r = http()
            .post(format!("{}/ui/actions/pause", app.base))
            .header("cookie", &session)
            .form(&[
                ("kind", "fleet.sleep"),
                ("confirm", "yes"),
                ("reason", "drill"),
                ("csrf", &csrf),
            ]);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = pause(vec![("origin", "https://evil.example".to_owned())])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = pause(vec![("sec-fetch-site", "cross-site".to_owned())])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(app.paused().await.is_empty(), "nothing changed");
    // From the console's own page: the same request goes through.
    let r = pause(vec![
        ("origin", format!("http://{host}")),
        ("sec-fetch-site", "same-origin".to_owned()),
    ])
    .await
    .unwrap();
    assert_ne!(r.status(), 403);
    assert_eq!(app.paused().await, vec!["fleet.sleep".to_owned()]);
}

#[tokio::test]
async fn older_links_carry_no_stray_ampersand_and_the_console_has_a_favicon() {
    let app = App::start().await;
    for _ in 0..3 {
        insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
    }
    let cookie = http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap();
    let page = fetch_as(&app.base, &cookie, "/ui/jobs?limit=2")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"href="/ui/jobs?limit=2&amp;before_id="#),
        "{page}"
    );
    assert!(!page.contains("?&amp;"), "a stray & after ?");
    assert!(page.contains(r#"rel="icon""#));
    let r = http()
        .get(format!("{}/ui/static/favicon.svg", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
}

/// How far the page at the current window width is wider than the window (px; ≤ 0 fits), and
/// which table is the widest past its box.
async fn overflow(b: &Browser) -> (i64, String) {
    let v = b
        .c
        .execute(
            "const d = document.documentElement;
             let worst = '';
             let most = 0;
             for (const t of document.querySelectorAll('table')) {
                 const box = t.parentElement;
                 const over = t.scrollWidth - box.clientWidth;
                 if (over > most) { most = over; worst = (t.closest('[id]') || t).id || t.className; }
             }
             return [Math.max(d.scrollWidth - d.clientWidth, most), worst];",
            vec![],
        )
        .await
        .unwrap();
    (
        v[0].as_i64().unwrap(),
        v[1].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn every_page_fits_1280_and_1920_pixels_without_scrolling_sideways() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    // Data that widens tables: every kind with jobs in every state, long keys and errors.
    for i in 0..30 {
        let id = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
        let state = ["available", "dead", "completed", "cancelled", "retryable"][i % 5];
        sqlx::query(
            "UPDATE fleet_jobs SET state = $2::fleet_job_state, attempt = 1,
                 idempotency_key = 'campaign-7d3f2c1e-0b9a-4c55-9e1f-2a6b8c0d4e5f-window-2026-12-06',
                 finished_at = CASE WHEN $2 IN ('dead','completed','cancelled') THEN now() END,
                 errors = jsonb_build_array(jsonb_build_object('attempt', 1, 'class', 'retryable',
                     'message', repeat('stripe: card_declined insufficient_funds ', 20), 'at', now()))
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .execute(app.pool())
        .await
        .unwrap();
    }
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    let mut wide = Vec::new();
    for width in [1280u32, 1920] {
        b.c.set_window_size(width, 1000).await.unwrap();
        for (name, path) in [
            ("overview", "/ui/"),
            ("jobs", "/ui/jobs"),
            ("job", "/ui/jobs/1"),
            ("audit", "/ui/audit"),
            ("bookings", "/ui/bookings"),
            ("schedules", "/ui/schedules"),
            ("activity", "/ui/activity"),
            ("money", "/ui/money"),
        ] {
            b.goto(path).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (over, table) = overflow(&b).await;
            if over > 0 {
                wide.push(format!(
                    "{path} at {width} px: {over} px too wide ({table})"
                ));
            }
            b.screenshot(&format!("{name}-{width}")).await;
        }
    }
    assert!(wide.is_empty(), "{wide:#?}");
    b.close().await;
}

#[tokio::test]
async fn pages_speak_the_pages_words_and_a_pause_needs_a_reason() {
    let app = App::start().await;
    let cookie = http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap();
    let session = format!("{}={cookie}", fleet::console::auth::SESSION_COOKIE);
    let page = fetch_as(&app.base, &cookie, "/ui/")
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_field(&page);
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let mut form = form;
        form.push(("csrf", csrf.clone()));
        http()
            .post(format!("{}{path}", app.base))
            .header("cookie", session.clone())
            .form(&form)
            .send()
    };
    // A replay with no filter: said in the page's words, not the CLI's flags.
    let r = post("/ui/actions/replay", vec![]).await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("needs job ids or a filter"), "{body}");
    assert!(!body.contains("--id") && !body.contains("--kind"), "{body}");
    // A confirmed pause without a reason is refused, and pauses nothing.
    let r = post(
        "/ui/actions/pause",
        vec![("kind", "fleet.sleep".into()), ("confirm", "yes".into())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("needs a reason"));
    assert!(app.paused().await.is_empty());
}

#[tokio::test]
async fn the_bookings_page_lists_recent_and_failed_bookings_and_a_booking_shows_its_route() {
    let app = App::start().await;
    let keyring = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let seeded =
        jobs::seed::seed_campaign(&app.db.db(), &keyring, &jobs::seed::CampaignSeed::new(1))
            .await
            .unwrap();
    let mut ids = Vec::new();
    for (status, offer) in [("failed", "off_1"), ("pending", "off_2")] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO bookings (campaign_id, duffel_offer_id, total_amount, currency, status,
                                   failure_code)
             VALUES ($1, $2, 350, 'USD', $3, CASE WHEN $3 = 'failed' THEN 'offer_expired' END)
             RETURNING id",
        )
        .bind(seeded.campaign_id)
        .bind(offer)
        .bind(status)
        .fetch_one(app.pool())
        .await
        .unwrap();
        ids.push(id);
    }
    let cookie = http_sign_in(&app.base, "alice", ALICE_PW).await.unwrap();
    let page = |path: String| {
        let (base, cookie) = (app.base.clone(), cookie.clone());
        async move { fetch_as(&base, &cookie, &path).await.text().await.unwrap() }
    };
    // Every recent booking, newest first, with its route, amount and failure, no PII.
    let all = page("/ui/bookings".into()).await;
    assert!(all.contains(&ids[0].to_string()) && all.contains(&ids[1].to_string()));
    assert!(
        all.contains("LHR → JFK") && all.contains("offer_expired") && all.contains("350.00 USD")
    );
    assert!(!all.contains("Traveler Number1"), "no names");
    // Only the failed ones.
    let failed = page("/ui/bookings?status=failed".into()).await;
    assert!(failed.contains(&ids[0].to_string()) && !failed.contains(&ids[1].to_string()));
    // A booking shows its route and dates, and its campaign leads to its jobs.
    let one = page(format!("/ui/bookings/{}", ids[1])).await;
    assert!(
        one.contains("LHR → JFK") && one.contains("between "),
        "route and dates"
    );
    assert!(
        one.contains(r#"id="campaign-jobs""#) && one.contains("campaign_id"),
        "{one}"
    );
    if browser_available() {
        let b = app.browser().await;
        b.sign_in("alice", ALICE_PW).await;
        b.goto("/ui/bookings").await;
        b.wait_h1("Bookings").await;
        b.screenshot("bookings").await;
        b.goto(&format!("/ui/bookings/{}", ids[0])).await;
        b.wait_h1("Booking").await;
        b.screenshot("booking-route").await;
        b.close().await;
    }
}

#[tokio::test]
async fn a_viewer_sees_every_page_but_no_action_and_is_refused_when_acting() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let id = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
    let b = app.browser().await;
    b.sign_in("viv", VIV_PW).await;
    assert!(b.text(".who").await.contains("viewer"));
    assert!(!b.has("section.act").await, "no action on the overview");
    b.goto(&format!("/ui/jobs/{id}")).await;
    b.wait_h1(&format!("Job {id}")).await;
    assert!(!b.has("section.act").await, "no action on a job");
    // Acting anyway, with a valid session and CSRF token: refused, nothing changed.
    let csrf = b.csrf().await;
    let status = b
        .post_from_page(
            "/ui/actions/pause",
            &format!("kind=fleet.sleep&confirm=yes&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, 403);
    let status = b
        .post_from_page(
            "/ui/actions/cancel",
            &format!("id={id}&confirm=yes&only={id}&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, 403);
    assert!(app.paused().await.is_empty());
    assert_eq!(job(app.pool(), id).await.state, JobState::Available);
    assert!(app.audit("kind.pause").await.is_empty());
    assert!(app.audit("job.cancel").await.is_empty());
    b.close().await;
}

#[tokio::test]
async fn the_overview_shows_the_jobs_a_worker_is_running_and_updates_without_a_reload() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let w = app.worker();
    // Some history: 40 completions spread over the last minutes (back-dated, not waited
    // for), a dead job, and a kind paused by someone else.
    let mut done = Vec::new();
    for i in 0..40 {
        done.push(app.queue().enqueue(&jobs_sleep(1), None).await.unwrap().id);
        if i == 39 {
            wait_state(app.pool(), done[i], JobState::Completed, SECS(10)).await;
        }
    }
    for id in &done {
        wait_state(app.pool(), *id, JobState::Completed, SECS(10)).await;
    }
    sqlx::query(
        "UPDATE fleet_jobs SET created_at = created_at - d, run_at = run_at - d,
                attempted_at = attempted_at - d, finished_at = finished_at - d
         FROM (SELECT id AS jid, ((id * 7) % 13) * interval '1 minute' AS d
               FROM fleet_jobs) shift
         WHERE id = shift.jid AND kind = 'fleet.sleep'",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let dead = app.queue().enqueue(&Discards {}, None).await.unwrap().id;
    wait_state(app.pool(), dead, JobState::Dead, SECS(10)).await;
    {
        let mut c = app.pool().acquire().await.unwrap();
        queue::kind_pause(&mut *c, "card_update", "bob", "waiting for Stripe")
            .await
            .unwrap();
    }
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.el("#running-none").await;
    assert!(
        b.text("#chart-total").await.starts_with("40 completed"),
        "{}",
        b.text("#chart-total").await
    );
    assert!(b.text("#kinds").await.contains("paused"));
    b.wait_text("#card-dead .card-value", "1").await;
    b.c.execute("window.__sameDocument = 'yes'", vec![])
        .await
        .unwrap();
    let id = app
        .queue()
        .enqueue(&Stubborn { ms: 2_500 }, None)
        .await
        .unwrap()
        .id;
    // The refresh brings the running job, its worker and the worker row, on the same page.
    let cell = format!("#running a[href='/ui/jobs/{id}']");
    b.el(&cell).await;
    let running = b.text("#running").await;
    assert!(running.contains("test.stubborn"), "{running}");
    assert!(running.contains(&w.id), "the worker holding it: {running}");
    assert!(b.text("#workers").await.contains("alive"));
    assert_eq!(b.text("#card-running .card-value").await, "1");
    b.screenshot("overview").await;
    // When it completes, the page says so and counts it, still without a reload.
    b.el("#running-none").await;
    let kinds = b.text("#kinds").await;
    assert!(kinds.contains("test.stubborn"), "{kinds}");
    let same: Value =
        b.c.execute("return window.__sameDocument || null", vec![])
            .await
            .unwrap();
    assert_eq!(same, json!("yes"), "the page was never reloaded");
    w.stop().await;
    b.close().await;
}

/// Searches enqueued while a provider's 429 blocks Duffel's search budget: the overview counts
/// them as held by a limit, not as ready for a worker, and says which budget holds them, its
/// level, the provider's refusal and the 429 count.
#[tokio::test]
async fn the_overview_shows_jobs_held_by_a_blocked_budget_apart_from_jobs_ready_for_a_worker() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    {
        let mut c = app.pool().acquire().await.unwrap();
        queue::budget_block(
            &mut *c,
            "duffel_search",
            SECS(600),
            "duffel create_offer_request rate_limited: HTTP 429",
            None,
        )
        .await
        .unwrap();
    }
    let searches = (0..3)
        .map(|_| {
            jobs::NewJob::raw(
                "campaign_search",
                json!({"campaign_id": uuid::Uuid::new_v4()}),
            )
        })
        .collect();
    app.queue().enqueue_many(searches).await.unwrap();
    // No worker runs: this one waits for a worker, nothing else.
    app.queue().enqueue(&jobs_sleep(1), None).await.unwrap();
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    assert_eq!(b.text("#card-ready .card-value").await, "1");
    assert!(
        b.text("#card-ready .card-label")
            .await
            .contains("3 more held by a limit"),
        "{}",
        b.text("#card-ready").await
    );
    // Kind, Queue, Status, Ready, Held by a limit, …
    let search = b.row("#kinds", "campaign_search").await;
    assert_eq!((&*search[3], &*search[4]), ("0", "3"), "{search:?}");
    let sleep = b.row("#kinds", "fleet.sleep").await;
    assert_eq!((&*sleep[3], &*sleep[4]), ("1", "0"), "{sleep:?}");
    // Kind, Running, Fleet limit, Per key, Budgets, Held, Held by
    let limit = b.row("#limits table.limits", "campaign_search").await;
    assert_eq!(&*limit[5], "3", "{limit:?}");
    assert!(limit[6].contains("duffel_search"), "{limit:?}");
    // Budget, Tokens, Burst, Rate / s, Blocked until, Provider 429s
    let budget = b.row("#limits table.budgets", "duffel_search").await;
    assert_eq!(&*budget[1], "0.0", "{budget:?}");
    assert!(budget[4].contains("HTTP 429"), "{budget:?}");
    assert_eq!(&*budget[5], "1", "{budget:?}");
    b.screenshot("overview-limits").await;
    b.close().await;
}

#[tokio::test]
async fn the_jobs_list_filters_like_the_cli_pages_by_keyset_and_a_job_shows_its_detail() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let mut a_ids = Vec::new();
    for i in 0..7 {
        a_ids.push(insert_unchecked(app.pool(), "fleet.sleep", json!({ "ms": i })).await);
    }
    let other = insert_unchecked(app.pool(), "card_update", json!({})).await;
    // A child with a parent and a trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let child = insert_one(
        app.pool(),
        queue::JobInsert {
            idempotency_key: Some("sleep:child".into()),
            trace_context: Some(json!({"traceparent": format!("00-{trace}-00f067aa0ba902b7-01")})),
            parent_id: Some(a_ids[0]),
            ..sleep_row(99)
        },
    )
    .await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs").await;
    // Sorting and paging are the claims here: the live refresh (its own test) stays off, so no
    // element read below is swapped out under the reader.
    b.click("#live-toggle").await;
    b.fill("#f-kind", "fleet.sleep").await;
    b.click("input[name=state][value=available]").await;
    b.click_button("form.filters", "Filter").await;
    b.wait_h1("Jobs").await;
    let list = b.text("#jobs").await;
    for id in a_ids.iter().chain([&child]) {
        assert!(list.contains(&id.to_string()), "{id} listed: {list}");
    }
    assert!(
        !b.has(&format!("#jobs a[href='/ui/jobs/{other}']")).await,
        "another kind is filtered out"
    );
    b.screenshot("jobs").await;
    // Columns sort on click, and say how.
    b.click("#jobs thead th:nth-child(2) button").await;
    let up = ids_in(&b, "#jobs").await;
    let mut sorted = up.clone();
    sorted.sort();
    assert_eq!(up, sorted, "ascending after one click");
    let th = b.el("#jobs thead th:nth-child(2)").await;
    assert_eq!(
        th.attr("aria-sort").await.unwrap().as_deref(),
        Some("ascending")
    );
    b.click("#jobs thead th:nth-child(2) button").await;
    let down = ids_in(&b, "#jobs").await;
    sorted.reverse();
    assert_eq!(down, sorted, "descending after two");

    // Keyset pages: 5, then the older ones, never a row twice.
    b.goto("/ui/jobs?kind=fleet.sleep&limit=5").await;
    let first: Vec<i64> = ids_in(&b, "#jobs").await;
    assert_eq!(first.len(), 5);
    b.click("#older").await;
    b.wait_h1("Jobs").await;
    let second: Vec<i64> = ids_in(&b, "#jobs").await;
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(second.iter().all(|id| id < first.iter().min().unwrap()));
    assert!(b.path().await.contains("before_id="));

    // A job's detail: args, key, parent, trace linked to the tracing UI.
    b.goto(&format!("/ui/jobs/{child}")).await;
    b.wait_h1(&format!("Job {child}")).await;
    let main = b.main_text().await;
    assert!(main.contains("\"ms\": 99"), "{main}");
    assert!(main.contains("sleep:child"), "{main}");
    let link = b.el("#trace").await.attr("href").await.unwrap().unwrap();
    assert_eq!(link, TRACING_URL.replace("{trace_id}", trace));
    b.click("#parent").await;
    b.wait_h1(&format!("Job {}", a_ids[0])).await;
    assert!(b.text("#children").await.contains(&child.to_string()));
    b.close().await;
}

/// The job ids of a jobs table, read in one script run: the live list may replace the table
/// between two WebDriver calls.
async fn ids_in(b: &Browser, table: &str) -> Vec<i64> {
    let got = b
        .c
        .execute(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr td.num:first-of-type > a, ' \
             + arguments[0] + ' tbody tr td.pick + td.num > a')].map(a => a.textContent.trim());",
            vec![json!(table)],
        )
        .await
        .unwrap();
    got.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_booking_timeline_from_a_real_saga_shows_its_steps_provider_ids_and_jobs_and_no_pii() {
    if !browser_available() {
        return;
    }
    use jobs::{
        kinds::campaign_search::CampaignSearch,
        seed::{seed_campaign, CampaignSeed, CANARY_EMAIL, CANARY_PASSPORT},
    };
    let app = App::start().await;
    let sandbox = sandbox::Sandbox::start(Default::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let keyring = jobs::pii::Keyring::parse(TEST_PII_KEYS).unwrap();
    let mut seed = CampaignSeed::new(0);
    seed.email = CANARY_EMAIL.into();
    seed.passport = CANARY_PASSPORT.into();
    seed.full_name = "Zelda Quixote-Canary".into();
    seed.max_price = "5000.00".into();
    let seeded = seed_campaign(&app.db.db(), &keyring, &seed).await.unwrap();
    // Duffel books only M/F travelers; the seed's default is X.
    sqlx::query("UPDATE traveler_profiles SET gender = 'F' WHERE id = $1")
        .bind(seeded.profile_id)
        .execute(app.pool())
        .await
        .unwrap();
    let w = start_worker_with(
        app.pool(),
        app.registry.clone(),
        fleet::config::WorkerSettings {
            concurrency: 8,
            ..fast_settings()
        },
        extensions_of(sandbox_deps(&sandbox.base_url).unwrap()),
    );
    let campaign = seeded.campaign_id;
    app.queue()
        .enqueue(
            &CampaignSearch {
                campaign_id: campaign,
                user_id: None,
            },
            None,
        )
        .await
        .unwrap();
    let pool = app.pool().clone();
    wait_until(SECS(30), "the saga tickets the booking", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM bookings WHERE campaign_id = $1")
                .bind(campaign)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .as_deref()
                == Some("ticketed")
        }
    })
    .await;
    let (booking, pi, order): (uuid::Uuid, String, String) = sqlx::query_as(
        "SELECT id, stripe_payment_intent_id, duffel_order_id FROM bookings WHERE campaign_id = $1",
    )
    .bind(campaign)
    .fetch_one(app.pool())
    .await
    .unwrap();

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/bookings").await;
    b.fill("#f-id", &booking.to_string()).await;
    b.click_button("form.filters", "Show").await;
    b.wait_h1("Booking").await;
    let main = b.main_text().await;
    assert!(main.contains("ticketed"), "{main}");
    assert!(
        main.contains(&pi) && main.contains(&order),
        "provider ids: {main}"
    );
    let steps = b.text("#steps").await;
    for step in [
        "started",
        "offer checked",
        "authorized",
        "ordered",
        "captured",
    ] {
        assert!(steps.contains(step), "step {step}: {steps}");
    }
    assert!(steps.contains("job "), "the job behind each step: {steps}");
    assert!(b.text("#searches").await.contains("campaign_search"));
    let timeline = b.text("#timeline").await;
    assert!(timeline.contains("booking.ticketed"), "{timeline}");
    assert!(timeline.contains("booking_attempt"), "{timeline}");
    let source = b.c.source().await.unwrap();
    for pii in [CANARY_EMAIL, CANARY_PASSPORT, "Zelda", "Quixote"] {
        assert!(!source.contains(pii), "{pii} reached the page");
    }

    // Refund it: the preview changes nothing, the confirmation queues the refund, audited.
    b.click_button("section.act", "Refund…").await;
    b.wait_h1("Refund this booking?").await;
    assert!(b.text("#preview").await.contains("ticketed"));
    let status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(booking)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(status, "ticketed", "the dry run changed nothing");
    assert!(app.audit("booking.refund_requested").await.is_empty());
    b.click("#confirm").await;
    b.wait_h1("Refund requested").await;
    let rows = app.audit("booking.refund_requested").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "alice");
    assert_eq!(rows[0].1.as_deref(), Some(booking.to_string().as_str()));
    wait_until(SECS(30), "the worker refunds the booking", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM bookings WHERE id = $1")
                .bind(booking)
                .fetch_one(&pool)
                .await
                .unwrap()
                == "refunded"
        }
    })
    .await;
    // The compensation is on the timeline: the refund, its Stripe id, its job.
    b.goto(&format!("/ui/bookings/{booking}")).await;
    b.wait_h1("Booking").await;
    let refunds = b.text("#refunds").await;
    assert!(
        refunds.contains("re_") && refunds.contains("customer_request"),
        "{refunds}"
    );
    assert!(b.text("#refund-jobs").await.contains("refund_compensation"));
    // The emails it caused, by kind and dedupe key: never an address.
    let emails = b.text("#emails").await;
    assert!(emails.contains("booking-confirmed"), "{emails}");
    assert!(
        emails.contains(&format!("booking-confirmed/{booking}")),
        "{emails}"
    );
    assert!(!emails.contains('@'), "no address on the page: {emails}");
    assert!(b
        .text("#timeline")
        .await
        .contains("booking.refund_requested by alice"));
    assert!(!b.c.source().await.unwrap().contains(CANARY_EMAIL));
    b.screenshot("booking").await;
    w.stop().await;
    b.close().await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn pausing_a_kind_shows_a_dry_run_then_pauses_audited_and_the_worker_stops_claiming_it() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let w = app.worker();
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.act_on_kind("fleet.sleep", "Pause…").await;
    b.wait_h1("Pause fleet.sleep?").await;
    assert!(b.text("#preview").await.contains("Would pause fleet.sleep"));
    // The preview says how many jobs would wait.
    assert!(
        b.text("#counts").await.contains("queued job(s)"),
        "{}",
        b.text("#counts").await
    );
    assert!(app.paused().await.is_empty(), "the dry run paused nothing");
    assert!(app.audit("kind.pause").await.is_empty());
    b.fill("#f-reason", "INC-42 provider outage").await;
    b.screenshot("pause-preview").await;
    b.click("#confirm").await;
    b.wait_h1("fleet.sleep paused").await;
    assert_eq!(app.paused().await, vec!["fleet.sleep"]);
    let rows = app.audit("kind.pause").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "alice");
    assert_eq!(rows[0].1.as_deref(), Some("fleet.sleep"));
    assert_eq!(rows[0].2["reason"], "INC-42 provider outage");

    // The worker claims other kinds, not this one.
    let paused_job = app.queue().enqueue(&jobs_sleep(1), None).await.unwrap().id;
    let other = app
        .queue()
        .enqueue(&Stubborn { ms: 1 }, None)
        .await
        .unwrap()
        .id;
    wait_state(app.pool(), other, JobState::Completed, SECS(10)).await;
    // The claim takes the oldest ready job first: had the paused one been claimable, the
    // claim that took the later job would have taken it too. No wait is needed to see it.
    assert_eq!(job(app.pool(), paused_job).await.state, JobState::Available);

    // The overview says so in words, and the audit view shows who did it.
    b.goto("/ui/").await;
    assert!(b.text("#kinds").await.contains("paused"));
    b.goto("/ui/audit?action=kind.").await;
    let audit = b.text("#audit").await;
    assert!(
        audit.contains("alice") && audit.contains("kind.pause"),
        "{audit}"
    );
    b.screenshot("audit").await;

    // Resume the same way; the worker takes the held job.
    b.act_on_kind("fleet.sleep", "Resume…").await;
    b.wait_h1("Resume fleet.sleep?").await;
    b.click("#confirm").await;
    b.wait_h1("fleet.sleep resumed").await;
    wait_state(app.pool(), paused_job, JobState::Completed, SECS(10)).await;
    assert_eq!(app.audit("kind.resume").await[0].0, "alice");

    // A drain: its dry run counts the backlog, the confirmed one runs in the background and
    // leaves the kind paused once nothing is left.
    b.act_on_kind("fleet.sleep", "Drain…").await;
    b.wait_h1("Drain fleet.sleep?").await;
    assert_eq!(b.text("#backlog").await, "0");
    assert!(app.paused().await.is_empty());
    b.click("#confirm").await;
    b.wait_h1("Draining fleet.sleep").await;
    let pool = app.pool().clone();
    wait_until(SECS(10), "the drain leaves fleet.sleep paused", || {
        let pool = pool.clone();
        async move {
            let mut c = pool.acquire().await.unwrap();
            queue::kind_list_paused(&mut *c)
                .await
                .unwrap()
                .iter()
                .any(|p| p.kind == "fleet.sleep" && p.draining_through_id.is_none())
        }
    })
    .await;
    assert_eq!(app.audit("kind.drain").await[0].0, "alice");
    w.stop().await;
    b.close().await;
}

fn jobs_sleep(ms: u64) -> fleet::builtin::Sleep {
    fleet::builtin::Sleep { ms, key: None }
}

#[tokio::test]
async fn replaying_a_dead_job_shows_a_dry_run_then_replays_audited_and_a_worker_runs_it() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let w = app.worker();
    let id = app.queue().enqueue(&FixedLater {}, None).await.unwrap().id;
    wait_state(app.pool(), id, JobState::Dead, SECS(10)).await;
    FIXED.store(true, Ordering::SeqCst);

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs?kind=test.fixed_later&state=dead").await;
    b.click(&format!("#jobs a[href='/ui/jobs/{id}']")).await;
    b.wait_h1(&format!("Job {id}")).await;
    let attempts = b.text("#attempts").await;
    assert!(
        attempts.contains("bug 4711") && attempts.contains("fatal"),
        "{attempts}"
    );
    b.screenshot("job").await;
    b.click_button("section.act", "Replay…").await;
    b.wait_h1("Replay jobs?").await;
    assert_eq!(b.text("#count").await, "1");
    assert!(b.text("#preview").await.contains(&id.to_string()));
    assert_eq!(
        job(app.pool(), id).await.state,
        JobState::Dead,
        "the dry run replayed nothing"
    );
    assert!(app.audit("job.replay").await.is_empty());
    b.click("#confirm").await;
    b.wait_h1("Jobs replayed").await;
    assert_eq!(b.text("#done-count").await, "1");
    let rows = app.audit("job.replay").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "alice");
    assert_eq!(rows[0].2["ids"], json!([id]));
    // The worker runs it again, and this time it completes.
    let j = wait_state(app.pool(), id, JobState::Completed, SECS(10)).await;
    assert_eq!(j.errors.len(), 1, "its history is kept");

    // Cancel a scheduled job the same way, from the list filtered to it.
    let later = sleep_in_an_hour(app.pool(), 1).await;
    b.goto(&format!("/ui/jobs?id={later}")).await;
    b.click_button("section.act", "Cancel matching…").await;
    b.wait_h1("Cancel jobs?").await;
    assert_eq!(b.text("#count").await, "1");
    assert_eq!(job(app.pool(), later).await.state, JobState::Scheduled);
    b.click("#confirm").await;
    b.wait_h1("Jobs cancelled").await;
    assert_eq!(job(app.pool(), later).await.state, JobState::Cancelled);
    assert_eq!(app.audit("job.cancel").await[0].0, "alice");
    w.stop().await;
    b.close().await;
}

/// A ready `fleet.sleep` of `ms`, as the enqueuer would file it.
fn sleep_row(ms: u64) -> queue::JobInsert {
    queue::JobInsert {
        kind: "fleet.sleep".into(),
        queue: "default".into(),
        args: json!({ "ms": ms }),
        priority: 0,
        run_at: None,
        max_attempts: 3,
        idempotency_key: None,
        trace_context: None,
        parent_id: None,
        limit_key: None,
        limited: false,
    }
}

/// Inserts `row` as it is (no registry in between); returns its id.
async fn insert_one(pool: &PgPool, row: queue::JobInsert) -> i64 {
    let mut c = pool.acquire().await.unwrap();
    queue::job_insert_many(&mut c, &[row], None).await.unwrap()[0].id
}

/// A `fleet.sleep` of `ms` scheduled an hour from now (no worker takes it meanwhile).
async fn sleep_in_an_hour(pool: &PgPool, ms: u64) -> i64 {
    let run_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    insert_one(
        pool,
        queue::JobInsert {
            run_at,
            ..sleep_row(ms)
        },
    )
    .await
}

/// A bulk cancel filtered by kind, state, queue and args: the preview counts the matching
/// jobs, and the confirmation cancels those, not a job that came to match in between.
#[tokio::test]
async fn a_bulk_cancel_cancels_the_jobs_its_preview_showed_and_not_one_that_matched_later() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let mut shown = Vec::new();
    for _ in 0..3 {
        shown.push(sleep_in_an_hour(app.pool(), 7).await);
    }
    let other_args = sleep_in_an_hour(app.pool(), 8).await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs?kind=fleet.sleep&state=scheduled&queue=default&args=%7B%22ms%22%3A7%7D")
        .await;
    let listed = ids_in(&b, "#jobs").await;
    assert_eq!(
        listed.iter().rev().copied().collect::<Vec<_>>(),
        shown,
        "the args filter lists the three, newest first"
    );
    b.click_button("section.act", "Cancel matching…").await;
    b.wait_h1("Cancel jobs?").await;
    assert_eq!(b.text("#count").await, "3");
    // Matches the same filter, but was not in the preview.
    let late = sleep_in_an_hour(app.pool(), 7).await;
    b.click("#confirm").await;
    b.wait_h1("Jobs cancelled").await;
    assert_eq!(b.text("#done-count").await, "3");
    for id in &shown {
        assert_eq!(job(app.pool(), *id).await.state, JobState::Cancelled);
    }
    assert_eq!(
        job(app.pool(), late).await.state,
        JobState::Scheduled,
        "a job that came to match after the preview is left alone"
    );
    assert_eq!(job(app.pool(), other_args).await.state, JobState::Scheduled);
    let audit = app.audit("job.cancel").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].2["ids"], json!(shown), "{:?}", audit[0].2);
    b.close().await;
}

/// A bulk action over more jobs than the console confirms at once shows how many, says to
/// narrow the filter or use the CLI, and offers no confirmation; a forged confirmation of them
/// is refused too.
#[tokio::test]
async fn a_bulk_cancel_beyond_the_console_cap_offers_no_confirmation() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let n = fleet::console::MAX_CONFIRMED_JOBS + 1;
    let rows: Vec<queue::JobInsert> = (0..n)
        .map(|_| queue::JobInsert {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..sleep_row(1)
        })
        .collect();
    let ids: Vec<i64> = {
        let mut c = app.pool().acquire().await.unwrap();
        queue::job_insert_many(&mut c, &rows, None)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect()
    };
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs?kind=fleet.sleep&state=scheduled").await;
    b.click_button("section.act", "Cancel matching…").await;
    b.wait_h1("Cancel jobs?").await;
    assert_eq!(b.text("#count").await, n.to_string());
    let preview = b.text("#preview").await;
    assert!(
        preview.contains("Too many to confirm here") && preview.contains("fleet queue cancel"),
        "{preview}"
    );
    assert!(!b.has("#confirm").await, "no confirmation is offered");
    let only: Vec<String> = ids.iter().map(i64::to_string).collect();
    let status = b
        .post_from_page(
            "/ui/actions/cancel",
            &format!(
                "kind=fleet.sleep&state=scheduled&confirm=yes&only={}&csrf={}",
                only.join("%2C"),
                b.csrf().await
            ),
        )
        .await;
    assert_eq!(status, 400, "a forged confirmation past the cap is refused");
    let cancelled = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM fleet_jobs WHERE state = 'cancelled'")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    assert_eq!(cancelled().await, 0);
    assert!(app.audit("job.cancel").await.is_empty());
    // The same confirmation at the cap goes through: the count was what was refused.
    let status = b
        .post_from_page(
            "/ui/actions/cancel",
            &format!(
                "kind=fleet.sleep&state=scheduled&confirm=yes&only={}&csrf={}",
                only[..n - 1].join("%2C"),
                b.csrf().await
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled().await, (n - 1) as i64);
    b.close().await;
}

#[tokio::test]
async fn a_state_changing_request_without_its_csrf_token_is_refused() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    let good = b.csrf().await;
    for body in [
        "kind=fleet.sleep&confirm=yes".to_owned(),
        "kind=fleet.sleep&confirm=yes&csrf=0000".to_owned(),
        format!(
            "kind=fleet.sleep&confirm=yes&csrf={}",
            "a".repeat(good.len())
        ),
    ] {
        assert_eq!(
            b.post_from_page("/ui/actions/pause", &body).await,
            403,
            "{body}"
        );
    }
    assert_eq!(
        b.post_from_page("/ui/logout", "").await,
        403,
        "sign-out too"
    );
    assert!(app.paused().await.is_empty());
    assert!(app.audit("kind.pause").await.is_empty());
    // With the token the same request goes through (so the refusal was the token's).
    let with = format!("kind=fleet.sleep&confirm=yes&reason=drill&csrf={good}");
    assert_eq!(b.post_from_page("/ui/actions/pause", &with).await, 200);
    assert_eq!(app.paused().await, vec!["fleet.sleep"]);
    // The login form carries its own token: a login posted from elsewhere is refused.
    let r = http()
        .post(format!("{}/ui/login", app.base))
        .form(&[("username", "alice"), ("password", ALICE_PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let session = format!("{}=", fleet::console::auth::SESSION_COOKIE);
    assert!(r
        .headers()
        .get_all("set-cookie")
        .iter()
        .all(|c| !c.to_str().unwrap().starts_with(&session)));
    b.close().await;
}

/// The element was replaced in the page (an htmx swap) between finding and using it.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    matches!(e, fantoccini::error::CmdError::Standard(w)
        if w.error == fantoccini::error::ErrorStatus::StaleElementReference)
}

// ─── what River UI and Oban Web users expect ────────────────────────────────────────────────

/// Sets a job's state (and what goes with it) directly, as a worker's outcome would.
async fn set_state(pool: &PgPool, id: i64, state: &str, error: Option<&str>) {
    sqlx::query(
        "UPDATE fleet_jobs SET state = $2::fleet_job_state, attempt = 1,
             run_at = CASE WHEN $2 IN ('retryable', 'scheduled') THEN now() + interval '1 hour' ELSE run_at END,
             finished_at = CASE WHEN $2 IN ('dead', 'completed', 'cancelled') THEN now() END,
             errors = CASE WHEN $3::text IS NULL THEN errors ELSE errors || jsonb_build_array(
                 jsonb_build_object('attempt', 1, 'class', 'retryable', 'message', $3::text, 'at', now())) END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .execute(pool)
    .await
    .unwrap();
}

async fn state_of(pool: &PgPool, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT state::text FROM fleet_jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn ticked_jobs_are_run_now_replayed_and_deleted_through_a_dry_run_and_the_refresh_waits_for_them(
) {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let retrying = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
    set_state(app.pool(), retrying, "retryable", Some("stripe: api_error")).await;
    let dead = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 2})).await;
    set_state(app.pool(), dead, "dead", Some("timeout")).await;
    let done = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 3})).await;
    set_state(app.pool(), done, "completed", None).await;
    // A completed job whose idempotency key is still held: deleting it would let a duplicate in.
    let held = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 4})).await;
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'completed', finished_at = now(), idempotency_key = 'k-held',
             key_held = true, key_held_until = now() + interval '1 day' WHERE id = $1",
    )
    .bind(held)
    .execute(app.pool())
    .await
    .unwrap();

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs?kind=fleet.sleep").await;
    b.wait_h1("Jobs").await;
    // Ticking a job holds the live refresh, and says so.
    b.click(&format!("input.pick[value='{retrying}']")).await;
    assert!(
        b.text("#live-state")
            .await
            .contains("paused while 1 job(s) are ticked"),
        "{}",
        b.text("#live-state").await
    );
    let before = b.text("#live-jobs .updated").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        b.text("#live-jobs .updated").await,
        before,
        "no refresh while ticked"
    );
    assert!(b
        .el(&format!("input.pick[value='{retrying}']"))
        .await
        .is_selected()
        .await
        .unwrap());
    b.screenshot("jobs-ticked").await;

    // Run now: a dry run naming the job, then the change, audited.
    b.click_button("#picked", "Run ticked now…").await;
    b.wait_h1("Run jobs now?").await;
    assert_eq!(b.text("#count").await, "1");
    assert_eq!(
        state_of(app.pool(), retrying).await.as_deref(),
        Some("retryable")
    );
    b.click("#confirm").await;
    b.wait_h1("Jobs run now").await;
    assert_eq!(
        state_of(app.pool(), retrying).await.as_deref(),
        Some("available")
    );
    let run_at_passed: bool =
        sqlx::query_scalar("SELECT run_at <= now() FROM fleet_jobs WHERE id = $1")
            .bind(retrying)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(run_at_passed);
    let audit = app.audit("job.run_now").await;
    assert_eq!((audit.len(), audit[0].0.as_str()), (1, "alice"));
    assert_eq!(audit[0].2["ids"], json!([retrying]));

    // Delete: the finished job goes, the one holding its key is left alone with the reason.
    b.goto("/ui/jobs?kind=fleet.sleep").await;
    b.wait_h1("Jobs").await;
    b.click(&format!("input.pick[value='{done}']")).await;
    b.click(&format!("input.pick[value='{held}']")).await;
    b.click(&format!("input.pick[value='{retrying}']")).await;
    b.click_button("#picked", "Delete ticked…").await;
    b.wait_h1("Delete jobs?").await;
    assert_eq!(
        b.text("#count").await,
        "1",
        "only the finished job free to go"
    );
    let preview = b.main_text().await;
    assert!(
        preview.contains("its idempotency key is held until"),
        "{preview}"
    );
    b.screenshot("delete-preview").await;
    b.click("#confirm").await;
    b.wait_h1("Jobs deleted").await;
    assert_eq!(state_of(app.pool(), done).await, None);
    assert_eq!(
        state_of(app.pool(), held).await.as_deref(),
        Some("completed")
    );
    assert_eq!(
        state_of(app.pool(), retrying).await.as_deref(),
        Some("available")
    );
    assert_eq!(app.audit("job.delete").await[0].2["ids"], json!([done]));

    // The job page offers what fits its state: replay and delete for a dead job.
    b.goto(&format!("/ui/jobs/{dead}")).await;
    b.wait_h1(&format!("Job {dead}")).await;
    assert!(b.has("#delete").await && !b.has("#run-now").await);
    b.click("#delete").await;
    b.wait_h1("Delete jobs?").await;
    b.click("#confirm").await;
    b.wait_h1("Jobs deleted").await;
    assert_eq!(state_of(app.pool(), dead).await, None);
    b.close().await;
}

#[tokio::test]
async fn the_jobs_list_and_a_job_page_refresh_themselves_and_text_search_finds_args_and_errors() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let first = insert_unchecked(
        app.pool(),
        "fleet.sleep",
        json!({"ms": 1, "note": "route LHR-JFK"}),
    )
    .await;
    let declined = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 2})).await;
    set_state(
        app.pool(),
        declined,
        "retryable",
        Some("stripe: Card_Declined (insufficient_funds)"),
    )
    .await;
    let percent = insert_unchecked(
        app.pool(),
        "fleet.sleep",
        json!({"ms": 3, "note": "50% off"}),
    )
    .await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/jobs").await;
    b.wait_h1("Jobs").await;
    // A job enqueued after the page opened appears without a reload.
    let later = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 4})).await;
    let deadline = tokio::time::Instant::now() + SECS(15);
    while !ids_in(&b, "#jobs").await.contains(&later) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {later} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A job's page follows its state.
    b.goto(&format!("/ui/jobs/{first}")).await;
    b.wait_h1(&format!("Job {first}")).await;
    set_state(app.pool(), first, "dead", Some("gave up")).await;
    let deadline = tokio::time::Instant::now() + SECS(15);
    while !b.text("#live-job .page-head").await.contains("dead") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job page never showed dead"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The switch turns it off, for this browser.
    b.click("#live-toggle").await;
    assert_eq!(b.text("#live-state").await, "paused");
    b.goto(&format!("/ui/jobs/{first}")).await;
    assert!(!b.el("#live-toggle").await.is_selected().await.unwrap());
    b.click("#live-toggle").await;

    // Text search: args and errors, any case, wildcards taken literally.
    b.goto("/ui/jobs").await;
    b.fill("#f-q", "card_declined").await;
    b.click_button("form.filters", "Filter").await;
    b.wait_h1("Jobs").await;
    assert_eq!(ids_in(&b, "#jobs").await, vec![declined]);
    b.goto("/ui/jobs?q=lhr-jfk").await;
    assert_eq!(ids_in(&b, "#jobs").await, vec![first]);
    b.goto("/ui/jobs?q=50%25").await;
    assert_eq!(
        ids_in(&b, "#jobs").await,
        vec![percent],
        "% is a character, not a wildcard"
    );
    b.goto("/ui/jobs?q=0_off").await;
    assert!(
        b.has("#jobs-none").await,
        "_ is a character, not a wildcard"
    );
    b.goto(&format!("/ui/jobs?q={}", "x".repeat(201))).await;
    assert!(b
        .main_text()
        .await
        .contains("Text in args or errors: is 201 characters long"));
    b.close().await;
}

#[tokio::test]
async fn the_schedules_page_shows_each_ticks_job_and_a_paused_schedule_skips_its_ticks_audited() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let s = settings();
    let schedules = fleet::scheduler::validate(&s.schedules, &app.registry).unwrap();
    let scheduler = fleet::scheduler::Scheduler::new(
        app.pool().clone(),
        app.registry.clone(),
        schedules.clone(),
    );
    let scan = schedules
        .iter()
        .find(|s| s.name == "campaign_scan")
        .unwrap();
    let t1 = scan.latest_tick(chrono::Utc::now()).unwrap();
    let job = scheduler.enqueue_tick(scan, t1).await.unwrap().unwrap();

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/schedules").await;
    b.wait_h1("Schedules").await;
    let row = b.row("#schedules", "campaign_scan").await;
    assert!(row[1].contains("0 */10 * * * *"), "{row:?}");
    assert!(row[3].contains("active"), "{row:?}");
    assert!(row[5].contains(&format!("job {job}")), "{row:?}");
    assert!(b.has(&format!("#schedules a[href='/ui/jobs/{job}']")).await);

    // Pause: a dry run, a reason required, then paused and audited.
    b.click("#schedule-campaign_scan button").await;
    b.wait_h1("Pause the schedule campaign_scan?").await;
    b.click("#confirm").await;
    b.wait_h1("Bad Request").await;
    assert!(b.main_text().await.contains("needs a reason"));
    b.goto("/ui/schedules").await;
    b.click("#schedule-campaign_scan button").await;
    b.wait_h1("Pause the schedule campaign_scan?").await;
    b.fill("#f-reason", "INC-7 scan storm").await;
    b.click("#confirm").await;
    b.wait_h1("Schedule campaign_scan paused").await;
    let audit = app.audit("schedule.pause").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_deref()),
        ("alice", Some("campaign_scan"))
    );
    assert_eq!(audit[0].2["reason"], "INC-7 scan storm");

    // A tick while paused is recorded as skipped and enqueues nothing.
    let jobs_before = job_count(app.pool()).await;
    let t2 = t1 + chrono::Duration::minutes(10);
    assert_eq!(scheduler.enqueue_tick(scan, t2).await.unwrap(), None);
    assert_eq!(job_count(app.pool()).await, jobs_before);
    b.goto("/ui/schedules").await;
    let row = b.row("#schedules", "campaign_scan").await;
    assert!(
        row[3].contains("paused") && row[3].contains("INC-7 scan storm"),
        "{row:?}"
    );
    assert!(row[5].contains("skipped (paused)"), "{row:?}");
    b.screenshot("schedules").await;

    // Resume: the next tick enqueues again; the skipped one is not replayed.
    b.click("#schedule-campaign_scan button").await;
    b.wait_h1("Resume the schedule campaign_scan?").await;
    b.click("#confirm").await;
    b.wait_h1("Schedule campaign_scan resumed").await;
    assert_eq!(
        scheduler.enqueue_tick(scan, t2).await.unwrap(),
        None,
        "skipped stays skipped"
    );
    let t3 = t2 + chrono::Duration::minutes(10);
    assert!(scheduler.enqueue_tick(scan, t3).await.unwrap().is_some());

    // A viewer sees the page but no button.
    let v = app.browser().await;
    v.sign_in("viv", VIV_PW).await;
    v.goto("/ui/schedules").await;
    v.wait_h1("Schedules").await;
    assert!(!v.has("#schedule-campaign_scan button").await);
    v.close().await;
    b.close().await;
}

#[tokio::test]
async fn the_activity_page_charts_completions_and_failures_per_kind_over_hours_and_days() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    // Three hours ago: 4 completed sleeps; one hour ago: a dead card_update after two failed
    // attempts; yesterday beyond 24 h: one completed sleep (only in 7 and 30 days).
    let at = |hours: i64| chrono::Utc::now() - chrono::Duration::hours(hours);
    for _ in 0..4 {
        let id = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
        sqlx::query("UPDATE fleet_jobs SET state = 'completed', finished_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at(3))
            .execute(app.pool())
            .await
            .unwrap();
    }
    let dead = insert_unchecked(app.pool(), "card_update", json!({})).await;
    sqlx::query(
        "UPDATE fleet_jobs SET state = 'dead', finished_at = $2, attempted_at = $2,
             errors = jsonb_build_array(
                 jsonb_build_object('attempt', 1, 'class', 'retryable', 'message', 'x', 'at', $2),
                 jsonb_build_object('attempt', 2, 'class', 'fatal', 'message', 'y', 'at', $2),
                 'not an entry from this binary')
         WHERE id = $1",
    )
    .bind(dead)
    .bind(at(1))
    .execute(app.pool())
    .await
    .unwrap();
    let old = insert_unchecked(app.pool(), "fleet.sleep", json!({"ms": 1})).await;
    sqlx::query("UPDATE fleet_jobs SET state = 'completed', finished_at = $2 WHERE id = $1")
        .bind(old)
        .bind(at(30))
        .execute(app.pool())
        .await
        .unwrap();

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/activity").await;
    b.wait_h1("Activity").await;
    let all = b.text("#all").await;
    assert!(all.contains("4 completed · 3 failures"), "{all}");
    assert!(b
        .text("#kind-fleet\\.sleep")
        .await
        .contains("4 completed · 0 failures"));
    assert!(b
        .text("#kind-card_update")
        .await
        .contains("0 completed · 3 failures"));
    b.screenshot("activity").await;
    b.goto("/ui/activity?range=7d").await;
    assert!(b.text("#all").await.contains("5 completed · 3 failures"));
    b.goto("/ui/activity?range=30d&kind=card_update").await;
    assert!(!b.has("#all").await && !b.has("#kind-fleet\\.sleep").await);
    assert!(b.has("#kind-card_update").await);
    b.goto("/ui/activity?range=1y").await;
    assert!(b
        .main_text()
        .await
        .contains("range: \"1y\" is not one of 24h, 7d, 30d"));
    b.close().await;
}

#[tokio::test]
async fn dark_mode_follows_the_switch_and_is_kept_across_pages() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    let main_bg = || async {
        b.c.execute(
            "return getComputedStyle(document.documentElement).backgroundColor",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
    };
    let light = main_bg().await;
    assert_eq!(b.text("#theme-toggle").await, "Dark mode");
    b.click("#theme-toggle").await;
    let dark = main_bg().await;
    assert_ne!(light, dark, "the page darkened");
    assert_eq!(b.text("#theme-toggle").await, "Light mode");
    b.goto("/ui/jobs").await;
    b.wait_h1("Jobs").await;
    assert_eq!(main_bg().await, dark, "kept on the next page");
    b.goto("/ui/").await;
    b.wait_h1("Overview").await;
    b.screenshot("overview-dark").await;
    b.click("#theme-toggle").await;
    assert_eq!(main_bg().await, light);
    b.close().await;
}

#[tokio::test]
async fn a_drain_preview_names_the_card_hold_a_retrying_booking_attempt_holds() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let (booking, job) = booking_holding_a_card(app.pool()).await;
    set_state(
        app.pool(),
        job,
        "retryable",
        Some("stripe: api_error (503)"),
    )
    .await;
    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.act_on_kind("booking_attempt", "Drain…").await;
    b.wait_h1("Drain booking_attempt?").await;
    assert!(b
        .text("#retrying")
        .await
        .contains("1 job(s) are waiting to retry"));
    assert!(b
        .text("#money-note")
        .await
        .contains("1 booking(s) have money"));
    let row = b.row("#money", "card hold").await;
    assert_eq!(row[1], "412.30 USD", "{row:?}");
    assert_eq!(row[2], booking.to_string(), "{row:?}");
    assert_eq!(row[3], job.to_string(), "{row:?}");
    assert!(
        b.has(&format!("#money a[href='/ui/bookings/{booking}']"))
            .await
    );
    b.screenshot("drain-preview-money").await;
    b.close().await;
}

#[tokio::test]
async fn a_refund_that_failed_is_shown_and_its_payout_recorded_through_a_dry_run_and_audited() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let booking = booking_whose_refund_failed(app.pool(), 1).await;
    let owed = |pool: PgPool| async move {
        fleet::check::run(&jobs::Db::from(pool))
            .await
            .unwrap()
            .iter()
            .any(|v| v.invariant.starts_with("every captured PaymentIntent"))
    };
    assert!(owed(app.pool().clone()).await);

    let v = app.browser().await;
    v.sign_in("viv", VIV_PW).await;
    v.goto(&format!("/ui/bookings/{booking}")).await;
    v.wait_h1("Booking").await;
    assert!(v.main_text().await.contains("A refund failed:"));
    assert!(!v.has("#paid-out").await, "a viewer records nothing");
    v.close().await;

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto(&format!("/ui/bookings/{booking}")).await;
    b.wait_h1("Booking").await;
    let refunds = b.text("#refunds").await;
    assert!(
        refunds.contains("failed") && refunds.contains("expired_or_canceled_card"),
        "{refunds}"
    );
    b.screenshot("booking-refund-failed").await;
    // Free text where a ticket id belongs is refused, naming why.
    b.fill("#f-reference", "Jane Doe IBAN FR76").await;
    b.click_button("#paid-out", "Record payout…").await;
    // The refusal's own page (a busy machine may not have loaded it yet when the click returns).
    b.wait_h1("Bad Request").await;
    assert!(b.main_text().await.contains("not free text"));
    b.goto(&format!("/ui/bookings/{booking}")).await;
    b.el("#f-how")
        .await
        .select_by_value("bank_transfer")
        .await
        .unwrap();
    b.fill("#f-reference", "FIN-4711").await;
    b.click_button("#paid-out", "Record payout…").await;
    b.wait_h1("Record the payout?").await;
    assert!(b.text("#paid-out-amount").await.contains("177.32 USD"));
    assert!(
        owed(app.pool().clone()).await,
        "the preview records nothing"
    );
    b.click("#confirm").await;
    b.wait_h1("Payout recorded").await;
    assert!(!owed(app.pool().clone()).await);
    let audit = app.audit("refund.paid_out").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "alice");
    assert_eq!(audit[0].2["reference"], "FIN-4711");
    b.goto(&format!("/ui/bookings/{booking}")).await;
    assert!(!b.has("#paid-out").await, "nothing owed any more");
    assert!(b.text("#refunds").await.contains("paid_out.bank_transfer"));
    b.close().await;
}

/// The airline moved two booked flights: the booking page shows each change's legs before and
/// after and its deadline; a viewer sees no decision; an operator accepts one (preview, then
/// confirm: the accept job is queued once, audited) and cancels and refunds the other (the
/// booking is cancelled, its refund queued, the change decided by the operator).
#[tokio::test]
async fn an_airline_change_is_shown_with_old_and_new_times_and_accepted_or_cancelled_through_a_preview(
) {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let keep = booking_with_an_airline_change(app.pool(), 1).await;
    let cancel = booking_with_an_airline_change(app.pool(), 2).await;

    let v = app.browser().await;
    v.sign_in("viv", VIV_PW).await;
    v.goto(&format!("/ui/bookings/{keep}")).await;
    v.wait_h1("Booking").await;
    let shown = v.text("#airline-changes").await;
    assert!(
        shown.contains("2027-03-26 06:15") && shown.contains("2027-03-26 07:45"),
        "{shown}"
    );
    assert!(shown.contains("decide before"), "{shown}");
    assert!(
        !v.main_text().await.contains("Accept the new schedule"),
        "a viewer decides nothing"
    );
    v.close().await;

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto(&format!("/ui/bookings/{keep}")).await;
    b.wait_h1("Booking").await;
    b.screenshot("booking-airline-change").await;
    b.click_button("#airline-changes", "Accept the new schedule…")
        .await;
    b.wait_h1("Decide the airline change?").await;
    assert!(b
        .text("#change-decision")
        .await
        .contains("Would accept airline change aic_1"));
    assert!(
        app.audit("airline_change.accept_requested")
            .await
            .is_empty(),
        "the preview changes nothing"
    );
    b.click("#confirm").await;
    b.wait_h1("Airline change decided").await;
    let audit = app.audit("airline_change.accept_requested").await;
    assert_eq!((audit.len(), audit[0].0.as_str()), (1, "alice"));
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_jobs WHERE kind = 'airline_change_action'
         AND idempotency_key = 'airline_change_action:aic_1'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(queued, 1);

    b.goto(&format!("/ui/bookings/{cancel}")).await;
    b.wait_h1("Booking").await;
    b.click_button("#airline-changes", "Cancel and refund…")
        .await;
    b.wait_h1("Decide the airline change?").await;
    assert!(b
        .text("#change-decision")
        .await
        .contains("refund 177.32 USD"));
    b.click("#confirm").await;
    b.wait_h1("Airline change decided").await;
    let (booking, change, by): (String, String, Option<String>) = sqlx::query_as(
        "SELECT b.status, a.status, a.decided_by FROM bookings b
         JOIN airline_changes a ON a.booking_id = b.id WHERE b.id = $1",
    )
    .bind(cancel)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        (booking.as_str(), change.as_str(), by.as_deref()),
        ("cancelled", "cancelled", Some("alice"))
    );
    b.goto(&format!("/ui/bookings/{cancel}")).await;
    let decided = b.text("#airline-changes").await;
    assert!(
        decided.contains("cancelled") && decided.contains("by alice"),
        "{decided}"
    );
    assert!(
        !b.main_text().await.contains("Cancel and refund…"),
        "decided: no more buttons"
    );
    b.close().await;
}

/// A seeded campaign `n`'s ticketed booking (177.32 USD) whose flight the airline moved by
/// 90 minutes (`aic_{n}`, open, deadline in two days).
async fn booking_with_an_airline_change(pool: &PgPool, n: usize) -> uuid::Uuid {
    let s = seed_sealed(pool, &jobs::seed::CampaignSeed::new(n)).await;
    let legs = |departs: &str, arrives: &str| {
        serde_json::json!([{"origin": "LHR", "destination": "JFK", "departing_at": departs,
                            "arriving_at": arrives, "segments": 1}])
    };
    sqlx::query_scalar(
        "WITH b AS (
             INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id,
                 stripe_payment_intent_id, total_amount, currency, status, authorized_at,
                 order_attempted_at, ordered_at, captured_at, offer_checked_at)
             VALUES ($1, 'off_ac' || $2, 'ord_ac' || $2, 'pi_ac' || $2, 177.32, 'USD', 'ticketed',
                     now(), now(), now(), now(), now())
             RETURNING id)
         INSERT INTO airline_changes (id, booking_id, order_id, removed, added, available_actions,
                                      detected_at, respond_by)
         SELECT 'aic_' || $2, id, 'ord_ac' || $2, $3, $4, '{accept,cancel,change}', now(),
                now() + interval '2 days' FROM b
         RETURNING booking_id",
    )
    .bind(s.campaign_id)
    .bind(n.to_string())
    .bind(legs("2027-03-26T06:15:00", "2027-03-26T09:20:00"))
    .bind(legs("2027-03-26T07:45:00", "2027-03-26T10:50:00"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A seeded campaign `n`'s booking, ticketed, refunded, and then its refund sent back by the
/// card network (`failed`, `expired_or_canceled_card`): 177.32 USD owed.
async fn booking_whose_refund_failed(pool: &PgPool, n: usize) -> uuid::Uuid {
    let s = seed_sealed(pool, &jobs::seed::CampaignSeed::new(n)).await;
    sqlx::query_scalar(
        "WITH b AS (
             INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id,
                 stripe_payment_intent_id, total_amount, currency, status, authorized_at,
                 order_attempted_at, ordered_at, captured_at, offer_checked_at)
             VALUES ($1, 'off_po' || $2, 'ord_po' || $2, 'pi_po' || $2, 177.32, 'USD', 'refunded',
                     now(), now(), now(), now(), now())
             RETURNING id)
         INSERT INTO refunds (booking_id, stripe_refund_id, amount, currency, reason, status,
                              failure_reason)
         SELECT id, 're_failed' || $2, 177.32, 'USD', 'customer_request', 'failed',
                'expired_or_canceled_card' FROM b
         RETURNING booking_id",
    )
    .bind(s.campaign_id)
    .bind(n.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_money_page_shows_what_was_booked_what_failed_what_is_owed_and_the_providers() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    booking_whose_refund_failed(app.pool(), 1).await;
    // Today: one booking ticketed (412.30 EUR), one declined; yesterday: one ticketed.
    for (n, status, failure, amount, cur, age_h) in [
        (2, "ticketed", None, "412.30", "EUR", 0),
        (3, "failed", Some("card_declined"), "99.00", "USD", 0),
        (4, "ticketed", None, "250.00", "USD", 30),
    ] {
        let mut seed = jobs::seed::CampaignSeed::new(n);
        seed.currency = cur.to_owned();
        let c = seed_sealed(app.pool(), &seed).await;
        sqlx::query(
            "WITH t AS (SELECT now() - $7 * interval '1 hour' AS at, $5 = 'ticketed' AS paid)
             INSERT INTO bookings (campaign_id, duffel_offer_id, duffel_order_id,
                 stripe_payment_intent_id, total_amount, currency, status, failure_code,
                 created_at, offer_checked_at, authorized_at, order_attempted_at, ordered_at,
                 captured_at)
             SELECT $1, 'off_m' || $2, CASE WHEN paid THEN 'ord_m' || $2 END,
                    CASE WHEN paid THEN 'pi_m' || $2 END, $3::numeric, $4, $5, $6, at,
                    CASE WHEN paid THEN at END, CASE WHEN paid THEN at END,
                    CASE WHEN paid THEN at END, CASE WHEN paid THEN at END,
                    CASE WHEN paid THEN at END
             FROM t",
        )
        .bind(c.campaign_id)
        .bind(n.to_string())
        .bind(amount)
        .bind(cur)
        .bind(status)
        .bind(failure)
        .bind(age_h as f64)
        .execute(app.pool())
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO audit_log (actor, action, resource_type, resource_id, metadata)
         VALUES ('fleet', 'payment.dispute_opened', 'booking', 'x', '{}')",
    )
    .execute(app.pool())
    .await
    .unwrap();

    let b = app.browser().await;
    b.sign_in("viv", VIV_PW).await;
    b.goto("/ui/money").await;
    b.wait_h1("Money").await;
    let card = |id: &'static str| {
        let b = &b;
        async move { b.text(&format!("#{id} .card-value")).await }
    };
    assert_eq!(
        card("booked-today").await,
        "2",
        "the refunded one and today's ticket"
    );
    assert_eq!(card("booked-week").await, "3");
    assert_eq!(card("failed-week").await, "1");
    assert_eq!(card("owed").await, "1");
    assert_eq!(card("disputes-week").await, "1");
    let today = b.text("#money-today").await;
    assert!(
        today.contains("412.30 EUR") && today.contains("177.32 USD"),
        "{today}"
    );
    assert!(today.contains("card_declined 1"), "{today}");
    assert!(today.contains("failed 1"), "{today}");
    let week = b.text("#money-week").await;
    assert!(week.contains("427.32 USD"), "both USD bookings: {week}");
    assert!(b.main_text().await.contains("Refunds owed:"));
    let budgets = b.text("#budgets").await;
    assert!(
        budgets.contains("stripe") && budgets.contains("open"),
        "{budgets}"
    );
    assert!(b.text("#provider-kinds").await.contains("booking_attempt"));
    b.screenshot("money").await;
    b.close().await;
}

#[tokio::test]
async fn travelers_requests_are_listed_against_their_deadline_and_opened_through_a_preview() {
    if !browser_available() {
        return;
    }
    let app = App::start().await;
    let s = seed_sealed(app.pool(), &jobs::seed::CampaignSeed::new(3)).await;
    // An export asked for by the product 26 days ago, still waiting: shown as urgent.
    sqlx::query(
        "INSERT INTO data_requests (kind, user_id, source, requested_by, external_id, requested_at,
                                    due_at, waiting_on)
         VALUES ('export', $1, 'product', 'product', 'dsr_old', now() - interval '26 days',
                 now() + interval '4 days', 'email_unavailable')",
    )
    .bind(s.user_id)
    .execute(app.pool())
    .await
    .unwrap();

    let v = app.browser().await;
    v.sign_in("viv", VIV_PW).await;
    v.goto("/ui/travelers").await;
    v.wait_h1("Travelers' requests").await;
    let listed = v.text("#requests").await;
    assert!(
        listed.contains("export") && listed.contains("email_unavailable"),
        "{listed}"
    );
    assert!(
        listed.contains("3 days") || listed.contains("4 days"),
        "{listed}"
    );
    assert!(
        !v.main_text().await.contains("Erase or export a traveler"),
        "a viewer opens nothing"
    );
    v.close().await;

    let b = app.browser().await;
    b.sign_in("alice", ALICE_PW).await;
    b.goto("/ui/travelers").await;
    b.wait_h1("Travelers' requests").await;
    b.fill("#traveler-user", &s.user_id.to_string()).await;
    b.click("select[name=decision] option[value=erasure]").await;
    b.screenshot("travelers").await;
    b.click_button("#request-form", "Preview…").await;
    b.wait_h1("Erase this traveler?").await;
    let preview = b.text("#request-summary").await;
    assert!(preview.contains("detaches 1 card(s)"), "{preview}");
    assert!(!preview.contains(&jobs::seed::CampaignSeed::new(3).email));
    assert!(
        app.audit("erasure.requested").await.is_empty(),
        "the preview changes nothing"
    );
    b.screenshot("travelers-erase-preview").await;
    b.click("#confirm").await;
    b.wait_h1("Request opened").await;
    let audit = app.audit("erasure.requested").await;
    assert_eq!((audit.len(), audit[0].0.as_str()), (1, "alice"));
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data_requests WHERE user_id = $1 AND status = 'open'",
    )
    .bind(s.user_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(open, 2, "the export and the erasure");
    b.close().await;
}
