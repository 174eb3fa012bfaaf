//! The WebSocket adapter of delivery status (extensions §7): `message_status`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::msg_status::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
