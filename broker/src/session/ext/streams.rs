//! The WebSocket adapter of streams (extensions §4): `create_stream`, `subscribe`,
//! `unsubscribe`, `publish`, `list_streams`.
//!
//! `create_stream`, `subscribe` and `list_streams` get their typed replies; `unsubscribe`
//! and `publish` get none (as the spec says), only an `error` for bad input. Subscriptions
//! belong to the presence (`s.attached.principal.presence_id`), not to this socket.

use crate::ids;
use crate::protocol;
use crate::protocol::ext::streams::{
    StreamCreated, StreamFrame, StreamList, StreamRow, Subscribed,
};
use crate::service::streams::{self, StreamError};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::streams::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: StreamFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    // A backend failure is answered only to a request that carried a `_reqId` (§0.4): an
    // uncorrelated `error` would release some other pending request of the CLI (§0.2).
    let refuse = |s: &Session, e: StreamError| match (&e, req_id) {
        (StreamError::Unavailable(why), None) => {
            tracing::warn!(kind, error = %why, "request failed; no _reqId to answer");
        }
        _ => s.reply_error(e.code(), &e.message(), req_id),
    };
    let echo = req_id.map(str::to_string);
    match frame {
        StreamFrame::CreateStream { name } => match streams::create(svc, p, &name).await {
            Ok(st) => s.reply(protocol::encode(&StreamCreated {
                id: st.id,
                name: st.name,
                req_id: echo,
            })),
            Err(e) => refuse(s, e),
        },
        StreamFrame::Subscribe { stream } => match streams::subscribe(svc, p, &stream).await {
            Ok(()) => s.reply(protocol::encode(&Subscribed {
                stream,
                req_id: echo,
            })),
            Err(e) => refuse(s, e),
        },
        StreamFrame::Unsubscribe { stream } => {
            if let Err(e) = streams::unsubscribe(svc, p, &stream).await {
                refuse(s, e);
            }
        }
        StreamFrame::Publish { stream, data } => {
            if let Err(e) = streams::publish(svc, p, &stream, data).await {
                refuse(s, e);
            }
        }
        StreamFrame::ListStreams => match streams::list(svc, p).await {
            Ok(all) => s.reply(protocol::encode(&StreamList {
                streams: all
                    .into_iter()
                    .map(|(st, count)| StreamRow {
                        id: st.id,
                        name: st.name,
                        created_by: st.created_by,
                        created_at: ids::iso8601_ms(st.created_at),
                        subscriber_count: count,
                    })
                    .collect(),
                req_id: echo,
            })),
            Err(e) => refuse(s, e),
        },
    }
}
