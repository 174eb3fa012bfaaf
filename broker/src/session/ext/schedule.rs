//! The WebSocket adapter of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::schedule::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
