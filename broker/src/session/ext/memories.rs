//! The WebSocket adapter of memory (extensions §2): `remember`, `recall`, `forget`.
//!
//! `remember` gets `memory_stored` (with **Beyond** `memoryId`), `recall` gets
//! `memory_results` and then (**Beyond**) `memory_recall_result` for the daemon, `forget`
//! always gets its `ack` (the CLI cannot show a refusal). Bad input is an `error`.

use crate::protocol;
use crate::protocol::ext::memories::{
    ForgetAck, MemoryFrame, MemoryRecallResult, MemoryResults, MemoryRow, MemoryStored,
};
use crate::service::memories::{self, MemoryError};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::memories::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: MemoryFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: MemoryError| s.reply_error(e.code(), &e.message(), req_id);
    match frame {
        MemoryFrame::Remember { content, tags } => {
            match memories::remember(svc, p, content, tags.unwrap_or_default()).await {
                Ok(id) => s.reply(protocol::encode(&MemoryStored {
                    memory_id: id.clone(),
                    id,
                    req_id: req_id.map(str::to_string),
                })),
                Err(e) => refuse(s, e),
            }
        }
        MemoryFrame::Recall { query } => match memories::recall(svc, p, &query).await {
            Ok(found) => {
                let rows: Vec<MemoryRow> = found.iter().map(memories::row).collect();
                let results = protocol::encode(&MemoryResults {
                    memories: rows.clone(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, results, "memory_results", req_id);
                let matches = protocol::encode(&MemoryRecallResult {
                    matches: rows,
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, matches, "memory_recall_result", req_id);
            }
            Err(e) => refuse(s, e),
        },
        MemoryFrame::Forget { memory_id } => {
            // The same ack whatever happened; a backend failure is an `error` as well.
            match memories::forget(svc, p, &memory_id).await {
                Ok(_) => s.reply(protocol::encode(&ForgetAck::new(&memory_id, req_id))),
                Err(e) => refuse(s, e),
            }
        }
    }
}
