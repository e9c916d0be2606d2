//! `fleet serve`: the HTTP face of the fleet. `/health` and `/metrics` now; the webhook
//! ingress (Stripe, Duffel) joins this router when the domain's follow-up jobs land.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::queue;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The fleet's database.
    pub pool: PgPool,
}

/// The router: `GET /health`, `GET /metrics`.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(AppState { pool })
}

/// What `/health` answers.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// `ok`, or the failure class (no connection details).
    pub database: String,
    /// Age of the oldest ready job per kind, seconds.
    pub queue_lag_seconds: BTreeMap<String, f64>,
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let probe = async {
        let mut conn = s.pool.acquire().await?;
        queue::job_stats(&mut conn, None).await
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(stats)) => {
            let queue_lag_seconds = stats
                .into_iter()
                .filter_map(|k| Some((k.kind, k.oldest_available_age_s?)))
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

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    match crate::metrics::render(Some(&s.pool)).await {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain; version=0.0.4")],
            format!("# database unavailable: {}\n", db_error_class(&e)),
        ),
    }
}

/// Binds `bind` and serves `router` until `shutdown`. Returns the bound address via `bound`.
pub async fn run(
    bind: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving HTTP");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
