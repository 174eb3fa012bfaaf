//! The WebSocket adapter of the families this broker does not offer (extensions §0.3):
//! answered at once, as [`crate::protocol::ext::unsupported::answer`] decides.

use crate::protocol::{self, ext::unsupported};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::unsupported::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    // The core decoder already proved `text` a JSON object with this `type`; the fields
    // an empty reply echoes (`topic`, `server_name`, `serverName`) are read leniently.
    let frame: serde_json::Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => return s.reply_error("malformed", &e.to_string(), req_id),
    };
    match unsupported::answer(kind, &frame, req_id.is_some()) {
        unsupported::Answer::Empty(body) => s.reply(protocol::encode(&unsupported::Reply {
            body,
            req_id: req_id.map(str::to_string),
        })),
        unsupported::Answer::Unsupported(message) => s.reply_error("unsupported", &message, req_id),
        unsupported::Answer::Silent => {}
    }
}
