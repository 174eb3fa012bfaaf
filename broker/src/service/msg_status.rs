//! The operations of delivery status (extensions §7): `message_status`, without a
//! transport. The answer comes from the store (what was sent, whether it was confirmed)
//! and the presence registry (who is live now), so every replica gives the same one,
//! whichever replica the message was sent through.
//!
//! **Ours:** a member may look up only messages it sent, or that were addressed to it (a
//! direct message to it or one of its sessions), to everyone (`*`, `@all`) or to a group
//! its presence is in. Anything else answers `not_found`, exactly like an unknown id, and
//! is not counted towards an ambiguous prefix.

use super::{Principal, ServiceCtx};
use crate::cluster::presence::PresenceRecord;
use crate::ids::iso8601_ms;
use crate::protocol::ext::msg_status::{MessageStatusResult, Recipient};
use crate::store::msg_status::{MAX_MATCHES, SentMessage, SentTarget};

/// Shortest id prefix accepted.
pub const MIN_ID_LEN: usize = 8;
/// A whole message id.
pub const MAX_ID_LEN: usize = 32;

/// Why a status lookup was refused. [`StatusError::code`] and [`StatusError::message`] are
/// the `error` frame's exact `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// Not 8–32 base62 characters; `got` is its length in characters.
    InvalidArgument { got: usize },
    /// The prefix matched several messages the caller may see.
    Ambiguous { matched: usize },
    /// No message the caller may see has this id (or prefix).
    NotFound,
    /// The store or the registry failed.
    Unavailable(String),
}

impl StatusError {
    pub fn code(&self) -> &'static str {
        match self {
            StatusError::InvalidArgument { .. } => "invalid_argument",
            StatusError::Ambiguous { .. } => "ambiguous_prefix",
            StatusError::NotFound => "not_found",
            StatusError::Unavailable(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            StatusError::InvalidArgument { got } => {
                format!("messageId must be 8-32 base62 chars (got {got})")
            }
            StatusError::Ambiguous { matched } => {
                format!("prefix matched {matched} messages — use a longer id")
            }
            StatusError::NotFound => "message not found".into(),
            StatusError::Unavailable(e) => e.clone(),
        }
    }

    /// A label per refusal (for a metric or a log).
    pub fn metric_label(&self) -> &'static str {
        match self {
            StatusError::InvalidArgument { .. } => "invalid",
            StatusError::Ambiguous { .. } => "ambiguous",
            StatusError::NotFound => "not_found",
            StatusError::Unavailable(_) => "unavailable",
        }
    }
}

/// Whether `id` is a whole message id or an acceptable prefix of one.
pub fn valid_id(id: &str) -> Result<(), StatusError> {
    let len = id.chars().count();
    if (MIN_ID_LEN..=MAX_ID_LEN).contains(&len) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(StatusError::InvalidArgument { got: len })
    }
}

/// A group target's name (`@name`), `None` for a broadcast.
fn group_of(spec: &str) -> Option<&str> {
    match spec {
        "*" | "@all" => None,
        s => s.strip_prefix('@'),
    }
}

/// Ours: the caller sent it, or it was addressed to the caller, to everyone or to one of
/// the caller's groups.
fn may_see(m: &SentMessage, p: &Principal, my_groups: &[String]) -> bool {
    if m.sender_member_id == p.member.id {
        return true;
    }
    match &m.target {
        SentTarget::Direct { member_id, .. } => member_id == &p.member.id,
        SentTarget::Fanout { spec } => match group_of(spec) {
            None => true,
            Some(g) => my_groups.iter().any(|mine| mine == g),
        },
    }
}

/// `message_status`: the delivery status of the message whose id is (or starts with)
/// `message_id`, in the caller's mesh.
pub async fn message_status(
    ctx: &ServiceCtx,
    p: &Principal,
    message_id: &str,
    req_id: Option<String>,
) -> Result<MessageStatusResult, StatusError> {
    valid_id(message_id)?;
    let unavailable = |e: &dyn std::fmt::Display| StatusError::Unavailable(e.to_string());
    let mut found = ctx
        .store()
        .find_sent(&p.mesh.id, message_id, MAX_MATCHES)
        .await
        .map_err(|e| unavailable(&e))?;
    let records = ctx
        .presence()
        .list(&p.mesh.id)
        .await
        .map_err(|e| unavailable(&e))?;
    let my_groups: Vec<String> = records
        .iter()
        .find(|r| r.presence_id == p.presence_id)
        .map(|r| r.groups.iter().map(|g| g.name.clone()).collect())
        .unwrap_or_default();
    found.retain(|m| may_see(m, p, &my_groups));
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    let m = match found.len() {
        0 => return Err(StatusError::NotFound),
        1 => found.remove(0),
        matched => return Err(StatusError::Ambiguous { matched }),
    };

    let delivered = m.delivered_at.is_some();
    let status = if delivered { "delivered" } else { "held" };
    let live: Vec<&PresenceRecord> = records.iter().filter(|r| r.is_live()).collect();
    let entry = |r: &PresenceRecord| Recipient {
        name: r.display_name.clone(),
        pubkey: r.routing_key().to_string(),
        status: status.to_string(),
    };
    let (target_spec, recipients) = match &m.target {
        SentTarget::Fanout { spec } => {
            let recipients = match group_of(spec) {
                None => live.iter().map(|r| entry(r)).collect(),
                Some(g) => live
                    .iter()
                    .filter(|r| r.groups.iter().any(|mine| mine.name == g))
                    .map(|r| entry(r))
                    .collect(),
            };
            (spec.clone(), recipients)
        }
        SentTarget::Direct {
            member_id,
            session_key,
        } => {
            let spec = match session_key {
                Some(k) => k.clone(),
                None => ctx
                    .members(&p.mesh.id)
                    .await
                    .map_err(|e| unavailable(&e))?
                    .iter()
                    .find(|x| &x.id == member_id)
                    .map(|x| x.pubkey.clone())
                    .unwrap_or_default(),
            };
            let recipient = match live.iter().find(|r| r.routing_key() == spec) {
                Some(r) => entry(r),
                None => Recipient {
                    name: "unknown".into(),
                    pubkey: spec.chars().take(16).collect(),
                    status: "disconnected".into(),
                },
            };
            (spec, vec![recipient])
        }
    };
    Ok(MessageStatusResult {
        message_id: message_id.to_string(),
        target_spec,
        delivered,
        delivered_at: m.delivered_at.map(iso8601_ms),
        recipients,
        req_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_8_to_32_base62_chars() {
        assert!(valid_id("abcdEFGH").is_ok());
        assert!(valid_id(&"a".repeat(32)).is_ok());
        assert_eq!(
            valid_id("abc").unwrap_err().message(),
            "messageId must be 8-32 base62 chars (got 3)"
        );
        assert_eq!(
            valid_id(&"a".repeat(33)).unwrap_err(),
            StatusError::InvalidArgument { got: 33 }
        );
        assert!(valid_id("abcd-fgh").is_err());
        assert_eq!(
            valid_id("abcdéfgh").unwrap_err(),
            StatusError::InvalidArgument { got: 8 }
        );
    }

    #[test]
    fn the_error_texts_are_the_spec_ones() {
        assert_eq!(
            StatusError::Ambiguous { matched: 2 }.message(),
            "prefix matched 2 messages — use a longer id"
        );
        assert_eq!(StatusError::NotFound.message(), "message not found");
        assert_eq!(StatusError::NotFound.code(), "not_found");
    }
}
