//! The wire protocol: typed client frames, broker frames and their codecs.
//!
//! This layer turns bytes into typed messages and back; it knows no sockets, no tokio and
//! no state, so the load tester and the tests reuse it as it is.

pub mod audit;
pub mod signing;
pub mod target;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Message priority of a `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Now,
    #[default]
    Next,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Now => "now",
            Priority::Next => "next",
            Priority::Low => "low",
        }
    }
}

/// A presence's status; it gates which priorities are pushed now (spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Idle,
    Working,
    Dnd,
}

impl Status {
    /// `idle` takes every priority; `working` and `dnd` take only `now`.
    pub fn admits(self, priority: Priority) -> bool {
        self == Status::Idle || priority == Priority::Now
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Working => "working",
            Status::Dnd => "dnd",
        }
    }
}

/// A group membership `{name, role?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Descriptive fields shared by `hello` and `session_hello`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMeta {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub peer_type: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<Group>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    #[serde(default)]
    pub mesh_id: String,
    #[serde(default)]
    pub member_id: String,
    #[serde(default)]
    pub pubkey: String,
    #[serde(default)]
    pub session_pubkey: Option<String>,
    /// Kept as JSON so that a non-integer is a `timestamp_skew`, not a parse error.
    #[serde(default)]
    pub timestamp: Value,
    #[serde(default)]
    pub signature: String,
    #[serde(flatten)]
    pub meta: PeerMeta,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    #[serde(default)]
    pub session_pubkey: String,
    #[serde(default)]
    pub parent_member_pubkey: String,
    #[serde(default)]
    pub expires_at: Value,
    #[serde(default)]
    pub signature: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionHello {
    #[serde(default)]
    pub mesh_id: String,
    #[serde(default)]
    pub parent_member_id: Option<String>,
    #[serde(default)]
    pub parent_member_pubkey: String,
    #[serde(default)]
    pub session_pubkey: String,
    #[serde(default)]
    pub parent_attestation: Option<Attestation>,
    #[serde(default)]
    pub timestamp: Value,
    #[serde(default)]
    pub signature: String,
    #[serde(flatten)]
    pub meta: PeerMeta,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Send {
    #[serde(rename = "targetSpec")]
    pub target_spec: String,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub ciphertext: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub client_message_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAck {
    #[serde(default)]
    pub client_message_id: Option<String>,
    #[serde(default)]
    pub broker_message_id: Option<String>,
}

/// Who a `disconnect` or `kick` selects.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub stale: Option<u64>,
    #[serde(default)]
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BanRequest {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Every frame a client may send, after decoding.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    Hello(Box<Hello>),
    SessionHello(Box<SessionHello>),
    Send(Box<Send>),
    ClientAck(ClientAck),
    ListPeers,
    SetStatus(Status),
    SetSummary(String),
    SetVisible(bool),
    /// The profile fields as sent (`avatar`, `title`, `bio`, `capabilities`).
    SetProfile(Map<String, Value>),
    SetStats(Value),
    JoinGroup(Group),
    LeaveGroup(String),
    Disconnect(Selection),
    Kick(Selection),
    Ban(BanRequest),
    Unban(BanRequest),
    ListBans,
    /// A `type` this broker does not know.
    Unknown(String),
}

/// One decoded client frame with its correlation id.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub req_id: Option<String>,
    pub message: ClientMessage,
}

/// A frame that could not be decoded; `req_id` is set when the frame got far enough to carry one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub req_id: Option<String>,
    /// The frame's `type`, when it had one.
    pub kind: Option<String>,
    pub message: String,
}

impl Inbound {
    /// Decodes one text frame.
    pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
        let value: Value = serde_json::from_slice(text).map_err(|e| DecodeError {
            req_id: None,
            kind: None,
            message: format!("frame is not JSON: {e}"),
        })?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError {
                req_id: None,
                kind: None,
                message: "frame is not a JSON object".into(),
            });
        };
        let req_id = match obj.remove("_reqId") {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let kind = match obj.get("type") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(DecodeError {
                    req_id,
                    kind: None,
                    message: "frame has no string \"type\"".into(),
                });
            }
        };
        let fail = |e: serde_json::Error| DecodeError {
            req_id: req_id.clone(),
            kind: Some(kind.clone()),
            message: format!("invalid {kind}: {e}"),
        };
        let obj = Value::Object(obj);
        let field = |name: &str| obj.get(name).cloned().unwrap_or(Value::Null);
        let message = match kind.as_str() {
            "hello" => {
                ClientMessage::Hello(Box::new(serde_json::from_value(obj.clone()).map_err(fail)?))
            }
            "session_hello" => ClientMessage::SessionHello(Box::new(
                serde_json::from_value(obj.clone()).map_err(fail)?,
            )),
            "send" => {
                ClientMessage::Send(Box::new(serde_json::from_value(obj.clone()).map_err(fail)?))
            }
            "client_ack" => {
                ClientMessage::ClientAck(serde_json::from_value(obj.clone()).map_err(fail)?)
            }
            "list_peers" => ClientMessage::ListPeers,
            "set_status" => {
                ClientMessage::SetStatus(serde_json::from_value(field("status")).map_err(fail)?)
            }
            "set_summary" => {
                ClientMessage::SetSummary(serde_json::from_value(field("summary")).map_err(fail)?)
            }
            "set_visible" => {
                ClientMessage::SetVisible(serde_json::from_value(field("visible")).map_err(fail)?)
            }
            "set_profile" => {
                let mut profile = Map::new();
                for key in ["avatar", "title", "bio", "capabilities"] {
                    if let Some(v) = obj.get(key) {
                        profile.insert(key.to_string(), v.clone());
                    }
                }
                ClientMessage::SetProfile(profile)
            }
            "set_stats" => match field("stats") {
                v @ Value::Object(_) => ClientMessage::SetStats(v),
                _ => {
                    return Err(DecodeError {
                        req_id,
                        kind: Some(kind),
                        message: "invalid set_stats: stats must be an object".into(),
                    });
                }
            },
            "join_group" => {
                ClientMessage::JoinGroup(serde_json::from_value(obj.clone()).map_err(fail)?)
            }
            "leave_group" => {
                ClientMessage::LeaveGroup(serde_json::from_value(field("name")).map_err(fail)?)
            }
            "disconnect" => {
                ClientMessage::Disconnect(serde_json::from_value(obj.clone()).map_err(fail)?)
            }
            "kick" => ClientMessage::Kick(serde_json::from_value(obj.clone()).map_err(fail)?),
            "ban" => ClientMessage::Ban(serde_json::from_value(obj.clone()).map_err(fail)?),
            "unban" => ClientMessage::Unban(serde_json::from_value(obj.clone()).map_err(fail)?),
            "list_bans" => ClientMessage::ListBans,
            _ => ClientMessage::Unknown(kind),
        };
        Ok(Inbound { req_id, message })
    }
}

/// A `push` of a direct, broadcast or group message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Push<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message_id: &'a str,
    pub mesh_id: &'a str,
    pub sender_pubkey: &'a str,
    pub sender_member_pubkey: &'a str,
    pub sender_name: &'a str,
    pub priority: Priority,
    pub nonce: &'a str,
    pub ciphertext: &'a str,
    pub created_at: String,
    #[serde(rename = "client_message_id", skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<&'a str>,
}

/// The reply to a `send`, `set_visible` or `set_profile`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub message_id: &'a str,
    pub queued: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(rename = "_reqId", skip_serializing_if = "Option::is_none")]
    pub req_id: Option<&'a str>,
}

/// Encodes any serialisable frame; frames are small plain data, so this cannot fail.
pub fn encode<T: Serialize>(frame: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Adds `_reqId` to a JSON object frame when the request carried one.
pub fn with_req_id(mut frame: Value, req_id: Option<&str>) -> Value {
    if let (Some(id), Value::Object(map)) = (req_id, &mut frame) {
        map.insert("_reqId".into(), Value::String(id.to_string()));
    }
    frame
}

/// `error{code, message, _reqId?}`.
pub fn error_frame(code: &str, message: &str, req_id: Option<&str>) -> Bytes {
    encode(&with_req_id(
        json!({"type": "error", "code": code, "message": message}),
        req_id,
    ))
}

/// A `push` with `subtype:"system"` for the events of spec §4.2.
pub fn system_push(mesh_id: &str, event: &str, data: Value, created_at_ms: i64) -> Bytes {
    encode(&json!({
        "type": "push",
        "subtype": "system",
        "event": event,
        "eventData": data,
        "messageId": crate::ids::random_id(24),
        "meshId": mesh_id,
        "senderPubkey": "system",
        "priority": "low",
        "nonce": "",
        "ciphertext": "",
        "createdAt": crate::ids::iso8601_ms(created_at_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_send_with_its_req_id() {
        let f = br#"{"type":"send","_reqId":"r1","targetSpec":"*","priority":"now","nonce":"bg==","ciphertext":"Y3Q="}"#;
        let inbound = Inbound::decode(f).expect("decodes");
        assert_eq!(inbound.req_id.as_deref(), Some("r1"));
        match inbound.message {
            ClientMessage::Send(s) => {
                assert_eq!(s.target_spec, "*");
                assert_eq!(s.priority, Priority::Now);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn priority_defaults_to_next() {
        let f = br#"{"type":"send","targetSpec":"*","nonce":"","ciphertext":""}"#;
        let ClientMessage::Send(s) = Inbound::decode(f).expect("decodes").message else {
            panic!("not a send")
        };
        assert_eq!(s.priority, Priority::Next);
    }

    #[test]
    fn unknown_types_are_kept_and_bad_frames_explain_themselves() {
        let m = Inbound::decode(br#"{"type":"frobnicate"}"#)
            .expect("decodes")
            .message;
        assert!(matches!(m, ClientMessage::Unknown(t) if t == "frobnicate"));
        let e = Inbound::decode(b"not json").unwrap_err();
        assert!(e.message.contains("not JSON"));
        let e = Inbound::decode(br#"{"type":"set_status","status":"asleep","_reqId":"q"}"#)
            .unwrap_err();
        assert_eq!(e.req_id.as_deref(), Some("q"));
        assert_eq!(e.kind.as_deref(), Some("set_status"));
        let e = Inbound::decode(br#"{"_reqId":"z"}"#).unwrap_err();
        assert_eq!(e.req_id.as_deref(), Some("z"));
    }

    #[test]
    fn hello_keeps_metadata_and_raw_timestamp() {
        let f = br#"{"type":"hello","meshId":"m","memberId":"x","pubkey":"p","sessionId":"s","pid":42,"cwd":"/w","timestamp":1.5,"signature":"sig","groups":[{"name":"ops","role":"lead"}]}"#;
        let ClientMessage::Hello(h) = Inbound::decode(f).expect("decodes").message else {
            panic!("not a hello")
        };
        assert_eq!(h.meta.pid, Some(42));
        assert_eq!(h.meta.groups.as_ref().map(Vec::len), Some(1));
        assert!(h.timestamp.as_i64().is_none());
    }

    #[test]
    fn status_gates_priorities() {
        assert!(Status::Idle.admits(Priority::Low));
        assert!(Status::Working.admits(Priority::Now));
        assert!(!Status::Working.admits(Priority::Next));
        assert!(!Status::Dnd.admits(Priority::Low));
    }

    #[test]
    fn ack_omits_absent_fields() {
        let bytes = encode(&Ack {
            kind: "ack",
            id: "",
            message_id: "m",
            queued: true,
            error: None,
            req_id: None,
        });
        assert_eq!(
            &bytes[..],
            br#"{"type":"ack","id":"","messageId":"m","queued":true}"#
        );
    }
}
