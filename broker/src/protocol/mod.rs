//! The wire protocol: typed client frames, broker frames and their codecs.
//!
//! This layer turns bytes into typed messages and back; it knows no sockets, no tokio and
//! no state, so the load tester and the tests reuse it as it is. It is the one owner of
//! the wire: client frames ([`ClientFrame`] in an [`Envelope`], decoded by
//! [`Inbound::decode`]), broker frames ([`frames`]), and every close and error code
//! ([`codes`]). Each frame type is `Serialize` and `Deserialize`, so a test client builds
//! a `send` and parses a `hello_ack` with the same types the broker uses.

pub mod audit;
pub mod codes;
pub mod ext;
pub mod frames;
pub mod signing;
pub mod target;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Group>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    #[serde(default)]
    pub mesh_id: String,
    #[serde(default)]
    pub member_id: String,
    #[serde(default)]
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pubkey: Option<String>,
    /// Kept as JSON so that a non-integer is a `timestamp_skew`, not a parse error.
    #[serde(default)]
    pub timestamp: Value,
    #[serde(default)]
    pub signature: String,
    #[serde(flatten)]
    pub meta: PeerMeta,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionHello {
    #[serde(default)]
    pub mesh_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_member_id: Option<String>,
    #[serde(default)]
    pub parent_member_pubkey: String,
    #[serde(default)]
    pub session_pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_attestation: Option<Attestation>,
    #[serde(default)]
    pub timestamp: Value,
    #[serde(default)]
    pub signature: String,
    #[serde(flatten)]
    pub meta: PeerMeta,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Send {
    #[serde(rename = "targetSpec")]
    pub target_spec: String,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_message_id: Option<String>,
}

/// Who a `disconnect` or `kick` selects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanRequest {
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// The profile fields of a `set_profile`; a field sent as `null` is kept as `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProfileFields {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub avatar: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub title: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub bio: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub capabilities: Option<Value>,
}

impl ProfileFields {
    fn into_map(self) -> Map<String, Value> {
        let fields = [
            ("avatar", self.avatar),
            ("title", self.title),
            ("bio", self.bio),
            ("capabilities", self.capabilities),
        ];
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect()
    }
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `_reqId` as the broker echoes it: a string, or a number as its text; anything else is
/// no correlation id.
fn req_id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A client frame as it is on the wire, tagged by its `type`: what [`Inbound::decode`]
/// reads, and what a test client or the load tester serialises (inside an [`Envelope`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Box<Hello>),
    SessionHello(Box<SessionHello>),
    Send(Box<Send>),
    ClientAck(ClientAck),
    ListPeers,
    SetStatus {
        status: Status,
    },
    SetSummary {
        summary: String,
    },
    SetVisible {
        visible: bool,
    },
    SetProfile(ProfileFields),
    SetStats {
        /// Must be an object; anything else is refused `malformed`.
        #[serde(default)]
        stats: Value,
    },
    JoinGroup(Group),
    LeaveGroup {
        name: String,
    },
    Disconnect(Selection),
    Kick(Selection),
    Ban(BanRequest),
    Unban(BanRequest),
    ListBans,
    /// Any other `type` (its text is read again, on this path only).
    #[serde(other, skip_serializing)]
    Unknown,
}

/// A client frame with its correlation id, as one JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(
        rename = "_reqId",
        default,
        deserialize_with = "req_id_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub req_id: Option<String>,
    #[serde(flatten)]
    pub frame: ClientFrame,
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

/// The two fields read again from a frame that did not decode (or of an unknown type),
/// skipping everything else without building it.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(rename = "_reqId", default, deserialize_with = "req_id_text")]
    req_id: Option<String>,
}

impl Inbound {
    /// Decodes one text frame in one pass, straight into its typed frame. Only a frame
    /// that fails (or has an unknown `type`) is looked at again, to explain itself.
    pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
        let (req_id, frame) = match serde_json::from_slice::<Envelope>(text) {
            Ok(Envelope {
                req_id,
                frame: ClientFrame::Unknown,
            }) => {
                let kind = Self::head(text)?.1;
                return Ok(Inbound {
                    req_id,
                    message: ClientMessage::Unknown(kind),
                });
            }
            Ok(e) => (e.req_id, e.frame),
            Err(e) => {
                let (req_id, kind) = Self::head(text)?;
                return Err(DecodeError {
                    req_id,
                    message: format!("invalid {kind}: {e}"),
                    kind: Some(kind),
                });
            }
        };
        let message = match frame {
            ClientFrame::Hello(h) => ClientMessage::Hello(h),
            ClientFrame::SessionHello(h) => ClientMessage::SessionHello(h),
            ClientFrame::Send(s) => ClientMessage::Send(s),
            ClientFrame::ClientAck(a) => ClientMessage::ClientAck(a),
            ClientFrame::ListPeers => ClientMessage::ListPeers,
            ClientFrame::SetStatus { status } => ClientMessage::SetStatus(status),
            ClientFrame::SetSummary { summary } => ClientMessage::SetSummary(summary),
            ClientFrame::SetVisible { visible } => ClientMessage::SetVisible(visible),
            ClientFrame::SetProfile(p) => ClientMessage::SetProfile(p.into_map()),
            ClientFrame::SetStats { stats } => match stats {
                v @ Value::Object(_) => ClientMessage::SetStats(v),
                _ => {
                    return Err(DecodeError {
                        req_id,
                        kind: Some("set_stats".into()),
                        message: "invalid set_stats: stats must be an object".into(),
                    });
                }
            },
            ClientFrame::JoinGroup(g) => ClientMessage::JoinGroup(g),
            ClientFrame::LeaveGroup { name } => ClientMessage::LeaveGroup(name),
            ClientFrame::Disconnect(s) => ClientMessage::Disconnect(s),
            ClientFrame::Kick(s) => ClientMessage::Kick(s),
            ClientFrame::Ban(b) => ClientMessage::Ban(b),
            ClientFrame::Unban(b) => ClientMessage::Unban(b),
            ClientFrame::ListBans => ClientMessage::ListBans,
            ClientFrame::Unknown => unreachable!("handled above"),
        };
        Ok(Inbound { req_id, message })
    }

    /// `_reqId` and `type` of a frame that is a JSON object with a string `type`, else the
    /// error that says what it is not.
    fn head(text: &[u8]) -> Result<(Option<String>, String), DecodeError> {
        let fail = |req_id, message: String| DecodeError {
            req_id,
            kind: None,
            message,
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            return Err(fail(None, format!("frame is not JSON: {e}")));
        }
        // (A struct also deserialises from an array: only an object is a frame.)
        let head = match text.trim_ascii_start().first() {
            Some(b'{') => serde_json::from_slice::<Head>(text).ok(),
            _ => None,
        };
        let head = head.ok_or_else(|| fail(None, "frame is not a JSON object".into()))?;
        match head.kind {
            Some(Value::String(kind)) => Ok((head.req_id, kind)),
            _ => Err(fail(head.req_id, "frame has no string \"type\"".into())),
        }
    }
}

pub use frames::{Ack, ErrorFrame, Push, SystemEvent, SystemPush};

/// Encodes any serialisable frame; frames are small plain data, so this cannot fail.
pub fn encode<T: Serialize>(frame: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).unwrap_or_else(|_| b"{}".to_vec()))
}

/// `error{code, message, _reqId?}`.
pub fn error_frame(code: &str, message: &str, req_id: Option<&str>) -> Bytes {
    encode(&ErrorFrame::new(code, message, req_id))
}

/// A `push` with `subtype:"system"` for the events of spec §4.2.
pub fn system_push(mesh_id: &str, event: SystemEvent, created_at_ms: i64) -> Bytes {
    encode(&SystemPush::new(mesh_id, event, created_at_ms))
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
    fn decode_keeps_null_profile_fields_and_refuses_bad_stats() {
        let f = br#"{"type":"set_profile","title":"Dr","bio":null,"other":1}"#;
        let ClientMessage::SetProfile(p) = Inbound::decode(f).expect("decodes").message else {
            panic!("not a set_profile")
        };
        assert_eq!(
            Value::Object(p),
            serde_json::json!({"title": "Dr", "bio": null})
        );
        let e = Inbound::decode(br#"{"type":"set_stats","stats":3,"_reqId":7}"#).unwrap_err();
        assert_eq!(e.req_id.as_deref(), Some("7"));
        assert_eq!(e.message, "invalid set_stats: stats must be an object");
        let e = Inbound::decode(br#"{"type":"set_stats"}"#).unwrap_err();
        assert_eq!(e.message, "invalid set_stats: stats must be an object");
    }

    #[test]
    fn decode_errors_say_what_the_frame_is_not() {
        let e = Inbound::decode(b"[1,2]").unwrap_err();
        assert_eq!(e.message, "frame is not a JSON object");
        assert_eq!(e.req_id, None);
        let e = Inbound::decode(br#"{"type":7,"_reqId":"q"}"#).unwrap_err();
        assert_eq!(e.message, "frame has no string \"type\"");
        assert_eq!(e.req_id.as_deref(), Some("q"));
        let e = Inbound::decode(br#"{"type":"send","_reqId":"s"}"#).unwrap_err();
        assert!(e.message.starts_with("invalid send: "), "{}", e.message);
        assert_eq!(e.kind.as_deref(), Some("send"));
        assert_eq!(e.req_id.as_deref(), Some("s"));
        // A `_reqId` that is neither string nor number is no correlation id.
        let i = Inbound::decode(br#"{"type":"list_peers","_reqId":true}"#).expect("decodes");
        assert_eq!(i.req_id, None);
        let i = Inbound::decode(br#"{"_reqId":12,"type":"frobnicate"}"#).expect("decodes");
        assert_eq!(i.req_id.as_deref(), Some("12"));
        assert!(matches!(i.message, ClientMessage::Unknown(t) if t == "frobnicate"));
    }

    #[test]
    fn client_frames_serialise_to_what_decode_reads() {
        let frame = Envelope {
            req_id: Some("r9".into()),
            frame: ClientFrame::Send(Box::new(Send {
                target_spec: "*".into(),
                priority: Priority::Low,
                nonce: "bg==".into(),
                ciphertext: "Y3Q=".into(),
                id: None,
                client_message_id: Some("c1".into()),
            })),
        };
        let v: Value = serde_json::from_slice(&encode(&frame)).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"type": "send", "_reqId": "r9", "targetSpec": "*", "priority": "low",
                "nonce": "bg==", "ciphertext": "Y3Q=", "client_message_id": "c1"})
        );
        let inbound = Inbound::decode(&encode(&frame)).expect("decodes");
        assert_eq!(inbound.req_id.as_deref(), Some("r9"));
        assert!(
            matches!(inbound.message, ClientMessage::Send(s) if s.client_message_id.as_deref() == Some("c1"))
        );
        let v: Value = serde_json::from_slice(&encode(&Envelope {
            req_id: None,
            frame: ClientFrame::SetStatus {
                status: Status::Dnd,
            },
        }))
        .expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"type": "set_status", "status": "dnd"})
        );
    }
}
