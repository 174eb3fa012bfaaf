//! Frames of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`, and the
//! `push{subtype:"system", event:"watch_triggered"}` a change sends.
//!
//! The CLI matches `watch_ack` and `watch_list_result` strictly by `_reqId` (§0.2); every
//! reply echoes it. Fields are as the CLI sends them: `notify_on` in snake_case, the rest
//! single words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["watch", "unwatch", "watch_list"];

/// A client frame of this family. Every field defaults, so that a frame missing one is
/// refused by the service (`invalid_args`) instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchFrame {
    Watch {
        #[serde(default)]
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extract: Option<String>,
        /// Seconds; any JSON number (a fraction is truncated), or absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notify_on: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    Unwatch {
        #[serde(default, rename = "watchId")]
        watch_id: String,
    },
    WatchList {},
}

/// `watch_ack{watchId, id, url, mode, interval, _reqId}`. After an `unwatch` of an unknown
/// (or foreign) id `url` and `mode` are empty; `interval` is 0 after every `unwatch`.
/// **Beyond:** `id` (= `watchId`), which the CLI prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "watch_ack")]
pub struct WatchAck {
    #[serde(rename = "watchId")]
    pub watch_id: String,
    pub id: String,
    pub url: String,
    pub mode: String,
    pub interval: u32,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One watch of the caller's member as `watch_list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchListing {
    pub id: String,
    pub url: String,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub interval: u32,
    /// The observed value (the same text as `lastValue`; `null` before the first check).
    pub last_hash: Option<String>,
    pub last_value: Option<String>,
    /// ISO 8601 UTC with milliseconds; absent before the first successful check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    pub created_at: String,
}

/// `watch_list_result{watches, _reqId}`: the caller's member's watches, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "watch_list_result")]
pub struct WatchListResult {
    pub watches: Vec<WatchListing>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The `eventData` of `watch_triggered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchTriggered {
    pub watch_id: String,
    pub url: String,
    pub label: Option<String>,
    pub mode: String,
    pub old_value: Option<String>,
    pub new_value: String,
}

/// `push{subtype:"system", event:"watch_triggered", eventData, priority:"now"}` to one live
/// presence of the watch's member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchPush {
    /// Always `"push"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `"system"`.
    pub subtype: String,
    /// Always `"watch_triggered"`.
    pub event: String,
    pub event_data: WatchTriggered,
    pub message_id: String,
    pub mesh_id: String,
    /// Always `"system"`.
    pub sender_pubkey: String,
    /// Always `"now"`.
    pub priority: String,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let w: WatchFrame = serde_json::from_value(json!({
            "type": "watch", "url": "http://x/", "mode": "json", "extract": "$.a.b",
            "interval": 10, "notify_on": "match:up", "headers": {"X": "1"}, "label": "l",
            "_reqId": "r"
        }))
        .unwrap();
        let WatchFrame::Watch {
            url,
            interval,
            notify_on,
            headers,
            ..
        } = w
        else {
            panic!("watch");
        };
        assert_eq!(url, "http://x/");
        assert_eq!(interval, Some(10.0));
        assert_eq!(notify_on.as_deref(), Some("match:up"));
        assert_eq!(headers.unwrap()["X"], "1");
        let un: WatchFrame =
            serde_json::from_value(json!({"type": "unwatch", "watchId": "w_1"})).unwrap();
        assert_eq!(
            un,
            WatchFrame::Unwatch {
                watch_id: "w_1".into()
            }
        );
        let ack = serde_json::to_value(WatchAck {
            watch_id: "w_1".into(),
            id: "w_1".into(),
            url: String::new(),
            mode: String::new(),
            interval: 0,
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            ack,
            json!({"type": "watch_ack", "watchId": "w_1", "id": "w_1", "url": "", "mode": "",
                   "interval": 0, "_reqId": "r"})
        );
    }
}
