//! The WebSocket adapter of audit queries (extensions §8): `audit_query`, `audit_verify`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::audit_query::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
