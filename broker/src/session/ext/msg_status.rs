//! The WebSocket adapter of delivery status (extensions §7): `message_status`.

use crate::protocol::ext::msg_status::MessageStatusFrame;
use crate::protocol::{self};
use crate::service::msg_status;
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::msg_status::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    _kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let MessageStatusFrame::MessageStatus { message_id } = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &e.to_string(), req_id),
    };
    let p = &s.attached.principal;
    match msg_status::message_status(&s.svc, p, &message_id, req_id.map(str::to_string)).await {
        Ok(result) => s.reply(protocol::encode(&result)),
        Err(e) => s.reply_error(e.code(), &e.message(), req_id),
    }
}
