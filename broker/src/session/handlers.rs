//! Handlers of the frames a handshaked connection sends (spec §4), one at a time.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tracing::warn;

use super::{Incoming, Session};
use crate::cluster::bus::{AfterClose, MeshEvent};
use crate::cluster::presence::PresencePatch;
use crate::config::Config;
use crate::ids::{self, now_ms};
use crate::protocol::target::{self, Target};
use crate::protocol::{self, Ack, ClientMessage, Group, Inbound, Push, Status};
use crate::routing::{self, Sender};
use crate::store::{Claim, Member, MessageRef, QueuedMessage, StoreError};

impl Session {
    /// Handles one frame; `Some` ends the session with that presence outcome.
    pub(super) async fn handle(&mut self, msg: Incoming) -> Option<AfterClose> {
        let text = match msg {
            Incoming::TooLarge => {
                self.out.close(1009, "frame too large");
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
                if let Some(after) = self.send(&send, req_id).await {
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
                let groups = self.with_record(|r| {
                    r.groups.retain(|g: &Group| g.name != name);
                    r.groups.clone()
                });
                self.update_presence(PresencePatch::Groups(groups)).await;
            }
            ClientMessage::Disconnect(sel) => self.disconnect_or_kick(false, &sel, req_id).await,
            ClientMessage::Kick(sel) => self.disconnect_or_kick(true, &sel, req_id).await,
            ClientMessage::Ban(b) => self.ban(&b.target, b.reason.as_deref(), req_id).await,
            ClientMessage::Unban(b) => self.unban(&b.target, req_id).await,
            ClientMessage::ListBans => self.list_bans(req_id).await,
            ClientMessage::Unknown(kind) => {
                self.reply_error(
                    "unknown_message_type",
                    &format!("unknown message type {kind:?}"),
                    req_id,
                );
            }
        }
        None
    }

    /// Applies `f` to this connection's copy of its presence record.
    fn with_record<T>(
        &mut self,
        f: impl FnOnce(&mut crate::cluster::presence::PresenceRecord) -> T,
    ) -> T {
        let a = self
            .attached
            .as_mut()
            .expect("handlers run only on attached sessions");
        f(&mut a.record)
    }

    fn reply_empty_ack(&self, req_id: Option<&str>) {
        let ack = Ack {
            kind: "ack",
            id: req_id.unwrap_or(""),
            message_id: "",
            queued: false,
            error: None,
            req_id,
        };
        self.reply(protocol::encode(&ack));
    }

    fn reply_ack(&self, id: &str, message_id: &str, error: Option<&str>, req_id: Option<&str>) {
        let ack = Ack {
            kind: "ack",
            id,
            message_id,
            queued: error.is_none(),
            error,
            req_id,
        };
        self.reply(protocol::encode(&ack));
    }

    /// One `send`, in a span of its own: each message is the root of its own trace (the
    /// connection's span stays its parent for logs only). `Some` ends the session (the
    /// sender's member row is revoked).
    async fn send(&mut self, send: &protocol::Send, req_id: Option<&str>) -> Option<AfterClose> {
        let span = tracing::info_span!(
            "send",
            target = send.target_spec.get(..8).unwrap_or(&send.target_spec),
            priority = send.priority.as_str(),
            trace_id = tracing::field::Empty,
        );
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
            &span,
            opentelemetry::Context::new(),
        );
        let trace_id = crate::telemetry::trace_id(&span);
        if !trace_id.is_empty() {
            span.record("trace_id", tracing::field::display(&trace_id));
        }
        tracing::Instrument::instrument(self.send_inner(send, req_id), span).await
    }

    async fn send_inner(
        &mut self,
        send: &protocol::Send,
        req_id: Option<&str>,
    ) -> Option<AfterClose> {
        let node = self.node.clone();
        let a = self.attached.as_ref().expect("attached");
        let ack_id = send
            .id
            .as_deref()
            .or(send.client_message_id.as_deref())
            .unwrap_or("");
        let reject = |s: &Session, reason: &'static str, error: &str| {
            s.node.metrics.reject_message(reason);
            s.reply_ack(ack_id, "", Some(error), req_id);
            None
        };

        // The sender's own row, as the send path sees it (the cache expires within
        // seconds and is dropped cluster-wide on a ban): a ban that could not reach this
        // socket (bus down, written behind the broker's back) still stops its sends.
        let members = match node.mesh_members(&a.mesh.id).await {
            Ok(m) => m,
            Err(e) => return reject(self, "store", &e.to_string()),
        };
        if !members
            .iter()
            .any(|m| m.id == a.member.id && m.revoked_at.is_none())
        {
            node.metrics.reject_message("revoked");
            let message = format!(
                "You've been removed from {:?}. Contact the mesh owner to rejoin.",
                a.mesh.name
            );
            let frame = protocol::with_req_id(
                json!({"type": "error", "code": "revoked", "message": message, "id": ack_id}),
                req_id,
            );
            self.reply(protocol::encode(&frame));
            self.out.close(4002, "banned");
            return Some(AfterClose::End);
        }

        let bucket = format!("{}:{}", a.mesh.id, a.member.id);
        match node
            .presence
            .take_send_token(&bucket, node.config.send_burst, node.config.send_per_min)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let per_min = node.config.send_per_min;
                return reject(
                    self,
                    "rate_limit",
                    &format!("rate_limit: more than {per_min} messages per minute, slow down"),
                );
            }
            // The limiter's backend (Redis) is down: fail open rather than stop every
            // sender; the outage is visible in readiness and logs.
            Err(e) => warn!(error = %e, "rate limiter unavailable; send allowed"),
        }
        let size = send.ciphertext.len() + send.nonce.len() + send.target_spec.len();
        if size > node.config.max_message_bytes {
            return reject(self, "too_large", "payload too large");
        }
        let target = match target::classify(&send.target_spec) {
            Ok(t) => t,
            Err(e) => return reject(self, "invalid", &e.to_string()),
        };
        let sender = Sender {
            member_id: &a.member.id,
            member_key: &a.member.pubkey,
            session_key: a.handle.session_key.as_deref(),
        };
        let message_id = ids::random_id(24);
        let now = now_ms();

        match target {
            Target::Direct(key) => {
                // A member key always means that member, whatever sessions announce; only
                // a key that is no member's is looked up among session keys.
                // Presence is read only for session keys, which keeps it off the hot path;
                // without presence (Redis down) member keys still route, durably.
                let recipient = match members.iter().find(|m| m.pubkey == key) {
                    Some(m) => Some(m),
                    None => match node.presence.list(&a.mesh.id).await {
                        Ok(records) => routing::session_target(&records, key)
                            .and_then(|r| members.iter().find(|m| m.id == r.member_id)),
                        Err(e) => return reject(self, "store", &e.to_string()),
                    },
                };
                let recipient = match recipient {
                    Some(m) if m.revoked_at.is_none() => m.clone(),
                    _ => return reject(self, "no_target", "no connected peer for target"),
                };
                if !routing::grants_allow(&recipient, sender.member_key, sender.session_key, "dm") {
                    node.metrics.drop_by_grant("dm");
                    return reject(
                        self,
                        "grant",
                        "blocked by recipient grants (sender lacks dm capability)",
                    );
                }
                let session_target = (key != recipient.pubkey).then(|| key.to_string());
                let queued = QueuedMessage {
                    id: message_id.clone(),
                    mesh_id: a.mesh.id.clone(),
                    sender_member_id: a.member.id.clone(),
                    sender_pubkey: a.record.routing_key().to_string(),
                    sender_member_pubkey: a.member.pubkey.clone(),
                    sender_name: a.record.display_name.clone(),
                    target_member_id: recipient.id.clone(),
                    target_session_key: session_target,
                    priority: send.priority,
                    nonce: send.nonce.clone(),
                    ciphertext: send.ciphertext.clone(),
                    client_message_id: send.client_message_id.clone(),
                    created_at: now,
                };
                let message_id = match node.store.enqueue(queued).await {
                    Ok(id) => id,
                    // Not a refusal: the message may be queued. The error tells the
                    // client to retry with the same client_message_id, which is idempotent.
                    Err(e @ StoreError::OutcomeUnknown(_)) => {
                        return reject(self, "outcome_unknown", &e.to_string());
                    }
                    Err(e) => return reject(self, "store", &e.to_string()),
                };
                self.reply_ack(ack_id, &message_id, None, req_id);
                node.metrics.routed(send.priority);
                tracing::debug!(message_id, "direct message queued");
                let ring = MeshEvent::Doorbell {
                    member_id: recipient.id.clone(),
                };
                if let Err(e) = node.publish(&a.mesh.id, ring).await {
                    // The message is durable; the recipient gets it on its next drain.
                    warn!(error = %e, "doorbell not published");
                }
            }
            Target::Broadcast | Target::Group(_) => {
                let group = match target {
                    Target::Group(g) => Some(g),
                    _ => None,
                };
                let records = match node.presence.list(&a.mesh.id).await {
                    Ok(r) => r,
                    Err(e) => return reject(self, "store", &e.to_string()),
                };
                let by_id: HashMap<&str, &Member> =
                    members.iter().map(|m| (m.id.as_str(), m)).collect();
                let fanout = routing::fanout(&records, &by_id, sender, group);
                for _ in 0..fanout.blocked {
                    node.metrics.drop_by_grant("broadcast");
                }
                let frame = protocol::encode(&Push {
                    kind: "push",
                    message_id: &message_id,
                    mesh_id: &a.mesh.id,
                    sender_pubkey: a.record.routing_key(),
                    sender_member_pubkey: &a.member.pubkey,
                    sender_name: &a.record.display_name,
                    priority: send.priority,
                    nonce: &send.nonce,
                    ciphertext: &send.ciphertext,
                    created_at: ids::iso8601_ms(now),
                    client_message_id: send.client_message_id.as_deref(),
                });
                let event = MeshEvent::Deliver {
                    presence_ids: fanout.presence_ids.into(),
                    priority: Some(send.priority),
                    frame,
                };
                if let Err(e) = node.publish(&a.mesh.id, event).await {
                    return reject(self, "store", &e.to_string());
                }
                self.reply_ack(ack_id, &message_id, None, req_id);
                node.metrics.routed(send.priority);
            }
        }
        node.audit(
            &a.mesh.id,
            "message_sent",
            Some(&a.member.id),
            json!({"targetSpec": send.target_spec, "priority": send.priority.as_str()}),
        );
        None
    }

    /// Claims and pushes this connection's queued direct messages, in queue order.
    /// `steal` takes messages still leased to the member's earlier connections.
    pub(super) async fn drain(&mut self, steal: bool) {
        let span = tracing::info_span!("push", steal, pushed = tracing::field::Empty);
        tracing::Instrument::instrument(self.drain_inner(steal), span).await;
    }

    async fn drain_inner(&mut self, steal: bool) {
        let node = self.node.clone();
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let now = now_ms();
        let lease_ms = node.config.claim_lease.as_millis() as i64;
        let claim = Claim {
            mesh_id: &a.mesh.id,
            member_id: &a.member.id,
            session_key: a.handle.session_key.as_deref(),
            all_priorities: a.handle.status() == Status::Idle,
            steal,
            lease_ms,
            now_ms: now,
            limit: CLAIM_BATCH_LIMIT,
        };
        let claimed = match node.store.claim(claim).await {
            Ok(c) => c,
            Err(e) => {
                // The claim may have committed with its reply lost: its rows are then
                // hidden until `now + lease_ms`. Drain again soon (a claim that did not
                // happen) and when that lease ends (one that did).
                warn!(error = %e, "queue drain failed; re-drain scheduled");
                let soon = now_ms() + CLAIM_RETRY_MS + now_ms().rem_euclid(CLAIM_RETRY_MS);
                let pending = |until| super::Pushed {
                    until,
                    client_id: None,
                };
                a.unacked
                    .insert(format!("{}:retry", super::REDRAIN), pending(soon));
                a.unacked.insert(
                    format!("{}:lease:{}", super::REDRAIN, now + lease_ms),
                    pending(now + lease_ms),
                );
                return;
            }
        };
        let full = claimed.len() == CLAIM_BATCH_LIMIT;
        let mut pushed = 0usize;
        for m in claimed {
            let frame = protocol::encode(&Push {
                kind: "push",
                message_id: &m.id,
                mesh_id: &m.mesh_id,
                sender_pubkey: &m.sender_pubkey,
                sender_member_pubkey: &m.sender_member_pubkey,
                sender_name: &m.sender_name,
                priority: m.priority,
                nonce: &m.nonce,
                ciphertext: &m.ciphertext,
                created_at: ids::iso8601_ms(m.created_at),
                client_message_id: m.client_message_id.as_deref(),
            });
            if !self.out.text(frame) {
                // The socket is closing; the lease runs out and another connection retakes it.
                break;
            }
            node.metrics.pushes_total.inc();
            node.metrics
                .delivery_seconds
                .observe((now_ms() - m.created_at).max(0) as f64 / 1000.0);
            a.unacked.insert(
                m.id,
                super::Pushed {
                    until: now + lease_ms,
                    client_id: m.client_message_id,
                },
            );
            pushed += 1;
        }
        tracing::Span::current().record("pushed", pushed);
        if full {
            a.handle.drain.notify_one();
        }
    }

    async fn client_ack(&mut self, reference: MessageRef<'_>) {
        let node = self.node.clone();
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        // By client id: only the messages pushed to this connection with that id (other
        // senders may use the same client id for messages this connection never got).
        let ids: Vec<String> = match reference {
            MessageRef::Broker(id) => {
                a.unacked.remove(id);
                vec![id.to_string()]
            }
            MessageRef::Client(client_id) => {
                let ids: Vec<String> = a
                    .unacked
                    .iter()
                    .filter(|(_, p)| p.client_id.as_deref() == Some(client_id))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &ids {
                    a.unacked.remove(id);
                }
                ids
            }
        };
        for id in ids {
            if let Err(e) = node
                .store
                .mark_delivered(&a.mesh.id, &a.member.id, MessageRef::Broker(&id))
                .await
            {
                warn!(error = %e, "client_ack not recorded; the message will be pushed again");
            }
        }
    }

    async fn list_peers(&self, req_id: Option<&str>) {
        let a = self.attached.as_ref().expect("attached");
        let records = match self.node.presence.list(&a.mesh.id).await {
            Ok(r) => r,
            Err(e) => return self.reply_error("internal", &e.to_string(), req_id),
        };
        let peers: Vec<Value> = records
            .iter()
            .filter(|r| r.is_live() && (r.visible || r.presence_id == a.record.presence_id))
            .map(|r| {
                let mut p = json!({
                    "pubkey": r.routing_key(),
                    "memberPubkey": r.member_pubkey,
                    "displayName": r.display_name,
                    "status": r.status.as_str(),
                    "summary": r.summary,
                    "groups": r.groups,
                    "sessionId": r.session_id,
                    "connectedAt": ids::iso8601_ms(r.connected_at),
                    "cwd": r.cwd,
                    "peerRole": r.peer_role.as_str(),
                    "visible": r.visible,
                });
                let optional = [
                    ("hostname", r.hostname.clone().map(Value::from)),
                    ("peerType", r.peer_type.clone().map(Value::from)),
                    ("channel", r.channel.clone().map(Value::from)),
                    ("model", r.model.clone().map(Value::from)),
                    ("stats", r.stats.clone()),
                    (
                        "profile",
                        (!r.profile.is_empty()).then(|| Value::Object(r.profile.clone())),
                    ),
                ];
                for (k, v) in optional {
                    if let Some(v) = v {
                        p[k] = v;
                    }
                }
                p
            })
            .collect();
        let frame = protocol::with_req_id(json!({"type": "peers_list", "peers": peers}), req_id);
        let frame = protocol::encode(&frame);
        // A reply the requester's queue can never take would close it 1013: refuse it instead.
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
        self.reply(frame);
    }

    pub(super) async fn set_status(&mut self, status: Status) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
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
        a.record.status = status;
        self.update_presence(PresencePatch::Status(status)).await;
        if status == Status::Idle {
            self.drain(false).await;
        }
    }

    /// A hook's status: a low-trust signal that can never clear `dnd`.
    pub(super) async fn apply_hook_status(&mut self, status: Status) {
        let current = self.attached.as_ref().map(|a| a.handle.status());
        if current == Some(Status::Dnd) && status != Status::Dnd {
            return;
        }
        self.set_status(status).await;
    }

    async fn set_visible(&mut self, visible: bool) {
        let (changed, me) = self.with_record(|r| {
            let changed = r.visible != visible;
            r.visible = visible;
            (changed, r.clone())
        });
        self.update_presence(PresencePatch::Visible(visible)).await;
        if changed {
            let records = self
                .node
                .presence
                .list(&me.mesh_id)
                .await
                .unwrap_or_default();
            let to = records
                .iter()
                .filter(|r| r.is_live() && r.presence_id != me.presence_id)
                .map(|r| r.presence_id.clone())
                .collect();
            let event = if visible {
                "peer_visible"
            } else {
                "peer_hidden"
            };
            let data = json!({"name": me.display_name, "pubkey": me.routing_key()});
            super::events::announce(&self.node, &me.mesh_id, to, event, data).await;
        }
    }
}

const CLAIM_BATCH_LIMIT: usize = super::CLAIM_BATCH;
/// After a failed claim, the next drain comes this long (plus up to as much jitter, so
/// the sockets of a replica do not retry in step) later.
const CLAIM_RETRY_MS: i64 = 1_000;

/// A presence change refused by a bound: the `error` code and its message.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// A group name and role within `MAX_GROUP_NAME_BYTES`.
pub(crate) fn check_group(config: &Config, group: &Group) -> Result<(), Refusal> {
    let max = config.max_group_name_bytes;
    let role = group.role.as_deref().unwrap_or("");
    if group.name.len() > max || role.len() > max {
        return Err(Refusal {
            code: "name_too_long",
            message: format!("group names and roles are at most {max} bytes"),
        });
    }
    Ok(())
}

/// A free-form field of `len` bytes within `MAX_PRESENCE_FIELD_BYTES`.
pub(crate) fn check_field(config: &Config, what: &str, len: usize) -> Result<(), Refusal> {
    let max = config.max_presence_field_bytes;
    if len > max {
        return Err(Refusal {
            code: "field_too_large",
            message: format!("{what} is {len} bytes, at most {max} are allowed"),
        });
    }
    Ok(())
}

/// What a `hello` announces about its presence, within the same bounds as the frames that
/// change it later: groups (count, names), display name and the other strings.
pub(crate) fn check_hello_meta(config: &Config, meta: &protocol::PeerMeta) -> Result<(), Refusal> {
    if let Some(groups) = &meta.groups {
        let max = config.max_groups_per_presence;
        if groups.len() > max {
            return Err(Refusal {
                code: "too_many_groups",
                message: format!("a presence is in at most {max} groups"),
            });
        }
        for g in groups {
            check_group(config, g)?;
        }
    }
    let strings = [
        ("displayName", &meta.display_name),
        ("sessionId", &meta.session_id),
        ("cwd", &meta.cwd),
        ("hostname", &meta.hostname),
        ("peerType", &meta.peer_type),
        ("channel", &meta.channel),
        ("model", &meta.model),
    ];
    for (what, value) in strings {
        if let Some(v) = value {
            check_field(config, what, v.len())?;
        }
    }
    Ok(())
}

/// Groups a presence inherits (its earlier record, its saved state, the member's defaults),
/// cut to the bounds: they may predate them.
pub(crate) fn bounded_groups(config: &Config, mut groups: Vec<Group>) -> Vec<Group> {
    groups.retain(|g| check_group(config, g).is_ok());
    groups.truncate(config.max_groups_per_presence);
    groups
}

/// The group and free-form presence fields, each checked against its bound first: one
/// member must not grow its presence until the peer lists and events about it no longer
/// fit other sockets' outbound queues.
impl Session {
    /// Answers a refused change with an `error` and counts it.
    fn refuse_update(&self, refusal: Refusal, req_id: Option<&str>) {
        self.node.metrics.reject_presence_update(refusal.code);
        self.reply_error(refusal.code, &refusal.message, req_id);
    }

    async fn set_summary(&mut self, summary: String, req_id: Option<&str>) {
        if let Err(r) = check_field(&self.node.config, "summary", summary.len()) {
            return self.refuse_update(r, req_id);
        }
        self.with_record(|r| r.summary = Some(summary.clone()));
        self.update_presence(PresencePatch::Summary(summary)).await;
    }

    async fn set_profile(&mut self, profile: Map<String, Value>, req_id: Option<&str>) {
        let mut merged = self.with_record(|r| r.profile.clone());
        merged.extend(profile.clone());
        let len = Value::Object(merged).to_string().len();
        if let Err(r) = check_field(&self.node.config, "profile", len) {
            return self.refuse_update(r, req_id);
        }
        self.with_record(|r| r.profile.extend(profile.clone()));
        self.update_presence(PresencePatch::Profile(profile)).await;
        self.reply_empty_ack(req_id);
    }

    async fn set_stats(&mut self, stats: Value, req_id: Option<&str>) {
        if let Err(r) = check_field(&self.node.config, "stats", stats.to_string().len()) {
            return self.refuse_update(r, req_id);
        }
        self.with_record(|r| r.stats = Some(stats.clone()));
        self.update_presence(PresencePatch::Stats(stats)).await;
    }

    async fn join_group(&mut self, group: Group, req_id: Option<&str>) {
        if let Err(r) = check_group(&self.node.config, &group) {
            return self.refuse_update(r, req_id);
        }
        let max = self.node.config.max_groups_per_presence;
        let groups = self.with_record(|r| {
            let new = !r.groups.iter().any(|g| g.name == group.name);
            if new && r.groups.len() >= max {
                return None;
            }
            r.groups.retain(|g| g.name != group.name);
            r.groups.push(group.clone());
            Some(r.groups.clone())
        });
        let Some(groups) = groups else {
            let refusal = Refusal {
                code: "too_many_groups",
                message: format!("a presence is in at most {max} groups"),
            };
            return self.refuse_update(refusal, req_id);
        };
        self.update_presence(PresencePatch::Groups(groups)).await;
    }
}
