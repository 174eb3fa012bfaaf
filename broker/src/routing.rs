//! Who a `send` reaches: grants (spec §4.5), fan-out recipients and direct-target lookup.
//! Pure functions over presence records and member rows; no IO.

use std::collections::HashMap;

use crate::cluster::presence::PresenceRecord;
use crate::store::Member;

/// Capabilities every sender has when the recipient's grants name it nowhere.
pub const DEFAULT_CAPS: &[&str] = &["read", "dm", "broadcast", "state-read"];

/// Every capability a grant may list.
pub const ALL_CAPS: &[&str] = &[
    "read",
    "dm",
    "broadcast",
    "state-read",
    "state-write",
    "file-read",
];

/// Whether `recipient` lets a sender (`sender_member_key`, optionally speaking through
/// `sender_session_key`) use `cap`: the entry for the member key, else the entry for the
/// session key, else the defaults. An empty entry blocks the sender.
pub fn grants_allow(
    recipient: &Member,
    sender_member_key: &str,
    sender_session_key: Option<&str>,
    cap: &str,
) -> bool {
    let entry = recipient
        .peer_grants
        .get(sender_member_key)
        .or_else(|| sender_session_key.and_then(|k| recipient.peer_grants.get(k)));
    match entry {
        Some(caps) => caps.iter().any(|c| c == cap),
        None => DEFAULT_CAPS.contains(&cap),
    }
}

/// The sender of a message, as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub member_id: &'a str,
    pub member_key: &'a str,
    pub session_key: Option<&'a str>,
}

/// The outcome of a broadcast or group fan-out.
#[derive(Debug, Default, PartialEq)]
pub struct Fanout {
    pub presence_ids: Vec<String>,
    /// Recipients skipped because their grants deny `broadcast`.
    pub blocked: usize,
}

/// Live, visible presences of the mesh other than the sender member's own, restricted to
/// `group` when given, minus those whose member's grants deny `broadcast`.
pub fn fanout(
    records: &[PresenceRecord],
    members: &HashMap<&str, &Member>,
    sender: Sender<'_>,
    group: Option<&str>,
) -> Fanout {
    let mut out = Fanout::default();
    for r in records {
        if !r.is_live() || !r.visible || r.member_id == sender.member_id {
            continue;
        }
        if let Some(g) = group
            && !r.groups.iter().any(|x| x.name == g)
        {
            continue;
        }
        let allowed = members.get(r.member_id.as_str()).is_some_and(|m| {
            m.revoked_at.is_none()
                && grants_allow(m, sender.member_key, sender.session_key, "broadcast")
        });
        if allowed {
            out.presence_ids.push(r.presence_id.clone());
        } else {
            out.blocked += 1;
        }
    }
    out
}

/// The presence (live or in grace) whose session key is `key`, for a `key` that is no
/// member's key. A `hello`'s `sessionPubkey` is unproven, so a presence that proved its
/// session key (`session_hello`) wins over one that merely announced it.
pub fn session_target<'a>(records: &'a [PresenceRecord], key: &str) -> Option<&'a PresenceRecord> {
    let mut matches = records
        .iter()
        .filter(|r| r.session_pubkey.as_deref() == Some(key));
    let first = matches.next()?;
    if first.peer_role == crate::cluster::presence::PeerRole::Session {
        return Some(first);
    }
    Some(
        matches
            .find(|r| r.peer_role == crate::cluster::presence::PeerRole::Session)
            .unwrap_or(first),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Map;

    use super::*;
    use crate::cluster::presence::PeerRole;
    use crate::protocol::{Group, Status};
    use crate::store::Role;

    fn member(id: &str, key: &str, grants: &[(&str, &[&str])]) -> Member {
        Member {
            id: id.into(),
            mesh_id: "m".into(),
            pubkey: key.into(),
            display_name: id.into(),
            role: Role::Member,
            user_id: None,
            revoked_at: None,
            peer_grants: grants
                .iter()
                .map(|(k, caps)| (k.to_string(), caps.iter().map(|c| c.to_string()).collect()))
                .collect::<BTreeMap<_, _>>(),
            default_groups: vec![],
            role_tag: None,
            message_mode: None,
            created_at: 0,
        }
    }

    fn presence(id: &str, member_id: &str, key: &str, groups: &[&str]) -> PresenceRecord {
        PresenceRecord {
            presence_id: id.into(),
            mesh_id: "m".into(),
            member_id: member_id.into(),
            member_pubkey: key.into(),
            session_pubkey: None,
            display_name: id.into(),
            session_id: id.into(),
            peer_role: PeerRole::Session,
            node_id: "n".into(),
            conn_id: format!("n/{id}"),
            grace_until: None,
            status: Status::Idle,
            summary: None,
            visible: true,
            groups: groups
                .iter()
                .map(|g| Group {
                    name: g.to_string(),
                    role: None,
                })
                .collect(),
            profile: Map::new(),
            stats: None,
            pid: None,
            cwd: String::new(),
            hostname: None,
            peer_type: None,
            channel: None,
            model: None,
            connected_at: 0,
            last_pong_at: 0,
        }
    }

    #[test]
    fn grants_lookup_prefers_member_key_then_session_key_then_defaults() {
        let m = member("r", "rk", &[("alice", &["read"]), ("sess", &["dm"])]);
        assert!(
            !grants_allow(&m, "alice", Some("sess"), "dm"),
            "member entry wins over session entry"
        );
        assert!(
            grants_allow(&m, "bob", Some("sess"), "dm"),
            "session entry applies when no member entry"
        );
        assert!(grants_allow(&m, "bob", None, "dm"), "defaults include dm");
        assert!(
            !grants_allow(&m, "bob", None, "state-write"),
            "defaults exclude state-write"
        );
        let blocked = member("r", "rk", &[("alice", &[])]);
        assert!(
            !grants_allow(&blocked, "alice", None, "read"),
            "an empty list blocks"
        );
    }

    #[test]
    fn fanout_skips_self_hidden_grace_other_groups_and_blocked() {
        let me = member("me", "mk", &[]);
        let a = member("a", "ak", &[]);
        let b = member("b", "bk", &[("mk", &["dm"])]);
        let members: HashMap<&str, &Member> =
            [("me", &me), ("a", &a), ("b", &b)].into_iter().collect();
        let mut hidden = presence("p-hidden", "a", "ak", &["ops"]);
        hidden.visible = false;
        let mut grace = presence("p-grace", "a", "ak", &["ops"]);
        grace.grace_until = Some(1);
        let records = vec![
            presence("p-me", "me", "mk", &["ops"]),
            presence("p-a", "a", "ak", &["ops"]),
            presence("p-a2", "a", "ak", &["dev"]),
            presence("p-b", "b", "bk", &["ops"]),
            hidden,
            grace,
        ];
        let sender = Sender {
            member_id: "me",
            member_key: "mk",
            session_key: None,
        };
        let all = fanout(&records, &members, sender, None);
        assert_eq!(all.presence_ids, vec!["p-a", "p-a2"]);
        assert_eq!(all.blocked, 1);
        let ops = fanout(&records, &members, sender, Some("ops"));
        assert_eq!(ops.presence_ids, vec!["p-a"]);
    }

    #[test]
    fn a_proven_session_key_wins_over_an_announced_one() {
        let mut announced = presence("p1", "mallory", "mk", &[]);
        announced.session_pubkey = Some("sk".into());
        announced.peer_role = PeerRole::ControlPlane;
        let mut proven = presence("p2", "bob", "bk", &[]);
        proven.session_pubkey = Some("sk".into());
        let records = vec![announced.clone(), proven];
        assert_eq!(
            session_target(&records, "sk").map(|r| r.member_id.as_str()),
            Some("bob")
        );
        assert_eq!(
            session_target(&[announced], "sk").map(|r| r.member_id.as_str()),
            Some("mallory")
        );
        assert!(session_target(&records, "zz").is_none());
    }
}
