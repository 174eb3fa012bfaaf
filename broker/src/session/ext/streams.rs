//! The WebSocket adapter of streams (extensions §4): `create_stream`, `subscribe`, `unsubscribe`, `publish`, `list_streams`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::streams::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
