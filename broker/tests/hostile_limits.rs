//! Two bounds of the hardening issue (#10) against the real broker binary: the size of an
//! HTTP request head (hyper's per-connection read buffer), and a `list_peers` reply that
//! fits the outbound bound but not the space left in the requester's queue.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Client, ClientFrame, member, metric, rss_mib};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A request line and the start of a header `X-Pad` of `pad` bytes; the head is complete
/// (a blank line follows) only when `finish`.
fn head(pad: usize, finish: bool) -> Vec<u8> {
    let mut h = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".to_vec();
    h.extend(std::iter::repeat_n(b'a', pad));
    if finish {
        h.extend(b"\r\nConnection: close\r\n\r\n");
    }
    h
}

/// Writes `bytes` (a failed write is fine: the broker may close first) and reads until
/// the broker closes. Returns what was read, or `None` when the connection was reset.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Some(got),
        Ok(Err(_)) => (!got.is_empty()).then_some(got),
        Err(_) => panic!("the broker neither answered nor closed within 10 s"),
    }
}

#[tokio::test]
async fn an_http_request_head_over_the_bound_is_refused_431() {
    let b = Broker::start(&[("HTTP_MAX_HEADER_BYTES", "16384")]);
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let got = exchange(&mut s, &head(200_000, true)).await;
    // The broker answers 431 as soon as its buffer is full, then closes with the rest of
    // the head unread (a reset, which on Linux still lets the client read the 431 queued
    // before it). Never the route's answer.
    let text = String::from_utf8_lossy(got.as_deref().unwrap_or_default()).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 431 "),
        "a 200 KB head was not refused: {text:?}"
    );
    let m = b.metrics();
    assert_eq!(
        metric(
            &m,
            r#"broker_http_connections_closed_total{reason="header_too_large"}"#
        ),
        1.0,
        "{m}"
    );
    // A normal request (with a header just under the bound) is still served.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let got = exchange(&mut s, &head(8_000, true)).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_partial_request_heads_hold_bounded_memory() {
    const CONNS: usize = 500;
    const PARTIAL: usize = 100_000;
    // 500 × 400 KB (hyper's default) would be 200 MB; 500 × 100 KB held is 50 MB.
    const BOUND_MB: f64 = 25.0;
    let b = Broker::start(&[
        // The timeouts must not be what releases the connections.
        ("HTTP_HEADER_READ_TIMEOUT_MS", "60000"),
        ("HTTP_IDLE_TIMEOUT_MS", "60000"),
    ]);
    let pid = b.pid();
    let before = rss_mib(pid);
    let partial = head(PARTIAL, false);
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        let partial = partial.clone();
        tasks.push(tokio::spawn(async move {
            let _ = s.write_all(&partial).await;
            let mut got = Vec::new();
            // Holds the connection open until the broker closes it.
            let _ = s.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        }));
    }
    // Either every connection is refused, or the broker holds what they sent: stop at
    // whichever comes first (or when the deadline runs out).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(rss_mib(pid) - before);
        let done = tasks.iter().filter(|t| t.is_finished()).count();
        if done == CONNS || peak >= BOUND_MB || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak = peak.max(rss_mib(pid) - before);
    let done = tasks.iter().filter(|t| t.is_finished()).count();
    eprintln!("{done} of {CONNS} refused; RSS grew by at most {peak:.1} MB");
    assert!(
        peak < BOUND_MB,
        "{CONNS} partial heads of {PARTIAL} bytes grew the broker's RSS by {peak:.1} MB \
         ({done} connections refused)"
    );
    assert_eq!(
        done, CONNS,
        "connections holding an oversized head were kept"
    );
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
    }
    let m = b.metrics();
    assert!(
        metric(
            &m,
            r#"broker_http_connections_closed_total{reason="header_too_large"}"#
        ) >= CONNS as f64,
        "{m}"
    );
}

/// A WebSocket client whose socket has a small fixed receive buffer (no autotuning): once
/// it stops reading, the broker's writer is stuck and what is sent to it stays queued.
struct SlowReader {
    ws: WebSocketStream<TcpStream>,
}

impl SlowReader {
    async fn connect(addr: std::net::SocketAddr) -> SlowReader {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .unwrap();
        SlowReader { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Reads until a frame `pred` accepts; panics on a close or after `WAIT`.
    async fn read_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let next = tokio::time::timeout(common::WAIT, self.ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(Some(Ok(Message::Close(c)))) => panic!("the reader was closed: {c:?}"),
                Ok(Some(Ok(_))) => {}
                other => panic!("the reader's socket ended: {other:?}"),
            }
        }
    }

    async fn request(&mut self, mut v: Value, id: &str) -> Value {
        v["_reqId"] = json!(id);
        self.send(v).await;
        self.read_until(|f| f["_reqId"] == id).await
    }
}

/// A requester that does not read fills its outbound queue with pushes; a `list_peers`
/// reply that fits the bound but not the space left is refused `reply_too_large`, and the
/// requester is not closed 1013.
#[tokio::test]
async fn a_reply_that_does_not_fit_the_space_left_is_refused_not_closed() {
    const LIMIT: usize = 2_000_000;
    let limit = LIMIT.to_string();
    let b = Broker::start(&[
        ("OUTBOUND_QUEUE_BYTES", limit.as_str()),
        ("MAX_MESSAGE_BYTES", "1048576"),
        ("BROKER_SEND_BURST", "0"),
        ("BROKER_SEND_PER_MIN", "0"),
        // No re-push of the unconfirmed pushes while the test runs.
        ("CLAIM_LEASE_MS", "120000"),
    ]);
    let mesh = b.create_mesh("limits", None);
    let reader = member(&b, &mesh, "reader", json!({}));
    let writer = member(&b, &mesh, "writer", json!({}));
    let mut r = SlowReader::connect(b.addr).await;
    r.send(reader.hello(&mesh, json!({}))).await;
    r.read_until(|f| f["type"] == "hello_ack").await;
    let (mut w, _) = Client::join(&b.ws_url(), writer.hello(&mesh, json!({}))).await;
    // A peer list of a few KB. Frames are handled in order: the ack follows the summary.
    let summary = json!({"type": "set_summary", "summary": "s".repeat(3_000)});
    r.send(summary.clone()).await;
    let ack = r
        .request(json!({"type": "set_visible", "visible": true}), "v1")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    w.send(summary).await;
    let ack = w.request(ClientFrame::SetVisible { visible: true }).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let queued = || metric(&b.metrics(), "broker_outbound_queue_bytes");
    let pushes = || metric(&b.metrics(), "broker_pushes_total");
    let mut expected = pushes();
    // A direct message to the reader: acked to the writer first, pushed (queued) after.
    // Returns the gauge once the push is in the reader's queue.
    let mut push = async |size: usize| {
        let ack = w
            .send_msg(&reader.identity.pubkey, "now", &"x".repeat(size))
            .await;
        assert_eq!(ack["queued"], true, "{ack}");
        expected += 1.0;
        let want = expected;
        common::eventually("the push is queued", async || {
            (pushes() >= want).then_some(())
        })
        .await;
        queued()
    };
    // From now on the reader reads nothing. Big pushes fill the socket buffers, then its
    // queue; the gauge counts only what waits in a queue (the writer's acks are read).
    let mut sent = 0;
    while (LIMIT as f64) - push(400_000).await > 900_000.0 {
        sent += 1;
        assert!(sent < 100, "the reader's queue never filled");
    }
    // Top up to less than 1 KB of free space with pushes sized from the gauge.
    let base = queued();
    let overhead = push(1).await - base - 1.0;
    assert!(overhead > 0.0, "the reader's writer is not stuck");
    let mut free = LIMIT as f64 - queued();
    while free >= 1_000.0 {
        let size = (free - overhead - 500.0).clamp(1.0, 600_000.0) as usize;
        free = LIMIT as f64 - push(size).await;
    }
    assert!(free >= 0.0, "overfilled");
    let slow_before = metric(&b.metrics(), "broker_slow_consumer_closes_total");
    r.send(json!({"type": "list_peers", "_reqId": "full"}))
        .await;
    common::eventually(
        "the list_peers reply is refused or closes the reader",
        async || {
            let m = b.metrics();
            (metric(&m, r#"broker_replies_too_large_total{reason="peers_list"}"#) >= 1.0
                || metric(&m, "broker_slow_consumer_closes_total") > slow_before)
                .then_some(())
        },
    )
    .await;
    // The reader reads again: its pushes, then the refusal, and it is still served.
    let err = r.read_until(|f| f["_reqId"] == "full").await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "reply_too_large", "{err}");
    let ack = r
        .request(json!({"type": "set_visible", "visible": true}), "v2")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let peers = r.request(json!({"type": "list_peers"}), "again").await;
    assert_eq!(peers["type"], "peers_list", "{peers}");
}
