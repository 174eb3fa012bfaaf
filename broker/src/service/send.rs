//! `send` (spec §4.2): rate limit, size, target, revocation, recipients, grants, queueing
//! (idempotent by `client_message_id`), fan-out, doorbell and audit, in that order. One
//! function for every transport; the WebSocket encodes its result as an `ack`.

use std::collections::HashMap;

use serde_json::json;
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids::{self, now_ms};
use crate::protocol::target::{self, Target};
use crate::protocol::{self, Priority, Push};
use crate::routing::{self, Sender};
use crate::store::{Member, QueuedMessage, StoreError};

/// One message to route.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub target_spec: String,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    /// The sender's idempotency key: a retry with the same id is queued once.
    pub client_message_id: Option<String>,
}

impl From<protocol::Send> for SendRequest {
    fn from(s: protocol::Send) -> Self {
        SendRequest {
            target_spec: s.target_spec,
            priority: s.priority,
            nonce: s.nonce,
            ciphertext: s.ciphertext,
            client_message_id: s.client_message_id,
        }
    }
}

/// How an accepted message travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A direct message, queued durably for this member (the recipient's connections drain
    /// it).
    Queued { recipient_member_id: String },
    /// A broadcast or group message, published to these presences (none may be online).
    Fanout { presences: usize },
}

/// An accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The broker's id of the message (for a retried direct message, the first one's).
    pub message_id: String,
    pub delivery: Delivery,
}

/// Why a message was not accepted. [`SendError::message`] is the exact wire text (the
/// `ack`'s `error`, or the `error` frame's `message` for [`SendError::Revoked`]) and
/// [`SendError::metric_label`] the `reason` of `broker_messages_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The sender's member row is revoked (banned): its session ends (`error` `revoked`,
    /// close `banned`).
    Revoked { mesh_name: String },
    /// More than `SEND_PER_MIN` messages a minute (after the `SEND_BURST`).
    RateLimited { per_min: u32 },
    /// Ciphertext, nonce and target together over `MAX_MESSAGE_BYTES`.
    TooLarge,
    /// The target spec is not one the protocol knows.
    InvalidTarget(String),
    /// No (unrevoked) member or announced session has the target key.
    NoPeer,
    /// The recipient's grants do not give the sender `dm`.
    Grant,
    /// The store failed after the message may have been queued: retry with the same
    /// `client_message_id` (idempotent).
    OutcomeUnknown(String),
    /// A backend (store, presence, bus) is unavailable.
    Unavailable(String),
    /// **Ours:** `#<topicId>` names no live topic of the sender's mesh (extensions §9).
    TopicNotFound,
    /// A topic post refused by the topic's rules (a bad `bodyVersion`; **Ours:** a
    /// private/dm topic the sender is no member of), with the wire text.
    TopicRefused(String),
}

impl SendError {
    /// The `reason` label of `broker_messages_rejected_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SendError::Revoked { .. } => "revoked",
            SendError::RateLimited { .. } => "rate_limit",
            SendError::TooLarge => "too_large",
            SendError::InvalidTarget(_) => "invalid",
            SendError::NoPeer => "no_target",
            SendError::Grant => "grant",
            SendError::OutcomeUnknown(_) => "outcome_unknown",
            SendError::Unavailable(_) => "store",
            SendError::TopicNotFound => "no_target",
            SendError::TopicRefused(_) => "invalid",
        }
    }

    /// The `error` frame's code when the refusal is not an `ack` (only `revoked`).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            SendError::Revoked { .. } => Some("revoked"),
            _ => None,
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            SendError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            SendError::RateLimited { per_min } => {
                format!("rate_limit: more than {per_min} messages per minute, slow down")
            }
            SendError::TooLarge => "payload too large".into(),
            SendError::InvalidTarget(e) => e.clone(),
            SendError::NoPeer => "no connected peer for target".into(),
            SendError::Grant => "blocked by recipient grants (sender lacks dm capability)".into(),
            SendError::OutcomeUnknown(e) | SendError::Unavailable(e) => e.clone(),
            SendError::TopicNotFound => "topic not found".into(),
            SendError::TopicRefused(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for SendError {}

/// Routes one message; see [`send_with`].
pub async fn send(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
) -> Result<SendOutcome, SendError> {
    send_with(ctx, principal, req, |_| {}).await
}

/// Routes one message, in a span of its own: each message is the root of its own trace
/// (the caller's span stays its parent for logs only). `accepted` runs as soon as the
/// message is queued or published, before the doorbell and the audit, so a transport can
/// acknowledge it without waiting for them. Refusals are counted here.
pub async fn send_with(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<SendOutcome, SendError> {
    send_with_options(ctx, principal, req, SendOptions::default(), accepted).await
}

/// What a send made by the broker itself on a member's behalf (a scheduled message's
/// fire) sets beyond a client's `send`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// The `messageId` to use instead of a random one (derived, so that a repeated fire
    /// carries the same id); with the same `client_message_id`, a repeat is queued once.
    pub message_id: Option<String>,
    /// The `subtype` every push of the message carries (`reminder`).
    pub subtype: Option<String>,
}

/// Routes one message with [`SendOptions`]; see [`send_with`].
pub async fn send_as(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
    options: SendOptions,
) -> Result<SendOutcome, SendError> {
    send_with_options(ctx, principal, req, options, |_| {}).await
}

/// A `send` to `#<topicId>` with the topic fields of its frame (extensions §9): the same
/// path as [`send_with`] (rate limit, size, revocation, audit, metrics), then the topic's
/// storage and fan-out. Returns the post's details too (`None` only for a target that is no
/// topic).
pub async fn send_to_topic(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
    topic: crate::protocol::ext::topics::TopicSendFields,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<(SendOutcome, Option<super::topics::PostOutcome>), SendError> {
    send_inner(
        ctx,
        principal,
        req,
        SendOptions::default(),
        Some(topic),
        accepted,
    )
    .await
}

async fn send_with_options(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
    options: SendOptions,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<SendOutcome, SendError> {
    send_inner(ctx, principal, req, options, None, accepted)
        .await
        .map(|(outcome, _)| outcome)
}

async fn send_inner(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: SendRequest,
    options: SendOptions,
    topic: Option<crate::protocol::ext::topics::TopicSendFields>,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<(SendOutcome, Option<super::topics::PostOutcome>), SendError> {
    let target = req.target_spec.get(..8).unwrap_or(&req.target_spec);
    let span = if crate::telemetry::on() {
        tracing::info_span!(
            "send",
            otel.kind = "server",
            target,
            priority = req.priority.as_str(),
            trace_id = tracing::field::Empty,
            mesh.id = principal.mesh.id.as_str(),
            messaging.system = "claudemesh",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
            messaging.message.body.size = req.ciphertext.len(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        )
    } else {
        // Traces off: the span only gives log lines their context.
        tracing::info_span!("send", target, priority = req.priority.as_str())
    };
    // The root of the message's trace, linked to (not inside) the caller's span: a
    // connection's trace does not grow with every message it sends.
    crate::telemetry::link(
        &span,
        crate::telemetry::span_context(&tracing::Span::current()).as_ref(),
    );
    crate::telemetry::root(&span);
    let trace_id = crate::telemetry::trace_id(&span);
    if !trace_id.is_empty() {
        span.record("trace_id", tracing::field::display(&trace_id));
    }
    let result = tracing::Instrument::instrument(
        route(ctx, principal, req, options, topic, accepted),
        span.clone(),
    )
    .await;
    match &result {
        Ok((o, _)) => {
            span.record("messaging.message.id", o.message_id.as_str());
            span.record(
                "messaging.destination.name",
                match o.delivery {
                    Delivery::Queued { .. } => "direct",
                    Delivery::Fanout { .. } => "fanout",
                },
            );
        }
        Err(e) => {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", e.metric_label());
            ctx.metrics().reject_message(e.metric_label());
        }
    }
    result
}

async fn route(
    ctx: &ServiceCtx,
    p: &Principal,
    req: SendRequest,
    options: SendOptions,
    topic: Option<crate::protocol::ext::topics::TopicSendFields>,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<(SendOutcome, Option<super::topics::PostOutcome>), SendError> {
    let unavailable = |e: &dyn std::fmt::Display| SendError::Unavailable(e.to_string());
    let config = ctx.config();

    // The sender's own row, as the send path sees it (the cache expires within
    // seconds and is dropped cluster-wide on a ban): a ban that could not reach this
    // socket (bus down, written behind the broker's back) still stops its sends.
    let members = ctx.members(&p.mesh.id).await.map_err(|e| unavailable(&e))?;
    if !members
        .iter()
        .any(|m| m.id == p.member.id && m.revoked_at.is_none())
    {
        return Err(SendError::Revoked {
            mesh_name: p.mesh.name.clone(),
        });
    }

    let bucket = format!("{}:{}", p.mesh.id, p.member.id);
    match ctx
        .presence()
        .take_send_token(&bucket, config.send_burst, config.send_per_min)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(SendError::RateLimited {
                per_min: config.send_per_min,
            });
        }
        // The limiter's backend (Redis) is down: fail open rather than stop every
        // sender; the outage is visible in readiness and logs.
        Err(e) => warn!(error = %e, "rate limiter unavailable; send allowed"),
    }
    let size = req.ciphertext.len() + req.nonce.len() + req.target_spec.len();
    if size > config.max_message_bytes {
        return Err(SendError::TooLarge);
    }
    let target =
        target::classify(&req.target_spec).map_err(|e| SendError::InvalidTarget(e.to_string()))?;
    let sender = Sender {
        member_id: &p.member.id,
        member_key: &p.member.pubkey,
        session_key: p.session_key.as_deref(),
    };
    let message_id = options
        .message_id
        .clone()
        // 32 base62 characters: `claudemesh msg-status` treats anything shorter as a
        // prefix (extensions §0.1).
        .unwrap_or_else(|| ids::random_id(32));
    let now = now_ms();
    let audit = json!({"targetSpec": req.target_spec, "priority": req.priority.as_str()});
    let priority = req.priority;
    let mut posted = None;

    let outcome = match target {
        Target::Direct(key) => {
            // A member key always means that member, whatever sessions announce; only
            // a key that is no member's is looked up among session keys.
            // Presence is read only for session keys, which keeps it off the hot path;
            // without presence (Redis down) member keys still route, durably.
            let recipient = match members.iter().find(|m| m.pubkey == key) {
                Some(m) => Some(m),
                None => {
                    let records = ctx
                        .presence()
                        .find(
                            &p.mesh.id,
                            crate::cluster::presence::PresenceQuery {
                                session_key: Some(key),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(|e| unavailable(&e))?;
                    routing::session_target(&records, key)
                        .and_then(|r| members.iter().find(|m| m.id == r.member_id))
                }
            };
            let recipient = match recipient {
                Some(m) if m.revoked_at.is_none() => m.clone(),
                _ => return Err(SendError::NoPeer),
            };
            if !routing::grants_allow(&recipient, sender.member_key, sender.session_key, "dm") {
                ctx.metrics().drop_by_grant("dm");
                return Err(SendError::Grant);
            }
            let session_target = (key != recipient.pubkey).then(|| key.to_string());
            let queued = QueuedMessage {
                id: message_id.clone(),
                mesh_id: p.mesh.id.clone(),
                sender_member_id: p.member.id.clone(),
                sender_pubkey: p.routing_key.clone(),
                sender_member_pubkey: p.member.pubkey.clone(),
                sender_name: p.display_name.clone(),
                target_member_id: recipient.id.clone(),
                target_session_key: session_target,
                priority,
                nonce: req.nonce,
                ciphertext: req.ciphertext,
                client_message_id: req.client_message_id,
                created_at: now,
                subtype: options.subtype.clone(),
                // The send's span: the push and the client_ack continue its trace.
                trace: crate::telemetry::current_traceparent(),
            };
            // The recipient's replica pushes this frame at once (`MeshEvent::Direct`): the
            // `push` a claim of the row would give, encoded once here.
            let direct = crate::cluster::bus::DirectHeader {
                id: queued.id.clone(),
                session_key: queued.target_session_key.clone(),
                priority,
                client_id: queued.client_message_id.clone(),
                trace: queued.trace.clone(),
                created_at: queued.created_at,
            };
            let frame = protocol::encode(&Push::from_queued(&queued));
            let message_id = match ctx.store().enqueue(queued).await {
                Ok(id) => id,
                // Not a refusal: the message may be queued. The error tells the
                // client to retry with the same client_message_id, which is idempotent.
                Err(e @ StoreError::OutcomeUnknown(_)) => {
                    return Err(SendError::OutcomeUnknown(e.to_string()));
                }
                Err(e) => return Err(unavailable(&e)),
            };
            let outcome = SendOutcome {
                message_id,
                delivery: Delivery::Queued {
                    recipient_member_id: recipient.id.clone(),
                },
            };
            accepted(&outcome);
            ctx.metrics().routed(priority);
            tracing::debug!(message_id = outcome.message_id, "direct message queued");
            // Committed: the doorbell carries the message, unless the send was a retry
            // answered with an earlier send's id (that one's row is what is queued, and
            // may be delivered already), or a broker send with a derived id (a repeated
            // fire, the same).
            let ring = if ctx.config().direct_push
                && outcome.message_id == direct.id
                && options.message_id.is_none()
            {
                MeshEvent::Direct {
                    member_id: recipient.id.clone(),
                    message: direct,
                    frame,
                }
            } else {
                MeshEvent::Doorbell {
                    member_id: recipient.id.clone(),
                }
            };
            if let Err(e) = ctx.publish(&p.mesh.id, ring).await {
                // The message is durable; the recipient gets it on its next drain.
                warn!(error = %e, "doorbell not published");
            }
            outcome
        }
        Target::Topic(topic_id) => {
            let topic_id = topic_id.to_string();
            let (outcome, post) = super::topics::send_post(
                ctx,
                p,
                &members,
                &topic_id,
                req,
                topic.unwrap_or_default(),
                message_id,
                now,
                accepted,
            )
            .await?;
            posted = Some(post);
            outcome
        }
        Target::Broadcast | Target::Group(_) => {
            let group = match target {
                Target::Group(g) => Some(g),
                _ => None,
            };
            let records = ctx
                .mesh_presences(&p.mesh.id)
                .await
                .map_err(|e| unavailable(&e))?;
            let by_id: HashMap<&str, &Member> =
                members.iter().map(|m| (m.id.as_str(), m)).collect();
            let fanout = routing::fanout(&records, &by_id, sender, group);
            for _ in 0..fanout.blocked {
                ctx.metrics().drop_by_grant("broadcast");
            }
            // Not queued: the same shape as a queued one only so that both paths build
            // the `push` with one constructor.
            let fanned = QueuedMessage {
                id: message_id,
                mesh_id: p.mesh.id.clone(),
                sender_member_id: p.member.id.clone(),
                sender_pubkey: p.routing_key.clone(),
                sender_member_pubkey: p.member.pubkey.clone(),
                sender_name: p.display_name.clone(),
                target_member_id: String::new(),
                target_session_key: None,
                priority,
                nonce: req.nonce,
                ciphertext: req.ciphertext,
                client_message_id: req.client_message_id,
                created_at: now,
                subtype: options.subtype.clone(),
                // Not queued: the bus carries the trace context of a fan-out.
                trace: None,
            };
            let frame = protocol::encode(&Push::from_queued(&fanned));
            let message_id = fanned.id;
            let presences = fanout.presence_ids.len();
            let event = MeshEvent::Deliver {
                presence_ids: fanout.presence_ids.into(),
                priority: Some(priority),
                frame,
                trace: None,
            };
            ctx.publish(&p.mesh.id, event)
                .await
                .map_err(|e| unavailable(&e))?;
            let outcome = SendOutcome {
                message_id,
                delivery: Delivery::Fanout { presences },
            };
            accepted(&outcome);
            ctx.metrics().routed(priority);
            // Delivery status (extensions §7), off the caller's path.
            ctx.record_fanout(crate::store::msg_status::SentMessage {
                id: outcome.message_id.clone(),
                mesh_id: p.mesh.id.clone(),
                sender_member_id: p.member.id.clone(),
                target: crate::store::msg_status::SentTarget::Fanout {
                    spec: req.target_spec.clone(),
                },
                created_at: now,
                delivered_at: (presences > 0).then_some(now),
            });
            outcome
        }
    };
    ctx.audit(&p.mesh.id, "message_sent", Some(&p.member.id), audit);
    Ok((outcome, posted))
}
