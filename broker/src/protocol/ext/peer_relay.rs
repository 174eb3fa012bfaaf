//! Frames of the peer file and directory relay (extensions §13).
//!
//! A requester asks for a file or a directory listing on another peer's machine; the broker
//! forwards the request to that peer and its answer back, and stores nothing. The forward's
//! `_reqId` is the broker's own relay id (unguessable, bound to the requester and the
//! target), which the serving peer copies into its response; the requester's own `_reqId`
//! comes back on the `*_response_forward`.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[
    "peer_file_request",
    "peer_file_response",
    "peer_dir_request",
    "peer_dir_response",
];

/// A client frame of this family. Every field defaults, so that a frame missing one is
/// refused (or dropped) by the service instead of answered `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayFrame {
    #[serde(rename_all = "camelCase")]
    PeerFileRequest {
        #[serde(default)]
        target_pubkey: String,
        #[serde(default)]
        file_path: String,
    },
    #[serde(rename_all = "camelCase")]
    PeerFileResponse {
        #[serde(default)]
        requester_pubkey: String,
        #[serde(default)]
        file_path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    PeerDirRequest {
        #[serde(default)]
        target_pubkey: String,
        #[serde(default)]
        dir_path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    PeerDirResponse {
        #[serde(default)]
        requester_pubkey: String,
        #[serde(default)]
        dir_path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entries: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// `peer_file_request_forward{requesterPubkey, filePath, _reqId}`, pushed to the target.
/// `_reqId` is the broker's relay id: the target copies it into its `peer_file_response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "peer_file_request_forward",
    rename_all = "camelCase"
)]
pub struct FileRequestForward {
    /// The requester's session key, else its member key.
    pub requester_pubkey: String,
    pub file_path: String,
    #[serde(rename = "_reqId")]
    pub req_id: String,
}

/// `peer_dir_request_forward{requesterPubkey, dirPath, pattern?, _reqId}`, pushed to the
/// target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "peer_dir_request_forward",
    rename_all = "camelCase"
)]
pub struct DirRequestForward {
    pub requester_pubkey: String,
    pub dir_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(rename = "_reqId")]
    pub req_id: String,
}

/// `peer_file_response_forward{filePath, content?, error?, _reqId}`, to the requester: the
/// target's answer, or the broker's when the target did not answer in time or went away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "peer_file_response_forward",
    rename_all = "camelCase"
)]
pub struct FileResponseForward {
    pub file_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `peer_dir_response_forward{dirPath, entries?, error?, _reqId}`, to the requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "peer_dir_response_forward",
    rename_all = "camelCase"
)]
pub struct DirResponseForward {
    pub dir_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_frames_have_the_spec_shapes() {
        let req: RelayFrame = serde_json::from_value(json!({
            "type": "peer_file_request", "targetPubkey": "k", "filePath": "a.txt", "_reqId": "r"
        }))
        .unwrap();
        assert_eq!(
            req,
            RelayFrame::PeerFileRequest {
                target_pubkey: "k".into(),
                file_path: "a.txt".into()
            }
        );
        let fwd = serde_json::to_value(DirRequestForward {
            requester_pubkey: "q".into(),
            dir_path: ".".into(),
            pattern: None,
            req_id: "id".into(),
        })
        .unwrap();
        assert_eq!(
            fwd,
            json!({"type": "peer_dir_request_forward", "requesterPubkey": "q", "dirPath": ".", "_reqId": "id"})
        );
        let back = serde_json::to_value(FileResponseForward {
            file_path: "a.txt".into(),
            content: Some("aGk=".into()),
            error: None,
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            back,
            json!({"type": "peer_file_response_forward", "filePath": "a.txt", "content": "aGk=", "_reqId": "r"})
        );
    }
}
