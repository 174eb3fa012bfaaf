//! The WebSocket adapter of the peer file and directory relay (extensions §13).

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::peer_relay::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
