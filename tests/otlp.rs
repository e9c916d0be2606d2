//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `fleet serve` exports its spans over OTLP/HTTP.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, http::HeaderMap, routing::post, Router};
use common::*;

#[tokio::test]
async fn spans_are_exported_over_otlp_http_when_an_endpoint_is_set() {
    let db = db().await;
    // A stand-in collector that records what it receives.
    let received: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let sink = received.clone();
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((ct, body.len()));
                ""
            }
        }),
    );
    let (collector_url, stop_collector) = serve(collector).await;

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut serve_process = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--admin-bind",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("FLEET_STRIPE_WEBHOOK_SECRET", "whsec_otlp")
        .env("FLEET_DUFFEL_WEBHOOK_SECRET", "whsec_otlp_d")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = br#"{"id":"evt_otlp","type":"customer.created","data":{"object":{}}}"#.to_vec();
    let client = reqwest::Client::new();
    let mut ok = false;
    for _ in 0..100 {
        let t = chrono::Utc::now().timestamp();
        let r = client
            .post(format!("http://127.0.0.1:{port}/webhooks/stripe"))
            .header(
                "stripe-signature",
                fleet::webhooks::signature::header("whsec_otlp", t, &body),
            )
            .body(body.clone())
            .send()
            .await;
        if matches!(r, Ok(ref resp) if resp.status() == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "fleet serve did not accept the webhook");
    // A graceful stop flushes the batch exporter.
    unsafe { libc::kill(serve_process.id() as i32, libc::SIGTERM) };
    // Wait off the runtime's thread: the collector above must keep answering meanwhile.
    let status = tokio::task::spawn_blocking(move || serve_process.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let got = received.lock().unwrap().clone();
    stop_collector.cancel();
    assert!(!got.is_empty(), "no OTLP export reached the collector");
    assert!(
        got.iter()
            .all(|(ct, len)| ct == "application/x-protobuf" && *len > 0),
        "{got:?}"
    );
}
