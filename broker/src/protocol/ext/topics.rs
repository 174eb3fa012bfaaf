//! Frames of topics (extensions §9): `topic_create`, `topic_list`, `topic_join`,
//! `topic_leave`, `topic_members`, `topic_history`, `topic_mark_read`, and the topic fields
//! of a `send` to `#<topicId>` with the `push` it fans out.
//!
//! The CLI matches `topic_*` replies tolerantly (§0.2): by `_reqId`, else the oldest
//! request waiting for the type, so every reply echoes `_reqId` when one was given.
//! `topic_join`, `topic_leave` and `topic_mark_read` have no reply.

use serde::{Deserialize, Serialize};

use crate::protocol::Priority;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[
    "topic_create",
    "topic_list",
    "topic_join",
    "topic_leave",
    "topic_members",
    "topic_history",
    "topic_mark_read",
];

/// A client frame of this family. Fields the CLI may omit default, so that such a frame
/// is refused by the service (`invalid_args`, `topic_not_found`) instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TopicFrame {
    TopicCreate {
        #[serde(default)]
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visibility: Option<String>,
    },
    TopicList {},
    TopicJoin {
        #[serde(default)]
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    TopicLeave {
        #[serde(default)]
        topic: String,
    },
    TopicMembers {
        #[serde(default)]
        topic: String,
    },
    #[serde(rename_all = "camelCase")]
    TopicHistory {
        #[serde(default)]
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_id: Option<String>,
    },
    TopicMarkRead {
        #[serde(default)]
        topic: String,
    },
}

/// The topic fields a `send` to `#<topicId>` may carry beyond the core `send` (read from the
/// same frame).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicSendFields {
    /// Lowercased display names without `@` (≤16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    /// 1 (base64 text, the default) or 2 (sealed under the topic key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_version: Option<u8>,
}

/// `{id, name, visibility}` of `topic_created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRef {
    pub id: String,
    pub name: String,
    pub visibility: String,
}

/// `topic_created{topic, created, _reqId}`: `created:false` when the name existed (the
/// reply then carries the requested visibility).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "topic_created")]
pub struct TopicCreated {
    pub topic: TopicRef,
    pub created: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One topic of `topic_list_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicInfo {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub visibility: String,
    pub member_count: u64,
    pub created_at: String,
}

/// `topic_list_response{topics, _reqId}`, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "topic_list_response")]
pub struct TopicListResponse {
    pub topics: Vec<TopicInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One member of `topic_members_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicMemberInfo {
    pub member_id: String,
    /// The member key.
    pub pubkey: String,
    pub display_name: String,
    pub role: String,
    pub joined_at: String,
    pub last_read_at: Option<String>,
}

/// `topic_members_response{topic (as sent), members, _reqId}`, by display name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "topic_members_response")]
pub struct TopicMembersResponse {
    pub topic: String,
    pub members: Vec<TopicMemberInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One message of `topic_history_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicHistoryMessage {
    pub id: String,
    /// The stored sender session key, else the member key.
    pub sender_pubkey: String,
    pub sender_member_id: String,
    pub sender_name: String,
    pub nonce: String,
    pub ciphertext: String,
    pub body_version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    pub created_at: String,
}

/// `topic_history_response{topic (as sent), messages, _reqId}`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "topic_history_response")]
pub struct TopicHistoryResponse {
    pub topic: String,
    pub messages: Vec<TopicHistoryMessage>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The `push` of a topic post to every live presence of every other topic member: the
/// fields of a message `push`, with `messageId` = the topic-message id, plus the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "push", rename_all = "camelCase")]
pub struct TopicPush {
    pub message_id: String,
    pub mesh_id: String,
    /// The sender's routing key (its session key if it has one).
    pub sender_pubkey: String,
    pub sender_member_pubkey: String,
    pub sender_member_id: String,
    pub sender_name: String,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at: String,
    /// The topic's name.
    pub topic: String,
    /// **Beyond:** the topic's id.
    pub topic_id: String,
    pub body_version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_the_cli_field_names() {
        let f: TopicFrame = serde_json::from_value(serde_json::json!({
            "type": "topic_history", "topic": "general", "limit": 20, "beforeId": "abc",
            "_reqId": "r1"
        }))
        .expect("decodes");
        assert_eq!(
            f,
            TopicFrame::TopicHistory {
                topic: "general".into(),
                limit: Some(20),
                before_id: Some("abc".into()),
            }
        );
        let f: TopicFrame =
            serde_json::from_value(serde_json::json!({"type": "topic_join", "topic": "x"}))
                .expect("decodes");
        assert_eq!(
            f,
            TopicFrame::TopicJoin {
                topic: "x".into(),
                role: None
            }
        );
        let s: TopicSendFields = serde_json::from_value(serde_json::json!({
            "type": "send", "targetSpec": "#x", "mentions": ["bob"], "replyToId": "m1",
            "bodyVersion": 2
        }))
        .expect("decodes");
        assert_eq!(s.mentions, Some(vec!["bob".to_string()]));
        assert_eq!(s.reply_to_id.as_deref(), Some("m1"));
        assert_eq!(s.body_version, Some(2));
    }
}

/// `topic_posted{topicId}`: what a post no live presence receives publishes on the mesh
/// bus (a `Deliver` without recipients), so that every replica's REST streams of the topic
/// read the store now. It is never written to a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "topic_posted")]
pub struct TopicPosted {
    #[serde(rename = "topicId")]
    pub topic_id: String,
}
