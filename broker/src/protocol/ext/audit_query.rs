//! Frames of audit queries (extensions §8): `audit_query`, `audit_verify`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["audit_query", "audit_verify"];

/// A client frame of this family; every field may be omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditFrame {
    AuditQuery(AuditQuery),
    AuditVerify {},
}

/// `audit_query{limit?=50, offset?=0, eventType?}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// One entry of an `audit_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    /// The entry's position in the mesh's chain.
    pub id: i64,
    pub event_type: String,
    /// The actor's display name, else its member id, else `"system"`.
    pub actor: String,
    pub payload: Value,
    pub hash: String,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
}

/// `audit_result{entries, total, _reqId}`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "audit_result")]
pub struct AuditResult {
    pub entries: Vec<AuditRow>,
    /// Entries matching the filter, over all pages.
    pub total: i64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `audit_verify_result{valid, entries, brokenAt?, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "audit_verify_result", rename_all = "camelCase")]
pub struct AuditVerifyResult {
    pub valid: bool,
    pub entries: usize,
    /// The id of the first entry whose link or hash does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frames_decode_with_every_field_omitted() {
        let q: AuditFrame = serde_json::from_str(r#"{"type":"audit_query"}"#).unwrap();
        assert_eq!(q, AuditFrame::AuditQuery(AuditQuery::default()));
        let v: AuditFrame =
            serde_json::from_str(r#"{"type":"audit_verify","_reqId":"x"}"#).unwrap();
        assert_eq!(v, AuditFrame::AuditVerify {});
        let q: AuditFrame =
            serde_json::from_str(r#"{"type":"audit_query","limit":5,"eventType":"peer_joined"}"#)
                .unwrap();
        assert_eq!(
            q,
            AuditFrame::AuditQuery(AuditQuery {
                limit: Some(5),
                offset: None,
                event_type: Some("peer_joined".into())
            })
        );
    }

    #[test]
    fn the_verify_result_omits_broken_at_when_valid() {
        let r = AuditVerifyResult {
            valid: true,
            entries: 3,
            broken_at: None,
            req_id: Some("r".into()),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"type": "audit_verify_result", "valid": true, "entries": 3, "_reqId": "r"})
        );
    }
}
