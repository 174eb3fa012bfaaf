//! The WebSocket adapter of files (extensions §19.1): `get_file`, `list_files`,
//! `file_status`, `grant_file_access`, `delete_file` (the upload and download are HTTP:
//! `server/files.rs`).
//!
//! Replies echo `_reqId` when the request had one: `file_url`, `file_list`,
//! `file_status_result`, `grant_file_access_ok`, `ack{id, messageId, queued:false}` for
//! `delete_file`, or `error{code, message, _reqId}` ([`FileError`]). With file storage off
//! (`FILES_ENABLED=false`) `list_files` gets an empty `file_list` and the others
//! `unsupported` (§0.3).

use std::borrow::Cow;

use crate::protocol;
use crate::protocol::ext::files::{
    FileFrame, FileList, FileStatusResult, FileUrl, GrantFileAccessOk,
};
use crate::protocol::frames::Ack;
use crate::service::files::{self, FileError};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::files::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: FileFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let rid = || req_id.map(str::to_string);
    let refuse = |s: &Session, e: FileError| {
        let message = match &e {
            FileError::Disabled => files::disabled_message(kind),
            e => e.message(),
        };
        s.reply_error(e.code(), &message, req_id)
    };
    match frame {
        FileFrame::GetFile { file_id } => match files::get_file(svc, p, &file_id).await {
            Ok(u) => s.reply(protocol::encode(&FileUrl {
                file_id: u.file.id,
                url: u.url,
                name: u.file.name,
                encrypted: u.file.encrypted,
                sealed_key: u.sealed_key,
                req_id: rid(),
            })),
            Err(e) => refuse(s, e),
        },
        FileFrame::ListFiles { query, from } => {
            match files::list_files(svc, p, query.as_deref(), from.as_deref()).await {
                Ok(list) => {
                    let frame = protocol::encode(&FileList {
                        files: list.iter().map(files::entry).collect(),
                        req_id: rid(),
                    });
                    super::state::reply_bounded(s, frame, "file_list", req_id);
                }
                Err(e) => refuse(s, e),
            }
        }
        FileFrame::FileStatus { file_id } => match files::file_status(svc, p, &file_id).await {
            Ok(accesses) => {
                let frame = protocol::encode(&FileStatusResult {
                    file_id,
                    accesses,
                    req_id: rid(),
                });
                super::state::reply_bounded(s, frame, "file_status_result", req_id);
            }
            Err(e) => refuse(s, e),
        },
        FileFrame::GrantFileAccess {
            file_id,
            peer_pubkey,
            sealed_key,
        } => match files::grant(svc, p, &file_id, &peer_pubkey, &sealed_key).await {
            Ok(()) => s.reply(protocol::encode(&GrantFileAccessOk {
                file_id,
                peer_pubkey,
                req_id: rid(),
            })),
            Err(e) => refuse(s, e),
        },
        FileFrame::DeleteFile { file_id } => match files::delete(svc, p, &file_id).await {
            Ok(()) => {
                let mut ack = Ack::queued(&file_id, &file_id, req_id);
                ack.queued = false;
                ack.message_id = Cow::Borrowed(file_id.as_str());
                s.reply(protocol::encode(&ack));
            }
            Err(e) => refuse(s, e),
        },
    }
}
