//! Logs and traces: a `tracing` subscriber (text or JSON lines) and, when an OTLP endpoint
//! is configured, an OpenTelemetry layer exporting spans over OTLP/HTTP.
//!
//! # One trace per message
//!
//! A `send` is the root of its own trace, and everything the message causes continues that
//! trace on whichever replica does it: the trace context (a W3C `traceparent`) travels in
//! bus envelopes ([`traceparent`] on the publishing side, [`follow`] on the receiving side)
//! and in the queued row of a direct message, so the `push` of a message drained an hour
//! later on another replica, and its `client_ack`, are spans of the send's trace.
//! Per-message spans *link* to the connection span instead of being its children, so a
//! long-lived connection's trace stays small (its handshake) however many messages it
//! carries.
//!
//! # Cost when traces are off
//!
//! The per-message and per-statement spans are opened only while spans are exported
//! ([`on`]): with traces off they cost one relaxed load, and nothing allocates a trace
//! context (every `traceparent` is `None`).
//!
//! # Export failures
//!
//! The exporter is wrapped ([`CountingExporter`]): every failed or timed-out export counts
//! in `broker_otel_export_failures_total`, its spans in
//! `broker_otel_spans_dropped_total{reason="export_failed"}`, and a warning is logged at most
//! once per [`EXPORT_WARNING_INTERVAL`] (with how many failures it stood for). The batch
//! processor is wrapped too ([`BoundedProcessor`]): it holds at most
//! `OTEL_BSP_MAX_QUEUE_SIZE` spans waiting for export (the batch being sent included), and
//! the spans it refuses beyond count in `{reason="queue_full"}` (reported by the next
//! warning).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};
use crate::metrics::ReasonLabel;

/// At most one "trace export failed" warning per this interval; the next one says how many
/// failures it stands for.
pub const EXPORT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Whether this process exports spans (an OTLP exporter started). Process-wide because the
/// `tracing` subscriber it describes is.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The exporter's counters. Process-wide like the exporter (one global subscriber);
/// [`crate::metrics::Metrics`] registers clones of them, so every `/metrics` of the process
/// shows them.
pub static EXPORT_STATS: LazyLock<ExportStats> = LazyLock::new(ExportStats::default);

/// Counters of the span exporter (see [`EXPORT_STATS`]).
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    /// Export calls that failed or timed out (`broker_otel_export_failures_total`).
    pub export_failures: Counter,
    /// Spans that never reached the collector, by `reason`
    /// (`broker_otel_spans_dropped_total`).
    pub spans_dropped: Family<ReasonLabel, Counter>,
}

/// The `reason`s of `broker_otel_spans_dropped_total`.
pub const SPANS_DROPPED_REASONS: &[&str] = &["export_failed", "queue_full"];

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
            match build_provider(endpoint, config) {
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
        let installed = match config.log_format {
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
        if installed.is_ok() && provider.is_some() {
            EXPORTING.store(true, Ordering::Relaxed);
        }
        Telemetry { provider }
    }

    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

fn build_provider(endpoint: &str, config: &Config) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let backlog = Arc::new(Backlog::new(config.otel_queue_spans));
    // The SDK's own queue is given the same bound, which the backlog never lets it reach:
    // every span it holds is counted in the backlog until its export ends.
    let batching = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(config.otel_queue_spans)
        .build();
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            CountingExporter::new(exporter, backlog.clone()),
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(batching)
        .build();
    let processor = BoundedProcessor {
        inner: processor,
        backlog,
    };
    // `service.instance.id` is unique per start (a restarted replica is a new instance, as
    // its connection ids are); the stable node id is an attribute of its own.
    let instance = if config.instance_id.is_empty() {
        config.node_id.clone()
    } else {
        config.instance_id.clone()
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.otel_service_name.clone())
        .with_attribute(KeyValue::new("service.instance.id", instance))
        .with_attribute(KeyValue::new("broker.node.id", config.node_id.clone()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported. The per-message and per-statement spans are opened only then.
#[inline]
pub fn on() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Whether a span opened now would belong to an operation's trace: spans are exported and
/// the current span is an operation (a send, a push, an HTTP request, …), not a
/// connection's span (whose trace would grow with every frame) and not nothing (a
/// background statement would start a trace of its own every few seconds).
#[inline]
pub fn in_operation() -> bool {
    on() && tracing::Span::current()
        .metadata()
        .is_some_and(|m| m.name() != "conn")
}

/// The span context of `span`, when it is exported.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !on() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The W3C `traceparent` of `span`, when it is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|sc| format_traceparent(&sc))
}

/// The W3C `traceparent` of the current span, when it is exported.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The remote span a W3C `traceparent` names (`None` when it is not one).
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span named by `traceparent` (nothing without one).
/// Call it before the span is first entered.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(sc) = traceparent.and_then(parse_traceparent) else {
        return;
    };
    let _ = span.set_parent(Context::new().with_remote_span_context(sc));
}

/// Makes `span` the root of a trace of its own, whatever span is current. Call it before
/// the span is first entered.
pub fn root(span: &tracing::Span) {
    if on() {
        let _ = span.set_parent(Context::new());
    }
}

/// Continues the trace `traceparent` names in `span`, or makes `span` a root without one.
pub fn follow_or_root(span: &tracing::Span, traceparent: Option<&str>) {
    match traceparent.and_then(parse_traceparent) {
        Some(sc) => {
            let _ = span.set_parent(Context::new().with_remote_span_context(sc));
        }
        None => root(span),
    }
}

/// Links `span` to `to` (a connection span, a batch's other messages).
pub fn link(span: &tracing::Span, to: Option<&SpanContext>) {
    if let Some(sc) = to {
        span.add_link(sc.clone());
    }
}

/// Links `span` to the span a `traceparent` names.
pub fn link_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        span.add_link(sc);
    }
}

/// The trace id of `span` (hex), for log lines; empty when it is not traced.
pub fn trace_id(span: &tracing::Span) -> String {
    span_context(span)
        .map(|sc| sc.trace_id().to_string())
        .unwrap_or_default()
}

/// The first word of a SQL statement (`SELECT`, `INSERT`, `WITH`, …), skipping comments:
/// `db.operation.name` of a statement span.
pub fn sql_operation(sql: &str) -> &str {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
}

/// A CLIENT span for one PostgreSQL statement, inside the current operation's trace;
/// `Span::none()` outside an operation (see [`in_operation`]) or with traces off.
pub fn db_span(sql: &str) -> tracing::Span {
    if !in_operation() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "db.statement",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = sql_operation(sql),
        db.query.text = sql,
        otel.status_code = tracing::field::Empty,
    )
}

/// A CLIENT span for one batch of PostgreSQL writes (a group commit), in the trace of the
/// first submission and linked to the others'; `Span::none()` when none was traced.
pub fn db_batch_span(what: &'static str, submitters: &[Option<SpanContext>]) -> tracing::Span {
    let mut traced = submitters.iter().flatten();
    let Some(first) = traced.next() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "db.batch",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = what,
        db.operation.batch.size = submitters.len(),
        otel.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(first.clone()));
    for other in traced {
        span.add_link(other.clone());
    }
    span
}

/// The span context a batch submission carries (see [`db_batch_span`]).
pub fn submitter() -> Option<SpanContext> {
    if in_operation() {
        span_context(&tracing::Span::current())
    } else {
        None
    }
}

/// The SERVER span of one HTTP request, the root of a trace of its own; `Span::none()`
/// with traces off and for the health probes and scrapes (`/health*`, `/metrics`), which
/// would fill the backend with a trace every few seconds.
pub fn http_span<B>(req: &hyper::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    if !on() || path.starts_with("/health") || path == "/metrics" {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: None,
        "http.request",
        otel.kind = "server",
        http.request.method = req.method().as_str(),
        http.route = route_template(path),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The request path with its ids, keys and codes replaced by `{id}` (`http.route`): only
/// segments that are plain lowercase words (`api`, `meshes`, `claim`, `v1`) are kept, and
/// never the one after `invites` (an invite code), so no secret reaches the trace backend.
pub fn route_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous = "";
    for segment in path.split('/').skip(1) {
        out.push('/');
        let word = segment.len() <= 24
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_');
        let version = segment.len() <= 3
            && segment.starts_with('v')
            && segment.bytes().skip(1).all(|b| b.is_ascii_digit());
        if segment.is_empty() || ((word || version) && previous != "invites") {
            out.push_str(segment);
        } else {
            out.push_str("{id}");
        }
        previous = segment;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Serves one request inside its [`http_span`], recording the response status.
pub async fn in_http_span<F, B, E>(span: tracing::Span, serve: F) -> Result<hyper::Response<B>, E>
where
    F: Future<Output = Result<hyper::Response<B>, E>>,
{
    let result = tracing::Instrument::instrument(serve, span.clone()).await;
    if let Ok(resp) = &result {
        span.record("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    result
}

/// A span exporter that counts what it could not export and warns about it, rate-limited.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    /// When the last warning was logged and how many failures happened since; locked only
    /// on a failure (exports are never concurrent for one exporter).
    warnings: Mutex<Warnings>,
    /// The spans waiting for export, shared with the [`BoundedProcessor`]: an export that
    /// ends, however, takes its spans off it.
    backlog: Arc<Backlog>,
}

/// The spans handed to the batch processor whose export has not ended, and its bound.
#[derive(Debug)]
pub struct Backlog {
    /// Spans forwarded to the SDK's batch processor and not yet exported (or failed).
    pending: AtomicUsize,
    limit: usize,
    /// Spans refused because `pending` was at `limit`, not yet reported by a warning.
    unreported: AtomicU64,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog {
            pending: AtomicUsize::new(0),
            limit,
            unreported: AtomicU64::new(0),
        }
    }
}

/// The batch span processor, bounded by a [`Backlog`] that counts what it refuses
/// (`broker_otel_spans_dropped_total{reason="queue_full"}`); the SDK's own queue drops
/// spans without telling anyone.
#[derive(Debug)]
pub struct BoundedProcessor<P> {
    inner: P,
    backlog: Arc<Backlog>,
}

impl<P: SpanProcessor> SpanProcessor for BoundedProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            let b = &self.backlog;
            if b.pending.fetch_add(1, Ordering::Relaxed) >= b.limit {
                b.pending.fetch_sub(1, Ordering::Relaxed);
                b.unreported.fetch_add(1, Ordering::Relaxed);
                EXPORT_STATS
                    .spans_dropped
                    .get_or_create(&ReasonLabel {
                        reason: "queue_full",
                    })
                    .inc();
                // No log line here: this runs inside the subscriber's span close. The
                // exporter's next warning reports it.
                return;
            }
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug, Default)]
struct Warnings {
    last: Option<Instant>,
    suppressed: u64,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E, backlog: Arc<Backlog>) -> Self {
        CountingExporter {
            inner,
            warnings: Mutex::new(Warnings::default()),
            backlog,
        }
    }

    fn failed(&self, spans: u64, error: &dyn std::fmt::Display) {
        let stats = &*EXPORT_STATS;
        stats.export_failures.inc();
        stats
            .spans_dropped
            .get_or_create(&ReasonLabel {
                reason: "export_failed",
            })
            .inc_by(spans);
        if let Some(suppressed) = self.may_warn(true) {
            tracing::warn!(
                spans,
                error = %error,
                failures_since_last_warning = suppressed,
                queue_full_since_last_warning = self.backlog.unreported.swap(0, Ordering::Relaxed),
                "trace export failed; the spans are dropped (broker_otel_spans_dropped_total)"
            );
        }
    }

    /// After an export that worked: reports the spans the full queue refused, if any.
    fn succeeded(&self) {
        if self.backlog.unreported.load(Ordering::Relaxed) == 0 {
            return;
        }
        if self.may_warn(false).is_some() {
            tracing::warn!(
                queue_full_since_last_warning = self.backlog.unreported.swap(0, Ordering::Relaxed),
                limit = self.backlog.limit,
                "spans dropped: more than OTEL_BSP_MAX_QUEUE_SIZE were waiting for export (broker_otel_spans_dropped_total)"
            );
        }
    }

    /// Whether a warning may be logged now (one per [`EXPORT_WARNING_INTERVAL`]): `Some`
    /// with the failures suppressed since the last one; a `failure` is counted as
    /// suppressed when not.
    fn may_warn(&self, failure: bool) -> Option<u64> {
        let mut w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.last
            .is_some_and(|last| now.duration_since(last) < EXPORT_WARNING_INTERVAL)
        {
            w.suppressed += u64::from(failure);
            return None;
        }
        w.last = Some(now);
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// Counts an export that never finished (the batch processor's timeout dropped it) as
/// failed.
struct Unfinished<'a, E> {
    exporter: &'a CountingExporter<E>,
    spans: u64,
    done: bool,
}

impl<E> Drop for Unfinished<'_, E> {
    fn drop(&mut self) {
        // However the export ended, its spans no longer wait.
        let spans = usize::try_from(self.spans).unwrap_or(usize::MAX);
        let _ =
            self.exporter
                .backlog
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(p.saturating_sub(spans))
                });
        if !self.done {
            self.exporter.failed(
                self.spans,
                &"the export timed out (OTEL_BSP_EXPORT_TIMEOUT)",
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let export = self.inner.export(batch);
        async move {
            let mut pending = Unfinished {
                exporter: self,
                spans,
                done: false,
            };
            let result = export.await;
            pending.done = true;
            match &result {
                Err(e) => self.failed(spans, e),
                Ok(()) => self.succeeded(),
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that always fails, for the unit test of the counting.
#[cfg(test)]
#[derive(Debug)]
struct Failing;

#[cfg(test)]
impl SpanExporter for Failing {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "collector unreachable".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_garbage_is_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("parses");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(format_traceparent(&sc), tp);
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn routes_keep_words_and_hide_ids_and_codes() {
        assert_eq!(route_template("/api/v1/meshes"), "/api/v1/meshes");
        assert_eq!(
            route_template("/api/v1/meshes/4bX9kQ/members/abc123"),
            "/api/v1/meshes/{id}/members/{id}"
        );
        assert_eq!(
            route_template("/invites/abcdefghij/claim"),
            "/invites/{id}/claim"
        );
        assert_eq!(route_template("/"), "/");
        assert_eq!(route_template(""), "/");
    }

    #[test]
    fn sql_operation_skips_comments() {
        assert_eq!(sql_operation("-- a\n-- b\nWITH m AS (SELECT 1)"), "WITH");
        assert_eq!(sql_operation("SELECT 1"), "SELECT");
        assert_eq!(sql_operation(""), "");
    }

    #[tokio::test]
    async fn failed_exports_are_counted_with_their_spans() {
        let e = CountingExporter::new(Failing, Arc::new(Backlog::new(10)));
        let before = EXPORT_STATS.export_failures.get();
        assert!(e.export(Vec::new()).await.is_err());
        assert!(e.export(Vec::new()).await.is_err());
        assert_eq!(EXPORT_STATS.export_failures.get(), before + 2);
        // A second failure within the interval is not logged, only counted.
        assert_eq!(
            e.warnings.lock().map(|w| w.suppressed).unwrap_or_default(),
            1
        );
    }
}
