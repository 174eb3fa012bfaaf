//! Handlers of the frames a handshaked connection sends (spec §4), one at a time.

use serde_json::{Map, Value};
use tracing::warn;

use super::{Incoming, Session};
use crate::cluster::bus::AfterClose;
use crate::ids::{self, now_ms};
use crate::protocol::frames::{Peer, PeersList, tag};
use crate::protocol::{self, Ack, ClientMessage, ErrorFrame, Group, Inbound, Push, Status, codes};
use crate::service::queue::{AckError, AckRequest, CLAIM_BATCH, DrainRequest, QueueError};
use crate::service::{self, PresenceChange, PresenceError, SendError};
use crate::store::MessageRef;

impl Session {
    /// Handles one frame; `Some` ends the session with that presence outcome.
    pub(super) async fn handle(&mut self, msg: Incoming) -> Option<AfterClose> {
        let text = match msg {
            Incoming::TooLarge => {
                self.out
                    .close(codes::FRAME_TOO_LARGE.code, codes::FRAME_TOO_LARGE.reason);
                return Some(AfterClose::Grace);
            }
            Incoming::Binary => {
                self.reply_error(
                    "malformed",
                    "binary frames are not part of the protocol",
                    None,
                );
                return None;
            }
            Incoming::Text(t) => t,
        };
        let Inbound { req_id, message } = match Inbound::decode(&text) {
            Ok(i) => i,
            Err(e) => {
                self.reply_error("malformed", &e.message, e.req_id.as_deref());
                return None;
            }
        };
        let req_id = req_id.as_deref();
        match message {
            ClientMessage::Hello(_) | ClientMessage::SessionHello(_) => {
                self.reply_error(
                    "invalid",
                    "this connection has already completed its handshake",
                    req_id,
                );
            }
            ClientMessage::Send(send) => {
                // A topic post carries fields beyond the core `send` (extensions §9).
                let topic = send
                    .target_spec
                    .starts_with('#')
                    .then(|| super::ext::topic_send_fields(&text));
                if let Some(after) = self.send(*send, topic, req_id).await {
                    return Some(after);
                }
            }
            ClientMessage::ClientAck(a) => {
                let reference = match (&a.broker_message_id, &a.client_message_id) {
                    (Some(id), _) => MessageRef::Broker(id),
                    (None, Some(id)) => MessageRef::Client(id),
                    (None, None) => return None,
                };
                self.client_ack(reference).await;
            }
            ClientMessage::ListPeers => self.list_peers(req_id).await,
            ClientMessage::SetStatus(status) => self.set_status(status).await,
            ClientMessage::SetSummary(summary) => self.set_summary(summary, req_id).await,
            ClientMessage::SetVisible(visible) => {
                self.set_visible(visible).await;
                self.reply_empty_ack(req_id);
            }
            ClientMessage::SetProfile(profile) => self.set_profile(profile, req_id).await,
            ClientMessage::SetStats(stats) => self.set_stats(stats, req_id).await,
            ClientMessage::JoinGroup(group) => self.join_group(group, req_id).await,
            ClientMessage::LeaveGroup(name) => {
                let _ = self
                    .change_presence(PresenceChange::LeaveGroup(name), req_id)
                    .await;
            }
            ClientMessage::Disconnect(sel) => self.disconnect_or_kick(false, &sel, req_id).await,
            ClientMessage::Kick(sel) => self.disconnect_or_kick(true, &sel, req_id).await,
            ClientMessage::Ban(b) => self.ban(&b.target, b.reason.as_deref(), req_id).await,
            ClientMessage::Unban(b) => self.unban(&b.target, req_id).await,
            ClientMessage::ListBans => self.list_bans(req_id).await,
            ClientMessage::Unknown(kind) => self.extension(&kind, &text, req_id).await,
        }
        None
    }

    fn reply_empty_ack(&self, req_id: Option<&str>) {
        self.reply(protocol::encode(&Ack::empty(req_id)));
    }

    fn reply_ack(&self, id: &str, message_id: &str, error: Option<&str>, req_id: Option<&str>) {
        let ack = match error {
            None => Ack::queued(id, message_id, req_id),
            Some(error) => Ack::refused(id, error, req_id),
        };
        self.reply(protocol::encode(&ack));
    }

    /// One `send`: the service routes it, this encodes the `ack` (as soon as the message
    /// is accepted, before the doorbell). `Some` ends the session (the sender's member row
    /// is revoked).
    async fn send(
        &mut self,
        send: protocol::Send,
        topic: Option<protocol::ext::topics::TopicSendFields>,
        req_id: Option<&str>,
    ) -> Option<AfterClose> {
        let ack_id = send
            .id
            .clone()
            .or_else(|| send.client_message_id.clone())
            .unwrap_or_default();
        let accepted =
            |o: &service::SendOutcome| self.reply_ack(&ack_id, &o.message_id, None, req_id);
        let result = match topic {
            None => {
                service::send_with(&self.svc, &self.attached.principal, send.into(), accepted).await
            }
            Some(fields) => service::send::send_to_topic(
                &self.svc,
                &self.attached.principal,
                send.into(),
                fields,
                accepted,
            )
            .await
            .map(|(outcome, _)| outcome),
        };
        match result {
            Ok(_) => None,
            Err(e @ SendError::Revoked { .. }) => {
                let frame = ErrorFrame {
                    id: Some(ack_id),
                    ..ErrorFrame::new(e.error_code().unwrap_or("revoked"), &e.message(), req_id)
                };
                self.reply(protocol::encode(&frame));
                self.out.close(codes::BANNED.code, codes::BANNED.reason);
                Some(AfterClose::End)
            }
            Err(e) => {
                self.reply_ack(&ack_id, "", Some(&e.message()), req_id);
                None
            }
        }
    }

    /// Claims (through `service::queue::drain`) and pushes this connection's queued direct
    /// messages, in queue order, recording each in `unacked` until its lease ends.
    /// `steal` takes messages still leased to the member's earlier connections.
    ///
    /// The drain is a span of its own (`drain`, with the claim's statement), and each
    /// pushed message a `push` span in its send's trace (the context its row carries);
    /// both link to the connection span instead of being its children.
    pub(super) async fn drain(&mut self, steal: bool) {
        let conn = crate::telemetry::span_context(&tracing::Span::current());
        let span = if crate::telemetry::on() {
            let span = tracing::info_span!(
                "drain",
                steal,
                pushed = tracing::field::Empty,
                mesh.id = self.attached.principal.mesh.id.as_str(),
            );
            crate::telemetry::link(&span, conn.as_ref());
            crate::telemetry::root(&span);
            span
        } else {
            // Without export, the same span as before for the logs.
            tracing::info_span!("push", steal, pushed = tracing::field::Empty)
        };
        tracing::Instrument::instrument(self.drain_inner(steal, conn), span).await;
    }

    async fn drain_inner(&mut self, steal: bool, conn: Option<opentelemetry::trace::SpanContext>) {
        let node = self.node.clone();
        let a = &mut self.attached;
        let req = DrainRequest {
            steal,
            all_priorities: a.handle.status() == Status::Idle,
            limit: CLAIM_BATCH,
        };
        let drained = match service::queue::drain(&self.svc, &a.principal, req).await {
            Ok(d) => d,
            Err(e @ QueueError::Unavailable { lease_until, .. }) => {
                // The claim may have committed with its reply lost: its rows are then
                // hidden until `lease_until`. Drain again soon (a claim that did not
                // happen) and when that lease ends (one that did). The timers are this
                // connection's: the service only reports the lease.
                warn!(error = %e, "queue drain failed; re-drain scheduled");
                let soon = now_ms() + CLAIM_RETRY_MS + now_ms().rem_euclid(CLAIM_RETRY_MS);
                let pending = |until| super::Pushed {
                    until,
                    client_id: None,
                    trace: None,
                };
                a.unacked
                    .insert(format!("{}:retry", super::REDRAIN), pending(soon));
                a.unacked.insert(
                    format!("{}:lease:{}", super::REDRAIN, lease_until),
                    pending(lease_until),
                );
                return;
            }
        };
        let mut pushed = 0usize;
        let drain = crate::telemetry::span_context(&tracing::Span::current());
        for m in drained.messages {
            if let Some(p) = a.unacked.get_mut(&m.id)
                && p.until > now_ms()
            {
                // Pushed already within its lease (a doorbell carried it before this claim
                // took it): not again, but the claim's lease is now the one to wait for.
                p.until = p.until.max(drained.lease_until);
                continue;
            }
            let frame = protocol::encode(&Push::from_queued(&m));
            let span = push_span(
                m.trace.as_deref(),
                &m.mesh_id,
                &m.id,
                frame.len(),
                conn.as_ref(),
                PushPath::Claim {
                    steal,
                    drain: drain.as_ref(),
                },
            );
            let _entered = span.enter();
            if !self.out.text(frame) {
                // The socket is closing; the lease runs out and another connection retakes it.
                break;
            }
            pushed_one(
                &node,
                &mut a.unacked,
                "claim",
                m.id,
                m.created_at,
                super::Pushed {
                    until: drained.lease_until,
                    client_id: m.client_message_id,
                    trace: m.trace,
                },
            );
            pushed += 1;
        }
        tracing::Span::current().record("pushed", pushed);
        if drained.more {
            a.handle.drain.notify_one();
        }
    }

    /// Pushes the committed direct messages doorbells handed to this connection
    /// (`MeshEvent::Direct`, through its mailbox), without a claim, with the rules of a
    /// drain: what the status does not admit (only `now` while busy) stays queued for the
    /// drain of the next `idle`; what this connection pushed already within its lease is
    /// not pushed again. Each is recorded in `unacked` (re-pushed by claim after its lease,
    /// unless confirmed), and the leases are recorded off this task, in the store's next
    /// batch: if another connection claimed one first, it pushes it too (a duplicate,
    /// never a loss).
    pub(super) fn push_direct(&mut self) {
        let node = self.node.clone();
        // Each push links to the connection span, as a drain's pushes do.
        let conn = crate::telemetry::span_context(&tracing::Span::current());
        let a = &mut self.attached;
        let pushes = a.handle.direct.take();
        if pushes.is_empty() {
            return;
        }
        let status = a.handle.status();
        let now = now_ms();
        let lease_until = now + node.config.claim_lease.as_millis() as i64;
        let mut leased = Vec::with_capacity(pushes.len());
        for d in pushes {
            let addressed = d
                .session_key
                .as_deref()
                .is_none_or(|k| a.principal.session_key.as_deref() == Some(k));
            let pushed = a.unacked.get(&d.id).is_some_and(|p| p.until > now);
            if !addressed || pushed || !status.admits(d.priority) {
                continue;
            }
            let span = push_span(
                d.trace.as_deref(),
                &a.principal.mesh.id,
                &d.id,
                d.frame.len(),
                conn.as_ref(),
                PushPath::Doorbell,
            );
            let _entered = span.enter();
            if !self.out.text(d.frame) {
                // The socket is closing: the message stays queued for the next connection.
                break;
            }
            pushed_one(
                &node,
                &mut a.unacked,
                "doorbell",
                d.id.clone(),
                d.created_at,
                super::Pushed {
                    until: lease_until,
                    client_id: d.client_id,
                    trace: d.trace,
                },
            );
            leased.push(d.id);
        }
        if leased.is_empty() {
            return;
        }
        let svc = self.svc.clone();
        let (mesh_id, member_id) = (a.principal.mesh.id.clone(), a.principal.member.id.clone());
        // Most pushes are confirmed within milliseconds: their `client_ack` deletes the row
        // before the lease is due, and the batched UPDATE below then writes nothing.
        let delay = node.config.direct_lease_delay;
        let kill = node.kill.clone();
        node.tracker.clone().spawn(async move {
            tokio::select! {
                _ = kill.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match service::queue::record_pushed(&svc, &mesh_id, &member_id, &leased, now, lease_until)
                .await
            {
                Ok(lost) => {
                    svc.metrics().direct_leases_lost.inc_by(lost as u64);
                }
                Err(e) => {
                    svc.metrics().direct_leases_lost.inc_by(leased.len() as u64);
                    warn!(error = %e, "lease of pushed messages not recorded; claimed again by any connection");
                }
            }
        });
    }

    /// One `client_ack`: the service confirms it; by client id, only among the messages
    /// pushed to this connection (its `unacked` entries), which it then stops re-pushing.
    async fn client_ack(&mut self, reference: MessageRef<'_>) {
        let a = &mut self.attached;
        let req = match reference {
            MessageRef::Broker(id) => AckRequest::BrokerId(id),
            MessageRef::Client(client_id) => AckRequest::ClientId {
                client_id,
                pushed: a
                    .unacked
                    .iter()
                    .map(|(id, p)| (id.as_str(), p.client_id.as_deref()))
                    .collect(),
            },
        };
        let named = req.named();
        // In the trace of the (first) message it confirms, linked to the others and to the
        // connection span.
        let span = if crate::telemetry::on() {
            let span = tracing::info_span!(
                parent: None,
                "client_ack",
                otel.kind = "server",
                mesh.id = a.principal.mesh.id.as_str(),
                messaging.system = "claudemesh",
                messaging.operation.type = "settle",
                messaging.operation.name = "client_ack",
                messaging.batch.message_count = named.len(),
                messaging.message.id = named.first().map(String::as_str).unwrap_or(""),
            );
            let mut traces = named
                .iter()
                .filter_map(|id| a.unacked.get(id).and_then(|p| p.trace.as_deref()));
            crate::telemetry::follow_or_root(&span, traces.next());
            for other in traces {
                crate::telemetry::link_traceparent(&span, Some(other));
            }
            crate::telemetry::link(
                &span,
                crate::telemetry::span_context(&tracing::Span::current()).as_ref(),
            );
            span
        } else {
            tracing::Span::none()
        };
        let result = tracing::Instrument::instrument(
            service::queue::client_ack(&self.svc, &a.principal, req),
            span,
        )
        .await;
        for id in &named {
            a.unacked.remove(id);
        }
        if let Err(AckError::Unavailable {
            unrecorded,
            message,
            ..
        }) = &result
        {
            for _ in unrecorded {
                warn!(error = %message, "client_ack not recorded; the message will be pushed again");
            }
        }
    }

    async fn list_peers(&self, req_id: Option<&str>) {
        let records = match service::list_peers(&self.svc, &self.attached.principal).await {
            Ok(r) => r,
            Err(e) => return self.reply_error(e.code(), &e.message(), req_id),
        };
        let peers = records
            .iter()
            .map(|r| Peer {
                pubkey: r.routing_key().to_string(),
                member_pubkey: r.member_pubkey.clone(),
                display_name: r.display_name.clone(),
                status: r.status,
                summary: r.summary.clone(),
                groups: r.groups.clone(),
                session_id: r.session_id.clone(),
                connected_at: ids::iso8601_ms(r.connected_at),
                cwd: r.cwd.clone(),
                peer_role: r.peer_role.as_str().to_string(),
                visible: r.visible,
                hostname: r.hostname.clone(),
                peer_type: r.peer_type.clone(),
                channel: r.channel.clone(),
                model: r.model.clone(),
                stats: r.stats.clone(),
                profile: (!r.profile.is_empty()).then(|| r.profile.clone()),
            })
            .collect();
        let frame = protocol::encode(&PeersList {
            kind: tag::PeersList,
            peers,
            req_id: req_id.map(str::to_string),
        });
        // A reply the requester's queue can never take would close it (slow consumer):
        // refuse it instead.
        let bound = self.node.config.outbound_queue_bytes;
        if frame.len() > bound {
            self.node.metrics.reply_too_large("peers_list");
            return self.reply_error(
                "reply_too_large",
                &format!(
                    "the peer list is {} bytes, more than this connection's outbound bound of {bound}",
                    frame.len()
                ),
                req_id,
            );
        }
        // A reply that fits the bound but not the space left in the requester's queue (it
        // is not reading fast enough) is refused too; pushes and events keep the close.
        let len = frame.len();
        if self.out.try_text(frame).is_err() && !self.out.is_closed() && !self.out.overflowed() {
            self.node.metrics.reply_too_large("peers_list");
            self.reply_error(
                "reply_too_large",
                &format!(
                    "the peer list is {len} bytes, more than the space left in this connection's outbound queue (bound {bound})"
                ),
                req_id,
            );
        }
    }

    pub(super) async fn set_status(&mut self, status: Status) {
        let a = &mut self.attached;
        {
            let mut current = a.handle.status.lock().unwrap_or_else(|p| p.into_inner());
            if *current == status {
                return;
            }
            *current = status;
            if status == Status::Idle {
                // Flushed under the status lock: a broadcast dispatched meanwhile waits for
                // the lock, so it cannot overtake the older held ones.
                for frame in super::events::take_held(&a.handle) {
                    if self.out.text(frame) {
                        self.node.metrics.pushes_total.inc();
                    }
                }
            }
        }
        let _ = self
            .change_presence(PresenceChange::Status(status), None)
            .await;
        if status == Status::Idle {
            self.drain(false).await;
        }
    }

    /// A hook's status: a low-trust signal that can never clear `dnd`.
    pub(super) async fn apply_hook_status(&mut self, status: Status) {
        if self.attached.handle.status() == Status::Dnd && status != Status::Dnd {
            return;
        }
        self.set_status(status).await;
    }

    async fn set_visible(&mut self, visible: bool) {
        let _ = self
            .change_presence(PresenceChange::Visible(visible), None)
            .await;
    }
}

/// After a failed claim, the next drain comes this long (plus up to as much jitter, so
/// the sockets of a replica do not retry in step) later.
const CLAIM_RETRY_MS: i64 = 1_000;

/// The group and free-form presence fields, each checked against its bound by the service
/// (`service::presence`); a refusal is answered with an `error`.
impl Session {
    /// Applies a change to this connection's presence (its own copy and the shared one);
    /// a refusal is answered with an `error` (`req_id` is echoed) and is `Err`.
    async fn change_presence(
        &mut self,
        change: PresenceChange,
        req_id: Option<&str>,
    ) -> Result<(), PresenceError> {
        let a = &mut self.attached;
        let result =
            service::presence::update(&self.svc, &a.principal, &mut a.record, change).await;
        if let Err(r) = &result {
            self.reply_error(r.code, &r.message, req_id);
        }
        result
    }

    async fn set_summary(&mut self, summary: String, req_id: Option<&str>) {
        let _ = self
            .change_presence(PresenceChange::Summary(summary), req_id)
            .await;
    }

    async fn set_profile(&mut self, profile: Map<String, Value>, req_id: Option<&str>) {
        if self
            .change_presence(PresenceChange::Profile(profile), req_id)
            .await
            .is_ok()
        {
            self.reply_empty_ack(req_id);
        }
    }

    async fn set_stats(&mut self, stats: Value, req_id: Option<&str>) {
        let _ = self
            .change_presence(PresenceChange::Stats(stats), req_id)
            .await;
    }

    async fn join_group(&mut self, group: Group, req_id: Option<&str>) {
        let _ = self
            .change_presence(PresenceChange::JoinGroup(group), req_id)
            .await;
    }
}

/// How a direct message reached [`push_span`]: claimed by a drain (which the span links
/// to), or carried by its doorbell.
enum PushPath<'a> {
    Claim {
        steal: bool,
        drain: Option<&'a opentelemetry::trace::SpanContext>,
    },
    Doorbell,
}

/// The `push` span of one direct message, in its send's trace (`trace`, the context its
/// row or doorbell carries) and linked to the connection span; none without a trace or
/// without export.
fn push_span(
    trace: Option<&str>,
    mesh_id: &str,
    message_id: &str,
    size: usize,
    conn: Option<&opentelemetry::trace::SpanContext>,
    path: PushPath<'_>,
) -> tracing::Span {
    let Some(tp) = trace.filter(|_| crate::telemetry::on()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "push",
        otel.kind = "producer",
        mesh.id = mesh_id,
        messaging.system = "claudemesh",
        messaging.operation.type = "send",
        messaging.operation.name = "push",
        messaging.destination.name = "direct",
        messaging.message.id = message_id,
        messaging.message.body.size = size,
        push.steal = tracing::field::Empty,
        push.path = tracing::field::Empty,
    );
    crate::telemetry::follow(&span, Some(tp));
    crate::telemetry::link(&span, conn);
    match path {
        PushPath::Claim { steal, drain } => {
            span.record("push.steal", steal);
            crate::telemetry::link(&span, drain);
        }
        PushPath::Doorbell => {
            span.record("push.path", "doorbell");
        }
    }
    span
}

/// The bookkeeping of one direct message just queued on the socket: the push counters,
/// its delivery latency, and its `unacked` entry (for `client_ack` and the re-push).
fn pushed_one(
    node: &crate::node::Node,
    unacked: &mut std::collections::HashMap<String, super::Pushed>,
    path: &'static str,
    id: String,
    created_at: i64,
    pushed: super::Pushed,
) {
    node.metrics.pushes_total.inc();
    node.metrics.direct_push(path);
    node.metrics
        .delivery_seconds
        .observe((now_ms() - created_at).max(0) as f64 / 1000.0);
    unacked.insert(id, pushed);
}
