//! Frames of webhooks (extensions §15): `create_webhook`, `list_webhooks`, `delete_webhook`,
//! and the `push{subtype:"webhook"}` an inbound `POST /hook/<meshId>/<secret>` sends.
//!
//! The CLI matches `webhook_ack` and `webhook_list` tolerantly (§0.2): by `_reqId` when
//! one is known, else the oldest pending request of that type; every reply echoes `_reqId`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["create_webhook", "list_webhooks", "delete_webhook"];

/// A client frame of this family. `name` defaults, so that a frame without it is refused
/// by the service (`invalid_webhook`) instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebhookFrame {
    CreateWebhook {
        #[serde(default)]
        name: String,
    },
    ListWebhooks {},
    DeleteWebhook {
        #[serde(default)]
        name: String,
    },
}

/// `webhook_ack{name, url, secret, _reqId}`: after a create the URL and the secret (shown
/// this once: the broker keeps only its hash); after a delete `url` and `secret` are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "webhook_ack")]
pub struct WebhookAck {
    pub name: String,
    pub url: String,
    pub secret: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One active webhook as `list_webhooks` shows it. **Ours:** the secret is never shown
/// again, so `url` carries it masked (`…/hook/<meshId>/****`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookListing {
    pub name: String,
    pub url: String,
    pub active: bool,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
}

/// `webhook_list{webhooks, _reqId}`: the mesh's active webhooks, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "webhook_list")]
pub struct WebhookList {
    pub webhooks: Vec<WebhookListing>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The `push` an inbound webhook call sends to every live presence of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPush {
    /// Always `"push"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `"webhook"`.
    pub subtype: String,
    /// The webhook's name.
    pub event: String,
    /// The POSTed JSON body.
    pub event_data: Value,
    /// `webhook:<name>`.
    pub sender_pubkey: String,
    /// Always `"next"`.
    pub priority: String,
    /// Always empty.
    pub nonce: String,
    /// **Beyond:** base64 of the JSON body, so that the daemon's inbox shows the payload.
    pub ciphertext: String,
    /// A random UUID (v4 form).
    pub message_id: String,
    pub mesh_id: String,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let create: WebhookFrame =
            serde_json::from_value(json!({"type": "create_webhook", "name": "ci", "_reqId": "r"}))
                .unwrap();
        assert_eq!(create, WebhookFrame::CreateWebhook { name: "ci".into() });
        let nameless: WebhookFrame =
            serde_json::from_value(json!({"type": "create_webhook"})).unwrap();
        assert_eq!(nameless, WebhookFrame::CreateWebhook { name: "".into() });
        let list = serde_json::to_value(WebhookList {
            webhooks: vec![WebhookListing {
                name: "ci".into(),
                url: "u".into(),
                active: true,
                created_at: "t".into(),
            }],
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            list,
            json!({"type": "webhook_list", "_reqId": "r", "webhooks": [
                {"name": "ci", "url": "u", "active": true, "createdAt": "t"}]})
        );
        let ack = serde_json::to_value(WebhookAck {
            name: "ci".into(),
            url: String::new(),
            secret: String::new(),
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            ack,
            json!({"type": "webhook_ack", "name": "ci", "url": "", "secret": ""})
        );
    }
}
