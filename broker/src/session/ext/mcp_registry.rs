//! The WebSocket adapter of the peer-hosted MCP registry (extensions §14).

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::mcp_registry::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
