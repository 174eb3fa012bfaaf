//! Frames of files (extensions §19.1): `get_file`, `list_files`, `file_status`,
//! `grant_file_access`, `delete_file` (the upload and download are HTTP:
//! `server/files.rs`).
//!
//! camelCase on the wire. The CLI matches `file_url`, `file_list`, `file_status_result` and
//! `grant_file_access_ok` tolerantly (§0.2): each echoes `_reqId` when the request had one.
//! `delete_file` is answered with the core `ack{id, messageId, queued:false}`.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[
    "get_file",
    "list_files",
    "file_status",
    "grant_file_access",
    "delete_file",
];

/// A client frame of this family. Fields the CLI may omit default, so that such a frame is
/// refused by the service (`invalid`, `not_found`) instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FileFrame {
    #[serde(rename_all = "camelCase")]
    GetFile {
        #[serde(default)]
        file_id: String,
    },
    #[serde(rename_all = "camelCase")]
    ListFiles {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    FileStatus {
        #[serde(default)]
        file_id: String,
    },
    #[serde(rename_all = "camelCase")]
    GrantFileAccess {
        #[serde(default)]
        file_id: String,
        #[serde(default)]
        peer_pubkey: String,
        #[serde(default)]
        sealed_key: String,
    },
    #[serde(rename_all = "camelCase")]
    DeleteFile {
        #[serde(default)]
        file_id: String,
    },
}

/// `file_url{fileId, url, name, encrypted, sealedKey?, _reqId}`: `url` is a broker-proxied
/// download URL with a short-lived signed token (valid on every replica).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "file_url", rename_all = "camelCase")]
pub struct FileUrl {
    pub file_id: String,
    pub url: String,
    pub name: String,
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One file as `list_files` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub id: String,
    pub name: String,
    pub size: i64,
    pub tags: Vec<String>,
    /// The uploader's display name.
    pub uploaded_by: String,
    /// ISO 8601 UTC with milliseconds.
    pub uploaded_at: String,
    pub persistent: bool,
    pub encrypted: bool,
}

/// `file_list{files, _reqId}`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "file_list")]
pub struct FileList {
    pub files: Vec<FileEntry>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One access of a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAccessEntry {
    pub peer_name: String,
    /// ISO 8601 UTC with milliseconds.
    pub accessed_at: String,
}

/// `file_status_result{fileId, accesses, _reqId}`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "file_status_result", rename_all = "camelCase")]
pub struct FileStatusResult {
    pub file_id: String,
    pub accesses: Vec<FileAccessEntry>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `grant_file_access_ok{fileId, peerPubkey, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "grant_file_access_ok",
    rename_all = "camelCase"
)]
pub struct GrantFileAccessOk {
    pub file_id: String,
    pub peer_pubkey: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let f: FileFrame = serde_json::from_value(json!({
            "type": "grant_file_access", "fileId": "F", "peerPubkey": "P", "sealedKey": "S"
        }))
        .unwrap();
        assert_eq!(
            f,
            FileFrame::GrantFileAccess {
                file_id: "F".into(),
                peer_pubkey: "P".into(),
                sealed_key: "S".into()
            }
        );
        let list: FileFrame = serde_json::from_value(json!({"type": "list_files"})).unwrap();
        assert_eq!(
            list,
            FileFrame::ListFiles {
                query: None,
                from: None
            }
        );
        let url = serde_json::to_value(FileUrl {
            file_id: "F".into(),
            url: "http://h/download/F".into(),
            name: "n".into(),
            encrypted: false,
            sealed_key: None,
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            url,
            json!({"type": "file_url", "fileId": "F", "url": "http://h/download/F",
                   "name": "n", "encrypted": false})
        );
        assert!(serde_json::from_value::<FileList>(url).is_err());
    }
}
