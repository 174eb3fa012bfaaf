//! The WebSocket adapter of mesh info (extensions §18): `mesh_info`.

use crate::protocol::ext::info::MeshInfoFrame;
use crate::protocol::{self};
use crate::service::info;
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::info::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    _kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let MeshInfoFrame::MeshInfo {} = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &e.to_string(), req_id),
    };
    match info::mesh_info(&s.svc, &s.attached.principal, req_id.map(str::to_string)).await {
        // Every state key and stream name of the mesh: refused `reply_too_large` rather
        // than closing a requester whose outbound queue cannot take it.
        Ok(result) => {
            super::state::reply_bounded(s, protocol::encode(&result), "mesh_info_result", req_id)
        }
        Err(e) => s.reply_error(e.code(), &e.message(), req_id),
    }
}
