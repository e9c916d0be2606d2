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
    /// Deliver signed webhook events to a running `fleet serve` at this base URL
    /// (`{URL}/webhooks/stripe`, `{URL}/webhooks/duffel`), signed with the first secret of
    /// FLEET_STRIPE_WEBHOOK_SECRET and FLEET_DUFFEL_WEBHOOK_SECRET (the variables serve reads).
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// Delay every Stripe and Duffel request by a time drawn uniformly from this range, like a
    /// real provider's latency: `100ms..400ms`, or one fixed duration (`250ms`). Default: none.
    #[arg(long, value_name = "RANGE")]
    latency: Option<sandbox::LatencyRange>,
    /// How long the `slow` scenario's order answer takes (e.g. `3s`, at most 60s).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_slow)]
    slow: std::time::Duration,
}

fn parse_slow(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration_within(s, std::time::Duration::from_secs(60))
}

pub async fn run(a: SandboxArgs) -> anyhow::Result<()> {
    if !a.bind.ip().is_loopback() {
        usage!(
            "--bind {}: the sandbox only listens on loopback addresses",
            a.bind
        );
    }
    let webhook = match &a.webhook_url {
        None => None,
        Some(url) => {
            let base = url.trim_end_matches('/');
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                usage!("--webhook-url {url:?} must be an http:// or https:// URL");
            }
            let secrets = crate::webhooks::WebhookSecrets::from_env()?;
            Some(sandbox::WebhookTarget {
                stripe_url: format!("{base}/webhooks/stripe"),
                stripe_secret: secrets.stripe[0].clone(),
                duffel_url: format!("{base}/webhooks/duffel"),
                duffel_secret: secrets.duffel[0].clone(),
            })
        }
    };
    let delivering = webhook.as_ref().map(|w| {
        format!(
            "; delivering signed events to {} and {}",
            w.stripe_url, w.duffel_url
        )
    });
    let cfg = sandbox::SandboxConfig {
        seed: a.seed,
        webhook,
        provider_latency: a.latency,
        slow_ms: a.slow.as_millis() as u64,
        ..Default::default()
    };
    let running = sandbox::Sandbox::start(cfg, a.bind).await?;
    println!(
        "sandbox listening on {}{}{}",
        running.base_url,
        delivering.unwrap_or_default(),
        a.latency
            .map(|l| format!("; provider calls take {:?}..{:?}", l.min, l.max))
            .unwrap_or_default()
    );
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    shutdown.cancelled().await;
    running.shutdown().await
}
