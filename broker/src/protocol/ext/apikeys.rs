//! Frames of API keys (extensions §10): `apikey_create`, `apikey_list`, `apikey_revoke`.
//!
//! snake_case `type`s, camelCase fields. Every reply echoes `_reqId` (the CLI matches them
//! tolerantly, §0.2). Fields the CLI may omit default, so that such a frame is refused by
//! the service with `invalid_args` instead of `malformed`.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["apikey_create", "apikey_list", "apikey_revoke"];

/// A client frame of this family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiKeyFrame {
    #[serde(rename_all = "camelCase")]
    ApikeyCreate {
        #[serde(default)]
        label: String,
        #[serde(default)]
        capabilities: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic_scopes: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    ApikeyList {},
    ApikeyRevoke {
        #[serde(default)]
        id: String,
    },
}

/// `apikey_created{id, secret, label, prefix, capabilities, topicScopes|null, createdAt}`:
/// the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "apikey_created", rename_all = "camelCase")]
pub struct ApiKeyCreated {
    pub id: String,
    pub secret: String,
    pub label: String,
    pub prefix: String,
    pub capabilities: Vec<String>,
    pub topic_scopes: Option<Vec<String>>,
    pub created_at: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One key as `apikey_list` shows it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyListing {
    pub id: String,
    pub label: String,
    pub prefix: String,
    pub capabilities: Vec<String>,
    pub topic_scopes: Option<Vec<String>>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub expires_at: Option<String>,
}

/// `apikey_list_response{keys}`, newest first, revoked included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "apikey_list_response")]
pub struct ApiKeyListResponse {
    pub keys: Vec<ApiKeyListing>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `apikey_revoke_response{status, id?, matches?}`: `status` is `revoked` (with the full
/// `id`), `not_found` or `not_unique` (with two matching ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "apikey_revoke_response")]
pub struct ApiKeyRevokeResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<String>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}
