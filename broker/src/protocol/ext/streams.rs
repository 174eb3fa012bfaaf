//! Frames of streams (extensions §4): `create_stream`, `subscribe`, `unsubscribe`,
//! `publish`, `list_streams`, and the `stream_data` push.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag, so decoding a frame of another type fails.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[
    "create_stream",
    "subscribe",
    "unsubscribe",
    "publish",
    "list_streams",
];

/// A client frame of this family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamFrame {
    CreateStream {
        name: String,
    },
    Subscribe {
        stream: String,
    },
    Unsubscribe {
        stream: String,
    },
    Publish {
        stream: String,
        /// Any JSON; `null` when absent.
        #[serde(default)]
        data: Value,
    },
    ListStreams,
}

/// `stream_created{id, name, _reqId}` (also for a name that existed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "stream_created")]
pub struct StreamCreated {
    pub id: String,
    pub name: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `subscribed{stream, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "subscribed")]
pub struct Subscribed {
    pub stream: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One row of a `stream_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRow {
    pub id: String,
    pub name: String,
    /// The creator's display name, or `""`.
    pub created_by: String,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
    /// Presences subscribed to the stream, on every replica.
    pub subscriber_count: usize,
}

/// `stream_list{streams, _reqId}`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "stream_list")]
pub struct StreamList {
    pub streams: Vec<StreamRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `stream_data{stream, data, publishedBy}`, pushed to the stream's subscribers (no `_reqId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "stream_data", rename_all = "camelCase")]
pub struct StreamData {
    pub stream: String,
    pub data: Value,
    pub published_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_wire_names() {
        let publish: StreamFrame =
            serde_json::from_str(r#"{"type":"publish","stream":"s","data":{"a":1}}"#).unwrap();
        assert_eq!(
            publish,
            StreamFrame::Publish {
                stream: "s".into(),
                data: serde_json::json!({"a":1})
            }
        );
        let list: StreamFrame =
            serde_json::from_str(r#"{"type":"list_streams","_reqId":"r"}"#).unwrap();
        assert_eq!(list, StreamFrame::ListStreams);
        let data = serde_json::to_value(StreamData {
            stream: "s".into(),
            data: Value::Null,
            published_by: "alice".into(),
        })
        .unwrap();
        assert_eq!(
            data,
            serde_json::json!({"type":"stream_data","stream":"s","data":null,"publishedBy":"alice"})
        );
        let row = serde_json::to_value(StreamRow {
            id: "i".into(),
            name: "n".into(),
            created_by: String::new(),
            created_at: "t".into(),
            subscriber_count: 2,
        })
        .unwrap();
        assert_eq!(row["subscriberCount"], 2);
        assert_eq!(row["createdBy"], "");
    }
}
