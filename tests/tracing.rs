//! Trace context travels with jobs: webhook → job → follow-up job are parent and children in
//! one trace, as an in-memory OpenTelemetry exporter records them.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use fleet::{queue::JobState, webhooks::signature, Queue, Registry};
use jobs::{Job, JobContext, JobError, NewJob};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::prelude::*;

/// Stands in for the real `card_update` kind: enqueues a follow-up from inside its span.
#[derive(Serialize, Deserialize)]
struct CardUpdateThatFollowsUp {
    stripe_payment_method_id: String,
    exp_month: i16,
    exp_year: i16,
}
impl Job for CardUpdateThatFollowsUp {
    const KIND: &'static str = "card_update";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut conn = ctx.db.begin().await?;
        ctx.enqueuer
            .enqueue_many(
                &mut conn,
                vec![NewJob::raw("test.follow_up", serde_json::json!({}))],
            )
            .await?;
        conn.commit().await?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct FollowUp {}
impl Job for FollowUp {
    const KIND: &'static str = "test.follow_up";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test]
async fn webhook_job_and_follow_up_are_one_trace_of_parent_and_children() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let db = db().await;
    let mut r = Registry::default();
    r.register::<CardUpdateThatFollowsUp>()
        .register::<FollowUp>();
    let reg = Arc::new(r);
    let secrets = fleet::webhooks::WebhookSecrets {
        stripe: vec!["whsec_t".into()],
        duffel: vec!["whsec_d".into()],
        product: Vec::new(),
    };
    let router = fleet::webhooks::router(
        db.pool.clone(),
        Queue::new(db.pool.clone(), reg.clone()),
        secrets,
        fleet::serve::Limits::default().max_body_bytes,
    );
    let (base, stop) = serve(router).await;
    let w = start_worker(&db.pool, reg, fast_settings());

    // The documented delivered shape (tests/contracts/stripe/event.json).
    let body = serde_json::to_vec(&serde_json::json!({
        "id": "evt_trace", "object": "event", "api_version": "2026-09-30.endive",
        "created": chrono::Utc::now().timestamp(),
        "data": {"object": {"id": "pm_x", "object": "payment_method", "type": "card",
            "card": {"exp_month": 1, "exp_year": 2030}}},
        "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_method.automatically_updated",
    }))
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{base}/webhooks/stripe"))
        .header(
            "stripe-signature",
            signature::header("whsec_t", chrono::Utc::now().timestamp(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let follow_up: i64 = loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM fleet_jobs WHERE kind = 'test.follow_up'")
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        if let Some(id) = id {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_state(
        &db.pool,
        follow_up,
        JobState::Completed,
        Duration::from_secs(5),
    )
    .await;
    w.stop().await;
    stop.cancel();

    let spans = exporter.get_finished_spans().unwrap();
    let job_span = |kind: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == "job"
                    && s.attributes
                        .iter()
                        .any(|a| a.key.as_str() == "job.kind" && a.value.as_str() == kind)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no span for {kind}: {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let webhook = spans
        .iter()
        .find(|s| s.name == "webhook")
        .expect("webhook span");
    let job = job_span("card_update");
    let follow = job_span("test.follow_up");
    let trace = webhook.span_context.trace_id();
    assert_eq!(
        job.span_context.trace_id(),
        trace,
        "job continues the webhook's trace"
    );
    assert_eq!(
        follow.span_context.trace_id(),
        trace,
        "follow-up continues it too"
    );
    assert_eq!(
        job.parent_span_id,
        webhook.span_context.span_id(),
        "job is the webhook's child"
    );
    assert_eq!(
        follow.parent_span_id,
        job.span_context.span_id(),
        "follow-up is the job's child"
    );
}
