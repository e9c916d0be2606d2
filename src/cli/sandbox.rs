//! `fleet sandbox`: the provider stand-in, served until SIGTERM/SIGINT.

use super::usage;
use tokio_util::sync::CancellationToken;

use super::spawn_signal_handler;

#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12111")]
    bind: std::net::SocketAddr,
    /// Seed of the deterministic fares.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub async fn run(a: SandboxArgs) -> anyhow::Result<()> {
    if !a.bind.ip().is_loopback() {
        usage!(
            "--bind {}: the sandbox only listens on loopback addresses",
            a.bind
        );
    }
    let cfg = sandbox::SandboxConfig {
        seed: a.seed,
        ..Default::default()
    };
    let running = sandbox::Sandbox::start(cfg, a.bind).await?;
    println!("sandbox listening on {}", running.base_url);
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    shutdown.cancelled().await;
    running.shutdown().await
}
