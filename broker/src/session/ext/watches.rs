//! The WebSocket adapter of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::watches::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
