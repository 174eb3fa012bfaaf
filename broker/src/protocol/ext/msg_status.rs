//! Frames of delivery status (extensions §7): `message_status`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["message_status"];

/// A client frame of this family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageStatusFrame {
    #[serde(rename_all = "camelCase")]
    MessageStatus {
        /// A whole `messageId`, or a prefix of at least 8 characters.
        #[serde(default)]
        message_id: String,
    },
}

/// One recipient of a `message_status_result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub name: String,
    pub pubkey: String,
    /// `delivered`, `held` or `disconnected`.
    pub status: String,
}

/// `message_status_result{messageId, targetSpec, delivered, deliveredAt|null, recipients, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "message_status_result",
    rename_all = "camelCase"
)]
pub struct MessageStatusResult {
    /// As sent: possibly a prefix.
    pub message_id: String,
    pub target_spec: String,
    pub delivered: bool,
    /// ISO 8601 UTC with milliseconds; `null` while undelivered.
    pub delivered_at: Option<String>,
    pub recipients: Vec<Recipient>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_decodes_as_the_cli_sends_it_and_the_reply_keeps_a_null_delivered_at() {
        let f: MessageStatusFrame =
            serde_json::from_str(r#"{"type":"message_status","messageId":"abcdefgh"}"#).unwrap();
        assert_eq!(
            f,
            MessageStatusFrame::MessageStatus {
                message_id: "abcdefgh".into()
            }
        );
        let r = MessageStatusResult {
            message_id: "abcdefgh".into(),
            target_spec: "*".into(),
            delivered: false,
            delivered_at: None,
            recipients: vec![],
            req_id: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["deliveredAt"], serde_json::Value::Null);
        assert_eq!(v["type"], "message_status_result");
        assert!(v.get("_reqId").is_none());
    }
}
