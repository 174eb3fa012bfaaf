//! Frames of memory (extensions §2): `remember`, `recall`, `forget`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag, so decoding a frame of another type fails.

use serde::{Deserialize, Serialize};

use crate::protocol::frames::tag;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["remember", "recall", "forget"];

/// A client frame of this family. Fields the CLI may omit default (`tags` may also be
/// `null`), so that such a frame is refused by the service with a clear error instead of
/// `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MemoryFrame {
    Remember {
        #[serde(default)]
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Vec<String>>,
    },
    Recall {
        #[serde(default)]
        query: String,
    },
    /// The CLI sends no `_reqId`.
    #[serde(rename_all = "camelCase")]
    Forget {
        #[serde(default)]
        memory_id: String,
    },
}

/// One memory as replies show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryRow {
    pub id: String,
    pub content: String,
    pub tags: Vec<String>,
    /// The author member's display name (`"unknown"` when it had none).
    pub remembered_by: String,
    /// ISO 8601 UTC with milliseconds.
    pub remembered_at: String,
}

/// `memory_stored{id, memoryId, _reqId}`; `memoryId` (= `id`) is **Beyond**, for the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "memory_stored", rename_all = "camelCase")]
pub struct MemoryStored {
    pub id: String,
    pub memory_id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `memory_results{memories, _reqId}`: the best 20 matches, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "memory_results")]
pub struct MemoryResults {
    pub memories: Vec<MemoryRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// **Beyond:** `memory_recall_result{matches, _reqId}` after every `memory_results`, the
/// same rows, for the daemon (which ignores `memory_results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "memory_recall_result")]
pub struct MemoryRecallResult {
    pub matches: Vec<MemoryRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The reply to `forget`: `ack{id: memoryId, messageId: memoryId, queued:false, _reqId?}`,
/// the same whether anything was forgotten (unknown ids and refusals look alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForgetAck {
    #[serde(rename = "type")]
    pub kind: tag::Ack,
    pub id: String,
    pub message_id: String,
    pub queued: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

impl ForgetAck {
    pub fn new(memory_id: &str, req_id: Option<&str>) -> Self {
        ForgetAck {
            kind: tag::Ack,
            id: memory_id.to_string(),
            message_id: memory_id.to_string(),
            queued: false,
            req_id: req_id.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let forget: MemoryFrame =
            serde_json::from_value(json!({"type": "forget", "memoryId": "m1"})).unwrap();
        assert_eq!(
            forget,
            MemoryFrame::Forget {
                memory_id: "m1".into()
            }
        );
        let remember: MemoryFrame = serde_json::from_value(
            json!({"type": "remember", "content": "c", "tags": null, "_reqId": "r"}),
        )
        .unwrap();
        assert_eq!(
            remember,
            MemoryFrame::Remember {
                content: "c".into(),
                tags: None
            }
        );
        let ack = serde_json::to_value(ForgetAck::new("m1", None)).unwrap();
        assert_eq!(
            ack,
            json!({"type": "ack", "id": "m1", "messageId": "m1", "queued": false})
        );
        let stored = serde_json::to_value(MemoryStored {
            id: "m".into(),
            memory_id: "m".into(),
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            stored,
            json!({"type": "memory_stored", "id": "m", "memoryId": "m", "_reqId": "r"})
        );
    }
}
