//! The HTTP side: the accept loop, routing, health, metrics and the WebSocket upgrade.

mod admin;
mod chat;
mod cli;
pub(crate) mod files;
mod hook;
mod join;
mod users;
mod web;
mod webhook_in;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::node::Node;

pub type HttpResponse = Response<Full<Bytes>>;

/// How long an idle keep-alive HTTP connection may delay shutdown.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long the listener waits after a failed accept (out of file descriptors and
/// similar) before it tries again: the pending connection stays in the backlog, so retrying
/// at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a connection over `MAX_HTTP_CONNECTIONS` is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Content-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"error\":\"over capacity\"}";

/// How long a refused connection is kept to deliver its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Refused connections delivering their 503 at once; beyond it they are closed at once.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// No internal listener (`BROKER_INTERNAL_PORT` unset): the one port serves every route.
    All,
    /// The public port beside an internal listener: every route but `/metrics` and the
    /// operator API, which answer 404 as unknown paths do.
    Public,
    /// The internal listener: `/metrics`, the operator API and `/health*`, nothing else.
    Internal,
}

impl Surface {
    /// Whether a request for `path` is routed at all on this listener.
    fn serves(self, path: &str) -> bool {
        // REST v1 (`rest.md` §1) shares the prefix but not the listener: only the operator
        // API's paths are internal.
        let internal_only = path == "/metrics" || crate::rest::is_operator_path(path);
        let health = path == "/health" || path.starts_with("/health/");
        match self {
            Surface::All => true,
            Surface::Public => !internal_only,
            Surface::Internal => internal_only || health,
        }
    }
}

/// The listening sockets of one replica: the public one (clients, `/ws`, `/join`, the
/// hook) and, with `BROKER_INTERNAL_PORT`, the internal one (`/metrics`, `/api/v1/…`).
pub struct Listeners {
    pub public: TcpListener,
    pub internal: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Self {
        Listeners {
            public,
            internal: None,
        }
    }
}

impl Listeners {
    /// Starts one accept loop per listener on the node's tracker. Each loop has its own
    /// budget of `MAX_HTTP_CONNECTIONS`, so a flood of the public port cannot lock
    /// Prometheus and operators out of the internal one.
    pub fn spawn(self, node: &Arc<Node>) {
        let public = if self.internal.is_some() {
            Surface::Public
        } else {
            Surface::All
        };
        node.tracker
            .spawn(accept_loop(node.clone(), self.public, public));
        if let Some(internal) = self.internal {
            node.tracker
                .spawn(accept_loop(node.clone(), internal, Surface::Internal));
        }
    }
}

/// Accepts connections until shutdown begins. `broker_http_connections_open` counts the
/// connections of every listener; the `MAX_HTTP_CONNECTIONS` check counts this one's.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener, surface: Surface) {
    let mut failing = false;
    let refusals = Arc::new(AtomicUsize::new(0));
    // Only this loop opens connections of this listener (served ones decrement it).
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = node.stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    node.metrics.http_accept_errors.inc();
                    // Once per streak: under EMFILE this fails every backoff period.
                    if !failing {
                        warn!(error = %e, "accept failed; retrying until it succeeds");
                        failing = true;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if std::mem::take(&mut failing) {
            warn!("accepting again");
        }
        // Only this loop opens HTTP connections of this listener, so the check and the
        // increment below cannot race another opener.
        if open.load(Ordering::Relaxed) >= node.config.max_http_connections {
            node.metrics.close_http_connection("capacity");
            if refusals.fetch_add(1, Ordering::Relaxed) < MAX_REFUSALS_IN_FLIGHT {
                let refusals = refusals.clone();
                node.tracker.spawn(async move {
                    let _ = tokio::time::timeout(REFUSAL_LINGER, refuse(stream)).await;
                    refusals.fetch_sub(1, Ordering::Relaxed);
                });
            } else {
                refusals.fetch_sub(1, Ordering::Relaxed);
            }
            continue;
        }
        // Without TCP_NODELAY small frames wait for Nagle: a loopback round trip took
        // tens of milliseconds instead of one.
        let _ = stream.set_nodelay(true);
        node.metrics.http_connections_open.inc();
        open.fetch_add(1, Ordering::Relaxed);
        node.tracker.spawn(serve_http(
            node.clone(),
            stream,
            peer,
            surface,
            open.clone(),
        ));
    }
    debug!("listener closed");
}

/// Answers 503 and closes. The request is read (and discarded) until the client closes:
/// closing with unread bytes would reset the connection and lose the answer.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(OVER_CAPACITY).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Serves one HTTP/1 connection until it closes, is upgraded to a WebSocket (which then
/// belongs to its session and the ping/pong timeout), times out, or shutdown ends it.
///
/// Two timeouts bound what a stalled client holds: hyper's header-read timeout (a request
/// head must be complete this long after the connection opened or after the previous
/// response), and the idle timeout (no byte moved in either direction: a stalled body, a
/// response the client does not read). The head's size is bounded by
/// `HTTP_MAX_HEADER_BYTES` (hyper's read buffer): over it, hyper answers 431 and closes.
async fn serve_http(
    node: Arc<Node>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    surface: Surface,
    open: Arc<AtomicUsize>,
) {
    let opened = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let eof = Arc::new(AtomicBool::new(false));
    let io = Tracked {
        inner: stream,
        opened,
        activity: activity.clone(),
        eof: eof.clone(),
    };
    let stopping = node.stopping.clone();
    let idle = node.config.http_idle_timeout;
    let header_timeout = node.config.http_header_read_timeout;
    let mut builder = http1::Builder::new();
    // hyper buffers a request head until it is complete, by default up to ~400 KB per
    // connection (times `MAX_HTTP_CONNECTIONS`); the bound makes a larger head a 431.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(node.config.http_max_header_bytes);
    let conn_node = node.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        // The source address, for handlers that limit per client (the hook route).
        req.extensions_mut().insert(peer);
        // Which listener it came through (the operator API's invites need it).
        req.extensions_mut().insert(surface);
        let span = crate::telemetry::http_span(&req);
        crate::telemetry::in_http_span(span, route_any(conn_node.clone(), surface, req))
    });
    // Boxed rather than pinned on the stack, so it can be dropped (the socket closed)
    // after the metrics below are updated.
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades(),
    );
    let closed_by = loop {
        let last = opened + Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = &r && !e.is_timeout() {
                    debug!(%peer, error = %e, "http connection ended");
                }
                // hyper reports the header timeout of a connection that sent no byte of
                // its next request as a clean close: it is told apart by the silence.
                let last = opened + Duration::from_millis(activity.load(Ordering::Relaxed));
                let silent = !eof.load(Ordering::Relaxed) && last.elapsed() >= header_timeout;
                break match r {
                    Err(e) if e.is_timeout() => Some("header_timeout"),
                    // hyper has answered 431 (`HTTP_MAX_HEADER_BYTES`).
                    Err(e) if e.is_parse_too_large() => Some("header_too_large"),
                    _ if silent => Some("header_timeout"),
                    _ => None,
                };
            }
            _ = stopping.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HTTP_SHUTDOWN_GRACE, conn.as_mut()).await;
                break None;
            }
            // Re-armed from the latest activity each time it fires early.
            _ = tokio::time::sleep_until(last + idle) => {
                let last = opened + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last.elapsed() >= idle {
                    break Some("idle_timeout");
                }
            }
        }
    };
    // Counted before the socket closes, so a client that saw the close also sees the count.
    node.metrics.http_connections_open.dec();
    open.fetch_sub(1, Ordering::Relaxed);
    if let Some(reason) = closed_by {
        debug!(%peer, reason, "http connection closed by a timeout");
        node.metrics.close_http_connection(reason);
    }
    drop(conn);
}

/// A TCP stream that records when a byte last moved in either direction (milliseconds
/// since `opened`), for the idle timeout.
struct Tracked {
    inner: TcpStream,
    opened: Instant,
    activity: Arc<AtomicU64>,
    /// Set when the client closed its side (a read returned no byte).
    eof: Arc<AtomicBool>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        } else if room && matches!(r, Poll::Ready(Ok(()))) {
            self.eof.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Why a request body could not be read as JSON.
pub enum BodyError {
    TooLarge,
    Invalid(String),
}

/// Reads a JSON body of at most `limit` bytes.
pub async fn read_json(req: Request<Incoming>, limit: usize) -> Result<Value, BodyError> {
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(BodyError::TooLarge);
        }
        Err(e) => return Err(BodyError::Invalid(format!("could not read body: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| BodyError::Invalid(format!("body is not valid JSON: {e}")))
}

/// REST v1 (`crate::rest`, API keys, public listener) or the route table below: REST
/// answers may stream (SSE), so every response carries a [`crate::rest::Body`].
async fn route_any(
    node: Arc<Node>,
    surface: Surface,
    req: Request<Incoming>,
) -> Result<Response<crate::rest::Body>, Infallible> {
    let path = req.uri().path();
    if surface.serves(path) && crate::rest::serves(path) {
        return Ok(crate::rest::handle(node, req).await);
    }
    if surface.serves(path) && req.method() == Method::GET && path.starts_with("/download/") {
        return Ok(files::download(&node, req).await);
    }
    let resp = route(node, surface, req).await?;
    Ok(resp.map(crate::rest::Body::Full))
}

/// The route table. Which listener serves which paths is decided before it, by
/// [`Surface::serves`]: a route added here is public (and on the internal listener only if
/// it is `/metrics`, `/api/v1/…` or `/health*`).
async fn route(
    node: Arc<Node>,
    surface: Surface,
    req: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let path = req.uri().path().to_string();
    if !surface.serves(&path) {
        return Ok(not_found());
    }
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => upgrade(node, req),
        (&Method::GET, "/health") => health(&node).await,
        (&Method::GET, "/health/ready") => ready(&node).await,
        (&Method::GET, "/metrics") => {
            if let Ok(depth) = node.store.queue_depth().await {
                node.metrics.queue_depth.set(depth as i64);
            }
            text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                node.metrics.render(),
            )
        }
        (&Method::POST, "/join") => join::handle(&node, req).await,
        (&Method::POST, "/hook/set-status") => hook::handle(&node, req).await,
        (&Method::POST, _) if webhook_in::serves(&path) => webhook_in::handle(&node, req).await,
        // Extensions §19.1 files (501 with `FILES_ENABLED=false`); downloads stream, so
        // `route_any` routes them.
        (&Method::POST, "/upload") => files::upload(&node, req).await,
        (&Method::OPTIONS, "/upload") => files::preflight(),
        (&Method::OPTIONS, _) if path.starts_with("/download/") => files::preflight(),
        // Extensions §19: the Telegram bridge is not offered.
        (&Method::POST, "/tg/token") => json_response(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": "telegram bridge is not available on this broker"}),
        ),
        _ if path.starts_with("/api/v1/") => admin::handle(&node, req).await,
        _ if cli::serves(&path) => cli::handle(&node, req).await,
        _ if web::serves(&path) => web::handle(&node, req).await,
        _ if chat::serves(&path) => chat::handle(node.clone(), req).await,
        _ => not_found(),
    };
    Ok(resp)
}

fn not_found() -> HttpResponse {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
}

/// 503 with `Retry-After` (whole seconds, at least 1) and `retryAfterMs` in the body.
fn overloaded(retry: std::time::Duration) -> HttpResponse {
    let ms = retry.as_millis() as u64;
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "overloaded", "retryAfterMs": ms}),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    resp
}

fn upgrade(node: Arc<Node>, mut req: Request<Incoming>) -> HttpResponse {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_response(
            StatusCode::UPGRADE_REQUIRED,
            &json!({"error": "expected a WebSocket upgrade"}),
        );
    }
    if !node.is_accepting() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "draining"}),
        );
    }
    // A full handshake queue (`HANDSHAKE_QUEUE_MAX`): come back later, before the upgrade.
    if let Some(retry) = node.admission.shed_before_upgrade() {
        return overloaded(retry);
    }
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(u) => u,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => crate::session::serve(node, ws).await,
            Err(e) => debug!(error = %e, "websocket upgrade failed"),
        }
    });
    resp.map(|_| Full::new(Bytes::new()))
}

async fn health(node: &Node) -> HttpResponse {
    let db = if node.store.kind() == "memory" {
        "memory"
    } else if node.store.healthy().await {
        node.metrics.db_healthy.set(1);
        "ok"
    } else {
        node.metrics.db_healthy.set(0);
        "down"
    };
    let redis = if node.bus.kind() == "memory" {
        "disabled"
    } else if node.bus.healthy().await {
        "ok"
    } else {
        "down"
    };
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "db": db,
            "redis": redis,
            "version": env!("CARGO_PKG_VERSION"),
            "gitSha": option_env!("GIT_SHA").unwrap_or("unknown"),
            "uptime": node.started.elapsed().as_secs(),
            "nodeId": node.config.node_id,
            "instanceId": node.config.instance_id,
            "connections": node.hub.len(),
        }),
    )
}

/// Whether the schema is at least `EXPECTED_MIGRATION` (always, when it is unset).
async fn schema_is_expected(node: &Node) -> bool {
    let Some(expected) = node.config.expected_migration else {
        return true;
    };
    matches!(node.store.schema_version().await, Ok(Some(v)) if v >= expected)
}

async fn ready(node: &Node) -> HttpResponse {
    let reason = if !node.is_accepting() {
        Some("draining")
    } else if !node.store.healthy().await {
        Some("database unreachable")
    } else if !schema_is_expected(node).await {
        Some("schema older than EXPECTED_MIGRATION")
    } else if let Some(why) = node.sync_problem() {
        Some(why)
    } else if !node.presence.healthy().await || !node.bus.healthy().await {
        Some("pubsub unavailable")
    } else {
        None
    };
    match reason {
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": reason}),
        ),
        None => json_response(StatusCode::OK, &json!({"status": "ready"})),
    }
}
