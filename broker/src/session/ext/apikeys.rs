//! The WebSocket adapter of API keys (extensions §10): `apikey_create`, `apikey_list`, `apikey_revoke`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::apikeys::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
