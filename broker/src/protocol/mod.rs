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

/// The first pass of [`Inbound::decode`]: only `type` (borrowed from the frame when it has
/// no escapes) and `_reqId`; every other field is skipped without being built.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "_reqId", default, deserialize_with = "req_id_text")]
    req_id: Option<String>,
}

/// The one pass of the hot frames, `send` and `client_ack`: `type`, `_reqId` and the
/// fields of both, with the field rules of [`Send`] and [`ClientAck`]. Whatever it
/// refuses (a field of the other frame with a wrong type, a missing `targetSpec`) takes
/// the two passes instead, so it never changes an outcome, only its cost.
#[derive(Deserialize)]
struct Hot<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "_reqId", default, deserialize_with = "req_id_text")]
    req_id: Option<String>,
    #[serde(rename = "targetSpec", default)]
    target_spec: Option<String>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    ciphertext: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    client_message_id: Option<String>,
    #[serde(rename = "clientMessageId", default)]
    ack_client_message_id: Option<String>,
    #[serde(rename = "brokerMessageId", default)]
    ack_broker_message_id: Option<String>,
}

/// The bodies of the struct variants of [`ClientFrame`], with the same field rules, for
/// the second pass of [`Inbound::decode`].
mod body {
    use super::{Status, Value};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct SetStatus {
        pub status: Status,
    }
    #[derive(Deserialize)]
    pub(super) struct SetSummary {
        pub summary: String,
    }
    #[derive(Deserialize)]
    pub(super) struct SetVisible {
        pub visible: bool,
    }
    #[derive(Deserialize)]
    pub(super) struct SetStats {
        #[serde(default)]
        pub stats: Value,
    }
    #[derive(Deserialize)]
    pub(super) struct LeaveGroup {
        pub name: String,
    }
}

impl Inbound {
    /// Decodes one text frame. A first pass reads only `type` and `_reqId`; the second
    /// deserialises the same bytes straight into the typed frame of that `type` (no
    /// intermediate `Value` or buffered map). A frame either pass refuses is decoded again
    /// by [`Inbound::decode_buffered`], the reference decoder, so that every error (and
    /// its text) is exactly what that decoder says.
    ///
    /// One difference: the buffered decoder reads an integer `type` as the index of a
    /// variant (`{"type":7,"visible":true}` was a `set_visible`); a `type` that is not a
    /// string is refused `frame has no string "type"`, as the protocol says.
    pub fn decode(text: &[u8]) -> Result<Inbound, DecodeError> {
        Self::decode_typed(text).unwrap_or_else(|| {
            let decoded = Self::decode_buffered(text)?;
            Self::head(text)?;
            Ok(decoded)
        })
    }

    /// The two passes of [`Inbound::decode`]; `None` when the frame does not decode (the
    /// caller then asks the reference decoder why).
    fn decode_typed(text: &[u8]) -> Option<Result<Inbound, DecodeError>> {
        fn typed<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Option<T> {
            serde_json::from_slice(text).ok()
        }
        // (A struct also deserialises from an array: only an object is a frame.)
        if text.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        if let Some(hot) = Self::decode_hot(text) {
            return Some(Ok(hot));
        }
        let Peek { kind, req_id } = typed(text)?;
        let message = match &*kind {
            "hello" => ClientMessage::Hello(typed(text)?),
            "session_hello" => ClientMessage::SessionHello(typed(text)?),
            "send" => ClientMessage::Send(typed(text)?),
            "client_ack" => ClientMessage::ClientAck(typed(text)?),
            "list_peers" => ClientMessage::ListPeers,
            "set_status" => ClientMessage::SetStatus(typed::<body::SetStatus>(text)?.status),
            "set_summary" => ClientMessage::SetSummary(typed::<body::SetSummary>(text)?.summary),
            "set_visible" => ClientMessage::SetVisible(typed::<body::SetVisible>(text)?.visible),
            "set_profile" => ClientMessage::SetProfile(typed::<ProfileFields>(text)?.into_map()),
            "set_stats" => match typed::<body::SetStats>(text)?.stats {
                v @ Value::Object(_) => ClientMessage::SetStats(v),
                _ => return None,
            },
            "join_group" => ClientMessage::JoinGroup(typed(text)?),
            "leave_group" => ClientMessage::LeaveGroup(typed::<body::LeaveGroup>(text)?.name),
            "disconnect" => ClientMessage::Disconnect(typed(text)?),
            "kick" => ClientMessage::Kick(typed(text)?),
            "ban" => ClientMessage::Ban(typed(text)?),
            "unban" => ClientMessage::Unban(typed(text)?),
            "list_bans" => ClientMessage::ListBans,
            _ => ClientMessage::Unknown(kind.into_owned()),
        };
        Some(Ok(Inbound { req_id, message }))
    }

    /// A `send` or `client_ack` in one pass ([`Hot`]); `None` for anything else.
    fn decode_hot(text: &[u8]) -> Option<Inbound> {
        let hot: Hot = serde_json::from_slice(text).ok()?;
        let message = match &*hot.kind {
            "send" => ClientMessage::Send(Box::new(Send {
                target_spec: hot.target_spec?,
                priority: hot.priority,
                nonce: hot.nonce,
                ciphertext: hot.ciphertext,
                id: hot.id,
                client_message_id: hot.client_message_id,
            })),
            "client_ack" => ClientMessage::ClientAck(ClientAck {
                client_message_id: hot.ack_client_message_id,
                broker_message_id: hot.ack_broker_message_id,
            }),
            _ => return None,
        };
        Some(Inbound {
            req_id: hot.req_id,
            message,
        })
    }

    /// The reference decoder: the frame through [`Envelope`] (serde buffers it, twice:
    /// the flattened envelope and the tagged enum). Only frames [`Inbound::decode`]
    /// refuses come here; it says why, and is the equivalence oracle of the unit tests.
    pub fn decode_buffered(text: &[u8]) -> Result<Inbound, DecodeError> {
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

    /// Frames around every core `type`: valid ones, each field deleted or replaced by a
    /// value of every JSON kind, and envelopes that are wrong in themselves.
    fn corpus() -> Vec<String> {
        use serde_json::json;
        let valid = [
            json!({"type": "hello", "meshId": "m", "memberId": "x", "pubkey": "p",
                "sessionPubkey": "sp", "timestamp": 17, "signature": "s", "displayName": "d",
                "sessionId": "i", "pid": 4, "cwd": "/", "hostname": "h", "peerType": "ai",
                "channel": "c", "model": "o", "groups": [{"name": "g", "role": "r"}]}),
            json!({"type": "session_hello", "meshId": "m", "parentMemberId": "x",
                "parentMemberPubkey": "pp", "sessionPubkey": "sp", "timestamp": 1.5,
                "signature": "s", "parentAttestation": {"sessionPubkey": "a",
                "parentMemberPubkey": "b", "expiresAt": 9, "signature": "c"}, "pid": 1}),
            json!({"type": "send", "_reqId": "r", "targetSpec": "*", "priority": "now",
                "nonce": "n", "ciphertext": "c", "id": "i", "client_message_id": "k"}),
            json!({"type": "client_ack", "clientMessageId": "c", "brokerMessageId": "b"}),
            json!({"type": "list_peers", "_reqId": 3, "extra": [1, {"a": null}]}),
            json!({"type": "set_status", "status": "dnd"}),
            json!({"type": "set_summary", "summary": "s"}),
            json!({"type": "set_visible", "visible": false}),
            json!({"type": "set_profile", "avatar": "a", "title": null, "bio": 3,
                "capabilities": ["x"], "other": 1}),
            json!({"type": "set_stats", "stats": {"a": 1}}),
            json!({"type": "join_group", "name": "g", "role": "r"}),
            json!({"type": "leave_group", "name": "g"}),
            json!({"type": "disconnect", "target": "t", "stale": 5, "all": true}),
            json!({"type": "kick", "target": "t"}),
            json!({"type": "ban", "target": "t", "reason": "r"}),
            json!({"type": "unban", "target": "t"}),
            json!({"type": "list_bans"}),
            json!({"type": "set_state", "key": "k", "value": 1}),
            json!({"type": "frobnicate", "_reqId": "u"}),
        ];
        let kinds = [
            json!(null),
            json!(true),
            json!(7),
            json!(-7),
            json!(18446744073709551615u64),
            json!(2.5),
            json!(""),
            json!("now"),
            json!("x\u{e9}\n\"q"),
            json!([]),
            json!(["a", 1]),
            json!({}),
            json!({"name": "n"}),
            json!({"now": null}),
        ];
        let mut out = Vec::new();
        for frame in &valid {
            let object = frame.as_object().expect("object");
            out.push(frame.to_string());
            let mut keys: Vec<String> = object.keys().cloned().collect();
            keys.push("_reqId".into());
            // The fields of the one-pass frames, on every frame.
            for k in [
                "targetSpec",
                "priority",
                "nonce",
                "ciphertext",
                "id",
                "client_message_id",
                "clientMessageId",
                "brokerMessageId",
            ] {
                if !object.contains_key(k) {
                    keys.push(k.into());
                }
            }
            for key in &keys {
                let mut without = object.clone();
                without.remove(key);
                out.push(Value::Object(without).to_string());
                for v in &kinds {
                    let mut with = object.clone();
                    with.insert(key.clone(), v.clone());
                    out.push(Value::Object(with).to_string());
                }
            }
            let text = frame.to_string();
            let body = &text[1..text.len() - 1];
            // Duplicate keys, the `type` last, spelled with an escape, whitespace, junk.
            out.push(format!("{{{body},{body}}}"));
            out.push(format!("{{{body},\"_reqId\":\"a\",\"_reqId\":\"b\"}}"));
            out.push(format!("{{{body},\"type\":\"list_peers\"}}"));
            let kind = object["type"].as_str().expect("type");
            let rest: serde_json::Map<String, Value> = object
                .iter()
                .filter(|(k, _)| *k != "type")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let rest = Value::Object(rest).to_string();
            let rest = &rest[1..rest.len() - 1];
            let comma = if rest.is_empty() { "" } else { "," };
            out.push(format!("{{{rest}{comma}\"type\":\"{kind}\"}}"));
            out.push(format!("{{\"t\\u0079pe\":\"{kind}\"{comma}{rest}}}"));
            out.push(format!(
                "{{\"type\":\"\\u{:04x}{}\"{comma}{rest}}}",
                kind.as_bytes()[0],
                &kind[1..]
            ));
            out.push(format!(" \n{{ {body} }} \t"));
            out.push(format!("{text} x"));
            out.push(format!("{text}{text}"));
            out.push(text[..text.len() - 1].to_string());
            out.push(format!("[{text}]"));
        }
        for junk in [
            "",
            " ",
            "null",
            "1",
            "\"send\"",
            "[]",
            "[\"send\"]",
            "{}",
            "{\"type\":null}",
            "{\"type\":[]}",
            "{\"type\":\"\"}",
            "not json",
            "{\"type\":\"send\"",
            "\u{feff}{}",
            "{\"_reqId\":\"z\"}",
            "{\"type\":\"list_peers\",\"_reqId\":{\"a\":1}}",
        ] {
            out.push(junk.to_string());
        }
        out
    }

    #[test]
    fn two_pass_decode_is_the_buffered_decoder_byte_for_byte() {
        let corpus = corpus();
        assert!(corpus.len() > 3000, "{}", corpus.len());
        let (mut ok, mut errors, mut fast) = (0, 0, 0);
        for frame in &corpus {
            let new = format!("{:?}", Inbound::decode(frame.as_bytes()));
            let mut old = format!("{:?}", Inbound::decode_buffered(frame.as_bytes()));
            if old.starts_with("Ok") && Inbound::head(frame.as_bytes()).is_err() {
                // The one difference: an integer `type` is no variant index.
                assert!(
                    new.contains(r#"frame has no string \"type\""#),
                    "frame {frame}"
                );
                old = new.clone();
            }
            assert_eq!(new, old, "frame {frame}");
            // And the fast path alone never accepts what the reference refuses.
            if let Some(typed) = Inbound::decode_typed(frame.as_bytes()) {
                assert_eq!(format!("{typed:?}"), old, "frame {frame}");
                fast += 1;
            }
            if old.starts_with("Ok") {
                ok += 1
            } else {
                errors += 1
            }
        }
        assert!(ok > 500 && errors > 500, "{ok} decoded, {errors} refused");
        // Every frame that decodes took the two passes, none the buffered decoder.
        assert_eq!(fast, ok, "{fast} of {ok} on the two passes");
    }

    #[test]
    fn unknown_fields_and_wrong_types_keep_their_errors() {
        // A `type` is a string, never the index of a variant.
        let e = Inbound::decode(br#"{"type":7,"visible":false,"_reqId":"q"}"#).unwrap_err();
        assert_eq!(e.message, "frame has no string \"type\"");
        assert_eq!(e.req_id.as_deref(), Some("q"));
        // Unknown fields are ignored, as before.
        let i = Inbound::decode(br#"{"type":"set_visible","visible":true,"zz":{"a":[1]}}"#)
            .expect("decodes");
        assert!(matches!(i.message, ClientMessage::SetVisible(true)));
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"type":"send","targetSpec":5,"_reqId":"q"}"#,
                "invalid send: invalid type: integer `5`, expected a string at line 1 column 43",
            ),
            (
                br#"{"type":"set_status","status":"asleep"}"#,
                "invalid set_status: unknown variant `asleep`, expected one of `idle`, `working`, `dnd` at line 1 column 39",
            ),
            (
                br#"{"type":"send","nonce":""}"#,
                "invalid send: missing field `targetSpec` at line 1 column 26",
            ),
            (
                br#"{"type":"set_visible","visible":"yes"}"#,
                "invalid set_visible: invalid type: string \"yes\", expected a boolean at line 1 column 38",
            ),
        ];
        for (frame, message) in cases {
            let e = Inbound::decode(frame).unwrap_err();
            assert_eq!(e.message, message);
            assert!(Inbound::decode_typed(frame).is_none());
        }
    }

    #[test]
    fn decodes_a_send_with_its_req_id() {
        let f = br#"{"type":"send","_reqId":"r1","targetSpec":"*","priority":"now","nonce":"bg==","ciphertext":"Y3Q="}"#;
        let inbound = Inbound::decode(f).expect("decodes");
        assert_eq!(inbound.req_id.as_deref(), Some("r1"));
        // A send (and a client_ack) takes the one pass.
        assert!(Inbound::decode_hot(f).is_some());
        assert!(Inbound::decode_hot(br#"{"type":"client_ack","brokerMessageId":"b"}"#).is_some());
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
