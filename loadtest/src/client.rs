//! A real client's wire side: signed `hello`s, `send` and `client_ack` frames, parsing of
//! the broker's frames, connecting (optionally from a chosen source address) and the
//! jittered exponential backoff between reconnects.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use broker::protocol::frames::tag;
use broker::protocol::{ClientAck, ClientFrame, Hello, PeerMeta, Priority, Send, signing};
use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::operator::Endpoint;
use crate::seal::Identity;
use crate::tls::{Stream, TlsDial};

pub type Ws = WebSocketStream<Stream>;

/// The handshake error code of an overloaded replica.
pub const OVERLOADED: &str = broker::auth::OVERLOADED;
/// The longest wait an `overloaded` refusal is honoured for (`--max-retry-after`).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How to reach one broker URL: its resolved address and, for `wss://`/`https://`, TLS.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The WebSocket URL.
    pub url: String,
    /// `host:port` (the HTTP `Host`).
    pub authority: String,
    /// The first resolved address.
    pub addr: SocketAddr,
    /// Every resolved address, tried in order.
    pub addrs: Vec<SocketAddr>,
    pub tls: Option<TlsDial>,
}

impl Dial {
    /// Resolves `ep`; TLS endpoints need `connector` (built when any URL is TLS).
    pub async fn resolve(
        ep: &Endpoint,
        connector: Option<&tokio_rustls::TlsConnector>,
    ) -> anyhow::Result<Dial> {
        use anyhow::Context;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&ep.authority)
            .await
            .with_context(|| format!("resolving {}", ep.authority))?
            .collect();
        let addr = *addrs
            .first()
            .with_context(|| format!("{} resolves to nothing", ep.authority))?;
        let tls = match (ep.tls, connector) {
            (false, _) => None,
            (true, Some(c)) => Some(TlsDial::new(c.clone(), &ep.host)?),
            (true, None) => anyhow::bail!("{}: a TLS URL without a TLS configuration", ep.ws_url),
        };
        Ok(Dial {
            url: ep.ws_url.clone(),
            authority: ep.authority.clone(),
            addr,
            addrs,
            tls,
        })
    }

    /// TCP (from `source` when given), then TLS when the URL says so.
    pub async fn open(&self, source: Option<IpAddr>) -> Result<Stream, ConnectError> {
        let tcp = match source {
            None => TcpStream::connect(&self.addrs[..])
                .await
                .map_err(ConnectError::Tcp)?,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(ConnectError::Tcp)?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(ConnectError::Tcp)?;
                socket.connect(self.addr).await.map_err(ConnectError::Tcp)?
            }
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(t) => t
                .handshake(tcp)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string())),
        }
    }
}

/// A signed control-plane `hello` for `identity`, member `member_id` of `mesh_id`.
pub fn hello_frame(
    mesh_id: &str,
    member_id: &str,
    identity: &Identity,
    session_id: &str,
    timestamp_ms: i64,
) -> String {
    let text = signing::hello_text(mesh_id, member_id, &identity.pubkey, timestamp_ms);
    encode(&ClientFrame::Hello(Box::new(Hello {
        mesh_id: mesh_id.to_string(),
        member_id: member_id.to_string(),
        pubkey: identity.pubkey.clone(),
        session_pubkey: None,
        timestamp: timestamp_ms.into(),
        signature: signing::sign_hex(&identity.key, &text),
        meta: PeerMeta {
            session_id: Some(session_id.to_string()),
            pid: Some(i64::from(std::process::id())),
            cwd: Some("/loadtest".into()),
            peer_type: Some("loadtest".into()),
            ..PeerMeta::default()
        },
    })))
}

/// A `send` to `target_spec` carrying `client_message_id`. Takes the strings by value:
/// the hot path builds them for this frame only, so they move in without a copy.
pub fn send_frame(
    target_spec: String,
    priority: Priority,
    nonce: String,
    ciphertext: String,
    client_message_id: String,
) -> String {
    encode(&ClientFrame::Send(Box::new(Send {
        target_spec,
        priority,
        nonce,
        ciphertext,
        id: None,
        client_message_id: Some(client_message_id),
    })))
}

/// A `client_ack` of the broker message `broker_message_id`.
pub fn client_ack_frame(broker_message_id: &str) -> String {
    encode(&ClientFrame::ClientAck(ClientAck {
        client_message_id: None,
        broker_message_id: Some(broker_message_id.to_string()),
    }))
}

/// A client frame as text, through its serde derive (no `Value` in between). Frames
/// without an `_reqId` are serialised bare, not inside an `Envelope`.
fn encode(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

/// The fields of a broker frame the harness looks at; everything else is skipped.
///
/// A read view over the typed frames of `broker::protocol::frames` (`Ack`, `Push`,
/// `ErrorFrame`, `HelloAck`), with their field names: one borrowing pass tells them apart
/// on the hot path, where decoding into each typed frame would mean reading `type` first
/// and allocating every field. The tests below parse frames the broker's types encode.
#[derive(Debug, Deserialize)]
pub struct InFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(rename = "messageId", borrow, default)]
    pub message_id: Option<Cow<'a, str>>,
    /// `ack.id`: the send's `id`, else its `client_message_id`.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub queued: Option<bool>,
    #[serde(borrow, default)]
    pub error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub client_message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub subtype: Option<Cow<'a, str>>,
    #[serde(rename = "senderPubkey", borrow, default)]
    pub sender_pubkey: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub nonce: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub ciphertext: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    /// `error.retryAfterMs` of an `overloaded` refusal: how long to wait before trying
    /// again.
    #[serde(rename = "retryAfterMs", default)]
    pub retry_after_ms: Option<u64>,
}

impl<'a> InFrame<'a> {
    pub fn parse(text: &'a str) -> Option<InFrame<'a>> {
        serde_json::from_str(text).ok()
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable): try another replica.
    Tcp(std::io::Error),
    /// The TLS handshake failed (certificate, protocol): never retried without TLS.
    Tls(String),
    /// The WebSocket upgrade failed.
    Upgrade(String),
    /// The broker refused the handshake with `error{code}`.
    Refused(String),
    /// The replica is taking more handshakes than it can (`HANDSHAKE_CONCURRENCY` and its
    /// queue): `error{code:"overloaded", retryAfterMs}` then close 1013, or an HTTP 503
    /// with `Retry-After` before the upgrade (`http`). Retried after `retry_after`.
    Overloaded {
        /// What the broker asked for (`retryAfterMs`, else `Retry-After` seconds).
        retry_after: Option<Duration>,
        /// Refused before the upgrade (503) rather than with an `error` frame.
        http: bool,
    },
    /// No `hello_ack` in time.
    Timeout,
    /// The socket closed before the `hello_ack`.
    Closed,
}

impl ConnectError {
    /// A short label for counting.
    pub fn label(&self) -> String {
        match self {
            ConnectError::Tcp(e) => format!("tcp: {}", e.kind()),
            ConnectError::Tls(e) => format!("tls: {e}"),
            ConnectError::Upgrade(_) => "upgrade".into(),
            ConnectError::Refused(code) => format!("refused: {code}"),
            ConnectError::Overloaded { http: false, .. } => "overloaded: error".into(),
            ConnectError::Overloaded { http: true, .. } => "overloaded: http 503".into(),
            ConnectError::Timeout => "hello timeout".into(),
            ConnectError::Closed => "closed before hello_ack".into(),
        }
    }

    /// The wait before the next attempt an `overloaded` refusal asks for, at most `cap`;
    /// `None` for every other failure (and an overloaded one that named no delay): those
    /// wait the harness's own backoff.
    pub fn overloaded_wait(&self, cap: Duration) -> Option<Duration> {
        match self {
            ConnectError::Overloaded {
                retry_after: Some(d),
                ..
            } => Some((*d).min(cap)),
            _ => None,
        }
    }

    /// True when the replica itself looks unreachable.
    pub fn replica_down(&self) -> bool {
        matches!(
            self,
            ConnectError::Tcp(_) | ConnectError::Tls(_) | ConnectError::Upgrade(_)
        )
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tcp(e) => write!(f, "TCP: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Upgrade(e) => write!(f, "WebSocket upgrade failed: {e}"),
            ConnectError::Refused(code) => write!(f, "hello refused: {code}"),
            ConnectError::Overloaded { retry_after, http } => write!(
                f,
                "overloaded{}, retry after {:?}",
                if *http { " (HTTP 503)" } else { "" },
                retry_after
            ),
            ConnectError::Timeout => f.write_str("no hello_ack in time"),
            ConnectError::Closed => f.write_str("closed before hello_ack"),
        }
    }
}

/// Small buffers: the harness holds thousands of sockets and its frames are small.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// Opens the socket (see [`Dial::open`]) and upgrades to a WebSocket at the dial's URL.
pub async fn connect(dial: &Dial, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
    let stream = dial.open(source).await?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(dial.url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(upgrade_error)?;
    Ok(ws)
}

/// A failed upgrade: `Overloaded` for the broker's 503 `{error:"overloaded",
/// retryAfterMs}` (or a 503 with `Retry-After`), `Upgrade` otherwise (a draining
/// replica's 503 `{error:"draining"}` included: another replica should be tried).
fn upgrade_error(e: tokio_tungstenite::tungstenite::Error) -> ConnectError {
    use tokio_tungstenite::tungstenite::Error;
    if let Error::Http(resp) = &e
        && let Some(o) = overloaded_response(resp)
    {
        return o;
    }
    ConnectError::Upgrade(e.to_string())
}

/// The `Overloaded` an HTTP answer to the upgrade means, if it is one.
pub fn overloaded_response(
    resp: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> Option<ConnectError> {
    if resp.status() != 503 {
        return None;
    }
    let body: Option<serde_json::Value> = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok());
    let said_overloaded = body
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|v| v.as_str())
        == Some("overloaded");
    let header = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if !said_overloaded && header.is_none() {
        return None;
    }
    let ms = body
        .as_ref()
        .and_then(|v| v.get("retryAfterMs"))
        .and_then(|v| v.as_u64())
        .map(Duration::from_millis);
    Some(ConnectError::Overloaded {
        retry_after: ms.or(header),
        http: true,
    })
}

/// Sends `hello` and waits up to `within` for the `hello_ack`.
pub async fn handshake(ws: &mut Ws, hello: String, within: Duration) -> Result<(), ConnectError> {
    ws.send(Message::text(hello))
        .await
        .map_err(|_| ConnectError::Closed)?;
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let Some(f) = InFrame::parse(t.as_str()) else {
                        continue;
                    };
                    match f.kind.as_ref() {
                        tag::HelloAck::TEXT => return Ok(()),
                        tag::Error::TEXT if f.code.as_deref() == Some(OVERLOADED) => {
                            return Err(ConnectError::Overloaded {
                                retry_after: f.retry_after_ms.map(Duration::from_millis),
                                http: false,
                            });
                        }
                        tag::Error::TEXT => {
                            return Err(ConnectError::Refused(
                                f.code.map(|c| c.into_owned()).unwrap_or_default(),
                            ));
                        }
                        _ => continue,
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(ConnectError::Closed),
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

/// Jittered exponential backoff: attempt `n` waits a uniform time in
/// `[d/2, d]` with `d = min(cap, base · 2ⁿ)`, so reconnecting clients spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self, rng: &mut impl rand::Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_us = rng.random_range(0..=half.as_micros() as u64);
        half + Duration::from_micros(jitter_us)
    }

    /// After a successful connect.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::{Ack, ClientMessage, Inbound, Push};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn hello_is_signed_the_way_the_broker_verifies_it() {
        let id = Identity::random();
        let frame = hello_frame("mesh1", "mem1", &id, "sess", 1_700_000_000_000);
        let ClientMessage::Hello(h) = Inbound::decode(frame.as_bytes()).expect("decodes").message
        else {
            panic!("not a hello: {frame}")
        };
        assert_eq!(h.pubkey, id.pubkey);
        assert_eq!(h.meta.session_id.as_deref(), Some("sess"));
        let text = signing::hello_text(&h.mesh_id, &h.member_id, &h.pubkey, 1_700_000_000_000);
        assert_eq!(signing::verify(&h.pubkey, &text, &h.signature), Ok(()));
    }

    #[test]
    fn send_and_client_ack_decode_as_the_broker_reads_them() {
        let frame = send_frame(
            "ab".repeat(32),
            Priority::Now,
            "bm9u".into(),
            "Y3Q=".into(),
            "r-1-2".into(),
        );
        let ClientMessage::Send(s) = Inbound::decode(frame.as_bytes()).expect("decodes").message
        else {
            panic!("not a send")
        };
        assert_eq!(s.priority, Priority::Now);
        assert_eq!(s.client_message_id.as_deref(), Some("r-1-2"));
        assert_eq!((s.nonce.as_str(), s.ciphertext.as_str()), ("bm9u", "Y3Q="));
        let ClientMessage::ClientAck(a) = Inbound::decode(client_ack_frame("m\"1").as_bytes())
            .expect("decodes")
            .message
        else {
            panic!("not a client_ack")
        };
        assert_eq!(a.broker_message_id.as_deref(), Some("m\"1"));
    }

    #[test]
    fn a_broker_push_parses() {
        let bytes = broker::protocol::encode(&Push {
            kind: tag::Push,
            message_id: "mid".into(),
            mesh_id: "mesh".into(),
            sender_pubkey: "spk".into(),
            sender_member_pubkey: "spk".into(),
            sender_name: "n".into(),
            priority: Priority::Next,
            nonce: "no".into(),
            ciphertext: "ct".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            client_message_id: Some("r-0-1".into()),
            subtype: None,
        });
        let text = std::str::from_utf8(&bytes).expect("utf8");
        let f = InFrame::parse(text).expect("parses");
        assert_eq!(f.kind, tag::Push::TEXT);
        assert_eq!(f.message_id.as_deref(), Some("mid"));
        assert_eq!(f.client_message_id.as_deref(), Some("r-0-1"));
        assert_eq!(f.ciphertext.as_deref(), Some("ct"));
        assert!(f.subtype.is_none());
        let bytes = broker::protocol::encode(&Ack::queued("r-0-1", "m", None));
        let ack = InFrame::parse(std::str::from_utf8(&bytes).expect("utf8")).expect("parses");
        assert_eq!(ack.kind, tag::Ack::TEXT);
        assert_eq!((ack.id.as_deref(), ack.queued), (Some("r-0-1"), Some(true)));
        assert_eq!(ack.message_id.as_deref(), Some("m"));
        let bytes = broker::protocol::encode(&Ack::refused("r-0-2", "payload too large", None));
        let ack = InFrame::parse(std::str::from_utf8(&bytes).expect("utf8")).expect("parses");
        assert_eq!(ack.queued, Some(false));
        assert_eq!(ack.error.as_deref(), Some("payload too large"));
        let bytes = broker::protocol::error_frame("bad_signature", "no", None);
        let err = InFrame::parse(std::str::from_utf8(&bytes).expect("utf8")).expect("parses");
        assert_eq!(err.kind, tag::Error::TEXT);
        assert_eq!(err.code.as_deref(), Some("bad_signature"));
    }

    #[test]
    fn overloaded_refusals_carry_the_delay_they_ask_for() {
        let cap = Duration::from_secs(30);
        let frame =
            broker::auth::HandshakeError::overloaded(Duration::from_millis(1234)).frame(None);
        let f = InFrame::parse(std::str::from_utf8(&frame).expect("utf8")).expect("parses");
        assert_eq!(f.code.as_deref(), Some(OVERLOADED));
        assert_eq!(f.retry_after_ms, Some(1234));
        let response = |status: u16, retry_after: Option<&str>, body: &str| {
            let mut b = tokio_tungstenite::tungstenite::http::Response::builder().status(status);
            if let Some(v) = retry_after {
                b = b.header("retry-after", v);
            }
            b.body(Some(body.as_bytes().to_vec())).expect("response")
        };
        // The body's milliseconds win over the header's whole seconds.
        let e = overloaded_response(&response(
            503,
            Some("2"),
            r#"{"error":"overloaded","retryAfterMs":1500}"#,
        ))
        .expect("overloaded");
        assert_eq!(e.overloaded_wait(cap), Some(Duration::from_millis(1500)));
        assert_eq!(e.label(), "overloaded: http 503");
        assert!(!e.replica_down(), "the replica is up, only busy");
        let e = overloaded_response(&response(503, Some("3"), "")).expect("overloaded");
        assert_eq!(e.overloaded_wait(cap), Some(Duration::from_secs(3)));
        // Capped.
        let e = overloaded_response(&response(503, Some("3600"), "")).expect("overloaded");
        assert_eq!(e.overloaded_wait(cap), Some(cap));
        // A draining replica's 503 is no overload: try another replica.
        assert!(overloaded_response(&response(503, None, r#"{"error":"draining"}"#)).is_none());
        assert!(overloaded_response(&response(400, Some("1"), "")).is_none());
        assert_eq!(ConnectError::Timeout.overloaded_wait(cap), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = b.next_delay(&mut rng);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d1 = b.next_delay(&mut rng);
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
        // 400 ms, 800 ms, then the 1 s cap for good.
        assert_eq!(b.ceiling(), Duration::from_millis(400));
        b.next_delay(&mut rng);
        b.next_delay(&mut rng);
        for _ in 0..30 {
            assert_eq!(b.ceiling(), Duration::from_secs(1));
            let d = b.next_delay(&mut rng);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
