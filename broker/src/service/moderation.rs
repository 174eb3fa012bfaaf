//! `disconnect`, `kick`, `ban`, `unban`, `list_bans` (spec §4.6), for owners and admins.
//! Effects travel as bus events, so they reach the target on whichever replica holds its
//! socket.

use serde_json::json;
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::{AfterClose, MeshEvent};
use crate::cluster::presence::{PeerRole, PresenceRecord};
use crate::ids::now_ms;
use crate::protocol::{Selection, codes};
use crate::store::{Member, Role};

/// A moderation verb (the word of the `forbidden` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Disconnect,
    Kick,
    Ban,
    Unban,
    ListBans,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Disconnect => "disconnect",
            Verb::Kick => "kick",
            Verb::Ban => "ban",
            Verb::Unban => "unban",
            Verb::ListBans => "list_bans",
        }
    }
}

/// Why a moderation request was refused. [`ModerationError::code`] and
/// [`ModerationError::message`] are the `error` frame's exact `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModerationError {
    /// The caller is neither the mesh owner nor an admin (as the store has it now).
    Forbidden { verb: Verb },
    /// No (banned, for `unban`) member matches the target.
    NotFound { target: String, banned: bool },
    /// The target matches several members.
    Ambiguous { target: String },
    /// A member cannot ban itself.
    SelfBan,
    /// A backend is unavailable: nothing was done (fail closed).
    Unavailable(String),
    /// The ban is written, but the victim's open connections could not be listed to close
    /// them (they are refused at their next send).
    BannedUnlisted { name: String, error: String },
}

impl ModerationError {
    /// The `error` frame's code.
    pub fn code(&self) -> &'static str {
        match self {
            ModerationError::Forbidden { .. } => "forbidden",
            ModerationError::NotFound { .. } => "not_found",
            ModerationError::Ambiguous { .. } | ModerationError::SelfBan => "invalid",
            ModerationError::Unavailable(_) | ModerationError::BannedUnlisted { .. } => "internal",
        }
    }

    /// A label per refusal, finer than the wire code (for a metric or a log).
    pub fn metric_label(&self) -> &'static str {
        match self {
            ModerationError::Forbidden { .. } => "forbidden",
            ModerationError::NotFound { .. } => "not_found",
            ModerationError::Ambiguous { .. } => "ambiguous",
            ModerationError::SelfBan => "self_ban",
            ModerationError::Unavailable(_) => "unavailable",
            ModerationError::BannedUnlisted { .. } => "banned_unlisted",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            ModerationError::Forbidden { verb } => {
                format!("only owner or admin can {}", verb.as_str())
            }
            ModerationError::NotFound { target, banned } => {
                let which = if *banned { "banned member" } else { "member" };
                format!("no {which} matches {target:?}")
            }
            ModerationError::Ambiguous { target } => {
                format!("{target:?} matches several members: give the full key")
            }
            ModerationError::SelfBan => "you cannot ban yourself".into(),
            ModerationError::Unavailable(e) => e.clone(),
            ModerationError::BannedUnlisted { name, error } => format!(
                "{name} is banned, but its open connections could not be listed ({error}); they are refused at their next send"
            ),
        }
    }
}

impl std::fmt::Display for ModerationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ModerationError {}

fn unavailable(e: impl std::fmt::Display) -> ModerationError {
    ModerationError::Unavailable(e.to_string())
}

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

/// The caller's member row as the store has it now must be an admin's or the mesh owner's.
pub async fn authorize(ctx: &ServiceCtx, p: &Principal, verb: Verb) -> Result<(), ModerationError> {
    let member = ctx
        .store()
        .member(&p.mesh.id, &p.member.id)
        .await
        .map_err(unavailable)?;
    let allowed = member.is_some_and(|m| {
        m.role == Role::Admin
            || (p.mesh.owner_user_id.is_some() && m.user_id == p.mesh.owner_user_id)
    });
    if allowed {
        Ok(())
    } else {
        Err(ModerationError::Forbidden { verb })
    }
}

async fn close_conns(
    ctx: &ServiceCtx,
    p: &Principal,
    conn_ids: Vec<String>,
    close: codes::Close,
    after: AfterClose,
) {
    if conn_ids.is_empty() {
        return;
    }
    let event = MeshEvent::Close {
        conn_ids,
        code: close.code,
        reason: close.reason.into(),
        after,
    };
    if let Err(e) = ctx.publish(&p.mesh.id, event).await {
        warn!(error = %e, "moderation close not published");
    }
}

/// The presences a `disconnect` or `kick` hit, by display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    pub names: Vec<String>,
    /// For a kick: the control-plane presences it left alone (`None` for a disconnect).
    pub skipped_control_plane: Option<Vec<String>>,
}

/// Closes the selected live presences: `disconnect` into grace (`disconnected`), `kick` for
/// good (`kicked`, control-plane presences are skipped). `replied` runs before the closes are
/// published, so the caller's answer goes out first.
pub async fn disconnect_or_kick(
    ctx: &ServiceCtx,
    p: &Principal,
    kick: bool,
    sel: &Selection,
    replied: impl FnOnce(&Affected),
) -> Result<Affected, ModerationError> {
    let verb = if kick { Verb::Kick } else { Verb::Disconnect };
    authorize(ctx, p, verb).await?;
    // An unreadable presence list is not "nobody is connected": fail closed.
    let records = ctx.presence().list(&p.mesh.id).await.map_err(unavailable)?;
    let now = now_ms();
    let selected: Vec<&PresenceRecord> = records
        .iter()
        .filter(|r| r.is_live())
        .filter(|r| {
            if sel.all == Some(true) {
                r.member_id != p.member.id
            } else if let Some(stale) = sel.stale {
                r.presence_id != p.presence_id && now - r.last_pong_at > stale as i64
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
    let affected = Affected {
        names: hit.iter().map(|r| r.display_name.clone()).collect(),
        skipped_control_plane: kick
            .then(|| skipped.iter().map(|r| r.display_name.clone()).collect()),
    };
    let conn_ids = hit.iter().map(|r| r.conn_id.clone()).collect();
    replied(&affected);
    if kick {
        close_conns(ctx, p, conn_ids, codes::KICKED, AfterClose::End).await;
    } else {
        close_conns(ctx, p, conn_ids, codes::DISCONNECTED, AfterClose::Grace).await;
    }
    Ok(affected)
}

/// The one member (banned or not, as `banned` says) that `target` names.
async fn one_member(
    ctx: &ServiceCtx,
    p: &Principal,
    target: &str,
    banned: bool,
) -> Result<Member, ModerationError> {
    let members = ctx.store().members(&p.mesh.id).await.map_err(unavailable)?;
    let mut candidates = members
        .into_iter()
        .filter(|m| m.revoked_at.is_some() == banned && member_matches(m, target));
    let Some(found) = candidates.next() else {
        return Err(ModerationError::NotFound {
            target: target.to_string(),
            banned,
        });
    };
    if candidates.next().is_some() {
        return Err(ModerationError::Ambiguous {
            target: target.to_string(),
        });
    }
    Ok(found)
}

/// Bans the one member `target` names: its row is revoked, every replica drops its cached
/// rows, its live sockets are closed `banned` and its presences in grace are ended. `replied`
/// runs (with the victim) before the closes are published.
pub async fn ban(
    ctx: &ServiceCtx,
    p: &Principal,
    target: &str,
    reason: Option<&str>,
    replied: impl FnOnce(&Member),
) -> Result<Member, ModerationError> {
    authorize(ctx, p, Verb::Ban).await?;
    let victim = one_member(ctx, p, target, false).await?;
    if victim.id == p.member.id {
        return Err(ModerationError::SelfBan);
    }
    ctx.store()
        .set_revoked(&p.mesh.id, &victim.id, Some(now_ms()))
        .await
        .map_err(unavailable)?;
    ctx.members_changed(&p.mesh.id).await;
    let mut payload = json!({"target": target, "targetPubkey": victim.pubkey});
    if let Some(reason) = reason {
        payload["reason"] = json!(reason);
    }
    // The ban is written; without the presence list its sockets cannot be closed
    // now. Say so rather than acknowledge a ban that left them open (their next send
    // is refused `revoked` all the same, and their next hello too).
    let records = match ctx.presence().list(&p.mesh.id).await {
        Ok(r) => r,
        Err(e) => {
            ctx.audit(&p.mesh.id, "member_banned", Some(&p.member.id), payload);
            return Err(ModerationError::BannedUnlisted {
                name: victim.display_name.clone(),
                error: e.to_string(),
            });
        }
    };
    replied(&victim);
    let (live, grace): (Vec<&PresenceRecord>, Vec<&PresenceRecord>) = records
        .iter()
        .filter(|r| r.member_id == victim.id)
        .partition(|r| r.is_live());
    close_conns(
        ctx,
        p,
        live.iter().map(|r| r.conn_id.clone()).collect(),
        codes::BANNED,
        AfterClose::End,
    )
    .await;
    for r in grace {
        if let Ok(Some(record)) = ctx
            .presence()
            .remove(&p.mesh.id, &r.presence_id, &r.conn_id)
            .await
        {
            ctx.end_presence(record).await;
        }
    }
    ctx.audit(&p.mesh.id, "member_banned", Some(&p.member.id), payload);
    Ok(victim)
}

/// Lifts the ban of the one banned member `target` names.
pub async fn unban(
    ctx: &ServiceCtx,
    p: &Principal,
    target: &str,
) -> Result<Member, ModerationError> {
    authorize(ctx, p, Verb::Unban).await?;
    let member = one_member(ctx, p, target, true).await?;
    ctx.store()
        .set_revoked(&p.mesh.id, &member.id, None)
        .await
        .map_err(unavailable)?;
    ctx.members_changed(&p.mesh.id).await;
    let payload = json!({"target": target, "targetPubkey": member.pubkey});
    ctx.audit(&p.mesh.id, "member_unbanned", Some(&p.member.id), payload);
    Ok(member)
}

/// The mesh's banned members, in the store's order.
pub async fn list_bans(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<Member>, ModerationError> {
    authorize(ctx, p, Verb::ListBans).await?;
    // An unreadable member table is not "nobody is banned": fail closed.
    let members = ctx.store().members(&p.mesh.id).await.map_err(unavailable)?;
    Ok(members
        .into_iter()
        .filter(|m| m.revoked_at.is_some())
        .collect())
}
