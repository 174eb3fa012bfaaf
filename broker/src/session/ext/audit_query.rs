//! The WebSocket adapter of audit queries (extensions §8): `audit_query`, `audit_verify`.

use crate::protocol::ext::audit_query::{AuditFrame, AuditResult};
use crate::protocol::{self};
use crate::service::audit_query::{self, QueryRequest};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::audit_query::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    _kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: AuditFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &e.to_string(), req_id),
    };
    let p = &s.attached.principal;
    let result = match frame {
        AuditFrame::AuditQuery(q) => {
            let req = QueryRequest {
                limit: q.limit,
                offset: q.offset,
                event_type: q.event_type,
            };
            audit_query::query(&s.svc, p, req).await.map(|page| {
                protocol::encode(&AuditResult {
                    entries: page.entries,
                    total: page.total,
                    req_id: req_id.map(str::to_string),
                })
            })
        }
        AuditFrame::AuditVerify {} => audit_query::verify(&s.svc, p, req_id.map(str::to_string))
            .await
            .map(|r| protocol::encode(&r)),
    };
    match result {
        // A page of 500 entries with large payloads (`state_set` values) may not fit the
        // requester's outbound queue: refused `reply_too_large` instead of closing it.
        Ok(frame) => super::state::reply_bounded(s, frame, "audit_result", req_id),
        Err(e) => s.reply_error(e.code(), &e.message(), req_id),
    }
}
