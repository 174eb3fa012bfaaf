//! The WebSocket adapter of contexts (extensions §11): `share_context`, `get_context`,
//! `list_contexts`.
//!
//! `share_context` gets `context_shared{id}` (with `_reqId` when given: **Beyond**),
//! `get_context` gets `context_results`, `list_contexts` gets `context_list`. Bad input is
//! an `error`.

use crate::protocol;
use crate::protocol::ext::contexts::{ContextFrame, ContextList, ContextResults, ContextShared};
use crate::service::contexts::{self, ContextError, ShareContext};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::contexts::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: ContextFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: ContextError| s.reply_error(e.code(), &e.message(), req_id);
    match frame {
        ContextFrame::ShareContext {
            summary,
            files_read,
            key_findings,
            tags,
        } => {
            let req = ShareContext {
                summary,
                files_read: files_read.unwrap_or_default(),
                key_findings: key_findings.unwrap_or_default(),
                tags: tags.unwrap_or_default(),
            };
            match contexts::share(svc, p, req).await {
                Ok(id) => s.reply(protocol::encode(&ContextShared {
                    id,
                    req_id: req_id.map(str::to_string),
                })),
                Err(e) => refuse(s, e),
            }
        }
        ContextFrame::GetContext { query } => match contexts::find(svc, p, &query).await {
            Ok(found) => {
                let frame = protocol::encode(&ContextResults {
                    contexts: found.iter().map(contexts::row).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "context_results", req_id);
            }
            Err(e) => refuse(s, e),
        },
        ContextFrame::ListContexts {} => match contexts::list(svc, p).await {
            Ok(all) => {
                let frame = protocol::encode(&ContextList {
                    contexts: all.iter().map(contexts::summary_row).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "context_list", req_id);
            }
            Err(e) => refuse(s, e),
        },
    }
}
