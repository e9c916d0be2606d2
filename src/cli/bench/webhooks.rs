//! `fleet bench webhooks`: the webhook ingress as the providers and strangers meet it.
//!
//! A scratch database and the public listener exactly as `fleet serve` builds it (the webhook
//! router, [`crate::serve::harden`] and [`crate::serve::run_with`] with the `[serve]`
//! defaults, two signing secrets as during a rotation) in this process, on loopback.
//! 1. **load**: `clients` concurrent clients post `events` distinct correctly signed events
//!    (half Stripe `payment_intent.payment_failed`, half Duffel `order.created`, in the
//!    providers' documented delivered shapes) mixed with `invalid_share` × as many invalid
//!    requests (wrong secret, stale timestamp, no header, too many `v1` values, signed but
//!    malformed JSON). Reports throughput, p50/p95/p99 and the error rate (answers other than
//!    200 for a valid event or 4xx for an invalid one), then checks the database: every valid
//!    event recorded once with exactly its one follow-up job, no invalid one recorded, nothing
//!    else written.
//! 2. **cost**: one client, one request at a time, classes interleaved: a normal event; the
//!    worst request the server still reads to the end (a body of `serve.max_body_bytes` with
//!    the most `v1` values allowed, none matching, so every secret is tried); the largest valid
//!    event; and the old worst case (a 1 MiB body with 2,000 `v1` values), now refused by the
//!    caps. Reports each class's median and mean time and the worst-to-normal ratio.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    database::scratch::ScratchDb,
    serve::Limits,
    webhooks::{signature, WebhookSecrets},
    Queue,
};
use anyhow::bail;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const STRIPE_SECRETS: [&str; 2] = ["whsec_bench_old", "whsec_bench_new"];
const DUFFEL_SECRETS: [&str; 2] = ["whsec_bench_duffel_old", "whsec_bench_duffel_new"];

#[derive(clap::Args)]
pub struct WebhookBenchArgs {
    /// Distinct valid events posted in the load phase.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent clients in the load phase.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Invalid requests, as a share of the valid events (0.1 = 10 %).
    #[arg(long, default_value_t = 0.1)]
    invalid_share: f64,
    /// Requests of each class in the cost phase.
    #[arg(long, default_value_t = 300)]
    cost_samples: usize,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Figures of one run. Field names are the `--json` contract.
#[derive(Debug, Serialize)]
struct WebhookBenchReport {
    valid_events: usize,
    invalid_requests: usize,
    clients: usize,
    requests_per_s: f64,
    valid_events_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// Answers other than 200 for a valid event or 4xx for an invalid one, over all requests.
    error_rate: f64,
    /// 5xx answers (shed or database trouble) among them.
    server_errors: usize,
    cost: Vec<CostClass>,
    /// Median of the worst request the server reads to the end over the median normal one.
    worst_to_normal: f64,
    loadavg_1m: f64,
}

#[derive(Debug, Serialize)]
struct CostClass {
    class: &'static str,
    body_bytes: usize,
    status: u16,
    p50_ms: f64,
    mean_ms: f64,
}

/// One request to send, and what a correct server answers.
struct Request {
    path: &'static str,
    header: Option<(&'static str, String)>,
    body: Vec<u8>,
    valid: bool,
}

fn stripe_event(id: &str, pi: &str, pad: usize) -> Value {
    // https://docs.stripe.com/api/events/object
    json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": now(),
        "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.payment_failed",
        "data": {"object": {"id": pi, "object": "payment_intent", "amount": 35000,
                             "currency": "usd", "status": "requires_payment_method",
                             "description": "x".repeat(pad)}},
    })
}

fn duffel_event(id: &str, order: &str) -> Value {
    // https://duffel.com/docs/guides/receiving-webhooks
    json!({
        "id": id, "type": "order.created", "api_version": "v2", "live_mode": false,
        "created_at": chrono::Utc::now().to_rfc3339(), "idempotency_key": order,
        "identity_organisation_id": "org_bench",
        "data": {"object": {"id": order, "live_mode": false, "booking_reference": "BENCH1"}},
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signed(
    provider_header: &'static str,
    secret: &str,
    body: &[u8],
) -> Option<(&'static str, String)> {
    Some((provider_header, signature::header(secret, now(), body)))
}

/// The load phase's requests, in a fixed interleaving: one invalid after every
/// `1 / invalid_share` valid ones.
fn load_requests(events: usize, invalid: usize) -> (Vec<Request>, Vec<String>, Vec<String>) {
    let mut valid = Vec::with_capacity(events);
    let (mut stripe_ids, mut duffel_ids) = (Vec::new(), Vec::new());
    for i in 0..events {
        let r = if i % 2 == 0 {
            let id = format!("evt_bench_{i}");
            let body = serde_json::to_vec(&stripe_event(&id, &format!("pi_bench_{i}"), 0)).unwrap();
            stripe_ids.push(id);
            Request {
                path: "/webhooks/stripe",
                header: signed("stripe-signature", STRIPE_SECRETS[1], &body),
                body,
                valid: true,
            }
        } else {
            let id = format!("wev_bench_{i}");
            let body = serde_json::to_vec(&duffel_event(&id, &format!("ord_bench_{i}"))).unwrap();
            duffel_ids.push(id);
            Request {
                path: "/webhooks/duffel",
                header: signed("x-duffel-signature", DUFFEL_SECRETS[0], &body),
                body,
                valid: true,
            }
        };
        valid.push(r);
    }
    let mut bad = (0..invalid).map(|j| {
        let id = format!("evt_invalid_{j}");
        let body = serde_json::to_vec(&stripe_event(&id, &format!("pi_invalid_{j}"), 0)).unwrap();
        let t = now();
        let header = match j % 5 {
            0 => Some(signature::header("whsec_wrong", t, &body)),
            1 => Some(signature::header(STRIPE_SECRETS[1], t - 600, &body)),
            2 => None,
            3 => Some(format!(
                "t={t}{}",
                format!(",v1={}", signature::sign("whsec_wrong", t, &body))
                    .repeat(signature::MAX_CANDIDATES + 1)
            )),
            _ => {
                let broken = body[..body.len() - 1].to_vec();
                let h = signature::header(STRIPE_SECRETS[0], t, &broken);
                return Request {
                    path: "/webhooks/stripe",
                    header: Some(("stripe-signature", h)),
                    body: broken,
                    valid: false,
                };
            }
        };
        Request {
            path: "/webhooks/stripe",
            header: header.map(|h| ("stripe-signature", h)),
            body,
            valid: false,
        }
    });
    let every = events.checked_div(invalid).unwrap_or(usize::MAX).max(1);
    let mut all = Vec::with_capacity(events + invalid);
    for (i, r) in valid.into_iter().enumerate() {
        all.push(r);
        if (i + 1) % every == 0 {
            all.extend(bad.next());
        }
    }
    all.extend(bad);
    (all, stripe_ids, duffel_ids)
}

async fn send(client: &reqwest::Client, base: &str, r: &Request) -> anyhow::Result<u16> {
    let mut req = client
        .post(format!("{base}{}", r.path))
        .header("content-type", "application/json")
        .body(r.body.clone());
    if let Some((h, v)) = &r.header {
        req = req.header(*h, v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    resp.bytes().await?;
    Ok(status)
}

/// Runs the benchmark once.
pub async fn run(a: WebhookBenchArgs) -> anyhow::Result<()> {
    if a.events == 0 || a.clients == 0 || !(0.0..=10.0).contains(&a.invalid_share) {
        bail!("--events and --clients must be >= 1 and --invalid-share 0..=10");
    }
    let loadavg_1m = super::loadavg_1m();
    let defaults = crate::config::Settings::from_sources(None, &[])?;
    let limits = Limits::from(&defaults.serve);
    let db = ScratchDb::new("fleet_bench_webhooks").await?;
    let pool = crate::database::connect(&db.url, defaults.database.max_connections).await?;
    let registry = Arc::new(crate::fleet_registry(&defaults)?);
    let router = crate::serve::harden(
        crate::webhooks::router(
            pool.clone(),
            Queue::new(pool.clone(), registry),
            WebhookSecrets {
                stripe: STRIPE_SECRETS.iter().map(|s| s.to_string()).collect(),
                duffel: DUFFEL_SECRETS.iter().map(|s| s.to_string()).collect(),
                product: Vec::new(),
            },
            limits.max_body_bytes,
        ),
        &limits,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = {
        let (stop, limits) = (stop.clone(), limits.clone());
        tokio::spawn(async move { crate::serve::run_with(listener, router, &limits, stop).await })
    };

    // Load.
    let invalid = (a.events as f64 * a.invalid_share).round() as usize;
    let (requests, stripe_ids, duffel_ids) = load_requests(a.events, invalid);
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            let (requests, next, client, base) =
                (requests.clone(), next.clone(), client.clone(), base.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = requests.get(i) else { break };
                    let started = Instant::now();
                    let status = send(&client, &base, r).await.unwrap_or(0);
                    seen.push((started.elapsed().as_secs_f64() * 1e3, status, r.valid));
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::with_capacity(requests.len());
    for t in tasks {
        seen.extend(t.await?);
    }
    let wall = t0.elapsed().as_secs_f64();
    let wrong = seen
        .iter()
        .filter(|(_, s, valid)| {
            if *valid {
                *s != 200
            } else {
                !(400..500).contains(s)
            }
        })
        .count();
    let server_errors = seen.iter().filter(|(_, s, _)| *s >= 500 || *s == 0).count();
    let mut ms: Vec<f64> = seen.iter().map(|x| x.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));

    // Verify: exactly the valid events recorded, each with exactly its follow-up.
    let mut conn = pool.acquire().await?;
    let (stripe_rec, all_rec) =
        jobs::webhook_events::count_recorded(&mut conn, "stripe", &stripe_ids).await?;
    let (duffel_rec, _) =
        jobs::webhook_events::count_recorded(&mut conn, "duffel", &duffel_ids).await?;
    let keys: Vec<String> = stripe_ids
        .iter()
        .map(|id| format!("stripe:{id}:0"))
        .chain(duffel_ids.iter().map(|id| format!("duffel:{id}:0")))
        .collect();
    let (followups, all_jobs) = crate::queue::job_count_with_keys(&mut *conn, &keys).await?;
    drop(conn);

    // Cost: one request at a time, classes interleaved.
    let cost = cost_phase(&client, &base, &limits, a.cost_samples).await?;
    stop.cancel();
    let _ = server.await;
    pool.close().await;

    let normal = cost.iter().find(|c| c.class == "normal").map(|c| c.p50_ms);
    let worst = cost
        .iter()
        .find(|c| c.class == "worst_read_to_end")
        .map(|c| c.p50_ms);
    let report = WebhookBenchReport {
        valid_events: a.events,
        invalid_requests: invalid,
        clients: a.clients,
        requests_per_s: (seen.len() as f64 / wall).round(),
        valid_events_per_s: (a.events as f64 / wall).round(),
        p50_ms: super::percentile(&ms, 0.50),
        p95_ms: super::percentile(&ms, 0.95),
        p99_ms: super::percentile(&ms, 0.99),
        error_rate: wrong as f64 / seen.len() as f64,
        server_errors,
        worst_to_normal: match (worst, normal) {
            (Some(w), Some(n)) if n > 0.0 => (w / n * 100.0).round() / 100.0,
            _ => f64::NAN,
        },
        cost,
        loadavg_1m,
    };
    eprintln!(
        "webhooks: {} valid events + {} invalid, {} clients\n  throughput {:>8.0} requests/s ({:.0} valid events/s)\n  latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms\n  error rate {:.4} % ({} wrong answers, {} 5xx)\n  recorded {} of {} valid events, {} follow-ups (jobs in all: {}, events in all: {})",
        report.valid_events, report.invalid_requests, report.clients, report.requests_per_s,
        report.valid_events_per_s, report.p50_ms, report.p95_ms, report.p99_ms,
        report.error_rate * 100.0, wrong, server_errors, stripe_rec + duffel_rec, a.events,
        followups, all_jobs, all_rec
    );
    eprintln!("cost of one request (one client, one at a time):");
    for c in &report.cost {
        eprintln!(
            "  {:<22} {:>8} B body  -> {}  p50 {:>7.3} ms  mean {:>7.3} ms",
            c.class, c.body_bytes, c.status, c.p50_ms, c.mean_ms
        );
    }
    eprintln!(
        "  worst read-to-end / normal (p50): {:.2}x\n  load average (1m) at start: {:.2}",
        report.worst_to_normal, report.loadavg_1m
    );
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    let recorded = (stripe_rec + duffel_rec) as usize;
    if recorded != a.events
        || all_rec as usize != a.events
        || followups as usize != a.events
        || all_jobs as usize != a.events
    {
        bail!(
            "benchmark verification failed: {recorded} of {} valid events recorded ({all_rec} in all), {followups} follow-ups ({all_jobs} jobs in all)",
            a.events
        );
    }
    Ok(())
}

/// Times each cost class `samples` times, interleaved, on one connection.
async fn cost_phase(
    client: &reqwest::Client,
    base: &str,
    limits: &Limits,
    samples: usize,
) -> anyhow::Result<Vec<CostClass>> {
    let max = limits.max_body_bytes;
    // The body of a maximal request: a Stripe event padded to exactly `max` bytes.
    let padded = move |id: &str| -> Vec<u8> {
        let bare = serde_json::to_vec(&stripe_event(id, "pi_cost", 0))
            .unwrap()
            .len();
        serde_json::to_vec(&stripe_event(id, "pi_cost", max - bare)).unwrap()
    };
    type Build = Box<dyn Fn(usize) -> Request>;
    let classes: Vec<(&'static str, Build)> = vec![
        (
            "normal",
            Box::new(|i| {
                let body =
                    serde_json::to_vec(&stripe_event(&format!("evt_cost_{i}"), "pi_cost", 0))
                        .unwrap();
                Request {
                    path: "/webhooks/stripe",
                    header: signed("stripe-signature", STRIPE_SECRETS[1], &body),
                    body,
                    valid: true,
                }
            }),
        ),
        (
            "worst_read_to_end",
            Box::new(move |i| {
                let body = padded(&format!("evt_worst_{i}"));
                let t = now();
                let wrong = signature::sign("whsec_attacker", t, &body);
                Request {
                    path: "/webhooks/stripe",
                    header: Some((
                        "stripe-signature",
                        format!(
                            "t={t}{}",
                            format!(",v1={wrong}").repeat(signature::MAX_CANDIDATES)
                        ),
                    )),
                    body,
                    valid: false,
                }
            }),
        ),
        (
            "largest_valid",
            Box::new(move |i| {
                let body = padded(&format!("evt_large_{i}"));
                Request {
                    path: "/webhooks/stripe",
                    header: signed("stripe-signature", STRIPE_SECRETS[0], &body),
                    body,
                    valid: true,
                }
            }),
        ),
        (
            "old_worst_now_refused",
            Box::new(|_| {
                let body = vec![b' '; 1 << 20];
                let t = now();
                let v = signature::sign("whsec_attacker", t, b"x");
                Request {
                    path: "/webhooks/stripe",
                    header: Some((
                        "stripe-signature",
                        format!("t={t}{}", format!(",v1={v}").repeat(2000)),
                    )),
                    body,
                    valid: false,
                }
            }),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(samples); classes.len()];
    let mut status = vec![0u16; classes.len()];
    let mut bytes = vec![0usize; classes.len()];
    for i in 0..samples {
        for (c, (_, build)) in classes.iter().enumerate() {
            let r = build(i);
            bytes[c] = r.body.len();
            let started = Instant::now();
            // A refused request may be cut off while its body is still being sent: status 0.
            status[c] = send(client, base, &r).await.unwrap_or(0);
            times[c].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    if status[0] != 200 || status[2] != 200 {
        bail!(
            "a valid cost-phase request was refused: normal {}, largest valid {}",
            status[0],
            status[2]
        );
    }
    Ok(classes
        .iter()
        .enumerate()
        .map(|(c, (name, _))| {
            let mut t = times[c].clone();
            t.sort_by(|a, b| a.total_cmp(b));
            CostClass {
                class: name,
                body_bytes: bytes[c],
                status: status[c],
                p50_ms: super::percentile(&t, 0.5),
                mean_ms: (t.iter().sum::<f64>() / t.len() as f64 * 1000.0).round() / 1000.0,
            }
        })
        .collect())
}
