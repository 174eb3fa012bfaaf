//! The WebSocket adapter of tasks (extensions §3): `create_task`, `claim_task`, `complete_task`, `list_tasks`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::tasks::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
