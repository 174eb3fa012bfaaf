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
    if member.revoked_at.is_some() {
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
