//! Test harness: starts the real `broker` binary, talks HTTP to it and drives real
//! WebSocket clients that sign real ed25519 hellos.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

pub mod cluster;
pub mod pg;
pub mod redis;
pub mod redis_cluster;
pub mod s3;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::protocol::codes::Close;
/// The wire types a test builds client frames from and parses broker frames into.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the harness"
)]
pub use broker::protocol::frames::{
    Ban, BanAck, HelloAck, ListBansResult, ModerationAck, ModerationAckType, Peer, PeersList,
    SystemPush, UnbanAck,
};
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the harness"
)]
pub use broker::protocol::{
    Ack, BanRequest, ClientFrame, Envelope, ErrorFrame, Group, Priority, ProfileFields, Push,
    Selection, Status, codes,
};
use broker::protocol::{Attestation, ClientAck, Hello, PeerMeta, SessionHello, signing};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN: &str = "test-admin-token";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn now_ms() -> i64 {
    broker::ids::now_ms()
}

/// A running broker process, killed when dropped.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    /// The internal listener (`BROKER_INTERNAL_PORT` given): `/metrics` and the operator
    /// API are there, and [`Broker::api`] and [`Broker::metrics`] use it.
    pub internal_addr: Option<SocketAddr>,
    pub log: PathBuf,
}

impl Broker {
    /// Starts the broker in dev mode with `env` on top of test defaults.
    pub fn start(env: &[(&str, &str)]) -> Broker {
        let dir = std::env::temp_dir().join(format!("broker-test-{}", broker::ids::random_id(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("broker.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.env_clear()
            .env("BROKER_HOST", "127.0.0.1")
            .env("BROKER_PORT", "0")
            .env("BROKER_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "broker=debug,info")
            .env("SHUTDOWN_DRAIN_MS", "200")
            .env("SHUTDOWN_DEADLINE_MS", "3000");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("broker binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "broker exited before listening; log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
                .unwrap();
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // With an internal listener its line comes right after the public one.
        let internal_addr = env
            .iter()
            .any(|(k, _)| *k == "BROKER_INTERNAL_PORT")
            .then(|| {
                let line = lines.next().unwrap().unwrap();
                let rest = line
                    .strip_prefix("internal listening on http://")
                    .unwrap_or_else(|| {
                        panic!("expected the internal listener's line, got {line:?}")
                    });
                rest.split_whitespace().next().unwrap().parse().unwrap()
            });
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let broker = Broker {
            child,
            addr,
            internal_addr,
            log,
        };
        broker.wait_ready();
        broker
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.try_http("GET", "/health/ready", None, None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker never became ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where `/metrics` and the operator API are served: the internal listener if there
    /// is one, else the public port.
    pub fn admin_addr(&self) -> SocketAddr {
        self.internal_addr.unwrap_or(self.addr)
    }

    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        http(self.addr, method, path, token, body)
    }

    /// An HTTP request with the admin token; returns status and JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            self.admin_addr(),
            method,
            path,
            Some(TOKEN),
            body.as_deref(),
        )
        .unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a mesh; returns its id.
    pub fn create_mesh(&self, name: &str, owner_user_id: Option<&str>) -> String {
        let mut body = json!({"name": name});
        if let Some(o) = owner_user_id {
            body["ownerUserId"] = json!(o);
        }
        let (status, v) = self.api("POST", "/api/v1/meshes", Some(body));
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Enrols `who` in `mesh` with `extra` fields (role, userId, defaultGroups…).
    pub fn add_member(&self, mesh: &str, who: &Identity, name: &str, extra: Value) -> String {
        let mut body = json!({"pubkey": who.pubkey, "displayName": name});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let (status, v) = self.api(
            "POST",
            &format!("/api/v1/meshes/{mesh}/members"),
            Some(body),
        );
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub fn metrics(&self) -> String {
        http(self.admin_addr(), "GET", "/metrics", None, None)
            .unwrap()
            .1
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client (one request per connection), so tests depend on no HTTP stack.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(WAIT))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The value of one series (`name` with its labels, as rendered) in a metrics text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// [`metric_value`], 0 for a series not rendered yet.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metric_value(metrics, name).unwrap_or(0.0)
}

/// Sends a handshake on a fresh socket; returns the error code and the close.
pub async fn refused(url: &str, hello: Value) -> (String, (u16, String)) {
    let mut c = Client::connect(url).await;
    c.send(hello).await;
    let err = c.expect("error").await;
    let close = c.expect_close().await;
    (err["code"].as_str().unwrap_or_default().to_string(), close)
}

/// A handshake refused with `code` and closed as handshake refusals are.
pub async fn assert_refused(url: &str, hello: Value, code: &str) {
    let got = refused(url, hello).await;
    assert_eq!(got, (code.to_string(), handshake_close(code)));
}

/// An ed25519 identity.
#[derive(Clone)]
pub struct Identity {
    pub key: SigningKey,
    pub pubkey: String,
}

impl Identity {
    pub fn random() -> Identity {
        Self::from_seed(broker::ids::random_seed())
    }

    pub fn from_seed(seed: [u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(&seed);
        let pubkey = signing::pubkey_hex(&key);
        Identity { key, pubkey }
    }

    pub fn sign(&self, text: &str) -> String {
        signing::sign_hex(&self.key, text)
    }
}

/// A signed `hello` for `member` (whose id is `member_id`) in `mesh`.
///
/// `extra` is merged over the typed frame as JSON, so a test can also tamper with it.
pub fn hello(mesh: &str, member_id: &str, member: &Identity, extra: Value) -> Value {
    let mut h = to_json(&ClientFrame::Hello(Box::new(hello_frame(
        mesh, member_id, member,
    ))));
    merge(&mut h, extra);
    h
}

/// The typed `hello` that [`hello`] sends: signed now, a fresh `sessionId`.
pub fn hello_frame(mesh: &str, member_id: &str, member: &Identity) -> Hello {
    let ts = now_ms();
    Hello {
        mesh_id: mesh.to_string(),
        member_id: member_id.to_string(),
        pubkey: member.pubkey.clone(),
        session_pubkey: None,
        timestamp: ts.into(),
        signature: member.sign(&signing::hello_text(mesh, member_id, &member.pubkey, ts)),
        meta: PeerMeta {
            session_id: Some(format!("s-{}", broker::ids::random_id(8))),
            pid: Some(4242),
            cwd: Some("/work".into()),
            ..PeerMeta::default()
        },
    }
}

/// A signed `session_hello` for a fresh session key vouched by `member`.
pub fn session_hello(mesh: &str, member: &Identity, session: &Identity, extra: Value) -> Value {
    let mut h = to_json(&ClientFrame::SessionHello(Box::new(session_hello_frame(
        mesh, member, session,
    ))));
    merge(&mut h, extra);
    h
}

/// The typed `session_hello` that [`session_hello`] sends: attested for an hour.
pub fn session_hello_frame(mesh: &str, member: &Identity, session: &Identity) -> SessionHello {
    let ts = now_ms();
    let expires = ts + 3_600_000;
    let att_sig = member.sign(&signing::attestation_text(
        &member.pubkey,
        &session.pubkey,
        expires,
    ));
    SessionHello {
        mesh_id: mesh.to_string(),
        parent_member_id: None,
        parent_member_pubkey: member.pubkey.clone(),
        session_pubkey: session.pubkey.clone(),
        parent_attestation: Some(Attestation {
            session_pubkey: session.pubkey.clone(),
            parent_member_pubkey: member.pubkey.clone(),
            expires_at: expires.into(),
            signature: att_sig,
        }),
        timestamp: ts.into(),
        signature: session.sign(&signing::session_hello_text(
            mesh,
            &member.pubkey,
            &session.pubkey,
            ts,
        )),
        meta: PeerMeta {
            session_id: Some(format!("cc-{}", broker::ids::random_id(8))),
            pid: Some(777),
            cwd: Some("/work/session".into()),
            ..PeerMeta::default()
        },
    }
}

/// A client frame (typed, or raw JSON) as a JSON value.
pub fn to_json(frame: &impl Serialize) -> Value {
    serde_json::to_value(frame).expect("a frame serialises")
}

/// A `send` of `ciphertext` to `target` (nonce `bm9uY2U=`).
pub fn send_frame(target: &str, priority: Priority, ciphertext: &str) -> ClientFrame {
    ClientFrame::Send(Box::new(send_body(target, priority, ciphertext)))
}

/// The fields of [`send_frame`], for a test that sets `id` or `client_message_id` too:
/// `ClientFrame::Send(Box::new(Send { id: …, ..send_body(…) }))`.
pub fn send_body(target: &str, priority: Priority, ciphertext: &str) -> broker::protocol::Send {
    broker::protocol::Send {
        target_spec: target.to_string(),
        priority,
        nonce: "bm9uY2U=".into(),
        ciphertext: ciphertext.to_string(),
        id: None,
        client_message_id: None,
    }
}

/// A `client_ack` of the broker message `broker_message_id` (a `push`'s `messageId`).
pub fn client_ack(broker_message_id: &str) -> ClientFrame {
    ClientFrame::ClientAck(ClientAck {
        client_message_id: None,
        broker_message_id: Some(broker_message_id.to_string()),
    })
}

/// A `client_ack` by the sender's `client_message_id`.
pub fn client_ack_by_client_id(client_message_id: &str) -> ClientFrame {
    ClientFrame::ClientAck(ClientAck {
        client_message_id: Some(client_message_id.to_string()),
        broker_message_id: None,
    })
}

/// The selection of a `disconnect` or `kick` by `target` (a display name or key prefix).
pub fn select(target: &str) -> Selection {
    Selection {
        target: Some(target.to_string()),
        ..Selection::default()
    }
}

/// The request of a `ban` or `unban` of `target`, without a reason.
pub fn ban_request(target: &str) -> BanRequest {
    BanRequest {
        target: target.to_string(),
        reason: None,
    }
}

/// A `join_group` of `name`, with `role` when given.
pub fn join_group(name: &str, role: Option<&str>) -> ClientFrame {
    ClientFrame::JoinGroup(Group {
        name: name.to_string(),
        role: role.map(str::to_string),
    })
}

/// A broker frame parsed into its typed frame (`Ack`, `HelloAck`, `PeersList`, …);
/// panics, showing the frame, when it is not one.
pub fn parse<T: DeserializeOwned>(frame: &Value) -> T {
    serde_json::from_value(frame.clone())
        .unwrap_or_else(|e| panic!("not a {}: {e}; frame {frame}", std::any::type_name::<T>()))
}

/// A close as `expect_close` returns it: `(code, reason)`.
pub fn close_of(close: Close) -> (u16, String) {
    (close.code, close.reason.to_string())
}

/// The handshake close ([`codes::HANDSHAKE`](broker::protocol::codes::HANDSHAKE)) with
/// `code` as its reason.
pub fn handshake_close(code: &str) -> (u16, String) {
    (broker::protocol::codes::HANDSHAKE.code, code.to_string())
}

fn merge(target: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            target[k] = v;
        }
    }
}

/// What a client saw last: a JSON frame or the close.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(Value),
    Closed(Option<(u16, String)>),
}

/// A real WebSocket client (tokio-tungstenite).
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames received while waiting for another one.
    backlog: std::collections::VecDeque<Value>,
    pub closed: Option<Option<(u16, String)>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Client::connect_request(url)
            .await
            .expect("websocket connects")
            .0
    }

    /// Connects with a prepared request (extra headers such as a cookie), returning the
    /// upgrade response too.
    pub async fn connect_request(
        req: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<
        (
            Client,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        String,
    > {
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| e.to_string())?;
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_nodelay(true);
        }
        Ok((
            Client {
                ws,
                backlog: Default::default(),
                closed: None,
            },
            resp,
        ))
    }

    /// Waits until the socket ends (close frame or dropped connection).
    pub async fn expect_gone(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Event::Frame(_)) => continue,
                Some(Event::Closed(_)) => return,
                None => panic!("the socket did not end within {WAIT:?}"),
            }
        }
    }

    /// Connects and completes a handshake with `hello`, returning the `hello_ack`.
    pub async fn join(url: &str, hello: Value) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        c.send(hello).await;
        let ack = c.expect("hello_ack").await;
        (c, ack)
    }

    /// Sends a frame: a typed [`ClientFrame`], or raw JSON for a frame the protocol does
    /// not define (an unknown `type`, a tampered hello, a wrong field type).
    pub async fn send(&mut self, v: impl Serialize) {
        let text = serde_json::to_string(&v).expect("a frame serialises");
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next event within `within`, or `None` on timeout.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(Event::Frame(v));
        }
        if let Some(c) = &self.closed {
            return Some(Event::Closed(c.clone()));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(Event::Frame(
                        serde_json::from_str(&t).expect("broker sends JSON"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    let c = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    self.closed = Some(c.clone());
                    return Some(Event::Closed(c));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return Some(Event::Closed(None));
                }
            }
        }
    }

    /// Waits for a frame of `kind`, keeping others for later; panics on close or timeout.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(kind, |_| true).await
    }

    /// Waits for a frame of `kind` that satisfies `pred`, keeping others for later.
    pub async fn expect_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Event::Frame(v)) if v["type"] == kind && pred(&v) => break v,
                Some(Event::Frame(v)) => skipped.push(v),
                Some(Event::Closed(c)) => {
                    panic!("closed {c:?} while waiting for {kind}; saw {skipped:?}")
                }
                None => panic!("no {kind} within {WAIT:?}; saw {skipped:?}"),
            }
        };
        for v in skipped.into_iter().rev() {
            self.backlog.push_front(v);
        }
        found
    }

    /// Waits for a system push of `event`.
    pub async fn expect_system(&mut self, event: &str) -> Value {
        self.expect_where("push", |v| v["subtype"] == "system" && v["event"] == event)
            .await
    }

    /// Asserts that no frame matching `pred` arrives within `within` (others are kept).
    pub async fn expect_none(&mut self, within: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_within(left).await {
                Some(Event::Frame(v)) => {
                    assert!(!pred(&v), "unexpected frame {v}");
                    skipped.push(v);
                }
                Some(Event::Closed(_)) | None => break,
            }
        }
        for v in skipped.into_iter().rev() {
            self.backlog.push_front(v);
        }
    }

    /// Waits for the close frame and returns its code and reason, skipping other frames.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Event::Frame(_)) => continue,
                Some(Event::Closed(Some(c))) => return c,
                Some(Event::Closed(None)) => panic!("connection dropped without a close frame"),
                None => panic!("no close within {WAIT:?}"),
            }
        }
    }

    /// Sends a request with `_reqId` and waits for the reply carrying it.
    pub async fn request(&mut self, v: impl Serialize) -> Value {
        let mut v = to_json(&v);
        let id = broker::ids::random_id(8);
        v["_reqId"] = json!(id);
        self.send(v.clone()).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Event::Frame(f)) if f["_reqId"] == json!(id) => break f,
                Some(Event::Frame(f)) => skipped.push(f),
                other => panic!("no reply to {v}: {other:?}, saw {skipped:?}"),
            }
        };
        for f in skipped.into_iter().rev() {
            self.backlog.push_front(f);
        }
        found
    }

    /// A direct/broadcast/group `send`; returns the `ack`.
    pub async fn send_msg(&mut self, target: &str, priority: &str, ciphertext: &str) -> Value {
        let priority: Priority = serde_json::from_value(priority.into()).expect("now, next or low");
        self.request(send_frame(target, priority, ciphertext)).await
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abort(self) {
        drop(self);
    }
}

/// A mesh with members ready to connect.
pub struct Mesh {
    pub id: String,
}

/// One enrolled member: identity and member id.
#[derive(Clone)]
pub struct Member {
    pub id: String,
    pub identity: Identity,
    pub name: String,
}

impl Member {
    pub fn hello(&self, mesh: &str, extra: Value) -> Value {
        hello(mesh, &self.id, &self.identity, extra)
    }
}

/// Enrols a fresh identity as `name`.
pub fn member(b: &Broker, mesh: &str, name: &str, extra: Value) -> Member {
    let identity = Identity::random();
    let id = b.add_member(mesh, &identity, name, extra);
    Member {
        id,
        identity,
        name: name.to_string(),
    }
}

/// The reference audit's cross-replica exchange: `a` (alice) on one replica; `b` (bob)
/// and `c` (carol, in group `ops`) on the other. A direct message from alice reaches bob
/// (who confirms it), a broadcast reaches both, `@ops` only carol, and bob's reply reaches
/// alice.
pub async fn cross_replica_exchange(
    a: &mut Client,
    b: &mut Client,
    c: &mut Client,
    alice_key: &str,
    bob_key: &str,
) {
    let ack = a.send_msg(bob_key, "now", "direct").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let push = b.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], ack["messageId"]);
    assert_eq!(push["ciphertext"], "direct");
    b.send(client_ack(push["messageId"].as_str().unwrap()))
        .await;

    a.send_msg("*", "now", "broadcast").await;
    assert_eq!(
        b.expect_where("push", is_push).await["ciphertext"],
        "broadcast"
    );
    assert_eq!(
        c.expect_where("push", is_push).await["ciphertext"],
        "broadcast"
    );
    a.send_msg("@ops", "now", "group").await;
    assert_eq!(c.expect_where("push", is_push).await["ciphertext"], "group");
    b.expect_none(Duration::from_millis(300), is_push).await;

    b.send_msg(alice_key, "now", "reply").await;
    assert_eq!(a.expect_where("push", is_push).await["ciphertext"], "reply");
}

/// A message push (direct, broadcast or group), not a system event.
pub fn is_push(v: &Value) -> bool {
    v["type"] == "push" && v["subtype"] != "system"
}

/// A `peer_joined` or `peer_left` system event.
pub fn is_join_or_leave(v: &Value) -> bool {
    v["subtype"] == "system" && (v["event"] == "peer_joined" || v["event"] == "peer_left")
}

/// Polls `f` until it returns `Some` or the wait runs out.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
