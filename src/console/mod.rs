//! The operator console: a web page for the fleet, served by `fleet serve` on the admin
//! listener under `/ui/` (docs/console.md).
//!
//! It reads and acts through the same functions as the CLI ([`crate::ops::Ops`] over
//! `src/queue/` and the domain's booking view): no query of its own, apart from its sessions
//! table. Every action is shown first as the CLI's dry run, then confirmed, then written with
//! the same `audit_log` row as the CLI, the signed-in user as its actor.
//!
//! | page | module |
//! |---|---|
//! | sign-in, sessions, CSRF, roles | [`auth`] |
//! | `/ui/` live overview | `overview` |
//! | `/ui/jobs`, `/ui/jobs/{id}` | `jobs` |
//! | `/ui/bookings/{id}` timeline | `booking` |
//! | `/ui/actions/*` preview, confirm, result | `actions` |
//! | `/ui/schedules` cron schedules, their ticks | `schedules` |
//! | `/ui/activity` throughput and failures over hours and days | `activity` |
//! | `/ui/money` bookings, refunds owed, disputes, providers | `money` |
//! | `/ui/travelers` open erasure and export requests against their deadline | `travelers` |
//! | `/ui/audit` | `audit` |
//! | page frame, badges, times, static files | `templates` |
//!
//! Access: every route but the login page and the static files needs a session
//! ([`auth::require_session`]); every state-changing request needs the session's CSRF token
//! ([`auth::require_csrf`]); every action needs the operator role ([`auth::require_operator`]).

mod actions;
mod activity;
mod audit;
pub mod auth;
mod booking;
mod jobs;
mod money;
mod overview;
mod schedules;
mod session;
mod templates;
mod travelers;

use std::{sync::Arc, time::Duration};

use ::jobs::Db;
use axum::{
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};

use crate::{config::ConsoleSettings, ops::Ops, Queue, Registry};

#[cfg(feature = "testkit")]
pub use actions::MAX_CONFIRMED_JOBS;
pub use auth::hash_password;
pub use session::Session;

/// Everything the console's handlers share (behind [`ConsoleState`]).
pub struct Inner {
    /// The primary: sessions, and every action.
    db: Db,
    /// A read replica for the pages, when configured ([`Console::with_reads`]).
    reads: Option<Db>,
    registry: Arc<Registry>,
    queue: Queue,
    settings: ConsoleSettings,
    /// A worker whose last heartbeat is older than this is shown as stale (`worker.lease`,
    /// as `fleet workers` does).
    alive_within: Duration,
    limiter: auth::LoginLimiter,
    overview: overview::Cache,
    /// The `[schedules.*]` this console shows and pauses ([`Console::with_schedules`]).
    schedules: Vec<crate::scheduler::Schedule>,
}

/// The console's shared state.
#[derive(Clone)]
pub struct ConsoleState(Arc<Inner>);

impl std::ops::Deref for ConsoleState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl ConsoleState {
    /// The CLI's operator commands, acting as `actor` (the signed-in user).
    fn ops(&self, actor: &str) -> Ops {
        let ops = Ops::new(self.db.clone(), self.registry.kind_names(), actor);
        match &self.reads {
            Some(r) => ops.with_reads(r.clone()),
            None => ops,
        }
    }
}

/// The console, ready to be served.
pub struct Console {
    state: ConsoleState,
}

impl Console {
    /// A console over `db` for the kinds of `registry`; `alive_within`: how recent a
    /// worker's heartbeat must be for it to count as alive (`worker.lease`).
    pub fn new(
        db: impl Into<Db>,
        registry: Arc<Registry>,
        settings: ConsoleSettings,
        alive_within: Duration,
    ) -> Self {
        let db = db.into();
        let queue = Queue::new(db.clone(), registry.clone());
        let limiter = auth::limiter_for(&settings);
        let overview = overview::Cache::new(settings.refresh);
        Self {
            state: ConsoleState(Arc::new(Inner {
                db,
                reads: None,
                registry,
                queue,
                settings,
                alive_within,
                limiter,
                overview,
                schedules: Vec::new(),
            })),
        }
    }

    /// Reads the pages from `reads`, a hot standby of the primary (`database.read_url`); the
    /// overview says so, with the replica's lag. Actions (and their previews, which are dry
    /// runs), sign-ins and sessions stay on the primary.
    pub fn with_reads(mut self, reads: Db) -> Self {
        Arc::get_mut(&mut self.state.0)
            .expect("with_reads is called before router")
            .reads = Some(reads);
        self
    }

    /// Shows and pauses `schedules` (the validated `[schedules.*]`, as the scheduler runs
    /// them) on `/ui/schedules`.
    pub fn with_schedules(mut self, schedules: Vec<crate::scheduler::Schedule>) -> Self {
        Arc::get_mut(&mut self.state.0)
            .expect("with_schedules is called before router")
            .schedules = schedules;
        self
    }

    /// The console's routes, with absolute paths under `/ui/` (merge it into the admin
    /// router; [`crate::serve::admin_router_with_console`] does).
    pub fn router(self) -> Router {
        let st = self.state;
        let act = Router::new()
            .route("/ui/actions/{action}", post(actions::act))
            .route_layer(middleware::from_fn(auth::require_operator));
        let signed_in = Router::new()
            .route("/ui/", get(overview::page))
            .route("/ui/overview/live", get(overview::live))
            .route("/ui/jobs", get(jobs::list))
            .route("/ui/jobs/{id}", get(jobs::show))
            .route("/ui/bookings", get(booking::find))
            .route("/ui/bookings/{id}", get(booking::show))
            .route("/ui/schedules", get(schedules::list))
            .route("/ui/activity", get(activity::page))
            .route("/ui/money", get(money::page))
            .route("/ui/travelers", get(travelers::page))
            .route("/ui/audit", get(audit::list))
            .route("/ui/logout", post(auth::logout))
            .merge(act)
            // Outermost first: the session, then the CSRF check that needs it.
            .route_layer(middleware::from_fn(auth::require_csrf))
            .route_layer(middleware::from_fn_with_state(
                st.clone(),
                auth::require_session,
            ));
        Router::new()
            .route("/ui/login", get(auth::login_page).post(auth::login))
            .route("/ui/static/{file}", get(templates::asset))
            .merge(signed_in)
            .fallback(not_found)
            .layer(middleware::from_fn(templates::reveal_bidi_controls))
            .layer(middleware::from_fn(auth::security_headers))
            .with_state(st)
    }
}

async fn not_found() -> Response {
    templates::error_page(StatusCode::NOT_FOUND, "there is no such page", None)
}

/// What a console handler can fail with; each variant names its status. The one place an
/// operator command's error ([`crate::ops::OpsError`]) becomes a status.
#[derive(Debug)]
pub(crate) enum PageError {
    /// 404: the thing asked for does not exist.
    NotFound(String),
    /// 400: the request cannot be done as asked (a bad filter, an unknown kind); nothing
    /// changed. The message is the operator command's.
    BadRequest(String),
    /// 409: the command ran but could not finish as asked (a drain that ran out of time); the
    /// message says what state it left.
    Conflict(String),
    /// 503: the read replica cannot be read; the details go to the log.
    Unavailable(anyhow::Error),
    /// 500: the database or a bug; the details go to the log, not the page.
    Internal(anyhow::Error),
}

impl From<crate::ops::OpsError> for PageError {
    fn from(e: crate::ops::OpsError) -> Self {
        use crate::ops::OpsError;
        match e {
            OpsError::Usage(m) => Self::BadRequest(m),
            e @ OpsError::NoSuchJob(_) => Self::NotFound(e.to_string()),
            e @ OpsError::DrainTimedOut(_) => Self::Conflict(e.to_string()),
            e @ OpsError::Replica { .. } => Self::Unavailable(e.into()),
            e @ (OpsError::Domain(_) | OpsError::Database(_)) => Self::Internal(e.into()),
        }
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl PageError {
    fn into_page(self, session: Option<&Session>) -> Response {
        match self {
            Self::NotFound(m) => templates::error_page(StatusCode::NOT_FOUND, &m, session),
            Self::BadRequest(m) => templates::error_page(StatusCode::BAD_REQUEST, &m, session),
            Self::Conflict(m) => templates::error_page(StatusCode::CONFLICT, &m, session),
            Self::Unavailable(e) => {
                tracing::error!(error = %format!("{e:#}"), "console: the read replica failed");
                templates::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the read replica cannot be read right now; the log has the details",
                    session,
                )
            }
            Self::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "console: a page failed");
                templates::error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "something failed on our side; the log has the details",
                    session,
                )
            }
        }
    }
}

/// A handler's result: a page, or an error page for the signed-in user.
pub(crate) type PageResult = Result<Response, (PageError, Option<Session>)>;

/// Attaches the session to an error, so its page keeps the nav.
pub(crate) trait WithSession<T> {
    fn or_page(self, s: &Session) -> Result<T, (PageError, Option<Session>)>;
}

impl<T, E: Into<PageError>> WithSession<T> for Result<T, E> {
    fn or_page(self, s: &Session) -> Result<T, (PageError, Option<Session>)> {
        self.map_err(|e| (e.into(), Some(s.clone())))
    }
}

/// Turns a [`PageResult`] into the response.
pub(crate) fn respond(r: PageResult) -> Response {
    match r {
        Ok(res) => res,
        Err((e, s)) => e.into_page(s.as_ref()),
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.into_page(None)
    }
}
