//! The public listener as a stranger meets it: slow and idle connections are closed, excess
//! connections and requests are turned away (503 with Retry-After), signature headers that
//! would cost us work are refused before any hashing, control characters in event ids are a
//! 400 that writes nothing, and `fleet serve` keeps the admin endpoints off the public port.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{routing::post, Router};
use common::*;
use fleet::{
    serve::{harden, run_with, Limits},
    webhooks::{signature, WebhookSecrets},
    Queue,
};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_ingress";

/// Tight limits, so each claim shows in well under a second.
fn tight() -> Limits {
    Limits {
        max_body_bytes: 64 << 10,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(5),
        max_in_flight: 2,
        max_connections: 4,
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Serves `router` hardened with `limits` on a free loopback port.
async fn listen(router: Router, limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (s, l) = (stop.clone(), limits.clone());
    tokio::spawn(async move { run_with(listener, harden(router, &l), &l, s).await });
    (addr, stop)
}

fn webhooks(pool: &sqlx::PgPool, max_body: usize) -> Router {
    fleet::webhooks::router(
        pool.clone(),
        Queue::new(pool.clone(), Arc::new(fleet_registry())),
        WebhookSecrets {
            stripe: vec![SECRET.into()],
            duffel: vec![SECRET.into()],
            product: Vec::new(),
        },
        max_body,
    )
}

/// Blocks until the server closes `stream` (read returns 0 or a reset); how long that took.
fn closed_after(mut stream: TcpStream, give_up: Duration) -> Option<Duration> {
    let t = Instant::now();
    stream.set_read_timeout(Some(give_up)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => continue, // a response (e.g. 408) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(t.elapsed()),
            Err(_) => return None, // still open after `give_up`
        }
    }
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_by_the_header_timeout() {
    let db = db().await;
    let (addr, stop) = listen(webhooks(&db.pool, 64 << 10), tight()).await;
    let closed = tokio::task::spawn_blocking(move || {
        let idle = TcpStream::connect(addr).unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-")
            .unwrap();
        (
            closed_after(idle, Duration::from_secs(5)),
            closed_after(slow, Duration::from_secs(5)),
        )
    })
    .await
    .unwrap();
    assert!(
        closed.0.is_some(),
        "a connection that sends nothing is closed"
    );
    assert!(
        closed.1.is_some(),
        "a connection with partial headers is closed"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_cut_off_by_the_body_timeout_and_writes_nothing() {
    let db = db().await;
    let (addr, stop) = listen(webhooks(&db.pool, 64 << 10), tight()).await;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 5000\r\n\r\n{\"id\":",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    let status = reply.split(' ').nth(1).unwrap_or("closed");
    assert!(
        ["400", "408"].contains(&status),
        "a stalled body gets an answer, not a held connection: {reply:?}"
    );
    assert_eq!(job_count(&db.pool).await, 0);
    stop.cancel();
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_with_503_and_retry_after() {
    // A handler that holds its slot, standing in for a slow database.
    let slow = Router::new().route(
        "/webhooks/stripe",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            "ok"
        }),
    );
    let mut limits = tight();
    limits.max_connections = 64;
    let (addr, stop) = listen(slow, limits).await;
    let client = reqwest::Client::new();
    let replies = futures::future::join_all((0..10).map(|_| {
        client
            .post(format!("http://{addr}/webhooks/stripe"))
            .body("{}")
            .send()
    }))
    .await;
    let mut ok = 0;
    let mut shed = 0;
    for r in replies {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                shed += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 2, "max_in_flight requests are served");
    assert_eq!(shed, 8, "the rest are shed at once, not queued");
    stop.cancel();
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_on_arrival_and_a_freed_slot_is_reused() {
    let db = db().await;
    let mut limits = tight();
    limits.header_timeout = Duration::from_secs(10);
    let (addr, stop) = listen(webhooks(&db.pool, 64 << 10), limits).await;
    let (refused, reused) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // The server accepts in its own task: real time for it to take the four.
        std::thread::sleep(Duration::from_millis(200));
        let extra = TcpStream::connect(addr).unwrap();
        let refused = closed_after(extra, Duration::from_secs(3));
        drop(held);
        // …and to see them closed.
        std::thread::sleep(Duration::from_millis(200));
        let mut again = TcpStream::connect(addr).unwrap();
        again
            .write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .unwrap();
        let mut out = String::new();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = again.read_to_string(&mut out);
        (refused, out)
    })
    .await
    .unwrap();
    assert!(refused.is_some(), "the fifth connection is closed");
    assert!(reused.starts_with("HTTP/1.1 401"), "{reused:?}");
    stop.cancel();
}

#[tokio::test]
async fn signature_headers_beyond_the_caps_are_refused_before_hashing() {
    let db = db().await;
    let (addr, stop) = listen(webhooks(&db.pool, 64 << 10), tight()).await;
    let body = br#"{"id":"evt_caps","type":"customer.created","data":{"object":{}}}"#;
    let t = chrono::Utc::now().timestamp();
    let one = signature::sign(SECRET, t, body);
    let client = reqwest::Client::new();
    let send = |header: String| {
        client
            .post(format!("http://{addr}/webhooks/stripe"))
            .header("stripe-signature", header)
            .body(body.to_vec())
            .send()
    };
    let too_many = format!(
        "t={t}{}",
        format!(",v1={one}").repeat(signature::MAX_CANDIDATES + 1)
    );
    let r = send(too_many).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "malformed_signature"
    );
    let long = format!("t={t},v1={one},{}", "x=1,".repeat(1000));
    let r = send(long).await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "a long header is refused even with a valid v1"
    );
    // A head beyond 64 KiB never reaches a handler.
    let huge = format!("t={t},v1={one},{}", "x".repeat(100 << 10));
    let r = send(huge).await.unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(job_count(&db.pool).await, 0);
    let r = send(format!("t={t},v1={one}")).await.unwrap();
    assert_eq!(r.status(), 200, "the honest request still passes");
    stop.cancel();
}

#[tokio::test]
async fn control_characters_in_a_signed_event_id_are_a_400_that_writes_nothing() {
    let db = db().await;
    let (addr, stop) = listen(webhooks(&db.pool, 64 << 10), tight()).await;
    let client = reqwest::Client::new();
    for id in [r"evt_\u0000", r"evt_1\nforged line", r"evt_\u001b[2J"] {
        let body = format!(
            r#"{{"id":"{id}","type":"payment_intent.canceled","data":{{"object":{{"id":"pi_1"}}}}}}"#
        );
        let t = chrono::Utc::now().timestamp();
        let r = client
            .post(format!("http://{addr}/webhooks/stripe"))
            .header(
                "stripe-signature",
                signature::header(SECRET, t, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{id}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "control_characters"
        );
    }
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((written, job_count(&db.pool).await), (0, 0));
    stop.cancel();
}

#[tokio::test]
async fn in_flight_requests_finish_after_shutdown_begins_and_new_connections_are_refused() {
    let slow = Router::new().route(
        "/webhooks/stripe",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "finished"
        }),
    );
    let (addr, stop) = listen(slow, tight()).await;
    let in_flight = tokio::spawn(
        reqwest::Client::new()
            .post(format!("http://{addr}/webhooks/stripe"))
            .body("{}")
            .send(),
    );
    // The request must be in flight (inside its handler) when shutdown begins: real time.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.cancel();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "finished");
    // The listener closes as the server task winds down: give it up to a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(addr).is_ok() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed once shutdown began"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn fleet_serve_keeps_the_admin_endpoints_off_the_public_port_and_stops_on_sigterm() {
    let db = db().await;
    let (public, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{public}"),
            "--admin-bind",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("DATABASE_URL", &db.url)
        .env("FLEET_STRIPE_WEBHOOK_SECRET", SECRET)
        .env("FLEET_DUFFEL_WEBHOOK_SECRET", SECRET)
        // The product's secret is a variable `serve` reads, not a setting it refuses.
        .env("FLEET_PRODUCT_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(20), "the admin listener is up", || {
        let c = client.clone();
        async move {
            c.get(format!("http://127.0.0.1:{admin}/livez"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    for path in ["/readyz", "/metrics"] {
        let r = client
            .get(format!("http://127.0.0.1:{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "admin {path}");
    }
    for path in ["/livez", "/readyz", "/metrics", "/health"] {
        let r = client
            .get(format!("http://127.0.0.1:{public}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "public {path} is not served");
    }
    let r = client
        .post(format!("http://127.0.0.1:{public}/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the public port serves the webhooks");
    // And the product's signed requests, with its secret from the environment: an unknown
    // traveler is a 404, so the signature verified.
    let body = format!(
        r#"{{"id":"dsr_1","type":"account.export_requested","user_id":"{}"}}"#,
        uuid::Uuid::new_v4()
    );
    let header = signature::header(SECRET, chrono::Utc::now().timestamp(), body.as_bytes());
    let r = client
        .post(format!("http://127.0.0.1:{public}/webhooks/product"))
        .header("Parker-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the product's request is verified and read"
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
}
