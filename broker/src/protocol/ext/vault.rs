//! Frames of the vault (extensions §16): `vault_set`, `vault_get`, `vault_list`,
//! `vault_delete`.
//!
//! snake_case on the wire. The CLI matches every reply with a strict `_reqId` (§0.2), so
//! each reply echoes it. The blobs are opaque to the broker: it checks their shape (base64,
//! the nonce and sealed-key sizes of libsodium's `crypto_secretbox` and `crypto_box_seal`)
//! and stores them as given.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["vault_set", "vault_get", "vault_list", "vault_delete"];

/// A client frame of this family. Fields the CLI may omit default, so that such a frame
/// is refused by the service with `vault_error` instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VaultFrame {
    VaultSet {
        #[serde(default)]
        key: String,
        #[serde(default)]
        ciphertext: String,
        #[serde(default)]
        nonce: String,
        #[serde(default)]
        sealed_key: String,
        #[serde(default)]
        entry_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount_path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    VaultGet {
        #[serde(default)]
        keys: Vec<String>,
    },
    VaultList {},
    VaultDelete {
        #[serde(default)]
        key: String,
    },
}

/// `vault_ack{key, action, _reqId}`: `action` is `"stored"` (for `vault_set`),
/// `"deleted"` or `"not_found"` (for `vault_delete`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "vault_ack")]
pub struct VaultAck {
    pub key: String,
    pub action: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One entry as `vault_get` returns it: the blobs as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultSecret {
    pub key: String,
    pub ciphertext: String,
    pub nonce: String,
    pub sealed_key: String,
    pub entry_type: String,
    pub mount_path: Option<String>,
}

/// `vault_get_result{entries, _reqId}`: the caller's entries among the requested keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "vault_get_result")]
pub struct VaultGetResult {
    pub entries: Vec<VaultSecret>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One entry as `vault_list` shows it (no blobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultListing {
    pub key: String,
    pub entry_type: String,
    pub mount_path: Option<String>,
    pub description: Option<String>,
    /// ISO 8601 UTC with milliseconds.
    pub updated_at: String,
}

/// `vault_list_result{entries, _reqId}`: the caller's entries, ordered by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "vault_list_result")]
pub struct VaultListResult {
    pub entries: Vec<VaultListing>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let set: VaultFrame = serde_json::from_value(json!({
            "type": "vault_set", "key": "K", "ciphertext": "c", "nonce": "n",
            "sealed_key": "s", "entry_type": "env", "_reqId": "r"
        }))
        .unwrap();
        assert_eq!(
            set,
            VaultFrame::VaultSet {
                key: "K".into(),
                ciphertext: "c".into(),
                nonce: "n".into(),
                sealed_key: "s".into(),
                entry_type: "env".into(),
                mount_path: None,
                description: None,
            }
        );
        let list = serde_json::to_value(VaultListResult {
            entries: vec![VaultListing {
                key: "K".into(),
                entry_type: "file".into(),
                mount_path: Some("/m".into()),
                description: None,
                updated_at: "t".into(),
            }],
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            list,
            json!({"type": "vault_list_result", "_reqId": "r", "entries": [{"key": "K",
                   "entry_type": "file", "mount_path": "/m", "description": null,
                   "updated_at": "t"}]})
        );
        assert!(serde_json::from_value::<VaultAck>(list).is_err());
    }
}
