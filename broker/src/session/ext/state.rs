//! The WebSocket adapter of shared state (extensions §1): `set_state`, `get_state`,
//! `list_state`.
//!
//! `set_state` gets no reply when it succeeds (never a `state_result`, which the CLI would
//! hand to a pending `get_state`); a refusal is an `error`. `get_state` gets `state_result`
//! and then (**Beyond**) `state_value` for the daemon; `list_state` gets `state_list`.

use bytes::Bytes;

use crate::protocol;
use crate::protocol::ext::state::{StateFrame, StateList, StateResult, StateValue};
use crate::service::state::{self, StateError};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::state::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: StateFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: StateError| s.reply_error(e.code(), &e.message(), req_id);
    match frame {
        StateFrame::SetState { key, value } => {
            if let Err(e) = state::set(svc, p, &key, &value).await {
                refuse(s, e);
            }
        }
        StateFrame::GetState { key } => match state::get(svc, p, &key).await {
            Ok(entry) => {
                let found = entry.as_ref().map(state::row);
                s.reply(protocol::encode(&StateResult::new(found.clone(), req_id)));
                s.reply(protocol::encode(&StateValue {
                    key,
                    state: found,
                    req_id: req_id.map(str::to_string),
                }));
            }
            Err(e) => refuse(s, e),
        },
        StateFrame::ListState {} => match state::list(svc, p).await {
            Ok(entries) => {
                let frame = protocol::encode(&StateList {
                    entries: entries.iter().map(state::row).collect(),
                    req_id: req_id.map(str::to_string),
                });
                reply_bounded(s, frame, "state_list", req_id);
            }
            Err(e) => refuse(s, e),
        },
    }
}

/// Queues a list reply, or refuses it `reply_too_large` when the requester's outbound
/// queue could never take it (its bound) or cannot now (it is not reading fast enough),
/// instead of closing the connection as a slow consumer.
pub(in crate::session) fn reply_bounded(
    s: &Session,
    frame: Bytes,
    what: &'static str,
    req_id: Option<&str>,
) {
    let bound = s.node.config.outbound_queue_bytes;
    let len = frame.len();
    let refused = if len > bound {
        true
    } else {
        s.out.try_text(frame).is_err() && !s.out.is_closed() && !s.out.overflowed()
    };
    if refused {
        s.node.metrics.reply_too_large(what);
        s.reply_error(
            "reply_too_large",
            &format!(
                "the {what} reply is {len} bytes, more than this connection's outbound queue can take (bound {bound})"
            ),
            req_id,
        );
    }
}
