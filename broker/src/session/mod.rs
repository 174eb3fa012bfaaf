//! One WebSocket connection: the reader task, the writer task and the session task that
//! handles the connection's frames strictly in order.
//!
//! ```text
//! socket ──▶ reader task ──(bounded hand-off, in order)──▶ session task ──▶ Outbound ──▶ writer task ──▶ socket
//!                                   hub / bus events ─────────▲  (Control, drain doorbell)
//! ```
//!
//! The reader never runs handlers, so a slow handler cannot interleave with the next
//! frame; the writer is the only owner of the write half, so pongs, pushes and close
//! frames never race each other.
//!
//! The reader reassembles fragmented messages itself (`Assembler`), bounded in bytes
//! (`MAX_MESSAGE_BYTES`) and frames (`MAX_MESSAGE_FRAGMENTS`) while they accumulate, and
//! closes the socket on what RFC 6455 forbids (`protocol::codes`): `FRAME_TOO_LARGE` or
//! `TOO_MANY_FRAGMENTS` over a bound, `INVALID_UTF8` for text that is not UTF-8,
//! `PROTOCOL_ERROR` for a broken frame sequence.

mod drop_guard;
mod events;
mod ext;
mod handlers;
mod handoff;
mod moderation;
mod reader;
/// The per-socket outbound queue lives in a leaf module (`crate::outbound`).
pub use crate::outbound;

pub(crate) use events::end_presence;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::WebSocket;
use reader::Op;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::auth::{self, HandshakeError, Verified};
use crate::cluster::bus::AfterClose;
use crate::hub::{Control, ControlQueue, SessionHandle};
use crate::ids::now_ms;
use crate::node::Node;
use crate::protocol::{self, ClientMessage, Inbound, codes};
use crate::service::{Principal, ServiceCtx};
use outbound::{OutFrame, Outbound};

/// How long a closing socket gets to deliver its close frame before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A frame handed from the reader task to the session task.
#[derive(Debug)]
enum Incoming {
    Text(Bytes),
    Binary,
    TooLarge,
}

/// Serves one upgraded WebSocket until it closes.
pub fn serve<S>(node: Arc<Node>, ws: WebSocket<S>) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with(node, ws, None)
}

/// Serves a WebSocket whose identity was verified before the upgrade (the web chat's
/// signed-in person, `service::humans`): it is attached at once, without a `hello` frame,
/// and is then an ordinary session (pushes, `list_peers`, `send`, moderation closes).
pub fn serve_verified<S>(
    node: Arc<Node>,
    ws: WebSocket<S>,
    verified: Verified,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the connection's future lives as long as the socket, the identity is needed
    // only until the attach.
    serve_with(node, ws, Some(Box::new(verified)))
}

/// Sets the connection up (the reader and writer tasks are spawned at once) and returns the
/// session task's future. The setup is not part of that future: the socket, the reader and
/// the assembler move to their tasks here, so the future holds only the session's handles.
fn serve_with<S>(
    node: Arc<Node>,
    ws: WebSocket<S>,
    verified: Option<Box<Verified>>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = node.config.max_message_bytes;
    // Both halves are raw: the writer encodes its frames itself, so that it writes a whole
    // batch at once (`outbound::write_loop`), and the reader parses them itself
    // (`reader.rs`), so that an idle socket holds no read buffer.
    let (rd, wr) = tokio::io::split(ws.into_inner());
    let rd = reader::FrameReader::new(rd, max);
    let assembler = Assembler::new(max, node.config.max_message_fragments);

    let conn_id = node.next_conn_id();
    let (out, out_rx) = Outbound::new(
        node.config.outbound_queue_bytes,
        node.metrics.outbound_queue_bytes.clone(),
        node.metrics.slow_consumer_closes.clone(),
        node.metrics.ws_pongs_coalesced.clone(),
    );
    let kill = node.kill.child_token();
    let closing = CancellationToken::new();
    let last_pong = Arc::new(AtomicI64::new(now_ms()));
    let (in_tx, in_rx) = handoff::handoff(16);
    node.metrics.connections_total.inc();
    node.metrics.connections_active.inc();

    let span = info_span!("conn", conn_id = %conn_id, node_id = %node.config.node_id, mesh_id = tracing::field::Empty);
    {
        let (out, kill, closing, node) = (out.clone(), kill.clone(), closing.clone(), node.clone());
        node.tracker.clone().spawn(async move {
            let end = outbound::write_loop(
                wr,
                out_rx,
                out,
                kill,
                node.config.ping_interval.max(Duration::from_secs(5)),
            )
            .await;
            debug!(?end, "writer finished");
            closing.cancel();
        });
    }
    {
        let reader = Reader {
            tx: in_tx,
            out: out.clone(),
            kill: kill.clone(),
            closing: closing.clone(),
            last_pong: last_pong.clone(),
            node: node.clone(),
        };
        node.tracker.spawn(reader.run(rd, assembler));
    }

    let conn = Conn {
        node: node.clone(),
        conn_id,
        out,
        kill: kill.clone(),
        closing: closing.clone(),
        last_pong,
        opened: Instant::now(),
    };
    async move {
        conn.serve(in_rx, verified).instrument(span).await;
        if tokio::time::timeout(CLOSE_LINGER, closing.cancelled())
            .await
            .is_err()
        {
            kill.cancel();
        }
        node.metrics.connections_active.dec();
    }
}

/// Why the reader refuses what the client sent; each closes the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A frame, or a fragmented message so far, over `MAX_MESSAGE_BYTES`.
    TooLarge,
    /// A fragmented message over `MAX_MESSAGE_FRAGMENTS` frames.
    TooManyFragments,
    /// A text message that is not UTF-8 (RFC 6455 §8.1).
    InvalidUtf8,
    /// A frame sequence RFC 6455 forbids: a continuation without a start, a new message
    /// inside a fragmented one, reserved bits, an unknown opcode.
    Protocol,
}

impl Refusal {
    fn close(self) -> (u16, &'static str) {
        match self {
            Refusal::TooLarge => codes::FRAME_TOO_LARGE.pair(),
            Refusal::TooManyFragments => codes::TOO_MANY_FRAGMENTS.pair(),
            Refusal::InvalidUtf8 => codes::INVALID_UTF8.pair(),
            Refusal::Protocol => codes::PROTOCOL_ERROR.pair(),
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::TooManyFragments => "too_many_fragments",
            Refusal::InvalidUtf8 => "invalid_utf8",
            Refusal::Protocol => "protocol",
        }
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// The text so far; binary messages are refused by the session, so only their size is
    /// tracked.
    buf: Vec<u8>,
    len: usize,
    frames: usize,
}

/// Reassembles fragmented messages, bounded in bytes and in frames *while they
/// accumulate* (fastwebsockets' `FragmentCollectorRead` buffers without a bound).
#[derive(Debug)]
struct Assembler {
    max_bytes: usize,
    max_fragments: usize,
    partial: Option<Partial>,
}

impl Assembler {
    fn new(max_bytes: usize, max_fragments: usize) -> Self {
        Assembler {
            max_bytes,
            max_fragments,
            partial: None,
        }
    }

    /// Takes one data frame; `Some` when it completes a message.
    fn push(&mut self, fin: bool, opcode: Op, payload: &[u8]) -> Result<Option<Incoming>, Refusal> {
        match opcode {
            Op::Text | Op::Binary => {
                if self.partial.is_some() {
                    return Err(Refusal::Protocol);
                }
                if payload.len() > self.max_bytes {
                    return Err(Refusal::TooLarge);
                }
                let text = opcode == Op::Text;
                if fin {
                    return complete(text, Bytes::copy_from_slice(payload)).map(Some);
                }
                self.partial = Some(Partial {
                    text,
                    buf: if text { payload.to_vec() } else { Vec::new() },
                    len: payload.len(),
                    frames: 1,
                });
                Ok(None)
            }
            Op::Continuation => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(Refusal::Protocol);
                };
                p.frames += 1;
                p.len += payload.len();
                if p.len > self.max_bytes {
                    return Err(Refusal::TooLarge);
                }
                if p.frames > self.max_fragments {
                    return Err(Refusal::TooManyFragments);
                }
                if p.text {
                    p.buf.extend_from_slice(payload);
                }
                if !fin {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some(p) => complete(p.text, Bytes::from(p.buf)).map(Some),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
}

/// A client's close frame: empty, or a code a peer may send and a UTF-8 reason (RFC 6455
/// §5.5.1, §7.4).
fn check_close(payload: &[u8]) -> Result<(), Refusal> {
    match payload {
        [] => Ok(()),
        [_] => Err(Refusal::Protocol),
        [hi, lo, reason @ ..] => {
            if !reader::close_code_allowed(u16::from_be_bytes([*hi, *lo])) {
                return Err(Refusal::Protocol);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Refusal::InvalidUtf8);
            }
            Ok(())
        }
    }
}

fn complete(text: bool, payload: Bytes) -> Result<Incoming, Refusal> {
    if !text {
        return Ok(Incoming::Binary);
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(Refusal::InvalidUtf8);
    }
    Ok(Incoming::Text(payload))
}

#[cfg(test)]
mod assembler_tests {
    use super::*;

    fn text(r: Result<Option<Incoming>, Refusal>) -> Option<String> {
        match r {
            Ok(Some(Incoming::Text(t))) => Some(String::from_utf8(t.to_vec()).unwrap_or_default()),
            _ => None,
        }
    }

    #[test]
    fn fragments_reassemble_including_a_code_point_split_across_them() {
        let mut a = Assembler::new(16, 4);
        assert!(matches!(a.push(false, Op::Text, b"caf\xc3"), Ok(None)));
        assert_eq!(
            text(a.push(true, Op::Continuation, b"\xa9!")),
            Some("café!".into())
        );
        assert_eq!(text(a.push(true, Op::Text, b"next")), Some("next".into()));
    }

    #[test]
    fn bounds_hold_while_the_message_accumulates() {
        let mut a = Assembler::new(16, 4);
        assert!(matches!(a.push(false, Op::Text, &[b'x'; 10]), Ok(None)));
        assert_eq!(
            a.push(false, Op::Continuation, &[b'x'; 7]).err(),
            Some(Refusal::TooLarge)
        );
        let mut a = Assembler::new(16, 3);
        assert!(matches!(a.push(false, Op::Text, b""), Ok(None)));
        assert!(matches!(a.push(false, Op::Continuation, b""), Ok(None)));
        assert!(matches!(a.push(false, Op::Continuation, b""), Ok(None)));
        assert_eq!(
            a.push(false, Op::Continuation, b"").err(),
            Some(Refusal::TooManyFragments)
        );
        let mut a = Assembler::new(16, 4);
        assert_eq!(
            a.push(true, Op::Text, &[b'x'; 17]).err(),
            Some(Refusal::TooLarge)
        );
    }

    #[test]
    fn invalid_utf8_and_bad_sequences_are_refused() {
        let mut a = Assembler::new(16, 4);
        assert!(matches!(a.push(false, Op::Text, b"ab\xc3"), Ok(None)));
        assert_eq!(
            a.push(true, Op::Continuation, b"x").err(),
            Some(Refusal::InvalidUtf8)
        );
        let mut a = Assembler::new(16, 4);
        assert_eq!(
            a.push(true, Op::Continuation, b"x").err(),
            Some(Refusal::Protocol)
        );
        let mut a = Assembler::new(16, 4);
        assert!(matches!(a.push(false, Op::Binary, b"ab"), Ok(None)));
        assert_eq!(a.push(true, Op::Text, b"x").err(), Some(Refusal::Protocol));
    }
}

/// The reader task's handles.
struct Reader {
    tx: handoff::Sender<Incoming>,
    out: Outbound,
    kill: CancellationToken,
    closing: CancellationToken,
    last_pong: Arc<AtomicI64>,
    /// For `broker_ws_messages_refused_total`.
    node: Arc<Node>,
}

impl Reader {
    /// A plain `fn` returning an `async move` block (see [`Session::run`]): the task's
    /// future holds its arguments once.
    #[allow(clippy::manual_async_fn)]
    fn run<S: AsyncRead + Unpin + Send>(
        self,
        mut rd: reader::FrameReader<S>,
        mut assembler: Assembler,
    ) -> impl Future<Output = ()> + Send {
        async move {
            // After our side closed, wait briefly before dropping the read half, so the client
            // reads our close frame before the kernel resets the connection.
            let linger = async {
                self.closing.cancelled().await;
                tokio::time::sleep(CLOSE_LINGER).await;
            };
            tokio::pin!(linger);
            let refusal = loop {
                let frame = tokio::select! {
                    biased;
                    _ = self.kill.cancelled() => return,
                    _ = &mut linger => return,
                    frame = rd.next() => frame,
                };
                let frame = match frame {
                    Ok(f) => f,
                    Err(reader::ReadError::TooLarge) => break Refusal::TooLarge,
                    Err(reader::ReadError::Protocol) => break Refusal::Protocol,
                    Err(reader::ReadError::Io(e)) => {
                        debug!(error = %e, "socket read ended");
                        return;
                    }
                };
                // Any frame proves the client alive, not only a pong: a reader that waited on a
                // busy session must not count the pongs queued behind that wait as missing.
                self.last_pong.store(now_ms(), Ordering::Relaxed);
                let incoming = match frame.op {
                    // Pings are answered through the one pending-pong slot, so a ping flood from
                    // a client that never reads queues one pong, not one per ping.
                    Op::Ping => {
                        self.out.pong(&frame.payload);
                        continue;
                    }
                    Op::Pong => continue,
                    Op::Close => match check_close(&frame.payload) {
                        Ok(()) => {
                            self.out
                                .control(OutFrame::CloseEcho(frame.payload.to_vec()));
                            return;
                        }
                        Err(refusal) => break refusal,
                    },
                    op => match assembler.push(frame.fin, op, &frame.payload) {
                        Ok(Some(incoming)) => incoming,
                        Ok(None) => continue,
                        Err(refusal) => break refusal,
                    },
                };
                if self.closing.is_cancelled() || self.tx.send(incoming).await.is_err() {
                    return;
                }
            };
            self.node.metrics.refuse_ws_message(refusal.metric());
            debug!(?refusal, "inbound message refused: closing");
            if refusal == Refusal::TooLarge {
                // The session closes it (in order after the frames before this one).
                let _ = self.tx.send(Incoming::TooLarge).await;
            } else {
                let (code, reason) = refusal.close();
                self.out.close(code, reason);
            }
            // After a refused frame the stream position may be unknown: read no further.
            tokio::select! {
                _ = self.kill.cancelled() => {}
                _ = &mut linger => {}
            }
        }
    }
}

/// What a handshaked connection knows about itself: what the handshake returns, and what
/// the session after it owns.
struct Attached {
    handle: Arc<SessionHandle>,
    /// Who acts through this connection (mesh, member row as of the handshake, presence).
    principal: Principal,
    /// This connection's view of its presence record (the shared one is in `Presence`).
    record: crate::cluster::presence::PresenceRecord,
    /// Pushed direct messages not yet confirmed by `client_ack` (id → lease end and client
    /// id), and the re-drains scheduled after a failed claim (keys starting with
    /// [`REDRAIN`], never a message id). The earliest entry arms the re-push timer.
    unacked: HashMap<String, Pushed>,
}

/// One entry of [`Attached::unacked`].
#[derive(Debug, Clone)]
struct Pushed {
    /// When the lease ends (ms epoch): the message is claimed and pushed again then.
    until: i64,
    /// The push's `client_message_id`: a `client_ack` by client id confirms only the
    /// messages pushed to this connection with that id.
    client_id: Option<String>,
    /// The message's trace context (its send's), for the `client_ack` span.
    trace: Option<String>,
}

/// Key prefix of the scheduled re-drains in [`Attached::unacked`] (message ids are base62).
const REDRAIN: &str = "\u{0}redrain";

/// A connection before its handshake: its handles only.
struct Conn {
    node: Arc<Node>,
    conn_id: String,
    out: Outbound,
    /// Drops the socket at once (pong timeout, shutdown deadline).
    kill: CancellationToken,
    /// Cancelled by the writer when it has finished: the socket is closed or broken.
    closing: CancellationToken,
    last_pong: Arc<AtomicI64>,
    opened: Instant,
}

/// A handshaked connection: the handles of its [`Conn`] and its [`Attached`] state. Its
/// drop guard (`drop_guard.rs`) detaches it if it ends without [`Session::detach`].
struct Session {
    node: Arc<Node>,
    /// The service layer this adapter calls.
    svc: ServiceCtx,
    conn_id: String,
    out: Outbound,
    /// Drops the socket at once (pong timeout, shutdown deadline).
    kill: CancellationToken,
    /// Cancelled by the writer when it has finished: the socket is closed or broken.
    closing: CancellationToken,
    last_pong: Arc<AtomicI64>,
    attached: Attached,
    /// Set when the detach began: the drop guard does nothing then.
    detached: bool,
}

impl Conn {
    fn reply(&self, frame: Bytes) {
        self.out.text(frame);
    }

    fn reply_error(&self, code: &str, message: &str, req_id: Option<&str>) {
        self.reply(protocol::error_frame(code, message, req_id));
    }

    /// The handshake, then (attached) the session until the socket ends.
    async fn serve(
        self,
        mut inbound: handoff::Receiver<Incoming>,
        verified: Option<Box<Verified>>,
    ) {
        // No named local holds the attached state across an await: rustc keeps the storage
        // of a moved-from local in the future until its scope ends.
        // (Nor a temporary: a `let`'s end drops the handshake's result before the next await.)
        let session = match self.begin(&mut inbound, verified).await {
            Some(attached) => self.session(attached, inbound),
            None => return,
        };
        session.await;
    }

    /// The session's loop in an allocation of its own, sized to what an attached session
    /// holds: the connection's future keeps only the pointer (see `serve_with`).
    fn session(
        self,
        attached: Attached,
        inbound: handoff::Receiver<Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let session = Session {
            svc: ServiceCtx::new(&self.node),
            node: self.node,
            conn_id: self.conn_id,
            out: self.out,
            kill: self.kill,
            closing: self.closing,
            last_pong: self.last_pong,
            attached,
            detached: false,
        };
        Box::pin(session.run(inbound))
    }
}

impl Conn {
    /// The handshake (or, verified before the upgrade, the attach) in an allocation of its
    /// own, built outside the `async fn` that awaits it: a future built in that body would
    /// keep its full size in the connection's future for the connection's life, even boxed.
    fn begin<'a>(
        &'a self,
        inbound: &'a mut handoff::Receiver<Incoming>,
        verified: Option<Box<Verified>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Attached>> + Send + 'a>> {
        let ctl_tx = ControlQueue::default();
        match verified {
            Some(v) => Box::pin(self.attach(*v, None, ctl_tx)),
            None => Box::pin(tracing::Instrument::instrument(
                self.handshake(inbound, ctl_tx),
                tracing::info_span!("handshake"),
            )),
        }
    }
}

impl Session {
    fn reply(&self, frame: Bytes) {
        self.out.text(frame);
    }

    fn reply_error(&self, code: &str, message: &str, req_id: Option<&str>) {
        self.reply(protocol::error_frame(code, message, req_id));
    }

    /// A plain `fn` returning an `async move` block, not an `async fn`: an `async fn` copies
    /// its `self` argument into a local, so its future would hold the `Session` twice.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, mut inbound: handoff::Receiver<Incoming>) -> impl Future<Output = ()> + Send {
        async move {
            // However the session ends (or its task is dropped), no command is queued after it.
            let _control = CloseControl(self.attached.handle.clone());
            // A new connection takes over whatever its member's earlier connections had claimed.
            Box::pin(self.drain(true)).await;
            let mut ping = tokio::time::interval(self.node.config.ping_interval);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            let pong_timeout = self.node.config.pong_timeout.as_millis() as i64;
            let after = loop {
                let handle = self.attached.handle.clone();
                let repush_in = self.next_repush_in();
                tokio::select! {
                    biased;
                    _ = self.kill.cancelled() => break AfterClose::Grace,
                    _ = self.out.overflow() => break AfterClose::Grace,
                    ctl = handle.control.recv() => match ctl {
                        Control::Close { code, reason, after } => {
                            self.out.close(code, &reason);
                            break after;
                        }
                        Control::HookStatus(status) => Box::pin(self.apply_hook_status(status)).await,
                        Control::Resync { owners } => {
                            if let Some(after) = Box::pin(self.resync(owners)).await {
                                break after;
                            }
                        }
                    },
                    msg = inbound.recv() => match msg {
                        None => break AfterClose::Grace,
                        Some(msg) => {
                            if let Some(after) = Box::pin(self.handle(msg)).await {
                                break after;
                            }
                        }
                    },
                    // After the frames already read: a client_ack sent just before the client's
                    // close must still count.
                    _ = self.closing.cancelled() => break AfterClose::Grace,
                    _ = handle.direct.ready.notified() => self.push_direct(),
                    // Boxed: the claim's future is not kept in the idle session's.
                    _ = handle.drain.notified() => Box::pin(self.drain(false)).await,
                    _ = tokio::time::sleep(repush_in.unwrap_or(Duration::ZERO)), if repush_in.is_some() => Box::pin(self.repush()).await,
                    _ = ping.tick() => {
                        let last = self.last_pong.load(Ordering::Relaxed);
                        if now_ms() - last > pong_timeout {
                            debug!("no pong within the timeout: terminating");
                            self.kill.cancel();
                            break AfterClose::Grace;
                        }
                        self.out.control(OutFrame::Ping);
                        Box::pin(self.update_presence(crate::cluster::presence::PresencePatch::LastPong(last))).await;
                    }
                }
            };
            Box::pin(self.detach(after)).await;
        }
    }
}

/// Closes the session's [`ControlQueue`] when the session task stops reading it.
struct CloseControl(Arc<SessionHandle>);

impl Drop for CloseControl {
    fn drop(&mut self) {
        self.0.control.close();
    }
}

impl Conn {
    /// Runs the handshake phase; `Some` once the connection is attached to a presence.
    async fn handshake(
        &self,
        inbound: &mut handoff::Receiver<Incoming>,
        ctl_tx: ControlQueue,
    ) -> Option<Attached> {
        let deadline = tokio::time::sleep(self.node.config.hello_timeout);
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                _ = &mut deadline => {
                    self.node.metrics.reject_connection("hello_timeout");
                    self.reply_error("hello_timeout", "no hello within the handshake timeout", None);
                    let (code, reason) = codes::Close::handshake("hello_timeout");
                    self.out.close(code, reason);
                    return None;
                }
                _ = self.closing.cancelled() => return None,
                _ = self.kill.cancelled() => return None,
                msg = inbound.recv() => msg,
            };
            let text = match msg {
                None => return None,
                Some(Incoming::TooLarge) => {
                    self.out
                        .close(codes::FRAME_TOO_LARGE.code, codes::FRAME_TOO_LARGE.reason);
                    return None;
                }
                Some(Incoming::Binary) => {
                    self.reply_error(
                        "malformed",
                        "binary frames are not part of the protocol",
                        None,
                    );
                    continue;
                }
                Some(Incoming::Text(t)) => t,
            };
            let inbound = match Inbound::decode(&text) {
                Ok(i) => i,
                Err(e) => {
                    self.reply_error("malformed", &e.message, e.req_id.as_deref());
                    continue;
                }
            };
            let req_id = inbound.req_id.as_deref();
            // One of `HANDSHAKE_CONCURRENCY` slots for the checks and the attach, or
            // `overloaded` with a `retryAfterMs` (`auth::Admission`).
            let _slot = match &inbound.message {
                ClientMessage::Hello(_) | ClientMessage::SessionHello(_) => {
                    match self.node.admission.admit().await {
                        Ok(slot) => Some(slot),
                        Err(e) => {
                            self.refuse(&e, req_id);
                            return None;
                        }
                    }
                }
                _ => None,
            };
            let now = now_ms();
            let verified = match &inbound.message {
                ClientMessage::Hello(h) => auth::verify_hello(&self.node, h, now).await,
                ClientMessage::SessionHello(h) => {
                    auth::verify_session_hello(&self.node, h, now).await
                }
                _ => {
                    self.reply_error("no_hello", "send hello or session_hello first", req_id);
                    continue;
                }
            };
            return match verified {
                Ok(v) => self.attach(v, req_id, ctl_tx).await,
                Err(e) => {
                    self.refuse(&e, req_id);
                    None
                }
            };
        }
    }

    fn refuse(&self, e: &HandshakeError, req_id: Option<&str>) {
        self.node.metrics.reject_connection(e.code);
        self.reply(e.frame(req_id));
        let (code, reason) = e.close();
        self.out.close(code, reason);
    }

    async fn attach(
        &self,
        v: Verified,
        req_id: Option<&str>,
        ctl_tx: ControlQueue,
    ) -> Option<Attached> {
        match events::attach(self, v, req_id, ctl_tx).await {
            Ok(a) => Some(a),
            Err(e) => {
                self.refuse(&e, req_id);
                None
            }
        }
    }
}

impl Session {
    /// Milliseconds until the earliest un-acked push's lease ends.
    fn next_repush_in(&self) -> Option<Duration> {
        let earliest = self.attached.unacked.values().map(|p| p.until).min()?;
        // A small margin so the store sees the lease as ended when the timer fires.
        Some(Duration::from_millis(
            (earliest - now_ms()).max(0) as u64 + 20,
        ))
    }

    async fn repush(&mut self) {
        self.drain(false).await;
        let now = now_ms();
        self.attached.unacked.retain(|_, p| p.until > now);
    }

    async fn update_presence(&self, patch: crate::cluster::presence::PresencePatch) {
        let a = &self.attached;
        if let Err(e) = self
            .node
            .presence
            .update(
                &a.principal.mesh.id,
                &a.record.presence_id,
                &self.conn_id,
                patch,
            )
            .await
        {
            tracing::warn!(error = %e, "presence update failed");
        }
    }
}

impl Session {
    /// Ends the session's presence (into grace, or for good).
    async fn detach(mut self, after: AfterClose) {
        self.detached = true;
        let a = &self.attached;
        events::detach(
            &self.node,
            &self.conn_id,
            &a.principal.mesh.id,
            &a.record.presence_id,
            after,
        )
        .await;
    }
}

#[cfg(test)]
mod size_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::bus::MemoryBus;
    use crate::cluster::presence::MemoryPresence;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::store::memory::MemoryStore;

    /// The connection's future is what an idle socket keeps for its life (one tokio task
    /// cell): its setup (the socket, the reader, the assembler) must not be part of it, nor
    /// the handshake's or the session loop's futures (each in an allocation of its own).
    /// Before, it was 11.6 KB in a release build, the moved-from locals and the handshake
    /// future included.
    #[tokio::test]
    async fn a_connection_future_holds_only_its_handles() {
        let config = Config::from_source(&BTreeMap::<String, String>::new()).expect("defaults");
        let (sink, _events) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new(Node::new(
            config,
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryPresence::new()),
            Arc::new(MemoryBus::new(sink)),
            Metrics::new(),
        ));
        let (server, _client) = tokio::io::duplex(1024);
        let ws = WebSocket::after_handshake(server, fastwebsockets::Role::Server);
        let f = serve(node.clone(), ws);
        let size = std::mem::size_of_val(&f);
        drop(f);
        node.kill.cancel();
        assert!(size <= 1024, "the connection's future is {size} bytes");
    }
}
