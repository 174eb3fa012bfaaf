//! Frames of contexts (extensions §11): `share_context`, `get_context`, `list_contexts`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! writes its `type` as a serde tag (serde does not check it when decoding a struct, so
//! tests compare `type` themselves). Sharing
//! also pushes a [`StateChange`](super::state::StateChange) (`key:"_context:<name>"`) to
//! every other presence of the mesh; it is not stored as state.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["share_context", "get_context", "list_contexts"];

/// A client frame of this family. Fields the CLI may omit default (the lists may also be
/// `null`), so that such a frame is refused by the service with a clear error instead of
/// `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContextFrame {
    #[serde(rename_all = "camelCase")]
    ShareContext {
        #[serde(default)]
        summary: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files_read: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_findings: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Vec<String>>,
    },
    GetContext {
        #[serde(default)]
        query: String,
    },
    ListContexts {},
}

/// `context_shared{id, _reqId?}`, the reply to `share_context` (the reference sends no
/// `_reqId`; **Beyond:** it is echoed). `id` is the member's record, the same across its
/// shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "context_shared")]
pub struct ContextShared {
    pub id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One context as `get_context` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextRow {
    /// The member's display name (`"unknown"` when it had none).
    pub peer_name: String,
    pub summary: String,
    pub files_read: Vec<String>,
    pub key_findings: Vec<String>,
    pub tags: Vec<String>,
    /// ISO 8601 UTC with milliseconds.
    pub updated_at: String,
}

/// `context_results{contexts, _reqId}`: the newest 20 matches of `get_context`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "context_results")]
pub struct ContextResults {
    pub contexts: Vec<ContextRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One context as `list_contexts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextSummary {
    pub peer_name: String,
    pub summary: String,
    pub tags: Vec<String>,
    pub updated_at: String,
}

/// `context_list{contexts, _reqId}`: every context of the mesh, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "context_list")]
pub struct ContextList {
    pub contexts: Vec<ContextSummary>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The `state_change` key a share is announced under.
pub fn context_key(display_name: &str) -> String {
    format!("_context:{display_name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let share: ContextFrame = serde_json::from_value(json!({
            "type": "share_context", "summary": "s", "filesRead": ["a.rs"], "tags": null
        }))
        .unwrap();
        assert_eq!(
            share,
            ContextFrame::ShareContext {
                summary: "s".into(),
                files_read: Some(vec!["a.rs".into()]),
                key_findings: None,
                tags: None,
            }
        );
        let list: ContextFrame =
            serde_json::from_value(json!({"type": "list_contexts", "_reqId": "r"})).unwrap();
        assert_eq!(list, ContextFrame::ListContexts {});
        let shared = serde_json::to_value(ContextShared {
            id: "i".into(),
            req_id: None,
        })
        .unwrap();
        assert_eq!(shared, json!({"type": "context_shared", "id": "i"}));
        let results = serde_json::to_value(ContextResults {
            contexts: vec![ContextRow {
                peer_name: "alice".into(),
                summary: "s".into(),
                files_read: vec![],
                key_findings: vec!["k".into()],
                tags: vec![],
                updated_at: "t".into(),
            }],
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            results,
            json!({"type": "context_results", "_reqId": "r", "contexts": [{
                "peerName": "alice", "summary": "s", "filesRead": [], "keyFindings": ["k"],
                "tags": [], "updatedAt": "t"}]})
        );
        assert!(serde_json::from_value::<ContextShared>(results).is_err());
    }
}
