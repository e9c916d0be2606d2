//! Logging and tracing. Spans carry `job.id`, `job.kind` and `attempt`, never PII.
//!
//! - logs: human lines or JSON objects (`FLEET_LOG_FORMAT`), filtered by `RUST_LOG`, on stderr
//!   so stdout stays for command output;
//! - traces: exported over OTLP (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! - trace context travels with jobs: enqueue stores the current span's W3C context in the
//!   job row ([`current_trace_context`]) and the worker parents the job's span on it
//!   ([`set_parent`]), so a webhook → job → follow-up chain is one trace.

use std::collections::HashMap;

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, fmt::writer::BoxMakeWriter, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber, writing logs to stderr or, when given, to `file` (appended;
/// created if missing). Returns the tracer provider when OTLP export is on; call `shutdown()`
/// on it before exiting so buffered spans are flushed.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    file: Option<&std::path::Path>,
) -> Option<SdkTracerProvider> {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // async-stripe (its library is named `stripe`) logs two WARN lines of its own for each
    // failed call ("request failed: …", "request failed after 1 attempts"), beside the
    // attempt's own line: one failed call, one line. Its errors still show at `error`, and a
    // `RUST_LOG` that names `stripe` decides for itself.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("stripe")) {
        filter = filter.add_directive("stripe=error".parse().expect("a valid directive"));
    }
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|_| {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name("fleet")
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("fleet: OTLP exporter not started: {e}");
                    None
                }
            }
        });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("fleet")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let log_file = file.and_then(|path| {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(std::sync::Arc::new(f)),
            Err(e) => {
                eprintln!(
                    "fleet: cannot open the log file {}: {e}; logging to stderr",
                    path.display()
                );
                None
            }
        }
    });
    let writer = match log_file {
        Some(f) => BoxMakeWriter::new(f),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // Colour only for a person at a terminal: piped or filed logs stay plain text.
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .with_target(false)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_current_span(true),
            )
            .try_init(),
    };
    provider
}

/// The current span's W3C trace context (`traceparent`, `tracestate`) as a JSON object, or
/// `None` when no trace is being recorded.
pub fn current_trace_context() -> Option<Value> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    serde_json::to_value(carrier).ok()
}

/// Makes `span` a child of the trace context stored with a job (no-op without one).
pub fn set_parent(span: &tracing::Span, stored: Option<&Value>) {
    let Some(Value::Object(map)) = stored else {
        return;
    };
    let carrier: HashMap<String, String> = map
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
