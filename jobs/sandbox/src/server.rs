//! Serving a sandbox: its router and the spawned server task.

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    admin, config::SandboxConfig, duffel, handle::Sandbox, kms, resend, scenarios::Provider,
    stripe, twilio,
};

impl Sandbox {
    /// Every route (Stripe, Duffel, Resend, Twilio, KMS on `POST /` and the `/_sandbox` admin
    /// endpoints) serving this sandbox's state, to mount in a server of your own.
    pub fn router(&self) -> Router {
        let out = |p| axum::middleware::from_fn_with_state((self.clone(), p), during_outage);
        Router::new()
            .merge(stripe::routes().route_layer(out(Provider::Stripe)))
            .merge(duffel::routes().route_layer(out(Provider::Duffel)))
            // Only the provider calls the fleet makes over the network pay the latency.
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                provider_latency,
            ))
            .merge(resend::routes().route_layer(out(Provider::Resend)))
            .merge(twilio::routes().route_layer(out(Provider::Twilio)))
            // KMS is faulted by `Sandbox::set_kms_fault`, not by the outages.
            .merge(kms::routes())
            .merge(admin::routes())
            .with_state(self.clone())
    }

    /// Binds `bind` (port 0 picks a free port) and serves a new sandbox's router on a spawned
    /// task (needs a Tokio runtime). Fails if the address cannot be bound.
    pub async fn start(cfg: SandboxConfig, bind: SocketAddr) -> anyhow::Result<RunningSandbox> {
        let sandbox = Sandbox::new(cfg);
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let app = sandbox.router();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
        tracing::info!(%addr, "sandbox listening");
        Ok(RunningSandbox {
            base_url: format!("http://{addr}"),
            addr,
            sandbox,
            shutdown,
            handle,
        })
    }
}

/// Answers every request with the provider's outage error (or a Twilio outage's 429) while it
/// is in one ([`Sandbox::set_outage`]), before the handler (so before any state changes and
/// before any idempotency record), and lets it through otherwise.
async fn during_outage(
    axum::extract::State((sb, provider)): axum::extract::State<(Sandbox, Provider)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(o) = sb.outage(provider) else {
        return next.run(req).await;
    };
    sb.count_outage_response(provider);
    let status = axum::http::StatusCode::from_u16(o.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    match provider {
        Provider::Stripe => stripe::outage_response(status),
        Provider::Duffel => duffel::outage_response(status),
        Provider::Resend => resend::outage_response(status),
        Provider::Twilio => twilio::outage_response(status),
    }
}

/// Waits [`SandboxConfig::provider_latency`] (a fresh draw per request), then handles it.
async fn provider_latency(
    axum::extract::State(sb): axum::extract::State<Sandbox>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(l) = sb.config().provider_latency {
        tokio::time::sleep(l.sample()).await;
    }
    next.run(req).await
}

/// A sandbox served on a spawned task. Dropping it does not stop the server; call
/// [`RunningSandbox::shutdown`].
pub struct RunningSandbox {
    /// `http://` and the bound address (e.g. `http://127.0.0.1:41234`): the base URL clients use
    /// in place of the providers'.
    pub base_url: String,
    /// The bound address, with the port the OS picked if `bind` asked for port 0.
    pub addr: SocketAddr,
    /// The served sandbox's state (counters, scenarios, events).
    pub sandbox: Sandbox,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

impl RunningSandbox {
    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }

    /// A token that stops the server when cancelled (e.g. tie it to the process's ctrl-c).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await??;
        Ok(())
    }
}
