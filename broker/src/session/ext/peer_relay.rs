//! The WebSocket adapter of the peer file and directory relay (extensions §13).
//!
//! A request gets nothing at once unless it is refused (`error{code, _reqId}`); its answer
//! arrives later as `peer_file_response_forward`/`peer_dir_response_forward`, pushed through
//! the bus, so the connection's frame queue never waits on the target (§0.4). A response
//! gets nothing.

use crate::cluster::mcp_registry::PendingKind;
use crate::protocol::ext::peer_relay::RelayFrame;
use crate::service::peer_relay::{self, RelayAnswer, RelayRequest};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::peer_relay::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: RelayFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let request = match frame {
        RelayFrame::PeerFileRequest {
            target_pubkey,
            file_path,
        } => RelayRequest {
            kind: PendingKind::File,
            target_pubkey,
            path: file_path,
            pattern: None,
            req_id: req_id.map(str::to_string),
        },
        RelayFrame::PeerDirRequest {
            target_pubkey,
            dir_path,
            pattern,
        } => RelayRequest {
            kind: PendingKind::Dir,
            target_pubkey,
            path: dir_path,
            pattern,
            req_id: req_id.map(str::to_string),
        },
        RelayFrame::PeerFileResponse { content, error, .. } => {
            return peer_relay::respond(svc, p, req_id, RelayAnswer::File { content, error }).await;
        }
        RelayFrame::PeerDirResponse { entries, error, .. } => {
            return peer_relay::respond(svc, p, req_id, RelayAnswer::Dir { entries, error }).await;
        }
    };
    if let Err(e) = peer_relay::request(svc, p, request).await {
        s.reply_error(e.code(), &e.message(), req_id);
    }
}
