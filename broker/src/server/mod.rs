//! The HTTP side: the accept loop, routing, health, metrics and the WebSocket upgrade.

mod admin;
mod hook;
mod join;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::node::Node;

pub type HttpResponse = Response<Full<Bytes>>;

/// How long an idle keep-alive HTTP connection may delay shutdown.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Accepts connections until shutdown begins.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = node.stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY small frames wait for Nagle: a loopback round trip took
        // tens of milliseconds instead of one.
        let _ = stream.set_nodelay(true);
        let conn_node = node.clone();
        node.tracker.spawn(async move {
            let stopping = conn_node.stopping.clone();
            let svc = service_fn(move |req| route(conn_node.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "http connection ended") },
                _ = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_SHUTDOWN_GRACE, conn.as_mut()).await;
                }
            }
        });
    }
    debug!("listener closed");
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

async fn route(node: Arc<Node>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let path = req.uri().path().to_string();
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
        _ if path.starts_with("/api/v1/") => admin::handle(&node, req).await,
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    };
    Ok(resp)
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
