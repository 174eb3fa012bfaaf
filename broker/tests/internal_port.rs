//! The internal listener (`BROKER_INTERNAL_PORT`): `/metrics`, the operator API and
//! `/health*` move there, the public port keeps the client routes and the health answers,
//! each listener has its own HTTP connection budget, and invites made through the internal
//! listener carry `BROKER_PUBLIC_WS_URL` (or the one derived from `BROKER_PUBLIC_URL`). Without the setting everything stays on one port.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(addr, "GET", path, token, None).unwrap()
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    http(addr, "POST", path, token, Some(body)).unwrap()
}

#[tokio::test]
async fn the_public_port_answers_404_for_metrics_and_the_operator_api_when_the_internal_port_is_on()
{
    let b = Broker::start(&[("BROKER_INTERNAL_PORT", "0")]);
    let internal = b
        .internal_addr
        .expect("the internal listener's address is printed");
    assert_ne!(internal.port(), b.addr.port());
    assert!(
        internal.ip().is_loopback(),
        "BROKER_INTERNAL_HOST defaults to 127.0.0.1"
    );

    // The public port: no metrics, no operator API, whatever the token.
    let public = b.addr;
    assert_eq!(get(public, "/metrics", None).0, 404);
    for token in [None, Some(TOKEN)] {
        assert_eq!(get(public, "/api/v1/meshes", token).0, 404);
        assert_eq!(
            post(public, "/api/v1/meshes", token, r#"{"name":"x"}"#).0,
            404
        );
        assert_eq!(get(public, "/api/v1/meshes/anything/members", token).0, 404);
        assert_eq!(get(public, "/api/v1", token).0, 404);
    }
    // … but liveness and readiness, and the client routes.
    let (status, health) = get(public, "/health", None);
    assert_eq!(status, 200, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(get(public, "/health/ready", None).0, 200);
    assert_eq!(
        post(public, "/join", None, "{}").0,
        400,
        "/join stays public"
    );

    // The internal port: metrics, the operator API and health, nothing for clients.
    let (status, metrics) = get(internal, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("broker_http_connections_open"),
        "{metrics}"
    );
    assert_eq!(get(internal, "/health", None).0, 200);
    assert_eq!(get(internal, "/health/ready", None).0, 200);
    assert_eq!(
        get(internal, "/api/v1/meshes", None).0,
        401,
        "the token is still required"
    );
    assert_eq!(get(internal, "/ws", None).0, 404);
    assert_eq!(post(internal, "/join", None, "{}").0, 404);
    assert_eq!(post(internal, "/hook/set-status", None, "{}").0, 404);

    // The harness's helpers go to the internal port, and clients to the public one.
    let mesh = b.create_mesh("split", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let (_c, ack) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    assert_eq!(ack["type"], "hello_ack", "{ack}");
    assert_eq!(metric(&b.metrics(), "broker_connections_active"), 1.0);
}

#[tokio::test]
async fn without_an_internal_port_one_port_serves_everything() {
    let b = Broker::start(&[]);
    assert!(b.internal_addr.is_none());
    assert_eq!(get(b.addr, "/metrics", None).0, 200);
    let (status, _) = b.api("POST", "/api/v1/meshes", Some(json!({"name": "one port"})));
    assert_eq!(status, 201);
    assert_eq!(get(b.addr, "/health/ready", None).0, 200);
}

#[tokio::test]
async fn invites_through_the_internal_listener_carry_the_public_url() {
    // Without BROKER_PUBLIC_WS_URL (or BROKER_PUBLIC_URL) the Host of the request names the internal listener,
    // which serves no WebSocket: such an invite is refused rather than made useless.
    let b = Broker::start(&[("BROKER_INTERNAL_PORT", "0")]);
    let mesh = b.create_mesh("invites", None);
    let (status, v) = b.api(
        "POST",
        &format!("/api/v1/meshes/{mesh}/invites"),
        Some(json!({})),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("BROKER_PUBLIC_WS_URL"),
        "{v}"
    );

    let url = "wss://mesh.example.com/ws";
    let b = Broker::start(&[("BROKER_INTERNAL_PORT", "0"), ("BROKER_PUBLIC_WS_URL", url)]);
    let mesh = b.create_mesh("invites", None);
    let (status, v) = b.api(
        "POST",
        &format!("/api/v1/meshes/{mesh}/invites"),
        Some(json!({})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["payload"]["broker_url"], url, "{v}");
    let token: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(v["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(token["broker_url"], url);
}

/// Opens a TCP connection that sends nothing: it holds one HTTP connection slot until the
/// header-read timeout.
fn idle_connection(addr: SocketAddr) -> std::net::TcpStream {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()
}

/// The status line of a refused connection: the broker writes its 503 at once.
fn refused_status(addr: SocketAddr) -> u16 {
    let mut s = idle_connection(addr);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_public_port_does_not_lock_out_the_internal_one() {
    let b = Broker::start(&[
        ("BROKER_INTERNAL_PORT", "0"),
        ("MAX_HTTP_CONNECTIONS", "3"),
        ("HTTP_HEADER_READ_TIMEOUT_MS", "60000"),
    ]);
    let internal = b.internal_addr.unwrap();
    let held: Vec<_> = (0..3).map(|_| idle_connection(b.addr)).collect();
    // Once the three idle connections are accepted, the public port refuses the next one
    // (a probe accepted before that is answered and closed, and frees its slot).
    eventually("the public budget to be spent", async || {
        (refused_status(b.addr) == 503).then_some(())
    })
    .await;
    // The internal listener counts its own connections against its own budget.
    let (status, metrics) = get(internal, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metric(
            &metrics,
            "broker_http_connections_closed_total{reason=\"capacity\"}"
        ) >= 1.0,
        "{metrics}"
    );
    let (status, _) = b.api(
        "POST",
        "/api/v1/meshes",
        Some(json!({"name": "still reachable"})),
    );
    assert_eq!(status, 201);
    drop(held);
    eventually("the public port to accept again", async || {
        (get(b.addr, "/health", None).0 == 200).then_some(())
    })
    .await;
}

#[test]
fn an_internal_port_that_cannot_be_bound_stops_the_broker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .env_clear()
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_PORT", "0")
        .env("BROKER_ADMIN_TOKEN", TOKEN)
        .env("BROKER_INTERNAL_PORT", &port)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BROKER_INTERNAL_PORT"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("internal listening on"), "{stdout}");
}
