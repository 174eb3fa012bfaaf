//! The WebSocket adapter of webhooks (extensions §15): `create_webhook`, `list_webhooks`, `delete_webhook` and the inbound HTTP route.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::webhooks::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
