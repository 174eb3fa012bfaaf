//! The frames the broker sends (spec §4.2), as serde types both ways: the broker encodes
//! them, a test client or the load tester decodes them (`serde_json::from_str::<Push>`).
//!
//! Each frame's `type` is a marker field that serialises to its fixed text and refuses any
//! other text when decoding. Optional fields are left out when absent, as on the wire
//! today; `summary` of a peer row is the exception (present, `null` when unset).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Group, Priority, Status};
use crate::store::QueuedMessage;

/// Marker types for the `type` field of each frame.
pub mod tag {
    macro_rules! frame_type {
        ($name:ident, $text:literal) => {
            #[doc = concat!("`", $text, "`")]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $name;

            impl $name {
                pub const TEXT: &'static str = $text;
            }

            impl serde::Serialize for $name {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str($text)
                }
            }

            impl<'de> serde::Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                    if s == $text {
                        Ok($name)
                    } else {
                        Err(serde::de::Error::invalid_value(
                            serde::de::Unexpected::Str(&s),
                            &$text,
                        ))
                    }
                }
            }
        };
    }

    frame_type!(HelloAck, "hello_ack");
    frame_type!(Ack, "ack");
    frame_type!(Push, "push");
    frame_type!(System, "system");
    frame_type!(PeersList, "peers_list");
    frame_type!(Error, "error");
    frame_type!(BanAck, "ban_ack");
    frame_type!(UnbanAck, "unban_ack");
    frame_type!(ListBansResult, "list_bans_result");
}

/// A `push` of a direct, broadcast or group message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push<'a> {
    #[serde(rename = "type")]
    pub kind: tag::Push,
    pub message_id: Cow<'a, str>,
    pub mesh_id: Cow<'a, str>,
    /// The sender's routing key (its session key if it has one).
    pub sender_pubkey: Cow<'a, str>,
    pub sender_member_pubkey: Cow<'a, str>,
    pub sender_name: Cow<'a, str>,
    pub priority: Priority,
    pub nonce: Cow<'a, str>,
    pub ciphertext: Cow<'a, str>,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
    #[serde(
        rename = "client_message_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_message_id: Option<Cow<'a, str>>,
    /// A scheduled message's `subtype` (`reminder`, extensions §5), on every push shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<Cow<'a, str>>,
}

impl<'a> Push<'a> {
    /// The one constructor of a message `push`: from the message as queued (direct) or as
    /// fanned out (broadcast, group), so both paths send the same frame.
    pub fn from_queued(m: &'a QueuedMessage) -> Self {
        Push {
            kind: tag::Push,
            message_id: Cow::Borrowed(&m.id),
            mesh_id: Cow::Borrowed(&m.mesh_id),
            sender_pubkey: Cow::Borrowed(&m.sender_pubkey),
            sender_member_pubkey: Cow::Borrowed(&m.sender_member_pubkey),
            sender_name: Cow::Borrowed(&m.sender_name),
            priority: m.priority,
            nonce: Cow::Borrowed(&m.nonce),
            ciphertext: Cow::Borrowed(&m.ciphertext),
            created_at: crate::ids::iso8601_ms(m.created_at),
            client_message_id: m.client_message_id.as_deref().map(Cow::Borrowed),
            subtype: m.subtype.as_deref().map(Cow::Borrowed),
        }
    }
}

/// A `push` with `subtype:"system"` for the events of spec §4.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemPush {
    #[serde(rename = "type")]
    pub kind: tag::Push,
    pub subtype: tag::System,
    /// `event` and `eventData`, in that place of the frame.
    #[serde(flatten)]
    pub event: SystemEvent,
    pub message_id: String,
    pub mesh_id: String,
    /// Always `"system"`.
    pub sender_pubkey: String,
    /// Always `low`.
    pub priority: Priority,
    /// Always empty.
    pub nonce: String,
    /// Always empty.
    pub ciphertext: String,
    pub created_at: String,
}

impl SystemPush {
    pub fn new(mesh_id: &str, event: SystemEvent, created_at_ms: i64) -> Self {
        SystemPush {
            kind: tag::Push,
            subtype: tag::System,
            event,
            message_id: crate::ids::random_id(24),
            mesh_id: mesh_id.to_string(),
            sender_pubkey: "system".into(),
            priority: Priority::Low,
            nonce: String::new(),
            ciphertext: String::new(),
            created_at: crate::ids::iso8601_ms(created_at_ms),
        }
    }
}

/// A system event: its name is the `event` of the push, its data the `eventData`.
///
/// The fields of each data type are declared in alphabetical order: that is the order in
/// which the `json!` objects they replace were written, so the bytes stay the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "eventData", rename_all = "snake_case")]
pub enum SystemEvent {
    PeerJoined(PeerJoined),
    PeerReturned(PeerReturned),
    PeerLeft(PeerLeft),
    PeerVisible(PeerVisibility),
    PeerHidden(PeerVisibility),
}

impl SystemEvent {
    /// The `event` text (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::PeerJoined(_) => "peer_joined",
            SystemEvent::PeerReturned(_) => "peer_returned",
            SystemEvent::PeerLeft(_) => "peer_left",
            SystemEvent::PeerVisible(_) => "peer_visible",
            SystemEvent::PeerHidden(_) => "peer_hidden",
        }
    }
}

/// `peer_joined`: a new presence without saved state to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerJoined {
    pub groups: Vec<Group>,
    /// The presence's display name.
    pub name: String,
    /// The presence's routing key.
    pub pubkey: String,
}

/// `peer_returned`: a new presence that restored its member's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReturned {
    pub groups: Vec<Group>,
    /// When the member was last seen (ISO 8601 UTC, ms).
    pub last_seen_at: String,
    pub name: String,
    pub pubkey: String,
    /// The saved summary: present, `null` when unset.
    pub summary: Option<String>,
}

/// `peer_left`: a presence is gone for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerLeft {
    pub name: String,
    pub pubkey: String,
}

/// `peer_visible` / `peer_hidden`: a presence changed its visibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerVisibility {
    pub name: String,
    pub pubkey: String,
}

/// The reply to a `send`, `set_visible` or `set_profile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack<'a> {
    #[serde(rename = "type")]
    pub kind: tag::Ack,
    /// The send's `id`, else its `client_message_id`, else `""`.
    pub id: Cow<'a, str>,
    /// `""` when refused.
    pub message_id: Cow<'a, str>,
    pub queued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<Cow<'a, str>>,
}

impl<'a> Ack<'a> {
    /// A send that was queued (direct) or published (fan-out) as `message_id`.
    pub fn queued(id: &'a str, message_id: &'a str, req_id: Option<&'a str>) -> Self {
        Ack::new(id, message_id, None, req_id)
    }

    /// A refused send: `queued:false` with the error text.
    pub fn refused(id: &'a str, error: &'a str, req_id: Option<&'a str>) -> Self {
        Ack::new(id, "", Some(error), req_id)
    }

    /// The acknowledgement of `set_visible` or `set_profile`: `id` is the `_reqId`.
    pub fn empty(req_id: Option<&'a str>) -> Self {
        Ack {
            kind: tag::Ack,
            id: Cow::Borrowed(req_id.unwrap_or("")),
            message_id: Cow::Borrowed(""),
            queued: false,
            error: None,
            req_id: req_id.map(Cow::Borrowed),
        }
    }

    fn new(
        id: &'a str,
        message_id: &'a str,
        error: Option<&'a str>,
        req_id: Option<&'a str>,
    ) -> Self {
        Ack {
            kind: tag::Ack,
            id: Cow::Borrowed(id),
            message_id: Cow::Borrowed(message_id),
            queued: error.is_none(),
            error: error.map(Cow::Borrowed),
            req_id: req_id.map(Cow::Borrowed),
        }
    }
}

/// `error{code, message, id?, _reqId?}`; `id` only on a `send` refused as `revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    pub kind: tag::Error,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

impl ErrorFrame {
    pub fn new(code: &str, message: &str, req_id: Option<&str>) -> Self {
        ErrorFrame {
            kind: tag::Error,
            code: code.to_string(),
            message: message.to_string(),
            id: None,
            req_id: req_id.map(str::to_string),
        }
    }
}

/// `memberProfile` of a `hello_ack`: the member row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_tag: Option<String>,
    /// The member's default groups.
    pub groups: Vec<Group>,
    pub message_mode: String,
}

/// What a new presence got back from its member's saved state (`restored…` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restored {
    /// Always `true` when present.
    pub restored: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_summary: Option<String>,
    pub last_seen_at: String,
    pub restored_groups: Vec<Group>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_stats: Option<Value>,
}

/// The first frame after a completed handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck {
    #[serde(rename = "type")]
    pub kind: tag::HelloAck,
    pub presence_id: String,
    pub member_display_name: String,
    pub member_profile: MemberProfile,
    /// Only when a new presence restored saved state.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One row of a `peers_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// The presence's routing key.
    pub pubkey: String,
    pub member_pubkey: String,
    pub display_name: String,
    pub status: Status,
    /// Present, `null` when unset.
    pub summary: Option<String>,
    pub groups: Vec<Group>,
    pub session_id: String,
    pub connected_at: String,
    pub cwd: String,
    /// `control-plane` or `session`.
    pub peer_role: String,
    pub visible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Value>,
    /// Left out when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersList {
    #[serde(rename = "type")]
    pub kind: tag::PeersList,
    pub peers: Vec<Peer>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The `type` of a moderation ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModerationAckType {
    #[serde(rename = "disconnect_ack")]
    Disconnect,
    #[serde(rename = "kick_ack")]
    Kick,
}

/// `disconnect_ack` / `kick_ack`: `kicked` and `affected` are the same display names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationAck {
    #[serde(rename = "type")]
    pub kind: ModerationAckType,
    pub kicked: Vec<String>,
    pub affected: Vec<String>,
    /// `kick_ack` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_control_plane: Option<Vec<String>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

impl ModerationAck {
    /// `skipped` is `Some` for a kick (control-plane presences it left alone).
    pub fn new(names: Vec<String>, skipped: Option<Vec<String>>, req_id: Option<&str>) -> Self {
        ModerationAck {
            kind: if skipped.is_some() {
                ModerationAckType::Kick
            } else {
                ModerationAckType::Disconnect
            },
            kicked: names.clone(),
            affected: names,
            skipped_control_plane: skipped,
            req_id: req_id.map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanAck {
    #[serde(rename = "type")]
    pub kind: tag::BanAck,
    /// The banned member's display name.
    pub banned: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnbanAck {
    #[serde(rename = "type")]
    pub kind: tag::UnbanAck,
    /// The unbanned member's display name.
    pub unbanned: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One row of a `list_bans_result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ban {
    pub name: String,
    pub pubkey: String,
    pub revoked_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListBansResult {
    #[serde(rename = "type")]
    pub kind: tag::ListBansResult,
    pub bans: Vec<Ban>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::encode;
    use super::*;
    use serde_json::json;

    fn wire<T: Serialize>(frame: &T) -> Value {
        serde_json::from_slice(&encode(frame)).expect("JSON")
    }

    #[test]
    fn ack_omits_absent_fields_and_round_trips() {
        let bytes = encode(&Ack::queued("", "m", None));
        assert_eq!(
            &bytes[..],
            br#"{"type":"ack","id":"","messageId":"m","queued":true}"#
        );
        let back: Ack = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(back, Ack::queued("", "m", None));
        assert_eq!(
            wire(&Ack::refused("c1", "payload too large", Some("r"))),
            json!({"type": "ack", "id": "c1", "messageId": "", "queued": false, "error": "payload too large", "_reqId": "r"})
        );
        assert_eq!(
            wire(&Ack::empty(Some("r"))),
            json!({"type": "ack", "id": "r", "messageId": "", "queued": false, "_reqId": "r"})
        );
        // A frame of another type is not an ack.
        assert!(
            serde_json::from_value::<Ack>(
                json!({"type": "push", "id": "", "messageId": "", "queued": true})
            )
            .is_err()
        );
    }

    #[test]
    fn push_from_a_queued_message() {
        let m = QueuedMessage {
            id: "mid".into(),
            mesh_id: "mesh".into(),
            sender_member_id: "sm".into(),
            sender_pubkey: "sk".into(),
            sender_member_pubkey: "mk".into(),
            sender_name: "alice".into(),
            target_member_id: "t".into(),
            target_session_key: None,
            priority: Priority::Now,
            nonce: "n".into(),
            ciphertext: "c".into(),
            client_message_id: None,
            created_at: 0,
            subtype: None,
            trace: None,
        };
        let v = wire(&Push::from_queued(&m));
        assert_eq!(
            v,
            json!({"type": "push", "messageId": "mid", "meshId": "mesh", "senderPubkey": "sk",
                "senderMemberPubkey": "mk", "senderName": "alice", "priority": "now", "nonce": "n",
                "ciphertext": "c", "createdAt": "1970-01-01T00:00:00.000Z"})
        );
        let m = QueuedMessage {
            client_message_id: Some("c-1".into()),
            ..m
        };
        let v = wire(&Push::from_queued(&m));
        assert_eq!(v["client_message_id"], "c-1");
        let back: Push<'static> = serde_json::from_value(v).expect("decodes");
        assert_eq!(back, Push::from_queued(&m));
    }

    #[test]
    fn system_push_shape() {
        let left = SystemEvent::PeerLeft(PeerLeft {
            name: "a".into(),
            pubkey: "k".into(),
        });
        let v = wire(&SystemPush::new("mesh", left, 0));
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "ciphertext",
                "createdAt",
                "event",
                "eventData",
                "meshId",
                "messageId",
                "nonce",
                "priority",
                "senderPubkey",
                "subtype",
                "type"
            ]
        );
        assert_eq!(v["subtype"], "system");
        assert_eq!(v["senderPubkey"], "system");
        assert_eq!(v["priority"], "low");
        assert_eq!(v["event"], "peer_left");
        assert_eq!(v["eventData"], json!({"name": "a", "pubkey": "k"}));
        let back: SystemPush = serde_json::from_value(v).expect("decodes");
        assert_eq!(back.event.name(), "peer_left");
    }

    fn groups() -> Vec<Group> {
        vec![
            Group {
                name: "ops".into(),
                role: None,
            },
            Group {
                name: "dev".into(),
                role: Some("lead".into()),
            },
        ]
    }

    /// The whole frame, with its random `messageId` fixed.
    fn system_bytes(event: SystemEvent) -> String {
        let mut push = SystemPush::new("mesh", event, 0);
        push.message_id = "mid".into();
        String::from_utf8(encode(&push).to_vec()).expect("UTF-8")
    }

    /// Each event's exact bytes, and the same JSON as the `json!` object the broker built
    /// before these types (keys sorted: `serde_json` without `preserve_order`).
    #[test]
    fn system_event_data_is_byte_exact() {
        let envelope = |event: &str, data: &str| {
            format!(
                r#"{{"type":"push","subtype":"system","event":"{event}","eventData":{data},"messageId":"mid","meshId":"mesh","senderPubkey":"system","priority":"low","nonce":"","ciphertext":"","createdAt":"1970-01-01T00:00:00.000Z"}}"#
            )
        };
        let g = groups();
        let cases = [
            (
                SystemEvent::PeerJoined(PeerJoined {
                    groups: g.clone(),
                    name: "bob".into(),
                    pubkey: "k".into(),
                }),
                "peer_joined",
                r#"{"groups":[{"name":"ops"},{"name":"dev","role":"lead"}],"name":"bob","pubkey":"k"}"#,
                json!({"name": "bob", "pubkey": "k", "groups": g}),
            ),
            (
                SystemEvent::PeerReturned(PeerReturned {
                    groups: g.clone(),
                    last_seen_at: "1970-01-01T00:00:01.000Z".into(),
                    name: "bob".into(),
                    pubkey: "k".into(),
                    summary: Some("fixing bugs".into()),
                }),
                "peer_returned",
                r#"{"groups":[{"name":"ops"},{"name":"dev","role":"lead"}],"lastSeenAt":"1970-01-01T00:00:01.000Z","name":"bob","pubkey":"k","summary":"fixing bugs"}"#,
                json!({"name": "bob", "pubkey": "k", "groups": g,
                    "lastSeenAt": "1970-01-01T00:00:01.000Z", "summary": Some("fixing bugs")}),
            ),
            (
                // No saved summary: `summary` stays, as `null`.
                SystemEvent::PeerReturned(PeerReturned {
                    groups: vec![],
                    last_seen_at: "t".into(),
                    name: "bob".into(),
                    pubkey: "k".into(),
                    summary: None,
                }),
                "peer_returned",
                r#"{"groups":[],"lastSeenAt":"t","name":"bob","pubkey":"k","summary":null}"#,
                json!({"name": "bob", "pubkey": "k", "groups": Vec::<Group>::new(),
                    "lastSeenAt": "t", "summary": None::<String>}),
            ),
            (
                SystemEvent::PeerLeft(PeerLeft {
                    name: "bob".into(),
                    pubkey: "k".into(),
                }),
                "peer_left",
                r#"{"name":"bob","pubkey":"k"}"#,
                json!({"name": "bob", "pubkey": "k"}),
            ),
            (
                SystemEvent::PeerVisible(PeerVisibility {
                    name: "bob".into(),
                    pubkey: "k".into(),
                }),
                "peer_visible",
                r#"{"name":"bob","pubkey":"k"}"#,
                json!({"name": "bob", "pubkey": "k"}),
            ),
            (
                SystemEvent::PeerHidden(PeerVisibility {
                    name: "bob".into(),
                    pubkey: "k".into(),
                }),
                "peer_hidden",
                r#"{"name":"bob","pubkey":"k"}"#,
                json!({"name": "bob", "pubkey": "k"}),
            ),
        ];
        for (event, name, data, before) in cases {
            assert_eq!(event.name(), name);
            let bytes = system_bytes(event.clone());
            assert_eq!(bytes, envelope(name, data), "{name}");
            // Byte for byte what the `json!` builder gave.
            assert_eq!(
                data,
                serde_json::to_string(&before).expect("JSON"),
                "{name}"
            );
            // And back: a test client or the load tester can decode it typed.
            let back: SystemPush = serde_json::from_str(&bytes).expect("decodes");
            assert_eq!(back.event, event, "{name}");
        }
        // Data that does not fit the event's type is not that event.
        assert!(
            serde_json::from_str::<SystemPush>(&envelope(
                "peer_joined",
                r#"{"name":"bob","pubkey":"k"}"#
            ))
            .is_err()
        );
        assert!(
            serde_json::from_str::<SystemPush>(&envelope(
                "peer_gone",
                r#"{"name":"bob","pubkey":"k"}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn hello_ack_restored_fields_only_when_restored() {
        let mut ack = HelloAck {
            kind: tag::HelloAck,
            presence_id: "p".into(),
            member_display_name: "alice".into(),
            member_profile: MemberProfile {
                role_tag: None,
                groups: vec![],
                message_mode: "push".into(),
            },
            restored: None,
            req_id: None,
        };
        assert_eq!(
            wire(&ack),
            json!({"type": "hello_ack", "presenceId": "p", "memberDisplayName": "alice",
                "memberProfile": {"groups": [], "messageMode": "push"}})
        );
        ack.restored = Some(Restored {
            restored: true,
            last_summary: None,
            last_seen_at: "t".into(),
            restored_groups: vec![],
            restored_stats: None,
        });
        ack.req_id = Some("r".into());
        let v = wire(&ack);
        assert_eq!(
            v,
            json!({"type": "hello_ack", "presenceId": "p", "memberDisplayName": "alice",
                "memberProfile": {"groups": [], "messageMode": "push"}, "restored": true,
                "lastSeenAt": "t", "restoredGroups": [], "_reqId": "r"})
        );
        let back: HelloAck = serde_json::from_value(v).expect("decodes");
        assert_eq!(back, ack);
    }

    #[test]
    fn peer_rows_keep_a_null_summary_and_omit_unknowns() {
        let peer = Peer {
            pubkey: "k".into(),
            member_pubkey: "m".into(),
            display_name: "a".into(),
            status: Status::Idle,
            summary: None,
            groups: vec![],
            session_id: "s".into(),
            connected_at: "t".into(),
            cwd: "/".into(),
            peer_role: "session".into(),
            visible: true,
            hostname: None,
            peer_type: None,
            channel: None,
            model: None,
            stats: None,
            profile: None,
        };
        let v = wire(&peer);
        assert_eq!(v["summary"], Value::Null);
        assert!(v.as_object().expect("object").contains_key("summary"));
        assert_eq!(v.as_object().expect("object").len(), 11);
    }

    #[test]
    fn moderation_acks() {
        let v = wire(&ModerationAck::new(vec!["a".into()], None, Some("r")));
        assert_eq!(
            v,
            json!({"type": "disconnect_ack", "kicked": ["a"], "affected": ["a"], "_reqId": "r"})
        );
        let v = wire(&ModerationAck::new(vec![], Some(vec!["cp".into()]), None));
        assert_eq!(
            v,
            json!({"type": "kick_ack", "kicked": [], "affected": [], "skipped_control_plane": ["cp"]})
        );
    }
}
