//! Logs and traces: a `tracing` subscriber (text or JSON lines) and, when an OTLP endpoint
//! is configured, an OpenTelemetry layer exporting spans over OTLP/HTTP.
//!
//! Trace context crosses replicas inside bus envelopes as a W3C `traceparent`
//! ([`current_traceparent`] on the publishing side, [`follow`] on the receiving side), so
//! a direct message between replicas is one trace with spans from both.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. Must run inside the Tokio runtime (the span
    /// exporter's batch task is spawned on it).
    pub fn init(config: &Config) -> Telemetry {
        let filter =
            EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let provider = config.otlp_traces_endpoint.as_deref().and_then(|endpoint| {
            match build_provider(endpoint, &config.otel_service_name, &config.node_id) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("broker: traces disabled, the OTLP exporter failed to start: {e}");
                    None
                }
            }
        });
        let otel = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mesh-broker")));
        let registry = tracing_subscriber::registry().with(filter).with(otel);
        let writer = std::io::stderr;
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = match config.log_format {
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_writer(writer),
                )
                .try_init(),
            LogFormat::Text => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(writer),
                )
                .try_init(),
        };
        Telemetry { provider }
    }

    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

fn build_provider(
    endpoint: &str,
    service: &str,
    node_id: &str,
) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .with_attribute(KeyValue::new("service.instance.id", node_id.to_string()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// The W3C `traceparent` of the current span, when it is being traced.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by `traceparent`.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier: HashMap<String, String> = [("traceparent".to_string(), tp.to_string())].into();
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    let _ = span.set_parent(cx);
}

/// The trace id of `span` (hex), for log lines; empty when it is not traced.
pub fn trace_id(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}
