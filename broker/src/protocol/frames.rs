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
    pub event: String,
    pub event_data: Value,
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
    pub fn new(mesh_id: &str, event: &str, data: Value, created_at_ms: i64) -> Self {
        SystemPush {
            kind: tag::Push,
            subtype: tag::System,
            event: event.to_string(),
            event_data: data,
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
        let v = wire(&SystemPush::new(
            "mesh",
            "peer_left",
            json!({"name": "a"}),
            0,
        ));
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
        assert!(serde_json::from_value::<SystemPush>(v).is_ok());
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
