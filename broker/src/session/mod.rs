//! One WebSocket connection: the reader task, the writer task and the session task that
//! handles the connection's frames strictly in order.
//!
//! ```text
//! socket ──▶ reader task ──(bounded channel, in order)──▶ session task ──▶ Outbound ──▶ writer task ──▶ socket
//!                                   hub / bus events ─────────▲  (Control, drain doorbell)
//! ```
//!
//! The reader never runs handlers, so a slow handler cannot interleave with the next
//! frame; the writer is the only owner of the write half, so pongs, pushes and close
//! frames never race each other.

mod events;
mod handlers;
mod moderation;
pub mod outbound;

pub(crate) use events::end_presence;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, WebSocket, WebSocketError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::auth::{self, HandshakeError, Verified};
use crate::cluster::bus::AfterClose;
use crate::hub::{Control, SessionHandle};
use crate::ids::now_ms;
use crate::node::Node;
use crate::protocol::{self, ClientMessage, Inbound};
use crate::store::Mesh;
use outbound::{OutFrame, Outbound};

/// How long a closing socket gets to deliver its close frame before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Direct messages claimed per store round trip.
const CLAIM_BATCH: usize = 512;

/// A frame handed from the reader task to the session task.
#[derive(Debug)]
enum Incoming {
    Text(Bytes),
    Binary,
    TooLarge,
}

/// Serves one upgraded WebSocket until it closes.
pub async fn serve<S>(node: Arc<Node>, mut ws: WebSocket<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = node.config.max_message_bytes;
    // fastwebsockets refuses frames of `len >= limit`; the protocol allows exactly `max`.
    ws.set_max_message_size(max + 1);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let (rd, wr) = ws.split(tokio::io::split);
    let rd = FragmentCollectorRead::new(rd);

    let conn_id = node.next_conn_id();
    let (out, out_rx) = Outbound::new(
        node.config.outbound_queue_bytes,
        node.metrics.outbound_queue_bytes.clone(),
        node.metrics.slow_consumer_closes.clone(),
    );
    let kill = node.kill.child_token();
    let closing = CancellationToken::new();
    let last_pong = Arc::new(AtomicI64::new(now_ms()));
    let (in_tx, in_rx) = mpsc::channel(16);
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
        let (out, kill, closing, last_pong) = (
            out.clone(),
            kill.clone(),
            closing.clone(),
            last_pong.clone(),
        );
        node.tracker
            .spawn(read_loop(rd, in_tx, out, kill, closing, last_pong, max));
    }

    let session = Session {
        node: node.clone(),
        conn_id,
        out,
        kill: kill.clone(),
        closing: closing.clone(),
        last_pong,
        opened: Instant::now(),
        attached: None,
    };
    session.run(in_rx).instrument(span).await;
    if tokio::time::timeout(CLOSE_LINGER, closing.cancelled())
        .await
        .is_err()
    {
        kill.cancel();
    }
    node.metrics.connections_active.dec();
}

async fn read_loop<S: AsyncRead + Unpin>(
    mut rd: FragmentCollectorRead<S>,
    tx: mpsc::Sender<Incoming>,
    out: Outbound,
    kill: CancellationToken,
    closing: CancellationToken,
    last_pong: Arc<AtomicI64>,
    max: usize,
) {
    // After our side closed, keep reading (and discarding) briefly so the client's close
    // reply is consumed and the kernel does not reset the connection under our close frame.
    let linger = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSE_LINGER).await;
    };
    tokio::pin!(linger);
    let mut obligated = |frame: Frame<'_>| {
        let item = match frame.opcode {
            OpCode::Close => OutFrame::CloseEcho(frame.payload.to_vec()),
            _ => OutFrame::Pong(frame.payload.to_vec()),
        };
        out.control(item);
        std::future::ready(Ok::<(), std::io::Error>(()))
    };
    loop {
        let frame = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            _ = &mut linger => break,
            frame = rd.read_frame(&mut obligated) => frame,
        };
        if frame.is_ok() {
            // Any frame proves the client alive, not only a pong: a reader that waited on a
            // busy session must not count the pongs queued behind that wait as missing.
            last_pong.store(now_ms(), Ordering::Relaxed);
        }
        let incoming = match frame {
            Ok(f) => match f.opcode {
                OpCode::Text if f.payload.len() > max => Incoming::TooLarge,
                OpCode::Text => Incoming::Text(Bytes::copy_from_slice(&f.payload)),
                OpCode::Binary => Incoming::Binary,
                OpCode::Pong => continue,
                OpCode::Close => break,
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => Incoming::TooLarge,
            Err(e) => {
                debug!(error = %e, "socket read ended");
                break;
            }
        };
        let too_large = matches!(incoming, Incoming::TooLarge);
        if closing.is_cancelled() || tx.send(incoming).await.is_err() || too_large {
            // After an oversized frame the stream position is unknown: read no further.
            if too_large {
                linger.as_mut().await;
            }
            break;
        }
    }
}

/// What a handshaked connection knows about itself.
struct Attached {
    handle: Arc<SessionHandle>,
    mesh: Mesh,
    member: crate::store::Member,
    /// This connection's view of its presence record (the shared one is in `Presence`).
    record: crate::cluster::presence::PresenceRecord,
    /// Pushed direct messages not yet confirmed by `client_ack`: id → lease end (ms epoch).
    unacked: HashMap<String, i64>,
}

struct Session {
    node: Arc<Node>,
    conn_id: String,
    out: Outbound,
    /// Drops the socket at once (pong timeout, shutdown deadline).
    kill: CancellationToken,
    /// Cancelled by the writer when it has finished: the socket is closed or broken.
    closing: CancellationToken,
    last_pong: Arc<AtomicI64>,
    opened: Instant,
    attached: Option<Attached>,
}

impl Session {
    fn reply(&self, frame: Bytes) {
        self.out.text(frame);
    }

    fn reply_error(&self, code: &str, message: &str, req_id: Option<&str>) {
        self.reply(protocol::error_frame(code, message, req_id));
    }

    async fn run(mut self, mut inbound: mpsc::Receiver<Incoming>) {
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
        let handshake = self.handshake(&mut inbound, ctl_tx);
        if !tracing::Instrument::instrument(handshake, tracing::info_span!("handshake")).await {
            return;
        }
        let mut ping = tokio::time::interval(self.node.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let pong_timeout = self.node.config.pong_timeout.as_millis() as i64;
        let after = loop {
            let handle = match &self.attached {
                Some(a) => a.handle.clone(),
                None => return,
            };
            let repush_in = self.next_repush_in();
            tokio::select! {
                biased;
                _ = self.kill.cancelled() => break AfterClose::Grace,
                _ = self.out.overflow() => break AfterClose::Grace,
                ctl = ctl_rx.recv() => match ctl {
                    Some(Control::Close { code, reason, after }) => {
                        self.out.close(code, &reason);
                        break after;
                    }
                    Some(Control::HookStatus(status)) => self.apply_hook_status(status).await,
                    Some(Control::Resync { owners }) => {
                        if let Some(after) = self.resync(owners).await {
                            break after;
                        }
                    }
                    None => {}
                },
                msg = inbound.recv() => match msg {
                    None => break AfterClose::Grace,
                    Some(msg) => {
                        if let Some(after) = self.handle(msg).await {
                            break after;
                        }
                    }
                },
                // After the frames already read: a client_ack sent just before the client's
                // close must still count.
                _ = self.closing.cancelled() => break AfterClose::Grace,
                _ = handle.drain.notified() => self.drain(false).await,
                _ = tokio::time::sleep(repush_in.unwrap_or(Duration::ZERO)), if repush_in.is_some() => self.repush().await,
                _ = ping.tick() => {
                    let last = self.last_pong.load(Ordering::Relaxed);
                    if now_ms() - last > pong_timeout {
                        debug!("no pong within the timeout: terminating");
                        self.kill.cancel();
                        break AfterClose::Grace;
                    }
                    self.out.control(OutFrame::Ping);
                    self.update_presence(crate::cluster::presence::PresencePatch::LastPong(last)).await;
                }
            }
        };
        self.detach(after).await;
    }

    /// Runs the handshake phase; `true` once the connection is attached to a presence.
    async fn handshake(
        &mut self,
        inbound: &mut mpsc::Receiver<Incoming>,
        ctl_tx: mpsc::UnboundedSender<Control>,
    ) -> bool {
        let deadline = tokio::time::sleep(self.node.config.hello_timeout);
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                _ = &mut deadline => {
                    self.node.metrics.reject_connection("hello_timeout");
                    self.reply_error("hello_timeout", "no hello within the handshake timeout", None);
                    self.out.close(1008, "hello_timeout");
                    return false;
                }
                _ = self.closing.cancelled() => return false,
                _ = self.kill.cancelled() => return false,
                msg = inbound.recv() => msg,
            };
            let text = match msg {
                None => return false,
                Some(Incoming::TooLarge) => {
                    self.out.close(1009, "frame too large");
                    return false;
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
                    false
                }
            };
        }
    }

    fn refuse(&self, e: &HandshakeError, req_id: Option<&str>) {
        self.node.metrics.reject_connection(e.code);
        self.reply_error(e.code, &e.message, req_id);
        let (code, reason) = e.close();
        self.out.close(code, reason);
    }

    /// Milliseconds until the earliest un-acked push's lease ends.
    fn next_repush_in(&self) -> Option<Duration> {
        let a = self.attached.as_ref()?;
        let earliest = a.unacked.values().min()?;
        // A small margin so the store sees the lease as ended when the timer fires.
        Some(Duration::from_millis(
            (earliest - now_ms()).max(0) as u64 + 20,
        ))
    }

    async fn repush(&mut self) {
        self.drain(false).await;
        let now = now_ms();
        if let Some(a) = &mut self.attached {
            a.unacked.retain(|_, until| *until > now);
        }
    }

    async fn update_presence(&self, patch: crate::cluster::presence::PresencePatch) {
        let Some(a) = &self.attached else { return };
        if let Err(e) = self
            .node
            .presence
            .update(&a.mesh.id, &a.record.presence_id, &self.conn_id, patch)
            .await
        {
            tracing::warn!(error = %e, "presence update failed");
        }
    }
}

/// Handshake outcome helpers shared with the handlers.
impl Session {
    async fn attach(
        &mut self,
        v: Verified,
        req_id: Option<&str>,
        ctl_tx: mpsc::UnboundedSender<Control>,
    ) -> bool {
        match events::attach(self, v, req_id, ctl_tx).await {
            Ok(()) => true,
            Err(e) => {
                self.refuse(&e, req_id);
                false
            }
        }
    }

    async fn detach(&mut self, after: AfterClose) {
        events::detach(self, after).await;
    }
}
