//! `disconnect`, `kick`, `ban`, `unban`, `list_bans` (spec §4.6). Effects travel as bus
//! events, so they reach the target on whichever replica holds its socket.

use serde_json::{Value, json};
use tracing::warn;

use super::Session;
use crate::cluster::bus::{AfterClose, MeshEvent};
use crate::cluster::presence::{PeerRole, PresenceRecord};
use crate::ids::{self, now_ms};
use crate::protocol::{self, Selection};
use crate::store::{Member, Role};

/// Whether `target` names this presence: display name, exact key, or key prefix.
fn presence_matches(r: &PresenceRecord, target: &str) -> bool {
    r.display_name == target
        || r.member_pubkey.starts_with(target)
        || r.session_pubkey
            .as_deref()
            .is_some_and(|k| k.starts_with(target))
}

/// Whether `target` names this member: display name, exact key, or key prefix.
fn member_matches(m: &Member, target: &str) -> bool {
    !target.is_empty() && (m.display_name == target || m.pubkey.starts_with(target))
}

impl Session {
    /// The caller's member row as the store has it now, if the caller may moderate.
    async fn authorize(&self, verb: &str, req_id: Option<&str>) -> bool {
        let a = self.attached.as_ref().expect("attached");
        let member = match self.node.store.member(&a.mesh.id, &a.member.id).await {
            Ok(m) => m,
            Err(e) => {
                self.reply_error("internal", &e.to_string(), req_id);
                return false;
            }
        };
        let allowed = member.is_some_and(|m| {
            m.role == Role::Admin
                || (a.mesh.owner_user_id.is_some() && m.user_id == a.mesh.owner_user_id)
        });
        if !allowed {
            self.reply_error(
                "forbidden",
                &format!("only owner or admin can {verb}"),
                req_id,
            );
        }
        allowed
    }

    fn reply_frame(&self, frame: Value, req_id: Option<&str>) {
        self.reply(protocol::encode(&protocol::with_req_id(frame, req_id)));
    }

    async fn close_conns(&self, conn_ids: Vec<String>, code: u16, reason: &str, after: AfterClose) {
        if conn_ids.is_empty() {
            return;
        }
        let a = self.attached.as_ref().expect("attached");
        let event = MeshEvent::Close {
            conn_ids,
            code,
            reason: reason.into(),
            after,
        };
        if let Err(e) = self.node.publish(&a.mesh.id, event).await {
            warn!(error = %e, "moderation close not published");
        }
    }

    pub(super) async fn disconnect_or_kick(
        &mut self,
        kick: bool,
        sel: &Selection,
        req_id: Option<&str>,
    ) {
        let verb = if kick { "kick" } else { "disconnect" };
        if !self.authorize(verb, req_id).await {
            return;
        }
        let a = self.attached.as_ref().expect("attached");
        // An unreadable presence list is not "nobody is connected": fail closed.
        let records = match self.node.presence.list(&a.mesh.id).await {
            Ok(r) => r,
            Err(e) => return self.reply_error("internal", &e.to_string(), req_id),
        };
        let now = now_ms();
        let selected: Vec<&PresenceRecord> = records
            .iter()
            .filter(|r| r.is_live())
            .filter(|r| {
                if sel.all == Some(true) {
                    r.member_id != a.member.id
                } else if let Some(stale) = sel.stale {
                    r.presence_id != a.record.presence_id && now - r.last_pong_at > stale as i64
                } else {
                    sel.target
                        .as_deref()
                        .is_some_and(|t| !t.is_empty() && presence_matches(r, t))
                }
            })
            .collect();
        let (skipped, hit): (Vec<&PresenceRecord>, Vec<&PresenceRecord>) = selected
            .into_iter()
            .partition(|r| kick && r.peer_role == PeerRole::ControlPlane);
        let names: Vec<&str> = hit.iter().map(|r| r.display_name.as_str()).collect();
        let mut frame = json!({"type": format!("{verb}_ack"), "kicked": names, "affected": names});
        if kick {
            frame["skipped_control_plane"] = json!(
                skipped
                    .iter()
                    .map(|r| r.display_name.as_str())
                    .collect::<Vec<_>>()
            );
        }
        let conn_ids = hit.iter().map(|r| r.conn_id.clone()).collect();
        self.reply_frame(frame, req_id);
        if kick {
            self.close_conns(conn_ids, 4001, "kicked", AfterClose::End)
                .await;
        } else {
            self.close_conns(conn_ids, 1000, "disconnected", AfterClose::Grace)
                .await;
        }
    }

    /// The one member (banned or not, as `banned` says) that `target` names; replies
    /// `not_found`, `invalid` (ambiguous) or `internal` and returns `None` otherwise.
    async fn one_member(&self, target: &str, banned: bool, req_id: Option<&str>) -> Option<Member> {
        let a = self.attached.as_ref().expect("attached");
        let members = match self.node.store.members(&a.mesh.id).await {
            Ok(m) => m,
            Err(e) => {
                self.reply_error("internal", &e.to_string(), req_id);
                return None;
            }
        };
        let mut candidates = members
            .into_iter()
            .filter(|m| m.revoked_at.is_some() == banned && member_matches(m, target));
        let Some(found) = candidates.next() else {
            let which = if banned { "banned member" } else { "member" };
            self.reply_error(
                "not_found",
                &format!("no {which} matches {target:?}"),
                req_id,
            );
            return None;
        };
        if candidates.next().is_some() {
            let message = format!("{target:?} matches several members: give the full key");
            self.reply_error("invalid", &message, req_id);
            return None;
        }
        Some(found)
    }

    pub(super) async fn ban(&mut self, target: &str, reason: Option<&str>, req_id: Option<&str>) {
        if !self.authorize("ban", req_id).await {
            return;
        }
        let a = self.attached.as_ref().expect("attached");
        let Some(victim) = self.one_member(target, false, req_id).await else {
            return;
        };
        if victim.id == a.member.id {
            return self.reply_error("invalid", "you cannot ban yourself", req_id);
        }
        if let Err(e) = self
            .node
            .store
            .set_revoked(&a.mesh.id, &victim.id, Some(now_ms()))
            .await
        {
            return self.reply_error("internal", &e.to_string(), req_id);
        }
        self.node.members_changed(&a.mesh.id).await;
        let mut payload = json!({"target": target, "targetPubkey": victim.pubkey});
        if let Some(reason) = reason {
            payload["reason"] = json!(reason);
        }
        // The ban is written; without the presence list its sockets cannot be closed
        // now. Say so rather than acknowledge a ban that left them open (their next send
        // is refused `revoked` all the same, and their next hello too).
        let records = match self.node.presence.list(&a.mesh.id).await {
            Ok(r) => r,
            Err(e) => {
                self.node
                    .audit(&a.mesh.id, "member_banned", Some(&a.member.id), payload);
                let message = format!(
                    "{} is banned, but its open connections could not be listed ({e}); they are refused at their next send",
                    victim.display_name
                );
                return self.reply_error("internal", &message, req_id);
            }
        };
        self.reply_frame(
            json!({"type": "ban_ack", "banned": victim.display_name}),
            req_id,
        );
        let (live, grace): (Vec<&PresenceRecord>, Vec<&PresenceRecord>) = records
            .iter()
            .filter(|r| r.member_id == victim.id)
            .partition(|r| r.is_live());
        self.close_conns(
            live.iter().map(|r| r.conn_id.clone()).collect(),
            4002,
            "banned",
            AfterClose::End,
        )
        .await;
        for r in grace {
            if let Ok(Some(record)) = self
                .node
                .presence
                .remove(&a.mesh.id, &r.presence_id, &r.conn_id)
                .await
            {
                super::events::end_presence(&self.node, record).await;
            }
        }
        self.node
            .audit(&a.mesh.id, "member_banned", Some(&a.member.id), payload);
    }

    pub(super) async fn unban(&mut self, target: &str, req_id: Option<&str>) {
        if !self.authorize("unban", req_id).await {
            return;
        }
        let a = self.attached.as_ref().expect("attached");
        let Some(member) = self.one_member(target, true, req_id).await else {
            return;
        };
        if let Err(e) = self
            .node
            .store
            .set_revoked(&a.mesh.id, &member.id, None)
            .await
        {
            return self.reply_error("internal", &e.to_string(), req_id);
        }
        self.node.members_changed(&a.mesh.id).await;
        self.reply_frame(
            json!({"type": "unban_ack", "unbanned": member.display_name}),
            req_id,
        );
        let payload = json!({"target": target, "targetPubkey": member.pubkey});
        self.node
            .audit(&a.mesh.id, "member_unbanned", Some(&a.member.id), payload);
    }

    pub(super) async fn list_bans(&mut self, req_id: Option<&str>) {
        if !self.authorize("list_bans", req_id).await {
            return;
        }
        let a = self.attached.as_ref().expect("attached");
        // An unreadable member table is not "nobody is banned": fail closed.
        let members = match self.node.store.members(&a.mesh.id).await {
            Ok(m) => m,
            Err(e) => return self.reply_error("internal", &e.to_string(), req_id),
        };
        let bans: Vec<Value> = members
            .iter()
            .filter_map(|m| {
                let at = m.revoked_at?;
                Some(json!({"name": m.display_name, "pubkey": m.pubkey, "revokedAt": ids::iso8601_ms(at)}))
            })
            .collect();
        self.reply_frame(json!({"type": "list_bans_result", "bans": bans}), req_id);
    }
}
