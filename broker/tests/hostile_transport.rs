//! Hostile transports: WebSocket frames no well-behaved client sends (endless fragments,
//! ping floods, invalid UTF-8) and HTTP connections that never finish a request, against
//! the real broker binary. The frames are built by hand on raw TCP sockets, because
//! tokio-tungstenite refuses to send them.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, Client, ClientFrame, WAIT, codes, member, metric, rss_mib};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// A client frame: masked, as RFC 6455 requires of clients.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend((len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opens a TCP connection and completes the WebSocket upgrade by hand.
async fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "upgrade response cut short"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// How a raw socket ended from the client's point of view.
#[derive(Debug, PartialEq)]
enum End {
    /// A close frame with this code.
    Close(u16),
    /// The connection ended without a close frame.
    Dropped,
    /// Nothing within the wait.
    Nothing,
}

/// Reads server frames (unmasked) until a close frame, the end of the stream or `WAIT`.
async fn read_until_close(rd: &mut (impl AsyncRead + Unpin)) -> End {
    let read = async {
        loop {
            let mut h = [0u8; 2];
            if rd.read_exact(&mut h).await.is_err() {
                return End::Dropped;
            }
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                if rd.read_exact(&mut b).await.is_err() {
                    return End::Dropped;
                }
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                if rd.read_exact(&mut b).await.is_err() {
                    return End::Dropped;
                }
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            if rd.read_exact(&mut payload).await.is_err() {
                return End::Dropped;
            }
            if h[0] & 0x0f == OP_CLOSE {
                let code = payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .unwrap_or(1005);
                return End::Close(code);
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or(End::Nothing)
}

/// A joined, well-behaved client in a fresh mesh.
async fn bystander(b: &Broker) -> Client {
    let mesh = b.create_mesh("bystanders", None);
    let m = member(b, &mesh, "calm", json!({}));
    Client::join(&b.ws_url(), m.hello(&mesh, json!({}))).await.0
}

/// The bystander still gets answers on its socket.
async fn assert_unaffected(c: &mut Client) {
    let reply = c.request(ClientFrame::ListPeers).await;
    assert_ne!(reply["type"], "error", "{reply}");
}

/// Sends `first` and then `next` repeatedly (up to `budget` bytes) while reading the
/// broker's frames; returns how the socket ended, the bytes sent and the peak RSS growth.
async fn flood(b: &Broker, first: Vec<u8>, next: Vec<u8>, budget: usize) -> (End, usize, f64) {
    let pid = b.pid();
    let before = rss_mib(pid);
    let s = raw_ws(b.addr).await;
    let (mut rd, mut wr) = s.into_split();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            let end = read_until_close(&mut rd).await;
            done.store(true, Ordering::Relaxed);
            end
        })
    };
    let mut sent = 0;
    let mut peak: f64 = 0.0;
    if wr.write_all(&first).await.is_ok() {
        sent += first.len();
        let batch: Vec<u8> = next.repeat((1 << 20) / next.len().max(1) + 1);
        while sent < budget && !done.load(Ordering::Relaxed) {
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            sent += batch.len();
            peak = peak.max(rss_mib(pid) - before);
        }
    }
    let end = reader.await.unwrap();
    peak = peak.max(rss_mib(pid) - before);
    (end, sent, peak)
}

#[tokio::test]
async fn endless_fragments_are_bounded_and_closed_1009() {
    let b = Broker::start(&[]);
    let mut calm = bystander(&b).await;
    // A text message that never ends: 64 KiB continuations, up to 256 MB of them.
    let first = frame(false, OP_TEXT, &[b'x'; 1024]);
    let next = frame(false, OP_CONTINUATION, &vec![b'x'; 65_535]);
    let (end, sent, growth) = flood(&b, first, next, 256 << 20).await;
    assert_eq!(
        end,
        End::Close(codes::FRAME_TOO_LARGE.code),
        "after {} MB of fragments (RSS +{growth:.0} MB)",
        sent >> 20
    );
    assert!(growth < 50.0, "RSS grew by {growth:.0} MB");
    assert_unaffected(&mut calm).await;
}

#[tokio::test]
async fn too_many_fragments_close_1009() {
    let b = Broker::start(&[("MAX_MESSAGE_FRAGMENTS", "16")]);
    let mut calm = bystander(&b).await;
    // Empty continuations never reach the byte bound; only the fragment count stops them.
    let first = frame(false, OP_TEXT, b"{");
    let next = frame(false, OP_CONTINUATION, b"");
    let (end, sent, _) = flood(&b, first, next, 64 << 20).await;
    assert_eq!(
        end,
        End::Close(codes::TOO_MANY_FRAGMENTS.code),
        "after {sent} bytes of empty fragments"
    );
    assert_unaffected(&mut calm).await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007_single_and_fragmented() {
    let b = Broker::start(&[]);
    let mut calm = bystander(&b).await;

    let mut s = raw_ws(b.addr).await;
    s.write_all(&frame(true, OP_TEXT, &[b'{', 0xff, 0xfe, b'}']))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut s).await,
        End::Close(codes::INVALID_UTF8.code),
        "single frame"
    );

    // Valid halves of a message whose sequence is cut inside a code point.
    let mut s = raw_ws(b.addr).await;
    s.write_all(&frame(false, OP_TEXT, b"{\"a\":\"\xc3"))
        .await
        .unwrap();
    s.write_all(&frame(true, OP_CONTINUATION, b"\"}"))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut s).await,
        End::Close(codes::INVALID_UTF8.code),
        "fragmented"
    );

    // A multi-byte code point split across fragments is valid and is answered.
    let mut s = raw_ws(b.addr).await;
    s.write_all(&frame(false, OP_TEXT, b"{\"type\":\"ping\xc3"))
        .await
        .unwrap();
    s.write_all(&frame(true, OP_CONTINUATION, b"\xa9\"}"))
        .await
        .unwrap();
    let mut first = [0u8; 2];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0] & 0x0f, OP_TEXT, "an error reply, not a close");

    assert_unaffected(&mut calm).await;
}

/// `(tx_queue, rx_queue)` of the IPv4 TCP socket bound to `local` talking to `remote`.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("tests use 127.0.0.1"),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

#[tokio::test]
async fn ping_floods_without_reading_are_bounded_before_and_after_hello() {
    let b = Broker::start(&[]);
    let mut calm = bystander(&b).await;
    let mesh = b.create_mesh("flooders", None);
    let m = member(&b, &mesh, "loud", json!({}));
    let pid = b.pid();
    let before = rss_mib(pid);

    // Two attackers that never read: one before its hello, one after.
    let pre = raw_ws(b.addr).await;
    let mut post = raw_ws(b.addr).await;
    let hello: Value = m.hello(&mesh, json!({}));
    post.write_all(&frame(true, OP_TEXT, hello.to_string().as_bytes()))
        .await
        .unwrap();
    let pings: Vec<u8> = frame(true, OP_PING, &[b'p'; 125]).repeat(2_000);
    let mut sockets = [pre, post];
    for _ in 0..200 {
        for s in &mut sockets {
            s.write_all(&pings).await.unwrap();
        }
    }
    // 800 000 pings (100 MB) sent; wait until the broker has read every byte of them.
    let broker_addr = b.addr;
    common::eventually("the broker to read every ping", async || {
        sockets
            .iter()
            .all(|s| {
                let local = s.local_addr().unwrap();
                tcp_queues(local, broker_addr).map(|q| q.0) == Some(0)
                    && tcp_queues(broker_addr, local).map(|q| q.1) == Some(0)
            })
            .then_some(())
    })
    .await;
    let growth = rss_mib(pid) - before;
    assert!(
        growth < 50.0,
        "RSS grew by {growth:.0} MB for 800 000 unread pongs"
    );
    assert_unaffected(&mut calm).await;
    drop(sockets);
}

/// Spawns the broker binary with `env` and waits for it to exit (killing it after `WAIT`).
fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .env_clear()
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_PORT", "0")
        .env("BROKER_ADMIN_TOKEN", common::TOKEN)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

#[test]
fn zero_or_absurd_intervals_are_refused_at_start_up() {
    let cases: &[(&str, &str)] = &[
        ("PING_INTERVAL_MS", "0"),
        ("HEARTBEAT_INTERVAL_MS", "0"),
        ("PONG_TIMEOUT_MS", "0"),
        ("HELLO_TIMEOUT_MS", "0"),
        ("CLAIM_LEASE_MS", "0"),
        ("NODE_DEAD_AFTER_MS", "0"),
        ("HTTP_HEADER_READ_TIMEOUT_MS", "0"),
        ("HTTP_IDLE_TIMEOUT_MS", "0"),
        ("PING_INTERVAL_MS", "18446744073709551615"),
        ("PONG_TIMEOUT_MS", "9223372036854775807"),
        ("DATABASE_CONNECT_TIMEOUT_MS", "18446744073709551615"),
        ("SHUTDOWN_DEADLINE_MS", "18446744073709551615"),
        ("LEASE_GRACE_MS", "18446744073709551615"),
        ("MAX_MESSAGE_FRAGMENTS", "0"),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(k, v)| (k, v, std::thread::spawn(move || exit_of(&[(k, v)]))))
        .collect();
    for (k, v, run) in runs {
        let (code, err) = run.join().unwrap();
        assert_eq!(code, Some(64), "{k}={v}: exit {code:?}, stderr {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "{k}={v}: {err:?}");
        assert!(err.contains(k), "{k}={v}: {err:?}");
    }
    // The smallest accepted values start (and the defaults, in every other test).
    drop(Broker::start(&[
        ("PING_INTERVAL_MS", "1"),
        ("PONG_TIMEOUT_MS", "2"),
        ("HEARTBEAT_INTERVAL_MS", "1"),
        ("NODE_DEAD_AFTER_MS", "2"),
        ("MAX_MESSAGE_FRAGMENTS", "1"),
    ]));
}

/// Lowers the open-file limit of a running process.
fn limit_files(pid: u32, n: u32) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{n}"))
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

#[test]
fn stalled_http_connections_are_timed_out_and_health_recovers() {
    let b = Broker::start(&[
        ("HTTP_HEADER_READ_TIMEOUT_MS", "1000"),
        ("HTTP_IDLE_TIMEOUT_MS", "5000"),
    ]);
    limit_files(b.pid(), 128);
    // More stalled connections than the file limit allows: half send nothing, half stop
    // inside their headers.
    let mut stalled: Vec<std::net::TcpStream> = (0..200)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(b.addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .unwrap();
            }
            s
        })
        .collect();
    let (status, body) = b
        .try_http("GET", "/health", None, None)
        .unwrap_or_else(|e| panic!("/health did not answer: {e}"));
    assert_eq!(status, 200, "{body}");
    // Every stalled socket was closed by the server.
    for s in &mut stalled {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a stalled socket was not closed: {e}"),
        }
    }
    let text = b.metrics();
    let timed_out = metric(
        &text,
        r#"broker_http_connections_closed_total{reason="header_timeout"}"#,
    );
    assert!(timed_out >= 200.0, "{timed_out} header timeouts:\n{text}");
    assert!(text.contains("broker_http_connections_open "), "{text}");
    // The file limit was really reached, and the listener kept going through it.
    assert!(
        metric(&text, "broker_http_accept_errors_total") >= 1.0,
        "{text}"
    );
}

#[test]
fn connections_over_the_http_cap_are_refused_503_until_others_close() {
    let b = Broker::start(&[("MAX_HTTP_CONNECTIONS", "4")]);
    let mut stalled: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(b.addr).unwrap())
        .collect();
    // The connection of the harness's readiness check may still be counted for a moment
    // (hyper shuts the socket down before the count drops), so one of the four may have
    // been refused in its place: hold one more until a probe is refused, at most 4 more.
    let mut refused = None;
    for _ in 0..5 {
        let (status, body) = b.try_http("GET", "/health", None, None).unwrap();
        if status == 503 {
            refused = Some(body);
            break;
        }
        stalled.push(std::net::TcpStream::connect(b.addr).unwrap());
    }
    let body = refused.expect("with the cap held, a connection was never refused");
    assert!(body.contains("over capacity"), "{body}");
    drop(stalled);
    let deadline = Instant::now() + WAIT;
    while b.try_http("GET", "/health", None, None).map(|r| r.0).ok() != Some(200) {
        assert!(Instant::now() < deadline, "/health never answered again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = b.metrics();
    assert!(
        metric(
            &text,
            r#"broker_http_connections_closed_total{reason="capacity"}"#
        ) >= 1.0,
        "{text}"
    );
}

#[test]
fn a_stalled_request_body_is_closed_by_the_idle_timeout() {
    let b = Broker::start(&[
        ("HTTP_HEADER_READ_TIMEOUT_MS", "60000"),
        ("HTTP_IDLE_TIMEOUT_MS", "500"),
    ]);
    let mut s = std::net::TcpStream::connect(b.addr).unwrap();
    s.write_all(
        b"POST /hook/set-status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"cwd\":",
    )
    .unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled request was not closed: {e}"),
    }
    let text = b.metrics();
    let idle = metric(
        &text,
        r#"broker_http_connections_closed_total{reason="idle_timeout"}"#,
    );
    assert_eq!(idle, 1.0, "{text}");
    assert_eq!(
        metric(&text, "broker_http_connections_open "),
        1.0,
        "{text}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_its_response() {
    let b = Broker::start(&[
        ("HTTP_HEADER_READ_TIMEOUT_MS", "500"),
        ("HTTP_IDLE_TIMEOUT_MS", "60000"),
    ]);
    let mut s = std::net::TcpStream::connect(b.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // The response, then nothing from the client: the server closes the connection.
    let mut seen = Vec::new();
    match s.read_to_end(&mut seen) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the idle keep-alive connection was not closed: {e}"),
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{seen:?}"
    );
    let text = b.metrics();
    assert_eq!(
        metric(
            &text,
            r#"broker_http_connections_closed_total{reason="header_timeout"}"#
        ),
        1.0,
        "{text}"
    );
}
