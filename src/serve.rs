//! The fleet's HTTP listeners, hardened for strangers.
//!
//! `fleet serve` listens twice:
//! - the **public** listener (`serve.bind`) serves only the webhook ingress (`/webhooks/*`);
//! - the **admin** listener (`serve.admin_bind`, loopback by default) serves [`admin_router`]:
//!   `/livez` (the process answers; never touches the database), `/readyz` (a cheap query and
//!   the schema check), `/metrics` (the snapshot: never a query) and the operator console.
//!   Workers serve the same admin endpoints on `--metrics-bind`.
//!
//! Every listener ([`run_with`]) closes connections that do not send their headers within
//! `header_timeout` (also between requests), caps open connections at `max_connections` (more
//! are closed as they arrive), and stops accepting on shutdown while in-flight requests finish
//! for `shutdown_grace`. [`harden`] adds the per-request limits as tower layers: a body must
//! arrive within `body_timeout`, a request must be answered within `request_timeout` (408),
//! and beyond `max_in_flight` requests at once the excess is shed at once with 503 and
//! `Retry-After`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    error_handling::HandleErrorLayer,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    BoxError, Json, Router,
};
use hyper_util::{rt::TokioIo, rt::TokioTimer, service::TowerToHyperService};
use jobs::Db;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};

use crate::{config::ServeSettings, queue};

/// The most a request's head (request line and headers) may take.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The limits of one listener (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest webhook body (413 beyond).
    pub max_body_bytes: usize,
    /// Headers must arrive within this (also between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// A body must arrive within this.
    pub body_timeout: Duration,
    /// A request must be answered within this (408 after).
    pub request_timeout: Duration,
    /// Requests at once; more are shed with 503.
    pub max_in_flight: usize,
    /// Open connections; more are closed as they arrive.
    pub max_connections: usize,
    /// In-flight requests get this long after shutdown begins.
    pub shutdown_grace: Duration,
}

impl From<&ServeSettings> for Limits {
    fn from(s: &ServeSettings) -> Self {
        Self {
            max_body_bytes: s.max_body_bytes,
            header_timeout: s.header_timeout,
            body_timeout: s.body_timeout,
            request_timeout: s.request_timeout,
            max_in_flight: s.max_in_flight,
            max_connections: s.max_connections,
            shutdown_grace: s.shutdown_grace,
        }
    }
}

impl Default for Limits {
    /// The embedded defaults of `[serve]`.
    fn default() -> Self {
        let s = crate::config::Settings::from_sources(None, &[])
            .expect("embedded config/default.toml is valid");
        Self::from(&s.serve)
    }
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AppState {
    /// The fleet's database.
    pub db: Db,
}

/// The admin endpoints: `GET /livez`, `GET /readyz`, `GET /metrics`, and `GET /health` (the
/// readiness answer with each kind's queue lag, kept for existing probes).
pub fn admin_router(db: impl Into<Db>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(AppState { db: db.into() })
}

/// The admin endpoints and the operator console under `/ui/` (what `fleet serve` serves on the
/// admin listener); `/` and `/ui` lead to `/ui/`.
pub fn admin_router_with_console(db: impl Into<Db>, console: crate::console::Console) -> Router {
    let to_console = || async { axum::response::Redirect::to("/ui/") };
    admin_router(db)
        .route("/", get(to_console))
        .route("/ui", get(to_console))
        .merge(console.router())
}

/// The admin endpoints (the router `fleet worker --metrics-bind` serves).
#[cfg(feature = "testkit")]
pub fn router(db: impl Into<Db>) -> Router {
    admin_router(db)
}

async fn livez() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "alive" }))
}

/// What `/readyz` and `/health` answer.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// `ok`, or the failure class (no connection details).
    pub database: String,
    /// Age of the oldest ready job per kind, seconds (`/health` only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub queue_lag_seconds: BTreeMap<String, f64>,
}

/// Ready: the process's health monitor has not seen the database stop answering, and it
/// answers a probe within 2 s with a schema that fits this binary.
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    if !s.db.health().is_up() {
        return unavailable(
            "does not answer (the health check has failed since the last success)".into(),
        );
    }
    let probe = async {
        sqlx::query("SELECT 1").execute(&s.db).await?;
        crate::database::require_schema(&s.db)
            .await
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        Ok::<_, sqlx::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                database: "ok".into(),
                queue_lag_seconds: BTreeMap::new(),
            }),
        ),
        Ok(Err(sqlx::Error::Protocol(why))) => unavailable(why),
        Ok(Err(e)) => unavailable(format!("error: {}", db_error_class(&e))),
        Err(_) => unavailable("timeout after 2s".into()),
    }
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let probe = async { queue::job_gauges(&s.db, None).await };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(gauges)) => {
            let queue_lag_seconds = gauges
                .into_iter()
                .filter_map(|g| Some((g.kind, g.oldest_age_s?)))
                .collect();
            (
                StatusCode::OK,
                Json(Health {
                    status: "ok",
                    database: "ok".into(),
                    queue_lag_seconds,
                }),
            )
        }
        Ok(Err(e)) => unavailable(format!("error: {}", db_error_class(&e))),
        Err(_) => unavailable("timeout after 2s".into()),
    }
}

fn unavailable(database: String) -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "unavailable",
            database,
            queue_lag_seconds: BTreeMap::new(),
        }),
    )
}

/// A short class for a database error, without connection details.
fn db_error_class(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "pool timed out",
        sqlx::Error::Io(_) => "connection failed",
        sqlx::Error::Database(_) => "query failed",
        _ => "database error",
    }
}

/// Always 200: the counters and the last snapshot (its age and `fleet_database_up` say how
/// fresh). Never touches the database.
async fn metrics() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render_text(),
    )
}

/// `router` with the per-request limits of `limits` as tower layers (see the module docs).
pub fn harden(router: Router, limits: &Limits) -> Router {
    // `with_state` turns handlers into routes once. Without it axum builds a route per request
    // for a stateless router, and each would get a layer (and a concurrency limit) of its own.
    router.with_state(()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            .concurrency_limit(limits.max_in_flight)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                limits.body_timeout,
            )),
    )
}

/// The answer to a shed request: come back in a second.
async fn overloaded(err: BoxError) -> Response {
    let shed = err.is::<tower::load_shed::error::Overloaded>();
    crate::metrics::metrics()
        .http_shed
        .with_label_values(&[if shed { "overloaded" } else { "error" }])
        .inc();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(serde_json::json!({ "error": if shed { "overloaded" } else { "unavailable" } })),
    )
        .into_response()
}

/// Raises the soft open-files limit to the hard one, so the connection cap (not the kernel)
/// is what turns connections away. Returns the limit now in effect.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Binds `bind` and serves `router` (hardened with the default limits) until `shutdown`.
/// Reports the bound address through `bound`.
#[cfg(feature = "testkit")]
pub async fn run(
    bind: std::net::SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    if let Some(tx) = bound {
        let _ = tx.send(listener.local_addr()?);
    }
    let limits = Limits::default();
    run_with(listener, harden(router, &limits), &limits, shutdown).await
}

/// Serves `router` on `listener` with the connection limits of `limits` until `shutdown`;
/// then stops accepting and lets in-flight requests finish for `shutdown_grace`.
pub async fn run_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving HTTP");
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let service = router;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a reset before accept: back off a moment.
                    tracing::warn!(%addr, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            crate::metrics::metrics()
                .http_shed
                .with_label_values(&["too_many_connections"])
                .inc();
            drop(stream);
            continue;
        };
        // Handlers that need the client's address (the console's login limit) find it as
        // `ConnectInfo`.
        let service = service
            .clone()
            .map_request(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // Headers beyond 64 KiB get 431 before any handler runs (hyper's default is ~400 KiB).
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are a client's doing (a reset, a timeout): nothing to report.
            let _ = conn.await;
            drop(permit);
        });
    }
    tracing::info!(%addr, "shutting down: no new connections, finishing in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%addr, "in-flight requests outlived the shutdown grace");
    }
    Ok(())
}
