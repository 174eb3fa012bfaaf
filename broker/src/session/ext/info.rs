//! The WebSocket adapter of mesh info (extensions §18): `mesh_info`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::info::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
