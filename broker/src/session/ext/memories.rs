//! The WebSocket adapter of memory (extensions §2): `remember`, `recall`, `forget`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::memories::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
