//! The WebSocket adapter of the families this broker does not offer (extensions §19, §0.3): answered at once.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::unsupported::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
