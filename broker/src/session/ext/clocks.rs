//! The WebSocket adapter of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`.

use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::clocks::TYPES`].
pub(in crate::session) async fn handle(
    _s: &mut Session,
    _kind: &str,
    _text: &[u8],
    _req_id: Option<&str>,
) {
}
