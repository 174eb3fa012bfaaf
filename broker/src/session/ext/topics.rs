//! The WebSocket adapter of topics (extensions §9): `topic_create`, `topic_list`,
//! `topic_join`, `topic_leave`, `topic_members`, `topic_history`, `topic_mark_read`, and the
//! topic fields of a `send` to `#<topicId>` (the send itself is `handlers.rs`'s).
//!
//! Replies echo `_reqId` when one was given (the CLI matches them tolerantly). `topic_join`,
//! `topic_leave` and `topic_mark_read` have no reply; a refusal of one of them is an
//! `error` only when it carried a `_reqId` (an `error` without one would release another
//! pending CLI request, §0.2). Refusals of the others are `error{code, message, _reqId}`
//! (`invalid_args`, `topic_not_found`, `too_many_topics`, `topic_full`, `forbidden`,
//! `internal`).

use crate::ids;
use crate::protocol;
use crate::protocol::ext::topics::{
    TopicCreated, TopicFrame, TopicHistoryMessage, TopicHistoryResponse, TopicInfo,
    TopicListResponse, TopicMemberInfo, TopicMembersResponse, TopicRef, TopicSendFields,
};
use crate::service::topics::{self, CreateTopic, TopicError};
use crate::session::Session;
use crate::store::topics::TopicMessage;

/// The topic fields of a `send` frame (`mentions`, `replyToId`, `bodyVersion`); fields of the
/// wrong type are ignored (the core `send` decoded already).
pub(in crate::session) fn send_fields(text: &[u8]) -> TopicSendFields {
    serde_json::from_slice(text).unwrap_or_default()
}

/// One stored message as `topic_history` shows it: `senderPubkey` is the stored session key,
/// else the member key.
pub fn history_message(m: &TopicMessage) -> TopicHistoryMessage {
    TopicHistoryMessage {
        id: m.id.clone(),
        sender_pubkey: m
            .sender_session_pubkey
            .clone()
            .unwrap_or_else(|| m.sender_member_pubkey.clone()),
        sender_member_id: m.sender_member_id.clone(),
        sender_name: m.sender_name.clone(),
        nonce: m.nonce.clone(),
        ciphertext: m.ciphertext.clone(),
        body_version: m.body_version,
        reply_to_id: m.reply_to_id.clone(),
        created_at: ids::iso8601_ms(m.created_at),
    }
}

/// Handles one frame whose `type` is in [`crate::protocol::ext::topics::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: TopicFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: TopicError| s.reply_error(e.code(), &e.message(), req_id);
    // Fire-and-forget frames: silent unless a `_reqId` asks.
    let refuse_quietly = |s: &Session, e: TopicError| {
        if req_id.is_some() {
            s.reply_error(e.code(), &e.message(), req_id);
        }
    };
    let req = req_id.map(str::to_string);
    match frame {
        TopicFrame::TopicCreate {
            name,
            description,
            visibility,
        } => {
            let requested = visibility.clone();
            let create = CreateTopic {
                name,
                description,
                visibility,
            };
            match topics::create(svc, p, create).await {
                Ok(o) => {
                    // The reply echoes the *requested* visibility (extensions §9).
                    let visibility = requested.unwrap_or_else(|| o.topic.visibility.clone());
                    s.reply(protocol::encode(&TopicCreated {
                        topic: TopicRef {
                            id: o.topic.id,
                            name: o.topic.name,
                            visibility,
                        },
                        created: o.created,
                        req_id: req,
                    }));
                }
                Err(e) => refuse(s, e),
            }
        }
        TopicFrame::TopicList {} => match topics::list(svc, p).await {
            Ok(list) => {
                let frame = protocol::encode(&TopicListResponse {
                    topics: list
                        .into_iter()
                        .map(|t| TopicInfo {
                            id: t.topic.id,
                            name: t.topic.name,
                            description: t.topic.description,
                            visibility: t.topic.visibility,
                            member_count: t.member_count,
                            created_at: ids::iso8601_ms(t.topic.created_at),
                        })
                        .collect(),
                    req_id: req,
                });
                super::state::reply_bounded(s, frame, "topic_list_response", req_id);
            }
            Err(e) => refuse(s, e),
        },
        TopicFrame::TopicJoin { topic, role } => {
            let result = async {
                let t = topics::resolve(svc, p, &topic).await?;
                topics::join(svc, p, &t, role.as_deref()).await
            }
            .await;
            if let Err(e) = result {
                refuse_quietly(s, e);
            }
        }
        TopicFrame::TopicLeave { topic } => {
            let result = async {
                let t = topics::resolve(svc, p, &topic).await?;
                topics::leave(svc, p, &t).await
            }
            .await;
            if let Err(e) = result {
                refuse_quietly(s, e);
            }
        }
        TopicFrame::TopicMarkRead { topic } => {
            let result = async {
                let t = topics::resolve(svc, p, &topic).await?;
                topics::mark_read(svc, p, &t, false).await
            }
            .await;
            if let Err(e) = result {
                refuse_quietly(s, e);
            }
        }
        TopicFrame::TopicMembers { topic } => {
            let result = async {
                let t = topics::resolve(svc, p, &topic).await?;
                topics::members(svc, p, &t).await
            }
            .await;
            match result {
                Ok(members) => {
                    let frame = protocol::encode(&TopicMembersResponse {
                        topic,
                        members: members
                            .into_iter()
                            .map(|m| TopicMemberInfo {
                                member_id: m.member.id,
                                pubkey: m.member.pubkey,
                                display_name: m.member.display_name,
                                role: m.membership.role,
                                joined_at: ids::iso8601_ms(m.membership.joined_at),
                                last_read_at: m.membership.last_read_at.map(ids::iso8601_ms),
                            })
                            .collect(),
                        req_id: req,
                    });
                    super::state::reply_bounded(s, frame, "topic_members_response", req_id);
                }
                Err(e) => refuse(s, e),
            }
        }
        TopicFrame::TopicHistory {
            topic,
            limit,
            before_id,
        } => {
            let result = async {
                let t = topics::resolve(svc, p, &topic).await?;
                topics::history(svc, p, &t, limit, before_id.as_deref()).await
            }
            .await;
            match result {
                Ok(messages) => {
                    let frame = protocol::encode(&TopicHistoryResponse {
                        topic,
                        messages: messages.iter().map(history_message).collect(),
                        req_id: req,
                    });
                    super::state::reply_bounded(s, frame, "topic_history_response", req_id);
                }
                Err(e) => refuse(s, e),
            }
        }
    }
}
