//! The WebSocket adapter of shared state (extensions §1): `set_state`, `get_state`, `list_state`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::state::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
