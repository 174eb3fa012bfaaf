//! Humans are peers (issue 13, item 6): a person signed in to the web chat (`/app`) is a
//! presence of their own member row, like any CLI session.
//!
//! The chat opens one WebSocket per browser tab (`GET /app/ws`), authenticated by the web
//! session cookie and its CSRF token instead of a signed `hello` (a browser holds no member
//! secret). [`verify`] does what `auth::verify_hello` does for a key holder: it finds the
//! person's non-revoked member row in the mesh, applies the mesh connection cap, and returns
//! a [`Verified`] with `peerType:"human"`, `channel:"web"` and `peerRole:"session"`. The
//! socket then runs the ordinary session (`session::serve_verified`), so everything the
//! presence registry and the bus do for peers holds for humans, on every replica:
//!
//! - `list_peers` of CLI peers lists the person (`peerType:"human"`);
//! - a DM to the member key is queued durably and pushed to the chat (at least once, with
//!   `client_ack`);
//! - `kick` reaches the chat (a human presence is a `session`, not a control-plane daemon,
//!   so kick does not skip it), `ban` closes it with `banned` and every later `/app/ws` of
//!   that member is refused;
//! - the tab's `sessionId` is stable across reloads of the tab (`web-<tab id>`), so a reload
//!   reattaches to the same presence within the lease grace instead of leaving a ghost.

use crate::auth::{HandshakeError, Verified};
use crate::cluster::presence::PeerRole;
use crate::protocol::PeerMeta;
use crate::store::accounts::User;
use crate::store::{Member, NewMember};

use super::ServiceCtx;

/// The longest tab id a browser may send (it only distinguishes one person's tabs).
pub const MAX_TAB_ID_CHARS: usize = 64;

/// `peerType` of a person in the web chat.
pub const PEER_TYPE: &str = "human";
/// `channel` of a person in the web chat.
pub const CHANNEL: &str = "web";

fn refused(code: &'static str, message: impl Into<String>) -> HandshakeError {
    HandshakeError {
        code,
        message: message.into(),
    }
}

/// Whether `tab` is a usable tab id: 1 to [`MAX_TAB_ID_CHARS`] of `[A-Za-z0-9_-]`.
pub fn valid_tab_id(tab: &str) -> bool {
    !tab.is_empty()
        && tab.len() <= MAX_TAB_ID_CHARS
        && tab
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The handshake of a signed-in `user` joining `mesh_id` from the web chat tab `tab`.
///
/// Refusals carry the codes of the `hello` checks: `unauthorized` (not a member, mesh
/// unknown or archived, bad tab id), `revoked` (the person's member row is banned; its
/// close is `banned`), `capacity` (the mesh connection cap, cluster-wide), `internal` (a
/// backend is unreachable).
pub async fn verify(
    ctx: &ServiceCtx,
    user: &User,
    mesh_id: &str,
    tab: &str,
) -> Result<Verified, HandshakeError> {
    if !valid_tab_id(tab) {
        return Err(refused(
            "unauthorized",
            "tab id must be 1-64 of [A-Za-z0-9_-]",
        ));
    }
    let unavailable =
        |e: &dyn std::fmt::Display| refused("internal", format!("broker backend unavailable: {e}"));
    let meshes = ctx
        .store()
        .user_meshes(&user.id)
        .await
        .map_err(|e| unavailable(&e))?;
    let Some(um) = meshes.into_iter().find(|m| m.mesh.id == mesh_id) else {
        return Err(refused("unauthorized", "you are not a member of this mesh"));
    };
    let member = match um.member {
        Some(m) => m,
        None => {
            // `user_meshes` lists only non-revoked rows: a banned person is told so.
            let banned = ctx
                .store()
                .members(mesh_id)
                .await
                .map_err(|e| unavailable(&e))?
                .into_iter()
                .any(|m| m.user_id.as_deref() == Some(user.id.as_str()) && m.revoked_at.is_some());
            return Err(if banned {
                refused(
                    "revoked",
                    format!(
                        "You've been removed from \"{}\". Contact the mesh owner to rejoin.",
                        um.mesh.name
                    ),
                )
            } else {
                refused("unauthorized", "you have no member row in this mesh")
            });
        }
    };
    // The web-managed row is the chat's topic identity, never a way in on its own: with
    // the person's other rows banned, `user_meshes` may name it.
    let is_web = ctx
        .store()
        .is_web_member(mesh_id, &member.id)
        .await
        .map_err(|e| unavailable(&e))?;
    if member.revoked_at.is_some() || is_web {
        return Err(refused(
            "revoked",
            format!(
                "You've been removed from \"{}\". Contact the mesh owner to rejoin.",
                um.mesh.name
            ),
        ));
    }
    let presence = ctx.presence();
    let open = presence
        .live_count(mesh_id)
        .await
        .map_err(|e| unavailable(&e))?;
    if open >= ctx.config().max_connections_per_mesh {
        return Err(refused("capacity", "mesh connection limit reached"));
    }
    let records = presence.list(mesh_id).await.map_err(|e| unavailable(&e))?;
    let meta = PeerMeta {
        display_name: Some(member.display_name.clone()),
        session_id: Some(format!("web-{tab}")),
        pid: None,
        cwd: Some(String::new()),
        hostname: None,
        peer_type: Some(PEER_TYPE.to_string()),
        channel: Some(CHANNEL.to_string()),
        model: None,
        groups: None,
    };
    Ok(Verified {
        mesh: um.mesh,
        member,
        session_key: None,
        peer_role: PeerRole::Session,
        meta,
        records,
    })
}

/// The suffix of a web-managed row's display name (`<the person's member name>-web`):
/// names stay unique in the mesh, so `kick`/`ban` by name are not ambiguous.
pub const WEB_NAME_SUFFIX: &str = "-web";

/// The person's web-managed member row in `mesh_id` (`rest.md` §4.10), created the first
/// time they open the chat's topics in that mesh (`POST /app/key`).
///
/// It needs a live membership through another row (CLI enrolment, invite, mesh creation):
/// the web row is created with that row's role and groups, named
/// `<its name>`[`WEB_NAME_SUFFIX`], with `user_id` set (a human), the topic memberships of
/// that row (and `#general`), and a placeholder key nobody holds until the browser
/// registers its own with `POST /api/v1/me/peer-pubkey`. The page's REST key is issued by
/// this row, so the browser's topic posts, read marks and sealed topic keys are its own.
/// The tab's WebSocket stays the person's other row ([`verify`]): DMs to the key the
/// mesh knows keep reaching the chat.
///
/// Refusals as [`verify`]'s: `unauthorized` (no live other row), `revoked` (the web row
/// or the other rows are banned), `internal`.
pub async fn web_member(
    ctx: &ServiceCtx,
    user: &User,
    mesh_id: &str,
) -> Result<(crate::store::Mesh, Member), HandshakeError> {
    let unavailable =
        |e: &dyn std::fmt::Display| refused("internal", format!("broker backend unavailable: {e}"));
    let store = ctx.store();
    let Some(mesh) = store
        .user_meshes(&user.id)
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .find(|m| m.mesh.id == mesh_id)
        .map(|m| m.mesh)
    else {
        return Err(refused("unauthorized", "you are not a member of this mesh"));
    };
    let banned = || {
        refused(
            "revoked",
            format!(
                "You've been removed from \"{}\". Contact the mesh owner to rejoin.",
                mesh.name
            ),
        )
    };
    let web = store
        .web_member(mesh_id, &user.id)
        .await
        .map_err(|e| unavailable(&e))?;
    if web.as_ref().is_some_and(|w| w.revoked_at.is_some()) {
        return Err(banned());
    }
    let members = store.members(mesh_id).await.map_err(|e| unavailable(&e))?;
    let web_id = web.as_ref().map(|w| w.id.clone());
    let own: Vec<&Member> = members
        .iter()
        .filter(|m| {
            m.user_id.as_deref() == Some(user.id.as_str()) && Some(&m.id) != web_id.as_ref()
        })
        .collect();
    let Some(base) = own.iter().find(|m| m.revoked_at.is_none()) else {
        return Err(if own.is_empty() {
            refused("unauthorized", "you have no member row in this mesh")
        } else {
            banned()
        });
    };
    if let Some(w) = web {
        return Ok((mesh, w));
    }
    let new = NewMember {
        pubkey: hex::encode(crate::ids::random_seed()),
        display_name: format!("{}{WEB_NAME_SUFFIX}", base.display_name),
        role: base.role,
        user_id: Some(user.id.clone()),
        default_groups: base.default_groups.clone(),
        role_tag: base.role_tag.clone(),
    };
    let (row, created) = store
        .create_web_member(mesh_id, &user.id, new)
        .await
        .map_err(|e| unavailable(&e))?;
    if created {
        // The topics the person is in through their other row.
        let now = crate::ids::now_ms();
        let topics = store
            .topic_list(mesh_id, 10_000)
            .await
            .map_err(|e| unavailable(&e))?;
        for t in topics {
            let joined = store
                .topic_member(&t.topic.id, &base.id)
                .await
                .map_err(|e| unavailable(&e))?;
            if let Some(m) = joined {
                store
                    .topic_join(&t.topic.id, &row.id, &m.role, now, 0)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
        }
        ctx.members_changed(mesh_id).await;
    }
    Ok((mesh, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_ids_are_short_and_plain() {
        assert!(valid_tab_id("a1-B_2"));
        assert!(valid_tab_id(&"x".repeat(MAX_TAB_ID_CHARS)));
        assert!(!valid_tab_id(""));
        assert!(!valid_tab_id(&"x".repeat(MAX_TAB_ID_CHARS + 1)));
        assert!(!valid_tab_id("a b"));
        assert!(!valid_tab_id("a/b"));
    }
}
