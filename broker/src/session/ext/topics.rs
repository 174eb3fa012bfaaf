//! The WebSocket adapter of topics (extensions §9): `topic_create`, `topic_list`, `topic_join`, `topic_leave`, `topic_members`, `topic_history`, `topic_mark_read`, and `#topic` posts.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::topics::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
